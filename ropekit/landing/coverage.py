"""Check every decoder and vision-language model_type of the installed transformers.

For each model_type: its class-default config as config.json data, a yarn x4 plan
(``compound``, beyond the stable band if need be, where the default ships scaling;
the family's own method where it supports no yarn), the patch, and the landing check on a weightless skeleton built by
the installed transformers from the patched data. The outcome is one of:

- ``landed``: the rotary modules transformers builds carry the closed form;
- ``refused``: refused by policy with the reason (exit code 3): the architecture cannot carry
  scaling, or the file meets a policy (a compound that cannot be composed exactly, a layout the
  other supported transformers cannot read);
- ``unbuildable``: transformers cannot build its own class default (so nothing can be
  checked there; the plan is still made, and must not crash);
- ``invalid``: the class default is refused as bad input by name (exit code 4: a rotary
  dimension transformers would truncate, a value JSON cannot carry, rope settings ropekit
  cannot find), never an internal error;
- ``wrong``: anything else (a plan that does not land, an internal error, a model
  without RoPE that was patched): a bug.

``scripts/coverage_table.py`` writes the outcomes into docs/families.md;
tests/test_coverage.py holds every model_type to them.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

from ropekit.errors import (
    CompoundingError,
    InvalidConfigError,
    PolicyError,
    RopekitError,
    UnsupportedMethodError,
)

OUTCOMES = ("landed", "refused", "invalid", "unbuildable", "wrong")


@dataclass(frozen=True)
class Coverage:
    """What ropekit does with one model_type's class-default config."""

    model_type: str
    outcome: str  # one of OUTCOMES
    family: str | None
    detail: str
    uses_rope: bool | None  # whether the unpatched skeleton has rotary modules (None: unbuildable)

    def row(self) -> tuple[str, str, str, str]:
        return self.model_type, self.outcome, self.family or "-", self.detail


def decoder_model_types() -> list[str]:
    """Every model_type with a causal-LM, image-text-to-text or multimodal-LM class."""
    import transformers.models.auto.modeling_auto as auto

    names = set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    names |= set(getattr(auto, "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", {}))
    return sorted(names)


def check_model_type(model_type: str, factor: float = 4.0) -> Coverage:
    """The outcome for one model_type (never raises)."""
    try:
        return _check(model_type, factor)
    except Exception as exc:  # a bug: reported, never raised, so one type cannot hide the others
        return Coverage(model_type, "wrong", None, f"internal error: {type(exc).__name__}: {_short(exc)}", None)


def _check(model_type: str, factor: float) -> Coverage:
    from transformers import AutoConfig

    from ropekit.landing.check import check_model
    from ropekit.landing.rotary import rotary_modules, skeleton_with_rotaries
    from ropekit.scaling.engine import apply_config, plan_config
    from ropekit.scaling.long_context import LongContextConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = AutoConfig.for_model(model_type).to_dict()
            data["model_type"] = model_type  # (some 4.57 classes serialize another name)
        except Exception as exc:
            return Coverage(model_type, "unbuildable", None, f"class default: {_short(exc)}", None)
        try:
            uses_rope: bool | None = any(True for _ in rotary_modules(skeleton_with_rotaries(copy.deepcopy(data))))
        except Exception as exc:
            uses_rope, build_error = None, _short(exc)

        patched = copy.deepcopy(data)
        request = LongContextConfig(method="yarn", factor=factor)
        try:
            try:
                plan_config(data, request)
            except CompoundingError:
                request = request.model_copy(update={"on_existing": "compound", "allow_unstable": True})
            except UnsupportedMethodError:
                request = request.model_copy(update={"method": "auto"})
            plan, _ = apply_config(patched, request)
        except PolicyError as exc:  # the architecture, or a policy the file meets (compounding, versions)
            return Coverage(model_type, "refused", getattr(exc, "family", None), str(exc), uses_rope)
        except InvalidConfigError as exc:
            return Coverage(model_type, "invalid", None, str(exc), uses_rope)
        except RopekitError as exc:
            return Coverage(model_type, "wrong", None, f"{type(exc).__name__}: {exc}", uses_rope)

        family = plan.family.name
        if uses_rope is None:
            return Coverage(model_type, "unbuildable", family,
                            f"planned {plan.method.name} x{plan.factor:g}; transformers cannot build the class "
                            f"default to check it ({build_error})", None)
        if not uses_rope:
            return Coverage(model_type, "wrong", family, "patched a model without RoPE", False)
        try:
            report = check_model(skeleton_with_rotaries(patched))
        except Exception as exc:
            return Coverage(model_type, "wrong", family, f"the patched config does not build: {_short(exc)}", True)
        if not report.landed:
            return Coverage(model_type, "wrong", family, f"did not land: {report.first_problem()}", True)
        return Coverage(model_type, "landed", family,
                        f"{plan.method.name} x{plan.factor:g}; {len(report.checks)} rotary buffers match", True)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def summary(results: list[Coverage], version: str) -> str:
    """One line of counts per outcome."""
    counts = {o: sum(1 for r in results if r.outcome == o) for o in OUTCOMES}
    return (f"transformers {version}: {len(results)} decoder and vision-language model types; "
            + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES))


def markdown(results: list[Coverage], version: str) -> str:
    """The coverage table with its counts, as docs/families.md carries it."""
    lines = [summary(results, version), "", "| model_type | outcome | family | detail |", "|---|---|---|---|"]
    for result in results:
        model_type, outcome, family, detail = result.row()
        if outcome == "refused":
            detail = detail.split("; ")[0]  # the reason; the full message names what to do instead
        lines.append("| " + " | ".join(_cell(c) for c in (model_type, outcome, family, detail)) + " |")
    return "\n".join(lines)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")
