"""Llama and Mistral: rope settings at the top level.

Native windows come from the config itself: Llama 2 trained at 4096, Llama 3 at
8192 (max_position_embeddings), Llama 3.1 and later also at 8192, which their
shipped llama3 x8 (or x32 for 3.2) scaling records as
``original_max_position_embeddings``.
"""

from __future__ import annotations

from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl


class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama", "mistral")
    description = "Llama 2/3/3.x and Mistral decoders; Llama 3.1+ ship llama3 scaling"


@hookimpl
def register_families(register):
    register(LlamaFamily())
