"""Kimi-K2.5 (``kimi_k25``): a vision-language wrapper around a DeepSeek-V3 language model.

The file's ``text_config`` names the remote-code type ``kimi_k2``; transformers' own
``Kimi_K25Config`` rewrites it to ``deepseek_v3`` when it loads the file
(``models/kimi_k25/configuration_kimi_k25.py``), and builds a ``deepseek_v3`` text config
when ``text_config`` names no type. So the DeepSeek family patches ``text_config``: MLA
(``qk_rope_head_dim`` 64 rotates), yarn x64 from 4096 shipped with ``mscale`` and
``mscale_all_dim`` (refused by default, compounded on request), and a live model's
attention softmax scales refreshed. ``vision_config`` is never touched.
"""

from __future__ import annotations

from typing import Any

from ropekit.plugins.generic import REMOTE_CODE_TEXT_MODELS
from ropekit.plugins.vlm import VisionLanguageFamily
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView

#: the language model transformers' Kimi_K25Config builds for a text_config that names no type
KIMI_TEXT_MODEL = "deepseek_v3"


class KimiK25Family(VisionLanguageFamily):
    name = "kimi_k25"
    model_types = ("kimi_k25",)
    text_config_keys = ("text_config",)
    description = ("Kimi-K2.5: a wrapper whose text_config (kimi_k2) is loaded as DeepSeek-V3; "
                   "ships yarn x64 from 4096")

    def text_model_type(self, view: ConfigView, key: str) -> Any:
        declared = view.get((key,), "model_type") or KIMI_TEXT_MODEL
        return REMOTE_CODE_TEXT_MODELS.get(declared, declared)


@hookimpl
def register_families(register):
    register(KimiK25Family())
