"""Load a causal LM once, then rebuild it under any RoPE scaling through ropekit itself.

Every scaled variant starts from a fresh transformers config read from the model's
folder, is patched with :func:`ropekit.apply_rope_scaling`, instantiated from that
config and given the same state dict (``inv_freq`` is a non-persistent buffer, so
the new config decides the frequencies).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from ropekit.errors import InvalidRequestError, ResolutionError
from ropekit.eval import corpus
from ropekit.eval.reference import BYTE_TOKENIZER, REFERENCE_DIR, read_metadata

NO_SCALING = "none"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


@dataclass(frozen=True)
class YarnBetas:
    """YaRN's ramp thresholds and temperature multiplier, passed through LongContextConfig."""

    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 1.0

    def __post_init__(self) -> None:
        from ropekit import LongContextConfig

        LongContextConfig(method="yarn", factor=2.0, beta_fast=self.beta_fast, beta_slow=self.beta_slow,
                          attn_factor=self.attn_factor)  # raises InvalidRequestError on bad values


@dataclass
class LoadedModel:
    """A model folder read once: its config, tokenizer, trained window and weights."""

    folder: Path
    name: str
    window: int
    encode: corpus.Encoder
    state: dict[str, Any]
    device: Any
    dtype: Any
    metadata: dict[str, Any] = field(default_factory=dict)

    def with_state(self, state: dict[str, Any], name: str) -> "LoadedModel":
        """The same model with other weights (a fine-tuned copy)."""
        return replace(self, state=state, name=name)


def default_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(name: Any) -> Any:
    import torch

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidRequestError(f"device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(f"device {name!r} was requested but torch sees no CUDA GPU; use --device cpu")
    return device


def load_model(folder: str | Path | None = None, device: Any = None) -> LoadedModel:
    """Read a local Hugging Face causal LM folder (default: the committed reference model)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(folder) if folder is not None else REFERENCE_DIR
    if not (path / "config.json").is_file():
        raise ResolutionError(f"{path} has no config.json; pass a local Hugging Face model folder "
                              "(or nothing, for ropekit's reference model)")
    device = _device(device)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    metadata = read_metadata(path)
    encode = _encoder(path, metadata)
    window = trained_window(json.loads((path / "config.json").read_text()))
    with _quiet_loading():
        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    state = {k: v.detach().to(device) for k, v in base.state_dict().items()}
    name = "ropekit reference (byte-level Llama)" if path.resolve() == REFERENCE_DIR else str(path)
    return LoadedModel(path, name, window, encode, state, device, dtype, metadata)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No transformers progress bar while loading (the profile shows its own on stderr)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def trained_window(config: dict[str, Any]) -> int:
    """The window the model was trained at, as ropekit's family for it reports it."""
    from ropekit import LongContextConfig, plan

    probe = LongContextConfig(method="linear", factor=2.0, allow_unstable=True, on_existing="replace")
    return int(plan(config, probe).original_window)


def fresh_config(model: LoadedModel) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model.folder)


def scaled_config(model: LoadedModel, method: str, factor: float, betas: YarnBetas = YarnBetas()) -> Any:
    """A fresh config with ``method`` at ``factor`` applied by ropekit (``none`` leaves it as it is).

    Scaling a model already ships (Llama 3.1's llama3, a YaRN checkpoint) is replaced: the
    method applies at ``factor`` from the shipped original window.
    """
    from ropekit import LongContextConfig, apply_rope_scaling

    config = fresh_config(model)
    if method == NO_SCALING:
        return config
    request = LongContextConfig(method=method, factor=float(factor), allow_unstable=True, on_existing="replace",
                                beta_fast=betas.beta_fast, beta_slow=betas.beta_slow,
                                attn_factor=betas.attn_factor)
    apply_rope_scaling(config, request)
    return config


def build(model: LoadedModel, config: Any) -> Any:
    """Instantiate ``config`` and load the model's weights into it, on the model's device."""
    import torch
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "sdpa"
    with torch.device(model.device):
        built = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    built.load_state_dict(model.state, strict=True)
    return built.eval()


def check_methods(methods: list[str]) -> None:
    """Fail early, with the list of choices, on a method name no plugin registers."""
    from ropekit.errors import RopekitError
    from ropekit.registry import get_registry

    registry = get_registry()
    for name in methods:
        if name == NO_SCALING:
            continue
        try:
            registry.method(name)
        except RopekitError:
            raise InvalidRequestError(f"unknown method {name!r}; expected {NO_SCALING} or one of "
                                      f"{', '.join(sorted(registry.methods))}") from None


def _encoder(path: Path, metadata: dict[str, Any]) -> corpus.Encoder:
    if metadata.get("tokenizer") == BYTE_TOKENIZER:
        return corpus.encode_bytes
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ResolutionError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                              "save the model's tokenizer into the folder with tokenizer.save_pretrained")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    return encode
