"""Safe file writing and one-line OS errors.

Every file the kit writes goes to a temporary name in the target's folder and is renamed over the target
only when complete (``os.replace`` is atomic on one filesystem), so a kill, a full disk or a read-only folder
never leaves a half-written file or a stray temporary behind. :func:`describe_os_error` turns the OS errors a
user can meet (permission denied, read-only filesystem, disk full, a file that vanished) into one line that
names the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from recon_kit.io.files import shareable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "check_writable", "describe_os_error",
           "naming", "torch_save_atomic"]


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """OS errors raised inside the block without a file name (writes through open handles) get ``path``."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from err


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is fsynced and renamed to ``path``, on any error
    (or KeyboardInterrupt) it is removed and ``path`` is left as it was."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with naming(target), os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        shareable(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def torch_save_atomic(obj, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through memory then :func:`atomic_write_bytes`: a full disk raises a plain ``OSError``
    (ENOSPC, with the path) instead of torch's "enforce fail at inline_container.cc", and leaves no temporary."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getbuffer())


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` (and parents) and prove a file can be written there, before any slow work starts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".recon-kit-probe.", dir=folder)
    os.close(fd)
    os.unlink(tmp)
    return folder


_FIXES = {
    errno.EACCES: ("permission denied", "make it writable (chmod u+w) or choose another folder"),
    errno.EPERM: ("operation not permitted", "make it writable (chmod u+w) or choose another folder"),
    errno.EROFS: ("read-only filesystem", "write to a folder on a writable disk"),
    errno.ENOSPC: ("disk full", "free some space (or choose a folder on another disk) and rerun; "
                                "partial files were removed"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another folder and rerun"),
    errno.ENOENT: ("file or folder not found (did it vanish?)", "check the path exists and nothing else moved it"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    errno.EISDIR: ("is a folder, expected a file", "pass a file path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and rerun"),
}


def describe_os_error(err: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One line: what happened, to which path, and how to fix it."""
    where = err.filename if err.filename is not None else path
    what, fix = _FIXES.get(err.errno, (err.strerror or type(err).__name__, "check the path and rerun"))
    target = f" {where}" if where is not None else ""
    extra = f" -> {err.filename2}" if getattr(err, "filename2", None) else ""
    return f"{what}:{target}{extra}; {fix}"
