"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (dense and MoE): multimodal rotary embedding (M-RoPE).

Where the settings live: files saved before transformers 4.52 keep them flat at the top
level (with a legacy ``{"type": "mrope", "mrope_section": [...]}``); later files keep
them in ``text_config``. A 4.57 re-save carries both, and then ``text_config`` is the
one transformers reads (4.52 and later; 4.57 forwards the top-level attributes to it)
and the only one patched: the top-level copy is a stale mirror, and a yarn dict there
makes transformers 5.x fail to load the file (``AttributeError: 'Qwen2_5_VLConfig'
object has no attribute 'max_position_embeddings'``, measured on 5.24). The vision
tower's ``vision_config`` is never touched. ``mrope_section`` (how the rotary pairs split
into time, height and width) and ``mrope_interleaved`` must survive every patch: without
them transformers falls back to a default section or fails in forward. ``mrope`` is a
sectioning, not scaling, so a model that carries it still counts as unscaled.

Native windows: Qwen2-VL and Qwen2.5-VL were trained at 32768 (Qwen2.5-VL files say
128000; the model card's YaRN recipe starts from 32768). Qwen3-VL was trained at its
``max_position_embeddings``, 262144.
"""

from __future__ import annotations

from types import MappingProxyType

from ropekit.plugins.generic import GenericFamily
from ropekit.plugins.qwen import QwenWindow
from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite


class Qwen2VLFamily(QwenWindow):
    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text")
    default_rope_theta = 1_000_000.0
    description = ("Qwen2-VL and Qwen2.5-VL: M-RoPE in text_config, or flat at the top level in "
                   "older files; native window 32768")

    def rope_sites(self, view: ConfigView) -> list[RopeSite]:
        """text_config's settings when it has them, else the flat top-level ones."""
        sites = super().rope_sites(view)
        return [s for s in sites if s.path] or sites


class Qwen3VLFamily(Family):
    name = "qwen3_vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe", "qwen3_vl_text", "qwen3_vl_moe_text")
    default_rope_theta = 5_000_000.0
    description = ("Qwen3-VL dense and MoE: interleaved M-RoPE in text_config; native window "
                   "max_position_embeddings (262144)")


class Qwen35Family(GenericFamily):
    """Qwen3.5 and Qwen3.6, dense (``qwen3_5``) and MoE (``qwen3_5_moe``): natively multimodal.

    The language model's settings live in ``text_config.rope_parameters``: one flat dict for
    every layer (the ``layer_types`` list tells Gated DeltaNet ``linear_attention`` layers
    from ``full_attention`` ones, and only the latter apply rope). Only a quarter of each
    head rotates: the config class defaults ``partial_rotary_factor`` to 0.25
    (``Qwen3_5TextConfig.__post_init__``), so head_dim 256 rotates 64 dimensions.
    Interleaved M-RoPE (``mrope_interleaved``, ``mrope_section`` [11, 11, 10]) is kept. The
    model card gives 262144 tokens as the native context, the file's ``max_position_embeddings``.
    """

    name = "qwen3_5"
    model_types = ("qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text")
    text_config_paths = (("text_config",),)
    config_defaults = MappingProxyType({"partial_rotary_factor": 0.25})
    description = ("Qwen3.5/3.6 dense and MoE: text_config, partial rotary 0.25, interleaved "
                   "M-RoPE kept; native window max_position_embeddings (262144)")


@hookimpl
def register_families(register):
    register(Qwen2VLFamily())
    register(Qwen3VLFamily())
    register(Qwen35Family())
