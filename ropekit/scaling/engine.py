"""Plan and apply: locate the rope sites, read what ships, apply policy, write, receipt.

The engine is generic: families say where settings live and what the model was
trained with, methods say what to write; the engine only applies the policy and
records the result. ``plan_config`` never mutates its input; ``apply_config``
applies a plan's changes all together or not at all.
"""

from __future__ import annotations

import copy
import math
import platform
from dataclasses import dataclass, field
from typing import Any, Callable

from ropekit.config_match import rope_snapshot
from ropekit.constants import dist_version
from ropekit.errors import (
    ArchitectureError,
    CompoundingError,
    InvalidRequestError,
    Param,
    RopekitError,
    UnstableFactorError,
    WindowMismatchError,
)
from ropekit.receipt import SCHEMA, Receipt, config_field_hashes, config_sha256
from ropekit.registry.family import UNSCALED_TYPES, Family, ShippedScaling
from ropekit.registry.manager import Registry, get_registry
from ropekit.scaling import bounds, file_compat, policy
from ropekit.scaling.config_view import _MISSING, CONTAINER_KEYS, LEGACY, Change, ConfigView, RopeSite
from ropekit.scaling.long_context import LongContextConfig
from ropekit.scaling.methods import (
    SCALING_KEYS,
    MethodRequest,
    ScalingMethod,
    closed_form,
    new_window,
)
from ropekit.scaling.transformers_support import check_transformers_support

AUTO_YARN_FROM = 4.0


@dataclass
class Plan:
    """Everything a patch will do, computed without touching the config."""

    family: Family
    method: ScalingMethod
    method_reason: str
    request: LongContextConfig
    sites: list[RopeSite]
    changes: list[Change]
    native_window: int
    original_window: int
    factor: float
    requested_factor: float
    rotary_dim: int
    existing: ShippedScaling | None
    policy: str  # none | compound | replace
    final_ropes: dict[str, dict[str, Any]]
    config_max_position_embeddings: int
    windows: policy.Windows
    warnings: list[str] = field(default_factory=list)
    #: why the family answered, when it says (the generic family always does)
    family_note: str | None = None

    @property
    def primary_site(self) -> RopeSite:
        return self.sites[-1]

    @property
    def new_window(self) -> int:
        return new_window(self.factor, self.original_window)

    def expected(self, site: RopeSite | None = None, seq_len: int | None = None) -> tuple[list[float], float]:
        """Closed-form ``(inv_freq, attention_scaling)`` the patched site implies."""
        site = site or self.primary_site
        return closed_form(self.final_ropes[site.label], self.rotary_dim,
                           self.config_max_position_embeddings, seq_len)

    @property
    def attention_scaling(self) -> float:
        return self.expected()[1]

    @property
    def long_context(self) -> dict[str, Any]:
        m, r = self.method, self.request
        return {
            "method": m.name,
            "factor": float(self.factor),
            "original_max_position_embeddings": int(self.original_window),
            "new_max_position_embeddings": self.new_window,
            "attn_factor": float(r.attn_factor) if m.uses_betas else None,
            "beta_fast": _num(r.beta_fast) if m.uses_betas else None,
            "beta_slow": _num(r.beta_slow) if m.uses_betas else None,
            "papers": list(m.papers),
        }

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON: what ``ropekit plan --json`` prints."""
        return {
            "family": {"name": self.family.name, "plugin": self.family.plugin, "version": self.family.version,
                       **({"note": self.family_note} if self.family_note else {})},
            "long_context": self.long_context,
            "attention_scaling": self.attention_scaling,
            "method_reason": self.method_reason,
            "native_window": self.native_window,
            "windows": self.windows.to_json(),
            "rotary_dim": self.rotary_dim,
            "existing_scaling": self.existing.to_json() if self.existing else None,
            "policy": {"on_existing": self.request.on_existing, "applied": self.policy,
                       "requested_factor": float(self.requested_factor)},
            "sites": [s.label for s in self.sites],
            "changes": [c.to_json() for c in self.changes],
            "warnings": list(self.warnings),
        }


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def choose_method(request: LongContextConfig, factor: float, family: Family) -> tuple[str, str]:
    """Resolve ``method="auto"`` following DESIGN's guidance; say why."""
    if request.method != "auto":
        return request.method, f"{request.method} was requested"
    supported = family.methods
    if supported is not None and "yarn" not in supported:
        if not supported:
            return "yarn", "family supports no method"  # check_method refuses with the family's reason
        return supported[0], f"family '{family.name}' supports only {', '.join(supported)}"
    if factor >= AUTO_YARN_FROM:
        return "yarn", (f"yarn: x{factor:g} is 4x or more; YaRN keeps the high-frequency pairs intact "
                        "and stays stable up to x32")
    return "yarn", (f"yarn: keeps short-context behaviour (high-frequency pairs untouched); for a zero-shot "
                    f"x{factor:g} extension with no fine-tuning, ntk is the cheaper alternative")


@dataclass(frozen=True)
class Located:
    """Where a config's rope settings are and what its model was trained with."""

    family: Family
    sites: list[RopeSite]
    native_window: int
    existing: ShippedScaling | None
    note: str | None = None

    @property
    def primary(self) -> RopeSite:
        """The language model's rope site (the last one)."""
        return self.sites[-1]


def locate(view: ConfigView, registry: Registry, *, family: str | None = None,
           inherited: ShippedScaling | None = None) -> Located:
    """The family, rope sites, native window and shipped (or inherited) scaling of a config.

    A config that ships no scaling of its own but inherits some through Hub lineage takes
    its native window from the inherited scaling (the window the base is unscaled for).
    """
    fam = registry.family(family).resolve(view, registry) if family else registry.family_for(view)
    refusal = fam.refusal(view)
    if refusal:
        raise ArchitectureError(refusal, family=fam.name)
    sites = fam.rope_sites(view)
    own = fam.shipped_scaling(view, sites[-1])
    note = fam.note(view)
    if own is None and inherited is not None:
        native = bounds.window(inherited.original_max_position_embeddings,
                               f"the original window inherited from {inherited.source}")
        return Located(fam, sites, native, inherited, note)
    native = bounds.window(fam.native_window(view, sites[-1]), f"the native window family '{fam.name}' reads")
    return Located(fam, sites, native, own, note)


def checked_rotary_dim(fam: Family, view: ConfigView, site: RopeSite) -> int:
    """The family's rotary dimension at ``site``, held to :data:`bounds.MAX_ROTARY_DIM` before any use."""
    plugin = f" of plugin '{fam.plugin}'" if fam.plugin else ""
    return bounds.rotary_dim(fam.rotary_dim(view, site), f"family '{fam.name}'{plugin} at {site.label}")


def plan_config(target: Any, request: LongContextConfig, *, registry: Registry | None = None,
                family: str | None = None, inherited: ShippedScaling | None = None) -> Plan:
    """Plan a patch of a config dict or transformers config object, without mutating it.

    :param family: force a family by name instead of reading model_type.
    :param inherited: scaling shipped by a base model (from Hub lineage), applied
        as if the config carried it when the config itself carries none.
    """
    if not isinstance(request, LongContextConfig):
        raise InvalidRequestError(f"expected a LongContextConfig, got {type(request).__name__}; "
                                  "build one with LongContextConfig(method=..., factor=...)")
    registry = registry or get_registry()
    view = target if isinstance(target, ConfigView) else ConfigView(target)
    located = locate(view, registry, family=family, inherited=inherited)
    fam, sites, primary = located.family, located.sites, located.primary
    native, existing = located.native_window, located.existing

    declared = request.original_max_position_embeddings
    if declared is not None and declared != native:
        raise WindowMismatchError(*_mismatch(declared, native, fam, existing))

    fac = policy.factors(request, existing, native)
    method_name, reason = choose_method(request, fac.total, fam)
    fam.check_method(method_name)
    method = registry.method(method_name)

    applied = "none"
    if existing:
        if request.on_existing == "refuse":
            raise _checked_refusal(view, registry, family, inherited,
                                   policy.compounding_refusal(existing, request, method, fac))
        applied = request.on_existing
        if applied == "compound" and not method.attention_temperature and existing.rope is not None:
            trained = fam.softmax_scale_multiplier(existing.rope)
            if trained > 1 + policy.REL_TOL:
                raise policy.temperature_refusal(existing, method, fam, trained)
    windows = policy.windows(existing, native, fac.total, fac.base)
    warnings = policy.window_warnings(existing, request, applied, method, fac, windows)

    if fac.total > method.stable_max_factor and not request.allow_unstable:
        raise UnstableFactorError(
            f"{method.name} x{fac.total:g} is beyond its stable band (<= x{method.stable_max_factor:g}); "
            "lower the factor, choose another method, or pass ", Param("allow_unstable", True)
        )
    if method.name == "dynamic":
        warnings.append("dynamic NTK suits inference only; fine-tune with yarn or linear instead")

    changes, final_ropes, max_positions = _site_changes(view, fam, sites, method, fac, request, applied)
    rotary_dim = checked_rotary_dim(fam, view, primary)
    if applied == "compound" and existing is not None and existing.rope is not None:
        _check_compound(view, fam, sites, existing, method, fac, request, final_ropes, rotary_dim,
                        max_positions, registry)
    changes += file_compat.mirror_changes(view, fam, sites, final_ropes)
    file_compat.check_no_traps(view, fam, changes)

    if not view.is_dict:  # the installed transformers will read this object
        check_transformers_support(final_ropes[primary.label], int(max_positions))
    return Plan(
        family=fam, method=method, method_reason=reason, request=request, sites=sites,
        changes=changes, native_window=native, original_window=fac.base, factor=fac.total,
        requested_factor=fac.requested, rotary_dim=rotary_dim, existing=existing, policy=applied,
        final_ropes=final_ropes, config_max_position_embeddings=int(max_positions),
        windows=windows, warnings=warnings, family_note=located.note,
    )


def _checked_refusal(view: ConfigView, registry: Registry, family: str | None, inherited: ShippedScaling | None,
                     refusal: CompoundingError) -> CompoundingError:
    """The refusal, or, when the compound it suggests is refused too, that reason and its alternative."""
    try:
        plan_config(view, refusal.suggestion, registry=registry, family=family, inherited=inherited)
    except CompoundingError as exc:
        combined = CompoundingError(f"{refusal}; but {exc}")
        combined.suggestion = getattr(exc, "suggestion", None)
        return combined
    except RopekitError:
        pass
    return refusal


def _mismatch(declared: int, native: int, fam: Family, existing: ShippedScaling | None) -> tuple[Any, ...]:
    why = f" (it {existing.describe()})" if existing is not None else ""
    return (f"declared original window {declared} differs from the native window {native} of this "
            f"{fam.name} model{why}; drop ", Param("original_max_position_embeddings"), f" or set it to {native}")


def _site_changes(view: ConfigView, fam: Family, sites: list[RopeSite], method: ScalingMethod,
                  fac: policy.Factors, request: LongContextConfig, applied: str,
                  ) -> tuple[list[Change], dict[str, dict[str, Any]], int]:
    """The changes at every rope site and container, the rope dicts they leave, and max positions."""
    changes: list[Change] = []
    final_ropes: dict[str, dict[str, Any]] = {}
    max_positions = 0
    containers_done: set[tuple[str, ...]] = set()
    for site in sites:
        rope = fam.rope(view, site)
        req = MethodRequest(fac.total, fac.base, checked_rotary_dim(fam, view, site), rope["rope_theta"],
                            request.beta_fast, request.beta_slow, request.attn_factor)
        site_changes, final_ropes[site.label] = _rope_changes(view, fam, site, rope, method, req, applied)
        if site.path not in containers_done:  # what the class builds, written out where the patch leaves it
            written = {c.path for c in site_changes}
            changes += [c for c in _implied_changes(site.path, fam.implied_settings(view, site))
                        if c.path not in written]
        changes += site_changes
        if site.path not in containers_done:
            containers_done.add(site.path)
            max_positions = method.config_max_position_embeddings(req)
            changes += _container_changes(view, fam, site, method, max_positions, primary=site is sites[-1])
    return changes, final_ropes, max_positions


def _check_compound(view: ConfigView, fam: Family, sites: list[RopeSite], existing: ShippedScaling,
                    method: ScalingMethod, fac: policy.Factors, request: LongContextConfig,
                    final_ropes: dict[str, dict[str, Any]], rotary_dim: int, max_positions: int,
                    registry: Registry) -> None:
    """Refuse a compound that makes any rotary pair turn faster than the weights were trained with."""
    trained = existing.rope or {}
    trained_max = existing.max_position_embeddings or existing.window
    faster = policy.faster_pairs(trained, final_ropes[sites[-1].label], rotary_dim, trained_max, max_positions)
    if faster is None:
        return
    final = final_ropes[sites[-1].label]
    suggestion = None
    if existing.rope_type == "linear" and method.name != "linear":
        linear = registry.method("linear")
        unstable = fac.total > linear.stable_max_factor and not request.allow_unstable
        alternative: tuple[Any, ...] = (
            "linear over linear composes exactly: ", *policy.compound_params("linear", unstable),
            f" gives linear x{fac.total:g} from {fac.base} = {new_window(fac.total, fac.base)} tokens")
        suggestion = request.model_copy(update={"method": "linear", "allow_unstable": request.allow_unstable or unstable})
    elif method.name != "yarn" and (fam.methods is None or "yarn" in fam.methods) and policy.faster_pairs(
            trained, _yarn_rope(trained, fac, request), rotary_dim, trained_max,
            new_window(fac.total, fac.base)) is None:
        alternative = ("yarn keeps every trained frequency: ", *policy.compound_params("yarn"))
        suggestion = request.model_copy(update={"method": "yarn"})
    elif method.name == "yarn" and (beta := _safe_beta_fast(trained, final, rotary_dim, trained_max,
                                                               max_positions, request)) is not None:
        shown_beta = int(beta) if float(beta).is_integer() else beta
        alternative = ("a wider YaRN ramp keeps every trained frequency: ", Param("beta_fast", shown_beta))
        suggestion = request.model_copy(update={"beta_fast": float(beta)})
    else:
        alternative = (f"replace the shipped {existing.rope_type} instead (", Param("on_existing", "replace"),
                       f"), which applies {method.name} x{fac.requested:g} from {fac.base} = "
                       f"{new_window(fac.requested, fac.base)} tokens")
    error = policy.frequency_refusal(existing, method, fac, faster, alternative)
    error.suggestion = suggestion
    raise error


def _yarn_rope(trained: dict[str, Any], fac: policy.Factors, request: LongContextConfig) -> dict[str, Any]:
    """The rope dict yarn would write over ``trained`` for the same total factor."""
    return {"rope_type": "yarn", "rope_theta": trained["rope_theta"], "factor": fac.total,
            "original_max_position_embeddings": fac.base, "beta_fast": request.beta_fast,
            "beta_slow": request.beta_slow}


def _safe_beta_fast(trained: dict[str, Any], final: dict[str, Any], rotary_dim: int, trained_max: int,
                    max_positions: int, request: LongContextConfig) -> float | None:
    """The smallest power-of-two multiple of beta_fast (up to 1024) whose YaRN ramp slows every pair enough."""
    beta = request.beta_fast * 2
    while beta <= 1024:
        if policy.faster_pairs(trained, {**final, "beta_fast": beta}, rotary_dim, trained_max, max_positions) is None:
            return beta
        beta *= 2
    return None


def _rope_changes(view: ConfigView, fam: Family, site: RopeSite, rope: dict[str, Any], method: ScalingMethod,
                  req: MethodRequest, policy: str) -> tuple[list[Change], dict[str, Any]]:
    """The changes to one rope dict (``rope``: its normalized form), and the dict they leave."""
    raw = view.read_rope(site)
    updates = method.rope_updates(req, rope)
    pinned = fam.pinned_rope_values.get(str(updates.get("rope_type", rope["rope_type"])), {})
    updates.update({k: v for k, v in pinned.items() if k not in raw and k not in updates})
    for key, value in updates.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequestError(
                f"{method.name} x{req.factor:g} on rope_theta {rope['rope_theta']:g} gives {key} = {value}; "
                "lower the factor or choose another method")
    removals: set[str] = set()
    if policy in ("compound", "replace") and rope["rope_type"] not in UNSCALED_TYPES:
        removals = {k for k in raw if k in SCALING_KEYS and k not in fam.preserve_keys and k not in updates}
        updates.setdefault("rope_type", method.rope_type or "default")
    if not method.attention_temperature:  # e.g. MLA's mscale: linear, ntk and dynamic set no temperature
        removals |= {k for k in raw if k in fam.temperature_keys and k not in updates}
    if "rope_type" in updates and "type" in raw:
        removals.add("type")  # a stale legacy key would contradict rope_type
    changes = []
    for key, value in updates.items():
        before = raw.get(key, _MISSING)
        if before is _MISSING or before != value or type(before) is not type(value):
            changes.append(Change(site.path, view.rope_key(site, key), before, value))
    for key in sorted(removals):
        changes.append(Change(site.path, view.rope_key(site, key), raw[key], None, removed=True))
    final = {k: v for k, v in {**rope, **updates}.items() if k not in removals}
    if site.layout == LEGACY and not site.layer_type and changes and _only_default(final) and raw:
        # nothing but rope_type default left: null, which every transformers reads as plain RoPE
        # (4.57's MLA attention indexes rope_scaling["factor"] of any dict that is not null)
        changes = [c for c in changes if c.key[0] != LEGACY]
        changes.append(Change(site.path, (LEGACY,), view.get(site.path, LEGACY), None))
    return changes, final


def _implied_changes(container: tuple[str, ...], settings: dict[str, Any],
                     prefix: tuple[str, ...] = ()) -> list[Change]:
    """One change per leaf of values the config class builds (none of them in the file)."""
    changes = []
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            changes += _implied_changes(container, value, (*prefix, key))
        else:
            changes.append(Change(container, (*prefix, key), _MISSING, value))
    return changes


def _only_default(rope: dict[str, Any]) -> bool:
    return {k: v for k, v in rope.items() if k not in CONTAINER_KEYS} in ({}, {"rope_type": "default"})


def _container_changes(view: ConfigView, fam: Family, site: RopeSite, method: ScalingMethod,
                       max_positions: int, primary: bool) -> list[Change]:
    """max_position_embeddings and the family's extra values at the site's container."""
    values = {"max_position_embeddings": max_positions, **fam.extra_changes(view, site, method.name)}
    node = view.node(site.path)
    changes = []
    for key, value in values.items():
        present = view.has_in(node, key)
        if not present and not primary and key == "max_position_embeddings":
            continue  # a wrapper level that never carried it
        before = view.get_in(node, key) if present else _MISSING
        if before != value:
            changes.append(Change(site.path, (key,), before, value))
    return changes


def apply_config(target: Any, request: LongContextConfig, *, registry: Registry | None = None,
                 family: str | None = None, inherited: ShippedScaling | None = None,
                 model: dict[str, Any] | None = None,
                 then: Callable[[Plan], dict[str, Any]] | None = None) -> tuple[Plan, Receipt]:
    """Patch a config dict or object in place and return the plan and its receipt.

    ``then`` runs after the config is written (e.g. rebuilding a live model's
    rotary modules) and returns extra receipt fields. Nothing is changed unless
    every step succeeds: on any error the config is restored.
    """
    view = ConfigView(target)
    before = config_sha256(view)
    plan = plan_config(view, request, registry=registry, family=family, inherited=inherited)
    snapshot = _snapshot(view, plan.changes)
    try:
        view.apply(plan.changes)
        after = config_sha256(view)
        extra = then(plan) if then else {}
        receipt = build_receipt(plan, view, before, after, model or {}, **extra)
    except BaseException:
        _restore(view, snapshot)
        raise
    return plan, receipt


def build_receipt(plan: Plan, view: ConfigView, before: str, after: str, model: dict[str, Any],
                  landing: dict[str, Any] | None = None) -> Receipt:
    return Receipt({
        "schema": SCHEMA,
        "model": {
            "id": model.get("id"), "revision": model.get("revision"), "source": model.get("source", "object"),
            "config_sha256_before": before, "config_sha256_after": after,
            **{k: v for k, v in model.items() if k not in {"id", "revision", "source"}},
        },
        **plan.to_json(),
        "config_fields_sha256": config_field_hashes(view),
        "rope_values": rope_snapshot(view, plan.family),
        "versions": versions(),
        "landing": landing,
    })


def versions() -> dict[str, str | None]:
    """Library versions recorded in receipts (metadata only: nothing heavy is imported)."""
    return {"ropekit": dist_version("ropekit"), "transformers": dist_version("transformers"),
            "python": platform.python_version()}


def _snapshot(view: ConfigView, changes: list[Change]) -> list[tuple[Any, str, Any]]:
    saved, seen = [], set()
    for change in changes:
        node = view.node(change.container)
        key = change.key[0]
        if (id(node), key) in seen:
            continue
        seen.add((id(node), key))
        value = copy.deepcopy(view.get_in(node, key)) if view.has_in(node, key) else _MISSING
        saved.append((node, key, value))
    return saved


def _restore(view: ConfigView, snapshot: list[tuple[Any, str, Any]]) -> None:
    for node, key, value in reversed(snapshot):
        view._store(node, key, value, removed=value is _MISSING)

