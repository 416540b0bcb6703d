"""TFF's compression aggregator, made reproducible.

`tff.learning.compression_aggregator()` rounds stochastically with an unseeded
`tf.random.uniform` inside TFF's graphs, so two runs with the same seed differ.
This builds the same aggregator from TFF's own parts (adaptive zeroing and
clipping with TFF's default settings, weighted mean, `EncodedSumFactory` with
8-bit uniform quantisation, bit-packed, of tensors above 20,000 elements) and
changes one thing: the rounding noise comes from a stateless RNG keyed by the
run seed and the content of the tensor being encoded. Same seed, same updates,
same noise; different clients and rounds send different updates and so get
different noise. The wire format, and so every bit count, is TFF's
(tests/test_comm_bits.py checks it against `aggregator=tff_compression`).
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning.model_update_aggregator import (
    _default_clipping,
    _default_zeroing,
)
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te
from tensorflow_model_optimization.python.core.internal.tensor_encoding.core import encoding_stage
from tensorflow_model_optimization.python.core.internal.tensor_encoding.stages import stages_impl

# TFMOT's `tf_style_encoding_stage` decorator returns a wrapper subclass that
# delegates to an instance of the undecorated class; extend the undecorated one.
_UniformQuantization = stages_impl.UniformQuantizationEncodingStage.__bases__[0]
assert _UniformQuantization.__name__ == "UniformQuantizationEncodingStage"


@encoding_stage.tf_style_encoding_stage
class SeededUniformQuantizationEncodingStage(_UniformQuantization):
    """TFF's uniform quantisation stage with seeded, stateless stochastic rounding."""

    def __init__(self, bits: int = 8, seed: int = 0) -> None:
        super().__init__(bits=bits, stochastic=True)
        self._seed = int(seed)

    @property
    def name(self) -> str:
        return "seeded_uniform_quantization"

    def _rng_key(self, x: tf.Tensor) -> tf.Tensor:
        content = tf.bitcast(tf.reduce_sum(x), tf.int32)
        spread = tf.bitcast(tf.reduce_max(x) - tf.reduce_min(x), tf.int32)
        return tf.stack([tf.constant(self._seed, tf.int32) ^ spread, content])

    def encode(self, x, encode_params):
        """As the parent's encode, with `stateless_uniform` for the rounding noise."""
        key = self._rng_key(x)
        min_x, max_x = tf.reduce_min(x), tf.reduce_max(x)
        max_value = tf.cast(encode_params[self.MAX_INT_VALUE_PARAMS_KEY], x.dtype)
        x = tf.compat.v1.div_no_nan(x - min_x, max_x - min_x) * max_value
        floored = tf.floor(x)
        noise = tf.random.stateless_uniform(tf.shape(x), seed=key, dtype=x.dtype)
        quantized = floored + tf.cast(noise < x - floored, x.dtype)
        return collections.OrderedDict([(self.ENCODED_VALUES_KEY, quantized),
                                        (self.MIN_MAX_VALUES_KEY, tf.stack([min_x, max_x]))])


def seeded_uniform_quantization(bits: int, seed: int) -> te.core.Encoder:
    """`te.encoders.uniform_quantization(bits)` with the seeded stage.

    Flatten, quantise, bit-pack: the same three stages, so the same wire format.
    """
    return te.core.EncoderComposer(stages_impl.BitpackingEncodingStage(bits)).add_parent(
        SeededUniformQuantizationEncodingStage(bits, seed),
        stages_impl.UniformQuantizationEncodingStage.ENCODED_VALUES_KEY).add_parent(
        stages_impl.FlattenEncodingStage(),
        stages_impl.FlattenEncodingStage.ENCODED_VALUES_KEY).make()


def compression_aggregator(zeroing: bool = True, clipping: bool = True, bits: int = 8,
                           threshold: int = 20000,
                           seed: int = 0) -> tff.aggregators.WeightedAggregationFactory:
    """`tff.learning.compression_aggregator()` with reproducible stochastic rounding."""

    def encoder_fn(value_spec: tf.TensorSpec):
        if value_spec.shape.num_elements() > threshold:
            return te.encoders.as_gather_encoder(seeded_uniform_quantization(bits, seed),
                                                 value_spec)
        return te.encoders.as_gather_encoder(te.encoders.identity(), value_spec)

    factory = tff.aggregators.MeanFactory(tff.aggregators.EncodedSumFactory(encoder_fn))
    if clipping:
        factory = _default_clipping(factory)
    if zeroing:
        factory = _default_zeroing(factory)
    return factory
