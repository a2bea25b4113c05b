"""ropekit benchmarks, measured side by side in one run; writes bench/results.json and a Markdown table.

    python bench/run.py            # all benchmarks
    python bench/run.py --quick    # fewer repetitions

1. `ropekit plan` on a local config, cold (a new process each time), against
   `python -c "import transformers; transformers.AutoConfig.from_pretrained(DIR)"`.
2. `ropekit audit` over 1,000 configs (copies of the fixtures) in one process.
3. The landing check on 7B-shaped configs without weights (rotary modules built from the
   config, everything else on the meta device), in process and as a cold `ropekit verify --landing`.
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
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--table", action="store_true", help="print the table of the last results.json")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads((ROOT / "bench" / "results.json").read_text())))
        return
    reps = 5 if args.quick else 15
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "platform": platform.platform()},
               "plan": bench_plan(reps), "audit": bench_audit(1000), "landing": bench_landing(reps)}
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
