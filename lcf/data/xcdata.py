"""Deprecated: moved to :mod:`lcf.data.xc.dataset`. This module re-exports its names for one release and warns when it is
imported."""
from lcf.data.xc.dataset import *  # noqa: F401,F403
from lcf.deprecated import warn_moved

warn_moved(__name__, "lcf.data.xc.dataset")
