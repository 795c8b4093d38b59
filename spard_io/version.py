"""The installed ``spard`` distribution's version, for ``__version__`` and ``--version``.

Both packages report the version of the one distribution that ships them. Installed (``pip
install``, editable or not), that is the distribution metadata; in a source checkout that was never
installed, it is the ``version`` in the checkout's ``setup.cfg``, the file the metadata is built
from.
"""

from __future__ import annotations

import configparser
import pathlib
from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "distribution_version"]

#: The name ``pip`` knows the project by.
DISTRIBUTION = "spard"


def distribution_version() -> str:
    """``importlib.metadata.version("spard")``; without an installed distribution, the version
    in the checkout's ``setup.cfg``, or ``"0+unknown"`` when there is none."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    setup = configparser.ConfigParser()
    setup.read(pathlib.Path(__file__).resolve().parents[1] / "setup.cfg", encoding="utf-8")
    if setup.get("metadata", "name", fallback=None) == DISTRIBUTION:
        return setup.get("metadata", "version", fallback="0+unknown")
    return "0+unknown"
