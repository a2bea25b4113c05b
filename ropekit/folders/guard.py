"""Where ropekit may write, and how the file system's refusals are reported.

* :func:`hub_cache_root` tells whether a folder lies in a Hugging Face cache, which
  ropekit never edits in place (other programs share its files).
* :func:`file_access` turns an ``OSError`` (read-only disk, no permission, full disk,
  a name or path too long) into a one-line :class:`~ropekit.errors.FileAccessError`
  (exit 4) naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Iterator

from ropekit.errors import FileAccessError, Param, RopekitError
from ropekit.hub.resolve import hub_cache_dir

#: the folder name of a repo in a Hugging Face cache
CACHE_REPO = re.compile(r"^(models|datasets|spaces)--.+")
#: pseudo file systems ropekit never writes into
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
_FIXES = {
    errno.EROFS: "the file system is read-only; write the patch elsewhere with ",
    errno.EACCES: "check the permissions of the folder, or write the patch elsewhere with ",
    errno.EPERM: "the file system refused it (immutable? see lsattr); write the patch elsewhere with ",
    errno.ENOSPC: "the disk is full; free some space and run the command again",
    errno.EDQUOT: "the disk quota is exhausted; free some space and run the command again",
    errno.ENAMETOOLONG: "the name or path is too long for the file system; choose a shorter one",
    errno.ELOOP: "a symlink loop or a symlink where ropekit needs a file; remove it",
}


def hub_cache_root(folder: Path) -> Path | None:
    """The Hugging Face cache ``folder`` lies in, or None.

    The cache is found from ``HF_HUB_CACHE`` / ``HF_HOME`` and huggingface_hub's own
    constant (all read at call time); any folder shaped like
    ``models--ORG--NAME/snapshots/SHA`` counts as a cache too, wherever it lies.
    """
    real = Path(os.path.realpath(folder))
    for root in _cache_roots():
        if real == root or root in real.parents:
            return root
    for path in (Path(os.path.abspath(folder)), real):
        parts = path.parts
        for i in range(1, len(parts) - 1):
            if parts[i] == "snapshots" and CACHE_REPO.match(parts[i - 1]):
                return Path(*parts[: i - 1])
    return None


def _cache_roots() -> list[Path]:
    roots = [hub_cache_dir()]
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency, but the check must not need it
        constants = None
    value = getattr(constants, "HF_HUB_CACHE", None)
    if value:
        roots.append(Path(value))
    return [Path(os.path.realpath(root)) for root in roots]


def special_root(path: Path) -> str | None:
    """``/proc``, ``/sys`` or ``/dev`` when ``path`` resolves into one of them (``/dev/shm`` is a disk)."""
    real = os.path.realpath(path)
    if real == "/dev/shm" or real.startswith("/dev/shm/"):
        return None
    return next((root for root in SPECIAL_ROOTS if real == root or real.startswith(root + os.sep)), None)


def shown_path(path: object) -> str:
    """A path for a one-line message: a very long one is cut in the middle, odd characters escaped."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    if len(text) > 160:
        text = f"{text[:80]}...{text[-60:]} ({len(text)} characters)"
    return text if text.isprintable() else repr(text)


@contextlib.contextmanager
def file_access(action: str, path: Path) -> Iterator[None]:
    """Report an ``OSError`` inside the block as :class:`FileAccessError` naming the path."""
    try:
        yield
    except RopekitError:
        raise
    except OSError as exc:
        raise access_error(exc, action, path) from None


def access_error(exc: OSError, action: str, path: Path) -> FileAccessError:
    """The one-line error for ``exc``, raised while trying to ``action`` ``path``."""
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or type(exc).__name__
    fix = _FIXES.get(exc.errno or 0, "check the path and its permissions, or write the patch elsewhere with ")
    parts: list[object] = [f"cannot {action} {shown_path(where)}: {reason}; {fix}"]
    if fix.endswith(" with "):
        parts.append(Param("out", placeholder="DIR"))
    return FileAccessError(*parts)
