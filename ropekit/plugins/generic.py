"""The generic family: any model_type no plugin claims, read the way transformers 5.x standardizes rope.

transformers 5.x reads every architecture's rope settings through one standard
(``modeling_rope_utils``): the language model's config (``get_text_config()``: the top
level, ``text_config``, ``decoder``, ``generator``, or Qwen-Omni's
``thinker_config.text_config``), a ``rope_parameters`` dict (or a 4.x file's
``rope_scaling`` + ``rope_theta``, converted on load), per-layer-type dicts keyed by
``layer_types`` (a ``None`` entry: that layer type has no position encoding), and a
rotary dimension of ``head_dim x partial_rotary_factor`` (a legacy ``rotary_dim``; the
``qk_rope_head_dim`` of MLA models whose config class forces ``head_dim`` to it). This
family applies that standard to any model_type the installed transformers knows:

- scaling goes to the global (full-attention) layer types only, never to sliding,
  chunked or local ones; a model whose global layers carry no RoPE is refused;
- a ``head_dim`` left null is written as ``hidden_size // num_attention_heads``
  (transformers' yarn, dynamic and longrope crash on ``None``);
- values a config.json leaves out come from the config class's defaults, read from
  ``transformers_types.json`` (generated from transformers by
  ``scripts/transformers_types.py``), so planning never imports transformers; a legacy
  ``rotary_dim`` counts only where the config class turns it into partial_rotary_factor,
  and where the installed transformers validates rope_scaling as a bare ``{type, factor}``
  pair (OLMo on 4.57) only ntk (a new rope_theta) is offered;
- a model_type whose language model builds no rotary module is refused, and one that
  the installed transformers does not know either stays an unknown family.

The landing check proves each result with the installed transformers (rotary modules
are found by their ``inv_freq`` buffers, whatever their class is called).

Named families can build on it: subclass :class:`GenericFamily`, declare
``model_types`` (a subclass with model_types is an ordinary family, not the fallback)
and override what differs (``global_layer_types``, ``rotary_dim``, ``native_window``,
``refusal``, ``refresh_live_modules``, ...); ``entry`` holds the table's facts.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

from ropekit.constants import dist_version
from ropekit.errors import Param, UnknownFamilyError, UnsupportedMethodError
from ropekit.registry.family import MLA_TEMPERATURE_KEYS, Family, FamilyLookup
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.config_view import PARAMETERS, ConfigView, RopeSite, positive_int

TABLE = Path(__file__).with_name("transformers_types.json")
#: remote-code language model types that transformers' own wrapper configs load as a built-in type
#: (``Kimi_K25Config`` turns a ``kimi_k2`` text_config into ``deepseek_v3``)
REMOTE_CODE_TEXT_MODELS = MappingProxyType({"kimi_k2": "deepseek_v3"})
#: words that mark a layer type as local attention (its rope is never scaled)
LOCAL_WORDS = ("sliding", "chunk", "local", "swa")
#: what a config class that validates rope_scaling as a legacy {type, factor} pair can carry
LEGACY_ONLY_METHODS = ("ntk",)


@functools.lru_cache(maxsize=1)
def transformers_types() -> Mapping[str, Mapping[str, Any]]:
    """The generated table: model_type -> what the config class assumes and whether it uses RoPE."""
    return MappingProxyType(json.loads(TABLE.read_text(encoding="utf-8"))["model_types"])


def installed_transformers_knows(model_type: str) -> tuple[bool, bool]:
    """``(known, is_language_model)`` for a model_type missing from the table (imports transformers).

    Only asked for model_types the table does not list (a newer transformers than the table's).
    """
    try:
        import transformers.models.auto.configuration_auto as configs
        import transformers.models.auto.modeling_auto as models
    except ImportError:
        return False, False
    if model_type not in configs.CONFIG_MAPPING_NAMES:
        return False, False
    mappings = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
                "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES")
    return True, any(model_type in getattr(models, name, {}) for name in mappings)


def installed_version() -> str:
    """``major.minor`` of the installed transformers, from its metadata (nothing is imported)."""
    return ".".join((dist_version("transformers") or "").split(".")[:2])


def is_local_layer_type(layer_type: str) -> bool:
    """True for a sliding-window, chunked or local attention layer type."""
    return any(word in layer_type.lower() for word in LOCAL_WORDS)


class GenericFamily(Family):
    name = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    fallback = True
    #: MLA models among them fold mscale_all_dim into the softmax scale (the landing check looks only
    #: at attentions with qk_head_dim); linear, ntk and dynamic carry no temperature and drop the keys
    temperature_keys = MLA_TEMPERATURE_KEYS
    #: where a language config can live, in the order transformers' get_text_config() tries
    text_config_paths: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("text_config",), ("decoder",), ("generator",), ("thinker_config", "text_config"), ("llm_config",),
        ("vlm_config", "text_config"))
    description = ("any model_type the installed transformers knows and no plugin claims: rope settings read "
                   "the way transformers 5.x standardizes them; refuses language models without RoPE")

    #: the table's facts for the model_type this copy answers for
    entry: Mapping[str, Any] = MappingProxyType({})
    #: why this copy answers (a model_type no plugin claims), set by resolve()
    reason: str = ""

    # --- which model_type, and what transformers knows of it ----------------------------
    def resolve(self, view: ConfigView, registry: FamilyLookup) -> Family:
        """A copy that knows the model_type's class defaults (or refuses, or raises UnknownFamilyError)."""
        model_type = view.model_type()
        table = transformers_types()
        entry = table.get(model_type) or table.get(model_type.replace("-", "_"))  # 4.57's "lfm2-vl"
        adapted = copy.copy(self)
        if entry is None:
            known, language = installed_transformers_knows(model_type)
            if not known:
                raise UnknownFamilyError(
                    f"no family handles model_type {model_type!r} and the installed transformers does not know "
                    "it either; upgrade transformers, install or write a family plugin (see 'Writing a family "
                    "plugin' in the README; 'ropekit plugins' lists the families), or pass ",
                    Param("family", placeholder="NAME"))
            entry = {"text": [], "defaults": {}, "rope": None, "language_model": language}
        adapted.entry = MappingProxyType(dict(entry))
        defaults = dict(entry.get("defaults") or {})
        inner_type = view.get(adapted.language_path(view), "model_type")
        inner_type = REMOTE_CODE_TEXT_MODELS.get(inner_type, inner_type) if isinstance(inner_type, str) else None
        if isinstance(inner_type, str) and inner_type != model_type:  # a wrapper: its language model's defaults
            inner = transformers_types().get(inner_type)
            defaults.update((inner or {}).get("defaults") or {})  # (4.57 names some text configs oddly)
        adapted.config_defaults = MappingProxyType(  # type: ignore[misc]
            {**defaults, **self.config_defaults})
        theta = defaults.get("rope_theta")
        if isinstance(theta, (int, float)) and not isinstance(theta, bool) and theta > 1:
            adapted.default_rope_theta = float(theta)  # type: ignore[misc]
        if not self.model_types:
            adapted.reason = f"no plugin claims model_type {model_type!r}"
        if installed_version() in entry.get("legacy_rope_scaling_only", ()):
            adapted.methods = LEGACY_ONLY_METHODS  # type: ignore[misc]
        return adapted

    def check_method(self, method: str) -> None:
        if self.methods == LEGACY_ONLY_METHODS and method not in self.methods:
            raise UnsupportedMethodError(
                f"the installed transformers {installed_version()} accepts only a legacy {{type, factor}} "
                f"rope_scaling (linear or dynamic, without rope_type) for this architecture, so {method!r} cannot "
                "be written; use method='ntk' (it changes only rope_theta) or upgrade transformers to 5.x")
        super().check_method(method)

    def refusal(self, view: ConfigView) -> str | None:
        model_type = view.model_type()
        if self.entry.get("language_model") is False:
            return (f"model_type {model_type!r} is not a decoder or vision-language model in the installed "
                    "transformers (no causal-LM or image-text-to-text class); ropekit extends a language "
                    "model's context; pass the language model's config instead")
        if self.entry.get("rope") is False:
            return (f"{model_type!r} uses no RoPE: the installed transformers builds no rotary embedding in its "
                    "language model (its positions come from learned or fixed absolute embeddings, ALiBi, a "
                    "recurrent or state-space layer, or nothing), so RoPE scaling cannot extend its context; "
                    "use the architecture's own long-context recipe instead")
        path = self.language_path(view)
        layer_types = view.layer_types(path) if view.layout(path) == PARAMETERS else None
        if layer_types and not self._scaled_layer_types(view, path, layer_types):
            return (f"{model_type!r} has RoPE only on local layers ({', '.join(layer_types)}; the global layers "
                    "carry no position encoding), so scaling cannot extend what any layer sees; extend the "
                    "context by the architecture's own means (a longer sliding window or chunk) instead")
        return None

    def note(self, view: ConfigView) -> str | None:
        path = self.language_path(view)
        where = ".".join(path) or "the top level"
        layout = view.layout(path)
        rules = [f"language config at {where}", f"rope from {layout}"]
        if layout == PARAMETERS:
            layer_types = view.layer_types(path)
            if layer_types:
                scaled = self._scaled_layer_types(view, path, layer_types)
                kept = [t for t in layer_types if t not in scaled]
                rules.append(f"scaled layer types {', '.join(scaled)}"
                             + (f" ({', '.join(kept)} left alone)" if kept else ""))
        why = self.reason or f"family {self.name!r} builds on the generic rules"
        return f"{why}; generic rules as transformers standardizes rope: {'; '.join(rules)}"

    # --- where settings live ------------------------------------------------------------
    def language_path(self, view: ConfigView) -> tuple[str, ...]:
        """The language config: the table's path, else the first known sub-config with rope settings."""
        table_path = tuple(self.entry.get("text") or ())
        candidates = ([table_path] if table_path else []) + [p for p in self.text_config_paths if p != table_path]
        for path in candidates:
            if view.node(path) is not None and view.layout(path) is not None:
                return path
        return ()

    def global_layer_types(self, layer_types: list[str]) -> list[str]:
        """The layer types scaling applies to: every type but local (sliding, chunked) ones."""
        return [t for t in layer_types if not is_local_layer_type(t)]

    def _scaled_layer_types(self, view: ConfigView, path: tuple[str, ...], layer_types: list[str]) -> list[str]:
        params = view.get(path, PARAMETERS) or {}
        return [t for t in self.global_layer_types(layer_types) if isinstance(params.get(t), dict)]

    def rope_sites(self, view: ConfigView) -> list[RopeSite]:
        path = self.language_path(view)
        layout = view.layout(path)
        if layout is None:
            return super().rope_sites(view)  # names what is missing
        layer_types = view.layer_types(path) if layout == PARAMETERS else None
        if layer_types:
            return [RopeSite(path, layout, t) for t in self._scaled_layer_types(view, path, layer_types)]
        return [RopeSite(path, layout)]

    # --- dimensions -----------------------------------------------------------------------
    def head_dim(self, view: ConfigView, site: RopeSite) -> int:
        if self._rotates_qk_rope(view, site):
            where = ".".join([*site.path, "qk_rope_head_dim"])
            return positive_int(self.setting(view, site, "qk_rope_head_dim"), where)
        return super().head_dim(view, site)

    def _rotates_qk_rope(self, view: ConfigView, site: RopeSite) -> bool:
        """MLA: only the decoupled rope part of each head rotates (``qk_rope_head_dim``).

        transformers forces ``head_dim`` to it where the config class says so (DeepSeek-V2,
        V3.2, GLM-5); elsewhere a file's ``head_dim`` wins and qk_rope_head_dim is the fallback.
        """
        if self.setting(view, site, "qk_rope_head_dim") is None:
            return False
        return self.entry.get("head_dim_from") == "qk_rope_head_dim" or view.get(site.path, "head_dim") is None

    def rotary_dim(self, view: ConfigView, site: RopeSite) -> int:
        rope = view.read_rope(site)
        has_partial = rope.get("partial_rotary_factor", view.get(site.path, "partial_rotary_factor")) is not None
        legacy = view.get(site.path, "rotary_dim") if self.entry.get("rotary_dim_to_partial") else None
        if legacy is not None and not has_partial and not self._rotates_qk_rope(view, site):
            dim = positive_int(legacy, ".".join([*site.path, "rotary_dim"]))  # MiniMax: partial = rotary_dim/head_dim
            if dim <= self.head_dim(view, site) and dim % 2 == 0 and dim >= 4:
                return dim
        return super().rotary_dim(view, site)

    def refresh_live_modules(self, model: Any) -> list[str]:
        """MLA attention (``qk_head_dim``) folds YaRN's ``mscale_all_dim`` into its softmax scale: refreshed."""
        from ropekit.landing.attention import refresh_softmax_scales

        return refresh_softmax_scales(model)

    def extra_changes(self, view: ConfigView, site: RopeSite, method: str) -> dict[str, Any]:
        """A ``head_dim`` left null is written as hidden_size // num_attention_heads (transformers needs it)."""
        changes = super().extra_changes(view, site, method)
        node = view.node(site.path)
        null_in_config = view.has_in(node, "head_dim") and view.get_in(node, "head_dim") is None
        null_by_default = "head_dim" in self.config_defaults and self.config_defaults["head_dim"] is None \
            and view.get_in(node, "head_dim") is None
        if (null_in_config or null_by_default) and not self._rotates_qk_rope(view, site):
            changes["head_dim"] = self.head_dim(view, site)
        return changes


@hookimpl
def register_families(register):
    register(GenericFamily())
