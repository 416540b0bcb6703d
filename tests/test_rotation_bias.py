"""Rotated methods are unbiased on the inputs they meet, tensor by tensor.

A pooled test (test_compression.py) lets an 11% bias on a 10-element tensor hide
under the error of a 21,000-element one, and Gaussian inputs are what a random
rotation handles best. Here every tensor is held to it alone, on what breaks a
randomised Hadamard rotation: heavy tails (lognormal, sigma 2), one coordinate
carrying most of the norm, tensors of 10 to 64 elements, and a real update of the
project's CNN (a few SGD steps on embedded MNIST, early in training, where its
biases are the most concentrated). The rotation before two rounds (one H D,
blocks of least padding, from 16) fails here: drive's decodings missed the
lognormal vector (256-blocks) by 23.5% of its norm, the spike by 33%, the CNN's
10-element output bias by 32% (subsampled: 9%, 26%, 32%). Two rounds in blocks
of at least 64 pass; at 4,000 decodings their biases on those inputs were all
below 0.5%, against floors of 0.2-2.3%.

The statistic: N decodings under independent seeds, their mean m, and the bias
with the Monte-Carlo part removed, b = sqrt(max(||m - x||^2 - tr(C) / N, 0)) / ||x||
(C the decodings' covariance), held below max(1%, 3 floor), floor = sqrt(tr(C) / N) / ||x||.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from federated_research.compression.codec import Raw
from federated_research.compression.drive import DriveCodec
from federated_research.compression.eden import EdenCodec, dequantize, eps, levels, quantize
from federated_research.compression.method import build_method
from federated_research.train import CONF_DIR

pytestmark = pytest.mark.xdist_group("rotation_bias")

# Every rotated unbiased method: (aggregator option, overrides); kashin's frame is a
# randomised Hadamard too (TFMOT's). eden at 1 bit decodes as
# drive does (test_eden_at_one_bit_is_drive); its fractional budget here mixes 1 and 2 bits.
UNBIASED = {"drive": ("drive", {}), "rotated_quantize": ("rotated_quantize", {}),
            "subsampled": ("subsampled", {}), "eden-2": ("eden", {"bits": 2}),
            "eden-1.5": ("eden", {"bits": 1.5}), "kashin-2": ("kashin", {})}
SEEDS = {"small": 240, "dense": 8}  # decodings a tensor
# kashin runs TFMOT's Hadamard transform five times a tensor (3 iterations forward, 2
# back): the suite's budget allows it half the decodings on the synthetic tensors (heavy
# tails, a spike, the tiny ones), not the CNN's update.
FEWER = {"kashin-2": {"small": 120, "dense": 0, "cnn": False}}
DENSE = 1_605_632  # the CNN's 3136 x 512 kernel: few decodings suffice at that size


def _method(name: str, **overrides):
    cfg = OmegaConf.load(CONF_DIR / "aggregator" / f"{name}.yaml")
    cfg.seed = 0
    cfg.update(overrides)
    return build_method(cfg, "aggregator")


def _bias(method, tensors: dict[str, np.ndarray], n: int) -> dict[str, tuple[float, float]]:
    """Each tensor's (bias, floor), from n encodings under seeds [i, 0]."""
    names = list(tensors)
    codecs = [method.codec((tensors[k].size,)) for k in names]
    xs = [tf.constant(tensors[k].ravel(), tf.float32) for k in names]

    def roundtrip(seed):
        out = []
        for i, (codec, x) in enumerate(zip(codecs, xs, strict=True)):
            s = tf.random.experimental.stateless_fold_in(seed, i)
            out.append(codec.decode(codec.encode(x, s), s))
        return out

    @tf.function(autograph=False)  # autograph would take seconds to convert the codecs
    def sums(seeds):
        decoded = tf.map_fn(roundtrip, seeds, fn_output_signature=[tf.float32] * len(xs),
                            parallel_iterations=16)
        d64 = [tf.cast(d, tf.float64) for d in decoded]
        return [tf.reduce_sum(d, 0) for d in d64], [tf.reduce_sum(tf.square(d)) for d in d64]

    total, squares = sums(tf.stack([tf.range(n), tf.zeros([n], tf.int32)], axis=1))
    result = {}
    for k, t, q in zip(names, total, squares, strict=True):
        x = tensors[k].ravel().astype(np.float64)
        mean = t.numpy() / n
        trace = (float(q) - n * np.sum(mean ** 2)) / (n - 1)
        bias2 = np.sum((mean - x) ** 2) - trace / n
        norm = np.linalg.norm(x)
        result[k] = math.sqrt(max(bias2, 0.0)) / norm, math.sqrt(trace / n) / norm
    return result


def _check(name: str, results: dict[str, tuple[float, float]]) -> None:
    lines, failed = [], []
    for k, (bias, floor) in results.items():
        limit = max(0.01, 3 * floor)
        lines.append(f"  {k:>24}: bias {100 * bias:6.2f}%  floor {100 * floor:5.2f}%  "
                     f"limit {100 * limit:5.2f}%")
        if bias >= limit:
            failed.append(k)
    table = "\n".join(lines)
    print(f"\n{name}\n{table}")
    assert not failed, f"{name} is biased on {', '.join(failed)}:\n{table}"


@pytest.fixture(scope="module")
def synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    d = 4864  # 19 x 256: the least padding is in 256-blocks
    spike = rng.normal(size=2048) * 0.6 / math.sqrt(2048)
    spike[77] = 1.0  # ~0.86 of the norm
    return {"lognormal(2) x signs 4864": rng.lognormal(0, 2, d) * rng.choice([-1, 1], d),
            "spike 2048": spike,
            **{f"normal {d}": rng.normal(size=d) for d in (10, 32, 64)}}


@pytest.fixture(scope="module")
def cnn_update() -> dict[str, np.ndarray]:
    """The weight change of the project's CNN after 5 SGD steps on one MNIST batch."""
    from federated_research.data.mnist import _read_embedded
    from federated_research.models.cnn import build_cnn

    features, labels = _read_embedded()
    pixels = (1.0 - features[:32].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = build_cnn((28, 28, 1), 10)
    before = [w.numpy() for w in model.trainable_weights]
    optimizer = tf.keras.optimizers.SGD(0.05)
    loss = tf.keras.losses.SparseCategoricalCrossentropy()
    for _ in range(5):
        with tf.GradientTape() as tape:
            value = loss(labels[:32], model(pixels, training=True))
        grads = tape.gradient(value, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
    return {f"{w.name.split('/')[0]}/{w.name.split('/')[-1][:-2]} {w.shape.num_elements()}":
            w.numpy() - b for w, b in zip(model.trainable_weights, before, strict=True)}


@pytest.mark.parametrize("setting", UNBIASED)
def test_unbiased_tensor_by_tensor(setting, synthetic, cnn_update):
    """Heavy tails, a spike, tiny tensors and the CNN's update, each tensor held alone."""
    name, overrides = UNBIASED[setting]
    method = _method(name, **overrides)
    assert method.is_unbiased()
    seeds = FEWER.get(setting, SEEDS)
    small = {**synthetic, **{k: v for k, v in cnn_update.items() if v.size != DENSE}}
    dense = {k: v for k, v in cnn_update.items() if v.size == DENSE}
    assert len(small) == 12 and len(dense) == 1
    if not seeds.get("cnn", True):
        small = dict(synthetic)
    assert not any(isinstance(method.codec(x.shape), Raw) for x in small.values())
    _check(setting, {**_bias(method, small, seeds["small"]),
                     **(_bias(method, dense, seeds["dense"]) if seeds["dense"] else {})})


def test_tiny_tensors_closely(synthetic, cnn_update):
    """The tensors the one-round rotation failed most (10 to 64 elements: 11% of the norm
    on the CNN's output bias, 3-5% on the others) with 12,000 decodings of DRIVE, whose
    rotation every rotated method shares: floors of 0.2-0.7%, so a bias of 2.2% fails."""
    tiny = {k: v for k, v in {**synthetic, **cnn_update}.items() if v.size <= 64}
    assert sorted(v.size for v in tiny.values()) == [10, 10, 32, 32, 64, 64]
    results = _bias(_method("drive"), tiny, 12_000)
    assert max(floor for _, floor in results.values()) < 0.0075
    _check("drive, tiny tensors", results)


def test_the_statistic_sees_a_bias():
    """The minimum-error scales shrink the estimate (by eps_b on average): held to the
    same limit, they fail, so a pass above is not for want of power."""
    rng = np.random.default_rng(1)
    x = {"normal 4096": rng.normal(size=4096)}
    for name, overrides in (("drive", {"unbiased": False}), ("eden", {"unbiased": False})):
        bias, floor = _bias(_method(name, **overrides), x, 200)["normal 4096"]
        assert bias > max(0.05, 3 * floor)


def _vnmse(codec, x: np.ndarray, seeds: int = 4) -> float:
    xt = tf.constant(x, tf.float32)
    errors = []
    for s in range(seeds):
        seed = tf.constant([s, 1])
        decoded = codec.decode(codec.encode(xt, seed), seed).numpy()
        errors.append(np.sum((decoded - x) ** 2) / np.sum(x ** 2))
    return float(np.mean(errors))


INPUTS = {"normal": lambda rng, d: rng.normal(size=d),
          "lognormal(2)": lambda rng, d: rng.lognormal(0, 2, d),  # kurtosis in the thousands
          "student-t(2)": lambda rng, d: rng.standard_t(2, d)}  # infinite variance


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("bits", [1, 2, 2.5, 3, 4])
def test_eden_error_is_the_papers(bits, kind):
    """vNMSE -> 1/eps_b - 1 (unbiased) and 1 - eps_b (biased) for large blocks, eps_b =
    E[Z Q_b(Z)]; a split budget mixes the two widths' eps. b = 1 is DRIVE's pi/2 - 1 and
    1 - 2/pi. d = 2**15 in 4096-blocks of a randomised Hadamard rotation, within 3%,
    on heavy tails too: the paper's figure assumes a uniform rotation, which the two
    Hadamard rounds stand in for."""
    x = INPUTS[kind](np.random.default_rng(2), 2**15)
    low, frac = math.floor(bits), bits - math.floor(bits)
    e = (1 - frac) * eps(low) + frac * eps(low + 1)
    assert _vnmse(EdenCodec(x.shape, bits, 4096, True), x) == pytest.approx(1 / e - 1, rel=0.03)
    assert _vnmse(EdenCodec(x.shape, bits, 4096, False), x) == pytest.approx(1 - e, rel=0.03)
    if bits == 1:
        assert 1 / e - 1 == pytest.approx(math.pi / 2 - 1, rel=1e-12)
        assert _vnmse(DriveCodec(x.shape, 4096, True), x) == pytest.approx(math.pi / 2 - 1,
                                                                         rel=0.03)
        assert _vnmse(DriveCodec(x.shape, 4096, False), x) == pytest.approx(1 - 2 / math.pi,
                                                                          rel=0.03)


@pytest.mark.parametrize(("name", "overrides", "paper"), [
    ("drive", {}, math.pi / 2 - 1), ("drive", {"unbiased": False}, 1 - 2 / math.pi),
    ("eden", {"bits": 2}, 1 / eps(2) - 1), ("eden", {"bits": 2, "unbiased": False}, 1 - eps(2)),
    ("eden", {"bits": 4}, 1 / eps(4) - 1)])
def test_the_error_on_a_real_cnn_update_is_the_papers(name, overrides, paper, cnn_update):
    """The method as configured (its own blocks) on the CNN's two large kernels after a
    few SGD steps (51,200 and 1,605,632 coordinates, heavy-tailed): the paper's vNMSE
    within 3% (measured: 0.6-1.6% off)."""
    method = _method(name, **overrides)
    large = {k: v for k, v in cnn_update.items() if v.size > 20_000}
    assert len(large) == 2
    for k, x in large.items():
        got = _vnmse(method.codec((x.size,)), x.ravel(), seeds=2)
        assert got == pytest.approx(paper, rel=0.03), k


def test_eden_levels_are_the_authors():
    """Our transcription of the Lloyd-Max levels gives the authors' eps_b = E[Z Q_b(Z)]
    (amitport/distributed-mean-estimation, opt_eps_mpf.npz) to 1e-12."""
    authors = {1: 0.6366197723675814, 2: 0.8825181521706708, 3: 0.9654522392114963,
               4: 0.9904989919918081, 5: 0.9974953316443252, 6: 0.9993557603346828,
               7: 0.9998365217700198, 8: 0.9999588149171329}
    for bits, value in authors.items():
        assert eps(bits) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("bits", range(1, 9))
def test_eden_sends_the_nearest_level(bits):
    y = np.random.default_rng(bits).normal(size=20_000).astype(np.float32) * 1.3
    values, bounds = levels(bits)
    codes = quantize(tf.constant(y), bits).numpy()
    np.testing.assert_array_equal(codes, np.searchsorted(bounds.astype(np.float32), y, "right"))
    np.testing.assert_allclose(dequantize(tf.constant(codes), bits), values[codes], atol=3e-7)


@pytest.mark.parametrize("unbiased", [True, False])
def test_eden_at_one_bit_is_drive(unbiased):
    x = tf.constant(np.random.default_rng(3).lognormal(0, 2, 5000).astype(np.float32))
    seed = tf.constant([4, 5])
    drive = DriveCodec((5000,), 4096, unbiased)
    eden = EdenCodec((5000,), 1, 4096, unbiased)
    assert eden.bits() == drive.bits()
    want = drive.decode(drive.encode(x, seed), seed).numpy()
    np.testing.assert_allclose(eden.decode(eden.encode(x, seed), seed), want, rtol=1e-5,
                               atol=1e-5 * np.max(np.abs(want)))
