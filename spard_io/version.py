"""The installed version of the ``spard`` distribution, for the packages' ``__version__``.

``spag_optim`` and ``dpp_select`` ship in one distribution (``spard``), so both report its version:
the installed metadata (``importlib.metadata``), else, in a plain source checkout that was never
installed, the ``version`` in the checkout's ``setup.cfg``, else ``"0+unknown"``.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import pathlib

__all__ = ["DISTRIBUTION", "UNKNOWN_VERSION", "distribution_version"]

DISTRIBUTION = "spard"
#: What a copy with neither installed metadata nor its ``setup.cfg`` reports (PEP 440 valid).
UNKNOWN_VERSION = "0+unknown"
_SETUP_CFG = pathlib.Path(__file__).resolve().parent.parent / "setup.cfg"


def distribution_version() -> str:
    """The version of the ``spard`` distribution (see the module docstring for the fallbacks)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return _checkout_version(_SETUP_CFG)


def _checkout_version(setup_cfg: pathlib.Path) -> str:
    """``[metadata] version`` of the checkout's ``setup.cfg`` if it is spard's, else unknown."""
    parser = configparser.ConfigParser()
    try:
        parser.read(setup_cfg, encoding="utf-8")
    except configparser.Error:
        return UNKNOWN_VERSION
    if parser.get("metadata", "name", fallback=None) != DISTRIBUTION:
        return UNKNOWN_VERSION
    return parser.get("metadata", "version", fallback=UNKNOWN_VERSION)
