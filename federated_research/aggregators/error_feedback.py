"""Error feedback: a compressor whose clients remember what it did not send.

`aggregator.error_feedback` wraps any compression method (topk, quantize, drive, ...):

  ef14  EF-SGD (Stich et al. 2018; Karimireddy et al. 2019). Client i keeps a
        residual e_i. It sends m = C(delta_i + e_i) and keeps
        e_i <- delta_i + e_i - D(m): what was dropped now is added back next time.
        The server takes the weighted mean of D(m), as without feedback.
  ef21  EF21 (Richtarik et al. 2021) in its partial-participation form (EF21-PP,
        Fatkhullin et al. 2021). Client i keeps g_i, its last estimate as the server
        knows it. It sends m = C(delta_i - g_i) and sets g_i <- g_i + D(m). The
        server keeps the running estimate g = average of every client's g_i; since
        only the sampled clients' g_i moved, g <- g + p * mean_S D(m), with
        p = clients_per_round / population. The server steps with g. The averages
        are over clients, unweighted, as in the paper: a running average of the
        population's estimates has no place for a round's example weights.

(C encodes, D decodes: the method's codecs, aggregators/codec_sum.py.) A client
decodes its own message to know what the server will see: the same decoder, no
traffic. The state is simulation plumbing, as it never leaves a client in a real
deployment: it enters the process as a CLIENTS-placed argument and leaves as a
CLIENTS-placed result, so no federated intrinsic moves it and the bit accounting
(comm_bits.py) never counts it. What crosses the network is what the method sends
without feedback: the message and, under ef14, the client's weight (the weighted
mean's denominator, 32 bits, as TFF's MeanFactory sends); ef21 sends no weight.

Each client also returns the norm of what is still owed, ||e_i|| (ef14) or
||delta_i - g_i|| (ef21), which the loop logs as `client_state/residual_norm`: a
CLIENTS-placed output read by the simulation, like the state, never sent.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions

from federated_research.aggregators.error import UpdateErrorFactory, error_metrics
from federated_research.compression.codec import decode_fn, encode_fn, measured_bits, restore
from federated_research.compression.method import Method


class StatefulAggregationOutput(NamedTuple):
    """What an aggregation with client state returns: the server's part (state, the
    aggregate, its measurements) and the clients' (their new state, what they measured)."""

    state: object
    result: object
    measurements: object
    client_state: object
    client_measurements: object


class ClientStatefulAggregation(tff.templates.IterativeProcess):
    """An aggregation process whose `next(state, value, weight, client_state)` also
    takes and returns CLIENTS-placed state; `initial_client_state` is what a client
    that never sent starts from (numpy arrays)."""

    def __init__(self, initialize_fn, next_fn, initial_client_state) -> None:
        super().__init__(initialize_fn, next_fn, next_is_multi_arg=True)
        self.initial_client_state = initial_client_state
        self.client_state_type = next_fn.type_signature.parameter[3].member


class ClientStepFactory:
    """An uplink factory of this library that runs its own client step (a dataclass with
    fields `clip_norm` and `log_error`): it clips each update on the client
    (client.update_clip_norm, before any feedback, sending no clipped count), logs its own
    error (`log_error`: comm/update_mse), and, where `keeps_client_state`, creates
    ClientStatefulAggregations, which FedAvg runs on the Federated Core (custom_fedavg.py).
    `feedback` is the setting that made its clients keep state, as a user types it."""

    keeps_client_state: bool = True

    @property
    def feedback(self) -> str:
        raise NotImplementedError

    def measured_part(self) -> ClientStepFactory:
        """The same aggregation without the simulation-only exact mean (for the accounting)."""
        return replace(self, log_error=False)

    def diagnostic_process(self, value_type, weight_type) -> tff.templates.MeasuredProcess:
        """Only the traffic `log_error` adds: the raw weighted mean."""
        return UpdateErrorFactory(None).diagnostic_process(value_type, weight_type)


@dataclass(frozen=True)
class ErrorFeedbackFactory(ClientStepFactory):
    """`create(value_type, weight_type)` -> a ClientStatefulAggregation of `method` with
    feedback `kind`; `participation` is p of EF21-PP; `clip_norm` clips each update
    (client.update_clip_norm) before the feedback; `log_error` adds comm/update_mse."""

    method: Method
    kind: str
    participation: float = 1.0
    clip_norm: float | None = None
    log_error: bool = False

    def create(self, value_type, weight_type) -> ClientStatefulAggregation:
        specs = type_conversions.type_to_tf_tensor_specs(value_type)
        codecs = self.method.codecs([tuple(s.shape) for s in tf.nest.flatten(specs)])
        decode = decode_fn(codecs, self.method.seed)
        memory_type = tff.types.to_type([(np.float32, [c.size]) for c in codecs])
        client_step = tff.tensorflow.computation(value_type, weight_type, memory_type)(
            self._client_step(encode_fn(codecs, self.method.seed), decode))
        message_type = client_step.type_signature.result[0]
        weighted = self.kind == "ef14"  # EF21's running average is over clients, unweighted
        variable = any(c.variable for c in codecs)
        zero, accumulate, merge, report = _mean(
            codecs, decode, (message_type, weight_type) if weighted else message_type)
        server_step = tff.tensorflow.computation(memory_type, memory_type)(
            self._server_step(specs))
        error = tff.tensorflow.computation(value_type, value_type)(
            lambda estimate, exact: error_metrics(estimate, exact, "update"))
        initial_estimate = tff.tensorflow.computation(
            lambda: [tf.zeros([c.size], tf.float32) for c in codecs])
        init_fn = tff.federated_computation(
            lambda: tff.federated_eval(initial_estimate, tff.SERVER))

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS),
                                   tff.FederatedType(weight_type, tff.CLIENTS),
                                   tff.FederatedType(memory_type, tff.CLIENTS))
        def next_fn(state, value, weight, memory):
            sent = tff.federated_map(client_step, (value, weight, memory))
            message, memory, owed = sent[0], sent[1], sent[2]
            mean = tff.federated_aggregate(
                tff.federated_zip((message, weight)) if weighted else message, zero(),
                accumulate, merge, report)
            stepped = tff.federated_map(server_step, (state, mean[0]))
            measured = collections.OrderedDict()
            if variable:  # the clients' variable-length codes, as long as they really were
                measured["measured_bits"] = mean[1]
            if self.log_error:  # simulation only: the exact mean, kept out of comm/* bits
                exact = tff.federated_mean(value, weight)
                measured["update_error"] = tff.federated_map(error, (stepped[1], exact))
            measurements = (tff.federated_zip(measured) if measured
                            else tff.federated_value((), tff.SERVER))
            return StatefulAggregationOutput(stepped[0], stepped[1], measurements, memory,
                                             collections.OrderedDict(residual_norm=owed))

        initial = [np.zeros([c.size], np.float32) for c in codecs]
        return ClientStatefulAggregation(init_fn, next_fn, initial)

    def _client_step(self, encode, decode):
        """(update, weight, memory) -> (message, new memory, norm of what is still owed).

        A non-finite update is sent as zero. Under ef14 a client of weight 0 (no
        examples, or a non-finite update) keeps its residual: the server ignores its
        message, so nothing of the residual was delivered.
        """
        ef21, clip_norm = self.kind == "ef21", self.clip_norm

        def client_step(value, weight, memory):
            flat = [tf.reshape(tf.cast(v, tf.float32), [-1]) for v in tf.nest.flatten(value)]
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(x)) for x in flat])
            flat = [tf.where(finite, x, tf.zeros_like(x)) for x in flat]
            if clip_norm is not None:
                flat, _ = tf.clip_by_global_norm(flat, clip_norm)
            if ef21:   # send the change of the estimate; g_i follows what the server saw
                message = encode([x - g for x, g in zip(flat, memory, strict=True)])
                memory = [g + s for g, s in zip(memory, decode(message), strict=True)]
                owed = [x - g for x, g in zip(flat, memory, strict=True)]
            else:      # ef14: send update plus residual; keep what was not sent
                corrected = [x + e for x, e in zip(flat, memory, strict=True)]
                message = encode(corrected)
                delivered = tf.logical_and(finite, tf.cast(weight, tf.float32) > 0)
                memory = [tf.where(delivered, c - s, e) for c, s, e in zip(
                    corrected, decode(message), memory, strict=True)]
                owed = memory
            return message, memory, tf.linalg.global_norm(owed)

        return client_step

    def _server_step(self, specs):
        """(estimate, mean of the decoded messages) -> (new estimate, the aggregate)."""
        ef21, participation = self.kind == "ef21", self.participation

        def server_step(estimate, mean):
            if ef21:  # EF21-PP: the sampled clients' share of the population's estimate
                estimate = [g + participation * m for g, m in zip(estimate, mean, strict=True)]
                return estimate, restore(estimate, specs)
            return estimate, restore(mean, specs)

        return server_step

    @property
    def feedback(self) -> str:
        return f"aggregator.error_feedback={self.kind}"


def _mean(codecs, decode, sent_type):
    """`federated_aggregate`'s parts for the mean of the decoded messages: weighted by
    the weight each client sends beside its message when `sent_type` is (message,
    weight), else by client (the server counts the messages; nothing more is sent).
    Reports (the mean, the bits the messages' variable-length codes took)."""
    weighted = isinstance(sent_type, tuple)
    sum_type = tff.types.to_type(([(np.float32, [c.size]) for c in codecs], np.float32,
                                  np.int64))

    @tff.tensorflow.computation
    def zero():
        return ([tf.zeros([c.size], tf.float32) for c in codecs], tf.constant(0.0),
                tf.constant(0, tf.int64))

    @tff.tensorflow.computation(sum_type, sent_type)
    def accumulate(total, sent):
        values, weights, bits = total
        message, weight = sent if weighted else (sent, 1.0)
        weight = tf.cast(weight, tf.float32)
        return ([t + weight * x for t, x in zip(values, decode(message), strict=True)],
                weights + weight, bits + measured_bits(codecs, message))

    @tff.tensorflow.computation(sum_type, sum_type)
    def merge(a, b):
        return [x + y for x, y in zip(a[0], b[0], strict=True)], a[1] + b[1], a[2] + b[2]

    report = tff.tensorflow.computation(sum_type)(
        lambda total: ([tf.math.divide_no_nan(t, total[1]) for t in total[0]], total[2]))
    return zero, accumulate, merge, report


class KeepNothing:
    """A factory's processes as ones whose clients keep an (empty) state: builds the
    stateful FedAvg around a stateless aggregator (tests compare it with the plain one)."""

    def __init__(self, factory) -> None:
        self.factory = factory

    def create(self, value_type, weight_type) -> ClientStatefulAggregation:
        return with_client_state(self.factory.create(value_type, weight_type))


def with_client_state(process) -> ClientStatefulAggregation:
    """`process` itself if its clients keep state; else it as one whose clients keep
    nothing (an empty state that goes back unchanged), for the stateful FedAvg."""
    if isinstance(process, ClientStatefulAggregation):
        return process
    empty = tff.StructType([])

    @tff.federated_computation(process.initialize.type_signature.result,
                               *process.next.type_signature.parameter[1:],
                               tff.FederatedType(empty, tff.CLIENTS))
    def next_fn(state, value, weight, client_state):
        output = process.next(state, value, weight)
        return StatefulAggregationOutput(output.state, output.result, output.measurements,
                                         client_state, collections.OrderedDict())

    return ClientStatefulAggregation(process.initialize, next_fn, ())
