"""Gemma 3 (text and multimodal), and Gemma 1/2.

Gemma 3 interleaves sliding-window (local) and full-attention (global) layers with
separate rope settings, and scaling belongs to the global layers only:

- transformers 4.x files: ``rope_theta`` (global, class default 1e6) and ``rope_scaling``
  (global only) beside ``rope_local_base_freq`` (local, 1e4, never touched);
- transformers 5.x files: ``rope_parameters = {"full_attention": {...},
  "sliding_attention": {...}}``; only ``full_attention`` is patched.

The 4B, 12B and 27B checkpoints ship linear x8 (an existing scaling: a request is refused
unless it says compound or replace). Linear PI stretches the window, so x8 over 131072
positions implies an original window of 16384 for compounding. Gemma 3 configs often
omit ``max_position_embeddings``, ``rope_theta`` and ``head_dim``; the family knows the
class defaults (131072, 1e6, 256) and writes ``max_position_embeddings`` explicitly.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, legacy_mirror


class Gemma3Family(Family):
    name = "gemma3"
    model_types = ("gemma3", "gemma3_text")
    scaled_layer_types = ("full_attention",)
    default_rope_theta = 1_000_000.0
    config_defaults = MappingProxyType({"max_position_embeddings": 131072, "head_dim": 256})
    description = ("Gemma 3: scaling on the full-attention layers only (sliding layers keep "
                   "rope_local_base_freq); 4B+ ship linear x8")

    def legacy_mirror(self, view: ConfigView, path: tuple[str, ...],
                      layers: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """transformers 4.57's Gemma 3 form: the global dict as rope_scaling + rope_theta, and
        the sliding layers' base as rope_local_base_freq (5.x folds rope_scaling into
        full_attention and lets the nested values win)."""
        out = legacy_mirror(layers.get("full_attention") or {})
        local = (layers.get("sliding_attention") or {}).get("rope_theta")
        if local is not None:
            out["rope_local_base_freq"] = local
        return out


class GemmaFamily(Family):
    name = "gemma"
    model_types = ("gemma", "gemma2")
    config_defaults = MappingProxyType({"max_position_embeddings": 8192, "head_dim": 256})
    description = "Gemma 1 and 2: one rope setting for every layer, window 8192"


@hookimpl
def register_families(register):
    register(Gemma3Family())
    register(GemmaFamily())
