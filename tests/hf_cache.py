"""Build a real Hugging Face cache on disk, in the layout huggingface_hub itself writes.

::

    <root>/models--<org>--<name>/
        blobs/<git blob sha1>            file contents (non-LFS files are named by their git sha1)
        snapshots/<commit>/<filename>    relative symlinks to ../../blobs/<sha1>
        refs/<branch or tag>             the commit the ref points at

Nothing of huggingface_hub is imported or imitated here: the tests then run the
real ``hf_hub_download`` against this folder with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub, as the ETag of a non-LFS file) gives a blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def card(base_model: str | list[str] | None, body: str = "A fine-tune.\n") -> bytes:
    """A README.md model card with YAML front matter naming ``base_model``."""
    if base_model is None:
        return body.encode()
    if isinstance(base_model, str):
        meta = f"base_model: {base_model}\n"
    else:
        meta = "base_model:\n" + "".join(f"- {b}\n" for b in base_model)
    return f"---\nlicense: apache-2.0\n{meta}library_name: transformers\n---\n\n{body}".encode()


class HFCache:
    """A Hugging Face hub cache folder that tests fill with repos and commits."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def repo_folder(self, repo_id: str) -> Path:
        return self.root / "--".join(["models", *repo_id.split("/")])

    def add(self, repo_id: str, files: dict[str, bytes], *, refs: tuple[str, ...] = ("main",),
            commit: str | None = None) -> str:
        """Store one commit of ``repo_id`` holding ``files``; point ``refs`` at it; return the commit."""
        if commit is None:
            digest = hashlib.sha1(repo_id.encode())
            for name in sorted(files):
                digest.update(name.encode() + b"\0" + files[name])
            commit = digest.hexdigest()
        folder = self.repo_folder(repo_id)
        blobs = folder / "blobs"
        snapshot = folder / "snapshots" / commit
        blobs.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            blob = blobs / git_blob_sha1(data)
            blob.write_bytes(data)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(os.path.relpath(blob, link.parent), link)
        for ref in refs:
            ref_file = folder / "refs" / ref
            ref_file.parent.mkdir(parents=True, exist_ok=True)
            ref_file.write_text(commit)  # huggingface_hub writes the bare sha, no newline
        return commit
