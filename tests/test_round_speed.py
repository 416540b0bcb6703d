"""Faster rounds change nothing but time: the framework's round loop gives, bit for bit,
the metrics and model of the round as TFF's documentation builds it.

The reference here is TFF's defaults: `build_weighted_fed_avg` with its own client loop
(`dataset.reduce`) and a model whose weights are created by their random initialisers,
each client's pipeline built from its `ClientData` every round with tf.data's default
options. The framework's loop decodes each client's examples once (in a background
thread for the next round's clients), trains with a while-loop, turns tf.data's
rewrites off and creates weights as zeros (scripts/floor_benchmark.py times each).
"""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import tensorflow_federated as tff

from federated_research.build import build_run_parts
from federated_research.loop import Evaluations, RunState, run_rounds, sample_clients
from federated_research.seeds import Stream, int_seed
from tests.conftest import compose_config, write_emnist_cache, write_shakespeare_cache

ROUNDS = 3


class _Recorder:
    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics, step) -> None:
        self.metrics[step] = dict(metrics)


def _tff_default(cfg, parts):
    """Train ROUNDS rounds as TFF's tutorials do; the train metrics and final weights."""
    model = parts.model

    def model_fn():
        return tff.learning.models.from_keras_model(
            model.keras_fn(), input_spec=model.input_spec,
            loss=model.task.loss(model.from_logits), metrics=model.task.metrics())

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=hydra.utils.instantiate(cfg.client_optimizer),
        server_optimizer_fn=hydra.utils.instantiate(cfg.server_optimizer),
        model_aggregator=tff.aggregators.MeanFactory())
    start = parts.algorithm.process.get_model_weights(parts.initial_state)
    state = process.set_model_weights(process.initialize(), start)
    data, spec = parts.data, parts.spec
    metrics = []
    for r in range(ROUNDS):
        sampled = sample_clients(list(data.train.client_ids), spec.clients_per_round,
                                 spec.seed, r)
        datasets = [data.task.client_batches(
            data.train.create_tf_dataset_for_client(cid), spec.epochs, spec.batch_size,
            spec.shuffle_buffer, seed=int_seed(spec.seed, Stream.SHUFFLE, r, i))
            for i, cid in enumerate(sampled)]
        output = process.next(state, datasets)
        state = output.state
        metrics.append({f"train/{k}": float(v)
                        for k, v in output.metrics["client_work"]["train"].items()})
    return metrics, process.get_model_weights(state)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tff_cache")
    write_emnist_cache(folder, writers=4, per_writer=14)
    write_shakespeare_cache(folder)
    return folder


CASES = {
    "mnist": ["model=linear", "dataset.num_clients=8", "clients_per_round=3"],
    "emnist": ["dataset=emnist", "model=cnn", "clients_per_round=3", "client.batch_size=4",
               "client.epochs=2"],
    "shakespeare": ["dataset=shakespeare", "dataset.seq_length=8", "model=char_rnn",
                    "model.embedding_dim=8", "model.rnn_units=16", "clients_per_round=2",
                    "client.batch_size=2", "client_optimizer.learning_rate=0.5"],
}


@pytest.mark.parametrize("dataset", CASES)
def test_the_framework_round_is_tffs_default_round_bit_for_bit(dataset, caches):
    overrides = [*CASES[dataset], f"rounds={ROUNDS}", "eval_every=100"]
    if dataset != "mnist":
        overrides.append(f"dataset.cache_dir={caches}")
    cfg = compose_config(overrides)
    parts = build_run_parts(cfg)
    recorder = _Recorder()
    run = run_rounds(parts, RunState(state=parts.initial_state),
                     Evaluations(central=lambda weights: {}), recorder)
    ours = parts.algorithm.process.get_model_weights(run.state)
    theirs_metrics, theirs = _tff_default(cfg, parts)

    start = parts.algorithm.process.get_model_weights(parts.initial_state)
    assert any(not np.array_equal(a, b) for a, b in zip(ours.trainable, start.trainable,
                                                           strict=True))  # it trained
    for r, expected in enumerate(theirs_metrics):
        assert expected["train/num_examples"] > 0
        for key, value in expected.items():
            assert recorder.metrics[r][key] == value, (dataset, r, key)
    for a, b in zip(ours.trainable + ours.non_trainable,
                    theirs.trainable + theirs.non_trainable, strict=True):
        np.testing.assert_array_equal(a, b)
