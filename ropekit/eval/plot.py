"""Plot a profile with matplotlib's Agg canvas (no display, no global backend switch)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ropekit.eval.profile import find_cell, ordered_buckets


def plot_profile(result: dict[str, Any], path: str | Path) -> Path:
    """Two panels: perplexity against evaluation length, and per position bucket at the longest length.

    Zero-shot curves are solid; curves after the fine-tune (when ``result`` has one) are dashed.
    The file is written whole or not at all; its format follows the suffix (png, svg, pdf).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    by_length, by_bucket = figure.subplots(1, 2)
    colors = {}
    phases = [("zero-shot", result["zero_shot"], "-")]
    if result.get("finetuned"):
        phases.append(("fine-tuned", result["finetuned"], "--"))
    for phase, profile, style in phases:
        window, factors = profile["window"], profile["factors"]
        longest = max(factors)
        for method in profile["methods"]:
            cells = [find_cell(profile, method, f) for f in [1.0, *factors]]
            line, = by_length.plot([c["length"] for c in cells], [c["ppl"] for c in cells], style, marker="o",
                                   color=colors.get(method), label=f"{method} ({phase})")
            colors.setdefault(method, line.get_color())
            buckets = ordered_buckets(find_cell(profile, method, longest))
            by_bucket.plot([b for b, _ in buckets], [p for _, p in buckets], style, marker="o", color=colors[method],
                           label=f"{method} ({phase})")
        by_length.axvline(window, color="grey", linewidth=0.8, linestyle=":")
    zero = result["zero_shot"]
    lengths = [zero["window"] * f for f in [1.0, *zero["factors"]]]
    by_length.set_xscale("log", base=2)
    by_length.set_xticks(lengths, [f"{round(n)}" for n in lengths])
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axes in (by_length, by_bucket):
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain)
        axes.grid(True, which="both", axis="y", alpha=0.3)
    by_length.set(xlabel="evaluation length (tokens)", ylabel="perplexity (log scale)",
                  title=f"Perplexity by length (trained window {zero['window']})")
    by_bucket.set(xlabel="target token positions", ylabel="perplexity (log scale)",
                  title=f"Per position at {max(zero['factors']):g}x the window")
    by_bucket.tick_params(axis="x", labelrotation=20)
    by_length.legend(fontsize=7, loc="upper left")
    figure.suptitle(zero["model"], fontsize=9)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=120)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
