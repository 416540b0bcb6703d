#!/usr/bin/env python3
"""Development tool: the table, plots and verdicts of a comparison for docs/results.md.
Not part of the public contract.

    .venv/bin/python scripts/dev/results_section.py \
        docs/data/compression_vs_baseline_mnist.jsonl.gz mnist "embedded MNIST" > section.md

Reads an export (compare_runs.py --export), writes the Pareto, rate-accuracy and
accuracy-by-round plots to docs/images/compression_vs_baseline_<slug>_*.png, and prints
the markdown a results section is built around: the table with the paired 95% t
intervals, each configuration sorted into what its interval allows one to say against
`mean` (told apart from it or not, within a point or not), the two issue-19 goals
(64x fewer uplink bits; 32x up and 8x down, each within a point of `mean`), and the
error-feedback gains. The prose around it (setup, caveats) is written by hand: this
only keeps the numbers and the verdicts in step with the data file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from federated_research import feedback_gain, run_records  # noqa: E402
from federated_research.report import markdown, summarise, write_report  # noqa: E402

COLUMNS = ["seeds", "accuracy", "accuracy_std", "accuracy_delta", "accuracy_delta_ci",
           "late_gain", "up_ratio", "down_ratio", "up_bits_per_coord", "rounds_to_target",
           "time_ratio"]
VERDICTS = {
    "within": "Not told apart from `mean`, the whole interval within a point:",
    "better": "Better than `mean` beyond the noise:",
    "close": "Worse than `mean` beyond the noise, by less than a point (whole interval):",
    "worse": "Worse than `mean` beyond the noise, possibly by more than a point:",
    "wide": "Not told apart from `mean`, but the interval is too wide to say it is "
            "within a point:",
    "one": "One seed so far, no interval:",
}


def verdict(row: dict) -> str | None:
    """Which of VERDICTS the paired interval supports (None for the baseline itself)."""
    if row["config"] == row["baseline"]:
        return None
    ci = row["accuracy_delta_ci"]
    if not ci or None in ci:
        return "one"
    low, high = ci
    if row["distinguishable"]:
        if row["accuracy_delta"] > 0:
            return "better"
        return "close" if low >= -1 else "worse"
    return "within" if low >= -1 and high <= 1 else "wide"


def _ci(row: dict) -> str:
    ci = row["accuracy_delta_ci"]
    text = f"{row['accuracy_delta']:+.2f}"
    if ci and None not in ci:
        text += " [{:+.2f}, {:+.2f}]".format(*ci)
        text += " n.s." if not row["distinguishable"] else ""
    return text + f" ({row['seeds']} seeds)"


def goals(rows: list[dict]) -> list[str]:
    """The best configuration against each goal of issue 19, with its interval."""
    lines = []
    for label, up, down in (("64x or more fewer uplink bits", 64, 0),
                            ("32x up and 8x down", 32, 8)):
        arms = [r for r in rows if r["config"] != r["baseline"] and r["up_ratio"]
                and r["up_ratio"] >= up and (r["down_ratio"] or 1) >= down]
        if not arms:
            lines.append(f"* **{label}:** no configuration of this study has those ratios.")
            continue
        held = [r for r in arms if verdict(r) in ("within", "better", "close")]
        best = max(held or arms, key=lambda r: (r["accuracy_delta_ci"] or [-99])[0])
        state = "met" if held else "not met"
        lines.append(f"* **{label}, within a point of `mean` ({state}):** `{best['config']}` "
                     f"({best['up_ratio']:.1f}x up, {best['down_ratio']:.1f}x down) ends at "
                     f"{_ci(best)} points.")
    return lines


def summarised_study(study: str, columns: list[str], plots: tuple[str, ...], doc: str):
    """The command line every section tool shares (exports, slug, name, --images): the
    pooled runs, the report's rows and settings; `plots` copied to
    <images>/<study>_<slug>_<plot>.png."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("export", type=Path, nargs="+")
    parser.add_argument("slug", help=f"the images' suffix: {study}_<slug>_*")
    parser.add_argument("name", help="the dataset's name in the plots' titles")
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    runs = run_records.pool([run_records.load(p) for p in args.export])
    rows, settings = summarise(runs)
    settings["columns"] = columns
    with tempfile.TemporaryDirectory() as tmp:
        write_report(rows, settings, Path(tmp), title=f"{study}, {args.name}")
        for plot in plots:
            shutil.copy(Path(tmp) / f"{plot}.png", args.images / f"{study}_{args.slug}_{plot}.png")
    return runs, rows, settings


def main() -> None:
    runs, rows, settings = summarised_study(
        "compression_vs_baseline", COLUMNS, ("pareto", "rate_accuracy", "accuracy_vs_round"),
        __doc__)
    table = [line for line in markdown(rows, settings).splitlines() if line.startswith("|")]
    print("\n".join(table))
    print()
    print("\n".join(goals(rows)))
    for key, text in VERDICTS.items():
        names = [f"`{r['config']}`" for r in rows if verdict(r) == key]
        if names:
            print(f"* **{text}** {', '.join(names)}.")
    base = next((r for r in rows if r["config"] == r["baseline"]), None)
    if base and base["late_gain_ci"] and None not in base["late_gain_ci"]:
        state = "still rising" if base["rising"] else "not told apart from a plateau"
        print("* **`mean` over its last quarter of rounds:** {:+.2f} points [{:+.2f}, {:+.2f}], "
              "{}.".format(base["late_gain"], *base["late_gain_ci"], state))
    gains = feedback_gain.feedback_gains(settings["configs"], settings["labels"])
    if gains:
        print()
        print(feedback_gain.markdown(gains))
    print(f"\n{len(runs)} runs, {len(rows)} configurations.", file=sys.stderr)


if __name__ == "__main__":
    main()
