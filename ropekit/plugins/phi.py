"""Phi-3 and Phi-4 (model_type ``phi3``): longrope or nothing.

transformers' ``Phi3Config`` accepts only ``longrope`` scaling (4.x raises unless the dict
is exactly ``type``, ``short_factor`` and ``long_factor``; 5.x renames yarn to longrope and
then fails validation), and longrope needs per-pair factors found by search, which
ropekit does not invent. So the rope type is never written here: NTK-aware scaling,
which only raises ``rope_theta``, is the one method that applies. The trained window is
the top-level ``original_max_position_embeddings`` (4096 for Phi-3-mini, 16384 for
Phi-4); the 128k checkpoints ship longrope from it.
"""

from __future__ import annotations

from typing import Any

from ropekit.errors import Param, UnsupportedMethodError
from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import LEGACY, ConfigView, RopeSite, positive_int

SUPPORTED = ("ntk",)


class PhiFamily(Family):
    name = "phi3"
    model_types = ("phi3", "phimoe", "phi4_multimodal")
    methods = SUPPORTED
    description = ("Phi-3, Phi-3.5-MoE and Phi-4 (and multimodal): transformers takes longrope or nothing, so "
                   "only ntk (rope_theta) applies")

    def check_method(self, method: str) -> None:
        if method not in SUPPORTED:
            raise UnsupportedMethodError(
                f"phi3 models (Phi-3, Phi-4) cannot carry {method!r} scaling because transformers' "
                "Phi3Config accepts only longrope rope_scaling; use ", Param("method", "ntk"), " (it changes only "
                "rope_theta) or start from a Phi checkpoint that ships longrope, such as "
                "Phi-3-mini-128k-instruct"
            )

    def unscaled_window(self, view: ConfigView, site: RopeSite) -> int:
        original = view.get(site.path, "original_max_position_embeddings")
        if original is None:
            return self.max_position_embeddings(view, site)
        return positive_int(original, ".".join([*site.path, "original_max_position_embeddings"]))

    def extra_changes(self, view: ConfigView, site: RopeSite, method: str) -> dict[str, Any]:
        """Dropping a shipped longrope (compound, replace) must leave 4.x files with null rope_scaling.

        transformers 4.x rejects any other Phi-3 rope_scaling dict, ``{"rope_type": "default"}`` included.
        """
        changes = super().extra_changes(view, site, method)
        if site.layout == LEGACY and self.rope(view, site)["rope_type"] != "default":
            changes["rope_scaling"] = None
        return changes


@hookimpl
def register_families(register):
    register(PhiFamily())
