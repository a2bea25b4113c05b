"""Which weights a config belongs to: a cheap, stable identity for the receipt.

A sharded checkpoint is named by the sha256 of its index file
(``model.safetensors.index.json``): the index lists every tensor and the shard
holding it, so any change of layout or shard set changes it. It does not hash the
shards' bytes; a Hub revision pins those. A single weights file is named by the
sha256 of its bytes: in the Hugging Face cache that hash is the blob's file name
(Git LFS stores the file under its sha256), so it costs nothing; a local file is
read once, in 8 MiB blocks.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

#: index files, then single files, in the order transformers looks for them
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_BLOCK = 8 * 2**20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def weights_identity(folder: Path) -> dict[str, Any] | None:
    """``{"file", "sha256", "kind"}`` for the weights beside a config, or None when there are none.

    ``kind`` says what was hashed: ``index-file`` (the shard index's bytes) or
    ``weights-file`` (the single weights file's bytes).
    """
    for name in INDEX_FILES:
        path = folder / name
        if path.is_file():
            return {"file": name, "kind": "index-file", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    for name in SINGLE_FILES:
        path = folder / name
        if path.is_file():
            return {"file": name, "kind": "weights-file", "sha256": _file_sha256(path)}
    return None


def _file_sha256(path: Path) -> str:
    target = path.resolve()
    if path.is_symlink() and target.parent.name == "blobs" and _SHA256.match(target.name):
        return target.name  # the Hugging Face cache stores an LFS file under its sha256
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
