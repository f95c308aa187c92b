"""Train several recipes at once on one accelerator within a fixed wall-time budget.

Why: a lent GPU comes for minutes, and the learning-rate schedule must end when the
time does. Every recipe runs side by side with ``train --time-budget``: its cosine
decay is scheduled over wall time, so no calibration run is needed and the recorded
``steps`` are the count each reached. Each run folder is then packed as
``OUT/<name>.tar.gz`` (best model, log, recipe with the steps done, state; the
optimizer checkpoint only with ``--with-checkpoint``, it is three times the model).
Usage (KERAS_BACKEND=jax on the device machine)::

    python tools/gpu_train.py --data .gpudata --out $OUT --budget-s 440 gray:3 color:3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "src_models" / "recipes"


def _launch(name: str, out: Path, args, workers: int, env) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "src_models.train",
        "--config",
        str(Path(args.recipes) / f"{name}.yaml"),
        "--out",
        str(out),
        "--time-budget",
        f"{args.budget_s / 60:.4f}",
        "--workers",
        str(workers),
        "--data",
        args.data,
    ]
    log = open(out / "stdout.txt", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobs", nargs="+", help="recipe[:workers]")
    ap.add_argument("--data", required=True, help="folder holding train/gray400, train/color432")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=440.0, help="training time of each recipe")
    ap.add_argument("--grace-s", type=float, default=120.0, help="start-up and final validation")
    ap.add_argument("--work", default="/tmp/gpu_runs")
    ap.add_argument("--recipes", default=str(RECIPES))
    ap.add_argument("--with-checkpoint", action="store_true")
    args = ap.parse_args(argv)
    jobs = [(j.split(":")[0], int(j.split(":")[1]) if ":" in j else 2) for j in args.jobs]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / len(jobs):.2f}")
    work, out = Path(args.work), Path(args.out)

    runs = {n: _launch(n, work / n, args, w, env) for n, w in jobs}
    deadline = time.time() + args.budget_s + args.grace_s
    for name, p in runs.items():
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.terminate()  # train.py checkpoints on its own schedule; the best model is saved
            p.wait(timeout=30)
            print(f"{name}: stopped at the deadline", flush=True)
        print(f"{name}: exit {p.returncode}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in runs:
        src = work / name
        print(f"--- {name}\n" + (src / "stdout.txt").read_text()[-1200:], flush=True)
        with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
            for f in sorted(src.iterdir()):
                if f.name != "checkpoint.keras" or args.with_checkpoint:
                    tar.add(f, arcname=f"{name}/{f.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
