"""`distributor=federated_dropout`: Caldas et al. (2018)'s sub-model broadcast.

Each round the server drops a fraction `rate` of every hidden layer's units (a Dense
layer's units, a convolution's filters), drawn from (seed, round) and the same for
every client of the round, as in Caldas et al.'s "Expanding the reach of federated
learning beyond the datacenter" (Verardo et al. 2022 vary it per client). It sends
the sub-model: the kept units' weights and biases, and the next layer's weights from
kept units only (for a Dense layer after a flattened convolution: every position of
a kept filter). The sub-model goes through `codec`, any other distributor (the plain
float32 broadcast, or a quantising one), so the two compose.

A client puts the sub-model back into the full shapes with zeros where units were
dropped, and trains that. This is training the sub-model, exactly: a dropped unit has
zero weights in and out, so its activation is f(0) = 0 (checked, for every hidden
activation, where the plan is made) and every weight that touches it gets a zero
gradient and stays zero, under SGD, momentum, Adam and FedProx's proximal term alike.
The client's update is then zero outside the sub-model, so the uplink (the run's
aggregator inside `SubModelUplink`) sends the sub-model's coordinates only and the
server puts them back in place: the update of a dropped unit's weights is zero that
round (a server optimizer with momentum, e.g. Adam, still moves them by its momentum).
tests/test_federated_dropout.py checks both against a Keras sub-model. comm/update_mse
averages over the full model, so it reads (sub-model size / model size) of the
sub-model's own error; comm/update_nmse is a ratio and is not diluted.

Bits, read off the computations as for every distributor (comm_bits.py):
    down = codec's bits for the sub-model + 32 (the round's number)
    up   = the aggregator's bits for the sub-model + its own 32 down
A client derives the kept units from the round's number; a deployed client that
trains the small model itself would not need it, and it is counted anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions

from federated_research.aggregators.error import UpdateErrorFactory
from federated_research.aggregators.error_feedback import ClientStepFactory
from federated_research.errors import ConfigError
from federated_research.models import ModelSpec
from federated_research.seeds import Stream, int_seed

KEY = "distributor=federated_dropout"
WEIGHTED = (tf.keras.layers.Dense, tf.keras.layers.Conv1D, tf.keras.layers.Conv2D,
            tf.keras.layers.Conv3D)
# Layers with no weights that keep a feature's channel on its last axis (zeros stay zeros).
CHANNEL_PRESERVING = (tf.keras.layers.Flatten, tf.keras.layers.Dropout,
                      tf.keras.layers.MaxPooling1D, tf.keras.layers.MaxPooling2D,
                      tf.keras.layers.MaxPooling3D, tf.keras.layers.AveragePooling1D,
                      tf.keras.layers.AveragePooling2D, tf.keras.layers.AveragePooling3D,
                      tf.keras.layers.GlobalAveragePooling1D,
                      tf.keras.layers.GlobalAveragePooling2D,
                      tf.keras.layers.GlobalMaxPooling1D, tf.keras.layers.GlobalMaxPooling2D,
                      tf.keras.layers.Activation, tf.keras.layers.InputLayer)


@dataclass(frozen=True)
class Cut:
    """Keep, along `axis`, the kept units of hidden layer `layer`; a flattened feature
    map repeats each unit at `positions` places (index position x units + unit)."""

    axis: int
    layer: int
    positions: int = 1


@dataclass(frozen=True)
class SubModelPlan:
    """Which rows and columns of each trainable weight make a round's sub-model."""

    units: tuple[int, ...]              # each hidden layer's units (or filters)
    kept: tuple[int, ...]               # how many of them a sub-model keeps
    cuts: tuple[tuple[Cut, ...], ...]   # per trainable weight, in the model's order
    shapes: tuple[tuple[int, ...], ...]  # the full model's trainable shapes
    seed: int
    sub_shapes: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        sub = []
        for shape, cuts in zip(self.shapes, self.cuts, strict=True):
            shape = list(shape)
            for cut in cuts:
                shape[cut.axis] = self.kept[cut.layer] * cut.positions
            sub.append(tuple(shape))
        object.__setattr__(self, "sub_shapes", tuple(sub))

    def kept_units(self, round_num: tf.Tensor) -> list[tf.Tensor]:
        """Each hidden layer's kept units, ascending: the `kept` of highest score under a
        stateless draw from (seed, round, layer), the same wherever it is computed."""
        round_num = tf.cast(round_num, tf.int64)
        units = []
        for layer, (n, k) in enumerate(zip(self.units, self.kept, strict=True)):
            seed = tf.stack([tf.constant(self.seed, tf.int64), round_num * 1000 + layer])
            scores = tf.random.stateless_uniform([n], seed=seed)
            units.append(tf.sort(tf.math.top_k(scores, k).indices))
        return units

    def _indices(self, cut: Cut, kept: list[tf.Tensor]) -> tf.Tensor:
        units = kept[cut.layer]
        if cut.positions == 1:
            return units
        offsets = tf.range(cut.positions, dtype=tf.int32)[:, None] * self.units[cut.layer]
        return tf.reshape(offsets + units[None, :], [-1])

    def gather(self, weights: list[tf.Tensor], round_num: tf.Tensor) -> list[tf.Tensor]:
        """The sub-model's weights, cut out of the full model's."""
        kept = self.kept_units(round_num)
        out = []
        for weight, cuts in zip(weights, self.cuts, strict=True):
            for cut in cuts:
                weight = tf.gather(weight, self._indices(cut, kept), axis=cut.axis)
            out.append(weight)
        return out

    def scatter(self, sub: list[tf.Tensor], round_num: tf.Tensor) -> list[tf.Tensor]:
        """The full shapes with the sub-model's values in place and zeros elsewhere."""
        kept = self.kept_units(round_num)
        out = []
        for weight, cuts, shape in zip(sub, self.cuts, self.shapes, strict=True):
            for cut in reversed(cuts):
                weight = _scatter_along(weight, self._indices(cut, kept), cut.axis,
                                        shape[cut.axis])
            out.append(weight)
        return out


def _scatter_along(values: tf.Tensor, indices: tf.Tensor, axis: int, size: int) -> tf.Tensor:
    rank = values.shape.rank
    perm = [axis, *[a for a in range(rank) if a != axis]]
    moved = tf.transpose(values, perm)
    full = tf.scatter_nd(indices[:, None], moved, [size, *moved.shape[1:]])
    return tf.transpose(full, np.argsort(perm).tolist())


def _refuse(problem: str, fix: str) -> ConfigError:
    return ConfigError(KEY, problem, fix)


def _keeps_zero(activation, name: str) -> None:
    if float(activation(tf.zeros([1, 1]))[0, 0]) != 0.0:
        raise _refuse(f"{name}'s activation is not 0 at 0, so a dropped unit would still "
                      "send a value and the full model would not train as the sub-model",
                      "use a model whose hidden activations are 0 at 0 (relu, tanh, linear)")


def _check_layer(layer: tf.keras.layers.Layer, after_hidden: bool) -> None:
    """A layer the plan can cut (Dense, convolution) or pass (pooling, Flatten, ...)."""
    channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
    grouped = getattr(layer, "groups", 1) != 1
    if layer.weights and not (type(layer) in WEIGHTED and channels_last and not grouped):
        raise _refuse(f"layer {layer.name} ({type(layer).__name__}) has no units to drop "
                      "(only Dense and convolution layers do)",
                      "use model=cnn or model=mlp, or distributor=plain")
    if not layer.weights and not (isinstance(layer, CHANNEL_PRESERVING) and channels_last):
        raise _refuse(f"layer {layer.name} ({type(layer).__name__}) may move a unit off the "
                      "last axis", "use model=cnn or model=mlp, or distributor=plain")
    if not layer.weights and isinstance(layer, tf.keras.layers.Activation) and after_hidden:
        _keeps_zero(layer.activation, layer.name)


def plan_sub_models(keras_model: tf.keras.Model, rate: float, seed: int) -> SubModelPlan:
    """The plan for a chain of Dense and convolution layers (model=cnn, mlp): every
    layer but the last loses `rate` of its units. Anything else is refused in one line."""
    if not isinstance(keras_model, tf.keras.Sequential):
        raise _refuse("only a Sequential chain of layers can be cut (a functional model may "
                      "branch or share a layer)", "use model=cnn or model=mlp")
    if keras_model.non_trainable_weights:
        raise _refuse("the model has non-trainable weights (e.g. batch normalisation), which "
                      "a sub-model cannot cut", "use model=cnn or model=mlp")
    layers = [layer for layer in keras_model.layers
              if not isinstance(layer, tf.keras.layers.InputLayer)]
    last = [layer for layer in layers if layer.weights][-1:]
    cuts: dict[int, list[Cut]] = {id(v): [] for v in keras_model.trainable_weights}
    units: list[int] = []
    for layer in layers:
        _check_layer(layer, bool(units))
        if not layer.weights:
            continue
        kernel = layer.kernel
        if units:  # its inputs are the last hidden layer's units (at each position)
            positions, rest = divmod(int(kernel.shape[-2]), units[-1])
            if rest or not positions:
                raise _refuse(f"layer {layer.name}'s {kernel.shape[-2]} inputs are not the "
                              f"{units[-1]} units before it at each position",
                              "use model=cnn or model=mlp")
            cuts[id(kernel)].append(Cut(kernel.shape.rank - 2, len(units) - 1, positions))
        if last and layer is last[0]:
            break
        _keeps_zero(layer.activation, layer.name)
        units.append(int(kernel.shape[-1]))
        cuts[id(kernel)].append(Cut(kernel.shape.rank - 1, len(units) - 1))
        if layer.bias is not None:
            cuts[id(layer.bias)].append(Cut(0, len(units) - 1))
    if not units:
        raise _refuse("the model has no hidden layer whose units could be dropped",
                      "use model=cnn or model=mlp, or distributor=plain")
    return SubModelPlan(units=tuple(units),
                        kept=tuple(max(1, round(n * (1 - rate))) for n in units),
                        cuts=tuple(tuple(cuts[id(v)]) for v in keras_model.trainable_weights),
                        shapes=tuple(tuple(v.shape) for v in keras_model.trainable_weights),
                        seed=seed)


def _tensor_types(shapes) -> list[tff.TensorType]:
    return [tff.TensorType(np.float32, shape) for shape in shapes]


class FederatedDropout:
    """The distributor as configured; `bind` makes the plan for the run's model."""

    def __init__(self, rate: float, seed: int, codec) -> None:
        self.rate, self.seed, self.codec = rate, seed, codec

    def bind(self, model: ModelSpec, aggregator):
        """(this round's sub-model broadcast, the aggregator cut to the same sub-model)."""
        if isinstance(aggregator, ClientStepFactory) and aggregator.keeps_client_state:
            raise _refuse(f"with {aggregator.feedback} each client "
                          "keeps a full-model residual, and a round's sub-model updates "
                          "only part of it", "drop aggregator.error_feedback, or use "
                          "distributor=plain")
        _refuse_coordinate_state(aggregator)
        if not isinstance(aggregator, tff.aggregators.WeightedAggregationFactory):
            raise _refuse(f"the aggregator {type(aggregator).__name__} is not a weighted "
                          "aggregation", "use aggregator=mean or a compression method")
        plan = plan_sub_models(model.keras_fn(), self.rate, int_seed(self.seed, Stream.DROPOUT))
        return SubModelBroadcast(plan, self.codec), _cut_uplink(aggregator, plan)


def _factories(factory):
    """The factory and every factory inside it (clipping, the update-error diagnostic)."""
    yield factory
    for value in getattr(factory, "__dict__", {}).values():
        if isinstance(value, (tff.aggregators.WeightedAggregationFactory,
                              tff.aggregators.UnweightedAggregationFactory)):
            yield from _factories(value)


def _refuse_coordinate_state(aggregator) -> None:
    """A server state indexed by coordinate (FetchSGD's sketches, PowerSGD's warm-started
    Q) would meet other units each round: a sub-model's coordinate i is another weight."""
    from federated_research.aggregators.fetchsgd import FetchSgdFactory
    from federated_research.aggregators.powersgd import PowerSgdFactory

    inner = next((f for f in _factories(aggregator)
                  if isinstance(f, (FetchSgdFactory, PowerSgdFactory))), None)
    if isinstance(inner, FetchSgdFactory):
        raise _refuse("FetchSGD keeps momentum and error sketches of the whole model on the "
                      "server, and a round's sub-model moves every coordinate to another "
                      "unit", "use another aggregator, or distributor=plain")
    if isinstance(inner, PowerSgdFactory) and inner.options.warm_start:
        raise _refuse("PowerSGD's warm start reuses last round's Q, whose rows belonged to "
                      "other units", "pass aggregator.warm_start=false, or distributor=plain")


def _round_counter(inner):
    """(init: the round number 0 beside `inner`'s state, the round number's increment)."""
    increment = tff.tensorflow.computation(tff.TensorType(np.int32))(lambda n: n + 1)

    @tff.federated_computation
    def init_fn():
        return tff.federated_zip((tff.federated_value(0, tff.SERVER), inner.initialize()))

    return init_fn, increment


class SubModelBroadcast:
    """The distribution process: cut, send through the codec, put back on each client."""

    def __init__(self, plan: SubModelPlan, codec) -> None:
        self.plan, self.codec = plan, codec

    def create(self, weights_type: tff.Type) -> tff.learning.templates.DistributionProcess:
        specs = type_conversions.type_to_tf_tensor_specs(weights_type)
        if tuple(tuple(s.shape) for s in specs.trainable) != self.plan.shapes or list(
                specs.non_trainable):
            raise ValueError("the plan was made for another model")  # a bug, not a user's error
        sub_type = tff.types.to_type(tff.learning.models.ModelWeights(
            trainable=_tensor_types(self.plan.sub_shapes), non_trainable=[]))
        inner = self.codec.create(sub_type)
        plan = self.plan
        round_type = tff.TensorType(np.int32)

        @tff.tensorflow.computation(weights_type, round_type)
        def cut(weights, round_num):
            return tff.learning.models.ModelWeights(
                trainable=plan.gather(list(weights.trainable), round_num), non_trainable=[])

        @tff.tensorflow.computation(sub_type, round_type)
        def put_back(sub, round_num):
            return tff.learning.models.ModelWeights(
                trainable=plan.scatter(list(sub.trainable), round_num), non_trainable=[])

        init_fn, increment = _round_counter(inner)

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(weights_type, tff.SERVER))
        def next_fn(state, weights):
            round_num, inner_state = state
            sent = inner.next(inner_state, tff.federated_map(cut, (weights, round_num)))
            received = tff.federated_map(
                put_back, (sent.result, tff.federated_broadcast(round_num)))
            new_state = tff.federated_zip((tff.federated_map(increment, round_num), sent.state))
            return tff.templates.MeasuredProcessOutput(new_state, received, sent.measurements)

        return tff.learning.templates.DistributionProcess(init_fn, next_fn)


def _cut_uplink(aggregator, plan: SubModelPlan):
    """The aggregator on the sub-model; the simulation-only error diagnostic (comm/update_mse,
    against the exact full mean) stays outermost, where the bit accounting sets it apart."""
    if isinstance(aggregator, UpdateErrorFactory):
        return UpdateErrorFactory(SubModelUplink(aggregator.inner, plan))
    if isinstance(aggregator, ClientStepFactory) and aggregator.log_error:
        return UpdateErrorFactory(SubModelUplink(aggregator.measured_part(), plan))
    return SubModelUplink(aggregator, plan)


@dataclass(frozen=True)
class SubModelUplink(tff.aggregators.WeightedAggregationFactory):
    """The run's aggregator on the round's sub-model coordinates; zeros elsewhere."""

    inner: tff.aggregators.WeightedAggregationFactory
    plan: SubModelPlan

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        shapes = tuple(tuple(s.shape) for s in type_conversions.type_to_tf_tensor_specs(
            value_type))
        if shapes != self.plan.shapes:
            raise ValueError("the plan was made for another model")
        sub_type = tff.types.to_type(_tensor_types(self.plan.sub_shapes))
        inner = self.inner.create(sub_type, weight_type)
        plan = self.plan
        round_type = tff.TensorType(np.int32)
        cut = tff.tensorflow.computation(value_type, round_type)(
            lambda value, n: plan.gather(list(value), n))
        put_back = tff.tensorflow.computation(sub_type, round_type)(
            lambda sub, n: plan.scatter(list(sub), n))
        init_fn, increment = _round_counter(inner)

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS),
                                   tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            round_num, inner_state = state
            sub = tff.federated_map(cut, (value, tff.federated_broadcast(round_num)))
            out = inner.next(inner_state, sub, weight)
            new_state = tff.federated_zip((tff.federated_map(increment, round_num), out.state))
            return tff.templates.MeasuredProcessOutput(
                new_state, tff.federated_map(put_back, (out.result, round_num)), out.measurements)

        return tff.templates.AggregationProcess(init_fn, next_fn)
