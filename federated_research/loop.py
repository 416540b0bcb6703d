"""The round loop: sample clients, run a round, count bits, evaluate, log."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.algorithms import FederatedAlgorithm
from federated_research.client_state import ClientStateStore, MemoryStore
from federated_research.comm_bits import RoundComm
from federated_research.data.client_examples import ClientExamples, lean
from federated_research.data.federated_data import FederatedData
from federated_research.models import ModelSpec
from federated_research.resources import rss_metrics
from federated_research.seeds import Stream, int_seed, rng
from federated_research.signals import deferred, raise_if_signalled
from federated_research.tracking import Tracker


@dataclass(frozen=True, kw_only=True)
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
    examples_cache_bytes: int | None = None  # decoded client examples kept (None: all)

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
    clients: ClientStateStore | None = None  # what clients remember, if they do

    def advance(self, state: object, metrics: dict[str, float], seconds: float) -> None:
        """The round whose metrics these are is logged: it counts (and may be saved).
        A signal waits until it counts whole, client states included."""
        with deferred():
            if self.clients is not None:
                self.clients.commit()  # the round's client states, staged by the loop
            self.state, self.next_round = state, self.next_round + 1
            self.broadcasted_bits = metrics["comm/broadcasted_bits_cumulative"]
            self.aggregated_bits = metrics["comm/aggregated_bits_cumulative"]
            self.round_seconds.append(seconds)
            self.last.update(metrics)


def sample_clients(client_ids: list[str], k: int, seed: int, round_num: int,
                   stream: Stream = Stream.SAMPLING) -> list[str]:
    """`k` distinct clients for round `round_num`; the same for the same seed and round."""
    picked = rng(seed, stream, round_num).choice(len(client_ids), size=k, replace=False)
    return [client_ids[i] for i in picked]


def client_datasets(data: FederatedData, sampled: list[str], spec: LoopSpec,
                    round_num: int, examples: ClientExamples | None = None) -> list:
    """The round's client datasets, each shuffled by its own seed (round, position)."""
    examples = examples or ClientExamples(data.train, data.task)
    return [lean(data.task.batches(examples(cid), spec.epochs, spec.batch_size,
                                   spec.shuffle_buffer,
                                   seed=int_seed(spec.seed, Stream.SHUFFLE, round_num, i)))
            for i, cid in enumerate(sampled)]


def pooled_batches(pooled: tf.data.Dataset, data: FederatedData, spec: LoopSpec,
                   shuffle_buffer: int, round_num: int) -> tf.data.Dataset:
    """The centralised baseline's round: every training example (`pooled`, the
    pooled task's examples), shuffled by the round's seed with a large buffer."""
    return data.task.pooled().batches(pooled, spec.epochs, spec.batch_size, shuffle_buffer,
                                      seed=int_seed(spec.seed, Stream.SHUFFLE, round_num))


def _reported(metrics, keys: set[str]):
    """(key, value) of every entry named in `keys`, wherever the processes nest it."""
    stack = [metrics]
    while stack:
        node = stack.pop()
        if hasattr(node, "items"):
            for key, value in node.items():
                if key in keys:
                    yield key, value
                else:
                    stack.append(value)


def reported_bits(metrics) -> int:
    """The bits of variable-length codes the aggregation measured this round (0 if none)."""
    return sum(int(value) for _, value in _reported(metrics, {"measured_bits"}))


def reported_errors(metrics) -> dict[str, float]:
    """comm/update_* and comm/broadcast_* errors, wherever the processes report them."""
    return {f"comm/{key}": float(value) for key, value in _reported(
        metrics, {"update_mse", "update_nmse", "broadcast_mse", "broadcast_nmse"})}


# A cross-entropy this many times that of guessing uniformly (ln of the number of
# classes: 2.3 for digits, 4.5 for Shakespeare's 90 ids) means the model puts a
# probability of e^-230 (digits) on the right answers on average: diverged, even
# though the number is finite. Healthy runs start near 1x (an untrained model
# guesses) and fall; docs/results.md ("Losses of healthy runs") has the measurements.
LOSS_LIMIT_OVER_CHANCE = 100


def loss_limit(num_classes: int) -> float:
    """The loss above which a run counts as diverged (see LOSS_LIMIT_OVER_CHANCE)."""
    return LOSS_LIMIT_OVER_CHANCE * math.log(max(2, num_classes))


def divergence(metrics: dict[str, float], clients: int,
               limit: float = math.inf) -> list[str]:
    """Signs that a round diverged, e.g. ['train/loss=nan'].

    A NaN or infinite loss, or one above `limit` (a divergence that stays finite,
    e.g. a learning rate of 1e9); or, from TFF's own algorithms, which zero a
    client's update when it is not finite and drop its metrics, a round of
    sampled clients that counted no training example.
    """
    signs = [f"{key}={value}" for key, value in metrics.items()
             if key.endswith("/loss") and not math.isfinite(value)]
    signs += [f"{key}={value:.4g} (over {limit:.0f}, {LOSS_LIMIT_OVER_CHANCE}x the loss of a "
              "uniform guess)" for key, value in metrics.items()
              if key.endswith("/loss") and math.isfinite(value) and value > limit]
    if clients and metrics.get("train/num_examples") == 0:
        signs.append("train/num_examples=0 (every client's update was NaN or infinite, "
                     "and TFF dropped them all)")
    return signs


@dataclass(frozen=True, kw_only=True)
class RunParts:
    """What the round loop needs, built once per run (build.py)."""

    data: FederatedData
    model: ModelSpec
    algorithm: FederatedAlgorithm
    comm: RoundComm
    spec: LoopSpec
    initial_state: object
    privacy: object | None = None  # a DP option's accountant: privacy/* metrics each round


Weights = tff.learning.models.ModelWeights


@dataclass(frozen=True)
class Evaluations:
    """The evaluations of a run: `central(weights)` every `spec.eval_every` rounds and
    `federated(weights, round)` every `spec.fed_eval_every` rounds (None: never)."""

    central: Callable[[Weights], dict[str, float]]
    federated: Callable[[Weights, int], dict[str, float]] | None = None

    def after_round(self, process, state, spec: LoopSpec, round_num: int) -> dict[str, float]:
        """The metrics of the evaluations due after `round_num`; the weights leave the
        TFF worker once for both."""
        central = spec.due(spec.eval_every, round_num + 1)
        federated = self.federated is not None and spec.due(spec.fed_eval_every, round_num + 1)
        if not (central or federated):
            return {}
        weights = process.get_model_weights(state)
        metrics = self.central(weights) if central else {}
        if federated:
            metrics.update(self.federated(weights, round_num))
        return metrics

    def initial(self, process, state, spec: LoopSpec) -> dict[str, float]:
        """Both evaluations of the starting model (a run of 0 rounds)."""
        weights = process.get_model_weights(state)
        metrics = self.central(weights)
        if self.federated is not None and spec.fed_eval_every > 0:
            metrics.update(self.federated(weights, 0))
        return metrics


class RoundInputs:
    """round -> (its sampled clients, what `process.next` trains on).

    Clients' examples are decoded once (client_examples.ClientExamples), the next
    round's while this one trains; `close` stops decoding ahead.
    """

    def __init__(self, parts: RunParts) -> None:
        self.data, self.spec, self.algorithm = parts.data, parts.spec, parts.algorithm
        self.client_ids = list(self.data.train.client_ids)
        self.examples = ClientExamples(self.data.train, self.data.task,
                                       self.spec.examples_cache_bytes)
        self.pooled = None
        if self.algorithm.pooled_shuffle_buffer is not None:  # the centralised baseline
            self.pooled = self.data.task.pooled().examples(
                self.data.train.create_tf_dataset_from_all_clients(seed=self.spec.seed))

    def __call__(self, round_num: int) -> tuple[list[str], object]:
        spec = self.spec
        if self.pooled is not None:
            return [], pooled_batches(self.pooled, self.data, spec,
                                      self.algorithm.pooled_shuffle_buffer, round_num)
        sampled = sample_clients(self.client_ids, spec.clients_per_round, spec.seed, round_num)
        datasets = client_datasets(self.data, sampled, spec, round_num, self.examples)
        if round_num + 1 < spec.rounds:  # decoded while this round trains
            self.examples.prefetch(sample_clients(self.client_ids, spec.clients_per_round,
                                                  spec.seed, round_num + 1))
        return sampled, datasets

    def close(self) -> None:
        self.examples.close()


def round_metrics(output, comm: RoundComm, run: RunState, clients: int,
                  seconds: float) -> dict[str, float]:
    """A round's training metrics, bits (and their running totals), errors, time, memory."""
    train = output.metrics["client_work"]["train"]
    bits = comm.round_metrics(clients)
    bits["comm/aggregated_bits"] += reported_bits(output.metrics)  # variable-length codes
    return {**{f"train/{key}": float(value) for key, value in train.items()},
            **bits,
            **reported_errors(output.metrics),
            "comm/broadcasted_bits_cumulative": run.broadcasted_bits
            + bits["comm/broadcasted_bits"],
            "comm/aggregated_bits_cumulative": run.aggregated_bits + bits["comm/aggregated_bits"],
            "time/round_seconds": seconds,
            **rss_metrics()}


def next_round(process, run: RunState, round_data, sampled: list[str],
               round_num: int) -> tuple[object, dict[str, float]]:
    """`process.next` for the round; for a process whose clients keep state, with the
    sampled clients' states read from the store, and the new ones staged in it.
    Returns the output and the `client_state/*` metrics."""
    store = run.clients
    if store is None:
        return process.next(run.state, round_data), {}
    metrics = store.metrics(sampled, round_num)
    template = process.initial_client_state
    states = [tf.nest.pack_sequence_as(template, leaves) for leaves in store.read(sampled)]
    output = process.next(run.state, round_data, states)
    store.write(sampled, [tf.nest.flatten(state) for state in output.client_state], round_num)
    for key, values in output.client_metrics.items():  # e.g. error feedback's residual norm
        metrics[f"client_state/{key}"] = float(np.mean(values))
    return output, metrics


def run_rounds(parts: RunParts, run: RunState, evaluations: Evaluations, tracker: Tracker,
               save: Callable[[RunState], object] | None = None) -> RunState:
    """Train from `run.next_round` to `parts.spec.rounds`, logging every round at step = round.

    `save(run)` runs after every round (the checkpoints decide whether it is due).
    """
    process, spec = parts.algorithm.process, parts.spec
    if spec.rounds == 0:  # nothing to train: report the initial model
        run.last = evaluations.initial(process, run.state, spec)
        tracker.log_metrics(run.last, step=0)
        return run
    if spec.eval_initial and run.next_round == 0:  # e.g. a pre-trained model before fine-tuning
        initial = evaluations.central(process.get_model_weights(run.state))
        tracker.log_metrics({k.replace("eval/", "eval_initial/", 1): v
                             for k, v in initial.items()}, step=0)
    if run.clients is None and parts.algorithm.client_state is not None:
        run.clients = MemoryStore(tf.nest.flatten(parts.algorithm.client_state),
                                  list(parts.data.train.client_ids))
    inputs = RoundInputs(parts)
    try:
        _train(parts, run, evaluations, tracker, save, inputs)
    finally:
        inputs.close()  # an error or a signal does not wait for clients decoded ahead
    return run


def _train(parts: RunParts, run: RunState, evaluations: Evaluations, tracker: Tracker,
           save, inputs: RoundInputs) -> None:
    process, spec = parts.algorithm.process, parts.spec
    limit = loss_limit(parts.data.num_classes)
    for round_num in range(run.next_round, spec.rounds):
        raise_if_signalled()  # a signal whose exception Python dropped stops us here
        start = time.perf_counter()
        sampled, round_data = inputs(round_num)
        output, client_metrics = next_round(process, run, round_data, sampled, round_num)
        seconds = time.perf_counter() - start
        metrics = round_metrics(output, parts.comm, run, len(sampled), seconds)
        metrics.update(client_metrics)
        if parts.privacy is not None:  # epsilon spent so far, the noise added
            metrics.update(parts.privacy.after_round(round_num, sampled,
                                                     output.metrics.get("aggregator")))
        metrics.update(evaluations.after_round(process, output.state, spec, round_num))
        tracker.log_metrics(metrics, step=round_num)
        bad = divergence(metrics, len(sampled), limit)
        if bad and spec.stop_on_nonfinite:
            raise Diverged(f"{', '.join(bad)} at round {round_num}")
        run.advance(output.state, metrics, seconds)  # logged: only now does the round count
        if save is not None:
            save(run)
