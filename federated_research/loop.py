"""The round loop: sample clients, run a round, count bits, evaluate, log."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf
import tensorflow_federated as tff

from federated_research.aggregators.comm_bits import RoundComm
from federated_research.algorithms import FederatedAlgorithm
from federated_research.data.federated_data import FederatedData
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

    def due(self, every: int, rounds_done: int) -> bool:
        """Whether an evaluation every `every` rounds is due after `rounds_done`
        rounds (always after the last round; never when `every` is 0)."""
        return every > 0 and (rounds_done % every == 0 or rounds_done == self.rounds)


@dataclass
class RunState:
    """Everything that changes from round to round, in one place (to checkpoint later)."""

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


def client_datasets(data: FederatedData, sampled: list[str], spec: LoopSpec,
                    round_num: int) -> list:
    """The round's client datasets, each shuffled by its own seed (round, position)."""
    return [data.task.client_batches(data.train.create_tf_dataset_for_client(cid), spec.epochs,
                                     spec.batch_size, spec.shuffle_buffer,
                                     seed=int_seed(spec.seed, Stream.SHUFFLE, round_num, i))
            for i, cid in enumerate(sampled)]


def pooled_batches(pooled: tf.data.Dataset, data: FederatedData, spec: LoopSpec,
                   shuffle_buffer: int, round_num: int) -> tf.data.Dataset:
    """The centralised baseline's round: every training example, through the
    dataset's own batching, shuffled by the round's seed with a large buffer."""
    return data.task.pooled().client_batches(pooled, spec.epochs, spec.batch_size, shuffle_buffer,
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


def run_rounds(algorithm: FederatedAlgorithm, run: RunState,
               data: FederatedData, spec: LoopSpec, comm: RoundComm,
               evaluate: Callable[[tff.learning.models.ModelWeights], dict[str, float]],
               tracker: Tracker,
               fed_evaluate: Callable[[tff.learning.models.ModelWeights, int],
                                      dict[str, float]] | None = None) -> RunState:
    """Train from `run.next_round` to `spec.rounds`, logging every round at step = round.

    `evaluate` (centralised) runs every `spec.eval_every` rounds, `fed_evaluate`
    (federated, given the round) every `spec.fed_eval_every` rounds.
    """
    process = algorithm.process
    client_ids = list(data.train.client_ids)
    pooled = (None if algorithm.pooled_shuffle_buffer is None  # the centralised baseline
              else data.train.create_tf_dataset_from_all_clients(seed=spec.seed))
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
            output = process.next(run.state, client_datasets(data, sampled, spec, round_num))
        else:
            sampled = []
            output = process.next(run.state, pooled_batches(
                pooled, data, spec, algorithm.pooled_shuffle_buffer, round_num))
        seconds = time.perf_counter() - start
        run.state, run.next_round = output.state, round_num + 1
        run.round_seconds.append(seconds)

        train = output.metrics["client_work"]["train"]
        bits = comm.round_metrics(len(sampled))
        run.broadcasted_bits += bits["comm/broadcasted_bits"]
        run.aggregated_bits += bits["comm/aggregated_bits"]
        metrics = {**{f"train/{key}": float(value) for key, value in train.items()},
                   **bits,
                   **reported_errors(output.metrics),
                   "comm/broadcasted_bits_cumulative": run.broadcasted_bits,
                   "comm/aggregated_bits_cumulative": run.aggregated_bits,
                   "time/round_seconds": seconds}
        central = spec.due(spec.eval_every, run.next_round)
        federated = fed_evaluate is not None and spec.due(spec.fed_eval_every, run.next_round)
        if central or federated:  # the weights leave the TFF worker once for both
            weights = process.get_model_weights(run.state)
            if central:
                metrics.update(evaluate(weights))
            if federated:
                metrics.update(fed_evaluate(weights, round_num))
        run.last.update(metrics)
        tracker.log_metrics(metrics, step=round_num)
    return run
