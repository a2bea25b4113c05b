"""MiniMax-M2 and M2.5 (``minimax_m2``): partial rotary through a legacy ``rotary_dim``.

Released MiniMax-M2 files say ``rotary_dim: 64`` beside ``head_dim: 128`` and no
``partial_rotary_factor``; transformers 5.x turns it into ``partial_rotary_factor =
rotary_dim / head_dim`` (0.5) when it converts the rope settings
(``MiniMaxM2Config.convert_rope_params_to_dict``), so 64 dimensions of each head rotate,
not 128. NTK's new base and YaRN's ramp both depend on that dimension. The native window
is the file's ``max_position_embeddings`` (196608); ``rope_theta`` defaults to 5e6.
"""

from __future__ import annotations

from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite, positive_int


class MiniMaxM2Family(Family):
    name = "minimax_m2"
    model_types = ("minimax_m2",)
    default_rope_theta = 5_000_000.0
    description = "MiniMax-M2/M2.5: legacy rotary_dim read as partial rotary (64 of 128)"

    def rotary_dim(self, view: ConfigView, site: RopeSite) -> int:
        """``partial_rotary_factor`` when the settings carry one, else ``rotary_dim / head_dim``."""
        declared = view.read_rope(site).get("partial_rotary_factor",
                                            self.setting(view, site, "partial_rotary_factor"))
        legacy = view.get(site.path, "rotary_dim")
        if declared is None and legacy is not None:
            head_dim = self.head_dim(view, site)
            rotary = positive_int(legacy, ".".join([*site.path, "rotary_dim"]))
            return self.rotary_dim_from(head_dim, rotary / head_dim)
        return super().rotary_dim(view, site)


@hookimpl
def register_families(register):
    register(MiniMaxM2Family())
