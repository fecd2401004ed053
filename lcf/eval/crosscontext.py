"""Deprecated: moved to :mod:`lcf.eval.xc`. This module re-exports its names for one release and warns when it is
imported."""
from lcf.deprecated import warn_moved
from lcf.eval.xc import *  # noqa: F401,F403

warn_moved(__name__, "lcf.eval.xc")
