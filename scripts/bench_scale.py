#!/usr/bin/env python3
"""Round time and peak memory against clients a round, for each runtime.

    .venv/bin/python scripts/bench_scale.py                       # 10, 50, 100, 500 clients
    .venv/bin/python scripts/bench_scale.py --clients 10 100 --rounds 4 \
        --runtime local "sharded:shards=per50,local_workers=1"

Each configuration is one real CLI run (`python -m federated_research.train`) of the
CNN on the embedded MNIST cut into `--population` IID clients (4,000 images: 8 each at
500), in its own process, so that its peak memory is its own. A poller samples, every
0.1 s, the resident memory of the run's process plus every TFF worker it started, and
keeps the peak; round times are read from the run's metrics journal (rounds after the
first, which traces). `shards=perN` means ceil(clients / N) shards: N clients a call.
Speed and memory are measured here, never in unit tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from federated_research.resources import tree_rss

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def _runtime_overrides(spec: str, clients: int) -> list[str]:
    """`sharded:shards=per50,local_workers=1` -> Hydra overrides for `clients` a round."""
    name, _, keys = spec.partition(":")
    overrides = [f"runtime={name}"]
    for pair in filter(None, keys.split(",")):
        key, _, value = pair.partition("=")
        if value.startswith("per"):
            value = str(max(1, math.ceil(clients / int(value[3:]))))
        overrides.append(f"runtime.{key}={value}")
    return overrides


class PeakRss(threading.Thread):
    """The peak of (process + its descendants) resident memory, sampled every 0.1 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak, self._halt = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            self.peak = max(self.peak, tree_rss(self.root))

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def bench(spec: str, clients: int, args, root: Path) -> dict:
    out = root / f"{spec.replace(':', '_').replace(',', '_').replace('=', '')}-{clients}"
    cmd = [sys.executable, "-m", "federated_research.train", "model=cnn",
           f"dataset.num_clients={args.population}", "dataset.partition=iid",
           f"clients_per_round={clients}", f"rounds={args.rounds}",
           f"eval_every={args.rounds}", "checkpoint_every=0", "log_update_error=false",
           "tracking.tensorboard=false", "tracking.save_model=false",
           "tracking.progress_bar=false", f"tracking.mlflow_uri=sqlite:///{root}/mlflow.db",
           f"hydra.run.dir={out}", *_runtime_overrides(spec, clients), *args.set]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    poller = PeakRss(proc.pid)
    poller.start()
    _, err = proc.communicate()
    peak = poller.stop()
    if proc.returncode:
        raise SystemExit(f"{spec} at {clients} clients failed: {err.decode()[-800:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["metrics"]["time/round_seconds"] for r in records
               if "time/round_seconds" in r.get("metrics", {})]
    later = seconds[1:] or seconds
    per_round = statistics.median(later)
    return {"runtime": spec, "clients": clients, "s_round": per_round,
            "s_round_range": [min(later), max(later)], "s_client": per_round / clients,
            "peak_gib": peak / 2**30, "wall_s": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100, 500])
    parser.add_argument("--runtime", nargs="+", default=["local",
                        "sharded:shards=per50,local_workers=1"])
    parser.add_argument("--population", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print("| runtime | clients a round | s/round (rounds 2+) | s per client | "
              "peak RSS, run + workers (GiB) |\n|---|---|---|---|---|", flush=True)
        for clients in args.clients:
            for spec in args.runtime:
                row = bench(spec, clients, args, Path(tmp))
                rows.append(row)
                low, high = row["s_round_range"]
                print(f"| {spec} | {clients} | {row['s_round']:.2f} ({low:.2f}-{high:.2f}) | "
                      f"{row['s_client']:.3f} | {row['peak_gib']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
