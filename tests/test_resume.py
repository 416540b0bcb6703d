"""Checkpoints on real TFF processes: a run resumed from its checkpoint equals one that
never stopped (weights and every metric), with `mean` and with a stochastic compressor;
the journal and the TensorBoard sink skip what a resumed run logs again."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from federated_research.build import build_run_parts
from federated_research.checkpoint import Checkpoints
from federated_research.client_state import build_store
from federated_research.errors import ConfigError
from federated_research.evaluation import CentralEvaluator
from federated_research.loop import Evaluations, RunState, run_rounds
from federated_research.resume import RunRecord, check_same_config, flat_config, resume_argv
from federated_research.tracking import Tracker
from federated_research.tracking.journal import MetricJournal, read_journal
from federated_research.tracking.tensorboard_sink import TensorBoardSink
from tests.conftest import compose_config
from tests.test_train_cli import _tensorboard

# Module-scoped TFF processes are shared by its tests: one pytest-xdist worker builds them.
pytestmark = pytest.mark.xdist_group("resume")

TINY = ["model=linear", "dataset.num_clients=8", "clients_per_round=3", "eval_every=1"]
ROUNDS = 5
NOT_REPRODUCIBLE = ("time/", "system/")  # wall-clock and memory


def _deterministic(history: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    return {step: {k: v for k, v in metrics.items() if not k.startswith(NOT_REPRODUCIBLE)}
            for step, metrics in history.items()}


def _journal_history(folder) -> dict[int, dict[str, float]]:
    history: dict[int, dict[str, float]] = {}
    for step, metrics, _ in read_journal(folder / "metrics.jsonl")[0]:
        assert not set(metrics) & set(history.get(step, {})), f"step {step} logged twice"
        history.setdefault(step, {}).update(metrics)
    return history


def _train(parts, folder, rounds: int, checkpoint_every: int, resume: bool, store: str):
    """The loop with the run's real sinks (journal, TensorBoard), checkpoints and
    client-state store."""
    checkpoints = Checkpoints(folder, checkpoint_every, keep=2, seed=parts.spec.seed)
    clients = build_store(store, parts.algorithm.client_state,
                          list(parts.data.train.client_ids), folder)
    run = (checkpoints.load(parts.initial_state, clients=clients) if resume
           else RunState(parts.initial_state, clients=clients))
    evaluate = CentralEvaluator(parts.model, parts.data.test, 500)
    spec = parts.spec.__class__(**{**parts.spec.__dict__, "rounds": rounds})
    with Tracker([MetricJournal(folder), TensorBoardSink(folder / "tb", resume=resume)]) as tracker:
        run = run_rounds(dataclasses.replace(parts, spec=spec), run, Evaluations(evaluate),
                         tracker, save=lambda r: checkpoints.save_if_due(r, rounds))
    return run, checkpoints


STATEFUL = {  # clients that remember (SCAFFOLD's control variates and the ef14 residuals
    # of both its uplinks): their states are checkpointed and restored too
    "scaffold-topk-ef14-disk": (["algorithm=scaffold", "aggregator=topk",
                                 "aggregator.error_feedback=ef14"], "disk"),
}


@pytest.fixture(scope="module", params=["mean", *STATEFUL])
def resumed_and_whole(request, tmp_path_factory):
    """One run of ROUNDS rounds, and one that stops after 3 and is resumed from its
    checkpoint (saved every 2 rounds and at the end) in a freshly built process (the
    first two share one build, which they could not if a build kept a run's state).
    A stochastic compressor (DRIVE's rotations, in error feedback, clients on disk) is
    resumed from the command line after kill -9: tests/test_long_runs.py."""
    extra, store = STATEFUL.get(request.param, ([f"aggregator={request.param}"], "memory"))
    overrides = [*TINY, *extra]
    whole_dir, split_dir = (tmp_path_factory.mktemp(n) for n in ("whole", "split"))
    parts = build_run_parts(compose_config(overrides))  # built parts keep no run's state
    whole, _ = _train(parts, whole_dir, ROUNDS, 2, False, store)
    first, saved = _train(parts, split_dir, 3, 2, False, store)
    resumed, _ = _train(build_run_parts(compose_config(overrides)), split_dir, ROUNDS, 2, True,
                        store)
    return request.param, whole, whole_dir, first, saved, resumed, split_dir


def test_a_resumed_run_equals_one_that_never_stopped(resumed_and_whole):
    aggregator, whole, whole_dir, first, saved, resumed, split_dir = resumed_and_whole
    assert first.next_round == 3 and resumed.next_round == ROUNDS
    for a, b in zip(tf.nest.flatten(whole.state), tf.nest.flatten(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit, optimizer and aggregator state too
    assert whole.aggregated_bits == resumed.aggregated_bits > 0
    assert whole.broadcasted_bits == resumed.broadcasted_bits > 0
    logged = _journal_history(whole_dir)
    assert all(logged[r]["system/rss_mib"] > 100 and logged[r]["system/worker_rss_mib"] > 10
               for r in range(ROUNDS))  # the run's and its TFF worker's resident memory
    whole_history = _deterministic(logged)
    assert sorted(whole_history) == list(range(ROUNDS))
    assert _deterministic(_journal_history(split_dir)) == whole_history
    if aggregator in STATEFUL:  # every client's memory, bit for bit, and when it was written
        assert whole.clients.written == resumed.clients.written and whole.clients.written
        for cid in whole.clients.written:
            for a, b in zip(whole.clients.read([cid])[0], resumed.clients.read([cid])[0],
                            strict=True):
                np.testing.assert_array_equal(a, b)
        assert any(np.any(leaf) for cid in whole.clients.written
                   for leaf in whole.clients.read([cid])[0])
        assert whole_history[ROUNDS - 1]["client_state/mean_staleness"] >= 1


def test_tensorboard_curves_go_on_without_a_step_twice(resumed_and_whole):
    *_, whole_dir, _, _, _, split_dir = resumed_and_whole
    whole, split = _tensorboard(whole_dir / "tb"), _tensorboard(split_dir / "tb")
    assert len(list((split_dir / "tb").glob("events.out.tfevents.*"))) == 2  # one per launch
    for tag, steps in whole.items():
        if not tag.startswith(NOT_REPRODUCIBLE):
            assert split[tag] == pytest.approx(steps, rel=0, abs=0), tag


def test_the_newest_checkpoints_are_kept_and_a_cut_save_is_ignored(resumed_and_whole):
    *_, split_dir = resumed_and_whole
    root = split_dir / "checkpoints"
    # Every 2 rounds and after the last of each launch (3, then 5); the newest 2 kept.
    assert sorted(p.name for p in root.iterdir()) == ["round_4", "round_5"]
    (root / "round_9_temp1234").mkdir()  # what a kill in the middle of a save leaves
    checkpoints = Checkpoints(split_dir, 2, 2, 0)
    assert checkpoints.latest() == 5 and not (root / "round_9_temp1234").exists()
    with pytest.raises(ValueError, match="another model"):
        checkpoints.load([np.zeros(3, np.float32)])


def _cfg(overrides: list[str]):
    """A composed config that resolves without a Hydra run (whose cwd the default URI uses)."""
    return compose_config([*overrides, "tracking.mlflow_uri=sqlite:///m.db"])


def _record(overrides: list[str]) -> RunRecord:
    return RunRecord("sqlite:///m.db", "0" * 32, "e", overrides, flat_config(_cfg(overrides)))


def test_a_changed_config_is_refused_in_one_line_naming_the_key(tmp_path):
    record = _record(["aggregator=drive", "client_optimizer.learning_rate=0.1"])
    check_same_config(record, _cfg(
        ["aggregator=drive", "client_optimizer.learning_rate=0.1", "rounds=500",
         "checkpoint_every=5", "tracking.progress_bar=false"]), tmp_path)  # may change
    with pytest.raises(ConfigError) as refused:
        check_same_config(record, _cfg(["aggregator=drive"]), tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("client_optimizer.learning_rate=0.05: ")
    assert "trained with client_optimizer.learning_rate=0.1" in message
    with pytest.raises(ConfigError, match="aggregator"):
        check_same_config(record, _cfg(["client_optimizer.learning_rate=0.1"]), tmp_path)


def test_resume_puts_the_runs_own_overrides_back(tmp_path):
    _record(["model=linear", "rounds=8"]).write(tmp_path)
    argv = resume_argv([f"resume={tmp_path}", "rounds=20", "tracking.progress_bar=false"],
                       tmp_path)
    assert argv == ["model=linear", "rounds=20", "tracking.progress_bar=false",
                    f"resume={tmp_path}", f"hydra.run.dir={tmp_path}"]
    assert resume_argv(["model=cnn"], tmp_path) == ["model=cnn"]  # nothing to resume


@pytest.mark.parametrize(("value", "says"), [
    ("nowhere", "no such folder, and not an MLflow run id"),
    (".", "holds no run.json"),
    ("0123456789abcdef0123456789abcdef", "no MLflow run with that id")])
def test_resume_of_nothing_is_refused_in_one_line(tmp_path, value, says):
    with pytest.raises(ConfigError, match=says) as refused:
        resume_argv([f"resume={value}", f"tracking.mlflow_uri=sqlite:///{tmp_path}/m.db"],
                    tmp_path)
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match="not a sweep"):
        resume_argv(["-m", f"resume={tmp_path}"], tmp_path)
