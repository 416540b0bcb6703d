"""Federated algorithms: each builder returns a FederatedAlgorithm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.aggregators.error import UpdateErrorFactory
from federated_research.aggregators.error_feedback import ClientStepFactory
from federated_research.comm_bits import CommCost, RoundComm, round_comm
from federated_research.distributors.plain import PlainBroadcast
from federated_research.models import ModelSpec
from federated_research.seeds import Stream, int_seed

# The client's training loop as a while-loop over the dataset's iterator, not TFF's
# default `dataset.reduce`. TFF's worker runs a client's computation in a TensorFlow
# session whose ReduceDataset op instantiates the loop body, the whole training step,
# again on every call: graph conversion and oneDNN's layout pass each time (perf in the
# worker). A while-loop's body is instantiated once per session. Same steps, same
# order: the same numbers bit for bit, in a third less time on the CNN
# (docs/explanation/round-time.md).
CLIENT_LOOP = tff.learning.LoopImplementation.DATASET_ITERATOR


class StatefulOutput(NamedTuple):
    """A round of a process whose clients keep state: the server's new state and
    metrics, as a LearningProcessOutput, plus each sampled client's new state and
    what it measured (CLIENTS-placed: lists, one entry per client, in Python)."""

    state: object
    metrics: object
    client_state: object
    client_metrics: object


class ClientStatefulProcess(tff.templates.IterativeProcess):
    """A learning process whose clients remember: `next(state, client_data, client_state)`.

    TFF's LearningProcess takes exactly (state, data) and returns SERVER-placed
    values only; this template adds a CLIENTS-placed state argument and result and
    keeps its model-weights accessors. `initial_client_state` is what a client
    never sampled before starts from (numpy arrays, the client-state store's
    template; client_state.py).
    """

    def __init__(self, initialize_fn, next_fn, get_model_weights, set_model_weights,
                 initial_client_state) -> None:
        super().__init__(initialize_fn, next_fn, next_is_multi_arg=True)
        self.get_model_weights = get_model_weights
        self.set_model_weights = set_model_weights
        self.initial_client_state = initial_client_state


@dataclass(frozen=True)
class FederatedAlgorithm:
    """The learning process plus the parts whose traffic is the model's.

    The loop runs `process`; the bit accounting measures `distributor` and
    `aggregation` on their own to tell model traffic from control traffic, and
    `diagnostics` (simulation-only measurements such as the update error) to
    keep their traffic out of both. `extra_model_parts` are more model-sized
    traffic an algorithm sends (SCAFFOLD's control variates, both ways).

    `pooled_shuffle_buffer` is set only by the centralised baseline
    (centralized.py): its rounds train on all training clients' data pooled,
    shuffled with that buffer, instead of on sampled clients, and send nothing.
    """
    process: tff.learning.templates.LearningProcess
    distributor: tff.templates.MeasuredProcess | None
    aggregation: tff.templates.MeasuredProcess | None
    diagnostics: tuple[tff.templates.MeasuredProcess, ...] = ()
    pooled_shuffle_buffer: int | None = None
    extra_model_parts: tuple[tff.templates.IterativeProcess, ...] = ()  # e.g. SCAFFOLD's c

    @property
    def client_state(self) -> object | None:
        """What a new client's state is (numpy arrays), or None: its clients keep none."""
        return getattr(self.process, "initial_client_state", None)

    def round_comm(self):
        """The bits of a round, read off the built computations (comm_bits.py)."""
        if self.pooled_shuffle_buffer is not None:  # centralised: nothing crosses a network
            return RoundComm(CommCost(), 0, 0)
        return round_comm(self.process, self.distributor, self.aggregation,
                          *self.extra_model_parts, diagnostics=self.diagnostics)


def aggregation_parts(aggregator: tff.aggregators.WeightedAggregationFactory, value_type,
                      weight_type) -> tuple[tff.templates.MeasuredProcess, tuple]:
    """The aggregation process without diagnostics, and the diagnostics' own traffic."""
    if isinstance(aggregator, UpdateErrorFactory):
        return (aggregator.inner.create(value_type, weight_type),
                (aggregator.diagnostic_process(value_type, weight_type),))
    if isinstance(aggregator, ClientStepFactory) and aggregator.log_error:
        return (aggregator.measured_part().create(value_type, weight_type),
                (aggregator.diagnostic_process(value_type, weight_type),))
    return aggregator.create(value_type, weight_type), ()


def tff_algorithm(build_process, model: ModelSpec, aggregator, distributor) -> FederatedAlgorithm:
    """A `tff.learning` builder's process with the parts the bit accounting measures.

    `build_process(model_distributor)` calls the builder; the distributor
    (downlink) is built here and handed to it, so the accounting measures
    exactly the parts the process runs.
    """
    weights_type = tff.learning.models.weights_type_from_model(model.tff_model_fn)
    distribution = (distributor or PlainBroadcast()).create(weights_type)
    aggregation, diagnostics = aggregation_parts(aggregator, weights_type.trainable,
                                                 tff.TensorType(np.float32))
    return FederatedAlgorithm(process=build_process(distribution), distributor=distribution,
                              aggregation=aggregation, diagnostics=diagnostics)


def initial_state(process: tff.learning.templates.LearningProcess, model: ModelSpec,
                  seed: int) -> object:
    """`process.initialize()` with the model weights drawn from the run seed.

    TFF initialises weights inside its own graphs without a seed, so two runs
    would start from different models; here the Keras initialisers run eagerly
    under a seed derived from the run seed (after the process is built, see
    ARCHITECTURE.md §4) and the result replaces the initial weights.
    """
    tf.keras.utils.set_random_seed(int_seed(seed, Stream.INIT))
    keras_model = model.keras_fn()
    weights = tff.learning.models.ModelWeights(
        trainable=[v.numpy() for v in keras_model.trainable_weights],
        non_trainable=[v.numpy() for v in keras_model.non_trainable_weights])
    return process.set_model_weights(process.initialize(), weights)
