#!/usr/bin/env python3
"""The answer of a compression sweep: a table per method and a rate-accuracy plot.

    .venv/bin/python scripts/compression_report.py --experiment compression_methods
    .venv/bin/python scripts/compression_report.py --experiment compression_methods \\
        --plot docs/rate_accuracy_mnist.png --markdown docs/compression_mnist.md

Reads every FINISHED run of the experiment from the MLflow store, groups them by
method (uplink aggregator + downlink distributor) over seeds, and compares each
with the `mean` + `plain` runs of the same seeds (the uncompressed baseline):

  up/down bits a round   cumulative bits / rounds (all clients of a round)
  bits/coord             bits one client sends (receives) / model parameters
  ratio                  baseline bits / method bits
  eval acc               final eval accuracy, mean +- standard deviation over seeds
  d acc                  mean over seeds of (method - baseline) final accuracy, in points
  time ratio             median round time / the baseline's, mean over seeds
  update nmse            mean over rounds of comm/update_nmse (the aggregate's error)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def collect(uri: str, experiment: str) -> list[dict]:
    """One dict per finished run: its method, seed, bits, accuracy and round times."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"error: no experiment {experiment!r} in {uri}. Fix: pass --experiment "
                 "with the name the sweep logged to (tracking.experiment)")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'",
                                      max_results=5000):
            tags, params, run_id = run.data.tags, run.data.params, run.info.run_id
            comm = json.loads(Path(client.download_artifacts(
                run_id, "comm_bits.json", tmp)).read_text())
            seconds = [v for s, v in sorted(_history(client, run_id,
                                                     "time/round_seconds").items()) if s > 0]
            accuracy = _history(client, run_id, "eval/accuracy")
            nmse = list(_history(client, run_id, "comm/update_nmse").values())
            rounds = int(params["rounds"])
            runs.append({
                "method": tags.get("aggregator", "?") + (
                    "" if tags.get("distributor", "plain") == "plain"
                    else f"+{tags['distributor']}"),
                "dataset": tags.get("dataset"), "seed": tags.get("seed"), "rounds": rounds,
                "accuracy": accuracy[max(accuracy)] if accuracy else None,
                "up": run.data.metrics["comm/aggregated_bits_cumulative"] / rounds,
                "down": run.data.metrics["comm/broadcasted_bits_cumulative"] / rounds,
                "up_client": comm["per_client_bits"]["model_up"],
                "down_client": comm["per_client_bits"]["model_down"],
                # runs from before model_parameters was logged: a plain broadcast's size
                "params": comm.get("model_parameters") or comm["per_client_bits"][
                    "model_down"] // 32,
                "round_seconds": statistics.median(seconds) if seconds else None,
                "update_nmse": statistics.fmean(nmse) if nmse else None})
    return runs


def summarise(runs: list[dict]) -> list[dict]:
    """One row per method, against the baseline runs of the same seeds."""
    baseline = {r["seed"]: r for r in runs if r["method"] == "mean"}
    if not baseline:
        sys.exit("error: the experiment has no aggregator=mean run to compare with. Fix: "
                 "include aggregator=mean in the sweep")
    groups = defaultdict(list)
    for r in runs:
        groups[r["method"]].append(r)
    rows = []
    for method, group in groups.items():
        paired = [(r, baseline[r["seed"]]) for r in group if r["seed"] in baseline]
        accuracies = [r["accuracy"] for r in group]
        first = group[0]
        base = next(iter(baseline.values()))
        rows.append({
            "method": method, "seeds": len(group),
            "up_bits_per_round": statistics.fmean(r["up"] for r in group),
            "down_bits_per_round": statistics.fmean(r["down"] for r in group),
            "up_bits_per_coord": first["up_client"] / first["params"],
            "down_bits_per_coord": first["down_client"] / first["params"],
            "up_ratio": base["up_client"] / first["up_client"],
            "down_ratio": base["down_client"] / first["down_client"],
            "accuracy": statistics.fmean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "accuracy_delta": statistics.fmean(100 * (r["accuracy"] - b["accuracy"])
                                               for r, b in paired) if paired else None,
            "time_ratio": statistics.fmean(r["round_seconds"] / b["round_seconds"]
                                           for r, b in paired) if paired else None,
            "update_nmse": first["update_nmse"] and statistics.fmean(
                r["update_nmse"] for r in group),
            "cumulative_up_bits": statistics.fmean(r["up"] * r["rounds"] for r in group)})
    return sorted(rows, key=lambda r: -r["up_bits_per_coord"])


COLUMNS = [("method", "method", "{}"), ("seeds", "seeds", "{}"),
           ("up_bits_per_round", "up bits/round", "{:,.0f}"),
           ("down_bits_per_round", "down bits/round", "{:,.0f}"),
           ("up_bits_per_coord", "up bits/coord", "{:.3f}"),
           ("down_bits_per_coord", "down bits/coord", "{:.3f}"),
           ("up_ratio", "up ratio", "{:.2f}x"), ("down_ratio", "down ratio", "{:.2f}x"),
           ("accuracy", "eval acc", "{:.4f}"), ("accuracy_std", "+-", "{:.4f}"),
           ("accuracy_delta", "d acc (pts)", "{:+.2f}"), ("time_ratio", "time ratio", "{:.2f}"),
           ("update_nmse", "update nmse", "{:.3f}")]


def _cell(row: dict, key: str, spec: str) -> str:
    return "-" if row.get(key) is None else spec.format(row[key])


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, k, s) for k, _, s in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Final accuracy against cumulative uplink bits (log scale), one point per uplink
    method (runs with a compressing distributor sit on their uplink twin: left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in (r for r in rows if "+" not in r["method"]):
        ax.errorbar(r["cumulative_up_bits"], r["accuracy"], yerr=r["accuracy_std"], fmt="o",
                    capsize=3)
        ax.annotate(f"{r['method']} ({r['up_ratio']:.0f}x)", (r["cumulative_up_bits"],
                                                             r["accuracy"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bits (all clients, all rounds; log scale)")
    ax.set_ylabel("final eval accuracy (mean +- sd over seeds)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}"))
    parser.add_argument("--experiment", default="compression_methods")
    parser.add_argument("--plot", type=Path, help="save the rate-accuracy plot (PNG) here")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = summarise(collect(args.tracking_uri, args.experiment))
    table = markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(rows, args.plot, f"rate vs accuracy: {args.experiment}")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
