"""Prove that a patch landed: what the installed transformers builds must match the closed form.

transformers computes rotary frequencies once, when the rotary module is built,
so a config edited after the fact changes nothing. The landing check therefore
looks at the modules themselves: every rotary module of the language tower
(never the vision tower) is compared with the closed form of the config it
should follow. For a config folder, the rotary modules are built from the
config alone (the model skeleton on the meta device finds them; no weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ropekit.errors import InvalidConfigError, LandingError, TransformersCannotBuildError
from ropekit.landing.rotary import rotary_modules, skeleton_with_rotaries
from ropekit.receipt import same_value
from ropekit.registry.manager import Registry, get_registry
from ropekit.scaling.config_view import LEGACY, PARAMETERS, Change, ConfigView, RopeSite
from ropekit.scaling.methods import closed_form
from ropekit.scaling.transformers_support import transformers_version

TOLERANCE = 1e-6
#: container keys a 5.x-layout file carries only for transformers 4.57 (see scaling.file_compat)
_MIRROR_KEYS = frozenset({LEGACY, PARAMETERS, "rope_local_base_freq", "partial_rotary_factor"})


@dataclass
class ModuleCheck:
    """One rotary buffer compared with its closed form."""

    module: str
    buffer: str
    site: str
    rope_type_expected: str
    rope_type_found: str | None
    max_rel_error: float
    attention_expected: float
    attention_found: float | None
    worst_index: int = 0
    worst_expected: float = 0.0
    worst_found: float = 0.0

    @property
    def ok(self) -> bool:
        attention_ok = self.attention_found is None or math.isclose(
            self.attention_found, self.attention_expected, rel_tol=TOLERANCE)
        type_ok = self.rope_type_found is None or self.rope_type_found == self.rope_type_expected
        return self.max_rel_error <= TOLERANCE and attention_ok and type_ok

    def problem(self) -> str:
        if self.rope_type_found is not None and self.rope_type_found != self.rope_type_expected:
            return (f"{self.module} was built as rope_type {self.rope_type_found!r}, "
                    f"the config says {self.rope_type_expected!r}")
        if self.max_rel_error > TOLERANCE:
            return (f"{self.module}.{self.buffer}[{self.worst_index}] is {self.worst_found:.8g}, expected "
                    f"{self.worst_expected:.8g} (relative error {self.max_rel_error:.3g}, tolerance {TOLERANCE:g})")
        return (f"{self.module} attention scaling is {self.attention_found:.6g}, "
                f"expected {self.attention_expected:.6g}")

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "buffer": self.buffer, "site": self.site,
                "rope_type_expected": self.rope_type_expected, "rope_type_found": self.rope_type_found,
                "max_rel_error": self.max_rel_error, "attention_expected": self.attention_expected,
                "attention_found": self.attention_found, "ok": self.ok}


@dataclass
class SoftmaxCheck:
    """One attention's softmax scale compared with what the rope settings imply (MLA temperature)."""

    module: str
    expected: float
    found: float

    @property
    def ok(self) -> bool:
        return math.isclose(self.found, self.expected, rel_tol=TOLERANCE)

    def problem(self) -> str:
        return (f"{self.module} softmax scale is {self.found:.8g}, expected {self.expected:.8g} "
                f"(ratio {self.found / self.expected:.6g}: the attention temperature the rope settings imply)")

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "expected": self.expected, "found": self.found, "ok": self.ok}


@dataclass
class LandingReport:
    """The result of a landing check; ``to_json()`` is what receipts record."""

    checks: list[ModuleCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    softmax: list[SoftmaxCheck] = field(default_factory=list)
    family: str | None = None

    @property
    def landed(self) -> bool:
        return bool(self.checks) and not self.problems and all(c.ok for c in self.checks) \
            and all(c.ok for c in self.softmax)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.checks), default=float("inf"))

    def first_problem(self) -> str:
        if self.problems:
            return self.problems[0]
        bad: ModuleCheck | SoftmaxCheck | None = next((c for c in self.checks if not c.ok), None)
        bad = bad or next((c for c in self.softmax if not c.ok), None)
        return bad.problem() if bad else "no rotary module found in the language tower"

    def raise_if_not_landed(self) -> "LandingReport":
        if not self.landed:
            raise LandingError(f"scaling did not land: {self.first_problem()}; build the model from the "
                               "patched config (ropekit.load_model) or patch the live model with "
                               "ropekit.apply_rope_scaling(model, ...)")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"landed": self.landed, "transformers": transformers_version(), "family": self.family,
                "modules_checked": len(self.checks),
                "max_rel_error": self.max_rel_error if self.checks else None, "tolerance": TOLERANCE,
                "checks": [c.to_json() for c in self.checks], "problems": list(self.problems),
                "softmax_checks": [c.to_json() for c in self.softmax]}


# --- the check --------------------------------------------------------------------------

def verify_landing(target: Any, *, registry: Registry | None = None,
                   receipt: Any = None, family: str | None = None,
                   progress: Callable[[str], None] | None = None) -> LandingReport:
    """Check that the rotary modules transformers builds carry the configured scaling.

    :param target: a live model, or a folder / config.json path (built without weights).
    :param receipt: a Receipt (or the folder's rope_receipt.json) whose recorded values the
        model's config must carry.
    :param family: the family to read the config with; by default the one the receipt
        recorded, else the one model_type selects.
    :param progress: called with a short description of each step (importing, building the
        skeleton, each rotary module checked).
    """
    if isinstance(target, (str, Path)):
        return _verify_folder(Path(target), registry=registry, family=family, progress=progress)
    return check_model(target, registry=registry, receipt=receipt, family=family, progress=progress)


def _family(view: ConfigView, registry: Registry, receipt: Any, family: str | None) -> Any:
    """The family named, else the one the receipt recorded (a ``--family`` patch), else model_type's."""
    if family is None and receipt is not None:
        recorded = receipt.get("family") if hasattr(receipt, "get") else None
        family = recorded.get("name") if isinstance(recorded, dict) else None
        if family is not None and family not in registry.families_by_name:
            family = None  # a family no longer registered: read the config by model_type
    if family is not None:
        return registry.family(family).resolve(view, registry)
    return registry.family_for(view)


def check_model(model: Any, *, registry: Registry | None = None, receipt: Any = None,
                family: str | None = None, progress: Callable[[str], None] | None = None) -> LandingReport:
    registry = registry or get_registry()
    config = model.config
    view = ConfigView(config)
    family = _family(view, registry, receipt, family)
    sites = family.rope_sites(view)
    primary = sites[-1]
    text_config = view.node(primary.path)
    report = LandingReport(family=family.name)
    if receipt is not None:
        report.problems += _receipt_problems(receipt, family, view, primary)
    modules = list(rotary_modules(model))
    unscaled = _unscaled_layer_types(view, family, primary)
    for i, (name, _parent, _attr, module) in enumerate(modules, 1):
        if progress:
            progress(f"checking rotary module {i}/{len(modules)} ({name})")
        own = getattr(module, "config", None)
        if own is not None and own is not text_config:
            module_view, module_family = ConfigView(own), family
            module_sites = [RopeSite((), primary.layout)]
        elif name.rsplit(".", 1)[-1] in unscaled:  # one module per layer type (4.57's Olmo 3 rotary_embs)
            module_view, module_family = view, family
            module_sites = [RopeSite(primary.path, primary.layout, name.rsplit(".", 1)[-1])]
        else:
            module_view, module_family, module_sites = view, family, None
        report.checks += _check_module(name, module, module_view, module_family, primary, module_sites)
    if family.temperature_keys:
        report.softmax += _check_softmax(model, family, family.rope(view, primary))
    return report


def _unscaled_layer_types(view: ConfigView, family: Any, primary: RopeSite) -> set[str]:
    """The config's layer types a patch leaves unscaled (sliding attention), where the family tells."""
    declared = view.get(primary.path, "layer_types")
    scaled = getattr(family, "global_layer_types", None)
    if not isinstance(declared, list) or scaled is None:
        return set()
    types = sorted({t for t in declared if isinstance(t, str)})
    return set(types) - set(scaled(types))


def _check_softmax(model: Any, family: Any, rope: dict[str, Any]) -> list[SoftmaxCheck]:
    """Each MLA attention's softmax scale against ``qk_head_dim ** -0.5`` times the family's temperature."""
    from ropekit.landing.rotary import language_tower

    multiplier = family.softmax_scale_multiplier(rope)
    checks = []
    for name, module in language_tower(model).named_modules():
        head_dim, scaling = getattr(module, "qk_head_dim", None), getattr(module, "scaling", None)
        if isinstance(head_dim, int) and isinstance(scaling, float):
            checks.append(SoftmaxCheck(name, head_dim ** -0.5 * multiplier, scaling))
    return checks


def _receipt_problems(receipt: Any, family: Any, view: ConfigView, primary: RopeSite) -> list[str]:
    """Where the config the model holds departs from what the receipt recorded.

    Receipt paths follow the file's layout (rope_scaling or rope_parameters), which may
    differ from the loaded object's, so values are compared on the normalized rope dict.
    """
    rope = family.rope(view, primary)
    problems = []
    problems += _scaling_problems(receipt, rope, primary)
    for change in receipt["changes"]:
        path = list(change["path"])
        if path[: len(primary.path)] != list(primary.path):
            continue
        rest, key = path[len(primary.path):-1], path[-1]
        if rest and rest[0] in ("rope_scaling", "rope_parameters") or key == "rope_theta":
            if rest[1:] and primary.layer_type and rest[1:] != [primary.layer_type]:
                continue
            found = rope.get(key)
            wanted = None if change.get("removed") else change["after"]
        elif not rest:
            if key in _MIRROR_KEYS and primary.layout == PARAMETERS:
                continue  # a legacy mirror: the object reads rope_parameters, checked key by key
            found, wanted = view.get(primary.path, key), change["after"]
        else:
            continue
        if not same_value(found, wanted, rel_tol=1e-9):
            problems.append(f"the config the model holds has {key} = {found!r}, the receipt says {wanted!r}")
    return problems


#: the rope_type each built-in method writes (ntk changes rope_theta only, checked by value)
_METHOD_TYPES = {"linear": "linear", "dynamic": "dynamic", "yarn": "yarn"}


def _scaling_problems(receipt: Any, rope: dict[str, Any], primary: RopeSite) -> list[str]:
    """The scaling the receipt promises against what the model's language config holds.

    Compared by value, not by path: a flat file's top-level rope keys become a VLM object's
    ``text_config`` legitimately, but a file whose language tower is built from elsewhere
    (a Gemma 3 ``text_config`` of null) holds the receipt's scaling where transformers never reads it.
    """
    long_context = receipt.get("long_context") if hasattr(receipt, "get") else None
    method = long_context.get("method") if isinstance(long_context, dict) else None
    wanted = _METHOD_TYPES.get(method) if isinstance(method, str) else None
    if wanted is None:
        return []
    where = primary.label
    if rope.get("rope_type") != wanted:
        return [f"the model's language config holds rope_type {rope.get('rope_type')!r} at {where}, but the "
                f"receipt promises {method} x{long_context.get('factor')}: the patch was written where "
                "transformers does not read it; re-patch from the model's original config.json"]
    if not same_value(rope.get("factor"), long_context.get("factor"), rel_tol=1e-9):
        return [f"the model's language config holds {method} factor {rope.get('factor')!r} at {where}, the "
                f"receipt says {long_context.get('factor')!r}"]
    return []


def _check_module(name: str, module: Any, view: ConfigView, family: Any, primary: RopeSite,
                  sites: list[RopeSite] | None) -> list[ModuleCheck]:
    import torch

    checks = []
    buffers = dict(module.named_buffers(recurse=False))
    for buffer, tensor in buffers.items():
        if not buffer.endswith("inv_freq") or buffer.endswith("original_inv_freq"):
            continue
        layer_type = buffer[: -len("_inv_freq")] if buffer != "inv_freq" else None
        site = RopeSite(primary.path if sites is None else sites[0].path, primary.layout, layer_type) \
            if layer_type else (primary if sites is None else sites[0])
        rope = family.rope(view, site)
        max_pos = family.max_position_embeddings(view, site)
        dim = family.rotary_dim(view, site)
        try:
            expected, attention = closed_form(rope, dim, max_pos)
        except ValueError as exc:  # a type without a closed form here (e.g. longrope)
            raise InvalidConfigError(f"cannot check {name}: {exc}") from None
        found = tensor.detach().to(torch.float64).cpu()
        want = torch.tensor(expected, dtype=torch.float64)
        worst, worst_found = 0, float("nan")
        if found.shape != want.shape:
            rel = float("inf")
        else:
            errors = (found - want).abs() / want.abs()
            worst = int(errors.argmax())
            rel, worst_found = float(errors[worst]), float(found[worst])
        attention_found = getattr(module, f"{layer_type}_attention_scaling" if layer_type else "attention_scaling",
                                  None)
        rope_type_found = getattr(module, "rope_type", None)
        if isinstance(rope_type_found, dict):
            rope_type_found = rope_type_found.get(layer_type)
        checks.append(ModuleCheck(
            module=name, buffer=buffer, site=site.label, rope_type_expected=str(rope["rope_type"]),
            rope_type_found=rope_type_found if isinstance(rope_type_found, str) else None,
            max_rel_error=rel, attention_expected=attention,
            attention_found=float(attention_found) if attention_found is not None else None,
            worst_index=worst, worst_expected=float(expected[worst]) if expected else 0.0,
            worst_found=worst_found,
        ))
    return checks


def _verify_folder(path: Path, *, registry: Registry | None, family: str | None = None,
                   progress: Callable[[str], None] | None = None) -> LandingReport:
    from ropekit.constants import RECEIPT_FILENAME
    from ropekit.hub.resolve import resolve
    from ropekit.receipt import Receipt

    resolved = resolve(path)
    folder = resolved.path.parent if resolved.path else path
    receipt_file = folder / RECEIPT_FILENAME
    receipt = Receipt.load(receipt_file) if receipt_file.is_file() else None
    model = build_skeleton(resolved.config, receipt, progress=progress)
    return check_model(model, registry=registry, receipt=receipt, family=family, progress=progress)


def build_skeleton(config: dict[str, Any], receipt: Any = None,
                   progress: Callable[[str], None] | None = None) -> Any:
    """The weightless skeleton of a (patched) config, telling a model this transformers cannot
    build (exit 4) from a patch that broke it (a ropekit bug, exit 1).

    When the build fails, the unpatched config (the receipt's changes undone) is built too:
    if it fails as well, this transformers cannot build the model at all.
    """
    try:
        return skeleton_with_rotaries(config, progress=progress)
    except Exception as exc:  # anything transformers raises while building
        failure = exc
    reason = f"{type(failure).__name__}: {' '.join(str(failure).split())[:300]}"
    model_type = config.get("model_type")
    version = transformers_version()
    original = unpatched(config, receipt) if receipt is not None else None
    if original is not None:
        try:
            skeleton_with_rotaries(original)
        except Exception:
            pass
        else:
            raise RuntimeError(f"transformers {version} builds the unpatched {model_type!r} config but not the "
                               f"patched one ({reason}); this is a ropekit bug") from failure
    written_by = config.get("transformers_version")
    which = (f"; its config.json was written by transformers {written_by}: install that version "
             f"(pip install 'transformers=={written_by}')" if isinstance(written_by, str) and written_by != version
             else "")
    raise TransformersCannotBuildError(
        f"this transformers ({version}) cannot build model_type {model_type!r}"
        f"{', not even its unpatched config' if original is not None else ''} ({reason}){which}") from None


def unpatched(config: dict[str, Any], receipt: Any) -> dict[str, Any] | None:
    """The config before the receipt's changes (a value recorded as null or absent is removed)."""
    import copy

    try:
        undo = [Change((), tuple(c["path"]), c["after"], c["before"], removed=c["before"] is None)
                for c in reversed(receipt["changes"])]
        original = copy.deepcopy(config)
        ConfigView(original).apply(undo)
    except (KeyError, TypeError, AttributeError):
        return None
    for node in (original, original.get("text_config")):  # a rope dict emptied by the undo was null
        if isinstance(node, dict) and node.get(LEGACY) == {}:
            node[LEGACY] = None
    return original


