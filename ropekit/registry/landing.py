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
from typing import Any, Iterator

from . import constants
from .config_view import ConfigView, RopeSite
from .errors import InvalidConfigError, LandingError, TransformersVersionError
from .manager import Registry, get_registry
from .methods import closed_form
from .receipt import same_value

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


def transformers_version() -> str | None:
    return constants.dist_version("transformers")


def _version_tuple(version: str) -> tuple[int, int, int]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def check_transformers_support(rope: dict[str, Any], max_position_embeddings: int,
                               version: str | None = None) -> None:
    """Refuse a rope dict the given (default: installed) transformers would mishandle.

    4.46-4.50 ignore YaRN's original_max_position_embeddings and ramp from
    max_position_embeddings; 4.51-4.55 replace YaRN's factor with
    max_position_embeddings / original, which is exact only when the two agree.
    """
    version = version or transformers_version()
    if not version or rope.get("rope_type") != "yarn":
        return
    v = _version_tuple(version)
    original = rope.get("original_max_position_embeddings")
    if (4, 46, 0) <= v < (4, 51, 0) and original and original != max_position_embeddings:
        raise TransformersVersionError(
            f"transformers {version} ignores yarn's original_max_position_embeddings and would ramp from "
            f"{max_position_embeddings}; upgrade with pip install -U 'transformers>=4.57'"
        )
    if (4, 51, 0) <= v < (4, 56, 0) and original:
        implied = max_position_embeddings / original
        if not math.isclose(implied, float(rope["factor"]), rel_tol=1e-9):
            raise TransformersVersionError(
                f"transformers {version} replaces yarn's factor {rope['factor']:g} with "
                f"max_position_embeddings/original = {implied:g}; upgrade with pip install -U 'transformers>=4.57'"
            )


# --- finding rotary modules -------------------------------------------------------------

def language_tower(model: Any) -> Any:
    """The decoder that reads the text config (a VLM's language model), else the model."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError):
            decoder = None
        if decoder is not None:
            return decoder
    return model


def rotary_modules(model: Any) -> Iterator[tuple[str, Any, str, Any]]:
    """``(qualified name, parent, attribute, module)`` for each rotary module of the language tower."""
    tower = language_tower(model)
    prefix = next((n for n, m in model.named_modules() if m is tower), "")
    for name, module in tower.named_modules():
        if not type(module).__name__.endswith("RotaryEmbedding"):
            continue
        if not any(b.endswith("inv_freq") for b, _ in module.named_buffers(recurse=False)):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = tower.get_submodule(parent_name) if parent_name else tower
        yield ".".join(p for p in (prefix, name) if p), parent, attr, module


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
    from .hub import resolve
    from .receipt import Receipt
    from .constants import RECEIPT_FILENAME

    resolved = resolve(path)
    folder = resolved.path.parent if resolved.path else path
    receipt_file = folder / RECEIPT_FILENAME
    receipt = Receipt.load(receipt_file) if receipt_file.is_file() else None
    model = skeleton_with_rotaries(resolved.config)
    return check_model(model, registry=registry, receipt=receipt)


def skeleton_with_rotaries(config_dict: dict[str, Any]) -> Any:
    """A model skeleton on the meta device whose rotary modules are real (built on CPU).

    No weights are allocated: the skeleton keeps one decoder layer per layer type
    (rotary modules do not depend on depth or expert count) and lives on the meta
    device; its rotary modules are then rebuilt, on the CPU, from the full config,
    exactly as transformers builds them. ``model.config`` is the full config.
    """
    import torch
    from transformers import AutoConfig

    data = {k: v for k, v in config_dict.items() if k not in {"auto_map"}}
    model_type = data.get("model_type")
    try:
        config = AutoConfig.for_model(**data)
        shallow = AutoConfig.for_model(**_one_layer_per_type(data))
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidConfigError(f"the installed transformers cannot build model_type {model_type!r} ({exc}); "
                                 "upgrade transformers or check the config") from None
    with torch.device("meta"):
        model = _model_class_for(config)._from_config(shallow)
    model.config = config
    from .live import rebuild_rotaries

    full_text = config.get_text_config() if hasattr(config, "get_text_config") else config
    shallow_text = shallow.get_text_config() if hasattr(shallow, "get_text_config") else shallow
    rebuild_rotaries(model, device=torch.device("cpu"), swap=(shallow_text, full_text))
    return model


def _one_layer_per_type(data: dict[str, Any]) -> dict[str, Any]:
    """The config with as few decoder layers as keep every layer type (for a fast skeleton)."""
    import copy

    out = copy.deepcopy(data)
    text = out["text_config"] if isinstance(out.get("text_config"), dict) else out
    layers = text.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers <= 1:
        return out
    types = text.get("layer_types")
    if isinstance(types, list) and types:
        distinct = list(dict.fromkeys(types))
        text["layer_types"], text["num_hidden_layers"] = distinct, len(distinct)
    elif "sliding_window_pattern" in text or (
            "sliding_window" in text and str(text.get("model_type") or "").startswith("gemma")):
        return out  # layer types derived from a pattern: keep the depth
    else:
        text["num_hidden_layers"] = 1
    return out


def _model_class_for(config: Any) -> Any:
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for auto in ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModel"):
        try:
            getattr(transformers, auto)._model_mapping[type(config)]
        except KeyError:
            continue
        return getattr(transformers, auto)._model_mapping[type(config)]
    raise InvalidConfigError(f"no transformers model class for {type(config).__name__}; "
                             "upgrade transformers or check the config's architectures")
