"""One view over a config.json dict or a transformers 4.x / 5.x config object.

The view finds rope settings at a container (the top level or a sub-config such
as ``text_config``), reads them as one normalized dict (``rope_theta`` included,
whatever the layout) and applies :class:`Change` records, each addressed by its
path in the serialized config.json, so the same record describes a file edit,
an object edit and a receipt line.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from ropekit.errors import InvalidConfigError, Param

RopeLayout = str  # "rope_scaling" (transformers 4.x) or "rope_parameters" (5.x)
LEGACY = "rope_scaling"
PARAMETERS = "rope_parameters"
_MISSING = object()


@dataclass(frozen=True)
class RopeSite:
    """Where one rope dict lives: a container path, its layout, and a layer type if nested."""

    path: tuple[str, ...]
    layout: RopeLayout
    layer_type: str | None = None

    @property
    def label(self) -> str:
        parts = [*self.path, self.layout]
        if self.layer_type:
            parts.append(self.layer_type)
        return ".".join(parts)


@dataclass(frozen=True)
class Change:
    """Set (or remove) one value. ``container`` + ``key`` is its config.json path."""

    container: tuple[str, ...]
    key: tuple[str, ...]
    before: Any
    after: Any
    removed: bool = False

    @property
    def path(self) -> tuple[str, ...]:
        return (*self.container, *self.key)

    def to_json(self) -> dict[str, Any]:
        out = {"path": list(self.path), "before": _jsonable(self.before), "after": _jsonable(self.after)}
        if self.removed:
            out["removed"] = True
        return out


def _jsonable(value: Any) -> Any:
    return None if value is _MISSING else value


class ConfigView:
    """Read and patch rope settings in a dict or a transformers config object."""

    def __init__(self, target: Any) -> None:
        if isinstance(target, dict):
            self.is_dict = True
        elif hasattr(target, "to_dict") and hasattr(target, "model_type"):
            self.is_dict = False
        else:
            raise InvalidConfigError(
                f"cannot read a model config from {type(target).__name__}; pass a config.json dict, "
                "a transformers PretrainedConfig, a model, or a path / Hub id to ropekit.plan"
            )
        self.target = target

    # --- navigation -------------------------------------------------------------------
    def node(self, path: tuple[str, ...]) -> Any:
        """The container at ``path`` or None."""
        node = self.target
        for key in path:
            node = self.get_in(node, key)
            if node is None or (self.is_dict and not isinstance(node, dict)):
                return None
        return node

    def has_in(self, node: Any, key: str) -> bool:
        if self.is_dict:
            return key in node
        return key in vars(node)  # own attributes only (4.57 Qwen2-VL forwards the rest)

    def get_in(self, node: Any, key: str, default: Any = None) -> Any:
        if self.is_dict:
            return node.get(key, default)
        return getattr(node, key, default)

    def get(self, path: tuple[str, ...], key: str, default: Any = None) -> Any:
        node = self.node(path)
        return default if node is None else self.get_in(node, key, default)

    def model_type(self, path: tuple[str, ...] = ()) -> str:
        model_type = self.get(path, "model_type")
        if not isinstance(model_type, str) or not model_type:
            where = ".".join(path) or "the top level"
            raise InvalidConfigError(
                f"config has no model_type at {where} (found {model_type!r}); "
                "pass a Hugging Face config.json, or name the family explicitly with ",
                Param("family", placeholder="NAME")
            )
        return model_type

    def json_dict(self) -> dict[str, Any]:
        """The config as config.json would hold it."""
        if self.is_dict:
            return self.target
        return self.target.to_dict()

    # --- rope settings ----------------------------------------------------------------
    def layout(self, path: tuple[str, ...]) -> RopeLayout | None:
        """Which layout a container uses, or None if it holds no rope settings."""
        node = self.node(path)
        if node is None:
            return None
        if self.has_in(node, PARAMETERS):
            return PARAMETERS
        if self.has_in(node, LEGACY) or self.has_in(node, "rope_theta"):
            return LEGACY
        if self.is_dict and "max_position_embeddings" in node:  # rope defaults left implicit
            return LEGACY
        return None

    def layer_types(self, path: tuple[str, ...]) -> list[str] | None:
        """Layer types of a nested per-layer-type rope_parameters dict, else None."""
        params = self.get(path, PARAMETERS)
        if not isinstance(params, dict) or not params:
            return None
        nested = [isinstance(v, dict) for v in params.values()]
        if any(nested) and all(n or v is None for n, v in zip(nested, params.values())):
            return list(params)  # a None entry: that layer type has no position encoding
        if any(nested):
            where = ".".join([*path, PARAMETERS])
            raise InvalidConfigError(f"{where} mixes per-layer-type objects with plain keys; expected either "
                                     "{layer_type: {...}} for every entry or one flat dict; fix the config.json")
        return None

    def read_rope(self, site: RopeSite) -> dict[str, Any]:
        """A copy of the site's rope dict, with ``rope_theta`` folded in when stored apart."""
        node = self.node(site.path)
        stored = self.get_in(node, site.layout)
        where = site.label
        if stored is None:
            stored = {}
        if not isinstance(stored, dict):
            raise InvalidConfigError(
                f"{where} is a {type(stored).__name__} ({stored!r:.60}); expected an object or null; "
                "fix the config.json"
            )
        if site.layer_type:
            stored = stored.get(site.layer_type) or {}
            if not isinstance(stored, dict):
                raise InvalidConfigError(f"{where} is not an object; fix the config.json")
        rope = copy.deepcopy(stored)
        if site.layout == LEGACY and self.has_in(node, "rope_theta"):
            rope["rope_theta"] = self.get_in(node, "rope_theta")
        return rope

    def rope_key(self, site: RopeSite, key: str) -> tuple[str, ...]:
        """Where a rope dict key is stored, relative to the site's container."""
        if site.layout == LEGACY and key == "rope_theta":
            return ("rope_theta",)
        if site.layer_type:
            return (site.layout, site.layer_type, key)
        return (site.layout, key)

    def lookup_path(self, path: tuple[str, ...] | list[str]) -> Any:
        """The value at a config.json path, or a sentinel when absent (see :func:`is_missing`)."""
        node: Any = self.json_dict()
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return _MISSING
            node = node[key]
        return node

    # --- writing ----------------------------------------------------------------------
    def apply(self, changes: list[Change]) -> None:
        """Apply changes in order; nested dicts are copied, never mutated in place."""
        for change in changes:
            node = self.node(change.container)
            head = change.key[0]
            if len(change.key) == 1:
                self._store(node, head, change.after, change.removed)
                continue
            top = copy.deepcopy(self.get_in(node, head) or {})
            inner = top
            for key in change.key[1:-1]:
                inner = inner.setdefault(key, {})
            if change.removed:
                inner.pop(change.key[-1], None)
            else:
                inner[change.key[-1]] = change.after
            self._store(node, head, top, False)

    def _store(self, node: Any, key: str, value: Any, removed: bool) -> None:
        if self.is_dict:
            if removed:
                node.pop(key, None)
            else:
                node[key] = value
        elif removed:
            if key in vars(node):
                delattr(node, key)
        else:
            setattr(node, key, value)


#: rope dict keys transformers 4.57 reads at the container, not inside ``rope_scaling``
CONTAINER_KEYS = ("rope_theta", "partial_rotary_factor")


def legacy_mirror(rope: dict[str, Any]) -> dict[str, Any]:
    """The container keys that make transformers 4.57 read a flat ``rope_parameters`` dict as 5.x does.

    ``rope_scaling`` is the dict without its container keys, or null when nothing but
    ``rope_type: default`` is left (4.57's MLA attention reads ``rope_scaling["factor"]``
    whenever the dict is not null); ``rope_theta`` (and ``partial_rotary_factor``) beside it.
    5.x reads the pair back into the same dict: a legacy ``rope_scaling`` becomes its
    ``rope_parameters`` and the container keys are filled in.
    """
    legacy = {k: v for k, v in rope.items() if k not in CONTAINER_KEYS}
    out: dict[str, Any] = {LEGACY: None if legacy in ({}, {"rope_type": "default"}) else legacy}
    for key in CONTAINER_KEYS:
        if key in rope:
            out[key] = rope[key]
    return out


def is_missing(value: Any) -> bool:
    return value is _MISSING


def shown_number(value: Any) -> str:
    """A value as an error names it: non-finite numbers as JSON writes them (NaN, Infinity, -Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    return repr(value)


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0 or int(value) != value:
        raise InvalidConfigError(f"{what} is {shown_number(value)}; expected a positive integer; fix the config.json")
    return int(value)


def positive_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidConfigError(f"{what} is {shown_number(value)}; expected a positive finite number; "
                                 "fix the config.json")
    return float(value)
