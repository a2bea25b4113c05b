"""Compare a config with the one a receipt recorded, the way transformers reads both.

A model that was trained and saved does not hold the bytes ``ropekit patch`` wrote:
``save_pretrained`` rewrites ``_name_or_path``, ``dtype`` (``torch_dtype`` on 4.x),
``transformers_version`` and ``architectures``, drops or adds values equal to the
config class's defaults, and stores rope settings in its own version's layout
(``rope_scaling`` + ``rope_theta`` on 4.x, ``rope_parameters`` on 5.x). The
comparison here is therefore:

* rope settings: every rope dict the file holds at a recorded site (either layout,
  both when both are present) must read, once normalized, exactly as recorded:
  same keys, same values (numbers to a relative 1e-12; the legacy ``type`` alias
  is dropped where ``rope_type`` is present);
* every other field: per-field sha256 as recorded, except the keys
  :data:`SAVE_REWRITTEN`, and a field present on one side only whose value equals
  the installed transformers' default for that config class (what transformers
  reads in its absence).

Every difference is named by its config.json path.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

from ropekit.errors import InvalidConfigError
from ropekit.scaling.config_view import LEGACY, PARAMETERS, ConfigView, RopeSite
from ropekit.scaling.transformers_support import quiet_transformers

#: keys ``save_pretrained`` (or a trainer loading the model) rewrites that do not touch rope,
#: at the top level and in sub-configs
SAVE_REWRITTEN = frozenset({"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures",
                            "_attn_implementation_autoset", "_commit_hash"})
#: container keys that hold rope settings (compared through the normalized rope dict)
ROPE_KEYS = frozenset({LEGACY, PARAMETERS, "rope_theta", "partial_rotary_factor", "rope_local_base_freq"})
#: container keys folded into the normalized rope dict when stored beside it
_FOLDED = ("partial_rotary_factor", "rope_local_base_freq")


def site_key(site: RopeSite) -> str:
    """A layout-independent name for a rope site: ``config``, ``config.text_config``,
    ``config.text_config[full_attention]``."""
    base = ".".join(["config", *site.path])
    return f"{base}[{site.layer_type}]" if site.layer_type else base


def _parse_site_key(key: str) -> tuple[tuple[str, ...], str | None]:
    base, _, rest = key.partition("[")
    return tuple(base.split(".")[1:]), (rest[:-1] if rest else None)


def normalized_rope(view: ConfigView, family: Any, site: RopeSite) -> dict[str, Any]:
    """The site's rope dict as transformers reads it: ``rope_theta`` and ``rope_type`` always
    present, rope keys stored beside the dict folded in, the legacy ``type`` alias dropped."""
    rope = family.rope(view, site)
    node = view.node(site.path)
    for key in _FOLDED:
        if key not in rope and view.has_in(node, key) and view.get_in(node, key) is not None:
            rope[key] = view.get_in(node, key)
    rope.pop("type", None)
    return _plain(rope)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def rope_snapshot(view: ConfigView, family: Any) -> dict[str, dict[str, Any]]:
    """Every rope site's normalized rope dict, keyed by :func:`site_key` (what a receipt records)."""
    return {site_key(site): normalized_rope(view, family, site) for site in family.rope_sites(view)}


def rope_differences(recorded: dict[str, dict[str, Any]], view: ConfigView,
                     family_name: str | None = None) -> list[tuple[str, Any, Any]]:
    """``(config path, found, recorded)`` for every rope value that reads differently.

    Each rope dict the file holds at a recorded site is compared (both layouts when the
    file carries both); a site with no rope dict at all is read with the family's defaults.
    A missing value is reported as the string ``absent``. ``family_name`` (the family the
    receipt recorded, e.g. a ``--family`` patch) reads the config when it is registered.
    """
    from ropekit.registry.manager import get_registry

    registry = get_registry()
    if family_name is not None and family_name in registry.families_by_name:
        family = registry.family(family_name).resolve(view, registry)
    else:
        family = registry.family_for(view)
    out: list[tuple[str, Any, Any]] = []
    for path, layer_type, wanted in _pairs(recorded, view, family):
        node = view.node(path)
        held = [] if node is None else [layout for layout in (PARAMETERS, LEGACY) if view.has_in(node, layout)]
        if LEGACY not in held and PARAMETERS not in held:
            held.append(LEGACY)  # rope_theta alone, or every rope value left to the defaults
        for layout in held:
            nested = layout == PARAMETERS and view.layer_types(path)
            if bool(layer_type) != bool(nested):
                continue  # per-layer-type dicts (5.x) and one dict (4.x) are different readings of a site
            site = RopeSite(path, layout, layer_type if nested else None)
            found = normalized_rope(view, family, site)
            for name in sorted(set(wanted) | set(found)):
                have, want = found.get(name, _ABSENT), wanted.get(name, _ABSENT)
                if not _same(have, want):
                    where = ".".join([*path, *view.rope_key(site, name)])
                    out.append((where, have, want))
    return sorted(out, key=lambda item: (not item[0].endswith(".rope_type"), item[0]))


def _pairs(recorded: dict[str, dict[str, Any]], view: ConfigView,
           family: Any) -> list[tuple[tuple[str, ...], str | None, dict[str, Any]]]:
    """``(container path, layer type, recorded rope)`` to compare: every recorded site, and every
    rope site of this config that was not recorded, against the language model's recorded rope.

    A flat VLM config is saved by transformers with a ``text_config`` (4.57 writes both, 5.x
    only the sub-config): the language model's rope is then read there as well, or only there.
    """
    found_sites = _sites(view, family)
    primary = {}
    for key, wanted in recorded.items():
        primary[_parse_site_key(key)[1]] = wanted  # the last recorded site of each layer type
    pairs = []
    for key, wanted in recorded.items():
        path, layer_type = _parse_site_key(key)
        node = view.node(path)
        held = node is not None and any(view.has_in(node, k) for k in (PARAMETERS, LEGACY, "rope_theta"))
        if held or not found_sites:
            pairs.append((path, layer_type, wanted))
    for site in found_sites:
        layer_type = site.layer_type
        if site_key(site) not in recorded and layer_type in primary:
            pairs.append((site.path, layer_type, primary[layer_type]))
    return pairs


def _sites(view: ConfigView, family: Any) -> list[RopeSite]:
    try:
        return family.rope_sites(view)
    except InvalidConfigError:
        return []


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def _same(a: Any, b: Any) -> bool:
    if a is _ABSENT or b is _ABSENT:
        return a is b or (a is None or b is None)  # a null value reads as an absent one
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return same_value(a, b)


def is_rope_field(name: str) -> bool:
    """True for a field hash name (``rope_scaling.factor``, ``text_config.rope_theta``) under a rope key."""
    return any(part in ROPE_KEYS for part in name.split(".")[:2])


def is_save_rewritten(name: str) -> bool:
    return any(part in SAVE_REWRITTEN for part in name.split(".")[:2])


def field_differences(recorded: dict[str, str], current: dict[str, str],
                      read: Callable[[str | None], dict[str, str] | None], *, rope_by_value: bool = True) -> list[str]:
    """Names of the non-rope fields whose recorded hash differs from the config's.

    ``read(name)`` gives the per-field hashes of the config as the installed transformers
    reads it (loaded and dumped again), with field ``name`` removed first when given; None
    when transformers cannot load it. A field only one side holds is not a difference when
    transformers reads the same value without it: a field only the config holds whose
    value transformers derives anyway (a class default, or a value it copies from
    elsewhere), a recorded field the config drops that transformers still reads with the
    recorded value, or does not hold at all. A flat composite config whose sub-config
    ``save_pretrained`` writes out (``text_config.bos_token_id`` from ``bos_token_id``) is
    read the same way. With ``rope_by_value`` the rope fields are left out (compared by
    :func:`rope_differences`); without it they are compared by hash like the rest.
    """
    names = [k for k in sorted(set(recorded) | set(current))
             if recorded.get(k) != current.get(k) and not (rope_by_value and is_rope_field(k))
             and not is_save_rewritten(k)]
    return [name for name in names if not _reads_the_same(name, recorded, current, read)]


def _reads_the_same(name: str, recorded: dict[str, str], current: dict[str, str],
                    read: Callable[[str | None], dict[str, str] | None]) -> bool:
    if (name in recorded) == (name in current) or "[" in name:
        return False  # a value changed, or a list item: always an edit
    if name in current:
        value = current[name]
        head, _, key = name.partition(".")
        if key and recorded.get(key) == value and not any(k.startswith(f"{head}.") for k in recorded):
            return True  # a flat config's value, written into the sub-config transformers builds from it
        derived = read(name)
        if derived is None:
            return value == _NULL_HASH  # a null transformers does not define reads as absent
        return derived.get(name, _NULL_HASH) == value
    derived = read(None)
    return derived is not None and (name not in derived or derived[name] == recorded[name])


_NULL_HASH = hashlib.sha256(b"null").hexdigest()


def read_as_transformers(data: dict[str, Any], without: str | None = None) -> Any:
    """The config object the installed transformers builds from a config.json dict (field
    ``without``, ``key`` or ``sub.key``, removed first), or None when it cannot build one."""
    import copy

    data = copy.deepcopy(data)
    if without is not None:
        head, _, key = without.partition(".")
        node = data.get(head) if key else data
        if isinstance(node, dict):
            node.pop(key or head, None)
    data.pop("auto_map", None)
    try:
        from transformers import AutoConfig

        with quiet_transformers():
            return AutoConfig.for_model(**data)
    except (ImportError, ValueError, KeyError, TypeError):  # no transformers, or a type it does not know
        return None


def same_value(a: Any, b: Any, rel_tol: float = 1e-12) -> bool:
    """Equal, with numbers compared to a relative tolerance (4 and 4.0 are the same value)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=0.0)
    return bool(a == b)
