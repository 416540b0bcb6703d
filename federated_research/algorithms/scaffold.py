"""SCAFFOLD (Karimireddy et al. 2020): FedAvg whose clients correct their drift with
control variates, option II of the paper, on the Federated Core.

The server keeps a control variate c, each client its own c_i (in the client-state
store: client_state.py). A round, beside custom_fedavg.py's four steps:

  1. broadcast    the model x and the server's c (through the run's distributor);
  2. client       K local steps y <- y - lr (g(y) - c_i + c), then
                  c_i+ = c_i - c + (x - y) / (K lr)             (option II)
                  and sends the update x - y and its control change c_i+ - c_i;
  3. aggregation  both through the run's aggregator (compressed and counted alike:
                  SCAFFOLD sends twice FedAvg's uplink, and twice its downlink);
                  the update weighted by examples as in FedAvg, the control change
                  uniformly as in the paper;
  4. server       x <- server optimizer step with the mean update;
                  c <- c + (|S| / N) mean(c_i+ - c_i)  (N: the population).

`lr` is the client optimizer's learning rate; the local solver is plain SGD, as in
the paper (other client optimizers, gradient clipping, update clipping and EF21,
whose server keeps a running estimate instead of each round's mean, are refused in
one line). With every c zero, the first round is FedAvg's. Each control change
also sends a weight of 1 (32 bits, TFF's weighted mean), counted with it.
"""

from __future__ import annotations

import collections
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.aggregators.error_feedback import ErrorFeedbackFactory, with_client_state
from federated_research.algorithms import (
    ClientStatefulProcess,
    FederatedAlgorithm,
    StatefulOutput,
    aggregation_parts,
)
from federated_research.algorithms.custom_fedavg import model_types, tensor_specs
from federated_research.clipping import GradientClipping
from federated_research.distributors import Distributor
from federated_research.distributors.plain import PlainBroadcast
from federated_research.errors import ConfigError
from federated_research.models import ModelSpec

ModelWeights = tff.learning.models.ModelWeights


class ServerState(NamedTuple):
    model: ModelWeights
    optimizer: object
    control: object                # the server's control variate c
    distributor: object
    control_distributor: object
    aggregator: object
    control_aggregator: object


class ClientOutput(NamedTuple):
    delta: object                  # x - y
    control_delta: object          # c_i+ - c_i, what the client sends
    control: object                # c_i+, what the client keeps
    weight: tf.Tensor
    metrics: object


@tf.function
def scaffold_training(model, optimizer, initial: ModelWeights, dataset, server_control,
                      client_control) -> ClientOutput:
    """K local steps corrected by c - c_i, then the new control variate (option II)."""
    weights = ModelWeights.from_model(model)
    tf.nest.map_structure(lambda v, w: v.assign(w), weights, initial)
    trainable = tuple(weights.trainable)
    correction = [c - ci for c, ci in zip(server_control, client_control, strict=True)]

    def train_on_batch(state, batch):
        num_examples, steps, optimizer_state = state
        with tf.GradientTape() as tape:
            output = model.forward_pass(batch, training=True)
        gradients = tape.gradient(output.loss, trainable)
        gradients = tuple(g + k for g, k in zip(gradients, correction, strict=True))
        optimizer_state, updated = optimizer.next(optimizer_state, trainable, gradients)
        for variable, value in zip(trainable, updated, strict=True):
            variable.assign(value)
        return num_examples + tf.cast(output.num_examples, tf.int64), steps + 1, optimizer_state

    specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)
    optimizer_state = optimizer.initialize(specs)
    state = (tf.constant(0, tf.int64), tf.constant(0, tf.int64), optimizer_state)
    for batch in iter(dataset):  # a while-loop (see custom_fedavg.local_training)
        state = train_on_batch(state, batch)
    num_examples, steps, optimizer_state = state
    delta = [a - b for a, b in zip(initial.trainable, weights.trainable, strict=True)]
    learning_rate = tf.cast(optimizer.get_hparams(optimizer_state)["learning_rate"], tf.float32)
    scale = tf.math.divide_no_nan(1.0, tf.cast(steps, tf.float32) * learning_rate)
    control = [tf.where(steps > 0, ci - c + scale * d, ci) for ci, c, d in zip(
        client_control, server_control, delta, strict=True)]  # no step: nothing learned
    control_delta = [new - ci for new, ci in zip(control, client_control, strict=True)]
    return ClientOutput(delta, control_delta, control, tf.cast(num_examples, tf.float32),
                        model.report_local_unfinalized_metrics())


def check_scaffold(client_optimizer, aggregator) -> None:
    """Refuse, in one line, what breaks option II's control variates (update clipping
    is refused by config.validate: it needs the config)."""
    if isinstance(client_optimizer, GradientClipping):
        raise ConfigError("client.gradient_clip_norm", "SCAFFOLD corrects each local gradient "
                          "by c - c_i; clipping the corrected gradient breaks the correction",
                          "drop client.gradient_clip_norm with algorithm=scaffold")
    hparams = client_optimizer.get_hparams(
        client_optimizer.initialize((tf.TensorSpec([1], tf.float32),)))
    if set(hparams) != {"learning_rate"}:
        raise ConfigError("algorithm=scaffold", "its control variates are (x - y) / (K lr), "
                          "the mean gradient of K plain SGD steps, which momentum or an "
                          "adaptive client optimizer does not take",
                          "use optimizer@client_optimizer=sgd")
    if isinstance(aggregator, ErrorFeedbackFactory) and aggregator.kind == "ef21":
        raise ConfigError("aggregator.error_feedback=ef21", "EF21's server keeps a running "
                          "estimate, but SCAFFOLD's control variate needs each round's mean "
                          "change", "use aggregator.error_feedback=ef14 with algorithm=scaffold")


def build_scaffold(model: ModelSpec, client_optimizer: tff.learning.optimizers.Optimizer,
                   server_optimizer: tff.learning.optimizers.Optimizer,
                   aggregator: tff.aggregators.WeightedAggregationFactory,
                   distributor: Distributor | None = None,
                   participation: float = 1.0) -> FederatedAlgorithm:
    """SCAFFOLD, option II; `participation` is |S| / N (build.py passes it)."""
    check_scaffold(client_optimizer, aggregator)
    weights_type, data_type, metric_finalizers = model_types(model)
    control_type = weights_type.trainable

    downlink = distributor or PlainBroadcast()
    distribution, control_distribution = downlink.create(weights_type), downlink.create(
        control_type)
    uplink, diagnostics = aggregation_parts(aggregator, control_type, tff.TensorType(np.float32))
    aggregation = with_client_state(aggregator.create(control_type, tff.TensorType(np.float32)))
    # The control change goes through the same aggregator; its error is not logged (one
    # comm/update_mse, the update's).
    control_aggregation = with_client_state(aggregation_parts(
        aggregator, control_type, tff.TensorType(np.float32))[0])
    aggregate_metrics = tff.learning.metrics.sum_then_finalize(metric_finalizers)

    @tff.tensorflow.computation(weights_type, control_type, data_type, control_type)
    def client_update(initial, server_control, dataset, client_control):
        return scaffold_training(model.tff_model_fn(), client_optimizer, initial, dataset,
                                 server_control, client_control)

    @tff.tensorflow.computation
    def initial_model():
        return ModelWeights.from_model(model.tff_model_fn())

    @tff.tensorflow.computation
    def initial_optimizer_state():
        return server_optimizer.initialize(tensor_specs(control_type))

    zeros = tff.tensorflow.computation(
        lambda: [tf.zeros(t.shape, t.dtype) for t in control_type])
    optimizer_state_type = initial_optimizer_state.type_signature.result

    @tff.tensorflow.computation(weights_type, optimizer_state_type, control_type,
                                control_type, control_type)
    def server_update(model_weights, optimizer_state, mean_delta, control, mean_control_delta):
        optimizer_state, trainable = server_optimizer.next(
            optimizer_state, tuple(model_weights.trainable), tuple(mean_delta))
        control = [c + participation * d for c, d in zip(control, mean_control_delta,
                                                         strict=True)]
        return ModelWeights(list(trainable), model_weights.non_trainable), optimizer_state, control

    @tff.federated_computation
    def initialize_fn():
        return tff.federated_zip(ServerState(
            model=tff.federated_eval(initial_model, tff.SERVER),
            optimizer=tff.federated_eval(initial_optimizer_state, tff.SERVER),
            control=tff.federated_eval(zeros, tff.SERVER),
            distributor=distribution.initialize(),
            control_distributor=control_distribution.initialize(),
            aggregator=aggregation.initialize(),
            control_aggregator=control_aggregation.initialize()))

    state_type = initialize_fn.type_signature.result
    client_state_type = tff.types.to_type(collections.OrderedDict(
        control=control_type, aggregator=aggregation.client_state_type,
        control_aggregator=control_aggregation.client_state_type))

    @tff.federated_computation(state_type, tff.FederatedType(data_type, tff.CLIENTS),
                               tff.FederatedType(client_state_type, tff.CLIENTS))
    def next_fn(state, client_data, client_state):
        sent = distribution.next(state.distributor, state.model)                          # 1
        control_sent = control_distribution.next(state.control_distributor, state.control)
        trained = tff.federated_map(client_update, (sent.result, control_sent.result,    # 2
                                                    client_data, client_state.control))
        averaged = aggregation.next(state.aggregator, trained.delta, trained.weight,      # 3
                                    client_state.aggregator)
        control_averaged = control_aggregation.next(
            state.control_aggregator, trained.control_delta,
            tff.federated_value(np.float32(1.0), tff.CLIENTS), client_state.control_aggregator)
        updated = tff.federated_map(server_update, (                                      # 4
            state.model, state.optimizer, averaged.result, state.control,
            control_averaged.result))
        new_state = tff.federated_zip(ServerState(
            updated[0], updated[1], updated[2], sent.state, control_sent.state,
            averaged.state, control_averaged.state))
        metrics = tff.federated_zip(collections.OrderedDict(
            distributor=sent.measurements,
            client_work=collections.OrderedDict(train=aggregate_metrics(trained.metrics)),
            aggregator=averaged.measurements))
        client_state = tff.federated_zip(collections.OrderedDict(
            control=trained.control, aggregator=averaged.client_state,
            control_aggregator=control_averaged.client_state))
        return StatefulOutput(new_state, metrics, client_state, averaged.client_measurements)

    @tff.tensorflow.computation(state_type.member)
    def get_model_weights(state):
        return state.model

    @tff.tensorflow.computation(state_type.member, weights_type)
    def set_model_weights(state, model_weights):
        return ServerState(model_weights, *list(state)[1:])

    initial_client_state = collections.OrderedDict(
        control=[np.zeros(t.shape, np.float32) for t in control_type],
        aggregator=aggregation.initial_client_state,
        control_aggregator=control_aggregation.initial_client_state)
    process = ClientStatefulProcess(initialize_fn, next_fn, get_model_weights, set_model_weights,
                                    initial_client_state)
    return FederatedAlgorithm(process=process, distributor=distribution, aggregation=uplink,
                              diagnostics=diagnostics,
                              extra_model_parts=(control_distribution, control_aggregation))
