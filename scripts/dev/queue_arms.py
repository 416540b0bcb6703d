#!/usr/bin/env python3
"""Development tool: run a comparison preset's arms x seeds as single runs, a few at a
time, into one MLflow store, resumably. Not part of the public contract.

    .venv/bin/python scripts/dev/queue_arms.py --seeds 0,1,2 --jobs 2 \
        compression_vs_baseline_emnist sqlite:////tmp/cvb/femnist.db /tmp/cvb \
        dataset.cache_dir=/tmp/tff_cache

(options first: argparse gives the words after the three positionals to `overrides`;
`--skip fetchsgd` holds back the jobs whose name matches.)

Why not `-m experiment=...`: a 72-job study outlasts a working session here, and a
multirun cannot be resumed. This runs each job of the preset's arms sweeper as a
single run named `<arm>-s<seed>` (the report groups runs by their params, so they
pool with a sweep's children of the same configuration); a job counts as done when a
run of that name FINISHED in the store, so running it again after any interruption
starts only what is missing (`--done-in <export>`: also those exported from an earlier
store, see compare_runs.py --export). It re-reads the preset before each launch (an arm edited
meanwhile is picked up), never starts a job whose run name is already running on the
machine, and stops launching when `<out>/STOP` exists. The arms are the preset's
`hydra.sweeper.arms` as written (its `group=*` arm is left out), read from
conf/experiment/<preset>.yaml or, where it has none, from the preset it extends
(compression_vs_baseline_emnist takes compression_vs_baseline's).
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "conf" / "experiment"


def preset_arms(preset: str) -> list[str]:
    """The arms of a preset, or of the first preset in its defaults list that has them."""
    node = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())
    arms = node.get("hydra", {}).get("sweeper", {}).get("arms")
    if arms:
        return [a for a in arms if "*" not in a]
    parent = next(d for d in node["defaults"] if isinstance(d, str) and d != "_self_")
    return preset_arms(parent)


def job_name(arm: str, seed: int) -> str:
    parts = []
    for override in arm.split():
        key, value = override.split("=", 1)
        if key in ("aggregator", "privacy"):
            parts.append(value)
        elif key.startswith("server_optimizer."):
            parts.append(f"slr{value}")
        elif key == "distributor@distributor.codec":
            parts.append(f"codec{value}")
        else:
            parts.append(f"{key.split('.')[-1]}{value}")
    return "-".join(parts) + f"-s{seed}"


def jobs(preset: str, seeds: list[int]) -> list[tuple[str, list[str]]]:
    arms = preset_arms(preset)
    return [(job_name(arm, seed), [*arm.split(), f"seed={seed}"])
            for seed in seeds for arm in arms]


def finished(uri: str) -> set[str]:
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        return set()
    with sqlite3.connect(path) as store:
        try:
            return {name for name, status in store.execute("select name, status from runs")
                    if status == "FINISHED"}
        except sqlite3.OperationalError:  # a store not made yet
            return set()


def running() -> set[str]:
    listing = subprocess.run(["pgrep", "-af", "federated_research.train"],
                             capture_output=True, text=True).stdout
    return set(re.findall(r"tracking\.run_name=(\S+)", listing))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("preset")
    parser.add_argument("store", help="sqlite:////absolute/path.db")
    parser.add_argument("out", type=Path, help="run folders and logs go here")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--done-in", type=Path, action="append", default=[],
                        help="a compare_runs.py --export file: its runs count as done")
    parser.add_argument("--skip", default=None,
                        help="a regular expression: jobs whose name matches wait")
    parser.add_argument("overrides", nargs="*", help="after --: added to every job")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    tried: set[str] = set()
    if args.done_in:
        sys.path.insert(0, str(ROOT))
        from federated_research import run_records

        tried = {run.name for path in args.done_in for run in run_records.load(path)}
    while not (args.out / "STOP").exists():
        done, busy = finished(args.store), running()
        todo = [j for j in jobs(args.preset, seeds) if j[0] not in done | busy | tried
                and not (args.skip and re.search(args.skip, j[0]))]
        if not todo and not busy:
            break
        if todo and len(busy) < args.jobs:
            name, overrides = todo[0]
            tried.add(name)
            with (args.out / "logs" / f"{name}.log").open("w") as log:
                subprocess.Popen(
                    [sys.executable, "-m", "federated_research.train",
                     f"experiment={args.preset}", *overrides, *args.overrides,
                     f"tracking.mlflow_uri={args.store}", f"tracking.run_name={name}",
                     f"hydra.run.dir={args.out.resolve() / 'out' / name}",
                     "tracking.progress_bar=false"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
            print(time.strftime("%H:%M:%S"), "start", name, f"({len(done)} done)", flush=True)
            time.sleep(20)  # until pgrep sees it
            continue
        time.sleep(10)
    print(time.strftime("%H:%M:%S"), "queue ends", flush=True)


if __name__ == "__main__":
    main()
