"""MiMo-V2-Flash (``mimo_v2_flash``): per-layer-type rope that the config class builds itself.

The released file says ``rope_theta: 5000000``, ``swa_rope_theta: 10000`` and
``partial_rotary_factor: 0.334`` at the top level, but transformers 5.x reads none of them:
``MiMoV2FlashConfig.convert_rope_params_to_dict`` returns its keywords untouched and
``__post_init__`` builds ``rope_parameters`` from class defaults when the file has none,
``{"full_attention": {default, 5e6, 0.334}, "sliding_attention": {default, 1e4, 0.334}}``
(``models/mimo_v2_flash/configuration_mimo_v2_flash.py``). A legacy ``rope_scaling`` there
is not folded into a layer type either (the model then fails to build with
``KeyError: 'full_attention'``). So a patch writes that nested dict out as the class builds
it and scales ``full_attention`` only: the sliding-window layers (a 128-token window) keep
their rope. Rotary dimension: ``int(192 x 0.334)`` = 64. The native window is the file's
``max_position_embeddings`` (262144: pre-trained at 32768, extended by long-context training).
"""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

from ropekit.plugins.generic import GenericFamily
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import PARAMETERS, ConfigView, RopeSite, positive_float

#: what MiMoV2FlashConfig.__post_init__ builds when the file has no rope_parameters
CLASS_ROPE_PARAMETERS = MappingProxyType({
    "full_attention": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.334},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.334},
})
#: the partial rotary factor transformers' default rope assumes for a layer type without one
DEFAULT_PARTIAL = 0.334


class MiMoV2FlashFamily(GenericFamily):
    name = "mimo_v2_flash"
    model_types = ("mimo_v2_flash",)
    scaled_layer_types = ("full_attention",)
    config_defaults = MappingProxyType({"head_dim": 192})
    flat_rope_scaling_folds = False  # transformers 5.x: KeyError 'full_attention' on a flat rope_scaling
    description = ("MiMo-V2-Flash: the class-built per-layer-type rope_parameters (the file's theta "
                   "keys are inert); full-attention layers scaled, sliding ones kept")

    def rope_sites(self, view: ConfigView) -> list[RopeSite]:
        return [RopeSite((), PARAMETERS, layer_type) for layer_type in self.scaled_layer_types]

    def note(self, view: ConfigView) -> str | None:
        where = "written out as the config class builds it" if self._built_by_class(view, self.rope_sites(view)[0]) \
            else "from the config"
        return ("per-layer-type rope_parameters " + where + " (the file's rope_theta, swa_rope_theta and "
                "partial_rotary_factor are not read by transformers); full_attention scaled, sliding_attention "
                "left alone")

    def _built_by_class(self, view: ConfigView, site: RopeSite) -> bool:
        return not isinstance(view.get(site.path, PARAMETERS), dict)

    def rope(self, view: ConfigView, site: RopeSite) -> dict[str, Any]:
        if self._built_by_class(view, site):
            return copy.deepcopy(CLASS_ROPE_PARAMETERS[site.layer_type or "full_attention"])
        return super().rope(view, site)

    def implied_settings(self, view: ConfigView, site: RopeSite) -> dict[str, Any]:
        if self._built_by_class(view, site):
            return {PARAMETERS: copy.deepcopy(dict(CLASS_ROPE_PARAMETERS))}
        return {}

    def rotary_dim(self, view: ConfigView, site: RopeSite) -> int:
        partial = self.rope(view, site).get("partial_rotary_factor", DEFAULT_PARTIAL)
        where = ".".join([*site.path, *view.rope_key(site, "partial_rotary_factor")])
        return self.rotary_dim_from(self.head_dim(view, site), positive_float(partial, where))


@hookimpl
def register_families(register):
    register(MiMoV2FlashFamily())
