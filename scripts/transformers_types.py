"""Regenerate ropekit/plugins/transformers_types.json from the installed transformers.

For every decoder and vision-language model_type of the installed transformers (those
with a causal-LM, image-text-to-text or multimodal-LM class), the class-default config
says where the language model's config lives and what the config class assumes for the
rope-related values a config.json may leave out; a weightless skeleton says whether the
language tower builds any rotary module (found by its ``inv_freq`` buffers). Entries of
other transformers versions already in the file are kept, so running this once per
supported version (5.x, then 4.57) leaves the union:

    PYTHONPATH=$PWD /work/venv5/bin/python scripts/transformers_types.py
    PYTHONPATH=$PWD /work/venv4/bin/python scripts/transformers_types.py

The generic family reads this table as data: planning never imports transformers.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "ropekit" / "plugins" / "transformers_types.json"
#: rope-related values of the language config that a config.json may leave to the class
DEFAULT_KEYS = ("rope_theta", "head_dim", "hidden_size", "num_attention_heads", "max_position_embeddings",
                "partial_rotary_factor", "rotary_dim", "qk_rope_head_dim")


def decoder_model_types() -> list[str]:
    import transformers.models.auto.modeling_auto as auto

    names = set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    names |= set(getattr(auto, "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", {}))
    return sorted(names)


def text_path(config: Any) -> list[str]:
    """Where ``get_text_config()`` finds the language config, as a config.json path."""
    text = _text_config(config)
    if text is config:
        return []
    for key, value in vars(config).items():
        if value is text:
            return [key]
        for inner_key, inner in (vars(value).items() if hasattr(value, "to_dict") else ()):
            if inner is text:
                return [key, inner_key]
    return []


def entry(model_type: str) -> dict[str, Any]:
    from transformers import AutoConfig

    from ropekit.landing.rotary import rotary_modules, skeleton_with_rotaries

    try:
        config = AutoConfig.for_model(model_type)
    except Exception as exc:  # the class default does not even validate
        return {"text": [], "defaults": {}, "rope": None, "build_error": _short(exc)}
    data = config.to_dict()
    path = text_path(config)
    text = data
    for key in path:
        text = text[key]
    defaults = {k: text[k] for k in DEFAULT_KEYS if k in text}
    params = text.get("rope_parameters")
    if isinstance(params, dict):  # 5.x keeps theta and partial rotary inside the rope dict
        flat = params if not all(isinstance(v, dict) or v is None for v in params.values()) else {}
        for key in ("rope_theta", "partial_rotary_factor"):
            if key in flat:
                defaults.setdefault(key, flat[key])
    out: dict[str, Any] = {"text": path, "defaults": defaults}
    forced = _head_dim_follows_qk_rope(model_type, config)
    if forced:
        out["head_dim_from"] = "qk_rope_head_dim"
    if _rotary_dim_becomes_partial(model_type, config):
        out["rotary_dim_to_partial"] = True
    try:
        model = skeleton_with_rotaries(data)
    except Exception as exc:  # transformers cannot build its own class default
        out["rope"] = None
        out["build_error"] = _short(exc)
        return out
    out["rope"] = any(True for _ in rotary_modules(model))
    return out


def _text_config(config: Any) -> Any:
    try:
        return config.get_text_config()
    except ValueError:  # several candidates (an encoder and a decoder): the decoder generates
        return getattr(config, "decoder", config)


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def _rotary_dim_becomes_partial(model_type: str, config: Any) -> bool:
    """True when the config class turns a legacy ``rotary_dim`` into ``partial_rotary_factor`` (MiniMax-M2)."""
    from transformers import AutoConfig

    text = _text_config(config)
    try:
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        probe = _text_config(AutoConfig.for_model(model_type, rotary_dim=head_dim // 8))
    except Exception:
        return False
    probed = getattr(probe, "rope_parameters", None) or {}
    partial = probed.get("partial_rotary_factor", getattr(probe, "partial_rotary_factor", None))
    params = getattr(text, "rope_parameters", None) or {}
    before = params.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", None))
    return partial == 0.125 and before != 0.125


def _rejects_rope_type(model_type: str) -> bool:
    """True when the config class accepts only a legacy ``{type, factor}`` rope_scaling (OLMo on 4.57)."""
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(model_type, rope_scaling={"rope_type": "linear", "factor": 2.0})
    except ValueError as exc:  # wants the legacy ``type`` key (and only linear or dynamic)
        return "rope_scaling" in str(exc)
    except Exception:
        return False
    return False


def _head_dim_follows_qk_rope(model_type: str, config: Any) -> bool:
    """True when the config class overwrites a given head_dim with qk_rope_head_dim (MLA)."""
    from transformers import AutoConfig

    text = _text_config(config)
    qk = getattr(text, "qk_rope_head_dim", None)
    if not isinstance(qk, int):
        return False
    try:
        probe = AutoConfig.for_model(model_type, head_dim=qk * 3)
    except Exception:
        return False
    try:
        probe_text = _text_config(probe)
        return getattr(probe_text, "head_dim", None) == qk
    except Exception:
        return False


def main() -> int:
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    version = ".".join(transformers.__version__.split(".")[:2])
    table = json.loads(TABLE.read_text()) if TABLE.is_file() else {"versions": [], "model_types": {}}
    types = table["model_types"]
    for model_type, known in list(types.items()):  # forget what this version said before
        known["versions"] = [v for v in known["versions"] if v != version]
        if not known["versions"]:
            del types[model_type]
    newest = max([version, *table["versions"]], key=lambda v: tuple(map(int, v.split("."))))
    for model_type in decoder_model_types():
        fresh = entry(model_type)
        old = types.get(model_type)
        versions = sorted({version, *(old["versions"] if old else [])}, key=lambda v: tuple(map(int, v.split("."))))
        keep = old if old and version != newest else fresh  # the newest version's facts win
        legacy_only = {v for v in (old or {}).get("legacy_rope_scaling_only", []) if v != version}
        if _rejects_rope_type(model_type):
            legacy_only.add(version)
        keep = {k: v for k, v in keep.items() if k not in ("versions", "legacy_rope_scaling_only")}
        types[model_type] = {**keep, "versions": versions,
                             **({"legacy_rope_scaling_only": sorted(legacy_only)} if legacy_only else {})}
    table["versions"] = sorted({version, *table["versions"]}, key=lambda v: tuple(map(int, v.split("."))))
    table["model_types"] = dict(sorted(types.items()))
    TABLE.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    print(f"{TABLE.relative_to(ROOT)}: {len(types)} model types; transformers {version} added", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
