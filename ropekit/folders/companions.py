"""The model's other small files that ``patch --out`` copies beside the patched config.

Copied: regular top-level files of the model folder (tokenizer, generation config, chat
template, the safetensors index), read without blocking and no larger than
:data:`MAX_COMPANION_BYTES`, with permissions no wider than the source's. Skipped: weights,
sub-folders, hidden files, ropekit's own files, and files over the size limit. Refused,
with a warning naming each: a symlink that leads out of the model folder (a Hugging Face
cache snapshot's links into its own repo's ``blobs/`` are the one exception), and anything
that is not a regular file (fifos, devices, sockets, files of ``/proc``, ``/sys``, ``/dev``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ropekit.folders.atomic import default_mode
from ropekit.folders.guard import CACHE_REPO, special_root

#: weight files are never copied by ``patch --out`` (link or copy them yourself)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack",
                   ".onnx", ".npz", ".npy", ".tflite", ".ot", ".pkl")
#: companion files larger than this are skipped as well (tokenizers are a few MB to ~35 MB)
MAX_COMPANION_BYTES = 64 * 1024 * 1024


@dataclass
class Companion:
    """One file to copy: its name, bytes and permission bits."""

    name: str
    data: bytes
    mode: int


@dataclass
class Companions:
    """What :func:`read_companions` found: files to copy, ordinary skips, and refusals to warn about."""

    files: list[Companion] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def read_companions(source: Path, ignore: set[str]) -> Companions:
    """Read the companion files of the model folder ``source`` (names in ``ignore`` are left out)."""
    found = Companions()
    source = Path(source)
    real_source = os.path.realpath(source)
    allowed = [real_source, *_cache_blobs(source, real_source)]
    for name in sorted(os.listdir(source)):
        if name in ignore or name.startswith("."):
            continue
        entry = source / name
        if entry.is_symlink():
            target = os.path.realpath(entry)
            if not any(_inside(target, root) for root in allowed):
                found.refused.append(f"{name} (a symlink to {target}, outside the model folder)")
                continue
        else:
            target = str(entry)
        _read_one(name, target, found)
    return found


def _read_one(name: str, target: str, found: Companions) -> None:
    real = os.path.realpath(target)
    special = special_root(Path(real))
    if special is not None:
        found.refused.append(f"{name} (a file of {special}, not a model file)")
        return
    try:
        info = os.stat(real)
    except OSError as exc:
        found.refused.append(f"{name} (cannot be read: {exc.strerror or exc})")
        return
    if stat.S_ISDIR(info.st_mode):
        found.skipped.append(f"{name}/ (folder)")
    elif not stat.S_ISREG(info.st_mode):
        found.refused.append(f"{name} ({_kind(info.st_mode)}, not a regular file)")
    elif name.lower().endswith(WEIGHT_SUFFIXES):
        found.skipped.append(f"{name} (weights)")
    elif info.st_size > MAX_COMPANION_BYTES:
        found.skipped.append(f"{name} ({info.st_size // (1024 * 1024)} MiB, over the "
                             f"{MAX_COMPANION_BYTES // (1024 * 1024)} MiB limit)")
    else:
        data = _read_regular(real, info)
        if data is None:
            found.refused.append(f"{name} (changed while it was read)")
        else:
            found.files.append(Companion(name, data, info.st_mode & 0o777 & default_mode()))


def _read_regular(path: str, expected: os.stat_result) -> bytes | None:
    """The bytes of the regular file ``path``, or None when it is no longer the file ``expected``."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (expected.st_dev, expected.st_ino) or not stat.S_ISREG(info.st_mode):
            return None
        chunks, left = [], MAX_COMPANION_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return None if len(data) > MAX_COMPANION_BYTES else data


def _cache_blobs(source: Path, real_source: str) -> list[str]:
    """``<repo>/blobs`` when ``source`` is a Hugging Face cache snapshot ``<repo>/snapshots/<sha>``."""
    for folder in (os.path.abspath(source), real_source):
        snapshots = os.path.dirname(folder)
        repo = os.path.dirname(snapshots)
        if os.path.basename(snapshots) == "snapshots" and CACHE_REPO.match(os.path.basename(repo)):
            return [os.path.realpath(os.path.join(repo, "blobs"))]
    return []


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
