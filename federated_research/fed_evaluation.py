"""Federated evaluation: the global model scored on sampled test clients, on their devices.

`tff.learning.algorithms.build_fed_eval` broadcasts the model to the clients,
each scores it on its own held-out data, and the server receives the metrics.
Two things come back: the pooled metrics (summed over clients, then
finalised: what one big test set of those clients would give) and each
client's own finalised metrics, whose spread says how unevenly the model
serves its population - what centralised evaluation cannot show.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.algorithms import CLIENT_LOOP
from federated_research.comm_bits import comm_cost
from federated_research.data.client_examples import ClientExamples, lean
from federated_research.errors import ConfigError
from federated_research.loop import sample_clients
from federated_research.models import ModelSpec
from federated_research.seeds import Stream

QUANTILES = {"min": 0, "p10": 10, "median": 50, "p90": 90, "max": 100}


def pooled_and_per_client(finalizers, unfinalized_type, clients: int):
    """An aggregation process for `build_fed_eval` whose current-round result is
    OrderedDict(pooled=TFF's SumThenFinalize metrics, clients=FinalizeThenSample's
    per-client lists; all clients kept, `clients` being the round's size).

    Only the pooled sums persist across rounds (total_rounds_metrics); the sampler
    starts empty each round, since its growing state does not fit the fixed state
    type `build_fed_eval` reads off `initialize`.
    """
    pooled = tff.learning.metrics.SumThenFinalizeFactory(finalizers).create(unfinalized_type)
    per_client = tff.learning.metrics.FinalizeThenSampleFactory(clients).create(
        finalizers, unfinalized_type)

    @tff.federated_computation(pooled.next.type_signature.parameter[0],
                               tff.FederatedType(unfinalized_type, tff.CLIENTS))
    def next_fn(state, metrics):
        summed = pooled.next(state, metrics)
        sampled = per_client.next(per_client.initialize(), metrics)
        current = tff.federated_zip(collections.OrderedDict(pooled=summed.result[0],
                                                            clients=sampled.result[0]))
        total = tff.federated_zip(collections.OrderedDict(pooled=summed.result[1]))
        return tff.templates.MeasuredProcessOutput(
            summed.state, tff.federated_zip((current, total)),
            tff.federated_zip(collections.OrderedDict(pooled=summed.measurements,
                                                      clients=sampled.measurements)))

    return tff.templates.AggregationProcess(pooled.initialize, next_fn)


class FederatedEvaluator:
    """Scores model weights on `clients` test clients, drawn afresh (seeded) each time.

    Built after the learning process (TFF traces `model_fn` in its own graphs).
    The broadcast is plain float32, so federated and centralised evaluation score
    the same server model; its bits are logged as fed_eval/*_bits.
    """

    def __init__(self, model: ModelSpec, test_clients: tff.simulation.datasets.ClientData | None,
                 clients: int, batch_size: int, seed: int,
                 cache_bytes: int | None = None) -> None:
        if test_clients is None:
            raise ConfigError("fed_eval.every", "the dataset has too few held-out examples to "
                              "split over its clients", "raise dataset.test_fraction, lower "
                              "dataset.num_clients, or pass fed_eval.every=0")
        self._client_ids = list(test_clients.client_ids)
        if clients > len(self._client_ids):
            raise ConfigError(f"fed_eval.clients={clients}", f"the dataset has only "
                              f"{len(self._client_ids)} test clients",
                              f"pass fed_eval.clients={len(self._client_ids)} or fewer")
        self._model, self._test, self._clients = model, test_clients, clients
        self._examples = ClientExamples(test_clients, model.task, cache_bytes)  # decoded once
        self._batch_size, self._seed = batch_size, seed
        with tf.Graph().as_default():
            probe = model.tff_model_fn()
            finalizers = probe.metric_finalizers()
            unfinalized_type = tff.StructWithPythonType(tf.nest.map_structure(
                lambda t: tff.types.tensorflow_to_type(tf.TensorSpec(t.shape, t.dtype)),
                probe.report_local_unfinalized_metrics()), collections.OrderedDict)
        self.process = tff.learning.algorithms.build_fed_eval(
            model.tff_model_fn, loop_implementation=CLIENT_LOOP,
            metrics_aggregation_process=pooled_and_per_client(finalizers, unfinalized_type,
                                                              clients))
        self._state = self.process.initialize()
        self.cost = comm_cost(self.process.next)

    def __call__(self, weights: tff.learning.models.ModelWeights,
                 round_num: int) -> dict[str, float]:
        sampled = sample_clients(self._client_ids, self._clients, self._seed, round_num,
                                 stream=Stream.FED_EVAL)
        datasets = [lean(self._examples(c).batch(self._batch_size)) for c in sampled]
        state = self.process.set_model_weights(self._state, weights)
        output = self.process.next(state, datasets)
        current = output.metrics["client_work"]["eval"]["current_round_metrics"]
        metrics = {f"fed_eval/{k}": float(v) for k, v in current["pooled"].items()}
        metrics.update(spread(current["clients"]))
        metrics["fed_eval/broadcasted_bits"] = len(sampled) * self.cost.down
        metrics["fed_eval/aggregated_bits"] = len(sampled) * self.cost.up
        return metrics


def spread(per_client) -> dict[str, float]:
    """Unweighted statistics of per-client accuracy over the clients that had data."""
    counts = np.asarray(per_client["num_examples"], dtype=np.float64)
    scored = counts > 0
    out = {"fed_eval/clients": float(scored.sum())}
    if "accuracy" not in per_client or not scored.any():
        return out
    accuracy = np.asarray(per_client["accuracy"], dtype=np.float64)[scored]
    out["fed_eval/client_accuracy_mean"] = float(accuracy.mean())
    out["fed_eval/client_accuracy_std"] = float(accuracy.std())
    for name, q in QUANTILES.items():
        out[f"fed_eval/client_accuracy_{name}"] = float(np.percentile(accuracy, q))
    return out
