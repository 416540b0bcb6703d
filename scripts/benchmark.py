#!/usr/bin/env python3
"""Benchmark a sweep: wall time, seconds per round, peak memory, bits and accuracy.

    .venv/bin/python scripts/benchmark.py             # CNN, mean vs compression, 30 rounds
    .venv/bin/python scripts/benchmark.py model=linear rounds=10   # any overrides

Runs `python -m federated_research.train -m <overrides>` as a user would, samples
the resident memory of its whole process tree (Python + TFF's worker_binary)
every 0.2 s, then prints the compare_runs table of the sweep. Speed is measured
here, never in unit tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_runs import per_run_rows, print_per_run  # noqa: E402

from federated_research.report import load_runs  # noqa: E402
from federated_research.resources import tree_rss  # noqa: E402
from federated_research.tracking.sweep import SweepInfo  # noqa: E402

DEFAULT = ["model=cnn", "aggregator=mean,compression", "rounds=30"]


def main(overrides: list[str]) -> None:
    import os

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep = Path("multirun") / f"bench_{stamp}"
    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "federated_research.train", "-m", *(overrides or DEFAULT),
           "tracking.progress_bar=false", f"hydra.sweep.dir={sweep}"]
    print("running:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    watcher, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(watcher))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: the sweep failed with exit code {proc.returncode}")
    info = SweepInfo.read(sweep.resolve())
    if info is None:
        sys.exit(f"error: {sweep} has no parent run record; was the sweep tracked?")
    rows = per_run_rows(load_runs(uri, parent=info.parent_run_id)[0])
    print()
    print_per_run(rows)
    print(f"\nwall time {wall:.1f} s for {len(rows)} jobs; peak resident memory of the "
          f"process tree {peak / 2**20:,.0f} MiB")
    (sweep / "benchmark.json").write_text(json.dumps(
        {"command": cmd, "wall_seconds": wall, "peak_rss_bytes": peak, "runs": rows}, indent=2,
        default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
