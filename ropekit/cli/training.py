"""Training and serving commands: doctor, memory, check-pack, export.

Thin shells over :mod:`ropekit.training` and :mod:`ropekit.serving`: parse,
call, print (tables for people, ``--json`` for machines). Errors are ropekit
errors, mapped to exit codes by :func:`ropekit.cli.main`.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from ropekit.cli import emit_json, progress, render
from ropekit.cli.models import describe_source
from ropekit.errors import AttentionBackendError, RopekitError

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def _gib(value: float) -> str:
    return f"{value / 2**30:,.2f} GiB"


def _billions(value: int) -> str:
    return f"{value / 1e9:,.3f} B"


# --- doctor ---------------------------------------------------------------------------------

@click.command("doctor")
@click.option("--target-context", type=click.IntRange(min=1), metavar="N",
              help="The training length to check (tokens).")
@json_option
def doctor_command(target_context: int | None, as_json: bool) -> None:
    """Report the GPU, the attention backend training would use, and whether the target is allowed.

    FlashAttention 3 on Hopper (sm90), FlashAttention 2 on Ampere and newer; without
    either, targets above 16384 tokens are refused (exit 3).

    \b
    Example:
      ropekit doctor --target-context 131072
    """
    from ropekit.training.attention import choose_attention_backend

    with progress.status("doctor") as report:
        report("importing torch to read the GPU")
        choice = choose_attention_backend(target_context)
    if as_json:
        emit_json(choice.to_json())
    else:
        con = render.console()
        packages = choice.packages
        con.print(render.key_values([
            ("device", choice.device.describe()),
            ("flash-attn 2", packages.fa2_version if packages and packages.fa2_version else "not installed"),
            ("flash-attn 3", packages.fa3_module if packages and packages.fa3_module else "not installed"),
            ("backend", f"{choice.backend} (attn_implementation={choice.attn_implementation!r})"),
            ("target context", target_context if target_context else "(not given)"),
            ("verdict", ("allowed" if choice.allowed else "refused") + f": {choice.reason}"),
        ]))
        for note in choice.notes:
            con.print(f"note: {note}")
    if not choice.allowed:
        raise AttentionBackendError(choice.reason)


# --- memory ---------------------------------------------------------------------------------

@click.command("memory")
@click.argument("model")
@click.option("--context", type=click.IntRange(min=1), required=True, metavar="N", help="Context length in tokens.")
@click.option("--weights", type=click.Choice(["bf16", "fp8", "int8", "int4"]),
              help="Weight width (default: the config's quantization, else bf16).")
@click.option("--kv", type=click.Choice(["bf16", "fp8"]), default="bf16", show_default=True,
              help="KV cache width.")
@click.option("--gpu", "--gpu-type", "gpu", metavar="NAME",
              help="A GPU from the table (H100, H200, A100-80GB, L40S, RTX 4090, ...).")
@click.option("--gpu-memory-gib", type=float, metavar="X", help="GPU memory in GiB, instead of --gpu.")
@click.option("--mode", type=click.Choice(["inference", "train"]), default="inference", show_default=True,
              help="Serve the model, or fully fine-tune it (AdamW).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Sequences at once.")
@click.option("--gpus", type=click.IntRange(min=1), metavar="N",
              help="Train on N GPUs (with --mode train and --gpu): plan the sequence-parallel degree.")
@click.option("--launch-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="With --gpus: write accelerate (FSDP2 + context parallel) and DeepSpeed Ulysses launch files here.")
@json_option
def memory_command(model: str, context: int, weights: str | None, kv: str, gpu: str | None,
                   gpu_memory_gib: float | None, mode: str, batch: int, gpus: int | None, launch_dir: Path | None,
                   as_json: bool) -> None:
    """Plan GPU memory at a context length and find the longest context that fits.

    With --mode train --gpus N --gpu NAME, also the sequence-parallel degree a context
    that does not fit one GPU needs, for context parallelism (accelerate, FSDP2) and
    DeepSpeed Ulysses (ALST); --launch-dir writes the launch files.

    \b
    Example:
      ropekit memory Qwen/Qwen2.5-7B-Instruct --context 131072 --gpu H100
      ropekit memory meta-llama/Llama-3.1-8B-Instruct --context 16384 --mode train --gpu-memory-gib 80
      ropekit memory Qwen/Qwen2.5-7B --context 524288 --mode train --gpus 8 --gpu-type H100 --launch-dir launch
    """
    from ropekit.errors import InvalidRequestError
    from ropekit.training.memory import GPUS, USABLE_FRACTION, plan_model

    if gpus is not None and (mode != "train" or gpu is None):
        raise InvalidRequestError("--gpus plans training across GPUs: give it with --mode train and --gpu NAME")
    if launch_dir is not None and gpus is None:
        raise InvalidRequestError("--launch-dir writes multi-GPU launch files: give --gpus N (and --mode train "
                                  "--gpu NAME) too")
    resolved, plan = plan_model(model, context, mode=mode, weights=weights, kv=kv, batch=batch, gpu=gpu,
                                gpu_memory_gib=gpu_memory_gib)
    parallel, written = None, []
    if gpus is not None:
        from ropekit.training.parallel import plan_parallel, write_launch_files

        parallel = plan_parallel(plan.arch, plan.params, context, gpus=gpus, gpu=gpu, batch=batch)  # type: ignore[arg-type]
        if launch_dir is not None:
            written = write_launch_files(parallel, launch_dir)
    table_gpus = [] if plan.gpu_memory_gib is not None else list(GPUS)
    window = _rope_window(resolved)
    longest = max([plan.max_context()] if plan.gpu_memory_gib is not None
                  else [plan.max_context(g.memory_gib) for g in table_gpus])
    window_notes = _window_notes(model, plan.context, longest, window)
    if as_json:
        out = {"model": {"id": resolved.model_id, "source": resolved.source, "description": describe_source(resolved)},
               **plan.to_json(), "rope_window": window, "rope_window_notes": window_notes}
        if parallel is not None:
            out["parallel"] = {**parallel.to_json(), "launch_files": [str(p) for p in written]}
        if table_gpus:
            out["gpus"] = [{"name": g.name, "memory_gib": g.memory_gib, "fits": plan.fits_in(g.memory_gib),
                            "max_context": plan.max_context(g.memory_gib)}
                           for g in table_gpus]
        emit_json(out)
        return
    con = render.console()
    arch, params = plan.arch, plan.params
    con.print(f"source: {describe_source(resolved)}")
    kind = "MoE" if arch.moe else "dense"
    if arch.mla:
        kind += ", MLA"
    header = (f"{arch.model_type}: {plan.mode}, {plan.weights} weights"
              + (f", {plan.kv} KV cache" if plan.mode == "inference" else "")
              + f", batch {plan.batch}, context {plan.context:,}")
    con.print(header)
    full, sliding = plan.kv_per_token
    kv_line = f"{full:,.0f} B/token"
    if sliding:
        window = next(w for w in arch.layer_windows if w)
        kv_line += f" + {sliding:,.0f} B/token in {arch.sliding_layers} sliding layers (up to {window:,} tokens)"
    rows = [("parameters", f"{_billions(params.total)} ({kind}"
             + (f", {_billions(params.active)} active per token" if params.active != params.total else "") + ")"),
            ("KV cache / token", kv_line + (" (not used in training)" if plan.mode == "train" else ""))]
    rows += [(label, _gib(value)) for label, value in plan.breakdown.items()]
    rows.append(("total", _gib(plan.total_bytes)))
    if plan.gpu_memory_gib is not None:
        name = plan.gpu.name if plan.gpu else "GPU"
        longest = plan.max_context()
        verdict = "fits" if plan.fits else "does not fit"
        reach = (f"longest context {longest:,} tokens" if longest else
                 f"no context fits: the fixed part alone ({_gib(plan.fixed_bytes)}) exceeds it")
        rows.append((name, f"{plan.gpu_memory_gib:g} GiB, {_gib(plan.usable_bytes)} usable: {verdict}; {reach}"))
    con.print(render.key_values(rows))
    if table_gpus:
        rows = [(g.name, f"{g.memory_gib:g}", "yes" if plan.fits_in(g.memory_gib) else "no",
                 f"{plan.max_context(g.memory_gib):,}") for g in table_gpus]
        con.print(render.table(("GPU", "GiB", f"fits {plan.context:,}", "longest context"), rows,
                               title=f"per GPU ({USABLE_FRACTION:.0%} usable)"))
    for note in [*window_notes, *plan.notes]:
        con.print(f"note: {note}")
    for line in plan.to_json()["assumptions"]:
        con.print(f"assumes: {line}")
    if parallel is not None:
        _print_parallel(con, parallel, written)


def _print_parallel(con: Any, parallel: Any, written: list[Path]) -> None:
    from ropekit.training.parallel import (
        ACCELERATE_FILE,
        ULYSSES_ACCELERATE_FILE,
        launch_command,
    )

    single = sum(parallel.single.values())
    con.print(f"on {parallel.gpus} x {parallel.gpu.name} (weights, gradients and AdamW sharded over all): "
              f"{_gib(single)} per GPU without splitting the sequence: "
              + ("fits" if parallel.fits_without_split else "does not fit"))
    for choice, name in ((parallel.context_parallel, "context parallel (accelerate, FSDP2)"),
                         (parallel.ulysses, "DeepSpeed Ulysses (ALST)")):
        per_gpu = _gib(sum(choice.breakdown.values()))
        head = f"degree {choice.degree}, {per_gpu} per GPU" if choice.fits else "does not fit"
        con.print(f"{name}: {head}: {choice.why}")
    for note in parallel.notes:
        con.print(f"note: {note}")
    if written:
        con.print(f"wrote {', '.join(str(p) for p in written)}")
        folder = written[0].parent
        con.print(f"launch: {launch_command(folder / ACCELERATE_FILE)}")
        con.print(f"or:     {launch_command(folder / ULYSSES_ACCELERATE_FILE)}")
    else:
        con.print("write the launch files with --launch-dir DIR")


def _rope_window(resolved: Any) -> int | None:
    """The window the model's rope settings carry (shipped scaling included); None when unknown."""
    from ropekit.registry import get_registry
    from ropekit.scaling.config_view import ConfigView
    from ropekit.scaling.engine import locate

    try:
        located = locate(ConfigView(resolved.config), get_registry(), inherited=resolved.inherited)
    except RopekitError:
        return None
    return located.existing.window if located.existing else located.native_window


def _window_notes(model: str, context: int, longest: int, window: int | None) -> list[str]:
    """Memory is not the only limit: say when a context goes beyond what the rope settings carry."""
    if window is None:
        return []
    notes = []
    if context > window:
        notes.append(f"context {context:,} is beyond the {window:,} tokens the model's rope settings carry; "
                     f"extend them first: ropekit plan {model} --target-context {context}")
    elif longest > window:
        notes.append(f"memory allows up to {longest:,} tokens, but the model's rope settings carry {window:,}; "
                     f"longer contexts need RoPE scaling (ropekit plan {model} --target-context N)")
    return notes


# --- check-pack -----------------------------------------------------------------------------

@click.command("check-pack")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--target-context", type=click.IntRange(min=1), required=True, metavar="N",
              help="The extended window in tokens.")
@click.option("--original-max", type=click.IntRange(min=1), metavar="N", help="The model's original (trained) window.")
@click.option("--tokenizer", type=click.Path(path_type=Path), metavar="PATH",
              help="A local tokenizer folder (else ~4 characters per token).")
@json_option
def check_pack_command(file: Path, target_context: int, original_max: int | None, tokenizer: Path | None,
                       as_json: bool) -> None:
    """Bucket an evaluation pack (JSONL) by length; warn when too few examples are long.

    \b
    Example:
      ropekit check-pack eval.jsonl --target-context 131072 --original-max 32768
    """
    from ropekit.training.eval_pack import MIN_LONG_EXAMPLES, check_pack

    with progress.status("check-pack") as report_progress:
        report = check_pack(file, target_context, original_max=original_max, tokenizer=tokenizer,
                            progress=report_progress)
    if as_json:
        emit_json(report.to_json())
        return
    con = render.console()
    con.print(f"{report.examples} examples in {report.path}; {report.counting_note}")
    rows = []
    for bucket in report.buckets:
        where = []
        if report.original_max is not None and bucket.low > report.original_max:
            where.append("beyond original window")
        if bucket.high is None:
            where = ["beyond target (truncated)"]
        rows.append((bucket.label, bucket.count, ", ".join(where)))
    con.print(render.table(("tokens", "examples", ""), rows, title="length buckets"))
    if report.original_max is not None:
        con.print(f"{report.long_examples} example(s) between the original window ({report.original_max:,}) and "
                  f"the target ({report.target_context:,}); the release gate needs at least {MIN_LONG_EXAMPLES}")
    render.warn_lines(con, report.warnings)


# --- export ---------------------------------------------------------------------------------

@click.command("export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--engine", type=click.Choice(["vllm", "sglang", "llama.cpp", "tgi"], case_sensitive=False), required=True,
              help="The serving engine.")
@json_option
def export_command(folder: Path, engine: str, as_json: bool) -> None:
    """Print launch arguments that serve a patched folder exactly as its receipt says.

    \b
    Example:
      ropekit export ./qwen-128k --engine vllm
    """
    from ropekit.serving.export import export_arguments

    spec, arguments = export_arguments(folder, engine)
    if as_json:
        emit_json({"folder": str(spec.folder), "long_context": spec.long_context,
                   "receipt_manifest_sha256": spec.receipt.manifest_sha256, **arguments.to_json()})
        return
    con = render.console()
    lc = spec.long_context
    con.print(f"receipt: {lc['method']} x{lc['factor']:g}, {lc['original_max_position_embeddings']:,} -> "
              f"{lc['new_max_position_embeddings']:,} tokens (manifest {spec.receipt.manifest_sha256[:12]})")
    con.print(f"assumes: {arguments.versions}")
    for command in arguments.prepare:
        con.print(f"first:   {shlex.join(command)}")
    con.print(arguments.command_line(), soft_wrap=True)
    for note in arguments.notes:
        con.print(f"note: {note}")


commands = [doctor_command, memory_command, check_pack_command, export_command]
