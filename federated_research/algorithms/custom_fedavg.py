"""Federated Averaging written by hand with TFF's Federated Core: copy this to start your own.

TFF's "Building Your Own Federated Learning Algorithm" tutorial writes FedAvg
as four steps; they are the four numbered lines of `next_fn` below:

  1. broadcast      the server's model goes to the round's clients
                    (the run's `distributor`: plain float32, or any compressor);
  2. client update  each client trains the model on its own data with the client
                    optimizer and returns the change, weighted by its examples;
  3. aggregation    the server receives the weighted mean of the changes
                    (the run's `aggregator`: `mean` or any compressor);
  4. server update  the server optimizer applies the mean change to the model.

TensorFlow code (what runs on one device) lives in `tff.tensorflow.computation`s;
the federated computation only moves values between SERVER and CLIENTS. That
separation is what lets the bit accounting (comm_bits.py) read the
traffic off this process exactly as off TFF's own builders: every transfer is a
federated intrinsic with a static type.

To write a new algorithm, change `local_training` (FedProx's proximal term is
there, three lines) or `server_update` (e.g. momentum), and keep `next_fn`'s shape.
With server SGD at learning rate 1 this process reaches the same weights as
`tff.learning.algorithms.build_weighted_fed_avg` (tests/test_algorithms.py).
It leaves out what TFF's builder adds for robustness: zeroing a client whose
update is not finite, and rejecting a non-finite server update.

Clients that remember. With an uplink whose clients keep state between the rounds
they are sampled in (`aggregator.error_feedback`), the round is `stateful_next_fn`:
the same four lines, with each client's state coming in beside its data and going
out beside its update, both CLIENTS-placed. The loop keeps the states between
rounds in the client-state store (client_state.py). A new algorithm whose clients
keep state of their own follows scaffold.py, this module with control variates.
"""

from __future__ import annotations

import collections
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.aggregators.error_feedback import ClientStatefulAggregation
from federated_research.algorithms import (
    ClientStatefulProcess,
    FederatedAlgorithm,
    StatefulOutput,
    aggregation_parts,
)
from federated_research.distributors import Distributor
from federated_research.distributors.plain import PlainBroadcast
from federated_research.models import ModelSpec

ModelWeights = tff.learning.models.ModelWeights


class ServerState(NamedTuple):
    """What the server keeps between rounds."""

    model: ModelWeights       # the global model
    optimizer: object         # the server optimizer's state (e.g. Adam's moments)
    distributor: object       # the downlink's state (e.g. a compressor's seed)
    aggregator: object        # the uplink's state (e.g. adaptive clipping norms)


class ClientOutput(NamedTuple):
    """What a client sends back (`delta`, `weight`) and what it measured (`metrics`)."""

    delta: object             # initial minus trained weights (TFF's sign convention)
    weight: tf.Tensor         # the number of examples the client trained on
    metrics: object           # unfinalised training metrics (loss sums, counts)


@tf.function
def local_training(model: tff.learning.models.VariableModel,
                   optimizer: tff.learning.optimizers.Optimizer,
                   initial: ModelWeights, dataset: tf.data.Dataset,
                   mu: float = 0.0) -> ClientOutput:
    """Client step: train from `initial` on every batch of `dataset`, in order.

    `mu` > 0 adds FedProx's proximal term mu/2 ||w - initial||^2 to the loss
    (Li et al. 2020), whose gradient mu (w - initial) pulls towards the server model.
    """
    weights = ModelWeights.from_model(model)
    tf.nest.map_structure(lambda v, w: v.assign(w), weights, initial)
    trainable = tuple(weights.trainable)

    def train_on_batch(state, batch):
        num_examples, optimizer_state = state
        with tf.GradientTape() as tape:
            output = model.forward_pass(batch, training=True)
        gradients = tape.gradient(output.loss, trainable)
        if mu > 0:
            gradients = tuple(g + mu * (w - w0) for g, w, w0
                              in zip(gradients, trainable, initial.trainable, strict=True))
        optimizer_state, updated = optimizer.next(optimizer_state, trainable, gradients)
        for variable, value in zip(trainable, updated, strict=True):
            variable.assign(value)
        return num_examples + tf.cast(output.num_examples, tf.int64), optimizer_state

    specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)
    state = (tf.constant(0, tf.int64), optimizer.initialize(specs))
    for batch in iter(dataset):  # a while-loop; `for batch in dataset` would be a reduce
        state = train_on_batch(state, batch)
    num_examples, _ = state
    delta = tf.nest.map_structure(tf.subtract, initial.trainable, weights.trainable)
    return ClientOutput(delta, tf.cast(num_examples, tf.float32),
                        model.report_local_unfinalized_metrics())


def tensor_specs(types) -> tuple[tf.TensorSpec, ...]:
    """TensorSpecs of a struct of tensor types (what optimizers initialise from)."""
    return tuple(tf.TensorSpec(t.shape, t.dtype) for t in types)


def model_types(model: ModelSpec) -> tuple[tff.Type, tff.Type, object]:
    """The model's weights type, a client's data type and the metrics' finalizers."""
    weights_type = tff.learning.models.weights_type_from_model(model.tff_model_fn)
    with tf.Graph().as_default():  # a throwaway model, only to read types off it
        probe = model.tff_model_fn()
        data_type = tff.SequenceType(tff.types.tensorflow_to_type(probe.input_spec))
        return weights_type, data_type, probe.metric_finalizers()


def build_custom_fedavg(model: ModelSpec, client_optimizer: tff.learning.optimizers.Optimizer,
                        server_optimizer: tff.learning.optimizers.Optimizer,
                        aggregator: tff.aggregators.WeightedAggregationFactory,
                        distributor: Distributor | None = None,
                        proximal_strength: float = 0.0) -> FederatedAlgorithm:
    """FedAvg as a learning process built from Federated Core parts (FedProx with
    `proximal_strength` > 0).

    Its rounds are `next_fn` below; with an aggregator whose clients keep state
    (error feedback) they are `stateful_next_fn`, the same four steps.
    """
    # --- types: what a model's weights, a client's data and its metrics look like
    weights_type, data_type, metric_finalizers = model_types(model)

    # --- the parts the run chose: downlink, uplink, metrics aggregation
    distribution = (distributor or PlainBroadcast()).create(weights_type)
    aggregation = aggregator.create(weights_type.trainable, tff.TensorType(np.float32))
    aggregate_metrics = tff.learning.metrics.sum_then_finalize(metric_finalizers)

    # --- TensorFlow: what runs on a client, and on the server
    @tff.tensorflow.computation(weights_type, data_type)
    def client_update(initial, dataset):
        return local_training(model.tff_model_fn(), client_optimizer, initial, dataset,
                              proximal_strength)

    @tff.tensorflow.computation
    def initial_model():
        return ModelWeights.from_model(model.tff_model_fn())

    @tff.tensorflow.computation
    def initial_optimizer_state():
        return server_optimizer.initialize(tensor_specs(weights_type.trainable))

    optimizer_state_type = initial_optimizer_state.type_signature.result

    @tff.tensorflow.computation(weights_type, optimizer_state_type, weights_type.trainable)
    def server_update(model_weights, optimizer_state, mean_delta):
        optimizer_state, trainable = server_optimizer.next(
            optimizer_state, tuple(model_weights.trainable), tuple(mean_delta))
        return (ModelWeights(list(trainable), model_weights.non_trainable), optimizer_state)

    # --- Federated Core: where each value lives and what crosses the network
    @tff.federated_computation
    def initialize_fn():
        return tff.federated_zip(ServerState(
            model=tff.federated_eval(initial_model, tff.SERVER),
            optimizer=tff.federated_eval(initial_optimizer_state, tff.SERVER),
            distributor=distribution.initialize(),
            aggregator=aggregation.initialize()))

    state_type = initialize_fn.type_signature.result

    def server_step(state, sent, trained, averaged):                                    # 4
        new_model, optimizer_state = tff.federated_map(
            server_update, (state.model, state.optimizer, averaged.result))
        new_state = tff.federated_zip(ServerState(new_model, optimizer_state, sent.state,
                                                  averaged.state))
        metrics = tff.federated_zip(collections.OrderedDict(
            distributor=sent.measurements,
            client_work=collections.OrderedDict(train=aggregate_metrics(trained.metrics)),
            aggregator=averaged.measurements))
        return tff.learning.templates.LearningProcessOutput(new_state, metrics)

    @tff.tensorflow.computation(state_type.member)
    def get_model_weights(state):
        return state.model

    @tff.tensorflow.computation(state_type.member, weights_type)
    def set_model_weights(state, model_weights):
        return ServerState(model_weights, state.optimizer, state.distributor, state.aggregator)

    # The accounting measures the uplink without the simulation-only diagnostics.
    uplink, diagnostics = aggregation_parts(aggregator, weights_type.trainable,
                                            tff.TensorType(np.float32))
    parts = (state_type, data_type, distribution, aggregation, client_update, server_step)
    if isinstance(aggregation, ClientStatefulAggregation):  # clients that remember
        process = ClientStatefulProcess(initialize_fn, stateful_next_fn(*parts), get_model_weights,
                                        set_model_weights, aggregation.initial_client_state)
    else:
        process = tff.learning.templates.LearningProcess(initialize_fn, next_fn(*parts),
                                                         get_model_weights, set_model_weights)
    return FederatedAlgorithm(process=process, distributor=distribution, aggregation=uplink,
                              diagnostics=diagnostics)


def next_fn(state_type, data_type, distribution, aggregation, client_update,
            server_step) -> tff.Computation:
    """A round: the four steps, with every value placed where it lives."""

    @tff.federated_computation(state_type, tff.FederatedType(data_type, tff.CLIENTS))
    def next_fn(state, client_data):
        sent = distribution.next(state.distributor, state.model)                         # 1
        trained = tff.federated_map(client_update, (sent.result, client_data))           # 2
        averaged = aggregation.next(state.aggregator, trained.delta, trained.weight)     # 3
        return server_step(state, sent, trained, averaged)                               # 4

    return next_fn


def stateful_next_fn(state_type, data_type, distribution, aggregation, client_update,
                     server_step) -> tff.Computation:
    """The same four steps, for clients that remember (here, the uplink's error feedback):
    each client's state comes in beside its data and goes out beside its update. It
    never crosses the network (no intrinsic moves it), so no bit of it is counted."""
    client_state_type = tff.FederatedType(aggregation.client_state_type, tff.CLIENTS)

    @tff.federated_computation(state_type, tff.FederatedType(data_type, tff.CLIENTS),
                               client_state_type)
    def next_fn(state, client_data, client_state):
        sent = distribution.next(state.distributor, state.model)                         # 1
        trained = tff.federated_map(client_update, (sent.result, client_data))           # 2
        averaged = aggregation.next(state.aggregator, trained.delta, trained.weight,      # 3
                                    client_state)
        output = server_step(state, sent, trained, averaged)                             # 4
        return StatefulOutput(output.state, output.metrics, averaged.client_state,
                              averaged.client_measurements)

    return next_fn
