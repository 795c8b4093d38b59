"""``python -m dpp_select.cli``: the ``dpp-select`` command (also under ``torchrun``)."""

import sys

from . import main

sys.exit(main())
