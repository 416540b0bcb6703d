"""The privacy group on real TFF aggregations: clipping clips, the noise has the configured
standard deviation and comes from the run's seed, secure sums equal plain sums within
their quantisation, epsilon equals an independent computation and a published value,
bits are counted at secure aggregation's ring width, and what cannot be made private
or secure is refused in one line before TensorFlow loads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.comm_bits import comm_cost, sum_growth
from federated_research.compression.method import build_method
from federated_research.config import validate
from federated_research.errors import ConfigError
from federated_research.privacy import PrivacySpec, build_privacy
from federated_research.privacy.accounting import ORDERS, TreeAccountant, default_delta, epsilon
from federated_research.privacy.aggregation import SeededGaussianSumQuery
from tests.conftest import compose_config

SPEC = PrivacySpec(clients_per_round=4, population=40, rounds=10, seed=3)
DIM = 3000
VALUE = tff.types.to_type([(np.float32, (DIM - 10,)), (np.float32, (10,))])
WEIGHT = tff.TensorType(np.float32)
# Every compression method whose server takes a mean: what dp_fixed and dp_tree accept.
ACCEPTED = ["drive", "eden", "kashin", "qsgd", "quantize", "rotated_quantize", "sign",
            "sketch", "stc", "subsampled", "terngrad", "topk"]


def _clients(norms: list[float], seed: int = 0) -> list[list[np.ndarray]]:
    """One update a client, of the given global L2 norms."""
    rng = np.random.default_rng(seed)
    out = []
    for norm in norms:
        x = rng.standard_normal(DIM).astype(np.float32)
        x *= norm / np.linalg.norm(x)
        out.append([x[:DIM - 10], x[DIM - 10:]])
    return out


def _flat(value) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in value])


def _privacy(option: str, **keys):
    node = compose_config([f"privacy={option}", *(f"privacy.{k}={v}" for k, v in keys.items())])
    return build_privacy(node.privacy)


def _method(name: str):
    cfg = compose_config([f"aggregator={name}", *(["aggregator.error_feedback=none"]
                                                   if name == "stc" else [])])
    return build_method(cfg.aggregator, "aggregator")


def _process(privacy, method=None):
    return privacy.factory(method, SPEC).create(VALUE, WEIGHT)


def test_dp_fixed_clips_each_update_and_divides_by_the_expected_clients():
    """No noise: the result is the sum of the clipped updates over clients_per_round,
    whatever the weights (a DP mean counts clients, not examples)."""
    process = _process(_privacy("dp_fixed", noise_multiplier=0, clip=1.0))
    clients = _clients([10.0, 0.5, 3.0])
    output = process.next(process.initialize(), clients, [1.0, 50.0, 7.0])
    expected = sum(_flat(c) * min(1.0, 1.0 / np.linalg.norm(_flat(c))) for c in clients)
    np.testing.assert_allclose(_flat(output.result), expected / SPEC.clients_per_round,
                               atol=1e-6)


def test_dp_fixed_adds_noise_of_the_configured_std_from_the_run_seed():
    """The noise over 3,000 coordinates has std noise_multiplier x clip / clients_per_round
    (within 5%); it differs round to round and is the same for the same seed."""
    process = _process(_privacy("dp_fixed", noise_multiplier=2.0, clip=0.5))
    zeros = _clients([0.0, 0.0, 0.0])
    state = process.initialize()
    first = process.next(state, zeros, [1.0, 1.0, 1.0])
    second = process.next(first.state, zeros, [1.0, 1.0, 1.0])
    again = _process(_privacy("dp_fixed", noise_multiplier=2.0, clip=0.5))
    replay = again.next(again.initialize(), zeros, [1.0, 1.0, 1.0])
    noise = _flat(first.result)
    assert np.std(noise) == pytest.approx(2.0 * 0.5 / SPEC.clients_per_round, rel=0.05)
    assert abs(np.mean(noise)) < 4 * np.std(noise) / math.sqrt(DIM)
    np.testing.assert_array_equal(_flat(replay.result), noise)  # same seed, same noise
    assert np.corrcoef(noise, _flat(second.result))[0, 1] < 0.1  # a new draw each round


def test_the_seeded_query_draws_normal_noise():
    """Many draws of the query alone: std and normal tails (4-sigma share)."""
    query = SeededGaussianSumQuery(1.0, 0.25, seed=7)
    state = query.initial_global_state()
    draws = []
    for _ in range(5):
        noised, state, event = query.get_noised_result(tf.zeros([20000]), state)
        draws.append(noised.numpy())
    draws = np.concatenate(draws)
    assert np.std(draws) == pytest.approx(0.25, rel=0.02)
    assert np.mean(np.abs(draws) > 4 * 0.25) < 2e-4
    assert float(event.noise_multiplier) == pytest.approx(0.25)


@pytest.mark.parametrize("option", ["dp_fixed", "dp_tree"])
@pytest.mark.parametrize("name", ACCEPTED)
def test_central_dp_takes_every_mean_compressor_and_keeps_the_sensitivity(name, option):
    """A compressor encodes the clipped update; the server clips each decoded update
    again, so even an inflating codec cannot raise one client's influence above clip.
    One real round each, no noise: the result's norm is within clients x clip / n."""
    method = _method(name)
    process = _process(_privacy(option, noise_multiplier=0, clip=1.0), method)
    output = process.next(process.initialize(), _clients([5.0, 1.0, 0.2], seed=1),
                          [1.0, 1.0, 1.0])
    result = _flat(output.result)
    assert np.all(np.isfinite(result)) and np.linalg.norm(result) > 0
    assert np.linalg.norm(result) <= 3 * 1.0 / SPEC.clients_per_round + 1e-5
    bits = comm_cost(process.next).up
    assert bits == method.message_bits([(DIM - 10,), (10,)])  # no weight is sent


def test_a_codec_that_inflates_is_clipped_at_the_server():
    """Unbiased DRIVE inflates a 1-bit update's norm (by about sqrt(pi/2) on Gaussians):
    without the server's clip the decoded update would exceed the clip."""
    method = _method("drive")
    process = _process(_privacy("dp_fixed", noise_multiplier=0, clip=1.0), method)
    output = process.next(process.initialize(), _clients([1.0]), [1.0])
    decoded_norm = np.linalg.norm(_flat(output.result)) * SPEC.clients_per_round
    assert decoded_norm == pytest.approx(1.0, rel=1e-4)  # clipped to 1, not ~1.25


def test_dp_adaptive_moves_its_clip_towards_the_median_norm():
    privacy = _privacy("dp_adaptive", noise_multiplier=0, initial_clip=0.1,
                       learning_rate=0.2)
    process = _process(privacy)
    state = process.initialize()
    accountant = privacy.accountant(SPEC)
    clips = []
    for r in range(3):
        output = process.next(state, _clients([5.0] * 4), [1.0] * 4)  # all 4 expected
        state = output.state
        clips.append(accountant.after_round(r, [], output.measurements)["privacy/clip"])
    assert clips[0] == pytest.approx(0.1)
    assert clips[1] == pytest.approx(0.1 * math.exp(0.2 * 0.5), rel=1e-5)  # all above: up
    assert clips[2] > clips[1]


def test_secure_sum_equals_the_weighted_mean_within_its_quantisation():
    process = _process(_privacy("secure", zeroing=False, clipping=False))
    clients = _clients([1.0, 2.0, 0.5], seed=2)
    weights = [1.0, 3.0, 2.0]
    output = process.next(process.initialize(), clients, weights)
    expected = sum(w * _flat(c) for w, c in zip(weights, clients, strict=True)) / sum(weights)
    np.testing.assert_allclose(_flat(output.result), expected, atol=1e-5)


@pytest.mark.parametrize("bits", [12, 16])
def test_distributed_dp_without_noise_sums_within_its_grid(bits):
    """Noise 0, fixed clip above every norm: what is left is rounding onto the grid,
    which shrinks as bits grow."""
    privacy = _privacy("distributed_dp", noise_multiplier=0, bits=bits, clip=3.0,
                       auto_clip=False, zeroing=False)
    process = _process(privacy)
    clients = _clients([1.0, 2.0, 0.5], seed=4)
    output = process.next(process.initialize(), clients, [1.0, 1.0, 1.0])
    expected = sum(_flat(c) for c in clients) / 3
    error = np.linalg.norm(_flat(output.result) - expected) / np.linalg.norm(expected)
    assert error < (0.05 if bits == 12 else 0.005)


def test_secure_sums_are_counted_at_their_declared_ring_width():
    @tff.federated_computation(tff.FederatedType(tff.TensorType(np.int32, [5]), tff.CLIENTS))
    def sums(x):
        return (tff.federated_secure_sum_bitwidth(x, 7),
                tff.backends.mapreduce.federated_secure_modular_sum(x, 1000),
                tff.federated_secure_sum(x, 100))

    cost = comm_cost(sums)
    assert cost.up == 5 * 7 + 5 * 10 + 5 * 7  # b; ceil(log2 1000); ceil(log2 101)
    assert cost.up_growing == 10  # the two exact sums grow with the clients
    assert cost.up_bits(10) == cost.up + 10 * 4 and sum_growth(1) == 0


def test_distributed_dp_sends_bits_per_padded_coordinate_plus_the_sum_growth():
    """12 and 16 bits on the same update: 4 bits more for each of the 4,096 padded
    coordinates (Hadamard pads 3,000 to a power of two), all else equal."""
    costs = {}
    for bits in (12, 16):
        privacy = _privacy("distributed_dp", bits=bits, noise_multiplier=0.1)
        costs[bits] = comm_cost(_process(privacy).next)
    padded = 2 ** math.ceil(math.log2(DIM))
    assert costs[16].up - costs[12].up == 4 * padded
    assert costs[16].up_growing == costs[12].up_growing >= padded
    assert costs[16].up - 16 * padded < 200  # the rest: count, clip and zeroing estimates


def test_epsilon_reproduces_tf_privacy_published_value():
    """TF Privacy's compute_dp_sgd_privacy test: 60,000 examples, batch 150, noise 1.3,
    15 epochs (6,000 steps), delta 1e-5, Poisson sampling: 0.7242234026109595."""
    value = epsilon(1.3, 6000, 1e-5, population=60000, sample_size=150, sampling="poisson")
    assert value == pytest.approx(0.7242234026109595, rel=1e-9)


def test_epsilon_of_many_rounds_equals_dp_accountings_own_composition():
    """One round's RDP, cached and multiplied by the rounds, against dp_accounting's
    public API composing the same event 150 times (sampling without replacement)."""
    import dp_accounting

    event = dp_accounting.SelfComposedDpEvent(dp_accounting.SampledWithoutReplacementDpEvent(
        300, 10, dp_accounting.GaussianDpEvent(0.9 / 2)), 150)
    accountant = dp_accounting.rdp.RdpAccountant(
        ORDERS, dp_accounting.NeighboringRelation.REPLACE_ONE)
    expected = accountant.compose(event).get_epsilon(1e-5)
    assert epsilon(0.9, 150, 1e-5, population=300, sample_size=10) == \
        pytest.approx(expected, rel=1e-12)


def test_full_participation_epsilon_equals_the_gaussian_rdp_formula():
    """All clients every round, replace-one: a Gaussian of noise z / 2 composed T times,
    RDP T a / (2 (z/2)^2), converted as dp_accounting does (Canonne et al. 2020)."""
    z, rounds, delta = 4.0, 50, 1e-6
    rdp = np.array([rounds * a / (2 * (z / 2) ** 2) for a in ORDERS], dtype=float)
    orders = np.array(ORDERS, dtype=float)
    eps = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    assert epsilon(z, rounds, delta, population=10, sample_size=10) == \
        pytest.approx(float(np.min(eps)), rel=1e-9)


def test_epsilon_grows_with_rounds_and_falls_with_noise_and_sampling():
    kw = {"population": 300, "sample_size": 10}
    delta = default_delta(300)
    assert delta == pytest.approx(300 ** -1.1)
    assert epsilon(1.0, 10, delta, **kw) < epsilon(1.0, 100, delta, **kw)
    assert epsilon(2.0, 100, delta, **kw) < epsilon(1.0, 100, delta, **kw)
    assert epsilon(1.0, 100, delta, population=300, sample_size=30) > \
        epsilon(1.0, 100, delta, **kw)
    assert epsilon(1.0, 0, delta, **kw) == 0 and epsilon(0.0, 5, delta, **kw) == math.inf


def test_the_tree_accountant_counts_each_clients_real_participation():
    """Client a in rounds 0 and 1 of a 4-round tree: leaves {0}, {1} count 1 each, node
    [0, 2) counts 2, node [0, 4) counts 2: 1 + 1 + 4 + 4 = 10."""
    accountant = TreeAccountant(1.0, SPEC, None, 0.1)
    for r, sampled in enumerate([["a", "b"], ["a", "c"], ["b"], ["d"]]):
        metrics = accountant.after_round(r, sampled, None)
    assert metrics["privacy/tree_sensitivity"] == pytest.approx(math.sqrt(10))
    one = TreeAccountant(1.0, SPEC, None, 0.1)
    once = one.after_round(0, ["a"], None)
    assert metrics["privacy/epsilon"] > once["privacy/epsilon"] > 0


@pytest.mark.parametrize(("overrides", "expected"), [
    (["privacy=secure", "aggregator=drive"], "privacy=secure cannot take it: compression "
     "methods send per-client scales"),
    (["privacy=distributed_dp", "aggregator=rotated_quantize"], "it quantises the rotated "
     "update itself"),
    (["privacy=dp_adaptive", "aggregator=drive"], "its clip moves at the server"),
    (["privacy=dp_fixed", "aggregator=signsgd"], "its server rule (majority_vote) is not a sum"),
    (["privacy=dp_fixed", "aggregator=powersgd"], "privacy=dp_fixed cannot take it"),
    (["privacy=dp_fixed", "aggregator=tff_compression"], "privacy=dp_fixed cannot take it"),
    (["privacy=dp_tree", "aggregator=stc"], "aggregator.error_feedback=ef14"),
    (["privacy=dp_fixed", "aggregator=quantize", "aggregator.zeroing=true"],
     "aggregator.zeroing=true"),
    (["privacy=dp_fixed", "client.update_clip_norm=1"],
     "privacy=dp_fixed builds the uplink with its own clipping"),
    (["privacy=dp_fixed", "algorithm=scaffold"], "algorithm=scaffold"),
    (["privacy=secure", "distributor=federated_dropout"], "distributor=federated_dropout"),
    (["privacy=distributed_dp", "privacy.bits=3"], "privacy.bits=3: a secure sum of 10"),
    (["privacy=distributed_dp", "privacy.noise_multiplier=2"], "privacy.noise_multiplier=2"),
    (["privacy=dp_adaptive", "privacy.noise_multiplier=1.5", "clients_per_round=10"],
     "raise privacy.clipped_count_stddev"),
    (["privacy=dp_fixed", "privacy.clip=0"], "privacy.clip=0: is an L2 norm: positive"),
    (["privacy=dp_fixed", "privacy.delta=1"], "privacy.delta=1: is a probability"),
    (["privacy=dp_fixed", "privacy.noise_multiplier=abc"], "privacy.noise_multiplier=abc"),
    (["privacy=distributed_dp", "privacy.mechanism=laplace"], "privacy.mechanism=laplace"),
    (["privacy=dp_fixed", "+privacy.sigma=1"], "privacy.sigma"),
])
def test_what_cannot_be_private_is_refused_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_a_private_run_logs_epsilon_and_its_bits_in_mlflow_and_tensorboard(tmp_path, run_cli,
                                                                          mlflow_uri):
    """The entry point with privacy=dp_fixed under DRIVE: FINISHED, privacy/* beside the
    contract's metrics in both stores, epsilon equal to the accountant's formula for the
    rounds run, and the uplink's bits DRIVE's alone (no weight is sent)."""
    from tests.test_train_cli import _history, _runs, _tensorboard

    done = run_cli("privacy=dp_fixed", "privacy.noise_multiplier=1.5", "aggregator=drive",
                   "model=linear", "rounds=2", "dataset.num_clients=8", "clients_per_round=4",
                   "eval_every=2", f"hydra.run.dir={tmp_path}/out", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ", epsilon " in (tmp_path / "out" / "train.log").read_text()  # the done: line
    client, runs = _runs(mlflow_uri)
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.tags["privacy"] == "dp_fixed"
    delta = 8 ** -1.1
    logged = _history(client, run.info.run_id, "privacy/epsilon")
    assert logged == pytest.approx({r: epsilon(1.5, r + 1, delta, population=8, sample_size=4)
                                    for r in (0, 1)}, rel=1e-6)
    assert _history(client, run.info.run_id, "privacy/noise_stddev")[1] == pytest.approx(0.15)
    board = _tensorboard(tmp_path / "out" / "tensorboard")
    assert board["privacy/epsilon"] == pytest.approx(logged, rel=1e-6)
    drive = _method("drive").message_bits([(784, 10), (10,)])
    assert _history(client, run.info.run_id, "comm/aggregated_bits") == {0: 4 * drive,
                                                                       1: 4 * drive}


def test_a_target_epsilon_chooses_the_smallest_noise_that_meets_it():
    spec = PrivacySpec(clients_per_round=10, population=300, rounds=200, seed=0)
    chosen = _privacy("dp_fixed", target_epsilon=8).for_run(spec)
    delta = default_delta(300)
    spent = epsilon(chosen.noise_multiplier, 200, delta, population=300, sample_size=10)
    assert spent <= 8 < epsilon(chosen.noise_multiplier * 0.998, 200, delta, population=300,
                                sample_size=10)
    assert _privacy("dp_fixed", noise_multiplier=0.7).for_run(spec).noise_multiplier == 0.7


def test_skellam_rdp_equals_the_authors_accounting():
    """Agarwal et al.'s accounting code (google-research/federated distributed_dp) at
    scale 100, clip 1, d = 1,000, central variance 1: scaled L2 131.6228, L1 4162.2777,
    variance 1e4 give RDP 1.732648 at order 2 and 8.663163 at order 10."""
    from federated_research.privacy.accounting import skellam_rdp

    assert skellam_rdp(2, 4162.2777, 131.6228, 1e4) == pytest.approx(1.732648, rel=1e-5)
    assert skellam_rdp(10, 4162.2777, 131.6228, 1e4) == pytest.approx(8.663163, rel=1e-5)


def test_general_subsampling_bound_meets_dp_accountings_gaussian_one():
    """Wang et al.'s Theorem 9 (any mechanism) on a Gaussian: equal to dp_accounting's
    sharper Gaussian-only bound at order 2, never below it, within 5% above it."""
    from dp_accounting.rdp.rdp_privacy_accountant import (
        _compute_rdp_sample_wor_gaussian_scalar as gaussian_wor,
    )

    from federated_research.privacy.accounting import sampled_without_replacement

    for q in (0.01, 0.05):
        for alpha in (2, 5, 8, 20, 40):
            general = sampled_without_replacement(lambda a: a / (2 * 1.5 ** 2), alpha, q)
            sharp = gaussian_wor(q, 1.5, alpha)
            assert sharp * (1 - 1e-9) <= general <= sharp * 1.05, (q, alpha)
            if alpha == 2:
                assert general == pytest.approx(sharp, rel=1e-9)


def test_distributed_dp_epsilon_approaches_central_dp_as_bits_grow():
    """Fixed clip, no count noise: at 20 bits the rounding barely inflates the
    sensitivity, so Skellam's epsilon is within 10% above the Gaussian's at the same
    noise; at 12 bits the coarser grid costs more epsilon."""
    spec = PrivacySpec(clients_per_round=10, population=300, rounds=100, seed=0)
    delta = default_delta(300)
    central = epsilon(0.8, 100, delta, population=300, sample_size=10)
    spent = {}
    for bits in (12, 20):
        privacy = _privacy("distributed_dp", noise_multiplier=0.8, bits=bits, auto_clip=False)
        privacy.factory(None, spec).create(VALUE, WEIGHT)
        spent[bits] = privacy.accountant(spec).after_round(99, [], None)["privacy/epsilon"]
    assert central <= spent[20] <= 1.10 * central
    assert spent[12] > spent[20]


@pytest.mark.parametrize("option", ["dp_fixed", "distributed_dp"])
def test_a_target_epsilon_is_met_by_the_run_it_configures(option):
    """The noise chosen for 100 rounds: the accountant of the built run spends the target
    at the last round (within 0.5%), never more."""
    spec = PrivacySpec(clients_per_round=10, population=300, rounds=100, seed=0)
    privacy = _privacy(option, target_epsilon=50, **(
        {"bits": 16, "auto_clip": False} if option == "distributed_dp" else {})).for_run(spec)
    privacy.factory(None, spec).create(VALUE, WEIGHT)
    spent = privacy.accountant(spec).after_round(99, [], None)["privacy/epsilon"]
    assert 50 * 0.995 <= spent <= 50


def test_runs_from_before_the_privacy_group_pool_with_runs_at_privacy_none():
    """A stored study made before `privacy` existed keeps pooling with new runs of the
    same configuration (privacy=none adds a param that changes nothing); a private run
    is a configuration of its own and is never the baseline."""
    from federated_research.report import Run

    def run(params, choices):
        return Run("id", "name", "0", params, choices, {}, {}, {}, {}, [])

    old = run({"aggregator._target_": "M", "seed": "0"}, {"aggregator": "mean"})
    new = run({"aggregator._target_": "M", "seed": "1",
               "privacy._target_": "federated_research.privacy.none.NoPrivacy"},
              {"aggregator": "mean", "privacy": "none"})
    private = run({"aggregator._target_": "M",
                   "privacy._target_": "federated_research.privacy.dp_fixed.DpFixed"},
                  {"aggregator": "mean", "privacy": "dp_fixed"})
    assert old.config_key == new.config_key != private.config_key
    assert old.is_baseline and new.is_baseline and not private.is_baseline


def test_the_privacy_preset_sweeps_every_level_with_what_composes():
    """privacy_vs_compression: 12 arms on FEMNIST (dataset=emnist), each valid; every
    central level with the three compressors, distributed DP with mean at three rings."""
    from hydra_plugins.federated_research_arms.arms_sweeper import ArmsSweeper

    cfg = compose_config(["experiment=privacy_vs_compression"], hydra_config=True)
    arms = ArmsSweeper(params=dict(cfg.hydra.sweeper.params),
                       arms=list(cfg.hydra.sweeper.arms)).arms
    assert len(arms) == 12 and cfg.dataset._target_.endswith("load_emnist")
    for arm in arms:
        validate(compose_config(["experiment=privacy_vs_compression", *arm]))
    levels = {" ".join(o for o in arm if o.startswith("privacy")) for arm in arms}
    assert len(levels) == 6  # none, two central levels, three rings


def test_the_report_adds_epsilon_and_a_plot_by_privacy_level(tmp_path):
    """Private configurations are compared with the non-private mean, get an epsilon
    column, and a plot with one series per privacy level; a study without privacy keeps
    its table as it was."""
    from federated_research.report import Run, markdown, summarise, write_report

    def run(seed, aggregator, privacy, accuracy, up, eps=None, **keys):
        params = {"aggregator._target_": aggregator, "rounds": "2", **{
            f"privacy.{k}": str(v) for k, v in keys.items()}}
        if privacy != "none":
            params["privacy._target_"] = privacy
        return Run(f"{aggregator}{privacy}{keys}{seed}", "n", str(seed), params,
                   {"aggregator": aggregator, "privacy": privacy},
                   {0: accuracy - 0.1, 1: accuracy + 0.001 * seed}, {0: up / 2, 1: up},
                   {0: 1.0, 1: 2.0}, {0: 1.0, 1: 1.0}, [], epsilon=eps)

    runs = [r for s in (0, 1, 2) for r in (
        run(s, "mean", "none", 0.9, 3200),
        run(s, "drive", "none", 0.9, 100),
        run(s, "mean", "dp_fixed", 0.8, 3200, 12.5, noise_multiplier=0.5),
        run(s, "drive", "dp_fixed", 0.79, 100, 12.5, noise_multiplier=0.5),
        run(s, "mean", "distributed_dp", 0.78, 2000, 12.4, bits=16, target_epsilon=12.5))]
    rows, settings = summarise(runs)
    by = {r["config"]: r for r in rows}
    assert {r["privacy"] for r in rows} == {"none", "dp_fixed noise 0.5",
                                          "distributed_dp 16 bits target epsilon 12.5"}
    private = next(r for r in rows if r["privacy"] == "dp_fixed noise 0.5"
                   and r["up_bits"] == 3200)
    assert private["accuracy_delta"] == pytest.approx(-10.0)  # against mean, no privacy
    assert private["epsilon"] == 12.5 and by["mean"]["epsilon"] is None
    assert "| epsilon |" in markdown(rows, settings)
    paths = write_report(rows, settings, tmp_path, "t")
    assert tmp_path / "privacy.png" in paths and (tmp_path / "privacy.png").stat().st_size
    one_seed, settings = summarise([r for r in runs if r.seed == "0"])
    assert tmp_path / "one" / "privacy.png" in write_report(one_seed, settings, tmp_path / "one",
                                                            "t")  # no interval to draw
    plain_rows, plain = summarise([r for r in runs if r.choices["privacy"] == "none"])
    assert "epsilon" not in markdown(plain_rows, plain)
