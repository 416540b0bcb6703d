#!/usr/bin/env python3
"""Compare tracked runs: the answer of a sweep, per configuration, over seeds.

    .venv/bin/python scripts/compare_runs.py --parent last            # the newest sweep
    .venv/bin/python scripts/compare_runs.py --parent <run id> --target 0.8 --budget 25%
    .venv/bin/python scripts/compare_runs.py --experiment compression_methods --out report/
    .venv/bin/python scripts/compare_runs.py --sweep multirun/2026-11-21/14-35-17 --per-run
    .venv/bin/python scripts/compare_runs.py --experiment compression_methods --export runs.jsonl.gz
    .venv/bin/python scripts/compare_runs.py --from runs.jsonl.gz --from more.jsonl.gz --out report/

Per configuration (every param but the seed), against its `mean` baseline of the
same sweep: final eval accuracy (mean +- sd over seeds), the paired accuracy change,
cumulative uplink and downlink bits and their ratio to the baseline, bits per
coordinate, uplink bits to reach `--target` accuracy, accuracy within an uplink
`--budget`, round-time ratio and the aggregate's error. `--out` writes report.md,
report.json and three PNG plots (accuracy by round, rate-accuracy, Pareto front);
with `--parent` they are also logged as artifacts of the sweep's parent run (the
table becomes its description in the MLflow UI). A sweep does this by itself when
it ends (`tracking.sweep_report`). `--per-run` prints one line per run instead.
`--export` writes the runs the report reads (params, accuracy and bits by round,
round times) to one small file; `--from` reads such files instead of a store,
pooled (docs/results.md is rebuilt from the files in docs/data/ this way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from federated_research import run_records  # noqa: E402
from federated_research.report import (  # noqa: E402
    COLUMNS,
    ReportError,
    load_runs,
    publish,
    summarise,
    text_table,
    write_report,
)

MIBIT = 2**20


def per_run_rows(runs) -> list[dict]:
    """One row per run (oldest first), with its ratio to the `mean` run of its seed."""
    rows = []
    for r in runs:
        rows.append({"run": r.name, "aggregator": r.choices.get("aggregator"), "seed": r.seed,
                     "rounds": len(r.round_seconds), "eval_accuracy": r.final_accuracy,
                     "aggregated_bits": r.up[max(r.up)] if r.up else None,
                     "broadcasted_bits": r.down[max(r.down)] if r.down else None,
                     "first_round_seconds": r.round_seconds.get(0),
                     "round_seconds": r.median_round_seconds(), "config": r.config_key})
    for row in rows:
        base = next((b for b in rows if b["aggregator"] == "mean" and b["seed"] == row["seed"]
                     and b["rounds"] == row["rounds"]), None)
        row["up_ratio"] = (row["aggregated_bits"] / base["aggregated_bits"]
                           if base and row["aggregated_bits"] and base["aggregated_bits"]
                           else None)
        del row["config"]
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_per_run(rows: list[dict]) -> None:
    header = (f"{'run':<34} {'rounds':>6} {'eval acc':>8} {'up Mibit':>10} "
              f"{'down Mibit':>10} {'up ratio':>8} {'s/round':>8} {'1st s':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        up = r["aggregated_bits"] / MIBIT if r["aggregated_bits"] else None
        down = r["broadcasted_bits"] / MIBIT if r["broadcasted_bits"] else None
        print(f"{r['run']:<34} {r['rounds']:>6} {_fmt(r['eval_accuracy'], '.4f'):>8} "
              f"{_fmt(up, ',.1f'):>10} {_fmt(down, ',.1f'):>10} "
              f"{_fmt(r['up_ratio'], '.4f'):>8} {_fmt(r['round_seconds'], '.2f'):>8} "
              f"{_fmt(r['first_round_seconds'], '.1f'):>6}")


def _budget(text: str) -> float | str:
    if text.endswith("%"):
        float(text[:-1])
        return text
    return float(text)


def _columns(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in {key for key, _, _ in COLUMNS}]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"no column {', '.join(unknown) or '(none given)'}; pass keys from: "
            + ", ".join(key for key, _, _ in COLUMNS))
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}"))
    parser.add_argument("--experiment", default="federated_research",
                        help="an experiment's name, or several joined by commas")
    parser.add_argument("--parent", help="a sweep's parent run id, or `last`")
    parser.add_argument("--sweep", help="only runs whose output dir is under this folder")
    parser.add_argument("--target", type=float,
                        help="accuracy to reach (default: 95%% of the baseline's final)")
    parser.add_argument("--budget", type=_budget, default="25%",
                        help="uplink bits, or a percentage of the baseline's (default 25%%)")
    parser.add_argument("--out", type=Path, help="write report.md, report.json and plots here")
    parser.add_argument("--per-run", action="store_true", help="one line per run instead")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--from", dest="sources", type=Path, action="append",
                        help="read the runs from this --export file instead of a store "
                             "(repeat to pool several)")
    parser.add_argument("--columns", type=_columns,
                        help="the table's columns, by key, comma-separated (default: all): "
                             + ", ".join(key for key, _, _ in COLUMNS))
    parser.add_argument("--export", type=Path,
                        help="write the runs read to this file (.jsonl, or .jsonl.gz)")
    args = parser.parse_args()
    try:
        if args.sources:
            runs = run_records.pool([run_records.load(p) for p in args.sources])
            parent = None
        else:
            runs, parent = load_runs(args.tracking_uri, args.experiment, args.parent,
                                     args.sweep)
        if args.export:
            print(f"wrote {len(runs)} runs to {run_records.save(runs, args.export)}")
        if args.per_run:
            rows = per_run_rows(runs)
            print_per_run(rows)
        else:
            rows, settings = summarise(runs, args.target, args.budget)
            settings["columns"] = args.columns
            print(text_table(rows, settings))
            if args.out:
                if parent:
                    written = publish(args.tracking_uri, parent, rows, settings, args.out)
                else:
                    title = (", ".join(p.name.split(".")[0] for p in args.sources)
                             if args.sources else args.experiment)
                    written = write_report(rows, settings, args.out, title=title)
                print("wrote " + ", ".join(str(p) for p in written))
                if parent:
                    print(f"logged to the parent run {parent} (artifacts: report/)")
    except ReportError as exc:
        if args.sources:
            sys.exit(f"error: {exc}. Fix: pass a file written by --export")
        sys.exit(f"error: {exc}. Fix: check --tracking-uri, --experiment and --parent "
                 "(the parent's run id is in the MLflow UI, or pass --parent last)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
