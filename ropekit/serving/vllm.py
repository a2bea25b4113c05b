"""vLLM: ``--hf-overrides`` with the patched ``rope_parameters`` plus ``--max-model-len``.

Assumed: vLLM 0.12 or later. ``--rope-scaling`` and ``--rope-theta`` were removed
in 0.11.1 (vllm-project/vllm PR #28006); rope settings go through
``--hf-overrides '{"rope_parameters": {...}}'``. Dict overrides are applied after
the config is loaded: a top-level ``rope_parameters`` replaces the whole dict, so
the override carries every key (``rope_theta``, ``mrope_section`` ...), and a
composite (VLM) config ignores it at the top level, so it is nested under
``text_config`` (vLLM PR #54289). ``max_position_embeddings`` is left out of the
override: vLLM multiplies it by the factor again for some types (NeMo
Safe-Synthesizer PR #623); ``--max-model-len`` sets the window instead.
"""

from __future__ import annotations

import json
from typing import Any

from .export import LaunchArguments, ServeSpec, engine_rope, json_override_path

VERSIONS = "vLLM >= 0.12 (rope settings only through --hf-overrides rope_parameters)"


#: model types whose transformers 5 config nests rope_parameters per layer type
NESTED_MODEL_TYPES = frozenset({"gemma3", "gemma3_text"})


def rope_parameters(spec: ServeSpec) -> dict[str, Any]:
    """The language model's rope_parameters as vLLM holds them after loading the config.

    Under a sub-config vLLM merges the override key by key; at the top level it
    replaces the attribute, so there every layer type is written out.
    """
    sites, top_level = spec.text_sites, not spec.text_path
    if spec.nested_layer_types:
        out = {s.layer_type: engine_rope(s, spec.long_context) for s in sites}
        stored = _container(spec).get("rope_parameters") if top_level else None
        for layer_type, rope in (stored or {}).items():
            out.setdefault(layer_type, rope)
        return out
    rope = engine_rope(sites[-1], spec.long_context)
    if nests_per_layer_type(spec):  # e.g. Gemma 3 in the 4.x layout: the scaling is the global layers'
        out = {"full_attention": rope}
        if top_level:
            local = _container(spec).get("rope_local_base_freq", 10000.0)
            out["sliding_attention"] = {"rope_type": "default", "rope_theta": local}
        return out
    return rope


def nests_per_layer_type(spec: ServeSpec) -> bool:
    return str(_container(spec).get("model_type") or spec.config.get("model_type")) in NESTED_MODEL_TYPES


def launch_arguments(spec: ServeSpec) -> LaunchArguments:
    overrides = json_override_path(spec, {"rope_parameters": rope_parameters(spec)})
    argv = ["vllm", "serve", str(spec.folder), "--max-model-len", str(spec.new_window),
            "--hf-overrides", json.dumps(overrides, sort_keys=True, separators=(",", ":"))]
    notes = [f"serves {spec.method} x{spec.factor:g} from {spec.original} to {spec.new_window} tokens, "
             "the receipt's long_context"]
    if spec.composite:
        where = ".".join(spec.text_path)
        notes.append(f"composite model: the override is nested under {where} (a top-level rope override is "
                     "silently ignored for composite models)")
    if spec.method == "dynamic":
        notes.append("vLLM's dynamic NTK computes one base for the full window (not per request length as "
                     "transformers does); outputs at short lengths differ from transformers")
    if spec.nested_layer_types or nests_per_layer_type(spec):
        notes.append("rope_parameters nested per layer type, as vLLM holds them under transformers 5; the "
                     "layer types the receipt does not list keep their own settings")
    return LaunchArguments("vllm", VERSIONS, argv, notes=notes)


def _container(spec: ServeSpec) -> dict[str, Any]:
    node: Any = spec.config
    for key in spec.primary.path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}
