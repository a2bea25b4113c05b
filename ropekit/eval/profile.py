"""The perplexity profile: each scaling method at each evaluation length, per position bucket.

A cell ``(method, factor)`` applies ``method`` at ``factor`` through ropekit to a fresh
config, rebuilds the model with the same weights and measures perplexity on
held-out text cut into chunks of ``factor x`` the trained window. The first cell is
the unscaled model at 1x (every method is the identity at s = 1); ``none`` at a
factor is the unscaled model run past its window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ropekit.errors import InvalidRequestError
from ropekit.eval import corpus
from ropekit.eval.models import (
    NO_SCALING,
    LoadedModel,
    YarnBetas,
    build,
    check_methods,
    scaled_config,
)
from ropekit.eval.perplexity import position_losses, summarize

DEFAULT_METHODS: tuple[str, ...] = (NO_SCALING, "linear", "ntk", "dynamic", "yarn")
DEFAULT_FACTORS: tuple[float, ...] = (2.0, 4.0, 8.0)
DEFAULT_TOKENS_PER_CELL = 98304
#: tokens per forward pass when evaluating (chunks per batch = this // length, at least 1)
BATCH_TOKENS = 16384

#: ``progress(description, total)`` returns a function to call with the amount done
ProgressHook = Callable[[str, int], Callable[[int], None]]


def no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda done: None


@dataclass(frozen=True)
class ProfileRequest:
    """Which cells to measure, and how many tokens each."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    factors: tuple[float, ...] = DEFAULT_FACTORS
    tokens_per_cell: int = DEFAULT_TOKENS_PER_CELL
    betas: YarnBetas = field(default_factory=YarnBetas)

    def __post_init__(self) -> None:
        if not self.methods:
            raise InvalidRequestError("no methods given; pass e.g. --methods none,yarn")
        check_methods(list(self.methods))
        bad = [f for f in self.factors if not math.isfinite(f) or f <= 1]
        if bad or not self.factors:
            raise InvalidRequestError(f"factors {list(self.factors)} must be numbers above 1 "
                                      "(each evaluation length is factor x the trained window); pass e.g. 2,4,8")
        if self.tokens_per_cell < 1:
            raise InvalidRequestError(f"tokens per cell {self.tokens_per_cell} must be positive; "
                                      f"the default is {DEFAULT_TOKENS_PER_CELL}")

    def cells(self) -> list[tuple[str, float]]:
        """``(none, 1)`` first, then every method at every factor, by factor."""
        return [(NO_SCALING, 1.0)] + [(m, f) for f in sorted(set(self.factors)) for m in self.methods]


def eval_length(window: int, factor: float) -> int:
    return int(round(window * factor))


def measure_cell(model: LoadedModel, method: str, factor: float, docs: list[Any], tokens: int,
                 betas: YarnBetas = YarnBetas(), progress: ProgressHook = no_progress) -> dict[str, Any]:
    """One cell of the profile: perplexity overall and per position bucket."""
    length = eval_length(model.window, factor)
    chunks = corpus.eval_chunks(docs, length, tokens)
    config = scaled_config(model, method, factor, betas)
    built = build(model, config)
    label = "none" if method == NO_SCALING else f"{method} x{factor:g}"
    advance = progress(f"{label} at {length}", len(chunks))
    started = time.perf_counter()
    losses = position_losses(built, chunks, batch_size=max(1, BATCH_TOKENS // length),
                             device=model.device, on_batch=advance)
    return {"method": method, "factor": float(factor), "length": length, "chunks": len(chunks),
            "tokens": len(chunks) * (length - 1), "rope": rope_summary(config),
            "seconds": round(time.perf_counter() - started, 2), **summarize(losses, model.window)}


def run_profile(model: LoadedModel, request: ProfileRequest, progress: ProgressHook = no_progress) -> dict[str, Any]:
    """Measure every cell of ``request`` on the held-out plays."""
    docs = corpus.documents("heldout", model.encode)
    cells = [measure_cell(model, m, f, docs, request.tokens_per_cell, request.betas, progress)
             for m, f in request.cells()]
    return {"model": model.name, "window": model.window, "tokens_per_cell": request.tokens_per_cell,
            "methods": list(request.methods), "factors": sorted(set(request.factors)),
            "yarn": vars(request.betas).copy(), "cells": cells}


def find_cell(profile: dict[str, Any], method: str, factor: float) -> dict[str, Any]:
    """The cell of ``method`` at ``factor`` (at 1x every method is the unscaled model)."""
    if factor == 1.0:
        method = NO_SCALING
    for cell in profile["cells"]:
        if cell["method"] == method and cell["factor"] == float(factor):
            return cell
    raise KeyError(f"no cell for {method} at x{factor:g}")


def ordered_buckets(cell: dict[str, Any]) -> list[tuple[str, float]]:
    """A cell's ``(bucket, ppl)`` pairs by position (JSON with sorted keys reorders them)."""
    return sorted(cell["buckets"].items(), key=lambda item: int(item[0].split("-")[0]))


def rope_summary(config: Any) -> dict[str, Any]:
    """The rope settings a built config carries (5.x ``rope_parameters`` or 4.x keys)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        rope = dict(params)
    else:
        rope = {"rope_theta": getattr(config, "rope_theta", None), **(getattr(config, "rope_scaling", None) or {})}
    rope.setdefault("rope_type", "default")
    rope["max_position_embeddings"] = config.max_position_embeddings
    return rope
