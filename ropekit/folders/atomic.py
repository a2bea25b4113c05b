"""Atomic single-file writes and the low-level helpers the folder transactions share.

:func:`atomic_write` writes a temporary file beside the target, syncs it and renames it
over the target, so a crash leaves the old file or the new one, never half of one. Its
temporary name is cut to fit ``NAME_MAX`` (255 bytes) whatever the target's name.

Test hook: ``ROPEKIT_TEST_PAUSE_AT=<step>`` (read at each step) makes the process print
``ropekit: paused at <step>`` on stderr and sleep, so that a test can kill it there.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

#: test hook (see the module docstring): the step at which to pause, read at call time
PAUSE_ENV = "ROPEKIT_TEST_PAUSE_AT"
PAUSE_SECONDS = 60.0
#: the longest file name most file systems take, in bytes
NAME_MAX = 255
_TEMP_SUFFIX = ".tmp"
_RANDOM_CHARS = 8  # what tempfile.mkstemp adds between prefix and suffix
#: a temporary file :func:`atomic_write` leaves only when killed between write and rename
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def checkpoint(step: str) -> None:
    """Pause here when ``ROPEKIT_TEST_PAUSE_AT`` names ``step`` (tests kill the process there)."""
    if os.environ.get(PAUSE_ENV) == step:
        print(f"ropekit: paused at {step}", file=sys.stderr, flush=True)
        time.sleep(PAUSE_SECONDS)


def temp_prefix(name: str) -> str:
    """``.<name>.`` cut so that prefix, random part and ``.tmp`` fit in ``NAME_MAX`` bytes."""
    room = NAME_MAX - len(_TEMP_SUFFIX) - _RANDOM_CHARS - 2  # the two dots around the name
    encoded = os.fsencode(name)
    if len(encoded) > room:
        name = encoded[:room].decode("utf-8", errors="ignore")  # a cut character is dropped
    return f".{name}."


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, replace.

    Without ``mode`` an existing file keeps its permission bits and a new one gets the
    umask's default. A symlink at ``path`` is replaced by a regular file (its target is
    left alone).
    """
    path = Path(path)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = default_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        checkpoint(f"written:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    checkpoint(f"replaced:{path.name}")


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (which must not exist) holding ``data`` with ``mode``, synced to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def stale_temp_files(folder: Path, own: set[str]) -> list[Path]:
    """Temporary files a killed :func:`atomic_write` left in ``folder`` for the names in ``own``."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if (m := TEMP_NAME.match(p.name)) and m["target"] in own
                  and p.is_file() and not p.is_symlink())


def default_mode() -> int:
    """The permission bits a new file gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(folder: Path) -> None:
    """Sync a folder's entries (renames, removals) to disk, where the file system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory
        pass
    finally:
        os.close(fd)
