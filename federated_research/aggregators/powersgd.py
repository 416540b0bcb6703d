"""PowerSGD (Vogels et al. 2019) as one aggregation process: two messages up, two down.

The algorithm, its options and its exact bits are in compression/powersgd.py. A round
is eight steps, every transfer a federated intrinsic, so the bit accounting
(comm_bits.py) reads all of it off this process as model traffic:

    1. federated_broadcast(state)       Q of each matrix (or, cold, the round number)
    2. federated_map(client_first)      Delta = update + e;  P_i = Delta Q
    3. federated_sum(w P_i, w x, w)     up: P_i, the tensors sent as float32, the weight
    4. federated_map(server_heard)      P_hat = orth(mean P); the float32 tensors' mean
    5. federated_broadcast(P_hat)       down
    6. federated_map(client_second)     Q_i = Delta^T P_hat;  e <- Delta - P_hat Q_i^T
    7. federated_sum(w Q_i)             up
    8. federated_map(server_finish)     Q = mean Q_i; the aggregate P_hat Q^T; Q is kept

Each client scales what it sends by its weight w (its examples), so both sums are
weighted means once divided by the sum of the weights the server heard in step 3:
the weight travels once. A client whose update is not finite sends zeros at weight 0
and, like one without examples, keeps its residual (nothing of it was delivered).

With `error_feedback` the clients' residuals e (one matrix per compressed tensor) are
CLIENTS-placed state in and out of `next`, a ClientStatefulAggregation kept by the
client-state store, exactly as error_feedback.py's; no intrinsic moves them, so no bit
of them is counted. Without it the process is a plain AggregationProcess, which TFF's
own builders (fedavg, fedsgd) run. Its server state is Q either way (warm start), or
the round number (cold: each client draws the round's Q from the run seed).

Orthogonalisation is a QR decomposition with R's diagonal made non-negative, which is
Gram-Schmidt's result (the paper's) computed stably; a column of P that is zero gets
some orthonormal direction rather than a division by zero.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions

from federated_research.aggregators.error import error_metrics
from federated_research.aggregators.error_feedback import (
    ClientStatefulAggregation,
    ClientStepFactory,
    StatefulAggregationOutput,
)
from federated_research.compression.codec import restore, tensor_seed
from federated_research.compression.powersgd import PowerSgd
from federated_research.errors import ConfigError


def orthonormal(p: tf.Tensor) -> tf.Tensor:
    """The n x r matrix of orthonormal columns Gram-Schmidt makes of P's (QR, R's diagonal
    made non-negative)."""
    q, r = tf.linalg.qr(p)
    return q * tf.where(tf.linalg.diag_part(r) < 0, -1.0, 1.0)


class Layout:
    """Which tensors are sent as matrices (n, m) at rank r, and which as float32."""

    def __init__(self, options: PowerSgd, specs) -> None:
        self.specs = specs
        shapes = [tuple(int(d) for d in s.shape) for s in tf.nest.flatten(specs)]
        self.plans = [options.layout(s) for s in shapes]
        self.matrices = [p for p in self.plans if p is not None]
        self.raw = [i for i, p in enumerate(self.plans) if p is None]
        self.seed = options.seed
        if not self.matrices:
            raise ConfigError(f"aggregator.rank={options.rank}", "no weight matrix of this "
                              "model is sent compressed: for each, n m / (r (n + m)) is at "
                              f"most min_compression_rate={options.min_compression_rate}",
                              "lower aggregator.min_compression_rate or aggregator.rank, "
                              "or use aggregator=mean")

    def split(self, flat: list[tf.Tensor]) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """Flat tensors -> (the matrices X = M^T, m x n; the tensors sent as float32)."""
        matrices = [tf.reshape(x, [p[1], p[0]]) for x, p in zip(flat, self.plans, strict=True)
                    if p is not None]
        return matrices, [flat[i] for i in self.raw]

    def join(self, matrices: list[tf.Tensor], raw: list[tf.Tensor]):
        """(matrices, float32 tensors) -> the value, in the shapes of `specs`."""
        matrices, raw = iter(matrices), iter(raw)
        flat = [next(raw) if p is None else tf.reshape(next(matrices), [-1]) for p in self.plans]
        return restore(flat, self.specs)

    def draw(self, round_num: tf.Tensor) -> list[tf.Tensor]:
        """Each matrix's Q (m x r) for a round, i.i.d. N(0, 1) from the run seed."""
        round_num = tf.cast(round_num, tf.int32)
        return [tf.random.stateless_normal([m, r], tensor_seed(round_num, self.seed, j))
                for j, (_, m, r) in enumerate(self.matrices)]

    def residual_type(self):
        return tff.types.to_type([(np.float32, [m, n]) for n, m, _ in self.matrices])


@dataclass(frozen=True)
class PowerSgdFactory(ClientStepFactory, tff.aggregators.WeightedAggregationFactory):
    """`create(value_type, weight_type)` -> PowerSGD's aggregation of `options`; with error
    feedback a ClientStatefulAggregation, else an AggregationProcess. `clip_norm` clips
    each update on its client before the residual is added; `log_error` adds
    comm/update_mse."""

    options: PowerSgd
    clip_norm: float | None = None
    log_error: bool = False

    @property
    def keeps_client_state(self) -> bool:
        return self.options.error_feedback

    @property
    def feedback(self) -> str:
        return "aggregator.error_feedback=true"

    def create(self, value_type, weight_type):
        layout = Layout(self.options, type_conversions.type_to_tf_tensor_specs(value_type))
        warm, ef = self.options.warm_start, self.options.error_feedback
        init = tff.tensorflow.computation(lambda: layout.draw(0) if warm else tf.constant(0))
        init_fn = tff.federated_computation(lambda: tff.federated_eval(init, tff.SERVER))
        state_type = init_fn.type_signature.result
        memory = (layout.residual_type(),) if ef else ()
        first = tff.tensorflow.computation(value_type, weight_type, *memory, state_type.member)(
            _client_first(layout, warm, ef, self.clip_norm))
        heard = tff.tensorflow.computation(first.type_signature.result[0])(_server_heard(layout))
        second = tff.tensorflow.computation(first.type_signature.result[1], np.float32, *memory,
                                            heard.type_signature.result["p_hat"])(
            _client_second(ef))
        finish = tff.tensorflow.computation(state_type.member, heard.type_signature.result,
                                            second.type_signature.result[0] if ef
                                            else second.type_signature.result)(
            _server_finish(layout, warm))
        error = tff.tensorflow.computation(value_type, value_type)(
            lambda estimate, exact: error_metrics(estimate, exact, "update"))
        log_error = self.log_error

        def round_(state, value, weight, *residuals):
            start = tff.federated_broadcast(state)                                       # 1
            sent = tff.federated_map(first, (value, weight, *residuals, start))          # 2
            orth = tff.federated_map(heard, tff.federated_sum(sent[0]))                  # 3, 4
            p_hat = tff.federated_broadcast(orth["p_hat"])                               # 5
            answered = tff.federated_map(second, (sent[1], sent[2], *residuals, p_hat))  # 6
            q_sum = tff.federated_sum(answered[0] if residuals else answered)            # 7
            finished = tff.federated_map(finish, (state, orth, q_sum))                   # 8
            measured = (tff.federated_zip(collections.OrderedDict(update_error=tff.federated_map(
                error, (finished[1], tff.federated_mean(value, weight)))))  # simulation only
                if log_error else tff.federated_value((), tff.SERVER))
            return finished, measured, answered

        clients = (tff.FederatedType(value_type, tff.CLIENTS),
                   tff.FederatedType(weight_type, tff.CLIENTS))
        if not ef:
            @tff.federated_computation(state_type, *clients)
            def next_fn(state, value, weight):
                finished, measured, _ = round_(state, value, weight)
                return tff.templates.MeasuredProcessOutput(finished[0], finished[1], measured)

            return tff.templates.AggregationProcess(init_fn, next_fn)

        @tff.federated_computation(state_type, *clients,
                                   tff.FederatedType(memory[0], tff.CLIENTS))
        def stateful_next_fn(state, value, weight, residual):
            finished, measured, answered = round_(state, value, weight, residual)
            return StatefulAggregationOutput(
                finished[0], finished[1], measured, answered[1],
                collections.OrderedDict(residual_norm=answered[2]))

        initial = [np.zeros([m, n], np.float32) for n, m, _ in layout.matrices]
        return ClientStatefulAggregation(init_fn, stateful_next_fn, initial)


def _arity(body, ef: bool):
    """`body(a, b, residual, last)` as a function of (a, b, residual, last) with error
    feedback, else of (a, b, last): TFF reads a computation's parameters off its signature."""
    if ef:
        return lambda a, b, residual, last: body(a, b, residual, last)
    return lambda a, b, last: body(a, b, None, last)


def _client_first(layout: Layout, warm: bool, ef: bool, clip_norm: float | None):
    """(update, weight, [residual], Q or round) -> ((w P_i, w x_raw, w), Delta, w)."""

    def client_first(value, weight, residual, start):
        flat = [tf.reshape(tf.cast(v, tf.float32), [-1]) for v in tf.nest.flatten(value)]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(x)) for x in flat])
        flat = [tf.where(finite, x, tf.zeros_like(x)) for x in flat]
        if clip_norm is not None:
            flat, _ = tf.clip_by_global_norm(flat, clip_norm)
        w = tf.where(finite, tf.cast(weight, tf.float32), 0.0)
        deltas, raw = layout.split(flat)
        if ef:
            deltas = [d + e for d, e in zip(deltas, residual, strict=True)]
        qs = start if warm else layout.draw(start)
        sent = collections.OrderedDict(
            p=[w * tf.matmul(d, q, transpose_a=True) for d, q in zip(deltas, qs, strict=True)])
        if raw:
            sent["raw"] = [w * x for x in raw]
        sent["weight"] = w
        return sent, deltas, w

    return _arity(client_first, ef)


def _server_heard(layout: Layout):
    """The first sums -> P_hat of each matrix, the float32 tensors' mean, the weight."""

    def server_heard(sums):
        heard = collections.OrderedDict(p_hat=[orthonormal(p) for p in sums["p"]])
        if layout.raw:
            heard["raw"] = [tf.math.divide_no_nan(x, sums["weight"]) for x in sums["raw"]]
        heard["weight"] = sums["weight"]
        return heard

    return server_heard


def _client_second(ef: bool):
    """(Delta, w, [residual], P_hat) -> w Q_i [, the new residual, its norm]."""

    def client_second(deltas, w, residual, p_hat):
        qs = [tf.matmul(d, p) for d, p in zip(deltas, p_hat, strict=True)]
        sent = [w * q for q in qs]
        if not ef:
            return sent
        kept = [tf.where(w > 0, d - tf.matmul(q, p, transpose_b=True), e)
                for d, q, p, e in zip(deltas, qs, p_hat, residual, strict=True)]
        return sent, kept, tf.linalg.global_norm(kept)

    return _arity(client_second, ef)


def _server_finish(layout: Layout, warm: bool):
    """(state, what step 4 heard, sum of w Q_i) -> (new state, the aggregate P_hat Q^T)."""

    def server_finish(state, heard, q_sum):
        total = heard["weight"]
        qs = [tf.math.divide_no_nan(q, total) for q in q_sum]
        approx = [tf.matmul(q, p, transpose_b=True) for q, p in zip(qs, heard["p_hat"],
                                                                     strict=True)]
        result = layout.join(approx, heard["raw"] if layout.raw else [])
        if warm:  # a round nobody was heard in keeps the last Q
            return [tf.where(total > 0, q, old) for q, old in zip(qs, state, strict=True)], result
        return state + 1, result

    return server_finish
