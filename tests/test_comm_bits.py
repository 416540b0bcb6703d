"""Bits: read off the real TFF computations and checked against first principles."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from omegaconf import OmegaConf
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te

from federated_research.aggregators import build_aggregator
from federated_research.algorithms.fedavg import build_fedavg
from federated_research.comm_bits import comm_cost, round_comm, type_bits
from federated_research.models import build_model

# Module-scoped TFF processes are shared by its tests: one pytest-xdist worker builds them.
pytestmark = pytest.mark.xdist_group("comm_bits")

CNN_PARAMS = 1_663_370
MEAN = {"_target_": "tensorflow_federated.aggregators.MeanFactory"}
COMPRESSION = {"_target_": "tensorflow_federated.learning.compression_aggregator",
               "zeroing": True, "clipping": True}


def _fedavg(model_name: str, aggregator: dict):
    target = f"federated_research.models.{model_name}.build_{model_name}"
    model = build_model(OmegaConf.create({"_target_": target}), (28, 28, 1), 10)
    return model, build_fedavg(model, tff.learning.optimizers.build_sgdm(0.02),
                               tff.learning.optimizers.build_sgdm(1.0),
                               build_aggregator(OmegaConf.create(aggregator)))


@pytest.fixture(scope="module")
def cnn_mean():
    return _fedavg("cnn", MEAN)


@pytest.fixture(scope="module")
def cnn_compression():
    return _fedavg("cnn", COMPRESSION)


def test_type_bits_is_elements_times_dtype_width():
    struct = tff.StructType([tff.TensorType(np.float32, [3, 4]), tff.TensorType(np.int64),
                             tff.TensorType(np.int8, [5])])
    assert type_bits(struct) == 12 * 32 + 64 + 5 * 8
    assert type_bits(tff.FederatedType(struct, tff.CLIENTS)) == type_bits(struct)
    with pytest.raises(ValueError, match="not static"):
        type_bits(tff.TensorType(np.float32, [None, 3]))


def test_mean_baseline_broadcasts_the_model_and_uploads_it_with_its_weight(cnn_mean):
    model, algorithm = cnn_mean
    params = model.keras_fn().count_params()
    assert params == CNN_PARAMS
    comm = round_comm(algorithm.process, algorithm.distributor, algorithm.aggregation)
    bits = comm.round_metrics(10)
    assert bits["comm/broadcasted_bits"] == 10 * params * 32 == 532_278_400
    assert bits["comm/aggregated_bits"] == 10 * (params * 32 + 32)  # update + float32 weight
    # Control traffic: the client learning rate down; loss/accuracy/count sums up.
    assert bits["comm/control_broadcasted_bits"] == 10 * 32
    assert bits["comm/control_aggregated_bits"] > 0


def _encoded_bits(value: np.ndarray, quantize: bool) -> int:
    """Encode `value` with TFF's own encoder and count the bits of what comes out."""
    spec = tf.TensorSpec(value.shape, tf.float32)
    encoder = te.encoders.as_gather_encoder(
        te.encoders.uniform_quantization(8) if quantize else te.encoders.identity(), spec)
    encode_params, _, _ = encoder.get_params(encoder.initial_state())
    encoded, _ = encoder.encode(tf.constant(value), encode_params)
    return sum(int(np.prod(t.shape)) * t.dtype.size * 8 for t in tf.nest.flatten(encoded))


def test_compressed_upload_is_what_tffs_encoder_really_produces(cnn_mean, cnn_compression):
    model, algorithm = cnn_compression
    comm = round_comm(algorithm.process, algorithm.distributor, algorithm.aggregation)
    encoded_upload = [t for t in comm.model.transfers if t.intrinsic == "federated_aggregate"]
    assert len(encoded_upload) == 1
    rng = np.random.default_rng(0)
    expected = sum(_encoded_bits(rng.normal(size=w.shape).astype(np.float32),
                                 quantize=w.shape.num_elements() > 20000)
                   for w in model.keras_fn().trainable_weights)
    assert encoded_upload[0].bits == expected
    # The 3136x512 dense kernel alone: 8 bits per value, bit-packed, plus float32 min and max.
    dense = _encoded_bits(rng.normal(size=(3136, 512)).astype(np.float32), True)
    assert 3136 * 512 * 8 + 64 <= dense < 3136 * 512 * 10
    baseline = round_comm(cnn_mean[1].process, cnn_mean[1].distributor, cnn_mean[1].aggregation)
    ratio = comm.round_metrics(10)["comm/aggregated_bits"] / baseline.round_metrics(10)[
        "comm/aggregated_bits"]
    assert ratio < 1 / 3


def test_compression_counts_its_own_side_traffic(cnn_compression):
    _, algorithm = cnn_compression
    aggregation = comm_cost(algorithm.aggregation.next)
    # Adaptive zeroing and clipping broadcast their norm thresholds and estimates...
    assert aggregation.down > 0
    # ...and the distributor still sends the full float32 model.
    assert comm_cost(algorithm.distributor.next).down == CNN_PARAMS * 32


def test_parts_that_are_not_in_the_process_are_refused(cnn_mean, cnn_compression):
    _, mean_alg = cnn_mean
    _, compression_alg = cnn_compression
    with pytest.raises(ValueError, match="not the parts"):
        round_comm(mean_alg.process, mean_alg.distributor, mean_alg.distributor)
    with pytest.raises(ValueError, match="not the parts"):
        round_comm(mean_alg.process, compression_alg.distributor, compression_alg.aggregation)


def test_seeded_compression_sends_exactly_what_tffs_own_aggregator_sends():
    _, ours = _fedavg("linear", dict(COMPRESSION, _target_="federated_research.aggregators."
                                     "compression.compression_aggregator", seed=3))
    _, tffs = _fedavg("linear", COMPRESSION)
    ours_comm = round_comm(ours.process, ours.distributor, ours.aggregation)
    tffs_comm = round_comm(tffs.process, tffs.distributor, tffs.aggregation)
    assert ours_comm.round_metrics(7) == tffs_comm.round_metrics(7)
    types = [[t.type for t in c.model.transfers] for c in (ours_comm, tffs_comm)]
    assert types[0] == types[1]


def _roundtrip(x: np.ndarray, seed: int) -> np.ndarray:
    from federated_research.aggregators.compression import seeded_uniform_quantization

    encoder = te.encoders.as_simple_encoder(seeded_uniform_quantization(8, seed),
                                            tf.TensorSpec(x.shape, tf.float32))
    encoded, _ = encoder.encode(tf.constant(x), encoder.initial_state())
    return encoder.decode(encoded).numpy()


def test_seeded_rounding_is_reproducible_unbiased_and_seed_dependent():
    x = np.random.default_rng(0).normal(size=30000).astype(np.float32)
    a, b, c = _roundtrip(x, 1), _roundtrip(x, 1), _roundtrip(x, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    step = (x.max() - x.min()) / 255
    assert np.max(np.abs(a - x)) <= step * 1.001  # one quantisation step at most
    # Stochastic, not nearest, rounding: errors average out (mean ~ 0) instead of
    # each being at most half a step.
    assert np.max(np.abs(a - x)) > 0.5 * step * 1.01
    assert abs(np.mean(a - x)) < 0.01 * step
