"""The per-architecture contract: what a family knows about its models' rope settings.

The engine never special-cases an architecture; it asks the family. Subclass
:class:`Family`, set the class attributes, override what differs, and register
an instance from a ``register_families`` hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Protocol

from ropekit.errors import InvalidConfigError, UnsupportedMethodError
from ropekit.scaling import bounds
from ropekit.scaling.config_view import (
    LEGACY,
    ConfigView,
    RopeSite,
    legacy_mirror,
    positive_float,
    positive_int,
    shown_number,
)


class FamilyLookup(Protocol):
    """What a family may ask of the registry (a VLM wrapper looks up its text model's family)."""

    families_by_name: Mapping[str, "Family"]

    def lookup(self, model_type: str) -> "Family": ...


#: rope types that are not scaling (mrope only sections the rotary dimension)
UNSCALED_TYPES = frozenset({"default", "mrope"})

#: rope keys from which multi-head latent attention (DeepSeek-V2/V3, GLM-5, Kimi) derives
#: its softmax temperature: transformers multiplies the attention's softmax scale by
#: ``(0.1 * mscale_all_dim * ln factor + 1) ** 2`` when the rope type is not default
MLA_TEMPERATURE_KEYS = frozenset({"mscale", "mscale_all_dim"})


@dataclass(frozen=True)
class ShippedScaling:
    """Scaling a model already carries, in its own config or in a base model's."""

    rope_type: str
    factor: float
    original_max_position_embeddings: int
    window: int  # the context the shipped scaling declares
    site: str
    source: str = "config"  # or the Hub id of the ancestor that carries it
    #: the normalized rope dict that carries it (the trained frequencies), when known
    rope: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    #: the max_position_embeddings beside that dict
    max_position_embeddings: int | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        where = "" if self.source == "config" else f" (inherited from base model {self.source})"
        if self.rope_type == "trained":  # a base trained long, without scaling keys
            return f"was trained at {self.window} tokens{where}"
        return (f"ships {self.rope_type} x{self.factor:g} from {self.original_max_position_embeddings} "
                f"-> {self.window}{where}")

    def to_json(self) -> dict[str, Any]:
        return {
            "rope_type": self.rope_type, "factor": self.factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "window": self.window, "site": self.site, "source": self.source,
        }


def mla_softmax_multiplier(rope: dict[str, Any]) -> float:
    """transformers' ``yarn_apply_mscale``: ``(0.1 m ln s + 1) ** 2`` with m = ``mscale_all_dim``."""
    if rope.get("rope_type", "default") in UNSCALED_TYPES:
        return 1.0
    all_dim, factor = rope.get("mscale_all_dim"), rope.get("factor")
    if not all_dim or factor is None or float(factor) <= 1:
        return 1.0
    return (0.1 * float(all_dim) * math.log(float(factor)) + 1.0) ** 2


def rope_type_of(rope: dict[str, Any]) -> str:
    """The effective rope type of a normalized rope dict (legacy ``type`` honoured)."""
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    return "default" if rope_type == "mrope" else str(rope_type)


class Family:
    """An architecture family. Class attributes declare; methods can be overridden."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    #: sub-configs that hold the language model's settings
    text_config_keys: ClassVar[tuple[str, ...]] = ("text_config",)
    #: whether the top level can hold rope settings too (a VLM wrapper's never does)
    top_level_sites: ClassVar[bool] = True
    #: rope keys a patch must carry over even when it replaces the scaling type
    preserve_keys: ClassVar[frozenset[str]] = frozenset({
        "mrope_section", "mrope_interleaved", "truncate", "mscale", "mscale_all_dim",
        "partial_rotary_factor",
    })
    #: methods the family supports (None: every registered method)
    methods: ClassVar[tuple[str, ...] | None] = None
    #: for nested per-layer-type rope dicts, the layer types scaling applies to (None: all)
    scaled_layer_types: ClassVar[tuple[str, ...] | None] = None
    #: rope_theta that transformers assumes when a config omits it
    default_rope_theta: ClassVar[float] = 10000.0
    #: the trained window when it differs from max_position_embeddings (None: read the config)
    native_window_tokens: ClassVar[int | None] = None
    #: values the config class assumes when config.json omits them or leaves them null
    #: (Gemma 3: max_position_embeddings 131072, head_dim 256), read at the rope sites
    config_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    #: write ``head_dim = hidden_size // num_attention_heads`` when the config leaves it
    #: null: transformers' yarn, dynamic and longrope crash on ``head_dim: None`` (Mixtral)
    fill_head_dim: ClassVar[bool] = False
    #: answer for every model_type no other family claims (declare no model_types then);
    #: a subclass that declares model_types is an ordinary family
    fallback: ClassVar[bool] = False
    #: rope keys the attention softmax scale is derived from (MLA: :data:`MLA_TEMPERATURE_KEYS`);
    #: yarn keeps them, methods without an attention temperature remove them
    temperature_keys: ClassVar[frozenset[str]] = frozenset()
    #: values a rope dict of a given rope type always carries in this family, written with the
    #: patch when the file leaves them out (DeepSeek-V4: yarn's attention_factor 1.0, which its
    #: config class injects only when it folds a flat rope_scaling)
    pinned_rope_values: ClassVar[Mapping[str, Mapping[str, Any]]] = MappingProxyType({})
    #: whether transformers 5.x folds a flat legacy ``rope_scaling`` into the scaled layer type
    #: of a per-layer-type model (Gemma 3 does; Gemma 4 and MiMo-V2-Flash fail to build)
    flat_rope_scaling_folds: ClassVar[bool] = True
    description: ClassVar[str] = ""

    plugin: str = ""
    version: str = ""

    def resolve(self, view: ConfigView, registry: FamilyLookup) -> "Family":
        """The family whose knowledge applies (a VLM wrapper returns its text model's)."""
        return self

    def refusal(self, view: ConfigView) -> str | None:
        """Why this model cannot carry RoPE scaling at all, with what to do instead; None when it can.

        A non-None answer refuses every plan (exit code 3) before any rope setting is read:
        no RoPE in the language model, RoPE only on local (sliding or chunked) layers, a
        rotary variant transformers cannot scale.
        """
        return None

    def note(self, view: ConfigView) -> str | None:
        """Why this family answered and which rules it applied, when that is not obvious.

        Shown by inspect, plan, patch and audit and recorded in the receipt (the generic
        family says that no plugin claimed the model_type and how it read the config).
        """
        return None

    # --- where settings live ----------------------------------------------------------
    def rope_sites(self, view: ConfigView) -> list[RopeSite]:
        """Every rope dict a patch must touch; the language model's comes last."""
        sites: list[RopeSite] = []
        paths = ([()] if self.top_level_sites else []) + \
            [(key,) for key in self.text_config_keys if view.node((key,)) is not None]
        for path in paths:
            layout = view.layout(path)
            if layout is None:
                continue
            layer_types = view.layer_types(path) if layout == "rope_parameters" else None
            if layer_types:
                wanted = self.scaled_layer_types
                sites += [RopeSite(path, layout, lt) for lt in layer_types if wanted is None or lt in wanted]
            else:
                sites.append(RopeSite(path, layout))
        if not sites and view.is_dict and "max_position_embeddings" in self.config_defaults:
            sites.append(RopeSite(paths[-1], LEGACY))  # every rope setting left to the class defaults
        if not sites:
            raise InvalidConfigError(
                f"{view.model_type()!r} config has no rope settings (no rope_theta, rope_scaling, "
                "rope_parameters or max_position_embeddings at the top level or in "
                f"{'/'.join(self.text_config_keys)}); pass the model's full config.json"
            )
        return sites

    def rope(self, view: ConfigView, site: RopeSite) -> dict[str, Any]:
        """The site's normalized rope dict with rope_theta and rope_type always present."""
        rope = view.read_rope(site)
        if rope.get("rope_theta") is None:
            rope["rope_theta"] = self.default_rope_theta
        where = ".".join([*site.path, *view.rope_key(site, "rope_theta")])
        rope["rope_theta"] = positive_float(rope["rope_theta"], where)
        if rope["rope_theta"] <= 1:
            raise InvalidConfigError(f"{where} is {rope['rope_theta']!r}; expected a RoPE base above 1 "
                                     "(10000 for Llama 2, 500000 for Llama 3); fix the config.json")
        declared = rope.get("rope_type") or rope.get("type") or "default"
        if not isinstance(declared, str):
            raise InvalidConfigError(f"{site.label}.rope_type is {declared!r}; expected a string such as "
                                     "'default', 'linear' or 'yarn'; fix the config.json")
        rope["rope_type"] = rope_type_of(rope)
        for key, value in rope.items():
            bad = [v for v in (value if isinstance(value, list) else [value])
                   if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise InvalidConfigError(f"{site.label}.{key} holds {shown_number(bad[0])}; expected finite numbers "
                                         "(NaN and Infinity cannot scale a rotary frequency); fix the config.json")
        return rope

    def setting(self, view: ConfigView, site: RopeSite, key: str) -> Any:
        """A value of the site's container, or the family's default when absent or null."""
        value = view.get(site.path, key)
        return self.config_defaults.get(key) if value is None else value

    def max_position_embeddings(self, view: ConfigView, site: RopeSite) -> int:
        value = self.setting(view, site, "max_position_embeddings")
        where = ".".join([*site.path, "max_position_embeddings"])
        if value is None:
            raise InvalidConfigError(f"{where} is missing; expected the model's context length in tokens")
        return bounds.window(value, where)

    # --- what the model was trained with ----------------------------------------------
    def native_window(self, view: ConfigView, site: RopeSite) -> int:
        """The window the base model was trained at, before any scaling."""
        if self.native_window_tokens:
            return self.native_window_tokens
        rope = self.rope(view, site)
        if rope["rope_type"] not in UNSCALED_TYPES:
            original = self.scaled_original(view, site, rope)
            if original is not None:
                return original
        return self.unscaled_window(view, site)

    def unscaled_window(self, view: ConfigView, site: RopeSite) -> int:
        """The trained window of a config that names none: ``max_position_embeddings`` by default.

        Override where a family's configs overstate it (Qwen: 40960 or 131072 for 32768).
        """
        return self.max_position_embeddings(view, site)

    def scaled_original(self, view: ConfigView, site: RopeSite, rope: dict[str, Any]) -> int | None:
        """The original window a scaled rope dict declares, or that linear PI implies, else None."""
        original = rope.get("original_max_position_embeddings")
        if original is not None:
            return bounds.window(original, f"{site.label}.original_max_position_embeddings")
        if rope["rope_type"] == "linear" and rope.get("factor") is not None:
            # linear PI stretches the window: max_position_embeddings = factor x original
            factor = positive_float(rope["factor"], f"{site.label}.factor")
            implied = self.max_position_embeddings(view, site) / factor
            return bounds.window(max(1, round(implied)) if math.isfinite(implied) else implied,
                                 f"max_position_embeddings / {site.label}.factor")
        return None

    def shipped_scaling(self, view: ConfigView, site: RopeSite) -> ShippedScaling | None:
        """Scaling the config already carries, or None."""
        rope = self.rope(view, site)
        rope_type = rope["rope_type"]
        if rope_type in UNSCALED_TYPES:
            return None
        window = self.max_position_embeddings(view, site)
        original = self.scaled_original(view, site, rope)
        if original is None:
            original = self.native_window(view, site)
        factor = rope.get("factor")
        factor = positive_float(factor, f"{site.label}.factor") if factor is not None else window / original
        max_positions = window
        if rope_type == "dynamic":  # dynamic's threshold is max_position_embeddings itself
            reached = factor * window
            window = bounds.window(round(reached) if math.isfinite(reached) else reached,
                                   f"{site.label}.factor x max_position_embeddings")
        return ShippedScaling(rope_type, factor, original, window, site.label, rope=rope,
                              max_position_embeddings=max_positions)

    def head_dim(self, view: ConfigView, site: RopeSite) -> int:
        """The attention head size: ``head_dim``, else hidden_size // num_attention_heads."""
        head_dim = self.setting(view, site, "head_dim")
        where = ".".join([*site.path, "head_dim"])
        if head_dim is None:
            hidden_where = ".".join([*site.path, "hidden_size"])
            heads_where = ".".join([*site.path, "num_attention_heads"])
            hidden = positive_int(self.setting(view, site, "hidden_size"), hidden_where)
            heads = positive_int(self.setting(view, site, "num_attention_heads"), heads_where)
            return bounds.head_dim(hidden // heads, f"{hidden_where} // {heads_where.rsplit('.', 1)[-1]}")
        return bounds.head_dim(head_dim, where)

    def rotary_dim(self, view: ConfigView, site: RopeSite) -> int:
        """Dimensions rotated per head: head_dim x partial_rotary_factor."""
        head_dim = self.head_dim(view, site)
        rope = view.read_rope(site)
        partial = rope.get("partial_rotary_factor", self.setting(view, site, "partial_rotary_factor"))
        partial = 1.0 if partial is None else positive_float(partial, "partial_rotary_factor")
        return self.rotary_dim_from(head_dim, partial)

    @staticmethod
    def rotary_dim_from(head_dim: int, partial: float) -> int:
        """``int(head_dim * partial)`` as transformers computes it; refused unless even and >= 4."""
        dim = bounds.rotary_product(head_dim, partial)
        if dim < 4 or dim % 2:
            raise InvalidConfigError(
                f"rotary dimension {dim} (head_dim {head_dim} x partial_rotary_factor {partial:g}) is not an "
                "even number of at least 4; fix head_dim or partial_rotary_factor in the config.json")
        return dim

    # --- what a patch may do ----------------------------------------------------------
    def check_method(self, method: str) -> None:
        """Raise :class:`UnsupportedMethodError` when the family cannot carry ``method``."""
        if self.methods is not None and method not in self.methods:
            raise UnsupportedMethodError(
                f"family '{self.name}' does not support method {method!r}; "
                f"choose one of {', '.join(self.methods) or 'none'}"
            )

    def implied_settings(self, view: ConfigView, site: RopeSite) -> dict[str, Any]:
        """Values at ``site``'s container that the config class builds when config.json leaves
        them out, and that a patch edits inside: written out first, as the class builds them
        (MiMo-V2-Flash's per-layer-type ``rope_parameters``). Empty when the config has them."""
        return {}

    def extra_changes(self, view: ConfigView, site: RopeSite, method: str) -> dict[str, Any]:
        """Container-level values a patch must also set at ``site`` (e.g. a missing head_dim)."""
        if self.fill_head_dim and view.get(site.path, "head_dim") is None:
            return {"head_dim": self.head_dim(view, site)}
        return {}

    def softmax_scale_multiplier(self, rope: dict[str, Any]) -> float:
        """What the attention folds into its softmax scale from a (normalized) rope dict.

        1 unless the family declares :attr:`temperature_keys`; for MLA, YaRN's
        ``mscale(factor, mscale_all_dim) ** 2`` whenever the rope type is not default.
        """
        if not self.temperature_keys:
            return 1.0
        return mla_softmax_multiplier(rope)

    def legacy_mirror(self, view: ConfigView, path: tuple[str, ...],
                      layers: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """Container keys that make transformers 4.57 read per-layer-type rope settings as 5.x does.

        ``layers`` holds the patched ``rope_parameters`` dict of each layer type at ``path``.
        By default: when one layer type is scaled and every other one is plain RoPE on the
        same base, the flat legacy form of the scaled one (transformers 4.57 builds the other
        layer types as default RoPE from the same ``rope_theta``, as Olmo 3 does). None when
        4.57 has no such form: a 5.x-layout file of a model type 4.57 knows is then refused
        rather than written for one version only.
        """
        scaled = [lt for lt, rope in layers.items() if rope_type_of(rope) not in UNSCALED_TYPES]
        if len(scaled) != 1 or len(layers) < 2:  # the other layer types unknown (class-built): no judgement
            return None
        theta = layers[scaled[0]].get("rope_theta")
        for layer_type, rope in layers.items():
            if layer_type != scaled[0] and {k: v for k, v in rope.items() if k != "partial_rotary_factor"} \
                    not in ({"rope_type": "default", "rope_theta": theta}, {"rope_type": "default"}):
                return None
        if any(view.get(path, key) is not None for key in ("rope_local_base_freq", "global_rope_theta",
                                                            "local_rope_theta")):
            return None  # the model reads per-layer bases from keys of its own
        return legacy_mirror(layers[scaled[0]])

    def refresh_live_modules(self, model: Any) -> list[str]:
        """Update a live model's modules, other than rotary ones, that depend on rope settings.

        Called after the rotary modules are rebuilt from the patched config (and again
        after a failed patch is rolled back). DeepSeek, for one, folds YaRN's mscale
        into the attention softmax scale. Returns the names of the modules updated.
        """
        return []

    def __repr__(self) -> str:
        return f"<Family {self.name} ({', '.join(self.model_types)})>"

