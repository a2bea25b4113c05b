"""Step-3.7 (``step3p7``, its language model ``step3p5``): per-layer-type rope in ``text_config``.

``Step3p7TextConfig.__post_init__`` builds ``rope_parameters`` keyed by the layer types in
``layer_types`` (``full_attention``, and ``sliding_attention`` where a checkpoint has
sliding layers), each with its own ``rope_theta``; a legacy ``rope_scaling`` is folded into
``full_attention`` only (``models/step3p7/configuration_step3p7.py``). Scaling therefore
applies to ``full_attention`` and never to the sliding-window layers. The class defaults
(theta 1e4, head_dim 128, 128000 positions, every layer full attention) describe the
model when no released config is at hand; a legacy file with one ``rope_theta`` per layer
(a list) is refused with a pointer to the per-layer-type layout.
"""

from __future__ import annotations

from typing import Any

from ropekit.errors import InvalidConfigError
from ropekit.plugins.generic import GenericFamily
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite


class StepFamily(GenericFamily):
    name = "step3p7"
    model_types = ("step3p7", "step3p5")
    scaled_layer_types = ("full_attention",)
    description = "Step-3.7: per-layer-type rope in text_config; full-attention layers scaled, sliding ones kept"

    def global_layer_types(self, layer_types: list[str]) -> list[str]:
        return [t for t in layer_types if t in self.scaled_layer_types]

    def rope(self, view: ConfigView, site: RopeSite) -> dict[str, Any]:
        if isinstance(view.get(site.path, "rope_theta"), list):
            where = ".".join([*site.path, "rope_theta"])
            raise InvalidConfigError(
                f"{where} is a list (one base per layer); expected the per-layer-type rope_parameters "
                "transformers 5.x writes; load the config with transformers and save it again, then patch")
        return super().rope(view, site)


@hookimpl
def register_families(register):
    register(StepFamily())
