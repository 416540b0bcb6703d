"""The round loop: sample clients, run a round, count bits, evaluate, log."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf
import tensorflow_federated as tff

from federated_research.aggregators.comm_bits import RoundComm
from federated_research.algorithms import FederatedAlgorithm
from federated_research.data.federated_data import FederatedData
from federated_research.resources import rss_metrics
from federated_research.seeds import Stream, int_seed, rng
from federated_research.tracking import Tracker


@dataclass(frozen=True)
class LoopSpec:
    """What the loop needs from the config, validated before the loop starts."""

    rounds: int
    clients_per_round: int
    eval_every: int
    seed: int
    epochs: int
    batch_size: int
    shuffle_buffer: int
    eval_initial: bool = False
    fed_eval_every: int = 0  # 0 = no federated evaluation
    stop_on_nonfinite: bool = True  # a NaN or infinite loss ends the run (Diverged)

    def due(self, every: int, rounds_done: int) -> bool:
        """Whether an evaluation every `every` rounds is due after `rounds_done`
        rounds (always after the last round; never when `every` is 0)."""
        return every > 0 and (rounds_done % every == 0 or rounds_done == self.rounds)


class Diverged(RuntimeError):
    """A loss turned NaN or infinite; the run stops (unless `on_nonfinite=continue`)."""


@dataclass
class RunState:
    """Everything that changes from round to round, in one place (checkpoint.py saves it).

    The loop changes it only once a round's metrics are logged, so an
    interrupted run's state is always that of its last logged round.
    """

    state: object
    next_round: int = 0
    broadcasted_bits: int = 0
    aggregated_bits: int = 0
    round_seconds: list[float] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)
    startup_seconds: float = float("nan")


def sample_clients(client_ids: list[str], k: int, seed: int, round_num: int,
                   stream: Stream = Stream.SAMPLING) -> list[str]:
    """`k` distinct clients for round `round_num`; the same for the same seed and round."""
    picked = rng(seed, stream, round_num).choice(len(client_ids), size=k, replace=False)
    return [client_ids[i] for i in picked]


class ClientExamples:
    """Each client's preprocessed examples, built the first time the client is sampled.

    Building a pipeline with a Python function traces it into TensorFlow's
    context for good (preprocessing.py); rebuilding every sampled client's
    pipeline each round grew the run by 0.75 MiB a round and its TFF worker with
    it. Only the round's shuffle, repeat and batch are new each round.
    """

    def __init__(self, client_data: tff.simulation.datasets.ClientData, task) -> None:
        self._client_data, self._task = client_data, task
        self._examples: dict[str, tf.data.Dataset] = {}

    def __call__(self, client_id: str) -> tf.data.Dataset:
        if client_id not in self._examples:
            self._examples[client_id] = self._task.examples(
                self._client_data.create_tf_dataset_for_client(client_id))
        return self._examples[client_id]


def client_datasets(data: FederatedData, sampled: list[str], spec: LoopSpec,
                    round_num: int, examples: ClientExamples | None = None) -> list:
    """The round's client datasets, each shuffled by its own seed (round, position)."""
    examples = examples or ClientExamples(data.train, data.task)
    return [data.task.batches(examples(cid), spec.epochs, spec.batch_size, spec.shuffle_buffer,
                              seed=int_seed(spec.seed, Stream.SHUFFLE, round_num, i))
            for i, cid in enumerate(sampled)]


def pooled_batches(pooled: tf.data.Dataset, data: FederatedData, spec: LoopSpec,
                   shuffle_buffer: int, round_num: int) -> tf.data.Dataset:
    """The centralised baseline's round: every training example (`pooled`, the
    pooled task's examples), shuffled by the round's seed with a large buffer."""
    return data.task.pooled().batches(pooled, spec.epochs, spec.batch_size, shuffle_buffer,
                                      seed=int_seed(spec.seed, Stream.SHUFFLE, round_num))


def reported_errors(metrics) -> dict[str, float]:
    """comm/update_* and comm/broadcast_* errors, wherever the processes report them."""
    found = {}
    stack = [metrics]
    while stack:
        node = stack.pop()
        if hasattr(node, "items"):
            for key, value in node.items():
                if key in {"update_mse", "update_nmse", "broadcast_mse", "broadcast_nmse"}:
                    found[f"comm/{key}"] = float(value)
                else:
                    stack.append(value)
    return found


def divergence(metrics: dict[str, float], clients: int) -> list[str]:
    """Signs that a round diverged, e.g. ['train/loss=nan'].

    A NaN or infinite loss; or, from TFF's own algorithms, which zero a client's
    update when it is not finite and drop its metrics, a round of sampled
    clients that counted no training example.
    """
    signs = [f"{key}={value}" for key, value in metrics.items()
             if key.endswith("/loss") and not math.isfinite(value)]
    if clients and metrics.get("train/num_examples") == 0:
        signs.append("train/num_examples=0 (every client's update was NaN or infinite, "
                     "and TFF dropped them all)")
    return signs


def run_rounds(algorithm: FederatedAlgorithm, run: RunState,
               data: FederatedData, spec: LoopSpec, comm: RoundComm,
               evaluate: Callable[[tff.learning.models.ModelWeights], dict[str, float]],
               tracker: Tracker,
               fed_evaluate: Callable[[tff.learning.models.ModelWeights, int],
                                      dict[str, float]] | None = None,
               save: Callable[[RunState], object] | None = None) -> RunState:
    """Train from `run.next_round` to `spec.rounds`, logging every round at step = round.

    `evaluate` (centralised) runs every `spec.eval_every` rounds, `fed_evaluate`
    (federated, given the round) every `spec.fed_eval_every` rounds; `save(run)`
    after every round (the checkpoints decide whether it is due).
    """
    process = algorithm.process
    client_ids = list(data.train.client_ids)
    pooled = (None if algorithm.pooled_shuffle_buffer is None  # the centralised baseline
              else data.task.pooled().examples(
                  data.train.create_tf_dataset_from_all_clients(seed=spec.seed)))
    examples = ClientExamples(data.train, data.task)
    if spec.rounds == 0:  # nothing to train: report the initial model
        weights = process.get_model_weights(run.state)
        run.last = evaluate(weights)
        if fed_evaluate is not None and spec.fed_eval_every > 0:
            run.last.update(fed_evaluate(weights, 0))
        tracker.log_metrics(run.last, step=0)
        return run
    if spec.eval_initial and run.next_round == 0:  # e.g. a pre-trained model before fine-tuning
        initial = evaluate(process.get_model_weights(run.state))
        tracker.log_metrics({k.replace("eval/", "eval_initial/", 1): v
                             for k, v in initial.items()}, step=0)
    for round_num in range(run.next_round, spec.rounds):
        start = time.perf_counter()
        if pooled is None:
            sampled = sample_clients(client_ids, spec.clients_per_round, spec.seed, round_num)
            output = process.next(run.state, client_datasets(data, sampled, spec, round_num,
                                                             examples))
        else:
            sampled = []
            output = process.next(run.state, pooled_batches(
                pooled, data, spec, algorithm.pooled_shuffle_buffer, round_num))
        seconds = time.perf_counter() - start

        train = output.metrics["client_work"]["train"]
        bits = comm.round_metrics(len(sampled))
        broadcasted = run.broadcasted_bits + bits["comm/broadcasted_bits"]
        aggregated = run.aggregated_bits + bits["comm/aggregated_bits"]
        metrics = {**{f"train/{key}": float(value) for key, value in train.items()},
                   **bits,
                   **reported_errors(output.metrics),
                   "comm/broadcasted_bits_cumulative": broadcasted,
                   "comm/aggregated_bits_cumulative": aggregated,
                   "time/round_seconds": seconds,
                   **rss_metrics()}
        central = spec.due(spec.eval_every, round_num + 1)
        federated = fed_evaluate is not None and spec.due(spec.fed_eval_every, round_num + 1)
        if central or federated:  # the weights leave the TFF worker once for both
            weights = process.get_model_weights(output.state)
            if central:
                metrics.update(evaluate(weights))
            if federated:
                metrics.update(fed_evaluate(weights, round_num))
        tracker.log_metrics(metrics, step=round_num)
        bad = divergence(metrics, len(sampled))
        if bad and spec.stop_on_nonfinite:
            raise Diverged(f"{', '.join(bad)} at round {round_num}")
        # The round is logged: only now does it count (and get saved).
        run.state, run.next_round = output.state, round_num + 1
        run.broadcasted_bits, run.aggregated_bits = broadcasted, aggregated
        run.round_seconds.append(seconds)
        run.last.update(metrics)
        if save is not None:
            save(run)
    return run
