"""Turn a GGUF file into a plain Hugging Face model folder (dequantized weights and tokenizer).

transformers reads a GGUF file through the ``gguf`` package and dequantizes its tensors,
but refuses ``save_pretrained`` on the result ("The model is quantized with gguf and is
not serializable"). The weights it loaded are ordinary tensors, so they are moved into
a model built from the same config (on the meta device, no copy) and saved from there,
with the tokenizer read from the same file. The folder then loads like any other:
``AutoModelForCausalLM.from_pretrained(out)``, ``ropekit patch``, a fine-tune.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ropekit.errors import InvalidRequestError, ResolutionError

DTYPES = ("float32", "bfloat16", "float16")
SOURCE_FILE = "gguf_source.json"


def check_conversion(gguf: str | Path, out: str | Path, dtype: str) -> tuple[Path, Path]:
    """The GGUF path and the output folder, checked before anything heavy is imported."""
    import importlib.util

    source, target = Path(gguf), Path(out)
    if not source.is_file() or source.suffix.lower() != ".gguf":
        raise ResolutionError(f"{source} is not a .gguf file; pass the path of a GGUF model file")
    if dtype not in DTYPES:
        raise InvalidRequestError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidRequestError(f"--out {target} exists and is not an empty folder; pass a new or empty folder")
    if not target.resolve().parent.is_dir():
        raise InvalidRequestError(f"the parent folder of --out {target} does not exist; create it first")
    missing = [m for m in ("torch", "transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ResolutionError(f"reading GGUF files needs {', '.join(missing)}; "
                              "install them with pip install 'ropekit[eval]'")
    return source, target


def convert_gguf(gguf: str | Path, out: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Write ``out`` (config.json, model.safetensors, tokenizer files, ``gguf_source.json``).

    The folder appears whole or not at all: it is written beside ``out`` and renamed into place.
    Returns what ``gguf_source.json`` records.
    """
    import torch

    from ropekit.eval.models import quiet_loading

    source, target = check_conversion(gguf, out, dtype)
    # libraries imported on the way (deepspeed through accelerate) print on stdout: keep it for the result
    with contextlib.redirect_stdout(sys.stderr), quiet_loading():
        return _convert(source, target, getattr(torch, dtype), dtype)


def _convert(source: Path, target: Path, torch_dtype: Any, dtype: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ropekit.landing.rotary import rebuild_rotaries

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch_dtype,
                                                  trust_remote_code=False)
    state = loaded.state_dict()
    config = loaded.config
    del loaded
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plain.load_state_dict(state, strict=True, assign=True)
    plain.tie_weights()  # assign=True gives tied parameters separate objects over the same storage
    rebuild_rotaries(plain, device=torch.device("cpu"))
    record = {"source": source.name, "sha256": _sha256(source), "dtype": dtype,
              "model_type": config.model_type, "parameters": sum(p.numel() for p in plain.parameters())}
    staging = Path(tempfile.mkdtemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
