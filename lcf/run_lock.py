"""One training at a time per run folder.

``lcf train`` takes an exclusive lock on ``<run>/.lcf-run.lock`` before any model loads and holds it
until it returns; a second training of the same folder (same ``output_dir`` and ``name``) is refused at
once with the owner's pid. The lock is an ``flock`` on an open file, so the operating system releases
it when the owner exits, killed or not; the file itself stays (removing it could let two runs in).
Only the launching process locks: the processes a distributed launcher starts (``LOCAL_RANK``,
``RANK`` or ``NODE_RANK`` above 0) share the folder with it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from lcf.errors import LCFError
from lcf.paths import OutputPathError, os_error_line

LOCK_NAME = ".lcf-run.lock"


class RunFolderBusyError(LCFError):
    """Another training holds this run folder."""


def launched_worker() -> bool:
    """Whether this process was started by a distributed launcher as a rank other than the first."""
    return any(int(os.environ.get(var) or 0) > 0 for var in ("LOCAL_RANK", "RANK", "NODE_RANK"))


def _owner(handle) -> str:
    handle.seek(0)
    text = handle.read().strip()
    return text or "an unknown process"


@contextlib.contextmanager
def run_folder_lock(folder: str | Path, *, resume: bool = False) -> Iterator[Path | None]:
    """Hold the run folder's lock for the ``with`` block (creating the folder); yields the lock file, or
    None where no lock is taken (a launched worker rank, or a system without ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not guarded there
        yield None
        return
    if launched_worker():
        yield None
        return
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:
        raise OutputPathError(exc.errno, f"run folder {folder}: {os_error_line(exc)}") from exc
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OutputPathError(exc.errno, f"run folder {folder}: {os_error_line(exc)}") from exc
            later = "continue it with --resume once it has finished" if resume else \
                "or, once it has finished, continue it with --resume"
            raise RunFolderBusyError(
                f"run folder {folder} is in use by another training ({_owner(handle)}); two runs would mix their "
                f"checkpoints and logs there. Give this run another name (e.g. `name=<other>` or another "
                f"output_dir), {later}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock
