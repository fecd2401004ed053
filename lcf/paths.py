"""Output paths checked before any model loads, file-system errors told in one line, files written whole.

* :func:`check_output_path`: the folder (or file) a command will write can be created and written, is
  not a symbolic-link loop, and its disk has room for the bytes it will hold (where that is known).
* :func:`os_error_line`: an ``OSError`` as one line naming the path and the fix (what the CLI prints).
* :func:`write_bytes_whole`: a file written to a temporary sibling and renamed, so a failure leaves
  the previous file (or none), never half of one.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from lcf.errors import LCFError


def size_text(n: int | float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{int(n)} bytes"


class OutputPathError(LCFError, OSError):
    """An output path that cannot be written (permissions, a link loop, no space). ``OutputPathError(errno,
    message)``; printed as the message alone."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


_FIXES = {
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
    errno.EROFS: "the file system is read-only; choose a folder on a writable disk",
    errno.ENOSPC: "the disk is full; free space or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose a folder on another disk",
    errno.EFBIG: "the file is larger than this system allows (file-size limit, `ulimit -f`); raise the limit or "
                 "write to another file system",
    errno.ELOOP: "the path runs through a symbolic-link loop; remove or fix the link",
    errno.ENOENT: "check the path (a file or folder named in it does not exist)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "the path is a folder where a file was expected; give a file name",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
}


def os_error_line(exc: OSError) -> str:
    """One line: what failed, on which path, and how to fix it."""
    paths = [p for p in (exc.filename, getattr(exc, "filename2", None)) if p]
    where = " -> ".join(str(p) for p in paths) or "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _FIXES.get(exc.errno or -1, "check the path and its permissions")
    return f"{where}: {reason} ({type(exc).__name__}); {fix}".replace("\n", " ")


def as_os_error(exc: BaseException) -> OSError | None:
    """``exc`` as an OSError when it is a file-system fault (pathlib's 'Symlink loop' RuntimeError
    included), else None."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("Symlink loop"):
        return OSError(errno.ELOOP, "symbolic-link loop", text.removeprefix("Symlink loop from ").strip("'"))
    return None


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (links followed)."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:  # a loop in an ancestor: report it on the full path
            continue
    return Path.cwd()


def _resolve(path: Path, what: str) -> Path:
    try:
        return path.resolve()
    except RuntimeError as exc:  # Python < 3.13 raises RuntimeError("Symlink loop from ...")
        raise OutputPathError(errno.ELOOP, f"{what} {path} runs through a symbolic-link loop ({exc}); remove or "
                                           f"fix the link, or choose another path") from exc
    except OSError as exc:
        raise OutputPathError(exc.errno, f"{what} {path}: {os_error_line(exc)}") from exc


def _loops(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_output_path(path: str | Path, what: str = "output", *, size_bytes: int | None = None,
                      sibling: bool = False) -> Path:
    """Refuse an output path (a folder or a file to write) that this process cannot write, a symbolic-link
    loop, and a disk without ``size_bytes`` of free space (when given); return it resolved. ``sibling``:
    the writer creates a temporary sibling and renames it into place, so the parent must be writable
    too. Nothing is created."""
    path = Path(path)
    if path.is_symlink() and _loops(path):
        raise OutputPathError(errno.ELOOP, f"{what} {path} is a symbolic-link loop; remove the link (`rm {path}`) "
                                           f"or choose another path")
    resolved = _resolve(path, what)
    base = _first_existing(resolved)
    if base != resolved and not base.is_dir():
        raise OutputPathError(errno.ENOTDIR, f"{what} {path}: {base} is a file, not a folder; choose another path")
    folders = [base if base.is_dir() else base.parent]
    if sibling and base == resolved:
        folders.append(resolved.parent)
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(errno.EACCES, f"{what} {path}: cannot write into {folder} (permission denied); "
                                                f"choose a folder you can write to, or change its permissions")
    if size_bytes:
        check_free_space(folders[0], size_bytes, f"{what} {path}")
    return resolved


def check_free_space(folder: Path, size_bytes: int, what: str) -> None:
    """Refuse writing ``size_bytes`` into ``folder`` when its disk lacks the room or the file-size limit is lower."""
    free = shutil.disk_usage(folder).free
    if free < size_bytes:
        raise OutputPathError(errno.ENOSPC, f"{what} needs {size_text(size_bytes)} but its disk has "
                                            f"{size_text(free)} free; free space or choose a folder on another disk")
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and soft < size_bytes:
        raise OutputPathError(errno.EFBIG, f"{what} needs {size_text(size_bytes)} in one file but this process "
                                           f"may write at most {size_text(soft)} per file (`ulimit -f`); raise "
                                           f"the limit or write elsewhere")


def write_bytes_whole(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling and a rename; on any failure nothing is left
    behind and an earlier file at ``path`` is untouched."""
    path = Path(path)
    check_output_path(path, "output file", size_bytes=len(data))
    tmp = path.with_name(f".{path.name}.lcf-{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_whole(path: str | Path, text: str) -> Path:
    return write_bytes_whole(path, text.encode("utf-8"))
