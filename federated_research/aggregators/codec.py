"""The compression library's base: a codec per tensor, a method that picks codecs, a TFF factory.

A method is one module: a `Method` dataclass (its options, validated where it is
built) whose `make_codec(shape)` returns a `Codec` for one tensor. The codec's
`encode` runs on each client and returns the message, a dict of tensors of static
shape; `decode` runs on the server. `CodecSumFactory` turns any method into a
`tff.aggregators.UnweightedAggregationFactory`:

    clients:  federated_map(encode)            -> one message per client
    wire:     federated_aggregate(messages, ...) the message type is what is counted
    server:   accumulate = sum of decode(message) over clients, report = reshape

so a method's bits are what its encoder really emits (comm_bits.py reads them
off the `federated_aggregate` argument type), with nothing to declare by hand.

Randomness. Every client derives a 32-bit seed from the run seed and the content
of its own update, so runs reproduce and clients differ. A codec whose decoder
must regenerate the encoder's randomness (a rotation, a subset, a projection)
sets `needs_seed`; the client's seed then travels with its message (32 bits a
client a round, counted like everything else). Stochastic rounding noise never
needs to be known by the server and so is never sent.
"""

from __future__ import annotations

import abc
import collections
import math
from dataclasses import dataclass, fields

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions

from federated_research.errors import ConfigError


def tensor_seed(client_seed: tf.Tensor, run_seed: int, index: int, stream: int = 0) -> tf.Tensor:
    """A stateless-RNG seed for tensor `index`, random stream `stream`, of one client."""
    base = tf.stack([client_seed, tf.constant(run_seed % 2**31, tf.int32)])
    return tf.random.experimental.stateless_fold_in(base, index * 16 + stream)


def content_seed(tensors: list[tf.Tensor], run_seed: int) -> tf.Tensor:
    """int32 seed from the run seed and the values being encoded (differs by client and round)."""
    total = tf.add_n([tf.reduce_sum(t) for t in tensors])
    squares = tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])
    seed = tf.constant([run_seed % 2**31, 0x5EED], tf.int32)
    for word in (tf.bitcast(total, tf.int32), tf.bitcast(squares, tf.int32)):
        seed = tf.random.experimental.stateless_fold_in(seed, word)
    return tf.cast(seed[0] ^ seed[1], tf.int32)


class Codec(abc.ABC):
    """One tensor's round trip, for a fixed shape: `encode` on a client, `decode` on the server."""

    needs_seed: bool = False

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.size = math.prod(self.shape)

    @abc.abstractmethod
    def encode(self, x: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """float32 [size] -> the message (tensors of static shape)."""

    @abc.abstractmethod
    def decode(self, message: dict[str, tf.Tensor], seed: tf.Tensor) -> tf.Tensor:
        """The message -> float32 [size], the server's estimate of x."""


class Raw(Codec):
    """float32 values as they are: small tensors, and the reference point."""

    def encode(self, x, seed):
        return collections.OrderedDict(values=x)

    def decode(self, message, seed):
        return message["values"]


@dataclass
class Method(abc.ABC):
    """Options every compression method takes; subclasses add theirs and `make_codec`."""

    threshold: int = 0        # tensors of at most this many elements are sent as float32
    subsample: float = 1.0    # < 1: encode a shared-seed random subset of this fraction
    seed: int = 0             # the run seed; all randomness derives from it
    zeroing: bool = False     # TFF's adaptive zeroing of outlier updates (uplink only)
    clipping: bool = False    # TFF's adaptive L2 clipping of updates (uplink only)

    @abc.abstractmethod
    def make_codec(self, shape: tuple[int, ...]) -> Codec:
        """The codec of one tensor of this shape."""

    def check(self) -> None:
        """Raise OptionError for an option out of range; subclasses extend it."""
        require(self.threshold >= 0, "threshold", self.threshold, "must be 0 or more", "0")
        require(0 < self.subsample <= 1, "subsample", self.subsample,
                "is the fraction of coordinates sent: in (0, 1]", "0.5")

    def codec(self, shape: tuple[int, ...]) -> Codec:
        """`make_codec`, with small tensors raw and subsampling applied."""
        if math.prod(shape) <= self.threshold:
            return Raw(shape)
        if self.subsample < 1:
            from federated_research.aggregators.subsampled import SubsampledCodec

            return SubsampledCodec(shape, self.subsample, self.make_codec)
        return self.make_codec(shape)

    def aggregator(self) -> tff.aggregators.WeightedAggregationFactory:
        """The weighted mean of the clients' encoded updates, wrapped as TFF wraps its own."""
        from tensorflow_federated.python.learning.model_update_aggregator import (
            _default_clipping,
            _default_zeroing,
        )

        factory = tff.aggregators.MeanFactory(CodecSumFactory(self))
        if self.clipping:
            factory = _default_clipping(factory)
        if self.zeroing:
            factory = _default_zeroing(factory)
        return factory


class OptionError(ValueError):
    """An option of a method out of range; the builder adds the group to the key."""

    def __init__(self, key: str, value: object, problem: str, example: str) -> None:
        self.key, self.value, self.problem, self.example = key, value, problem, example
        super().__init__(f"{key}={value}: {problem}")


def require(ok: bool, key: str, value: object, problem: str, example: str) -> None:
    if not ok:
        raise OptionError(key, value, problem, example)


def build_method(cfg, group: str) -> Method:
    """A Method from its config node, type-checked against its own dataclass, then range-checked.

    The dataclass is the schema: a wrong type or an unknown key fails with one line
    naming `<group>.<key>`, as does a value out of range.
    """
    import hydra
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cls = hydra.utils.get_class(cfg._target_)
    options = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
               if k != "_target_"}
    known = {f.name for f in fields(cls)}
    for key in options:
        if key not in known:
            raise ConfigError(f"{group}.{key}", f"{cls.__name__} has no such option",
                              f"use one of {', '.join(sorted(known))}")
    try:
        method = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), options))
    except OmegaConfBaseException as exc:
        key = f"{group}.{exc.full_key}"
        raise ConfigError(f"{key}={exc.value}", "wrong type",
                          f"give {key} a {_type_name(cls, exc.full_key)}") from None
    try:
        method.check()
    except OptionError as exc:
        typed = options.get(exc.key, exc.value)  # as the user typed it
        raise ConfigError(f"{group}.{exc.key}={typed}", exc.problem,
                          f"pass e.g. {group}.{exc.key}={exc.example}") from None
    return method


def _type_name(cls: type, key: str) -> str:
    kind = next((f.type for f in fields(cls) if f.name == key), "value")
    kind = getattr(kind, "__name__", str(kind))
    return {"int": "whole number", "float": "number", "bool": "true or false"}.get(kind, kind)


class CodecSumFactory(tff.aggregators.UnweightedAggregationFactory):
    """Sum of client values sent through a method's codecs (one per tensor)."""

    def __init__(self, method: Method) -> None:
        self.method = method

    def create(self, value_type) -> tff.templates.AggregationProcess:
        specs = type_conversions.type_to_tf_tensor_specs(value_type)
        flat_specs = tf.nest.flatten(specs)
        codecs = [self.method.codec(tuple(s.shape)) for s in flat_specs]
        encode = tff.tensorflow.computation(value_type)(encode_fn(codecs, self.method.seed))
        message_type = encode.type_signature.result
        decode = decode_fn(codecs, self.method.seed)
        zero = tff.tensorflow.computation(lambda: [tf.zeros([c.size], tf.float32) for c in codecs])
        sum_type = zero.type_signature.result

        @tff.tensorflow.computation(sum_type, message_type)
        def accumulate(total, message):
            return [t + x for t, x in zip(total, decode(message), strict=True)]

        @tff.tensorflow.computation(sum_type, sum_type)
        def merge(a, b):
            return [x + y for x, y in zip(a, b, strict=True)]

        report = tff.tensorflow.computation(sum_type)(lambda total: restore(total, specs))

        init_fn = empty_state()

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS))
        def next_fn(state, value):
            messages = tff.federated_map(encode, value)
            result = tff.federated_aggregate(messages, zero(), accumulate, merge, report)
            return tff.templates.MeasuredProcessOutput(
                state, result, tff.federated_value((), tff.SERVER))

        return tff.templates.AggregationProcess(init_fn, next_fn)


def empty_state() -> tff.Computation:
    """`initialize` of a process that keeps no state (seeds are derived, not stored)."""
    return tff.federated_computation(lambda: tff.federated_value((), tff.SERVER))


def restore(flat: list[tf.Tensor], specs):
    """Flat float32 tensors back into the shapes, dtypes and structure of `specs`."""
    flat_specs = tf.nest.flatten(specs)
    return tf.nest.pack_sequence_as(specs, [
        tf.cast(tf.reshape(t, s.shape), s.dtype) for t, s in zip(flat, flat_specs, strict=True)])


def encode_fn(codecs: list[Codec], run_seed: int):
    """The client side: flatten each tensor, encode it, add the seed if a decoder needs it."""

    def encode(value):
        flat = [tf.reshape(tf.cast(v, tf.float32), [-1]) for v in tf.nest.flatten(value)]
        seed = content_seed(flat, run_seed)
        message = collections.OrderedDict(tensors=[
            c.encode(x, tensor_seed(seed, run_seed, i)) for i, (c, x) in enumerate(
                zip(codecs, flat, strict=True))])
        if any(c.needs_seed for c in codecs):
            message["seed"] = seed
        return message

    return encode


def decode_fn(codecs: list[Codec], run_seed: int):
    """The server side: each tensor's estimate, flat float32."""

    def decode(message):
        seed = message["seed"] if "seed" in message else tf.constant(0, tf.int32)
        return [c.decode(m, tensor_seed(seed, run_seed, i)) for i, (c, m) in enumerate(
            zip(codecs, message["tensors"], strict=True))]

    return decode
