"""Deprecated: moved to :mod:`lcf.data.xc.features` (``CrossContextError`` is ``XCError`` there).

This module re-exports the new names for one release and warns when it is imported."""
from lcf.data.xc.features import *  # noqa: F401,F403
from lcf.data.xc.features import XCError
from lcf.deprecated import warn_moved

CrossContextError = XCError

warn_moved(__name__, "lcf.data.xc.features", {"CrossContextError": "XCError"})
