"""``ropekit profile``: perplexity of each scaling method by length, before and after a short fine-tune."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from ropekit.errors import InvalidRequestError

METHODS_HELP = "Comma-separated methods: none (no scaling), linear, ntk, dynamic, yarn."


def _split(text: str, kind: type, option: str) -> tuple[Any, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(kind(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of {kind.__name__} values "
                                 "(e.g. 2,4,8)", param_hint=option) from None


@contextmanager
def _progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A rich progress bar on stderr (transient); yields the ``progress(description, total)`` hook."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        def hook(description: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(description, total=total)
            return lambda done: bar.advance(task, done)
        yield hook


def _environment(device: Any) -> dict[str, Any]:
    import platform

    import torch

    from ropekit.scaling.engine import versions

    return {**versions(), "torch": torch.__version__, "device": str(device),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def _fmt(ppl: float) -> str:
    return f"{ppl:.2f}" if ppl < 1000 else f"{ppl:.3g}"


def _tables(result: dict[str, Any]) -> list[Any]:
    """A heading, the length table and the bucket table for each phase (zero-shot, fine-tuned)."""
    from rich import box
    from rich.table import Table

    from ropekit.eval.profile import find_cell, ordered_buckets

    out: list[Any] = []
    phases = [("Zero-shot", result["zero_shot"])]
    if result.get("finetuned"):
        ft = result["finetune"]
        steps = f"{ft['steps']} fine-tune step{'s' if ft['steps'] != 1 else ''}"
        phases.append((f"After {steps} ({ft['method']} x{ft['factor']:g} at {ft['length']} "
                       f"tokens, {ft['seconds']:.0f}s)", result["finetuned"]))
    for phase, profile in phases:
        window, factors = profile["window"], profile["factors"]
        longest = max(factors)
        out.append(f"\n{phase}: perplexity by evaluation length (trained window {window}; "
                   "ratio to the 1x value in brackets)")
        grid = Table(box=box.SIMPLE_HEAD)
        grid.add_column("method")
        for f in [1.0, *factors]:
            grid.add_column(f"{f:g}x ({round(window * f)})", justify="right")
        base = find_cell(profile, "none", 1.0)["ppl"]
        for method in profile["methods"]:
            row = [method]
            for f in [1.0, *factors]:
                ppl = find_cell(profile, method, f)["ppl"]
                row.append(_fmt(ppl) if f == 1.0 else f"{_fmt(ppl)} ({ppl / base:.2f})")
            grid.add_row(*row)
        out.append(grid)
        out.append(f"{phase}: perplexity per target position at {longest:g}x ({round(window * longest)} tokens)")
        buckets = Table(box=box.SIMPLE_HEAD)
        buckets.add_column("method")
        for name, _ in ordered_buckets(find_cell(profile, profile["methods"][0], longest)):
            buckets.add_column(name, justify="right")
        for method in profile["methods"]:
            buckets.add_row(method, *(_fmt(p) for _, p in ordered_buckets(find_cell(profile, method, longest))))
        out.append(buckets)
    return out


@click.command("profile")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--methods", default="none,linear,ntk,dynamic,yarn", show_default=True, help=METHODS_HELP)
@click.option("--factors", default="2,4,8", show_default=True,
              help="Evaluation lengths as multiples of the trained window (1x is always measured).")
@click.option("--tokens-per-cell", type=int, default=98304, show_default=True, metavar="N",
              help="Tokens per (method, length) cell.")
@click.option("--finetune-steps", type=int, default=0, show_default=True, metavar="N",
              help="Fine-tune N steps at --finetune-factor x the window, then profile again (0: no fine-tune).")
@click.option("--finetune-factor", type=float, default=4.0, show_default=True, metavar="F")
@click.option("--finetune-method", default="yarn", show_default=True, help="Method the fine-tune is patched with.")
@click.option("--finetune-lr", type=float, default=None,
              help="Peak learning rate [default: 5e-4 for the reference model, 2e-5 otherwise].")
@click.option("--finetune-batch-tokens", type=int, default=8192, show_default=True, metavar="N",
              help="Tokens per fine-tune step (sequences per step = N // length, at least 1).")
@click.option("--beta-fast", type=float, default=32.0, show_default=True, help="YaRN beta_fast.")
@click.option("--beta-slow", type=float, default=1.0, show_default=True, help="YaRN beta_slow.")
@click.option("--attn-factor", type=float, default=1.0, show_default=True,
              help="Multiplier on YaRN's temperature 0.1 ln s + 1.")
@click.option("--seed", type=int, default=0, show_default=True, help="Fine-tune data and order seed.")
@click.option("--device", default=None, help="torch device [default: cuda when available, else cpu].")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="Write a plot (png, svg or pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def profile_command(model: Path | None, methods: str, factors: str, tokens_per_cell: int,
                    finetune_steps: int, finetune_factor: float, finetune_method: str,
                    finetune_lr: float | None, finetune_batch_tokens: int, beta_fast: float,
                    beta_slow: float, attn_factor: float, seed: int, device: str | None,
                    threads: int | None, plot_path: Path | None, as_json: bool) -> None:
    """Perplexity of each RoPE scaling method at 1x and each factor x the trained window.

    MODEL is a local Hugging Face causal LM folder (tokenizer included); without it,
    ropekit's reference model (a 1.8M-parameter byte-level Llama trained at 256 on
    Shakespeare) is profiled on three held-out plays. Each method is applied through
    ropekit to a fresh config and the same weights are reloaded into it.

    \b
    Example:
      ropekit profile --factors 2,4,8 --finetune-steps 200 --finetune-factor 4 --plot profile.png
    """
    from ropekit.cli import emit_json
    from ropekit.eval.finetune import PAPER_LR, REFERENCE_LR, FinetuneRequest, finetune
    from ropekit.eval.models import YarnBetas, load_model
    from ropekit.eval.profile import ProfileRequest, run_profile
    from ropekit.eval.reference import REFERENCE_DIR

    if plot_path is not None and not plot_path.resolve().parent.is_dir():
        raise click.BadParameter(f"folder {plot_path.parent} does not exist; create it or pick another path",
                                 param_hint="--plot")
    if finetune_steps < 0:
        raise InvalidRequestError(f"--finetune-steps {finetune_steps} must be 0 (no fine-tune) or more")
    betas = YarnBetas(beta_fast, beta_slow, attn_factor)
    request = ProfileRequest(methods=_split(methods, str, "--methods"),
                             factors=_split(factors, float, "--factors"),
                             tokens_per_cell=tokens_per_cell, betas=betas)
    is_reference = model is None or model.resolve() == REFERENCE_DIR
    tune = FinetuneRequest(steps=finetune_steps, factor=finetune_factor, method=finetune_method.strip().lower(),
                           lr=finetune_lr if finetune_lr is not None else (REFERENCE_LR if is_reference else PAPER_LR),
                           batch_tokens=finetune_batch_tokens, seed=seed, betas=betas) if finetune_steps else None
    if threads:
        import torch

        torch.set_num_threads(threads)

    loaded = load_model(model, device=device)
    result: dict[str, Any] = {"finetune": None, "finetuned": None}
    with _progress() as progress:
        result["zero_shot"] = run_profile(loaded, request, progress)
        if tune is not None:
            tuned, result["finetune"] = finetune(loaded, tune, progress)
            result["finetuned"] = run_profile(tuned, request, progress)
    result["reference"] = loaded.metadata.get("heldout") if is_reference else None
    result["environment"] = _environment(loaded.device)
    if plot_path is not None:
        from ropekit.eval.plot import plot_profile

        plot_profile(result, plot_path)
    if as_json:
        emit_json(result)
        return
    from rich.console import Console

    console = Console(file=sys.stdout, markup=False, highlight=False, emoji=False,
                      width=None if sys.stdout.isatty() else 160)
    console.print(f"model: {loaded.name}; {request.tokens_per_cell} tokens per cell on "
                  "Hamlet, Macbeth and The Tempest")
    for block in _tables(result):
        console.print(block)
    if plot_path is not None:
        console.print(f"plot written to {plot_path}")


commands = [profile_command]
