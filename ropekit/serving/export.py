"""Launch arguments that make a serving engine serve exactly what a receipt says.

``ropekit export DIR --engine vllm|sglang|llama.cpp|tgi`` reads ``DIR/rope_receipt.json``
(the source of truth), checks it against ``DIR/config.json`` with
:func:`ropekit.verify_receipt`, and asks the engine's module for its arguments.
A folder without a valid receipt is refused (exit 4; exit 3 when the config was
edited after the patch), and so is a method an engine cannot serve faithfully.
"""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropekit.constants import RECEIPT_FILENAME
from ropekit.errors import (
    InvalidConfigError,
    InvalidRequestError,
    ResolutionError,
)
from ropekit.jsonio import read_config_file
from ropekit.receipt import Receipt, verify_receipt
from ropekit.scaling.config_view import ConfigView, RopeSite
from ropekit.training.architecture import TEXT_CONFIG_KEYS, VISION_KEYS

#: engine name -> module under ropekit.serving that builds its arguments
ENGINES = {"vllm": "vllm", "sglang": "sglang", "llama.cpp": "llamacpp", "tgi": "tgi"}
LAYOUTS = ("rope_scaling", "rope_parameters")
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".gguf"})
_LONG_CONTEXT_KEYS = ("method", "factor", "original_max_position_embeddings", "new_max_position_embeddings",
                      "attn_factor", "beta_fast", "beta_slow")



@dataclass(frozen=True)
class SiteRope:
    """One patched rope dict, normalized the way engines read it (rope_type and rope_theta present)."""

    path: tuple[str, ...]
    layout: str
    layer_type: str | None
    rope: dict[str, Any]

    @property
    def label(self) -> str:
        return ".".join([*self.path, self.layout, *([self.layer_type] if self.layer_type else [])])


@dataclass(frozen=True)
class ServeSpec:
    """What a patched folder must be served as: the receipt's long_context and the final rope dicts."""

    folder: Path
    receipt: Receipt
    config: dict[str, Any]
    sites: tuple[SiteRope, ...]

    @property
    def long_context(self) -> dict[str, Any]:
        return self.receipt.long_context

    @property
    def method(self) -> str:
        return str(self.long_context["method"])

    @property
    def factor(self) -> float:
        return float(self.long_context["factor"])

    @property
    def original(self) -> int:
        return int(self.long_context["original_max_position_embeddings"])

    @property
    def new_window(self) -> int:
        return int(self.long_context["new_max_position_embeddings"])

    @property
    def primary(self) -> SiteRope:
        return self.sites[-1]

    @property
    def text_sites(self) -> tuple[SiteRope, ...]:
        """The language model's rope dicts (all layer types of the primary container)."""
        return tuple(s for s in self.sites if s.path == self.primary.path)

    @property
    def composite(self) -> bool:
        """A wrapper config (VLM) whose language model reads a text sub-config."""
        return bool(self.primary.path) or any(isinstance(self.config.get(k), dict)
                                              for k in (*TEXT_CONFIG_KEYS, *VISION_KEYS))

    @property
    def text_path(self) -> tuple[str, ...]:
        """Where the language model's config lives once transformers builds it."""
        if self.primary.path:
            return self.primary.path
        return ("text_config",) if self.composite else ()

    @property
    def nested_layer_types(self) -> bool:
        return any(s.layer_type for s in self.text_sites)

    @property
    def transformers5_layout(self) -> bool:
        return self.primary.layout == "rope_parameters"

    @property
    def rope_theta(self) -> float:
        return float(self.primary.rope["rope_theta"])


@dataclass
class LaunchArguments:
    """The command, environment and caveats for one engine."""

    engine: str
    versions: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    prepare: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def command_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.argv)}" if env else shlex.join(self.argv)

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "versions_assumed": self.versions, "argv": list(self.argv),
                "env": dict(self.env), "prepare": [list(c) for c in self.prepare],
                "command": self.command_line(), "prepare_commands": [shlex.join(c) for c in self.prepare],
                "notes": list(self.notes)}


def load_serve_spec(folder: str | Path) -> ServeSpec:
    """Read and verify a patched folder's receipt and config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResolutionError(f"no folder at {folder}; pass the folder ropekit patch wrote (--out DIR)")
    receipt_path = folder / RECEIPT_FILENAME
    if not receipt_path.is_file():
        raise InvalidConfigError(f"{folder} has no {RECEIPT_FILENAME}; export needs a folder written by "
                                 "ropekit patch (run ropekit patch MODEL --out DIR first)")
    receipt = Receipt.load(receipt_path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ResolutionError(f"{folder} has a receipt but no config.json; restore the patched config.json")
    config = read_config_file(config_path)
    _check_long_context(receipt, receipt_path)
    verify_receipt(receipt, config)
    view = ConfigView(config)
    sites = tuple(_site_rope(view, label, receipt) for label in receipt["sites"])
    if not sites:
        raise InvalidConfigError(f"{receipt_path} lists no rope sites; re-run ropekit patch")
    return ServeSpec(folder, receipt, config, sites)


def export_arguments(folder: str | Path, engine: str) -> tuple[ServeSpec, LaunchArguments]:
    """The launch arguments for ``engine`` that serve the folder exactly as its receipt says."""
    module_name = ENGINES.get(engine.lower())
    if module_name is None:
        raise InvalidRequestError(f"engine {engine!r} is not known; expected one of {', '.join(ENGINES)}")
    spec = load_serve_spec(folder)
    module = importlib.import_module(f"ropekit.serving.{module_name}")
    arguments = module.launch_arguments(spec)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in spec.folder.iterdir()):
        base = (spec.receipt.get("model") or {}).get("id") or "the base model"
        arguments.notes.append(f"{spec.folder} holds no weight files: link or copy the weights of {base} "
                               "into it first (ropekit patch --out writes the config, receipt and tokenizer only)")
    return spec, arguments


def engine_rope(site: SiteRope, long_context: dict[str, Any]) -> dict[str, Any]:
    """A rope dict as engines take it: ``rope_type`` (never the legacy ``type``), YaRN's ``attn_factor``.

    vLLM and SGLang read YaRN's ``attn_factor`` as a multiplier on 0.1 ln s + 1
    (the receipt's meaning) and ignore transformers' absolute ``attention_factor``.
    """
    rope = dict(site.rope)
    if rope.get("rope_type") == "yarn" and long_context.get("attn_factor") not in (None, 1, 1.0):
        rope["attn_factor"] = long_context["attn_factor"]
    return rope


def json_override_path(spec: ServeSpec, value: dict[str, Any]) -> dict[str, Any]:
    """``value`` nested under the language model's sub-config path (empty for plain decoders)."""
    for key in reversed(spec.text_path):
        value = {key: value}
    return value


def _check_long_context(receipt: Receipt, where: Path) -> None:
    block = receipt.get("long_context")
    if not isinstance(block, dict) or any(k not in block for k in _LONG_CONTEXT_KEYS):
        expected = ", ".join(_LONG_CONTEXT_KEYS)
        raise InvalidConfigError(f"{where} has no complete long_context block (expected {expected}); "
                                 "re-run ropekit patch")
    factor, new = block["factor"], block["new_max_position_embeddings"]
    if not isinstance(factor, (int, float)) or factor <= 1 or not isinstance(new, int) or new <= 0:
        raise InvalidConfigError(f"{where} long_context has factor {factor!r} and new window {new!r}; expected a "
                                 "factor above 1 and a positive window; re-run ropekit patch")


def _site_rope(view: ConfigView, label: str, receipt: Receipt) -> SiteRope:
    parts = label.split(".")
    index = next((i for i, p in enumerate(parts) if p in LAYOUTS), None)
    if index is None:
        raise InvalidConfigError(f"receipt site {label!r} names no rope_scaling or rope_parameters dict; "
                                 "re-run ropekit patch")
    path, layout = tuple(parts[:index]), parts[index]
    layer_type = parts[index + 1] if len(parts) > index + 1 else None
    site = RopeSite(path, layout, layer_type)
    rope = view.read_rope(site)
    rope_type = rope.pop("type", None)
    rope["rope_type"] = rope.get("rope_type") or rope_type or "default"
    if rope["rope_type"] == "mrope":  # mrope only sections the rotary dims; engines call it default
        rope["rope_type"] = "default"
    node = view.node(path)
    if rope.get("rope_theta") is None:
        rope["rope_theta"] = _default_theta(receipt)
    partial = view.get_in(node, "partial_rotary_factor") if node is not None else None
    if partial is not None and "partial_rotary_factor" not in rope:
        rope["partial_rotary_factor"] = partial
    return SiteRope(path, layout, layer_type, rope)


def _default_theta(receipt: Receipt) -> float:
    """The rope_theta transformers assumes for this family when the config omits it."""
    from ropekit.errors import UnknownFamilyError
    from ropekit.registry import get_registry

    name = (receipt.get("family") or {}).get("name")
    try:
        return float(get_registry().family(name).default_rope_theta) if name else 10000.0
    except (UnknownFamilyError, KeyError):
        return 10000.0
