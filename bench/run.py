"""ropekit benchmarks, measured side by side in one run; writes bench/results.json and a Markdown table.

    python bench/run.py            # all benchmarks
    python bench/run.py --quick    # fewer repetitions

1. `ropekit plan` on a local config, cold (a new process each time), against
   `python -c "import transformers; transformers.AutoConfig.from_pretrained(DIR)"`.
2. `ropekit audit` over 1,000 configs (copies of the fixtures) in one process.
3. The landing check on 7B-shaped configs without weights (rotary modules built from the
   config, everything else on the meta device), in process and as a cold `ropekit verify --landing`.
4. Light commands, cold, interleaved with `ropekit plan`: `ropekit memory` (arithmetic on a
   config) and input and argument errors of several commands, which must answer before any heavy
   import; each is held to `plan`'s cold-start target.

    python bench/run.py --only light,plan   # re-measure some parts, keep the others from results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SCRIPT = Path(sys.executable).with_name("ropekit")
PLAN_TARGET = FIXTURES / "Qwen__Qwen2.5-7B-Instruct"
LANDING_TARGETS = ["meta-llama__Llama-2-7b-hf", "Qwen__Qwen2.5-7B-Instruct", "meta-llama__Meta-Llama-3-8B-Instruct"]


# Measure what users get: compiled bytecode cached as usual (some sandboxes set
# PYTHONDONTWRITEBYTECODE, which recompiles every module on every start).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def bench_plan(reps: int) -> dict:
    ropekit_cmd = [str(SCRIPT), "plan", str(PLAN_TARGET), "--factor", "4", "--method", "yarn", "--json"]
    baseline_cmd = [sys.executable, "-c",
                    f"import transformers; transformers.AutoConfig.from_pretrained({str(PLAN_TARGET)!r})"]
    timed(ropekit_cmd), timed(baseline_cmd)  # warm the page cache for both
    ours, theirs = [], []
    for _ in range(reps):  # interleaved, so both see the same machine state
        ours.append(timed(ropekit_cmd))
        theirs.append(timed(baseline_cmd))
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    return {"ropekit_plan_median_s": ours_median, "transformers_autoconfig_median_s": theirs_median,
            "speedup": theirs_median / ours_median, "reps": reps}


def bench_audit(count: int) -> dict:
    configs = sorted(FIXTURES.glob("*/config.json"))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            source = configs[i % len(configs)]
            folder = Path(tmp) / f"m{i:04d}"
            folder.mkdir()
            shutil.copyfile(source, folder / "config.json")
        cmd = [str(SCRIPT), "audit", tmp, "--json"]
        timed(cmd)
        runs = [timed(cmd) for _ in range(3)]
    wall = statistics.median(runs)
    return {"configs": count, "audit_median_s": wall, "configs_per_s": count / wall}


def bench_landing(reps: int) -> dict:
    from ropekit import LongContextConfig, apply_rope_scaling
    from ropekit.landing.check import verify_landing

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in LANDING_TARGETS:
            config = json.loads((FIXTURES / name / "config.json").read_text())
            receipt = apply_rope_scaling(config, LongContextConfig(method="yarn", factor=4.0))
            folder = Path(tmp) / name
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps(config))
            (folder / "rope_receipt.json").write_text(receipt.to_json())
            verify_landing(folder)  # first call pays the transformers import
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                report = verify_landing(folder)
                times.append(time.perf_counter() - start)
            assert report.landed, report.first_problem()
            cold = timed([str(SCRIPT), "verify", str(folder), "--landing"])
            out[name] = {"in_process_median_s": statistics.median(times), "cold_process_s": cold}
    return out


PLAN_TARGET_S = 0.3  # `ropekit plan` cold start; light commands are held to the same target

LIGHT_COMMANDS = {
    "memory (catalog id, --gpu H100)": ["memory", "Qwen/Qwen2.5-7B-Instruct", "--context", "131072", "--gpu", "H100"],
    "memory, all GPUs, --json": ["memory", str(PLAN_TARGET), "--context", "32768", "--json"],
    "plan: missing folder (exit 4)": ["plan", "./no-such-model", "--factor", "4"],
    "plan: --factor 0.5 (exit 2)": ["plan", str(PLAN_TARGET), "--factor", "0.5"],
    "verify --landing: missing folder (exit 4)": ["verify", "./no-such-folder", "--landing"],
    "export: missing folder (exit 4)": ["export", "./no-such-folder", "--engine", "vllm"],
    "memory: --context 0 (exit 2)": ["memory", str(PLAN_TARGET), "--context", "0"],
    "doctor: --target-context 0 (exit 2)": ["doctor", "--target-context", "0"],
}


def timed_any(cmd: list[str]) -> float:
    """Like :func:`timed`, for commands that are meant to fail."""
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=LIGHT_ENV)
    return time.perf_counter() - start


LIGHT_ENV = {**ENV, "HF_HUB_OFFLINE": "1"}


def bench_light(reps: int) -> dict:
    plan_cmd = [str(SCRIPT), "plan", str(PLAN_TARGET), "--factor", "4", "--method", "yarn", "--json"]
    commands = {name: [str(SCRIPT), *args] for name, args in LIGHT_COMMANDS.items()}
    for cmd in [plan_cmd, *commands.values()]:
        timed_any(cmd)  # warm the page cache
    samples: dict[str, list[float]] = {name: [] for name in ["plan", *commands]}
    for _ in range(reps):  # interleaved with plan, so all see the same machine state
        samples["plan"].append(timed_any(plan_cmd))
        for name, cmd in commands.items():
            samples[name].append(timed_any(cmd))
    return {"reps": reps, "target_s": PLAN_TARGET_S,
            "median_s": {name: statistics.median(times) for name, times in samples.items()}}


def markdown(results: dict) -> str:
    plan, audit, landing = results["plan"], results["audit"], results["landing"]
    worst = max(v["in_process_median_s"] for v in landing.values())
    rows = [
        "| benchmark | measured | target | met |",
        "|---|---|---|---|",
        f"| `ropekit plan` cold, median of {plan['reps']} | {plan['ropekit_plan_median_s']:.3f} s | <= 0.3 s | "
        f"{'yes' if plan['ropekit_plan_median_s'] <= 0.3 else 'no'} |",
        f"| vs `AutoConfig.from_pretrained` cold ({plan['transformers_autoconfig_median_s']:.2f} s) | "
        f"{plan['speedup']:.1f}x faster | >= 5x | {'yes' if plan['speedup'] >= 5 else 'no'} |",
        f"| `ropekit audit` over {audit['configs']} configs | {audit['configs_per_s']:.0f} configs/s | >= 500/s | "
        f"{'yes' if audit['configs_per_s'] >= 500 else 'no'} |",
        f"| landing check, 7B configs without weights (worst of {len(landing)}) | {worst:.3f} s | <= 2 s | "
        f"{'yes' if worst <= 2 else 'no'} |",
        f"| cold `ropekit verify DIR --landing` (a new process: imports torch and transformers) | "
        f"{max(v['cold_process_s'] for v in landing.values()):.1f} s | (informational) | - |",
    ]
    light = results.get("light")
    if light:
        medians = light["median_s"]
        rows.append(f"| `ropekit plan` cold, same run as the rows below (median of {light['reps']}) | "
                    f"{medians['plan']:.3f} s | <= {light['target_s']} s | "
                    f"{'yes' if medians['plan'] <= light['target_s'] else 'no'} |")
        for name, value in medians.items():
            if name != "plan":
                rows.append(f"| cold `ropekit {name}` | {value:.3f} s ({value / medians['plan']:.2f}x plan) | "
                            f"<= {light['target_s']} s | {'yes' if value <= light['target_s'] else 'no'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--table", action="store_true", help="print the table of the last results.json")
    parser.add_argument("--only", metavar="PARTS", help="comma-separated parts to re-measure (plan, audit, "
                        "landing, light); the others are kept from results.json")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads((ROOT / "bench" / "results.json").read_text())))
        return
    reps = 5 if args.quick else 15
    parts = {"plan": lambda: bench_plan(reps), "audit": lambda: bench_audit(1000),
             "landing": lambda: bench_landing(reps), "light": lambda: bench_light(reps)}
    chosen = args.only.split(",") if args.only else list(parts)
    unknown = set(chosen) - set(parts)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(parts)}")
    previous = json.loads((ROOT / "bench" / "results.json").read_text()) if args.only else {}
    results = {**previous, "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                       "platform": platform.platform()}}
    results.update({name: parts[name]() for name in chosen})
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
