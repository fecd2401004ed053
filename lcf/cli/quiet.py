"""The command line's output without third-party noise: Lightning's advertising tips and deprecation
warnings raised inside other packages (a user can act on neither). Warnings attributed to lcf's own
modules still show, and so does everything when the user sets warning filters (``-W`` / ``PYTHONWARNINGS``).
Only :func:`lcf.cli.app.main` calls this; importing lcf changes no global setting.
"""
from __future__ import annotations

import logging
import sys
import warnings

#: loggers Lightning prints its one-line messages through (``rank_zero_info``)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ..." lines (litlogger / litmodels advertising)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


def quiet_third_party() -> None:
    """Drop Lightning's tips and other packages' deprecation warnings from this process's output."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTips) for f in logger.filters):
            logger.addFilter(DropTips())
    if sys.warnoptions:  # the user chose what to see
        return
    for category in DEPRECATIONS:
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"lcf(\.|$)")  # checked first: lcf's own
