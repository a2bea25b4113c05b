"""The committed reference model: where it lives, how it is written and read.

``ropekit/eval/reference/`` holds ``config.json`` (a plain Llama config in the
layout both transformers 4.x and 5.x read), ``model.safetensors`` (fp16 weights,
the tied ``lm_head`` left out) and ``training.json`` (how it was trained and what
it measured). ``python -m ropekit.eval.train_reference`` rebuilds all three.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ropekit.files import atomic_write

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "training.json"
#: the tokenizer a folder declares in its training.json when it reads raw bytes
BYTE_TOKENIZER = "bytes"


@dataclass(frozen=True)
class ReferenceArchitecture:
    """A small byte-level Llama (1.82M parameters with the defaults)."""

    vocab_size: int = 256
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    window: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    def config_dict(self) -> dict[str, Any]:
        """config.json contents: legacy ``rope_theta`` + ``rope_scaling`` keys, read by 4.x and 5.x alike."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "head_dim": self.hidden_size // self.num_attention_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.window,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": None,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def llama_config(config: dict[str, Any]) -> Any:
    """A fresh transformers ``LlamaConfig`` from a config.json dict."""
    from transformers import LlamaConfig

    values = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    return LlamaConfig(**values)


def read_metadata(folder: Path = REFERENCE_DIR) -> dict[str, Any]:
    """The training metadata of a reference folder (``{}`` when the folder has none)."""
    path = Path(folder) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_reference(model: Any, config: dict[str, Any], metadata: dict[str, Any], folder: Path) -> None:
    """Write config.json, fp16 model.safetensors and training.json; each file lands whole or not at all."""
    from safetensors.torch import save as save_bytes

    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    tensors = {k: v.detach().to("cpu").half().contiguous() for k, v in sorted(state.items())}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_FILE, save_bytes(tensors, metadata={"format": "pt"}))
    atomic_write(folder / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    atomic_write(folder / METADATA_FILE, (json.dumps(metadata, indent=2) + "\n").encode())
