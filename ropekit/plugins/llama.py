"""Llama and Mistral: rope settings at the top level.

Native windows come from the config itself: Llama 2 trained at 4096, Llama 3 at
8192 (max_position_embeddings), Llama 3.1 and later also at 8192, which their
shipped llama3 x8 (or x32 for 3.2) scaling records as
``original_max_position_embeddings``.
"""

from __future__ import annotations

from typing import Any

from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite


class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama", "mistral")
    description = "Llama 2/3/3.x and Mistral decoders; Llama 3.1+ ship llama3 scaling"

    def extra_changes(self, view: ConfigView, site: RopeSite, method: str) -> dict[str, Any]:
        """A ``head_dim`` the config holds as null is written (transformers 4.57's Mistral default).

        transformers' yarn, dynamic and longrope crash on ``head_dim: None``.
        """
        changes = super().extra_changes(view, site, method)
        node = view.node(site.path)
        if view.has_in(node, "head_dim") and view.get_in(node, "head_dim") is None:
            changes["head_dim"] = self.head_dim(view, site)
        return changes


@hookimpl
def register_families(register):
    register(LlamaFamily())
