"""The report's statistics: t intervals over seeds that cover what they claim, paired
differences told apart from noise, rounds and bits to target with their spread."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federated_research.intervals import t_interval
from federated_research.report import NOT_DISTINGUISHABLE, Run, markdown, summarise


def test_the_t_interval_is_students_and_one_value_has_none():
    # 1, 2, 3: mean 2, sd 1; t(0.975, 2 df) = 4.303 in every printed t table
    got = t_interval([1.0, 2.0, None, 3.0])
    assert got.n == 3 and got.mean == 2.0
    assert got.half_width == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert got.excludes_zero is False  # [-0.48, 4.48]
    assert t_interval([2.0, 3.0, 4.0]).excludes_zero is True  # [0.52, 5.48]
    one = t_interval([0.7])
    assert (one.mean, one.low, one.high, one.excludes_zero) == (0.7, None, None, None)
    assert t_interval([None]) is None


@pytest.mark.parametrize("n", [2, 3, 5])
def test_the_interval_covers_the_true_mean_95_times_in_100(n):
    """Over 4,000 draws of n normal values, the 95% interval holds the true mean in
    95% of them (binomial sd 0.34%: the band below is 4.4 sd wide on each side)."""
    rng = np.random.default_rng(n)
    draws = rng.normal(0.3, 2.0, size=(4000, n))
    covered = [(i := t_interval(row)).low <= 0.3 <= i.high for row in draws]
    assert 0.935 < np.mean(covered) < 0.965


def _run(seed: int, aggregator: str, curve: dict[int, float], bits: float) -> Run:
    return Run(run_id=f"{aggregator}{seed}", name="", seed=str(seed),
               params={"aggregator._target_": aggregator, "rounds": "4"},
               choices={"aggregator": aggregator}, accuracy=curve,
               up={s: bits * (s + 1) for s in curve}, down={}, round_seconds={},
               update_nmse=[])


def test_the_report_pairs_seeds_gives_intervals_and_marks_what_noise_explains():
    base = [[0.50, 0.80, 0.90, 0.91], [0.50, 0.70, 0.89, 0.92], [0.60, 0.85, 0.90, 0.93]]
    close = [[0.40, 0.70, 0.88, 0.915], [0.45, 0.75, 0.90, 0.915], [0.50, 0.80, 0.91, 0.925]]
    worse = [[0.30, 0.50, 0.70, 0.80], [0.40, 0.60, 0.88, 0.82], [0.35, 0.55, 0.75, 0.81]]
    runs = [_run(seed, name, dict(enumerate(curve)), bits)
            for name, curves, bits in (("mean", base, 100.0), ("topk", close, 10.0),
                                       ("drive", worse, 5.0))
            for seed, curve in enumerate(curves)]
    rows, _ = summarise(runs, target=0.85)
    by = {r["config"]: r for r in rows}
    # topk against mean, seed by seed: +0.5, -0.5, -0.5 points
    want = t_interval([0.5, -0.5, -0.5])
    assert by["topk"]["accuracy_delta"] == pytest.approx(want.mean)
    assert by["topk"]["accuracy_delta_ci"] == pytest.approx([want.low, want.high])
    assert by["topk"]["distinguishable"] is False and by["topk"]["delta_pairs"] == 3
    assert by["drive"]["distinguishable"] is True  # -11, -10, -12 points
    assert by["drive"]["accuracy_delta_ci"][1] < 0
    # rounds to 0.85: mean reached it after 3, 3 and 2 rounds; drive once, after 3
    assert by["mean"]["rounds_to_target"] == pytest.approx(8 / 3)
    assert by["mean"]["rounds_to_target_std"] == pytest.approx(np.std([3, 3, 2], ddof=1))
    assert by["drive"]["rounds_to_target"] == 3 and by["drive"]["reached_target"] == 1
    assert by["drive"]["bits_to_target"] == 15.0 and by["drive"]["bits_to_target_std"] is None
    assert by["topk"]["bits_to_target"] == pytest.approx(np.mean([30.0, 30.0, 30.0]))
    table = markdown(rows, {"target": 0.85, "budget": 100.0}).splitlines()
    line = {row.split(" | ")[0].lstrip("| "): row for row in table if row.startswith("| ")}
    assert NOT_DISTINGUISHABLE in line["topk"] and NOT_DISTINGUISHABLE not in line["drive"]
    assert "| 3 (1/3 seeds) |" in line["drive"]  # rounds to target: one seed reached it
    assert "Student's t" in table[0]


def test_one_seed_gives_a_difference_without_an_interval():
    runs = [_run(0, "mean", {0: 0.5, 1: 0.9}, 100.0), _run(0, "topk", {0: 0.4, 1: 0.8}, 1.0)]
    rows, _ = summarise(runs, target=0.85)
    topk = next(r for r in rows if r["config"] == "topk")
    assert topk["accuracy_delta"] == pytest.approx(-10.0)
    assert topk["accuracy_delta_ci"] == [None, None] and topk["distinguishable"] is None
    line = next(row for row in markdown(rows, {"target": 0.85, "budget": 1.0}).splitlines()
                if row.startswith("| topk"))
    assert "| -10.00 | - |" in line


def test_the_report_says_whether_the_baseline_was_still_rising():
    """Gain over the last quarter of the rounds (8 evaluations: the last minus the 6th),
    with its interval: a baseline still rising is named, as 'as good as mean' means
    little before mean has plateaued."""
    rising = [[0.5, 0.6, 0.7, 0.8, 0.85, 0.87, 0.89, 0.900],
              [0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.88, 0.885],
              [0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.90, 0.910]]
    flat = [[0.5, 0.6, 0.7, 0.8, 0.90, 0.910, 0.905, 0.911],
            [0.5, 0.6, 0.7, 0.8, 0.90, 0.905, 0.910, 0.903],
            [0.5, 0.6, 0.7, 0.8, 0.90, 0.900, 0.902, 0.902]]
    for curves, still in ((rising, True), (flat, False)):
        runs = [_run(seed, name, dict(enumerate(curve)), bits)
                for name, bits in (("mean", 100.0), ("topk", 10.0))
                for seed, curve in enumerate(curves)]
        rows, settings = summarise(runs, target=0.85)
        mean = next(r for r in rows if r["config"] == "mean")
        gains = [100 * (c[7] - c[5]) for c in curves]
        want = t_interval(gains)
        assert mean["late_gain"] == pytest.approx(want.mean)
        assert mean["late_gain_ci"] == pytest.approx([want.low, want.high])
        assert mean["rising"] is still
        table = markdown(rows, settings)
        assert ("still rising" in table) is still
        assert ("not told apart from the seeds' noise" in table) is not still
        line = next(row for row in table.splitlines() if row.startswith("| mean"))
        assert ("rising" in line) is still and f"{want.mean:+.2f} [" in line


def test_a_run_made_before_an_option_existed_pools_at_its_default_and_the_report_says_so():
    """qsgd's `norm` came after its seed-0 run: that run logged no `aggregator.norm`. At the
    option's default (conf/aggregator/qsgd.yaml: l2) it is the same configuration; at any
    other value it is not."""
    curve = {0: 0.5, 1: 0.8}
    base = [_run(seed, "mean", curve, 100.0) for seed in (0, 1, 2)]
    old = _run(0, "qsgd", curve, 5.0)
    later = [_run(seed, "qsgd", curve, 5.0) for seed in (1, 2)]
    for run in later:
        run.params["aggregator.norm"] = "l2"
    rows, settings = summarise([*base, old, *later], target=0.7)
    assert {r["config"]: r["seeds"] for r in rows} == {"mean": 3, "qsgd": 3}
    assert "aggregator.norm" not in old.params  # the caller's runs are left as they were
    assert "1 run(s) made before `aggregator.norm` existed" in markdown(rows, settings)

    later[0].params["aggregator.norm"] = "max"  # QSGDinf: another configuration
    rows, settings = summarise([*base, old, *later], target=0.7)
    assert sorted(r["seeds"] for r in rows) == [1, 2, 3]


def test_bits_a_coordinate_are_what_the_runs_sent_variable_length_codes_included():
    """On the FEMNIST-300 runs in docs/data (real runs, every round's bits logged): for a
    fixed-width message the figure is its declared per-client size over the parameters
    (comm_bits.json), reached from the logged totals; for the variable-length codes
    (qsgd's Elias codes, stc's Golomb-coded positions) it is what the codes took, far
    above the fixed part that comm_bits.json declares."""
    from federated_research import run_records
    from tests.conftest import REPO

    runs = run_records.load(REPO / "docs" / "data" / "compression_vs_baseline_emnist.jsonl.gz")
    rows, settings = summarise(runs)
    checked = set()
    for row in rows:
        run = next(r for r in runs if r.run_id == row["runs"][0])
        declared = run.per_client["model_up"] / run.parameters
        method = run.choices["aggregator"]
        if method in ("qsgd", "stc"):
            assert 2 * declared < row["up_bits_per_coord"] < 1.2, row["config"]
        else:
            assert row["up_bits_per_coord"] == pytest.approx(declared, rel=1e-9), row["config"]
        checked.add(method)
    assert {"mean", "drive", "qsgd", "stc", "powersgd"} <= checked


def test_the_plots_draw_each_configurations_95_percent_interval():
    """The Pareto plot's error bar and the rate-accuracy plot's band at the last round
    span the t interval over the seeds' final accuracies, not one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    from federated_research.report import _plot_pareto, _plot_rate_accuracy

    finals = {"mean": [0.90, 0.93, 0.91], "topk": [0.80, 0.86, 0.85]}
    runs = [_run(seed, name, {0: 0.5, 1: 0.7, 2: 0.8, 3: final}, bits)
            for name, bits in (("mean", 100.0), ("topk", 10.0))
            for seed, final in enumerate(finals[name])]
    rows, settings = summarise(runs, target=0.85)
    colors = {row["config"]: "C0" for row in rows}
    want = {name: t_interval(values) for name, values in finals.items()}
    assert want["mean"].half_width > 2 * np.std(finals["mean"], ddof=1)  # told apart

    pareto = _plot_pareto(rows, colors, "t").axes[0]
    bars = {}
    for container in pareto.containers:
        ((x, low), (_, high)), = container.lines[2][0].get_segments()
        bars[x] = (low, high)
    for row in rows:
        name = row["config"]
        assert bars[row["up_bits"]] == pytest.approx((want[name].low, want[name].high)), name

    by_label = {settings["labels"][k]: group for k, group in settings["configs"].items()}
    rate = _plot_rate_accuracy(rows, settings, by_label, colors, "t").axes[0]
    for row, band in zip(rows, rate.collections, strict=True):
        last_bits = 4 * (100.0 if row["config"] == "mean" else 10.0)
        ys = [y for x, y in band.get_paths()[0].vertices if x == pytest.approx(last_bits)]
        name = row["config"]
        assert (min(ys), max(ys)) == pytest.approx((want[name].low, want[name].high)), name


def test_a_label_says_a_shared_setting_only_where_a_configuration_departs_from_it():
    def run(aggregator: str, seed: int, **params: str) -> Run:
        r = _run(seed, aggregator, {0: 0.5, 1: 0.9}, 10.0)
        r.params.update(params)
        return r

    lr = "server_optimizer.learning_rate"
    feedback = "aggregator.error_feedback"
    odd_one = [run("mean", 0, **{lr: "1"}), run("drive", 0, **{lr: "1"}),
               run("fetchsgd", 0, **{lr: "3"}), run("stc", 0, **{lr: "1", feedback: "none"}),
               run("stc", 0, **{lr: "1", feedback: "ef14"}),
               run("topk", 0, **{lr: "1", feedback: "none"})]
    rows, _ = summarise(odd_one)
    # an option's own key is said where that option runs with more than one value of it
    # (stc's default is ef14: a bare `stc` would mislead), whatever most configurations use
    assert {r["config"] for r in rows} == {"mean", "drive", "fetchsgd-server_lr3", "stc-none",
                                           "stc-ef14", "topk"}
    grid = [run(a, 0, **{lr: v}) for a in ("mean", "drive") for v in ("0.1", "1")]
    rows, _ = summarise(grid)  # no value is the usual one: every name says its rate
    assert {r["config"] for r in rows} == {"mean-server_lr0.1", "mean-server_lr1",
                                           "drive-server_lr0.1", "drive-server_lr1"}


def test_the_report_table_can_be_narrowed_to_the_columns_a_reader_needs(tmp_path, monkeypatch,
                                                                         capsys):
    """`compare_runs.py --columns` on the FEMNIST runs in docs/data: the report's table
    has the configuration and the columns asked for, in that order; an unknown column is
    refused in one line that lists the known ones."""
    import runpy
    import sys

    from tests.conftest import REPO

    def compare_runs(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["compare_runs.py", *args])
        try:
            runpy.run_path(str(REPO / "scripts" / "compare_runs.py"), run_name="__main__")
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else 1
        return 0

    data = str(REPO / "docs" / "data" / "compression_vs_baseline_emnist.jsonl.gz")
    assert compare_runs("--from", data, "--columns", "accuracy_delta_ci,up_ratio",
                        "--out", str(tmp_path)) == 0
    answer = (tmp_path / "report.md").read_text().split("Error feedback's gain")[0]
    table = [line for line in answer.splitlines() if line.startswith("| ")]
    assert table[0] == "| configuration | 95% CI (pts) | up ratio |"
    assert len(table) > 20 and all(line.count(" | ") == 2 for line in table)
    capsys.readouterr()
    assert compare_runs("--from", data, "--columns", "accuracy,bits") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no column bits; pass keys from: config, seeds, accuracy" in err


def test_a_crowded_pareto_plot_numbers_its_points_and_names_them_in_a_legend():
    import matplotlib

    matplotlib.use("Agg")
    from federated_research.report import NAMED_POINTS, _plot_pareto

    names = ["mean", *[f"m{i}" for i in range(NAMED_POINTS)]]
    runs = [_run(seed, name, {0: 0.5, 1: 0.8 + 0.01 * i + 0.002 * seed}, 100.0 / (i + 1))
            for i, name in enumerate(names) for seed in range(2)]
    rows, _ = summarise(runs)
    ax = _plot_pareto(rows, {r["config"]: "C0" for r in rows}, "t").axes[0]
    numbers = sorted(int(t.get_text()) for t in ax.texts)
    assert numbers == list(range(1, len(names) + 1))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    by_bits = sorted(rows, key=lambda r: -r["up_bits"])  # 1 is the most bits: the baseline
    for number, row in enumerate(by_bits, 1):
        assert f"{number}: {row['config']} ({row['up_ratio']:.0f}x)" in legend
    assert by_bits[0]["config"] == "mean"
