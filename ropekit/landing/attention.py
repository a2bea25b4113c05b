"""Live attention modules whose softmax scale transformers derives from the rope settings.

MLA attention (DeepSeek-V2/V3/V3.2, GLM-5, Kimi-K2, MiniCPM3, Mistral 4, LongCat-Flash ...)
computes ``qk_head_dim ** -0.5`` in its constructor and, when the rope type is not
``default`` and ``mscale_all_dim`` is set, multiplies it by ``(0.1 mscale_all_dim ln s + 1) ** 2``
(``yarn_apply_mscale`` in transformers 5.x ``modeling_rope_utils.py``; the same rule inline
in 4.57's DeepSeek-V3). A live model keeps the scale of the settings it was built with, so
a patch refreshes it.
"""

from __future__ import annotations

from typing import Any

from ropekit.landing.rotary import language_tower


def refresh_softmax_scales(model: Any) -> list[str]:
    """Recompute the softmax scale of every MLA attention module of a live model's language tower.

    Each attention (a module with ``qk_head_dim``, ``scaling``, ``layer_idx`` and ``config``)
    is rebuilt on the meta device from the config it holds, so the scale follows whatever
    rule the installed transformers applies; no weights are allocated or moved. Returns
    the names of the modules updated (none for a model without MLA attention).
    """
    import torch

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
