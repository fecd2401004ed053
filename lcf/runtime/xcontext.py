"""Deprecated: moved to :mod:`lcf.runtime.xc` (``CrossContextMixin`` is ``XCMixin`` there).

This module re-exports the new names for one release and warns when it is imported."""
from lcf.deprecated import warn_moved
from lcf.runtime.xc import *  # noqa: F401,F403
from lcf.runtime.xc import XCMixin

CrossContextMixin = XCMixin

warn_moved(__name__, "lcf.runtime.xc", {"CrossContextMixin": "XCMixin"})
