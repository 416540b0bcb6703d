#!/usr/bin/env python3
"""Compare tracked runs: final accuracy, bits sent, compression ratio, speed.

    .venv/bin/python scripts/compare_runs.py                       # every run of the experiment
    .venv/bin/python scripts/compare_runs.py --sweep multirun/2026-11-21/14-35-17
    .venv/bin/python scripts/compare_runs.py --json results.json   # also write the table

Each run is compared with the `aggregator=mean` run of the same dataset, model and
seed (the uncompressed baseline): `up ratio` = its cumulative aggregated bits over
the baseline's. Seconds per round are the median of `time/round_seconds` after the
first round (which includes TFF's tracing), with the first round shown apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

MIBIT = 2**20


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def collect(uri: str, experiment: str, sweep: str | None) -> list[dict]:
    """One row per run, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"error: no experiment {experiment!r} in {uri}")
    query = f"tags.output_dir LIKE '{Path(sweep).resolve()}%'" if sweep else ""
    rows = []
    for run in reversed(client.search_runs([found.experiment_id], query, max_results=1000)):
        tags, run_id = run.data.tags, run.info.run_id
        seconds = _history(client, run_id, "time/round_seconds")
        later = [v for step, v in sorted(seconds.items()) if step > 0]
        accuracy = _history(client, run_id, "eval/accuracy")
        rows.append({
            "run": run.info.run_name, "status": run.info.status,
            "dataset": tags.get("dataset"), "model": tags.get("model"),
            "aggregator": tags.get("aggregator"), "seed": tags.get("seed"),
            "rounds": len(seconds),
            "eval_accuracy": accuracy[max(accuracy)] if accuracy else None,
            "aggregated_bits": run.data.metrics.get("comm/aggregated_bits_cumulative"),
            "broadcasted_bits": run.data.metrics.get("comm/broadcasted_bits_cumulative"),
            "first_round_seconds": seconds.get(0),
            "round_seconds": statistics.median(later) if later else seconds.get(0),
        })
    for row in rows:
        base = next((b for b in rows if b["aggregator"] == "mean" and b["dataset"] == row[
            "dataset"] and b["model"] == row["model"] and b["seed"] == row["seed"]
                     and b["rounds"] == row["rounds"]), None)
        row["up_ratio"] = (row["aggregated_bits"] / base["aggregated_bits"]
                           if base and row["aggregated_bits"] and base["aggregated_bits"] else None)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    header = (f"{'run':<34} {'status':<8} {'rounds':>6} {'eval acc':>8} {'up Mibit':>10} "
              f"{'down Mibit':>10} {'up ratio':>8} {'s/round':>8} {'1st s':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        up = r["aggregated_bits"] / MIBIT if r["aggregated_bits"] else None
        down = r["broadcasted_bits"] / MIBIT if r["broadcasted_bits"] else None
        print(f"{r['run']:<34} {r['status']:<8} {r['rounds']:>6} "
              f"{_fmt(r['eval_accuracy'], '.4f'):>8} {_fmt(up, ',.1f'):>10} "
              f"{_fmt(down, ',.1f'):>10} {_fmt(r['up_ratio'], '.4f'):>8} "
              f"{_fmt(r['round_seconds'], '.2f'):>8} {_fmt(r['first_round_seconds'], '.1f'):>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}"))
    parser.add_argument("--experiment", default="federated_research")
    parser.add_argument("--sweep", help="only runs whose output dir is under this folder")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = collect(args.tracking_uri, args.experiment, args.sweep)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
