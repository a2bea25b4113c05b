"""Architectures RoPE scaling cannot extend, refused (exit code 3) with the reason and what to do instead.

Each family names model_types whose reason is not visible in the config data, or is
better said by name than by the generic rule:

- RoPE only on local layers: the sliding-window or chunked layers rotate, the global
  layers carry no position encoding at all (Llama 4's every fourth layer, Cohere2's and
  EXAONE 4's full-attention layers, AFMoE's global layers). No layer sees positions beyond
  its local window, so stretching the rotary frequencies extends nothing; Cohere2, EXAONE
  and AFMoE hard-code this in the attention forward, not in the config.
- Proportional p-RoPE (Gemma 4): the global layers rotate only a fraction of a per-layer
  head dimension; transformers cannot carry YaRN there (the forward breaks on the shapes).
- Default rope type only (ERNIE 4.5-VL, Cosmos3-Edge): the rotary module computes its own
  frequencies and ignores a rope type.
- Fixed sinusoidal tables (CodeGen, GPT-J, RoFormer): rotary embeddings from a fixed table
  built in the attention layer, not from rope settings transformers reads.
- No RoPE although the file has ``rope_theta`` (Nemotron-H, Kimi-Linear): the attention
  layers apply no rotary embedding; the key is inert.
- Unproven (Evolla, Qwen2.5-Omni): the landing check cannot prove a patch there, so none is
  written.

Each is a :class:`~ropekit.plugins.generic.GenericFamily`, so a wrapper whose language
model is not one of these (an Aya Vision around another decoder) is read generically.
"""

from __future__ import annotations

from typing import ClassVar

from ropekit.plugins.generic import GenericFamily
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView


class RefusedArchitecture(GenericFamily):
    """A family that refuses every plan with ``why`` and ``instead``."""

    fallback = False
    why: ClassVar[str]
    instead: ClassVar[str]
    #: wrappers refuse only when their language model is one of these (empty: always refuse)
    language_models: ClassVar[tuple[str, ...]] = ()

    def refusal(self, view: ConfigView) -> str | None:
        model_type = view.model_type()
        inner = view.get(("text_config",), "model_type")
        if self.language_models and isinstance(inner, str) and inner not in self.language_models:
            return super().refusal(view)  # another language model: the generic rules apply
        who = f"{model_type!r} ({inner!r} language model)" if isinstance(inner, str) and inner != model_type \
            else repr(model_type)
        return f"{who} {self.why}; {self.instead}"


class LocalRopeOnly(RefusedArchitecture):
    name = "local_rope_only"
    model_types = ("llama4", "llama4_text", "cohere2", "cohere2_moe", "cohere2_vision", "aya_vision",
                   "exaone4", "exaone4_5", "exaone_moe", "kolibri1", "kolibri1_1", "afmoe", "flint", "ergo",
                   "beam", "muse_spark", "muse_glimmer", "recurrent_gemma")
    language_models = ("llama4_text", "cohere2", "cohere2_moe", "exaone4", "exaone_moe", "muse_spark")
    why = ("applies RoPE only on its local (sliding-window or chunked) attention layers; its global layers "
           "carry no position encoding, so scaling the rotary frequencies cannot extend what any layer sees")
    instead = ("extend the context by the architecture's own means (its global NoPE layers already see the "
               "whole window; fine-tune at the longer length) rather than by RoPE scaling")
    description = "refused: RoPE only on local (sliding or chunked) layers, global layers without position encoding"


class ProportionalRope(RefusedArchitecture):
    name = "proportional_rope"
    model_types = ("gemma4", "gemma4_text", "gemma4_unified", "gemma4_unified_text", "gemma4_assistant",
                   "gemma4_unified_assistant", "diffusion_gemma")
    why = ("uses proportional p-RoPE on its global layers (a fraction of a per-layer head dimension rotates); "
           "transformers cannot carry YaRN, linear or dynamic scaling there")
    instead = "use the model's native window (262144 for Gemma 4) or a long-context checkpoint of it"
    description = "refused: Gemma 4's proportional p-RoPE cannot carry scaling in transformers"


class DefaultRopeOnly(RefusedArchitecture):
    name = "default_rope_only"
    model_types = ("ernie4_5_vl_moe", "cosmos3_edge")
    why = ("builds its rotary frequencies itself and ignores any rope type, so a scaled rope dict would be "
           "written but never used")
    instead = "use the model's native window, or a checkpoint trained at the longer context"
    description = "refused: the rotary module ignores the rope type (default RoPE only)"


class FixedSinusoidal(RefusedArchitecture):
    name = "fixed_sinusoidal"
    model_types = ("codegen", "gptj", "roformer")
    why = ("rotates with fixed sinusoidal tables built inside its attention layers, not from rope settings "
           "transformers reads, so no config change can scale them")
    instead = "use the model's native window, or a newer RoPE model"
    description = "refused: fixed sinusoidal rotary tables, not configurable"


class NoRopeDespiteTheta(RefusedArchitecture):
    name = "no_rope"
    model_types = ("nemotron_h", "nemotron_h_omni", "kimi_linear")
    why = ("applies no rotary embedding in any layer (its rope_theta, if the file has one, is inert); positions "
           "come from its recurrent, state-space or linear-attention layers")
    instead = "extend the context by fine-tuning at the longer length; RoPE scaling does not apply"
    description = "refused: no RoPE in any layer, although configs may carry rope_theta"


class UnprovenLanding(RefusedArchitecture):
    name = "unproven"
    model_types = ("evolla", "qwen2_5_omni")
    why = ("cannot be shown to carry a patch: transformers 5.25 builds rotary modules outside its language model "
           "that read other configs (Evolla's protein encoder), or cannot build the patched config at all "
           "(Qwen2.5-Omni: KeyError 'factor'), so the landing check cannot prove the result")
    instead = "use the model's native window; ropekit refuses rather than write a patch it cannot verify"
    description = "refused: a patch the landing check cannot prove with transformers 5.25"


REFUSED: tuple[type[RefusedArchitecture], ...] = (
    LocalRopeOnly, ProportionalRope, DefaultRopeOnly, FixedSinusoidal, NoRopeDespiteTheta, UnprovenLanding)


@hookimpl
def register_families(register):
    for family in REFUSED:
        register(family())
