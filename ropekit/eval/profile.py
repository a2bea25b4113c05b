"""The perplexity profile: each scaling method at each evaluation length, per position bucket.

A cell ``(method, factor)`` applies ``method`` at ``factor`` through ropekit to a fresh
config, rebuilds the model with the same weights and measures perplexity on
held-out text cut into chunks of ``factor x`` the trained window. The first cell is
the unscaled model at 1x (every method is the identity at s = 1); ``none`` at a
factor is the unscaled model run past its window.

With a :class:`~ropekit.eval.results.ResultsLog`, each cell is written the moment it
finishes and cells already in the file are read back instead of measured again.
"""

from __future__ import annotations

import math
import resource
import sys
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
from ropekit.eval.perplexity import position_losses, steps_per_batch, summarize
from ropekit.eval.results import ResultsLog

DEFAULT_METHODS: tuple[str, ...] = (NO_SCALING, "linear", "ntk", "dynamic", "yarn")
DEFAULT_FACTORS: tuple[float, ...] = (2.0, 4.0, 8.0)
DEFAULT_TOKENS_PER_CELL = 98304
#: tokens per forward pass when evaluating (chunks per batch = this // length, at least 1)
BATCH_TOKENS = 16384
#: bytes of activations one forward may hold; long chunks of wide models go one at a time
ACTIVATION_BUDGET_BYTES = 512 * 2**20
#: what identifies a cell in a results file
CELL_KEY = ("record", "phase", "method", "factor", "depth")

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
    #: per-position buckets every this many tokens (None: 0-L, L-2L, 2L-4L, ... of the window L)
    bucket: int | None = None

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
        if self.bucket is not None and self.bucket < 1:
            raise InvalidRequestError(f"bucket width {self.bucket} must be a positive number of tokens "
                                      "(e.g. 2048), or left out for buckets that double from the window")

    def settings(self, model: LoadedModel) -> dict[str, Any]:
        """What makes two runs' cells comparable (a results file holds one such run)."""
        return {"model": model.name, "window": model.window, "tokens_per_cell": self.tokens_per_cell,
                "bucket": self.bucket, "yarn": vars(self.betas).copy(), "dtype": str(model.dtype).split(".")[-1],
                "device": model.device.type}

    def cells(self) -> list[tuple[str, float]]:
        """``(none, 1)`` first, then every method at every factor, by factor."""
        return [(NO_SCALING, 1.0)] + [(m, f) for f in sorted(set(self.factors)) for m in self.methods]


def eval_length(window: int, factor: float) -> int:
    return int(round(window * factor))


def batch_size(config: Any, length: int, dtype_bytes: int = 4) -> int:
    """Chunks per forward: ``BATCH_TOKENS`` tokens, fewer when the activations would pass the budget.

    A decoder layer's transient activations are about ``8 x hidden + 3 x intermediate``
    values per token; past ``ACTIVATION_BUDGET_BYTES`` a batch holds fewer chunks (at least one).
    """
    hidden = getattr(config, "hidden_size", 0) or 0
    intermediate = getattr(config, "intermediate_size", 0) or 4 * hidden
    per_token = dtype_bytes * (8 * hidden + 3 * intermediate)
    by_memory = ACTIVATION_BUDGET_BYTES // max(1, length * per_token)
    return max(1, min(BATCH_TOKENS // length, by_memory))


def peak_memory_mib(device: Any = None) -> float:
    """Peak resident memory of this process so far (and of the CUDA device, where used), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
    if getattr(device, "type", None) == "cuda":
        import torch

        return round(max(rss, torch.cuda.max_memory_allocated(device) / 2**20), 1)
    return round(rss, 1)


def measure_cell(model: LoadedModel, method: str, factor: float, docs: list[Any], tokens: int,
                 betas: YarnBetas = YarnBetas(), progress: ProgressHook = no_progress,
                 bucket: int | None = None) -> dict[str, Any]:
    """One cell of the profile: perplexity overall and per position bucket."""
    started, cpu_started = time.perf_counter(), time.process_time()
    length = eval_length(model.window, factor)
    chunks = corpus.eval_chunks(docs, length, tokens)
    config = scaled_config(model, method, factor, betas)
    built = build(model, config)
    batch = batch_size(config, length, 2 if model.dtype != _float32() else 4)
    label = "none" if method == NO_SCALING else f"{method} x{factor:g}"
    total = math.ceil(len(chunks) / batch) * steps_per_batch(built, length, batch)
    advance = progress(f"{label} at {length}", total)
    losses = position_losses(built, chunks, batch_size=batch, device=model.device, on_step=advance)
    del built
    return {"method": method, "factor": float(factor), "length": length, "chunks": len(chunks),
            "tokens": len(chunks) * (length - 1), "batch": batch, "rope": rope_summary(config),
            "seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu_started, 1), "peak_rss_mib": peak_memory_mib(model.device),
            **summarize(losses, model.window, bucket)}


def _float32() -> Any:
    import torch

    return torch.float32


def run_profile(model: LoadedModel, request: ProfileRequest, progress: ProgressHook = no_progress,
                log: ResultsLog | None = None, phase: str = "zero_shot") -> dict[str, Any]:
    """Measure every cell of ``request`` on the held-out plays.

    With ``log``, each finished cell is written at once, and cells the log already holds
    for this ``phase`` are taken from it instead of being measured again.
    """
    docs = corpus.documents("heldout", model.encode)
    cells = []
    for method, factor in request.cells():
        done = log.get(record="cell", phase=phase, method=method, factor=float(factor)) if log else None
        if done is None:
            done = measure_cell(model, method, factor, docs, request.tokens_per_cell, request.betas, progress,
                                request.bucket)
            if log is not None:
                done = log.add({"record": "cell", "phase": phase, **done})
        cells.append({k: v for k, v in done.items() if k not in ("record", "phase")})
    return {"model": model.name, "window": model.window, "tokens_per_cell": request.tokens_per_cell,
            "methods": list(request.methods), "factors": sorted(set(request.factors)),
            "yarn": vars(request.betas).copy(), "bucket": request.bucket, "cells": cells}


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
