"""Multi-head latent attention (MLA): DeepSeek-V3.2 and GLM-5, and what every MLA family shares.

An MLA head splits each query/key into a position-free part (``qk_nope_head_dim``) and a
decoupled rope part (``qk_rope_head_dim``); only the rope part rotates, so the rotary
dimension is ``qk_rope_head_dim``, never hidden_size / heads. DeepSeek-V3.2
(``deepseek_v32``) and GLM-5 (``glm_moe_dsa``) go further: their transformers 5.x config
classes set ``head_dim = qk_rope_head_dim`` in ``__post_init__`` whatever the file says
(``configuration_deepseek_v32.py``, ``configuration_glm_moe_dsa.py``).

The attention softmax scale also depends on the rope settings: the attention constructor
computes ``qk_head_dim ** -0.5`` and, when the rope type is not ``default`` and
``mscale_all_dim`` is set, multiplies it by ``(0.1 mscale_all_dim ln s + 1) ** 2``
(``yarn_apply_mscale`` in ``modeling_rope_utils.py``, called from each MLA attention's
``__init__``). A live model's attention modules therefore keep the scale of the rope
settings they were built with, and a patch refreshes them
(:func:`ropekit.landing.attention.refresh_softmax_scales`, which the generic family uses too
for the MLA model_types no named family claims).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar

from ropekit.plugins.generic import GenericFamily
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite, positive_int


class MlaFamily(GenericFamily):
    """What every MLA family shares: the rope sub-head rotates, and live softmax scales follow a patch.

    Built on the generic family (the language config, class defaults and per-layer rules
    transformers standardizes, and the softmax-scale refresh), with the rotary dimension
    said explicitly.
    """

    config_defaults = MappingProxyType({"qk_rope_head_dim": 64})
    #: transformers sets ``head_dim = qk_rope_head_dim`` whatever the file says (False: a file's
    #: ``head_dim`` wins, as for DeepSeek-V3, whose config class lets the keyword override it)
    forces_rope_head_dim: ClassVar[bool] = True

    def rotary_dim(self, view: ConfigView, site: RopeSite) -> int:
        """``qk_rope_head_dim``: only the decoupled rope part of each query/key head rotates."""
        own_head_dim = view.get(site.path, "head_dim") is not None and not self.forces_rope_head_dim
        key = "head_dim" if own_head_dim else "qk_rope_head_dim"
        return positive_int(self.setting(view, site, key), ".".join([*site.path, key]))


class DeepSeekV32Family(MlaFamily):
    name = "deepseek_v32"
    model_types = ("deepseek_v32",)
    description = ("DeepSeek-V3.2 (MLA + sparse attention): ships yarn x40 from 4096 with mscale; "
                   "head_dim forced to qk_rope_head_dim; live softmax scales refreshed")


class GlmMoeDsaFamily(MlaFamily):
    name = "glm_moe_dsa"
    model_types = ("glm_moe_dsa",)
    description = ("GLM-5 (MLA + sparse attention): head_dim forced to qk_rope_head_dim; "
                   "live softmax scales refreshed")


@hookimpl
def register_families(register):
    register(DeepSeekV32Family())
    register(GlmMoeDsaFamily())
