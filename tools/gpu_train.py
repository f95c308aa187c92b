"""Train several recipes at once on one accelerator within a fixed time budget.

Why: a lent GPU comes for minutes, and the learning-rate schedule must end when the
time does. Phase 1 runs every recipe briefly, side by side, to measure its steps per
second under the same sharing; phase 2 trains each from scratch with the step count
that fits the budget (written into its run folder's recipe.yaml and model card). Each
run folder is then packed as ``OUT/<name>.tar.gz`` (best model, resumable checkpoint,
log). Usage (KERAS_BACKEND=jax on the device machine)::

    python tools/gpu_train.py --data .gpudata --out $OUT --budget-s 380 gray:2 color:3
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parent.parent / "src_models" / "recipes"


def _launch(name, out: Path, data: str, steps: int, minutes: float, workers: int, env, recipes):
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "src_models.train",
        "--config",
        str(recipes / f"{name}.yaml"),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--max-minutes",
        f"{minutes:.3f}",
        "--workers",
        str(workers),
        "--data",
        data,
    ]
    log = open(out / "stdout.txt", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _rate(log_csv: Path) -> float | None:
    """Steps per second between the first and the last logged row (compilation excluded)."""
    if not log_csv.is_file():
        return None
    rows = [r for r in csv.DictReader(open(log_csv)) if r.get("elapsed_s")]
    if len(rows) < 2:
        return None
    s0, t0 = int(rows[0]["step"]), float(rows[0]["elapsed_s"])
    s1, t1 = int(rows[-1]["step"]), float(rows[-1]["elapsed_s"])
    return (s1 - s0) / (t1 - t0) if t1 > t0 else None


def _wait(procs: dict, deadline: float) -> None:
    for name, p in procs.items():
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            print(f"{name}: killed at the deadline", flush=True)
        print(f"{name}: exit {p.returncode}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobs", nargs="+", help="recipe[:workers]")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=380.0)
    ap.add_argument("--calib-s", type=float, default=45.0)
    ap.add_argument("--max-steps", type=int, default=60000)
    ap.add_argument("--work", default="/tmp/gpu_runs")
    ap.add_argument("--recipes", default=str(RECIPES))
    ap.add_argument("--fallback-rate", type=float, default=10.0, help="steps/s if none measured")
    args = ap.parse_args(argv)
    jobs = [(j.split(":")[0], int(j.split(":")[1]) if ":" in j else 2) for j in args.jobs]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / len(jobs):.2f}")
    work, out = Path(args.work), Path(args.out)

    t = time.time()
    cal_recipes = work / "cal_recipes"
    cal_recipes.mkdir(parents=True, exist_ok=True)
    for n, _ in jobs:  # log often, so a short calibration still measures a rate
        r = yaml.safe_load((Path(args.recipes) / f"{n}.yaml").read_text())
        r["training"]["log_every"] = 10
        r["data"]["train"] = [str((Path(args.recipes) / p).resolve()) for p in r["data"]["train"]]
        (cal_recipes / f"{n}.yaml").write_text(yaml.safe_dump(r))
    cal = {
        n: _launch(n, work / "cal" / n, args.data, 10**6, args.calib_s / 60, w, env, cal_recipes)
        for n, w in jobs
    }
    _wait(cal, time.time() + args.calib_s + 240)
    rates = {n: _rate(work / "cal" / n / "log.csv") for n, _ in jobs}
    print(f"calibration took {time.time() - t:.0f} s; steps/s: {rates}", flush=True)

    runs = {}
    for n, w in jobs:
        r = rates[n]
        if not r:
            print(f"{n}: no rate measured; see {work / 'cal' / n / 'stdout.txt'}:")
            print((work / "cal" / n / "stdout.txt").read_text()[-3000:], flush=True)
            if not (work / "cal" / n / "log.csv").is_file():
                continue  # it never trained: do not waste the budget on it
            r = args.fallback_rate
        steps = max(100, int(min(args.max_steps, r * args.budget_s * 0.92) // 100 * 100))
        print(f"{n}: {steps} steps", flush=True)
        runs[n] = _launch(
            n,
            work / "run" / n,
            args.data,
            steps,
            (args.budget_s + 20) / 60,
            w,
            env,
            Path(args.recipes),
        )
    _wait(runs, time.time() + args.budget_s + 150)
    out.mkdir(parents=True, exist_ok=True)
    for n in runs:
        src = work / "run" / n
        print(f"--- {n}\n" + (src / "stdout.txt").read_text()[-1500:], flush=True)
        with tarfile.open(out / f"{n}.tar.gz", "w:gz") as tar:
            tar.add(src, arcname=n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
