#!/usr/bin/env python3
"""Development tool: the table, plots and paired verdicts of the privacy study for
docs/results.md. Not part of the public contract.

    .venv/bin/python scripts/dev/privacy_section.py \
        docs/data/privacy_vs_compression_femnist.jsonl.gz femnist "FEMNIST-300"

Reads an export (compare_runs.py --export), writes the privacy and accuracy-by-round
plots to docs/images/privacy_vs_compression_<slug>_*.png and prints the markdown the
section is built around: the report's table (with epsilon), then three sets of
differences paired by seed with their 95% t intervals, in points of final eval accuracy
(and again on the mean of the last five evaluations, steadier under heavy noise):
what each privacy level costs a compressor (against the same compressor without
privacy), what each compressor costs under each privacy level (against `mean` at the
same level), and distributed DP at each ring width against central DP at the same
epsilon (issue 20's goal: within a point at 16 bits or fewer).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from federated_research.intervals import t_interval  # noqa: E402
from federated_research.report import markdown, privacy_level  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from results_section import summarised_study  # noqa: E402

COLUMNS = ["seeds", "accuracy", "accuracy_std", "accuracy_delta", "accuracy_delta_ci",
           "late_gain", "up_bits_per_coord", "up_ratio", "update_nmse", "time_ratio", "epsilon"]
CENTRAL = "dp_fixed noise 0.5"  # the central-DP level distributed DP is calibrated to
TAIL = 5  # evaluations averaged at the end (rounds 160-199 at eval_every 10)


def compressor(run) -> str:
    option = run.choices.get("aggregator", "mean")
    bits = run.params.get("aggregator.bits")
    return f"{option} {bits} bits" if option == "rotated_quantize" and bits else option


def tail_accuracy(run, evaluations: int = TAIL) -> float | None:
    """The mean of the run's last `evaluations` eval accuracies: under heavy noise one
    evaluation moves by points from round to round; five of them move much less."""
    steps = sorted(run.accuracy)[-evaluations:]
    return sum(run.accuracy[s] for s in steps) / len(steps) if steps else None


def cells(runs, value=lambda run: run.final_accuracy) -> dict[tuple[str, str], dict]:
    """(privacy level, compressor) -> {seed: value(run)}: final eval accuracy by default."""
    table: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for run in runs:
        if value(run) is not None:
            table[privacy_level(run), compressor(run)][run.seed] = value(run)
    return table


def paired(a: dict[str, float], b: dict[str, float]) -> str:
    """a - b in points, paired by seed, with its 95% t interval."""
    seeds = sorted(set(a) & set(b))
    interval = t_interval(100 * (a[s] - b[s]) for s in seeds)
    if interval is None:
        return "-"
    text = f"{interval.mean:+.2f}"
    if interval.low is not None:
        text += f" [{interval.low:+.2f}, {interval.high:+.2f}]"
        text += "" if interval.excludes_zero else " n.s."
    return text + f" ({len(seeds)} seeds)"


def comparisons(table) -> list[str]:
    levels = sorted({lv for lv, _ in table}, key=lambda lv: (lv != "none", lv))
    comps = sorted({c for _, c in table}, key=lambda c: (c != "mean", c))
    lines = ["What each privacy level costs (against the same compressor without privacy):",
             "", "| privacy | " + " | ".join(comps) + " |",
             "|---|" + "---|" * len(comps)]
    for level in levels[1:]:
        row = [paired(table[level, c], table["none", c]) if (level, c) in table else "-"
               for c in comps]
        lines.append(f"| {level} | " + " | ".join(row) + " |")
    lines += ["", "What each compressor costs at each privacy level (against `mean` at the "
              "same level):", "", "| privacy | " + " | ".join(comps[1:]) + " |",
              "|---|" + "---|" * (len(comps) - 1)]
    for level in levels:
        if any((level, c) in table for c in comps[1:]):
            row = [paired(table[level, c], table[level, "mean"]) if (level, c) in table
                   else "-" for c in comps[1:]]
            lines.append(f"| {level} | " + " | ".join(row) + " |")
    central = table.get((CENTRAL, "mean"))
    if central:
        lines += ["", f"Distributed DP against central DP at the same epsilon "
                  f"(`{CENTRAL}`, `mean`):", ""]
        for level in levels:
            if level.startswith("distributed_dp"):
                lines.append(f"* `{level}`: {paired(table[level, 'mean'], central)}")
    return lines


def main() -> None:
    runs, rows, settings = summarised_study("privacy_vs_compression", COLUMNS,
                                            ("privacy", "accuracy_vs_round"), __doc__)
    print("\n".join(line for line in markdown(rows, settings).splitlines()
                    if line.startswith("|")))
    print()
    print("\n".join(comparisons(cells(runs))))
    print(f"\nThe same, on the mean of each run's last {TAIL} evaluations:\n")
    print("\n".join(comparisons(cells(runs, tail_accuracy))))
    for row in rows:
        if row["config"] == row["baseline"] and row["late_gain_ci"] \
                and None not in row["late_gain_ci"]:
            print("\n* **`mean` over its last quarter of rounds:** {:+.2f} points "
                  "[{:+.2f}, {:+.2f}].".format(row["late_gain"], *row["late_gain_ci"]))
    print(f"\n{len(runs)} runs, {len(rows)} configurations.", file=sys.stderr)


if __name__ == "__main__":
    main()
