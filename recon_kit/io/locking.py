"""One writer per run folder: an advisory lock held by training, sweeps and exports.

The lock is ``fcntl.flock`` on ``<folder>/.recon-kit.lock``, which also records who holds it (PID, host,
command, start time). The kernel drops the lock when its holder dies (even by SIGKILL), so a lock left by a
dead process is taken over at once; a live holder makes a second writer fail immediately with a
:class:`RunLockedError` that names its PID and host. A process may take the same folder's lock again (a
notebook that rebuilds its trainer): locks are per process, counted, and released by :meth:`RunLock.release`
or when the process ends.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Iterator

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "acquire", "holder", "locked"]

LOCK_FILE = ".recon-kit.lock"
log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another live process writes into this run folder."""


class RunLock:
    """A held lock on one folder (see :func:`acquire`)."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self.fd, self.count = folder, fd, 1

    def release(self) -> None:
        """Drop one hold; the last one empties the file (so the next holder sees no stale entry), unlocks and
        closes it (the file itself stays, harmlessly)."""
        self.count -= 1
        if self.count > 0 or self.fd < 0:
            return
        import fcntl

        _HELD.pop(self.folder, None)
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[Path, RunLock] = {}  # this process's locks, by resolved folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(folder: str | os.PathLike[str]) -> dict | None:
    """What the lock file of ``folder`` says about its (last) holder, or None."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None


def acquire(folder: str | os.PathLike[str], what: str = "writing", wait: bool = False) -> RunLock:
    """Lock ``folder`` (created if needed) for this process, or raise :class:`RunLockedError` at once
    (``wait=True``: block until the holder is done instead, saying who is waited for)."""
    import fcntl

    folder = Path(folder).resolve()
    if folder in _HELD:
        _HELD[folder].count += 1
        return _HELD[folder]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = holder(folder) or {}
        if wait:
            log.info("%s: waiting for PID %s on host %s (%s)", folder, info.get("pid", "?"), info.get("host", "?"),
                     info.get("what", "writing"))
            fcntl.flock(fd, fcntl.LOCK_EX)
            return _record(folder, fd, what)
        os.close(fd)
        pid, host = info.get("pid", "?"), info.get("host", "?")
        raise RunLockedError(
            f"run folder {folder} is in use by PID {pid} on host {host} ({info.get('what', 'writing')} since "
            f"{info.get('since', '?')}); wait for it to finish, stop it (kill {pid}), or choose another folder"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return _record(folder, fd, what)


def _record(folder: Path, fd: int, what: str) -> RunLock:
    """Write who holds the (now held) lock on ``folder`` into its lock file; note a taken-over stale lock."""
    old = holder(folder)
    if old and old.get("pid") != os.getpid():
        same_host = old.get("host") == platform.node()
        if same_host and isinstance(old.get("pid"), int) and not _pid_alive(old["pid"]):
            log.warning("%s: took over the stale lock of PID %s (no longer running)", folder, old["pid"])
    info = {"pid": os.getpid(), "host": platform.node(), "what": what, "command": " ".join(sys.argv)[:300],
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    lock = _HELD[folder] = RunLock(folder, fd)
    return lock


@contextlib.contextmanager
def locked(folder: str | os.PathLike[str], what: str = "writing", wait: bool = False) -> Iterator[RunLock]:
    """``with locked(run_dir): ...``: hold the folder's lock for the block."""
    lock = acquire(folder, what, wait=wait)
    try:
        yield lock
    finally:
        lock.release()
