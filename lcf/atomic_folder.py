"""Publish a folder atomically: write it beside its target, then swap it in under a lock.

Used by ``lcf export``. Guarantees, for a target folder ``OUT``:

- nothing is replaced that lcf did not write: an existing *file* at ``OUT``, or a non-empty folder
  that holds anything but the files ``owned`` names, is refused unless ``overwrite=True``;
- a reader never sees ``OUT`` missing or half written: on Linux the new folder and the old one are
  exchanged in one ``renameat2(RENAME_EXCHANGE)`` call (elsewhere two renames, with a short gap);
- concurrent writers of ``OUT`` take turns (``flock`` on the parent folder; no lock file is left);
- no debris: the temporary sibling ``.OUT.lcf-PID-XXXX`` is removed on success and on error, and
  ones left by a killed process (whose PID no longer runs) are removed by the next writer.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

from lcf.errors import LCFError

log = logging.getLogger(__name__)


class FolderExistsError(LCFError, FileExistsError):
    """The target exists and is not something lcf may replace without ``overwrite``."""


def _tmp_prefix(out: Path) -> str:
    return f".{out.name}.lcf-"


def check_target(out: Path, owned: Collection[str], *, overwrite: bool, what: str = "adapter") -> None:
    """Refuse ``out`` when it is a file, or a folder with entries other than ``owned`` (or without
    ``owned[0]``, the marker file), unless ``overwrite``."""
    if overwrite or not (out.exists() or out.is_symlink()):
        return
    hint = "choose another path, or pass --overwrite (export(..., overwrite=True)) to replace it"
    if not out.is_dir():
        raise FolderExistsError(f"{out} exists and is a file, not an {what} folder; {hint}")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    marker = next(iter(owned))
    foreign = [e for e in entries if e not in owned]
    if marker not in entries or foreign:
        shown = ", ".join(foreign[:5] or entries[:5]) + (" ..." if len(foreign or entries) > 5 else "")
        raise FolderExistsError(
            f"{out} is a non-empty folder that is not an lcf {what} (it holds {shown}); exporting would delete "
            f"those files. {hint[0].upper() + hint[1:]}."
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove temporary siblings of ``out`` left by processes that no longer run; return them."""
    removed = []
    for p in out.parent.glob(_tmp_prefix(out) + "*"):
        pid = p.name[len(_tmp_prefix(out)):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _remove(p)
            removed.append(p)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself (no lock file to leave behind); a no-op where
    ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK on some network file systems: still atomic, just not serialised
            log.warning("cannot lock %s (%s); concurrent writers of this folder are not serialised", folder, exc)
        yield
    finally:
        os.close(fd)  # releases the lock


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap paths ``a`` and ``b`` (Linux renameat2); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def publish_folder(out: str | os.PathLike, owned: Collection[str], *, overwrite: bool = False,
                   what: str = "adapter") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block ends without error, put it in
    place of ``out`` (see the module docstring). ``owned``: the file names lcf writes there, the
    first being the marker that identifies such a folder."""
    out = Path(out).resolve()
    check_target(out, owned, overwrite=overwrite, what=what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(out)}{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes a private folder; an adapter is meant to be shared
        with _locked(out.parent):
            remove_stale(out)
            check_target(out, owned, overwrite=overwrite, what=what)  # again: another writer may have been first
            if not (out.exists() or out.is_symlink()):
                os.rename(tmp, out)
            elif not _exchange(tmp, out):
                old = out.with_name(f"{_tmp_prefix(out)}{os.getpid()}-old")
                os.rename(out, old)
                os.rename(tmp, out)
                tmp = old
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)  # the new folder on error, the old contents after a swap
