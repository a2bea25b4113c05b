"""One writer per folder: an advisory ``flock`` on ``<folder>/.ropekit.lock``.

The lock belongs to the open file, so the operating system drops it when its process
dies, however it dies; a killed ropekit never leaves a folder locked. A second ropekit
waits up to ``ROPEKIT_LOCK_TIMEOUT`` seconds (read at each call, default
:data:`DEFAULT_TIMEOUT`; 0 fails at once) and then stops with
:class:`~ropekit.errors.FolderInUseError` (exit 4) naming the folder.

The lock file is removed on release. A waiter that wins the lock on a file already
removed (or replaced) lets go and tries again, so two processes never hold locks on two
different files of one folder. The lock is advisory and local: it binds ropekit processes
on this machine, not other programs, and over NFS only where the server supports flock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from ropekit.constants import env_seconds
from ropekit.errors import FolderInUseError

LOCK_NAME = ".ropekit.lock"
TIMEOUT_ENV = "ROPEKIT_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 10.0
_POLL_SECONDS = 0.01


def lock_timeout() -> float:
    """Seconds to wait for a folder held by another ropekit (``ROPEKIT_LOCK_TIMEOUT``; 0 fails at once)."""
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT, zero_allowed=True)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block; raises :class:`FolderInUseError` on time-out.

    Errors of the file system (a read-only folder, no permission) propagate as ``OSError``.
    """
    path = Path(folder) / LOCK_NAME
    deadline = time.monotonic() + lock_timeout()
    fd = _acquire(path, deadline, folder)
    try:
        yield
    finally:
        try:
            os.unlink(path)  # still ours: a waiter that then wins the old file sees it gone and retries
        except OSError:
            pass
        os.close(fd)


def _acquire(path: Path, deadline: float, folder: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    while True:
        fd = os.open(path, flags, 0o644)
        try:
            if _try_lock(fd) and _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if time.monotonic() >= deadline:
            raise FolderInUseError(
                f"{folder} is in use by another ropekit process (it holds {path.name}); wait for it to finish, "
                f"or set {TIMEOUT_ENV} to wait longer than {lock_timeout():g} seconds"
            )
        time.sleep(_POLL_SECONDS)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file ``fd`` locked (the holder may have removed it)."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
