"""Vision-language wrappers (Llava and kin, Mllama, Mistral3, InternVL, Idefics3, PaliGemma ...).

A wrapper's language model keeps its own config in ``text_config`` (``llm_config`` in
InternVL-chat files), and transformers reads the rope settings there only: patching
the top level creates an unused attribute. The wrapper therefore hands the config to
the family of its language model, found by that model's own ``model_type`` (or the
wrapper's default language model when ``text_config`` leaves it out), and that family
patches ``text_config`` and nothing else; the vision tower is never touched.

Mllama (Llama 3.2 Vision) ships llama3 x8 inside ``text_config``, so a request is
refused by default like any shipped scaling.
"""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

from ropekit.errors import InvalidConfigError, Param, UnknownFamilyError
from ropekit.registry.family import Family, FamilyLookup
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import ConfigView

#: each wrapper's default language model: what transformers builds when text_config omits model_type
DEFAULT_TEXT_MODEL = MappingProxyType({
    "llava": "llama", "llava_next": "llama", "llava_next_video": "llama", "vipllava": "llama",
    "llava_onevision": "qwen2", "mllama": "mllama_text_model", "mistral3": "mistral",
    "idefics3": "llama", "smolvlm": "llama", "internvl": "qwen2", "paligemma": "gemma",
})
#: wrappers whose language model is always named in the file (InternVL-chat's llm_config)
NAMED_TEXT_MODEL = ("internvl_chat",)
#: class defaults of the language-model configs, for text_configs saved as a diff against
#: them (transformers before 4.40 wrote only non-default values: llava-1.5 keeps neither
#: hidden_size nor num_attention_heads)
TEXT_CONFIG_DEFAULTS = MappingProxyType({
    "llama": {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 2048},
    "mistral": {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072},
    "qwen2": {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 32768},
    "gemma": {"hidden_size": 3072, "num_attention_heads": 16, "head_dim": 256, "max_position_embeddings": 8192},
})


class VisionLanguageFamily(Family):
    name = "vlm"
    model_types = (*DEFAULT_TEXT_MODEL, *NAMED_TEXT_MODEL)
    text_config_keys = ("text_config", "llm_config")
    description = "vision-language wrappers: the language model's own family patches text_config"

    def resolve(self, view: ConfigView, registry: FamilyLookup) -> Family:
        wrapper = view.model_type()
        key = next((k for k in self.text_config_keys if view.node((k,)) is not None), None)
        if key is None:
            raise InvalidConfigError(
                f"{wrapper!r} config has no {' or '.join(self.text_config_keys)}; expected the language "
                "model's settings there; pass the model's full config.json"
            )
        inner_type = self.text_model_type(view, key)
        if not isinstance(inner_type, str):
            raise InvalidConfigError(
                f"{wrapper!r} config's {key} has no model_type; expected the language model's "
                "model_type there (e.g. \"qwen2\"); fix the config.json or pass ", Param("family", placeholder="NAME")
            )
        try:
            inner = registry.lookup(inner_type)
        except UnknownFamilyError:
            fallback = getattr(registry, "fallback", None)
            if fallback is not None and _transformers_knows(inner_type):  # no plugin claims it: read generically
                return fallback.resolve(view, registry)
            known = ", ".join(sorted(registry.families_by_name))
            raise UnknownFamilyError(
                f"{wrapper!r} wraps a {inner_type!r} language model ({key}.model_type) and no family handles "
                f"{inner_type!r} (families: {known}); install or write a family plugin for it, or pass ",
                Param("family", placeholder="NAME"), " to use an existing one"
            ) from None
        if isinstance(inner, VisionLanguageFamily):
            raise InvalidConfigError(f"{wrapper!r} config's {key}.model_type is the wrapper {inner_type!r}; "
                                     "expected a language model's model_type; fix the config.json")
        inner = inner.resolve(view, registry)
        defaults = TEXT_CONFIG_DEFAULTS.get(inner_type, {})
        if key in inner.text_config_keys and not defaults:
            return inner
        # the same knowledge, told where this wrapper keeps the language model and what
        # the language model's config class assumes for the values a diff left out
        adapted = copy.copy(inner)
        adapted.text_config_keys = (key,)  # type: ignore[misc]
        adapted.top_level_sites = False  # type: ignore[misc]
        adapted.config_defaults = MappingProxyType({**defaults, **inner.config_defaults})  # type: ignore[misc]
        return adapted

    def text_model_type(self, view: ConfigView, key: str) -> Any:
        """The language model's model_type: ``key``'s own, else the wrapper's default one."""
        return view.get((key,), "model_type") or DEFAULT_TEXT_MODEL.get(view.model_type())


class MllamaTextFamily(Family):
    name = "mllama_text"
    model_types = ("mllama_text_model",)
    default_rope_theta = 500000.0
    description = "Mllama's (Llama 3.2 Vision) language model: Llama 3 rope, ships llama3 x8"


def _transformers_knows(model_type: str) -> bool:
    from ropekit.plugins.generic import installed_transformers_knows, transformers_types

    return model_type in transformers_types() or installed_transformers_knows(model_type)[0]


@hookimpl
def register_families(register):
    register(VisionLanguageFamily())
    register(MllamaTextFamily())
