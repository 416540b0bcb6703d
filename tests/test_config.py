"""Composition: every option of every group, schemas, and range checks (no TensorFlow)."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from federated_research.config import validate
from federated_research.errors import ConfigError, one_line
from tests.conftest import compose_config, options

GROUPS = {"dataset": "dataset", "model": "model", "aggregator": "aggregator",
          "distributor": "distributor",
          "algorithm": "algorithm", "optimizer@client_optimizer": "client_optimizer",
          "optimizer@server_optimizer": "server_optimizer", "tracking": "tracking"}


def all_options():
    for group, node in GROUPS.items():
        for option in options(group.split("@")[0]):
            yield group, node, option


@pytest.mark.parametrize(("group", "node", "option"), list(all_options()))
def test_every_option_composes_and_validates(group, node, option):
    required = {"keras_file": ["model.path=pretrained/char_rnn.keras"]}  # no default exists
    cfg = compose_config([f"{group}={option}", *required.get(option, [])])
    validate(cfg)
    assert cfg[node], f"{group}={option} composed an empty {node}"


def test_contract_keys_exist_with_schema_types():
    cfg = compose_config()
    for key in ("rounds", "clients_per_round", "seed"):
        assert isinstance(cfg[key], int)
    for node in ("client_optimizer", "server_optimizer"):
        assert isinstance(cfg[node].learning_rate, float)


def test_optimizer_group_fills_client_and_server_independently():
    cfg = compose_config(["optimizer@client_optimizer=sgdm", "optimizer@server_optimizer=adam",
                          "client_optimizer.learning_rate=0.05"])
    assert cfg.client_optimizer.momentum == 0.9
    assert cfg.client_optimizer.learning_rate == 0.05
    assert cfg.server_optimizer._target_.endswith("build_adam")


def test_experiment_preset_reproduces_the_compression_tutorial():
    cfg = compose_config(["experiment=compression_tutorial"])
    assert cfg.dataset._target_.endswith("load_emnist")
    assert cfg.model._target_.endswith("build_cnn")
    assert cfg.aggregator._target_.endswith("compression_aggregator")
    assert (cfg.client_optimizer.learning_rate, cfg.server_optimizer.learning_rate) == (0.02, 1.0)


@pytest.mark.parametrize(("launcher", "target"), [
    ("basic", "BasicLauncher"), ("joblib", "JoblibLauncher"), ("slurm", "SlurmLauncher"),
    ("submitit_local", "LocalLauncher"), ("ray_cluster", "RayLauncher")])
def test_every_launcher_preset_composes(launcher, target):
    """The cluster presets are one option away: their plugins are in the locked .venv."""
    cfg = compose_config([f"hydra/launcher={launcher}"], hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.cpus_per_task >= 1 and cfg.hydra.launcher.timeout_min > 0
    if launcher == "ray_cluster":
        assert cfg.hydra.launcher.ray.remote.num_cpus == 1


def test_optuna_search_preset_searches_both_learning_rates():
    cfg = compose_config(["hparams_search=learning_rates", "aggregator=drive"],
                         hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"client_optimizer.learning_rate",
                                   "server_optimizer.learning_rate"}
    assert cfg.aggregator._target_.endswith("Drive")  # the chosen aggregator is kept


def test_compression_vs_baseline_sweeps_every_aggregator_over_three_seeds():
    """Its arms name budgets for some methods; `aggregator=*` adds every other option,
    a method added later included. Every arm composes and validates; the FEMNIST twin
    sweeps the same arms."""
    from federated_research.config import validate
    from hydra_plugins.federated_research_arms.arms_sweeper import ArmsSweeper

    def arms(preset):
        cfg = compose_config([f"experiment={preset}"], hydra_config=True)
        assert cfg.hydra.sweeper.params.seed.split(",") == ["0", "1", "2"]
        return ArmsSweeper(params=dict(cfg.hydra.sweeper.params),
                           arms=list(cfg.hydra.sweeper.arms)).arms

    mnist = arms("compression_vs_baseline")
    picked = [o.split("=", 1)[1] for arm in mnist for o in arm if o.startswith("aggregator=")]
    assert sorted(set(picked)) == options("aggregator") and picked.count("mean") == 1
    assert len(mnist) == len({" ".join(a) for a in mnist}) >= len(options("aggregator"))
    for arm in mnist:
        validate(compose_config(["experiment=compression_vs_baseline", *arm]))
    assert arms("compression_vs_baseline_emnist") == mnist


def test_a_wildcard_arm_adds_the_options_no_other_arm_picks():
    from hydra_plugins.federated_research_arms.arms_sweeper import expand

    others = [o for o in options("aggregator") if o not in ("mean", "topk")]
    assert expand([["aggregator=mean"], ["+aggregator=topk", "seed=1"],
                   ["aggregator=*", "rounds=2"]]) == [
        ["aggregator=mean"], ["+aggregator=topk", "seed=1"],
        *[[f"aggregator={o}", "rounds=2"] for o in others]]
    assert expand([["+aggregator=*"]]) == [[f"aggregator={o}"] for o in options("aggregator")]
    for bad in (["aggregatr=*"], ["aggregator=*", "distributor=*"],
                ["distributor@distributor.codec=*"]):
        with pytest.raises(ValueError, match="hydra.sweeper.arms"):
            expand([bad])


@pytest.mark.parametrize(("override", "key"), [
    ("client_optimizer.learning_rate=abc", "client_optimizer.learning_rate"),
    ("rounds=ten", "rounds"),
    ("dataset.partition=pathological", "dataset.partition"),
    ("client.batch_size=1.5", "client.batch_size"),
])
def test_wrong_types_fail_at_compose_time_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config([override])
    line = one_line(err.value)
    assert "\n" not in line and line.startswith(key), line


def test_a_key_the_picked_option_lacks_is_one_line():
    """A preset's Adam settings survive a switch to SGD: name the key, not the stack."""
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["experiment=fedadam_emnist62", "optimizer@server_optimizer=sgd"])
    line = one_line(err.value)
    assert line.startswith("server_optimizer.beta_1: no such config key") and "\n" not in line


def test_fedadam_preset_is_fedavg_with_adam_on_the_server():
    fedavg = compose_config(["experiment=fedavg_emnist62"])
    fedadam = compose_config(["experiment=fedadam_emnist62"])
    assert fedadam.dataset.only_digits is False and fedadam.model._target_.endswith("build_cnn")
    assert fedadam.server_optimizer._target_.endswith("build_adam")
    assert fedavg.server_optimizer._target_.endswith("build_sgdm")
    for key in ("dataset", "model", "client_optimizer", "rounds", "fed_eval", "client"):
        assert fedavg[key] == fedadam[key], key


def test_unknown_option_lists_the_real_ones():
    with pytest.raises(MissingConfigException) as err:
        compose_config(["aggregator=nope"])
    assert one_line(err.value) == ("aggregator=nope: no such option. Fix: choose one of "
                                   + ", ".join(options("aggregator")))
    assert {"mean", "compression", "drive", "topk"} <= set(options("aggregator"))


@pytest.mark.parametrize(("override", "key"), [
    ("rounds=-1", "rounds=-1"),
    ("clients_per_round=0", "clients_per_round=0"),
    ("eval_every=0", "eval_every=0"),
    ("client.epochs=0", "client.epochs=0"),
    ("client_optimizer.learning_rate=-0.1", "client_optimizer.learning_rate=-0.1"),
    ("dataset.alpha=0", "dataset.alpha=0.0"),
    ("dataset.test_fraction=1.0", "dataset.test_fraction=1.0"),
    ("dataset.shards_per_client=0", "dataset.shards_per_client=0"),
    ("fed_eval.every=-1", "fed_eval.every=-1"),
    ("fed_eval.clients=0", "fed_eval.clients=0"),
    ("client.update_clip_norm=0", "client.update_clip_norm=0.0"),
    ("client.gradient_clip_norm=-1", "client.gradient_clip_norm=-1.0"),
    ("server_optimizer=adam", "server_optimizer=adam"),  # the group is optimizer@server_optimizer
    ("optimizer@server_optimizer=yogi server_optimizer.beta_1=1.5",
     "server_optimizer.beta_1=1.5"),
    ("optimizer@client_optimizer=adagrad client_optimizer.epsilon=0",
     "client_optimizer.epsilon=0.0"),
])
def test_out_of_range_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(override.split()))
    assert str(err.value).startswith(f"{key}: ") and "Fix: " in str(err.value)


@pytest.mark.parametrize(("overrides", "line"), [
    (["rounds=ten"], "rounds=ten: wrong type. Fix: give rounds a whole number"),
    (["dataset.alpha=lots"], "dataset.alpha=lots: wrong type. Fix: give dataset.alpha a number"),
    (["aggregator=quantize", "aggregator.bits=abc"],
     "aggregator.bits=abc: wrong type. Fix: give aggregator.bits a whole number"),
    (["aggregator=drive", "aggregator.unbiased=maybe"],
     "aggregator.unbiased=maybe: wrong type. Fix: give aggregator.unbiased true or false"),
])
def test_a_wrong_type_reads_the_same_wherever_it_is_caught(overrides, line):
    """At composition (a schema) or in validate (a method's own dataclass): one wording."""
    try:
        validate(compose_config(overrides))
    except (ConfigCompositionException, ConfigError) as err:
        assert one_line(err).startswith(line), one_line(err)
    else:
        pytest.fail(f"{overrides} passed")
