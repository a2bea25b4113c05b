"""MiniMax-M2 and M2.5 (``minimax_m2``): partial rotary through a legacy ``rotary_dim``.

Released MiniMax-M2 files say ``rotary_dim: 64`` beside ``head_dim: 128`` and no
``partial_rotary_factor``; transformers 5.x turns it into ``partial_rotary_factor =
rotary_dim / head_dim`` (0.5) when it converts the rope settings
(``MiniMaxM2Config.convert_rope_params_to_dict``), so 64 dimensions of each head rotate,
not 128. NTK's new base and YaRN's ramp both depend on that dimension. The native window
is the file's ``max_position_embeddings`` (196608); ``rope_theta`` defaults to 5e6. The
generic family's reading of a legacy ``rotary_dim`` is exactly this rule; the family names
the model and keeps it from depending on a fallback.
"""

from __future__ import annotations

from ropekit.plugins.generic import GenericFamily
from ropekit.registry.hookspecs import hookimpl


class MiniMaxM2Family(GenericFamily):
    name = "minimax_m2"
    model_types = ("minimax_m2",)
    default_rope_theta = 5_000_000.0
    description = "MiniMax-M2/M2.5: legacy rotary_dim read as partial rotary (64 of 128)"


@hookimpl
def register_families(register):
    register(MiniMaxM2Family())
