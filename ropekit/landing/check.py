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
from typing import Any

from ropekit.errors import InvalidConfigError, LandingError
from ropekit.landing.rotary import rotary_modules, skeleton_with_rotaries
from ropekit.receipt import same_value
from ropekit.registry.manager import Registry, get_registry
from ropekit.scaling.config_view import ConfigView, RopeSite
from ropekit.scaling.methods import closed_form
from ropekit.scaling.transformers_support import transformers_version

TOLERANCE = 1e-6


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
class LandingReport:
    """The result of a landing check; ``to_json()`` is what receipts record."""

    checks: list[ModuleCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def landed(self) -> bool:
        return bool(self.checks) and not self.problems and all(c.ok for c in self.checks)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.checks), default=float("inf"))

    def first_problem(self) -> str:
        if self.problems:
            return self.problems[0]
        bad = next((c for c in self.checks if not c.ok), None)
        return bad.problem() if bad else "no rotary module found in the language tower"

    def raise_if_not_landed(self) -> "LandingReport":
        if not self.landed:
            raise LandingError(f"scaling did not land: {self.first_problem()}; build the model from the "
                               "patched config (ropekit.load_model) or patch the live model with "
                               "ropekit.apply_rope_scaling(model, ...)")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"landed": self.landed, "transformers": transformers_version(),
                "modules_checked": len(self.checks),
                "max_rel_error": self.max_rel_error if self.checks else None, "tolerance": TOLERANCE,
                "checks": [c.to_json() for c in self.checks], "problems": list(self.problems)}


# --- the check --------------------------------------------------------------------------

def verify_landing(target: Any, *, registry: Registry | None = None,
                   receipt: Any = None) -> LandingReport:
    """Check that the rotary modules transformers builds carry the configured scaling.

    :param target: a live model, or a folder / config.json path (built without weights).
    :param receipt: a Receipt (or the folder's rope_receipt.json) whose recorded values the
        model's config must carry.
    """
    if isinstance(target, (str, Path)):
        return _verify_folder(Path(target), registry=registry)
    return check_model(target, registry=registry, receipt=receipt)


def check_model(model: Any, *, registry: Registry | None = None, receipt: Any = None) -> LandingReport:
    registry = registry or get_registry()
    config = model.config
    view = ConfigView(config)
    family = registry.family_for(view)
    sites = family.rope_sites(view)
    primary = sites[-1]
    text_config = view.node(primary.path)
    report = LandingReport()
    if receipt is not None:
        report.problems += _receipt_problems(receipt, family, view, primary)
    for name, _parent, _attr, module in rotary_modules(model):
        own = getattr(module, "config", None)
        if own is not None and own is not text_config:
            module_view, module_family = ConfigView(own), family
            module_sites = [RopeSite((), primary.layout)]
        else:
            module_view, module_family, module_sites = view, family, None
        report.checks += _check_module(name, module, module_view, module_family, primary, module_sites)
    return report


def _receipt_problems(receipt: Any, family: Any, view: ConfigView, primary: RopeSite) -> list[str]:
    """Where the config the model holds departs from what the receipt recorded.

    Receipt paths follow the file's layout (rope_scaling or rope_parameters), which may
    differ from the loaded object's, so values are compared on the normalized rope dict.
    """
    rope = family.rope(view, primary)
    problems = []
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
            found, wanted = view.get(primary.path, key), change["after"]
        else:
            continue
        if not same_value(found, wanted, rel_tol=1e-9):
            problems.append(f"the config the model holds has {key} = {found!r}, the receipt says {wanted!r}")
    return problems


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


def _verify_folder(path: Path, *, registry: Registry | None) -> LandingReport:
    from ropekit.constants import RECEIPT_FILENAME
    from ropekit.hub.resolve import resolve
    from ropekit.receipt import Receipt

    resolved = resolve(path)
    folder = resolved.path.parent if resolved.path else path
    receipt_file = folder / RECEIPT_FILENAME
    receipt = Receipt.load(receipt_file) if receipt_file.is_file() else None
    model = skeleton_with_rotaries(resolved.config)
    return check_model(model, registry=registry, receipt=receipt)


