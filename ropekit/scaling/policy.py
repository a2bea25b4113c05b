"""The policy for a model that already carries scaling, stated in factors and in windows.

Three windows describe every result (docs/windows.md says the same in words):

- the **native window** ``L0``: the window the rotary frequencies are unscaled for, the one
  every factor is measured from. It is the ``original_max_position_embeddings`` a shipped
  (or inherited) scaling declares, or ``max_position_embeddings / factor`` for linear PI,
  else the trained window the family knows (Qwen: 32768), else ``max_position_embeddings``;
- the **shipped window** ``W``: the context the model has today (the shipped scaling's
  window, else the native window);
- the **new window**: ``total factor x L0``.

A compound applies the method at ``shipped factor x requested factor`` from ``L0``: that
product is what the receipt records. The shipped window need not be ``shipped factor x L0``
(Llama 3.1 ships llama3 x8 from 8192 with a 131072 window), so the new window is stated
beside it and a warning says when it does not grow as asked. A compound never makes a
rotary pair turn faster than the weights were trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ropekit.errors import CompoundingError, InvalidRequestError, Param
from ropekit.registry.family import Family, ShippedScaling
from ropekit.scaling import bounds
from ropekit.scaling.long_context import LongContextConfig
from ropekit.scaling.methods import ScalingMethod, closed_form, new_window

#: relative slack when comparing frequencies and windows
REL_TOL = 1e-9


@dataclass(frozen=True)
class Windows:
    """The native, shipped and new windows of a plan, in tokens."""

    native: int
    shipped: int
    new: int

    @property
    def growth(self) -> float:
        """How many times longer the new window is than the shipped one."""
        return self.new / self.shipped

    def describe(self) -> str:
        return f"window {self.shipped} -> {self.new} tokens ({_times(self.growth)} the window the model has today)"

    def to_json(self) -> dict[str, Any]:
        return {"native": self.native, "shipped": self.shipped, "new": self.new, "growth": self.growth}


def _times(ratio: float) -> str:
    return f"x{ratio:.3g}"


@dataclass(frozen=True)
class Factors:
    """The factor arithmetic of a request against what the model ships."""

    total: float  # applied from ``base``; the receipt's factor
    requested: float  # what the user asked on top of the shipped factor
    base: int  # the window the total is measured from (the native window)


def factors(request: LongContextConfig, existing: ShippedScaling | None, native: int) -> Factors:
    """Total and requested factors; a target must lie beyond the window the model has today."""
    base = existing.original_max_position_embeddings if existing else native
    shipped_factor = existing.factor if existing and request.on_existing == "compound" else 1.0
    if request.factor is not None:
        requested = float(request.factor)
        bounds.reached_window(requested * shipped_factor, base)
        return Factors(requested * shipped_factor, requested, base)
    target = int(request.target_context)  # type: ignore[arg-type]
    have = existing.window if existing else native
    if target <= have:
        raise InvalidRequestError(
            Param("target_context", target), f" is not beyond the model's window {have}; "
            "ask for a longer target or leave the model as it is")
    total = target / base
    return Factors(total, total / shipped_factor, base)


def windows(existing: ShippedScaling | None, native: int, total: float, base: int) -> Windows:
    return Windows(native, existing.window if existing else native, new_window(total, base))


def compound_params(method: str | None = None, unstable: bool = False) -> tuple[Any, ...]:
    """``[method=M] on_existing='compound' [allow_unstable=True]`` as parts of an error message
    (the command line spells them as flags)."""
    return (*((Param("method", method), " ") if method else ()), Param("on_existing", "compound"),
            *((" ", Param("allow_unstable", True)) if unstable else ()))


def target_params(target: int, unstable: bool = False) -> tuple[Any, ...]:
    """The parameters that reach ``target`` by compounding, as parts of an error message."""
    return (Param("target_context", target), " ", *compound_params(unstable=unstable))


def compounding_refusal(existing: ShippedScaling, request: LongContextConfig, method: ScalingMethod,
                        fac: Factors) -> CompoundingError:
    """The refusal for a model that ships scaling, in factors and windows, with commands that work.

    The error's ``suggestion`` is the request that reaches what was asked (the command line
    quotes it as a full ``ropekit plan`` command).
    """
    L0, have = existing.original_max_position_embeddings, existing.window
    head = f"model {existing.describe()} at {existing.site}"
    if request.target_context is not None:
        target = int(request.target_context)
        total = target / L0
        suggestion = request.model_copy(update={"on_existing": "compound"})
        unstable = total > method.stable_max_factor and not request.allow_unstable
        if unstable:
            suggestion = suggestion.model_copy(update={"allow_unstable": True})
        error = CompoundingError(
            f"{head}; a {target}-token window means {method.name} x{total:g} from {L0} "
            f"({_times(target / have)} the window {have} it has today); compound to reach it: ",
            *target_params(target, unstable))
        error.suggestion = suggestion
        return error
    asked = fac.requested
    compounded = existing.factor * asked
    reached = new_window(compounded, L0)
    goal = new_window(asked, have)
    parts: list[Any] = [f"{head}; x{asked:g} on top compounds to {method.name} x{compounded:g} from {L0} = "
                        f"{reached} tokens ({_times(reached / have)} the window {have} it has today); pass "]
    beyond = compounded > method.stable_max_factor and not request.allow_unstable
    parts += [*compound_params(unstable=beyond), " for that"]
    suggestion = request.model_copy(update={"on_existing": "compound", "allow_unstable": request.allow_unstable
                                            or beyond})
    if reached < goal * (1 - REL_TOL):
        unstable = goal / L0 > method.stable_max_factor and not request.allow_unstable
        parts += [f"; for x{asked:g} the window it has today ({goal} tokens) ask ",
                  *target_params(goal, unstable), " instead"]
    replaced = new_window(asked, L0)
    shrink = f", which shrinks the window from {have}" if replaced < have else ""
    parts += ["; ", Param("on_existing", "replace"), f" drops {existing.rope_type} and applies {method.name} "
              f"x{asked:g} from {L0} = {replaced} tokens{shrink}"]
    error = CompoundingError(*parts)
    error.suggestion = suggestion
    return error


def window_warnings(existing: ShippedScaling | None, request: LongContextConfig, policy: str,
                    method: ScalingMethod, fac: Factors, win: Windows) -> list[str]:
    """Warnings, in windows, for a compound that does not grow as asked and a replace that shrinks."""
    if existing is None:
        return []
    out = []
    if policy == "replace":
        change = "shrinks" if win.new < win.shipped else "changes"
        out.append(f"dropping shipped {existing.rope_type} x{existing.factor:g}; {method.name} x{fac.total:g} "
                   f"from {fac.base} replaces it: {change} the window {win.shipped} -> {win.new}")
    elif policy == "compound" and request.factor is not None:
        goal = new_window(fac.requested, win.shipped)
        if win.new < goal * (1 - REL_TOL):
            out.append(
                f"compounded window {win.new} is {_times(win.growth)} the window {win.shipped} the model has "
                f"today, not the x{fac.requested:g} asked ({existing.describe()}); for {goal} tokens use "
                f"target_context={goal} (--target-context {goal} --on-existing compound)")
    return out


# --- a compound keeps every trained frequency -------------------------------------------------

@dataclass(frozen=True)
class FasterPairs:
    """Rotary pairs a compound would turn faster than the weights were trained with."""

    first: int
    last: int
    count: int
    worst_ratio: float

    def describe(self) -> str:
        pairs = f"pair {self.first}" if self.count == 1 else f"{self.count} pairs ({self.first}-{self.last})"
        return f"{pairs} would rotate up to {self.worst_ratio:.3g}x faster than the weights were trained with"


def faster_pairs(trained: dict[str, Any], final: dict[str, Any], rotary_dim: int, trained_max: int,
                 final_max: int) -> FasterPairs | None:
    """Pairs whose new frequency exceeds the trained one (dynamic is judged inside its window).

    ``None`` when every pair turns at most as fast as trained. A trained rope type with no
    closed form (longrope) cannot be proved safe: it counts as every pair faster.
    """
    try:
        before, _ = closed_form(trained, rotary_dim, trained_max)
    except (ValueError, KeyError, TypeError):
        return FasterPairs(0, rotary_dim // 2 - 1, rotary_dim // 2, math.inf)
    after, _ = closed_form(final, rotary_dim, final_max)
    bad = [i for i, (a, b) in enumerate(zip(after, before)) if a > b * (1 + REL_TOL)]
    if not bad:
        return None
    return FasterPairs(bad[0], bad[-1], len(bad), max(after[i] / before[i] for i in bad))


def frequency_refusal(existing: ShippedScaling, method: ScalingMethod, fac: Factors, faster: FasterPairs,
                      alternative: tuple[Any, ...]) -> CompoundingError:
    """The refusal of a compound that would turn pairs faster than trained; ``alternative``: message parts."""
    return CompoundingError(
        f"model {existing.describe()}; compounding it with {method.name} x{fac.total:g} cannot be composed exactly: "
        f"{faster.describe()} (the shipped {existing.rope_type} slowed them more than {method.name} "
        f"x{fac.total:g} does); ", *alternative)


def temperature_refusal(existing: ShippedScaling, method: ScalingMethod, family: Family,
                        trained_multiplier: float) -> CompoundingError:
    return CompoundingError(
        f"model {existing.describe()} and its {family.name} attention was trained with a softmax temperature "
        f"x{trained_multiplier:.4g} (mscale_all_dim); {method.name} carries no attention temperature, so "
        f"compounding would drop it; compound with yarn instead (", *compound_params("yarn"),
        "), or replace the shipped scaling (", Param("on_existing", "replace"), ")")
