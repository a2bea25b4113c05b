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

from ropekit.errors import InvalidConfigError
from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite, legacy_mirror


class Gemma3Family(Family):
    name = "gemma3"
    model_types = ("gemma3", "gemma3_text")
    scaled_layer_types = ("full_attention",)
    default_rope_theta = 1_000_000.0
    config_defaults = MappingProxyType({"max_position_embeddings": 131072, "head_dim": 256})
    description = ("Gemma 3: scaling on the full-attention layers only (sliding layers keep "
                   "rope_local_base_freq); 4B+ ship linear x8")

    def rope_sites(self, view: ConfigView) -> list[RopeSite]:
        """The text model's sites; a multimodal ``gemma3`` file must carry its ``text_config``.

        transformers builds a ``gemma3`` model's language tower from ``text_config`` alone:
        with ``"text_config": null`` (or the key absent) it builds ``Gemma3TextConfig``
        defaults (plain RoPE at 131072 tokens) and ignores any top-level rope settings, so a
        patch written at the top level would never land.
        """
        if view.is_dict and view.model_type() == "gemma3" and not isinstance(view.get((), "text_config"), dict):
            found = "missing" if "text_config" not in view.target else \
                ("null" if view.target["text_config"] is None else f"a {type(view.target['text_config']).__name__}")
            raise InvalidConfigError(
                f"this gemma3 config's text_config is {found}: transformers then builds the language model from "
                "Gemma3TextConfig defaults (plain RoPE, 131072 tokens) and ignores top-level rope settings, so no "
                "patch could land; restore the model's text_config object (model_type 'gemma3_text', its "
                "rope_scaling and sizes) from the original config.json")
        return super().rope_sites(view)

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
