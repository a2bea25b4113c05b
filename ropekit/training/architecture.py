"""The shape of a decoder, read from its config.json: what memory planning needs.

Reads the language tower (``text_config`` and its relatives for VLMs): layers,
heads, grouped KV heads, head size, MLP width and gating, MoE experts (shared
ones included), DeepSeek's multi-head latent attention (MLA), tied embeddings,
and which layers attend through a sliding window. Values a config.json leaves
implicit are taken from transformers' config class for that model_type (its
defaults and derived fields such as ``head_dim``), and the result says which ones.
The defaults come from a table captured from transformers
(``config_defaults.json``, made by ``scripts/capture_config_defaults.py``), so that
reading a config stays arithmetic and never imports transformers and torch; only a
model_type the table lacks, or a derived value it cannot compute, asks the
installed transformers.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ropekit.errors import InvalidConfigError
from ropekit.scaling.transformers_support import quiet_transformers

#: sub-configs that hold a VLM's language model, in the order they are tried
TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")
VISION_KEYS = ("vision_config", "visual", "vision_tower_config", "audio_config")
#: decoders whose MLP is up -> activation -> down (two matrices) rather than gated (three)
NON_GATED_MODEL_TYPES = frozenset({"phi", "gpt_neox", "gptj", "starcoder2", "falcon", "persimmon", "stablelm"})
#: decoders with a bias on q, k and v (not on o) whatever attention_bias says
QKV_BIAS_MODEL_TYPES = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl", "qwen2_vl_text",
                                  "qwen2_5_vl_text", "qwen2_5_omni_thinker"})
#: decoders with per-head RMSNorm on q and k
QK_NORM_MODEL_TYPES = frozenset({"qwen3", "qwen3_moe", "qwen3_vl_text", "qwen3_vl_moe_text", "gemma3_text",
                                 "olmo2"})
#: the keys memory planning reads; only these are reported when transformers supplies them
STRUCTURAL_KEYS = frozenset({
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "tie_word_embeddings", "sliding_window", "layer_types",
    "sliding_window_pattern", "use_sliding_window", "max_window_layers", "num_experts", "num_local_experts",
    "num_experts_per_tok", "moe_intermediate_size", "attention_bias",
})
#: config keys read as data (never passed to transformers: they trigger rope validation)
_ROPE_KEYS = frozenset({"rope_scaling", "rope_parameters", "rope_theta", "quantization_config", "auto_map"})


@dataclass(frozen=True)
class MLA:
    """DeepSeek multi-head latent attention dimensions."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class MoE:
    """Mixture-of-experts MLP dimensions."""

    num_experts: int
    experts_per_token: int
    expert_intermediate: int
    shared_intermediate: int  # total width of the always-on shared expert(s), 0 if none
    shared_gate: bool  # Qwen2-MoE's sigmoid gate on the shared expert
    router_bias: bool  # DeepSeek-V3's e_score_correction_bias
    moe_layers: tuple[bool, ...]


@dataclass(frozen=True)
class Architecture:
    """A decoder's dimensions; the language tower only for VLMs."""

    model_type: str
    text_path: tuple[str, ...]
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    gated_mlp: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    mla: MLA | None = None
    moe: MoE | None = None
    #: per layer: None for full attention, else the sliding window in tokens
    layer_windows: tuple[int | None, ...] = ()
    vision_tower: str | None = None  # the config key of an excluded vision/audio tower
    extra_prediction_layers: int = 0  # DeepSeek's multi-token-prediction layers (not counted)
    filled: dict[str, Any] = field(default_factory=dict)  # values taken from transformers' defaults
    defaults_from: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def sliding_layers(self) -> int:
        return sum(1 for w in self.layer_windows if w is not None)


def read_architecture(config: dict[str, Any]) -> Architecture:
    """The language tower's dimensions; raises :class:`InvalidConfigError` naming a missing key."""
    if not isinstance(config, dict):
        raise InvalidConfigError(f"expected a config.json object, got {type(config).__name__}")
    text, path = _text_config(config)
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    vision = next((key for key in VISION_KEYS if isinstance(config.get(key), dict)), None)
    known, filled, source = _with_defaults(model_type, text)
    where = ".".join(path) + "." if path else ""
    notes: list[str] = []

    def need(key: str, *aliases: str) -> int:
        for name in (key, *aliases):
            value = known.get(name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise InvalidConfigError(f"{where}{name} is {value!r}; expected a positive integer; "
                                             "fix the config.json")
                return value
        raise InvalidConfigError(f"{where}{key} is missing and transformers has no default for model_type "
                                 f"{model_type!r}; pass the model's full config.json")

    hidden = need("hidden_size", "d_model", "n_embd")
    layers = need("num_hidden_layers", "n_layer", "num_layers")
    heads = need("num_attention_heads", "n_head")
    kv_heads = known.get("num_key_value_heads") or heads
    head_dim = known.get("head_dim") or hidden // heads
    vocab = need("vocab_size")
    tied = _tied_embeddings(config, text, known, notes)

    mla = _mla(known)
    moe = _moe(known, layers)
    intermediate = known.get("intermediate_size")
    if intermediate is None and (moe is None or not all(moe.moe_layers)):
        intermediate = need("intermediate_size", "ffn_dim", "n_inner")
    extra = int(known.get("num_nextn_predict_layers") or 0)
    if extra:
        notes.append(f"{extra} multi-token-prediction layer(s) (num_nextn_predict_layers) not counted, "
                     "as in the published parameter counts")
    if vision:
        notes.append(f"{vision} tower excluded: counts cover the language model only; add the vision "
                     "encoder's weights (typically 0.3-0.7B parameters) yourself")
    windows, window_note = _layer_windows(known, layers)
    if window_note:
        notes.append(window_note)

    return Architecture(
        model_type=model_type, text_path=path, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=int(kv_heads), head_dim=int(head_dim), intermediate_size=int(intermediate or 0),
        vocab_size=vocab, tied_embeddings=bool(tied),
        gated_mlp=model_type not in NON_GATED_MODEL_TYPES,
        qkv_bias=model_type in QKV_BIAS_MODEL_TYPES or bool(known.get("attention_bias")),
        o_bias=bool(known.get("attention_bias")) and model_type not in QKV_BIAS_MODEL_TYPES,
        qk_norm=model_type in QK_NORM_MODEL_TYPES, mla=mla, moe=moe, layer_windows=windows,
        vision_tower=vision, extra_prediction_layers=extra, filled=filled, defaults_from=source,
        notes=tuple(notes),
    )


def _tied_embeddings(config: dict[str, Any], text: dict[str, Any], known: dict[str, Any],
                     notes: list[str]) -> bool:
    """The language tower's own setting, else the wrapper's (VLMs), else transformers' default."""
    key = "tie_word_embeddings"
    for source in (text, config):
        if source.get(key) is not None:
            return bool(source[key])
    if known.get(key) is not None:
        return bool(known[key])
    notes.append("tie_word_embeddings not set; assumed untied (a separate LM head)")
    return False


def _text_config(config: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    for key in TEXT_CONFIG_KEYS:
        if isinstance(config.get(key), dict):
            return config[key], (key,)
    thinker = config.get("thinker_config")
    if isinstance(thinker, dict) and isinstance(thinker.get("text_config"), dict):
        return thinker["text_config"], ("thinker_config", "text_config")
    return config, ()


#: keys that name the same value across transformers versions (one in the config is enough)
_ALIASES = {"num_local_experts": ("num_experts",), "num_experts": ("num_local_experts",)}
#: the keys the arithmetic cannot do without
_ARITHMETIC_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
#: derived defaults this module computes as transformers does (others ask transformers)
_DERIVED_HERE = frozenset({"head_dim", "num_key_value_heads", "layer_types"})


@functools.lru_cache(maxsize=1)
def _defaults_table() -> dict[str, Any]:
    return json.loads(resources.files("ropekit.training").joinpath("config_defaults.json").read_text())


def _with_defaults(model_type: str, text: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The config with values it omits filled from transformers' defaults for ``model_type``, and which ones.

    ``head_dim`` and ``num_key_value_heads`` follow ``hidden_size / num_attention_heads`` and
    ``num_attention_heads`` where the class derives them; ``layer_types`` is left to
    :func:`_layer_windows`, which reads the sliding-window keys the way transformers derives it.
    """
    table = _defaults_table()
    entry = table["model_types"].get(model_type)
    if entry is None:
        if all(key in text for key in _ARITHMETIC_KEYS):  # nothing to fill: read the file as it is
            return dict(text), {}, None
        return _with_transformers_defaults(model_type, text)
    missing_derived = set(entry["derived"]) - set(text)
    here = set(_DERIVED_HERE)
    if not entry.get("layer_types_period") and "use_sliding_window" not in entry["defaults"]:
        here.discard("layer_types")  # derived from keys of its own: only the config class knows how
    if missing_derived - here:
        return _with_transformers_defaults(model_type, text)
    filled = {k: v for k, v in entry["defaults"].items()
              if k not in text and not any(alias in text for alias in _ALIASES.get(k, ()))}
    known = {**filled, **text}
    heads, hidden = known.get("num_attention_heads"), known.get("hidden_size")
    if "num_key_value_heads" in missing_derived and heads:
        filled["num_key_value_heads"] = known["num_key_value_heads"] = heads
    if "head_dim" in missing_derived and heads and hidden and isinstance(heads, int) and isinstance(hidden, int):
        filled["head_dim"] = known["head_dim"] = hidden // heads
    layers, period = known.get("num_hidden_layers"), entry.get("layer_types_period")
    if ("layer_types" in missing_derived and period and isinstance(layers, int)
            and "sliding_window_pattern" not in text):
        filled["layer_types"] = known["layer_types"] = [period[i % len(period)] for i in range(layers)]
    if not filled:
        return known, {}, None
    return known, filled, f"transformers {table['transformers']} {model_type} config defaults"


def _with_transformers_defaults(model_type: str, text: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                                               str | None]:
    """The config with values it omits filled from transformers' config class, and which ones."""
    try:
        from transformers import AutoConfig
    except ImportError:
        return dict(text), {}, None
    kwargs = {k: v for k, v in text.items() if k not in _ROPE_KEYS and k != "model_type"}
    try:
        with quiet_transformers():
            full = AutoConfig.for_model(model_type, **kwargs).to_dict()
    except Exception:  # an unknown model_type or a config transformers rejects: read the file as it is
        return dict(text), {}, None
    filled = {k: v for k, v in full.items() if k not in text and v is not None and k in STRUCTURAL_KEYS}
    source = f"transformers {_transformers_version()} {model_type} config defaults"
    return {**filled, **text}, filled, source


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def _mla(known: dict[str, Any]) -> MLA | None:
    kv_rank = known.get("kv_lora_rank")
    if not kv_rank:
        return None
    try:
        return MLA(q_lora_rank=known.get("q_lora_rank") or None, kv_lora_rank=int(kv_rank),
                   qk_nope_head_dim=int(known["qk_nope_head_dim"]),
                   qk_rope_head_dim=int(known["qk_rope_head_dim"]), v_head_dim=int(known["v_head_dim"]))
    except KeyError as exc:
        raise InvalidConfigError(f"config has kv_lora_rank (MLA) but no {exc.args[0]}; "
                                 "pass the model's full config.json") from None


def _moe(known: dict[str, Any], layers: int) -> MoE | None:
    experts = known.get("num_local_experts") or known.get("num_experts") or known.get("n_routed_experts")
    if not experts:
        return None
    top_k = int(known.get("num_experts_per_tok") or known.get("num_experts_per_token") or 1)
    width = int(known.get("moe_intermediate_size") or known.get("intermediate_size") or 0)
    if not width:
        raise InvalidConfigError("MoE config has neither moe_intermediate_size nor intermediate_size; "
                                 "pass the model's full config.json")
    shared = int(known.get("n_shared_experts") or 0) * width
    shared_gate = False
    if known.get("shared_expert_intermediate_size"):  # Qwen2-MoE: one shared expert with a gate
        shared, shared_gate = int(known["shared_expert_intermediate_size"]), True
    if isinstance(known.get("moe_layer_freq"), list):  # MiMo-V2: one 0/1 flag per layer
        flags = known["moe_layer_freq"]
        sparse = tuple(bool(flags[i]) if i < len(flags) else False for i in range(layers))
    elif "first_k_dense_replace" in known or "moe_layer_freq" in known:  # DeepSeek
        first = int(known.get("first_k_dense_replace") or 0)
        freq = int(known.get("moe_layer_freq") or 1)
        sparse = tuple(i >= first and i % freq == 0 for i in range(layers))
    else:  # Mixtral, Qwen-MoE
        step = int(known.get("decoder_sparse_step") or 1)
        dense = set(known.get("mlp_only_layers") or ())
        sparse = tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))
    return MoE(int(experts), top_k, width, shared, shared_gate,
               router_bias=known.get("topk_method") == "noaux_tc", moe_layers=sparse)


def _layer_windows(known: dict[str, Any], layers: int) -> tuple[tuple[int | None, ...], str | None]:
    """Per-layer sliding window (None: full attention), following transformers' semantics."""
    window = known.get("sliding_window")
    full = (None,) * layers
    layer_types = known.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == layers:
        if not window:
            return full, None
        windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
        others = sorted({t for t in layer_types if t not in ("sliding_attention", "full_attention")})
        note = f"layer types {', '.join(others)} counted as full attention" if others else None
        return windows, note
    if not window:
        return full, None
    if "use_sliding_window" in known:  # Qwen2 family: off unless asked, then from max_window_layers
        if not known["use_sliding_window"]:
            return full, None
        start = int(known.get("max_window_layers") or 0)
        return tuple(window if i >= start else None for i in range(layers)), None
    pattern = known.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0:
        return tuple(None if (i + 1) % pattern == 0 else window for i in range(layers)), None
    return (window,) * layers, f"sliding_window {window} applies to every layer (as transformers reads it)"
