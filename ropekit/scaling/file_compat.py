"""One config.json for every supported transformers, and the states that make one of them read another.

transformers 4.57 reads rope settings from ``rope_scaling`` + ``rope_theta`` (+ a top-level
``partial_rotary_factor``) and knows nothing of ``rope_parameters``; 5.x reads
``rope_parameters``, converts a legacy file on load, and lets a legacy ``rope_scaling`` win
when both are present. So a patched 5.x-layout file carries an identical legacy mirror
(``rope_scaling`` without ``rope_theta``, plus ``rope_theta``), which both versions read the
same way; a per-layer-type file gets its family's mirror or is refused, naming the version
that would misread it.

Three states make transformers 5.x silently read something other than the file seems to say
(:func:`traps`); ropekit flags them in ``inspect`` and ``audit`` and never writes them.
"""

from __future__ import annotations

import copy
from typing import Any

from ropekit.errors import InvalidConfigError, TransformersVersionError
from ropekit.config_match import same_value
from ropekit.registry.family import Family
from ropekit.scaling.config_view import (
    _MISSING,
    CONTAINER_KEYS,
    LEGACY,
    PARAMETERS,
    Change,
    ConfigView,
    RopeSite,
    legacy_mirror,
)
from ropekit.scaling.legacy_types import LEGACY_TRANSFORMERS, MODEL_TYPES_4_57

#: types whose ``original_max_position_embeddings`` 5.x replaces with a top-level one
_ORIGINAL_FROM_TOP = ("llama3", "yarn", "longrope")


def mirror_changes(view: ConfigView, family: Family, sites: list[RopeSite],
                   final_ropes: dict[str, dict[str, Any]]) -> list[Change]:
    """The legacy copies a patched 5.x-layout config.json needs so that 4.57 reads it the same way."""
    if not view.is_dict:
        return []  # a config object is patched for the transformers that holds it
    changes: list[Change] = []
    for path in dict.fromkeys(s.path for s in sites if s.layout == PARAMETERS):
        at = [s for s in sites if s.path == path]
        if at[0].layer_type is None:
            values = legacy_mirror(final_ropes[at[0].label])
        else:
            nested = view.get(path, PARAMETERS)
            nested = nested if isinstance(nested, dict) else {}  # class-built: written by the patch itself
            names = dict.fromkeys([*nested, *(s.layer_type for s in at)])
            layers = {lt: {**(nested.get(lt) or {}), **final_ropes.get(RopeSite(path, PARAMETERS, lt).label, {})}
                      for lt in names}
            mirror = family.legacy_mirror(view, path, layers)
            if mirror is None:
                model_type = view.get(path, "model_type") or view.get((), "model_type")
                if model_type in MODEL_TYPES_4_57:
                    raise TransformersVersionError(
                        f"{'.'.join([*path, PARAMETERS])} holds per-layer-type rope settings, which transformers "
                        f"{LEGACY_TRANSFORMERS} cannot read (it reads {model_type!r} rope settings from rope_scaling "
                        "and rope_theta and would build plain, unscaled RoPE), and family "
                        f"'{family.name}' knows no legacy form for them; patch the model's original "
                        "transformers 4.x config.json instead")
                continue
            values = mirror
        node = view.node(path)
        for key, value in values.items():
            before = view.get_in(node, key) if view.has_in(node, key) else _MISSING
            if before is _MISSING and value is None:
                continue
            if before is _MISSING or not same_value(before, value, rel_tol=0.0):
                changes.append(Change(path, (key,), before, value))
    return changes


# --- the three silent traps -----------------------------------------------------------------

def _normalized(rope: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in rope.items() if k not in (*CONTAINER_KEYS, "type")}
    out["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
    return out


def traps(view: ConfigView, family: Family) -> list[str]:
    """Where transformers 5.x reads something other than the file seems to say (one line each)."""
    found = []
    containers = [()] + [(k,) for k in family.text_config_keys if isinstance(view.get((), k), dict)] \
        if view.is_dict else []
    for path in containers:
        node = view.node(path)
        if node is None:
            continue
        where = ".".join(path) + "." if path else ""
        legacy, params = node.get(LEGACY), node.get(PARAMETERS)
        layer_types = node.get("layer_types")
        per_layer = isinstance(layer_types, list) and len(set(map(str, layer_types))) > 1
        if isinstance(legacy, dict) and legacy and isinstance(params, dict) and params:
            nested = all(isinstance(v, dict) for v in params.values())
            compare = params
            if nested:
                wanted = (*(family.scaled_layer_types or ()), "full_attention")  # the global layers' dict
                scaled = [lt for lt in wanted if isinstance(params.get(lt), dict)]
                compare = params[scaled[0]] if scaled else {}
            theta = node.get("rope_theta")
            inner = compare.get("rope_theta")  # absent inside: 5.x fills it from the top level
            agree = _normalized(legacy) == _normalized(compare) and (
                theta is None or inner is None or same_value(theta, inner, rel_tol=0.0))
            if not agree:
                found.append(f"{where}rope_scaling disagrees with {where}rope_parameters, and transformers 5.x "
                             f"reads rope_scaling (it wins); remove the one that is wrong")
        if isinstance(legacy, dict) and legacy and per_layer and not family.flat_rope_scaling_folds:
            found.append(f"{where}rope_scaling is one flat dict on a model with per-layer-type rope settings "
                         f"(layer_types); transformers 5.x fails to build it (KeyError 'full_attention'); write "
                         f"rope_parameters keyed by layer type instead")
        top = node.get("original_max_position_embeddings")
        if top is not None:
            for rope in _flat_ropes(node):
                kind = rope.get("rope_type") or rope.get("type")
                inner = rope.get("original_max_position_embeddings")
                if kind in _ORIGINAL_FROM_TOP and kind != "longrope" and not same_value(inner, top, rel_tol=0.0):
                    found.append(f"{where}original_max_position_embeddings ({top}) overwrites the rope dict's "
                                 f"original_max_position_embeddings ({inner}) every time transformers 5.x builds "
                                 f"a rotary module; make the two equal or remove the top-level one")
                    break
    return found


def _flat_ropes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key in (LEGACY, PARAMETERS):
        rope = node.get(key)
        if isinstance(rope, dict) and rope and not all(isinstance(v, dict) for v in rope.values()):
            out.append(rope)
    return out


def check_no_traps(view: ConfigView, family: Family, changes: list[Change]) -> None:
    """Refuse a config that holds a trap, and a patch that would write one."""
    found = traps(view, family)
    if found:
        raise InvalidConfigError(f"config.json is read differently by transformers 5.x than it looks: {found[0]}")
    if not view.is_dict or not changes:
        return
    after = ConfigView(copy.deepcopy(view.target))
    after.apply(changes)
    written = traps(after, family)
    if written:
        raise InvalidConfigError(f"the patch would leave a config.json that transformers 5.x misreads: {written[0]}; "
                                 "this is a ropekit bug, please report it")
