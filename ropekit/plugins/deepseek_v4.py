"""DeepSeek-V4 (``deepseek_v4``): two ropes, ``main`` and ``compress``, and yarn on ``compress`` only.

transformers 5.x keys V4's ``rope_parameters`` by rope labels, not by layer types
(``DeepseekV4Config._rope_type_labels = ("main", "compress")``): ``main`` (``rope_theta``,
plain rope) serves the sliding-window branch, ``compress`` (``compress_rope_theta``)
serves the compressed-attention layers, their compressors and indexers. A released file
keeps the 4.x layout: a flat ``rope_scaling`` (yarn x16 from 65536) beside ``rope_theta``
10000 and ``compress_rope_theta`` 160000; ``DeepseekV4Config.__post_init__`` folds that
``rope_scaling`` into ``compress`` alone and forces ``attention_factor`` 1.0 there (the
reference implementation does not scale cos/sin), see
``models/deepseek_v4/configuration_deepseek_v4.py``. So the flat ``rope_scaling`` of a file
is the ``compress`` rope, its base is ``compress_rope_theta``, and a patch touches it only;
``main`` is never scaled. Each head rotates ``head_dim x partial_rotary_factor`` dimensions,
the factor defaulting to ``qk_rope_head_dim / head_dim`` (64 / 512).

Only yarn is offered: it is what V4 ships and what its config class knows how to carry
(``attention_factor`` is kept through a compound); NTK would have to rewrite
``compress_rope_theta``, which no rope dict holds in a 4.x file.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ropekit.errors import Param, UnsupportedMethodError
from ropekit.plugins.generic import GenericFamily
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite, positive_float, positive_int

#: what DeepseekV4Config assumes when the file leaves them out
V4_DEFAULTS = MappingProxyType({"compress_rope_theta": 160000.0, "head_dim": 512,
                                "max_position_embeddings": 1048576})
V4_DEFAULT_ROPE_HEAD_DIM = 64


class DeepSeekV4Family(GenericFamily):
    name = "deepseek_v4"
    model_types = ("deepseek_v4",)
    scaled_layer_types = ("compress",)
    methods = ("yarn",)
    preserve_keys = GenericFamily.preserve_keys | {"attention_factor"}
    config_defaults = V4_DEFAULTS
    # transformers injects it only when folding a flat rope_scaling; a nested compress dict
    # without it would get yarn's temperature, which V4's reference never applies
    pinned_rope_values = MappingProxyType({"yarn": MappingProxyType({"attention_factor": 1.0})})
    description = ("DeepSeek-V4: ropes labelled main/compress; ships yarn x16 from 65536 on compress "
                   "only (attention_factor 1.0); main is never scaled")

    def global_layer_types(self, layer_types: list[str]) -> list[str]:
        return [t for t in layer_types if t in self.scaled_layer_types]

    def note(self, view: ConfigView) -> str | None:
        return ("two ropes: main (rope_theta, the sliding-window branch) is never scaled; compress "
                "(compress_rope_theta, the compressed layers) carries yarn with attention_factor 1.0"
                + ("; a 4.x file's flat rope_scaling is the compress rope" if view.layout(()) == "rope_scaling" else ""))

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise UnsupportedMethodError(
                f"deepseek_v4 models cannot carry {method!r} scaling: V4 scales only its compress rope, "
                "with the yarn it ships (its config class forces yarn's attention_factor there, and a 4.x "
                "file keeps that rope's base outside any rope dict); use ", Param("method", "yarn"), " with ",
                Param("on_existing", "compound"))

    def rope(self, view: ConfigView, site: RopeSite) -> dict[str, Any]:
        rope = super().rope(view, site)
        if site.layer_type is None:  # a 4.x file: the flat rope_scaling is the compress rope
            where = ".".join([*site.path, "compress_rope_theta"])
            rope["rope_theta"] = positive_float(self.setting(view, site, "compress_rope_theta"), where)
            rope.setdefault("partial_rotary_factor", self._partial(view, site))
        if rope["rope_type"] == "yarn":
            rope.setdefault("attention_factor", 1.0)  # forced by DeepseekV4Config for a yarn compress rope
        return rope

    def _partial(self, view: ConfigView, site: RopeSite) -> float:
        declared = self.setting(view, site, "partial_rotary_factor")
        if declared is not None:
            return positive_float(declared, ".".join([*site.path, "partial_rotary_factor"]))
        rope_head_dim = view.get(site.path, "qk_rope_head_dim", V4_DEFAULT_ROPE_HEAD_DIM)
        rope_head_dim = positive_int(rope_head_dim, ".".join([*site.path, "qk_rope_head_dim"]))
        return rope_head_dim / self.head_dim(view, site)

    def rotary_dim(self, view: ConfigView, site: RopeSite) -> int:
        partial = self.rope(view, site).get("partial_rotary_factor")
        partial = self._partial(view, site) if partial is None else \
            positive_float(partial, f"{site.label}.partial_rotary_factor")
        return self.rotary_dim_from(self.head_dim(view, site), partial)


@hookimpl
def register_families(register):
    register(DeepSeekV4Family())
