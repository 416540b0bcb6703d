"""The answer of a sweep: which configuration keeps accuracy, and how many bits it saves.

Reads finished runs from the MLflow store (the children of a sweep's parent run, or
every run of an experiment), groups them into configurations (every param but the
seed), and compares each with its uncompressed baseline: the `aggregator=mean` +
`distributor=plain` configuration that agrees with it on everything else (the same
learning rates, rounds, data...). Per configuration, over its seeds:

  eval acc, +-        final eval accuracy: mean and standard deviation over seeds
  d acc (pts)         mean over seeds of (run - baseline run of the same seed), in points
  95% CI (pts)        Student's t interval of that paired mean (intervals.py); `n.s.`
                      where it holds 0: not told apart from the baseline
  gain, last 25%      points gained over the last quarter of the rounds, with `rising`
                      where its interval is above 0 (not plateaued)
  up/down bits        cumulative bits, all clients and rounds (mean over seeds)
  up/down ratio       baseline bits / these bits (how many times fewer)
  up bits/coord       bits one client uploads a round / model parameters, over
                      the run (measured, for variable-length codes)
  bits to target      cumulative uplink bits when eval accuracy first reached the target
                      (mean over the seeds that reached it, `(k/n seeds)` if not all did)
  rounds to target    rounds trained by then (+- their standard deviation over seeds;
                      as fine as `eval_every`)
  acc at budget       the last eval accuracy logged within the uplink budget
  time ratio          median round seconds / the baseline's (same seed), mean over seeds
  update nmse         mean over rounds of comm/update_nmse (the aggregate's error)

Plots (PNG): accuracy against round, accuracy against cumulative uplink bits (the
rate-accuracy curve) and the Pareto front of final accuracy against uplink bits.
`report_parent` also logs the table and plots as artifacts of the parent run and puts
the table in its description, so the MLflow UI shows the answer.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from federated_research import feedback_gain
from federated_research.flat import flatten
from federated_research.intervals import spread, t_interval
from federated_research.tracking.mlflow_sink import store_call
from federated_research.tracking.sweep import (
    PARENT_TAG,
    SweepInfo,
    all_experiments,
    key_value_label,
)

GROUPS = ("dataset", "model", "aggregator", "distributor", "privacy", "algorithm",
          "client_optimizer", "server_optimizer")


# Params of groups added after runs were stored, at the value that changes nothing.
ABSENT_DEFAULTS = {"privacy._target_": "federated_research.privacy.none.NoPrivacy"}


class ReportError(Exception):
    """Nothing to report on (no such experiment or parent run, no finished run)."""


@dataclass
class Run:
    run_id: str
    name: str
    seed: str
    params: dict[str, str]
    choices: dict[str, str]
    accuracy: dict[int, float]          # eval/accuracy by round
    up: dict[int, float]                # comm/aggregated_bits_cumulative by round
    down: dict[int, float]
    round_seconds: dict[int, float]
    update_nmse: list[float]
    per_client: dict[str, int] = field(default_factory=dict)
    parameters: int | None = None
    train_clients: int | None = None    # the population clients are sampled from
    # federated evaluation (fed_eval/*): pooled accuracy, and the per-client spread
    fed_eval: dict[str, dict[int, float]] = field(default_factory=dict)
    epsilon: float | None = None        # privacy/epsilon at the last round (DP runs)

    @property
    def final_accuracy(self) -> float | None:
        return self.accuracy[max(self.accuracy)] if self.accuracy else None

    @property
    def config_key(self) -> tuple:
        """Every param but the seeds, where the run was tracked and where it ran (the
        runtime: local or sharded train the same model); a group added later
        at its do-nothing default (`privacy=none`) counts as absent, so a run made
        before the group existed pools with one made after."""
        return tuple(sorted((k, v) for k, v in self.params.items()
                            if not (k == "seed" or k.endswith(".seed")
                                    or k.startswith(("tracking.", "runtime."))
                                    or ABSENT_DEFAULTS.get(k) == v)))

    @property
    def is_baseline(self) -> bool:
        return (self.choices.get("aggregator") == "mean"
                and self.choices.get("distributor", "plain") == "plain"
                and self.choices.get("privacy", "none") == "none")

    def median_round_seconds(self) -> float | None:
        later = [v for s, v in sorted(self.round_seconds.items()) if s > 0]
        return statistics.median(later) if later else self.round_seconds.get(0)

    def _first_reached(self, target: float) -> int | None:
        """The step at which the accuracy first reached `target` (None: never)."""
        return next((s for s, a in sorted(self.accuracy.items()) if a >= target), None)

    def bits_to(self, target: float) -> float | None:
        step = self._first_reached(target)
        return None if step is None else self.up.get(step)

    def rounds_to(self, target: float) -> int | None:
        """Rounds trained when the accuracy first reached `target` (None: never)."""
        step = self._first_reached(target)
        return None if step is None else step + 1

    def late_gain(self, fraction: float = 0.25) -> float | None:
        """Points of accuracy gained over the last `fraction` of the rounds: near 0 once
        the run has plateaued (None: no evaluation that early)."""
        if not self.accuracy:
            return None
        last = max(self.accuracy)
        cut = (last + 1) * (1 - fraction) - 1
        earlier = [s for s in self.accuracy if s <= cut]
        return 100 * (self.accuracy[last] - self.accuracy[max(earlier)]) if earlier else None

    def up_bits_per_coordinate(self) -> float | None:
        """Uplink model bits a client sent a round, per model parameter, averaged over
        the run: its cumulative comm/aggregated_bits over (rounds x clients a round x
        parameters). For a fixed-width message that is its declared size; for a
        variable-length code (qsgd, stc) it is what the codes really took, which the
        fixed part in comm_bits.json leaves out."""
        clients = self.params.get("clients_per_round")
        if not (self.up and self.parameters and clients):
            return None
        return self.up[max(self.up)] / ((max(self.up) + 1) * int(clients) * self.parameters)

    def accuracy_within(self, budget: float) -> float | None:
        inside = [s for s in sorted(self.accuracy) if self.up.get(s, float("inf")) <= budget]
        return self.accuracy[inside[-1]] if inside else None


FED_EVAL_CURVES = ("accuracy", "client_accuracy_p10", "client_accuracy_p90")


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _load(client, mlflow_run, tmp: str) -> Run:
    run_id, tags = mlflow_run.info.run_id, mlflow_run.data.tags
    record = Run(
        run_id=run_id, name=mlflow_run.info.run_name, seed=tags.get("seed", "0"),
        params=dict(mlflow_run.data.params),
        choices={g: tags[g] for g in GROUPS if g in tags},
        accuracy=_history(client, run_id, "eval/accuracy"),
        up=_history(client, run_id, "comm/aggregated_bits_cumulative"),
        down=_history(client, run_id, "comm/broadcasted_bits_cumulative"),
        round_seconds=_history(client, run_id, "time/round_seconds"),
        update_nmse=list(_history(client, run_id, "comm/update_nmse").values()),
        fed_eval={key: _history(client, run_id, f"fed_eval/{key}") for key in FED_EVAL_CURVES},
        train_clients=_int(mlflow_run.data.metrics.get("data/train_clients")),
        epsilon=mlflow_run.data.metrics.get("privacy/epsilon"))
    try:
        comm = json.loads(Path(client.download_artifacts(run_id, "comm_bits.json",
                                                         tmp)).read_text())
        record.per_client = comm["per_client_bits"]
        record.parameters = comm.get("model_parameters")
    except Exception:  # noqa: BLE001 - runs from before the artifact existed
        pass
    return record


def load_runs(uri: str, experiment: str | None = None, parent: str | None = None,
              output_dir: str | None = None) -> tuple[list[Run], str | None]:
    """FINISHED runs of a parent run (`parent`: a run id, or `last` for the newest
    sweep of `experiment`) or of an experiment (`a,b`: of several); returns them and the
    parent's id."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    with store_call():
        client = MlflowClient(tracking_uri=uri)
        if parent and parent != "last":
            try:
                client.get_run(parent)
            except Exception as exc:  # noqa: BLE001 - MLflow's own "not found"
                raise ReportError(f"no run {parent} in {uri}") from exc
            experiment_ids = all_experiments(client)  # children may sit in other experiments
        else:  # one experiment, or several joined by commas (one preset's runs beside
            # another's, e.g. the participation sweep with the 10-of-40 runs it extends)
            experiment_ids = []
            for name in (experiment or "federated_research").split(","):
                found = client.get_experiment_by_name(name.strip())
                if found is None:
                    raise ReportError(f"no experiment {name.strip()!r} in {uri}")
                experiment_ids.append(found.experiment_id)
        if parent == "last":
            sweeps = client.search_runs(experiment_ids, "tags.run_type = 'sweep'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
            if not sweeps:
                raise ReportError(f"experiment {experiment!r} has no sweep (parent) run")
            parent = sweeps[0].info.run_id
        query = "attributes.status = 'FINISHED'"
        if parent:
            query += f" and tags.`{PARENT_TAG}` = '{parent}'"
        if output_dir:
            query += f" and tags.output_dir LIKE '{Path(output_dir).resolve()}%'"
        found_runs = [r for r in client.search_runs(experiment_ids, query, max_results=10000)
                      if r.data.tags.get("run_type") != "sweep"]
        with tempfile.TemporaryDirectory() as tmp:
            runs = [_load(client, r, tmp) for r in reversed(found_runs)]
    return runs, parent


def _labels(configs: dict[tuple, list[Run]]) -> dict[tuple, str]:
    """A name per configuration from what differs between them: `drive`, `lr0.1-mean`.
    A key outside the differing groups that most configurations share one value of is
    said only where it departs from it (`fetchsgd-server_lr3` beside `drive`, not
    `drive-server_lr1`), when the names stay distinct that way."""
    params = [dict(k) for k in configs]
    firsts = [runs[0] for runs in configs.values()]
    groups = [g for g in GROUPS if len({r.choices.get(g) for r in firsts}) > 1]
    short = _label_parts(params, firsts, groups, _usual_values(params))
    if len(set(short)) == len(short):
        return dict(zip(configs, short, strict=True))
    return dict(zip(configs, _label_parts(params, firsts, groups, {}), strict=True))


def _usual_values(params: list[dict]) -> dict[str, str]:
    """Each key's value that more configurations have than any other value."""
    usual = {}
    for n in {n for p in params for n in p}:
        counts = collections.Counter(p.get(n) for p in params).most_common(2)
        if len(counts) > 1 and counts[0][1] > counts[1][1]:
            usual[n] = counts[0][0]
    return usual


def _label_parts(params: list[dict], firsts: list[Run], groups: list[str],
                 usual: dict[str, str]) -> list[str]:
    names = sorted({n for p in params for n in p})
    differing = [n for n in names if len({p.get(n) for p in params}) > 1]
    labels = []
    for p, first in zip(params, firsts, strict=True):
        chosen = {g: first.choices.get(g, "none" if g == "privacy" else "?") for g in groups}
        parts = [chosen[g] for g in groups  # (a run from before `privacy` had none)
                 if (g, chosen[g]) not in (("distributor", "plain"), ("privacy", "none"))]
        # Keys under a group whose option differs are said by the option, unless they
        # also differ between configurations of the same option of that group (topk at
        # 1% and 0.1%; eden at 1 bit, and at 0.95 with a compressing downlink).
        def varies_within_option(n: str, first=first) -> bool:
            group = n.split(".")[0]
            return len({q.get(n) for q, f in zip(params, firsts, strict=True)
                        if f.choices.get(group) == first.choices.get(group)}) > 1

        shown = [n for n in differing if not n.endswith("._target_") and (
            n.split(".")[0] not in groups or varies_within_option(n))]
        for n in shown:  # an option's key is always said: its default is the option's
            if n.split(".")[0] in groups or n not in usual or p.get(n) != usual[n]:
                parts.append(key_value_label(n, _number(p.get(n, "-")), shown))
        labels.append("-".join(parts) or first.choices.get("aggregator", "run"))
    return labels


def _number(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _baseline_key(key: tuple, configs: dict[tuple, list[Run]]) -> tuple | None:
    """The mean+plain configuration equal to `key` outside the aggregator/distributor."""
    def rest(k: tuple) -> tuple:
        return tuple(kv for kv in k if not kv[0].startswith(("aggregator.", "distributor.")))

    candidates = [k for k, runs in configs.items() if runs[0].is_baseline]
    same = [k for k in candidates if rest(k) == rest(key)]
    if same:
        return same[0]
    me = configs[key][0]
    loose = [k for k in candidates if all(configs[k][0].params.get(n) == me.params.get(n)
                                          for n in ("rounds", "dataset._target_",
                                                    "model._target_", "clients_per_round"))]
    return loose[0] if loose else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _option_defaults(group: str, choice: str) -> dict[str, str]:
    """`<group>.<option>` -> its default, as a logged param, from conf/<group>/<choice>.yaml."""
    import yaml

    from federated_research.config import CONF_DIR

    path = CONF_DIR / group / f"{choice}.yaml"
    if not path.is_file():
        return {}
    options = yaml.safe_load(path.read_text()) or {}
    options.pop("defaults", None)
    return {key: str(value) for key, value in flatten({group: options}).items()
            if not isinstance(value, list)}


def at_new_defaults(runs: list[Run]) -> tuple[list[Run], dict[str, int]]:
    """Runs made before one of their method's options existed have no param for it, so
    they would stand apart from the later runs of the same configuration. Where another
    run of the same group choice logged that option, the older run gets the option's
    default from its YAML: a new option's default is what the code did before it existed
    (so the older run pools with the later runs at the default, and only with them).
    Returns new runs (the given ones are not changed) and how many runs each filled
    option concerned, for the report to say."""
    logged: dict[tuple[str, str], set[str]] = defaultdict(set)
    for run in runs:
        for group in ("aggregator", "distributor"):
            logged[group, run.choices.get(group, "")] |= {
                k for k in run.params if k.startswith(f"{group}.")}
    filled: dict[str, int] = defaultdict(int)
    out = []
    for run in runs:
        params = dict(run.params)
        for group in ("aggregator", "distributor"):
            choice = run.choices.get(group)
            if not choice:
                continue
            missing = logged[group, choice] - set(params)
            for key, default in _option_defaults(group, choice).items():
                if key in missing:
                    params[key] = default
                    filled[key] += 1
        out.append(dataclasses.replace(run, params=params) if params != run.params else run)
    return out, dict(filled)


def summarise(runs: list[Run], target: float | None = None,
              budget: float | str = "25%") -> tuple[list[dict], dict]:
    """One row per configuration; returns the rows and the target and budget used."""
    if not runs:
        raise ReportError("no FINISHED run to report on")
    runs, filled = at_new_defaults(runs)
    configs: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        configs[run.config_key].append(run)
    labels = _labels(configs)
    baselines = {k: _baseline_key(k, configs) for k in configs}
    base_runs = [r for k in set(baselines.values()) if k is not None for r in configs[k]]
    if target is None:  # 95% of the baseline's final accuracy (of the best config without one)
        reference = _mean(r.final_accuracy for r in base_runs) or max(
            (_mean(r.final_accuracy for r in rs) or 0.0 for rs in configs.values()), default=0.0)
        target = round(0.95 * reference, 3)
    if isinstance(budget, str) and budget.endswith("%"):
        total = _mean(r.up[max(r.up)] for r in base_runs if r.up) or max(
            (r.up[max(r.up)] for r in runs if r.up), default=0.0)
        budget = float(budget[:-1]) / 100 * total
    budget = float(budget)

    rows = []
    for key, group in configs.items():
        base = {r.seed: r for r in configs[baselines[key]]} if baselines[key] else {}
        paired = [(r, base[r.seed]) for r in group if r.seed in base]
        accuracies = [r.final_accuracy for r in group if r.final_accuracy is not None]
        up = _mean(r.up[max(r.up)] for r in group if r.up)
        down = _mean(r.down[max(r.down)] for r in group if r.down)
        base_up = _mean(b.up[max(b.up)] for b in base.values() if b.up)
        base_down = _mean(b.down[max(b.down)] for b in base.values() if b.down)
        to_target = [r.bits_to(target) for r in group]
        bits_spread = spread(to_target)
        rounds_spread = spread(r.rounds_to(target) for r in group)
        accuracy_ci = t_interval(accuracies)
        late = t_interval(r.late_gain() for r in group)
        delta = t_interval(100 * (r.final_accuracy - b.final_accuracy) for r, b in paired
                           if r.final_accuracy is not None and b.final_accuracy is not None
                           ) if baselines[key] != key else None  # a baseline: 0 by definition
        rows.append({
            "config": labels[key], "seeds": len(group), "runs": [r.run_id for r in group],
            "baseline": labels[baselines[key]] if baselines[key] else None,
            "accuracy": _mean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "accuracy_ci": [accuracy_ci.low, accuracy_ci.high] if accuracy_ci else None,
            # paired by seed with the baseline, in points, with its 95% t interval
            "accuracy_delta": delta.mean if delta else (0.0 if paired else None),
            "accuracy_delta_ci": [delta.low, delta.high] if delta else None,
            "delta_pairs": delta.n if delta else 0,
            # still rising? points gained over the last quarter of the rounds, 95% t interval
            "late_gain": late.mean if late else None,
            "late_gain_ci": [late.low, late.high] if late else None,
            "rising": late.excludes_zero and late.mean > 0 if late else None,
            "distinguishable": delta.excludes_zero if delta else None,
            "up_bits": up, "down_bits": down,
            "up_ratio": base_up / up if base_up and up else None,
            "down_ratio": base_down / down if base_down and down else None,
            "up_bits_per_coord": _mean(r.up_bits_per_coordinate() for r in group),
            "bits_to_target": bits_spread[0],  # over the seeds that reached it
            "bits_to_target_std": bits_spread[1],
            "rounds_to_target": rounds_spread[0], "rounds_to_target_std": rounds_spread[1],
            "reached_target": bits_spread[2],
            "accuracy_at_budget": _mean(r.accuracy_within(budget) for r in group)
            if all(r.accuracy_within(budget) is not None for r in group) else None,
            "time_ratio": _mean(r.median_round_seconds() / b.median_round_seconds()
                                for r, b in paired
                                if r.median_round_seconds() and b.median_round_seconds())
            if paired else None,
            "update_nmse": _mean(_mean(r.update_nmse) for r in group),
            "epsilon": _mean(r.epsilon for r in group if r.epsilon is not None),
            "privacy": privacy_level(group[0]),
            "rounds": max((max(r.accuracy) + 1 for r in group if r.accuracy), default=0)})
    rows.sort(key=lambda r: (-(r["up_bits"] or 0), r["config"]))
    return rows, {"target": target, "budget": budget, "configs": configs, "labels": labels,
                  "filled": filled, "private": any(r["privacy"] != "none" for r in rows)}


def privacy_level(run: Run) -> str:
    """`none`, or the privacy option with what sets its level: `dp_fixed noise 0.5`,
    `distributed_dp 16 bits target epsilon 1992.47` (the noise the target chose is
    not part of it)."""
    option = run.choices.get("privacy", "none")
    if option == "none":
        return option
    words = [option]
    for key, say in (("bits", "{} bits"), ("noise_multiplier", "noise {}"),
                     ("target_epsilon", "target epsilon {}")):
        value = run.params.get(f"privacy.{key}")
        if value not in (None, "None"):
            if key == "noise_multiplier" and run.params.get("privacy.target_epsilon") not in (
                    None, "None"):
                continue  # the target chose the noise
            words.append(say.format(value))
    return " ".join(words)


COLUMNS = [("config", "configuration", "{}"), ("seeds", "seeds", "{}"),
           ("accuracy", "eval acc", "{:.4f}"), ("accuracy_std", "+-", "{:.4f}"),
           ("accuracy_delta", "d acc (pts)", "{:+.2f}"),
           ("accuracy_delta_ci", "95% CI (pts)", "[{:+.2f}, {:+.2f}]"),
           ("late_gain", "gain, last 25% of rounds (pts)", "{:+.2f}"),
           ("up_bits", "up bits", "{:,.0f}"), ("down_bits", "down bits", "{:,.0f}"),
           ("up_ratio", "up ratio", "{:.2f}x"), ("down_ratio", "down ratio", "{:.2f}x"),
           ("up_bits_per_coord", "up bits/coord", "{:.3f}"),
           ("rounds_to_target", "rounds to target", "{:.0f}"),
           ("bits_to_target", "up bits to target", "{:,.0f}"),
           ("accuracy_at_budget", "acc at budget", "{:.4f}"),
           ("time_ratio", "time ratio", "{:.2f}"), ("update_nmse", "update nmse", "{:.3f}"),
           ("epsilon", "epsilon", "{:,.4g}")]
NOT_DISTINGUISHABLE = "n.s."  # the interval holds 0: not told apart from the baseline
RISING = "rising"  # its late gain's interval is above 0: not plateaued
SPREAD = {"rounds_to_target": ("rounds_to_target_std", "{:.0f}"),
          "bits_to_target": ("bits_to_target_std", "{:,.0f}")}


def _cell(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, list) and None in value):
        return "-"
    text = spec.format(*value) if isinstance(value, list) else spec.format(value)
    if key in SPREAD and row.get(SPREAD[key][0]) is not None:
        text += " +- " + SPREAD[key][1].format(row[SPREAD[key][0]])
    if key in SPREAD and row["reached_target"] < row["seeds"]:
        text += f" ({row['reached_target']}/{row['seeds']} seeds)"
    if key == "accuracy_delta_ci" and row.get("distinguishable") is False:
        text += " " + NOT_DISTINGUISHABLE
    if key == "late_gain" and row.get("late_gain_ci") and None not in row["late_gain_ci"]:
        text += " [{:+.2f}, {:+.2f}]".format(*row["late_gain_ci"])
        text += " " + (RISING if row["rising"] else "")
    return text.rstrip()


def plateau_note(rows: list[dict]) -> str:
    """Whether each baseline had stopped rising: a method is only "as good as `mean`"
    once `mean` itself has plateaued."""
    notes = []
    for row in rows:
        if row["baseline"] != row["config"] or row["late_gain"] is None:
            continue
        gain = f"`{row['config']}` gained {row['late_gain']:+.2f} pts over its last quarter"
        if row["rising"] is None:
            notes.append(f"{gain} (one seed: no interval).")
        elif row["rising"]:
            notes.append(f"{gain}, more than the seeds' noise: it is still rising, "
                         "so compare the methods at this budget of rounds, not at convergence.")
        else:
            notes.append(f"{gain}, not told apart from the seeds' noise "
                         f"({len(row['runs'])} seeds): these seeds cannot tell whether it "
                         "has plateaued; more seeds or rounds would.")
    return " ".join(notes)


def filled_note(settings: dict) -> str:
    """Which runs predate an option and were counted at its default (`at_new_defaults`)."""
    filled = settings.get("filled") or {}
    return " ".join(f"{n} run(s) made before `{key}` existed are counted at its default."
                    for key, n in sorted(filled.items()))


def shown_columns(settings: dict) -> list[tuple[str, str, str]]:
    """COLUMNS, or those `settings["columns"]` names (keys of COLUMNS), in their order:
    the configuration's name always first."""
    wanted = settings.get("columns")
    if not wanted:  # epsilon only where a run is private
        return [c for c in COLUMNS if c[0] != "epsilon" or settings.get("private")]
    return [c for c in COLUMNS if c[0] == "config"] + [
        c for key in wanted for c in COLUMNS if c[0] == key and key != "config"]


def markdown(rows: list[dict], settings: dict) -> str:
    columns = shown_columns(settings)
    note = " ".join(n for n in (plateau_note(rows), filled_note(settings)) if n)
    lines = [f"Target accuracy {settings['target']:.3f}; uplink budget "
             f"{settings['budget']:,.0f} bits. Ratios and d acc are against each "
             "configuration's `mean` baseline, paired by seed; 95% CI: Student's t "
             f"interval of the paired differences over the seeds ({NOT_DISTINGUISHABLE}: "
             "it holds 0, the difference is not told apart from noise; - with one seed). "
             "Rounds and bits to target: mean +- sd over the seeds that reached it, at "
             "the first evaluation that did (as fine as the runs' eval_every). "
             "Gain over the last 25% of rounds: mean [95% t interval] over the seeds.",
             *(["", note] if note else []), "",
             "| " + " | ".join(title for _, title, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, k, s) for k, _, s in columns) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[dict], settings: dict) -> str:
    """The same table for a terminal."""
    columns = shown_columns(settings)
    cells = [[title for _, title, _ in columns]]
    cells += [[_cell(r, k, s) for k, _, s in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [f"target accuracy {settings['target']:.3f}, uplink budget "
             f"{settings['budget']:,.0f} bits"]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("-" * len(lines[-1]))
    note = " ".join(n for n in (plateau_note(rows), filled_note(settings)) if n)
    return "\n".join(lines + ([note] if note else []))


def _curve(runs: list[Run], x_of, band: str = "sd") -> tuple[list[float], list[float],
                                                              list[float]]:
    """Mean over seeds of (x, accuracy) at the rounds every seed evaluated, and the
    band's half-width there: one standard deviation (`sd`) or the 95% t interval's
    (`ci`); 0 with one seed."""
    steps = sorted(set.intersection(*(set(r.accuracy) for r in runs)))
    xs = [statistics.fmean(x_of(r, s) for r in runs) for s in steps]
    ys = [statistics.fmean(r.accuracy[s] for r in runs) for s in steps]
    if band == "ci":
        half = [t_interval(r.accuracy[s] for r in runs).half_width for s in steps]
    else:
        half = [statistics.stdev([r.accuracy[s] for r in runs]) if len(runs) > 1 else 0.0
                for s in steps]
    return xs, ys, half


def plot(rows: list[dict], settings: dict, out_dir: Path, title: str) -> list[Path]:
    """accuracy_vs_round.png, rate_accuracy.png, pareto.png (and evaluation.png) in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    configs, labels = settings["configs"], settings["labels"]
    by_label = {labels[k]: runs for k, runs in configs.items()}
    colors = {row["config"]: plt.cm.tab10(i % 10) for i, row in enumerate(rows)}
    figures = {"accuracy_vs_round.png": _plot_accuracy_by_round(rows, settings, by_label,
                                                                colors, title),
               "rate_accuracy.png": _plot_rate_accuracy(rows, settings, by_label, colors, title),
               "pareto.png": _plot_pareto(rows, colors, title)}
    if settings.get("private"):
        figures["privacy.png"] = _plot_privacy(rows, title)
    paths = [_save(fig, out_dir / name) for name, fig in figures.items()]
    if any(r.fed_eval.get("accuracy") for runs in by_label.values() for r in runs):
        paths.append(_plot_evaluations(rows, by_label, colors, out_dir, title))
    return paths


def _plot_accuracy_by_round(rows, settings, by_label, colors, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        runs = [r for r in by_label[row["config"]] if r.accuracy]
        if not runs:
            continue
        xs, ys, sd = _curve(runs, lambda r, s: s + 1)
        ax.plot(xs, ys, marker="o", ms=3, color=colors[row["config"]], label=row["config"])
        ax.fill_between(xs, [y - d for y, d in zip(ys, sd, strict=True)],
                        [y + d for y, d in zip(ys, sd, strict=True)],
                        color=colors[row["config"]], alpha=0.12)
    ax.axhline(settings["target"], color="grey", ls=":", lw=1, label="target")
    ax.set_xlabel("rounds trained")
    ax.set_ylabel("eval accuracy (mean over seeds, band = +-1 sd)")
    ax.set_title(f"{title}: accuracy by round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def _plot_rate_accuracy(rows, settings, by_label, colors, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        runs = [r for r in by_label[row["config"]] if r.accuracy and r.up]
        if not runs:
            continue
        xs, ys, half = _curve(runs, lambda r, s: r.up.get(s, float("nan")), band="ci")
        ax.plot(xs, ys, marker="o", ms=3, color=colors[row["config"]], label=row["config"])
        ax.fill_between(xs, [y - h for y, h in zip(ys, half, strict=True)],
                        [y + h for y, h in zip(ys, half, strict=True)],
                        color=colors[row["config"]], alpha=0.12)
    ax.axvline(settings["budget"], color="grey", ls="--", lw=1, label="budget")
    ax.axhline(settings["target"], color="grey", ls=":", lw=1, label="target")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bits (all clients; log scale)")
    ax.set_ylabel("eval accuracy (mean over seeds, band = 95% t interval)")
    ax.set_title(f"{title}: rate-accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _plot_privacy(rows, title: str):
    """Final accuracy against uplink bits, one series per privacy level (its compressors
    joined, fewest bits first), each point with its 95% interval over the seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    levels: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["up_bits"] and row["accuracy"] is not None:
            levels[row["privacy"]].append(row)
    for i, (level, group) in enumerate(sorted(levels.items())):
        group.sort(key=lambda r: r["up_bits"])
        xs, ys = [r["up_bits"] for r in group], [r["accuracy"] for r in group]
        errs = [r["accuracy"] - r["accuracy_ci"][0]
                if r["accuracy_ci"] and r["accuracy_ci"][0] is not None else 0.0
                for r in group]  # one seed: no interval
        eps = next((r["epsilon"] for r in group if r["epsilon"] is not None), None)
        label = level + (f" (epsilon {eps:,.4g})" if eps is not None else "")
        ax.errorbar(xs, ys, yerr=errs, marker="o", ms=4, capsize=3, color=plt.cm.tab10(i % 10),
                    label=label)
        for row in group:
            ax.annotate(row["config"], (row["up_bits"], row["accuracy"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bits (all clients; log scale)")
    ax.set_ylabel("final eval accuracy (mean over seeds, bar = 95% t interval)")
    ax.set_title(f"{title}: accuracy against uplink bits, by privacy level")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


def _pareto_front(points: list[tuple]) -> list[tuple[float, float]]:
    """The (bits, accuracy) points no other point beats with fewer bits."""
    front, best = [], -1.0
    for bits, acc, _row in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((bits, acc))
            best = acc
    return front


NAMED_POINTS = 8  # more configurations than this: numbered points and a legend


def _plot_pareto(rows, colors, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11 if len(rows) > NAMED_POINTS else 8, 5))
    points = [(r["up_bits"], r["accuracy"], r) for r in rows
              if r["up_bits"] and r["accuracy"] is not None]
    front = _pareto_front(points)
    numbered = len(points) > NAMED_POINTS  # too many names to print beside their points
    accs = [a for _, a, _ in points] or [0.0]
    low_y = min(accs) - max(0.01, 0.15 * (max(accs) - min(accs)))
    high_y = max(accs) + 0.05 * (max(accs) - low_y)
    label_height = 0.025 * (high_y - low_y)  # in accuracy, at this figure's size
    labelled: list[tuple[float, float]] = []
    for number, (bits, acc, row) in enumerate(sorted(points, key=lambda p: -p[0]), 1):
        on_front = (bits, acc) in front
        low, high = row["accuracy_ci"] or [None, None]
        yerr = [[acc - low], [high - acc]] if low is not None else 0.0
        name = row["config"] + (f" ({row['up_ratio']:.0f}x)" if row["up_ratio"] else "")
        ax.errorbar(bits, acc, yerr=yerr, fmt="o" if on_front else "x",
                    color=colors[row["config"]], capsize=3,
                    label=f"{number}: {name}" if numbered else None)
        # labels of points that (nearly) coincide go one beside the other
        near = sum(abs(b / bits - 1) < 0.1 and abs(a - acc) < (
            label_height if numbered else 0.02) for b, a in labelled)
        labelled.append((bits, acc))
        ax.annotate(str(number) if numbered else name, (bits, acc), textcoords="offset points",
                    xytext=(5 + 11 * near, -3) if numbered else (5, 4 - 9 * near), fontsize=7)
    if numbered:  # the estimates in view; wider intervals run off the axes
        ax.set_ylim(low_y, high_y)
    if front:
        ax.step([b for b, _ in front], [a for _, a in front], where="post", color="black",
                lw=1, alpha=0.6, label="Pareto front (fewest bits for the accuracy)")
    if numbered:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif front:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bits (all clients, all rounds; log scale)")
    ax.set_ylabel("final eval accuracy (mean, 95% t interval over seeds)")
    ax.set_title(f"{title}: bits vs accuracy")
    ax.grid(alpha=0.3, which="both")
    return fig


def _plot_evaluations(rows, by_label, colors, out_dir: Path, title: str) -> Path:
    """evaluation.png: centralised against federated evaluation by round, with the
    10th-90th percentile band of the per-client accuracies (means over seeds)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        runs = [r for r in by_label[row["config"]] if r.fed_eval.get("accuracy")]
        if not runs:
            continue
        color = colors[row["config"]]
        central = sorted(set.intersection(*(set(r.accuracy) for r in runs)))
        ax.plot([s + 1 for s in central],
                [statistics.fmean(r.accuracy[s] for r in runs) for s in central],
                color=color, marker="o", ms=3, label=f"{row['config']}: centralised (eval/)")
        steps = sorted(set.intersection(*(set(r.fed_eval["accuracy"]) for r in runs)))

        def mean(key, runs=runs, steps=steps):
            return [statistics.fmean(r.fed_eval[key].get(s, float("nan")) for r in runs)
                    for s in steps]

        xs = [s + 1 for s in steps]
        ax.plot(xs, mean("accuracy"), color=color, ls="--", marker="s", ms=3,
                label=f"{row['config']}: federated (fed_eval/)")
        ax.fill_between(xs, mean("client_accuracy_p10"), mean("client_accuracy_p90"),
                        color=color, alpha=0.12)
    ax.set_xlabel("rounds trained")
    ax.set_ylabel("accuracy (band: 10th-90th percentile over test clients)")
    ax.set_title(f"{title}: centralised vs federated evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "evaluation.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: list[dict], settings: dict, out_dir: Path, title: str) -> list[Path]:
    """report.md, report.json and the plots in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(rows, settings, out_dir, title)
    table = markdown(rows, settings)
    gains = feedback_gain.feedback_gains(settings["configs"], settings["labels"])
    if gains:  # error feedback against the same method without it
        table += "\n\n" + feedback_gain.markdown(gains)
        plots += [p for p in [feedback_gain.plot(gains, out_dir, title)] if p is not None]
    images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
    (out_dir / "report.md").write_text(f"# {title}\n\n{table}\n\n{images}\n")
    (out_dir / "report.json").write_text(json.dumps(
        {"target": settings["target"], "budget": settings["budget"], "rows": rows,
         "feedback_gains": gains}, indent=2))
    return [out_dir / "report.md", out_dir / "report.json", *plots]


def log_to_parent(uri: str, parent: str, out_dir: Path, table: str) -> None:
    """The report as artifacts of the parent run, and its table as the run's description."""
    from mlflow import MlflowClient

    with store_call():
        client = MlflowClient(tracking_uri=uri)
        client.log_artifacts(parent, str(out_dir), "report")
        note = client.get_run(parent).data.tags.get("mlflow.note.content", "")
        note = note.split("\n\n## Report")[0]
        client.set_tag(parent, "mlflow.note.content",
                       f"{note}\n\n## Report\n\n{table}\n\nPlots: artifacts/report/.")


def publish(uri: str, parent: str, rows: list[dict], settings: dict,
            out_dir: Path) -> list[Path]:
    """Write the report of a sweep to `out_dir`, titled by its parent run, and log it there."""
    from mlflow import MlflowClient

    title = MlflowClient(tracking_uri=uri).get_run(parent).info.run_name
    written = write_report(rows, settings, out_dir, title=title)
    log_to_parent(uri, parent, out_dir, markdown(rows, settings))
    return written


def report_sweep(info: SweepInfo) -> None:
    """The report of a finished sweep, on its parent run and in `<sweep dir>/report/`."""
    report_parent(info.uri, info.parent_run_id, Path(info.folder) / "report")


def report_parent(uri: str, parent: str, out_dir: Path, target: float | None = None,
                  budget: float | str = "25%") -> list[dict]:
    """The whole report of a sweep, written to `out_dir` and logged to its parent run."""
    runs, parent = load_runs(uri, parent=parent)
    rows, settings = summarise(runs, target, budget)
    publish(uri, parent, rows, settings, out_dir)
    return rows
