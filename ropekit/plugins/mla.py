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
settings they were built with, and a patch refreshes them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, ClassVar

from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite, positive_int


def refresh_softmax_scales(model: Any) -> list[str]:
    """Recompute the softmax scale of every MLA attention module of a live model's language tower.

    Each attention (a module with ``qk_head_dim``, ``scaling``, ``layer_idx`` and ``config``)
    is rebuilt on the meta device from the config it holds, so the scale follows whatever
    rule the installed transformers applies; no weights are allocated or moved. Returns
    the names of the modules updated.
    """
    import torch

    from ropekit.landing.rotary import language_tower

    refreshed = []
    for name, module in language_tower(model).named_modules():
        if not (hasattr(module, "qk_head_dim") and hasattr(module, "scaling")
                and hasattr(module, "layer_idx") and hasattr(module, "config")):
            continue
        with torch.device("meta"):
            fresh = type(module)(module.config, module.layer_idx)
        module.scaling = fresh.scaling
        refreshed.append(name)
    return refreshed


class MlaFamily(Family):
    """What every MLA family shares: the rope sub-head rotates, and live softmax scales follow a patch."""

    config_defaults = MappingProxyType({"qk_rope_head_dim": 64})
    #: transformers sets ``head_dim = qk_rope_head_dim`` whatever the file says (False: a file's
    #: ``head_dim`` wins, as for DeepSeek-V3, whose config class lets the keyword override it)
    forces_rope_head_dim: ClassVar[bool] = True

    def rotary_dim(self, view: ConfigView, site: RopeSite) -> int:
        """``qk_rope_head_dim``: only the decoupled rope part of each query/key head rotates."""
        own_head_dim = view.get(site.path, "head_dim") is not None and not self.forces_rope_head_dim
        key = "head_dim" if own_head_dim else "qk_rope_head_dim"
        return positive_int(self.setting(view, site, key), ".".join([*site.path, key]))

    def refresh_live_modules(self, model: Any) -> list[str]:
        """Recompute each attention's softmax scale, which folds in YaRN's ``mscale_all_dim``."""
        return refresh_softmax_scales(model)


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
