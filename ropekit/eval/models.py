"""Load a causal LM once, then rebuild it under any RoPE scaling through ropekit itself.

A model is a local Hugging Face folder or a GGUF file (read through transformers' GGUF
support, which dequantizes the weights; the tokenizer comes from the same file).
Every scaled variant starts from a fresh transformers config read from the model,
is patched with :func:`ropekit.apply_rope_scaling`, instantiated from that config on
the meta device and given the loaded tensors themselves (no copy of the weights;
``inv_freq`` is a non-persistent buffer, so the rotary modules are rebuilt from the new
config). Nothing is loaded with remote code.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ropekit.errors import InvalidRequestError, ResolutionError
from ropekit.eval import corpus
from ropekit.eval.reference import BYTE_TOKENIZER, REFERENCE_DIR, read_metadata
from ropekit.remote_code import no_remote_code

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
    #: the GGUF file inside ``folder`` the model was read from (None: a Hugging Face folder)
    gguf_file: str | None = None
    attn_implementation: str = "sdpa"
    #: token ids back to text (what generation tests read)
    decode: Callable[[list[int]], str] = corpus.decode_bytes

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


def load_model(source: str | Path | None = None, device: Any = None) -> LoadedModel:
    """Read a local Hugging Face causal LM folder or a ``.gguf`` file (default: the reference model)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder, gguf_file = model_location(source)
    device = _device(device)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    metadata = read_metadata(folder) if gguf_file is None else {}
    encode, decode = _codec(folder, metadata, gguf_file)
    loaded = LoadedModel(folder, "", 0, encode, {}, device, dtype, metadata, gguf_file, attention_for(device), decode)
    raw = json.loads((folder / "config.json").read_text()) if gguf_file is None else fresh_config(loaded).to_dict()
    window = trained_window(raw)
    with quiet_loading(), no_remote_code(folder, "model"):
        base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype,
                                                    attn_implementation="sdpa", trust_remote_code=False)
    state = {k: v.detach().to(device) for k, v in base.state_dict().items()}
    del base
    if gguf_file is not None:
        name = str(folder / gguf_file)
    else:
        name = "ropekit reference (byte-level Llama)" if folder.resolve() == REFERENCE_DIR else str(folder)
    return replace(loaded, name=name, window=window, state=state)


def model_location(source: str | Path | None) -> tuple[Path, str | None]:
    """``(folder, gguf file name or None)`` for a model argument; checked before anything heavy loads."""
    if source is None:
        return REFERENCE_DIR, None
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path.parent, path.name
    if path.is_file():
        raise ResolutionError(f"{path} is a file but not a .gguf model; pass a local Hugging Face model folder "
                              "(config.json, weights, tokenizer) or a .gguf file")
    if not (path / "config.json").is_file():
        raise ResolutionError(f"{path} has no config.json; pass a local Hugging Face model folder, a .gguf file "
                              "(or nothing, for ropekit's reference model)")
    return path, None


def attention_for(device: Any) -> str:
    """FlashAttention 2 on a CUDA device where ``flash_attn`` is installed, else PyTorch SDPA."""
    import importlib.util

    if getattr(device, "type", str(device)) == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


@contextmanager
def quiet_loading() -> Iterator[None]:
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

    with quiet_loading(), no_remote_code(model.folder, "config"):
        return AutoConfig.from_pretrained(model.folder, gguf_file=model.gguf_file, trust_remote_code=False)


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


def build(model: LoadedModel, config: Any, *, trainable: bool = False) -> Any:
    """Instantiate ``config`` with the model's weights, on the model's device.

    For evaluation the model is built on the meta device and takes the loaded tensors
    themselves (``assign=True``): no second copy of the weights, ever. ``trainable=True``
    builds a model with its own copy, which a fine-tune may change.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from ropekit.landing.rotary import rebuild_rotaries

    config._attn_implementation = model.attn_implementation
    if trainable:
        with torch.device(model.device):
            built = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
        built.load_state_dict(model.state, strict=True)
        return built.eval()
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    built.load_state_dict(model.state, strict=True, assign=True)
    built.tie_weights()
    rebuild_rotaries(built, device=model.device)
    leftover = [name for name, t in [*built.named_parameters(), *built.named_buffers()] if t.device.type == "meta"]
    if leftover:  # a buffer this architecture builds outside its rotary modules: build it the plain way
        return build(model, config, trainable=True)
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


def _codec(path: Path, metadata: dict[str, Any],
           gguf_file: str | None = None) -> tuple[corpus.Encoder, Callable[[list[int]], str]]:
    if metadata.get("tokenizer") == BYTE_TOKENIZER:
        return corpus.encode_bytes, corpus.decode_bytes
    if gguf_file is None and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ResolutionError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                              "save the model's tokenizer into the folder with tokenizer.save_pretrained")
    tokenizer = load_tokenizer(path, gguf_file)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    return encode, decode


def load_tokenizer(path: Path, gguf_file: str | None = None) -> Any:
    """The model's tokenizer, from its folder or from the GGUF file itself."""
    from transformers import AutoTokenizer

    with quiet_loading(), no_remote_code(path, "tokenizer"):
        return AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=False)
