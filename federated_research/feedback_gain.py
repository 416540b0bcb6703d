"""Error feedback's gain in a sweep's report, and how it falls as clients return less often.

For every configuration with `aggregator.error_feedback` ef14 or ef21 (or PowerSGD's
true), the gain is its
final eval accuracy minus that of the same configuration without feedback, paired by
seed (points). Participation is clients_per_round / dataset.num_clients: a client is
sampled about once in 1/participation rounds, so its memory is that old when used.
A sweep over participation (`experiment=error_feedback_participation`) gets a plot of
the gain against it, `gain_vs_participation.png`; any sweep with feedback gets the table.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from federated_research.intervals import t_interval

FEEDBACK_KEY = "aggregator.error_feedback"
OFF = ("none", "false", "False")  # a method's feedback off (PowerSGD's is a bool), as logged


def _participation(params: dict, runs: list) -> float | None:
    """Clients a round over the population: `dataset.num_clients` when the config cuts
    the data into clients, else the training clients the runs logged
    (`data/train_clients`: a real federated dataset's writers)."""
    try:
        population = float(params["dataset.num_clients"])
    except (KeyError, ValueError):  # absent, or "None": the dataset's own clients
        population = next((r.train_clients for r in runs if r.train_clients), None)
    try:
        return float(params["clients_per_round"]) / population
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        return None


def feedback_gains(configs: dict, labels: dict) -> list[dict]:
    """One row per configuration with feedback that has a `none` twin: the gain, its
    spread over seeds and the participation."""
    by_key = dict(configs)
    rows = []
    for key, runs in configs.items():
        params = dict(key)
        kind = params.get(FEEDBACK_KEY)
        if kind is None or str(kind) in OFF:
            continue
        twin = next((t for t in (tuple(sorted({**params, FEEDBACK_KEY: off}.items()))
                                 for off in OFF) if t in by_key), None)
        if twin is None:
            continue
        base = {r.seed: r.final_accuracy for r in by_key[twin]}
        gains = [100 * (r.final_accuracy - base[r.seed]) for r in runs
                 if r.seed in base and r.final_accuracy is not None and base[r.seed] is not None]
        if not gains:
            continue
        interval = t_interval(gains)
        rows.append({"config": labels[key], "without": labels[twin], "feedback": kind,
                     "participation": _participation(params, runs), "seeds": len(gains),
                     "gain": statistics.fmean(gains),
                     "gain_std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
                     "gain_ci": [interval.low, interval.high],  # 95% t; None: one seed
                     "distinguishable": interval.excludes_zero,
                     "method": "-".join(t for t in labels[twin].split("-") if t not in OFF)})
    return sorted(rows, key=lambda r: (r["method"], r["feedback"], r["participation"] or 0))


def markdown(rows: list[dict]) -> str:
    lines = ["Error feedback's gain: final eval accuracy with it minus without it, paired "
             "by seed (points; +- is the standard deviation over seeds, 95% CI Student's t "
             "interval, n.s. where it holds 0).", "",
             "| with feedback | without | participation | seeds | gain (pts) | +- | 95% CI |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{r['participation']:.3g}" if r["participation"] else "-"
        low, high = r.get("gain_ci") or (None, None)
        ci = "-" if low is None else f"[{low:+.2f}, {high:+.2f}]" + (
            " n.s." if r.get("distinguishable") is False else "")
        lines.append(f"| {r['config']} | {r['without']} | {share} | {r['seeds']} | "
                     f"{r['gain']:+.2f} | {r['gain_std']:.2f} | {ci} |")
    return "\n".join(lines)


def _half(row: dict) -> float:
    low, high = row.get("gain_ci") or (None, None)
    return 0.0 if low is None else (high - low) / 2


def plot(rows: list[dict], out_dir: Path, title: str) -> Path | None:
    """gain_vs_participation.png, when the rows span more than one participation."""
    if len({r["participation"] for r in rows if r["participation"]}) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["participation"]:
            method = "-".join(t for t in r["method"].split("-")
                              if not t.startswith(("nclients", "clients")))
            series.setdefault((method, r["feedback"]), []).append(r)
    for (method, kind), points in sorted(series.items()):
        points.sort(key=lambda r: r["participation"])
        ax.errorbar([p["participation"] for p in points], [p["gain"] for p in points],
                    yerr=[_half(p) for p in points], marker="o", capsize=3,
                    label=f"{method} + {kind}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("participation: clients a round / population (log scale)")
    ax.set_ylabel("accuracy gain of error feedback (points, mean, 95% t interval)")
    ax.set_title(f"{title}: error feedback against staleness")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "gain_vs_participation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
