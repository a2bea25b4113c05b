"""Mixture-of-experts decoders: Mixtral, Qwen2/Qwen3-MoE, DeepSeek-V2/V3 and gpt-oss.

The experts do not touch rotary embeddings; what differs is each family's rope quirks:

- Mixtral configs leave ``head_dim`` null, and transformers' yarn, dynamic and longrope
  then crash (``NoneType * float``): a patch writes ``head_dim = hidden / heads``.
- Qwen MoE follows Qwen's native-window rule (Qwen3-30B-A3B: 40960 in the file, 32768 trained).
- DeepSeek ships YaRN x40 from 4096 with ``mscale`` and ``mscale_all_dim`` (kept by every
  patch) and rotates only ``qk_rope_head_dim`` of each head. With ``mscale_all_dim`` the
  attention's softmax scale also depends on the factor, so a live model's attention
  modules are refreshed after a patch.
- gpt-oss ships YaRN x32 from 4096 with ``truncate: false`` (a fractional ramp), kept.
"""

from __future__ import annotations

from ropekit.plugins.mla import MlaFamily
from ropekit.plugins.qwen import QwenWindow
from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl


class MixtralFamily(Family):
    name = "mixtral"
    model_types = ("mixtral",)
    default_rope_theta = 1_000_000.0
    fill_head_dim = True
    description = "Mixtral sparse MoE; writes the head_dim its configs leave null"


class QwenMoeFamily(QwenWindow):
    name = "qwen_moe"
    model_types = ("qwen2_moe", "qwen3_moe")
    default_rope_theta = 10000.0
    description = "Qwen1.5/2-MoE and Qwen3-MoE; Qwen's native-window rule (32768 where rope_theta is 1e6)"


class DeepSeekFamily(MlaFamily):
    """DeepSeek-V2/V3: MLA, so only ``qk_rope_head_dim`` rotates and live softmax scales follow a patch.

    transformers sets ``head_dim`` to ``qk_rope_head_dim``, unless a file names ``head_dim``
    itself, which then wins (4.57 and 5.x alike); hidden_size / heads never applies.
    """

    name = "deepseek"
    model_types = ("deepseek_v2", "deepseek_v3")
    forces_rope_head_dim = False
    description = ("DeepSeek-V2/V3 (MLA): ship yarn x40 from 4096 with mscale; rope covers "
                   "qk_rope_head_dim only")


class GptOssFamily(Family):
    name = "gpt_oss"
    model_types = ("gpt_oss",)
    default_rope_theta = 150000.0
    description = "gpt-oss: ships yarn x32 from 4096 with truncate false (kept by every patch)"


@hookimpl
def register_families(register):
    register(MixtralFamily())
    register(QwenMoeFamily())
    register(DeepSeekFamily())
    register(GptOssFamily())
