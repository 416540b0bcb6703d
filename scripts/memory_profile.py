#!/usr/bin/env python3
"""Resident memory of a long run, round by round: the run's process and its TFF worker.

    .venv/bin/python scripts/memory_profile.py                     # 500 rounds, default run
    .venv/bin/python scripts/memory_profile.py --rounds 200 model=linear   # any overrides
    .venv/bin/python scripts/memory_profile.py --run-dir outputs/2026-12-01/10-00-00  # a run

Runs `python -m federated_research.train rounds=N <overrides>` as a user would
(its own MLflow store and output folder under --out), reads back the
`system/rss_mib` and `system/worker_rss_mib` the run logs after every round
(from its metrics.jsonl), and prints them every --every rounds with the growth
between round --from (50: after the first rounds' tracing, caches and
evaluation) and the last. A figure "at round r" is the median of rounds r-9..r:
the worker's RSS moves by tens of MiB from one round to the next as TensorFlow
allocates and frees, and one sample would measure that noise. Exits 1 when
either grows by more than --limit percent (5). Memory is measured here, never
in unit tests.

A run whose clients keep state (error feedback, SCAFFOLD) also logs what its
client-state store holds (`client_state/memory_bytes`, `client_state/disk_bytes`):
the memory store grows by one state per client met until the population has been
seen, so its rows show the store and the run's RSS net of it, which is what must
stay flat. --run-dir reads a finished (or running) run's journal instead of
starting one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from federated_research.tracking.journal import read_journal  # noqa: E402

SERIES = {"run": "system/rss_mib", "worker": "system/worker_rss_mib",
          "store": "client_state/memory_bytes", "disk": "client_state/disk_bytes"}
BYTES = {"store", "disk"}  # logged in bytes, shown in MiB


def profile(rounds: int, overrides: list[str], out: Path) -> dict[str, dict[int, float]]:
    """Run the job; {'run': {round: MiB}, 'worker': {round: MiB}}."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "federated_research.train", f"rounds={rounds}", *overrides,
           "tracking.progress_bar=false", f"hydra.run.dir={out / 'run'}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out.resolve()}/mlflow.db"}
    print("running:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        sys.exit(f"error: the run failed with exit code {done.returncode}")
    print(f"{rounds} rounds in {time.perf_counter() - start:.0f} s")
    return read_series(out / "run")


def read_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """{'run': {round: MiB}, 'worker': ..., 'store': ..., 'disk': ...} from a run's journal
    (the store series empty for a run without client state)."""
    if not (run_dir / "metrics.jsonl").is_file():
        sys.exit(f"error: --run-dir {run_dir}: no metrics.jsonl there. Fix: pass the output "
                 "folder of a run (the one holding metrics.jsonl)")
    series: dict[str, dict[int, float]] = {name: {} for name in SERIES}
    for step, metrics, _ in read_journal(run_dir / "metrics.jsonl")[0]:
        for name, key in SERIES.items():
            if key in metrics:
                series[name][step] = metrics[key] / (2**20 if name in BYTES else 1)
    if series["store"]:
        series["net"] = {s: v - series["store"].get(s, 0.0) for s, v in series["run"].items()}
    return {name: values for name, values in series.items() if values}


def at_round(values: dict[int, float], rounds: int) -> float:
    """The median RSS over rounds `rounds`-9 to `rounds` (1-based; steps are 0-based)."""
    window = [values[s] for s in range(max(rounds - 10, 0), rounds) if s in values]
    return statistics.median(window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--every", type=int, default=50, help="print every N rounds")
    parser.add_argument("--from", dest="start", type=int, default=50,
                        help="measure growth from this round (after warm-up)")
    parser.add_argument("--limit", type=float, default=5.0, help="allowed growth, percent")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "memory_profile" /
                        time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--run-dir", type=Path,
                        help="read this run's metrics.jsonl instead of starting a run")
    parser.add_argument("overrides", nargs="*", help="train overrides, e.g. model=linear")
    args = parser.parse_args()
    if args.run_dir:
        if args.overrides:
            parser.error("--run-dir reads a run that exists: pass no overrides with it")
        series = read_series(args.run_dir)
        args.rounds = max(series["run"]) + 1
    if not 1 <= args.start < args.rounds:
        parser.error("--from must be a round of the run (1 to --rounds - 1)")
    if not args.run_dir:
        series = profile(args.rounds, args.overrides, args.out)
    at = {name: {r: at_round(values, r) for r in range(1, args.rounds + 1)}
          for name, values in series.items()}
    names = [n for n in ("run", "worker", "store", "disk", "net") if n in at]
    heads = {"run": "run MiB", "worker": "worker MiB", "store": "store MiB",
             "disk": "disk MiB", "net": "run-store"}
    print(f"\n{'round':>6} " + " ".join(f"{heads[n]:>11}" for n in names)
          + "   (median of the last 10 rounds)")
    for r in sorted({1, *range(args.every, args.rounds + 1, args.every), args.start,
                     args.rounds} - {0}):
        print(f"{r:>6} " + " ".join(f"{at[n][r]:>11.0f}" for n in names))
    failed = False
    for name in ("run", "worker", "net"):
        if name not in at:
            continue
        values = at[name]
        growth = 100 * (values[args.rounds] / values[max(args.start, 1)] - 1)
        peak = max(series[name].values())
        print(f"{name}: {growth:+.1f}% from round {args.start} to {args.rounds} "
              f"({values[max(args.start, 1)]:.0f} -> {values[args.rounds]:.0f} MiB; "
              f"peak {peak:.0f} MiB)")
        # with a memory store, the run's own RSS is expected to grow by what the store
        # holds: the net series is the one that must stay flat
        failed |= growth > args.limit and not (name == "run" and "net" in at)
    if failed:
        sys.exit(f"memory grew by more than {args.limit}%")


if __name__ == "__main__":
    main()
