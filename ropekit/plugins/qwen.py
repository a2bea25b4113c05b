"""Qwen 1.5, 2, 2.5 and 3 decoders (model_type ``qwen2`` and ``qwen3``): settings at the top level.

Their configs overstate the trained window. Qwen2/2.5/3 with ``rope_theta`` 1e6 were
pretrained at 32768 tokens (the model cards: "natively 32,768 tokens"), yet Qwen3 files
say 40960 (32768 plus a generation budget) and Qwen2.5 base files say 131072. Qwen's
published recipe for long inputs is YaRN x4 from 32768 to 131072. Other thetas mark
other lineages whose ``max_position_embeddings`` is the trained window: Qwen2.5-Math
(1e4, 4096) and the 2507 releases (5e6, 262144).
"""

from __future__ import annotations

from ropekit.registry.family import Family
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView, RopeSite

#: the rope_theta of the Qwen lineages pretrained at QWEN_PRETRAIN_WINDOW
QWEN_PRETRAIN_THETA = 1_000_000.0
QWEN_PRETRAIN_WINDOW = 32768


class QwenWindow(Family):
    """Qwen's native-window rule, shared by the dense, MoE and VL Qwen families."""

    def unscaled_window(self, view: ConfigView, site: RopeSite) -> int:
        window = self.max_position_embeddings(view, site)
        if self.rope(view, site)["rope_theta"] == QWEN_PRETRAIN_THETA:
            return min(window, QWEN_PRETRAIN_WINDOW)
        return window


class QwenFamily(QwenWindow):
    name = "qwen"
    model_types = ("qwen2", "qwen3")
    default_rope_theta = 10000.0
    description = ("Qwen 1.5/2/2.5/3 decoders; native window 32768 where rope_theta is 1e6, "
                   "whatever max_position_embeddings says (recipe: yarn x4 to 131072)")


@hookimpl
def register_families(register):
    register(QwenFamily())
