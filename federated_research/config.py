"""Structured-config schemas and value checks.

The YAML files in conf/ extend these dataclasses (`- /schema/<group>/<name>@_here_`),
so a wrong type (`client_optimizer.learning_rate=abc`, `rounds=ten`) or an
unknown key fails while Hydra composes, before TensorFlow is even imported.
Ranges that a type cannot express (`rounds=-1`) are checked by `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from federated_research.errors import ConfigError


class Partition(Enum):
    iid = "iid"
    dirichlet = "dirichlet"
    shards = "shards"


@dataclass
class MnistConfig:
    _target_: str = "federated_research.data.mnist.load_mnist"
    num_clients: int = 40
    partition: Partition = Partition.dirichlet
    alpha: float = 0.5
    shards_per_client: int = 2
    test_fraction: float = 0.2


@dataclass
class EmnistConfig:
    _target_: str = "federated_research.data.emnist.load_emnist"
    only_digits: bool = True
    cache_dir: str | None = None


@dataclass
class ShakespeareConfig:
    _target_: str = "federated_research.data.shakespeare.load_shakespeare"
    seq_length: int = 100
    max_sequences: int | None = None
    cache_dir: str | None = None


@dataclass
class TargetConfig:
    """A part built by calling `_target_` (a model, aggregator or algorithm builder)."""

    _target_: str = MISSING


@dataclass
class CharRnnConfig(TargetConfig):
    embedding_dim: int = 256
    rnn_units: int = 1024
    rnn_layers: int = 1


@dataclass
class MlpConfig(TargetConfig):
    hidden_units: list[int] = field(default_factory=lambda: [200, 200])


@dataclass
class KerasFileConfig(TargetConfig):
    path: str = MISSING


@dataclass
class TffCompressionConfig(TargetConfig):
    zeroing: bool = True
    clipping: bool = True


@dataclass
class CompressionConfig(TffCompressionConfig):
    bits: int = 8
    threshold: int = 20000
    seed: int = 0


@dataclass
class SgdmConfig(TargetConfig):
    learning_rate: float = MISSING
    momentum: float | None = None


@dataclass
class AdamConfig(TargetConfig):
    learning_rate: float = MISSING
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


@dataclass
class YogiConfig(AdamConfig):
    epsilon: float = 1e-3
    initial_preconditioner_value: float = 1e-6


@dataclass
class AdagradConfig(TargetConfig):
    learning_rate: float = MISSING
    initial_preconditioner_value: float = 0.1
    epsilon: float = 1e-7


@dataclass
class FedProxConfig(TargetConfig):
    mu: float = 0.01


@dataclass
class CentralizedConfig(TargetConfig):
    shuffle_buffer: int = 10_000


@dataclass
class TrackingConfig:
    mlflow_uri: str = MISSING
    experiment: str = "federated_research"
    run_name: str | None = None
    tensorboard: bool = True
    progress_bar: bool | None = None
    sweep_report: bool = True
    save_model: bool = True
    delivery_timeout: float = 60.0


@dataclass
class ClientConfig:
    epochs: int = 1
    batch_size: int = 20
    shuffle_buffer: int = 100
    gradient_clip_norm: float | None = None
    update_clip_norm: float | None = None


@dataclass
class FedEvalConfig:
    every: int = 0
    clients: int = 20


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    aggregator: Any = MISSING
    distributor: Any = MISSING
    algorithm: Any = MISSING
    client_optimizer: Any = MISSING
    server_optimizer: Any = MISSING
    tracking: Any = MISSING
    client: ClientConfig = field(default_factory=ClientConfig)
    fed_eval: FedEvalConfig = field(default_factory=FedEvalConfig)
    rounds: int = 10
    clients_per_round: int = 10
    seed: int = 0
    eval_every: int = 5
    eval_initial: bool = False
    eval_batch_size: int = 500
    log_update_error: bool = True
    checkpoint_every: int = 10
    checkpoint_keep: int = 3
    on_nonfinite: str = "stop"
    resume: str | None = None


def register_schemas() -> None:
    """Put the schemas where the YAML files' defaults lists look for them."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    # In their own group, so that `--help` lists only real options under each group;
    # the option files pull theirs in with `- /schema/<group>/<name>@_here_`.
    for group, name, node in (
            ("dataset", "mnist", MnistConfig), ("dataset", "emnist", EmnistConfig),
            ("dataset", "shakespeare", ShakespeareConfig),
            ("model", "target", TargetConfig), ("model", "char_rnn", CharRnnConfig),
            ("model", "mlp", MlpConfig),
            ("model", "keras_file", KerasFileConfig), ("aggregator", "target", TargetConfig),
            ("distributor", "target", TargetConfig),
            ("aggregator", "compression", CompressionConfig),
            ("aggregator", "tff_compression", TffCompressionConfig),
            ("algorithm", "target", TargetConfig), ("optimizer", "sgdm", SgdmConfig),
            ("optimizer", "adam", AdamConfig), ("optimizer", "yogi", YogiConfig),
            ("optimizer", "adagrad", AdagradConfig), ("algorithm", "fedprox", FedProxConfig),
            ("algorithm", "centralized", CentralizedConfig),
            ("tracking", "default", TrackingConfig)):
        cs.store(group=f"schema/{group}", name=name, node=node)


def _check(ok: bool, key: str, value: object, problem: str, example: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value}", problem, f"pass e.g. {key}={example}")


def validate(cfg: DictConfig) -> None:
    """Check the ranges of a composed config; raises ConfigError naming the key."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg.model, "path"):  # (`in` is False for a missing value)
        raise ConfigError("model.path", "model=keras_file needs the saved model to start from",
                          "pass model.path=<a .keras or .h5 file, a SavedModel folder, or a "
                          "finished run's output folder>")
    _check(cfg.rounds >= 0, "rounds", cfg.rounds, "must be 0 or more", "20")
    _check(cfg.clients_per_round >= 1, "clients_per_round", cfg.clients_per_round,
           "must be at least 1", "10")
    _check(cfg.eval_every >= 1, "eval_every", cfg.eval_every, "must be at least 1", "5")
    _check(cfg.fed_eval.every >= 0, "fed_eval.every", cfg.fed_eval.every,
           "must be 0 (off) or more", "5")
    _check(cfg.fed_eval.clients >= 1, "fed_eval.clients", cfg.fed_eval.clients,
           "must be at least 1", "20")
    _check(cfg.checkpoint_every >= 0, "checkpoint_every", cfg.checkpoint_every,
           "must be 0 (no checkpoints) or more", "10")
    _check(cfg.checkpoint_keep >= 1, "checkpoint_keep", cfg.checkpoint_keep,
           "must be at least 1", "3")
    _check(cfg.on_nonfinite in ("stop", "continue"), "on_nonfinite", cfg.on_nonfinite,
           "must be stop (end the run as FAILED) or continue", "stop")
    _check(cfg.tracking.delivery_timeout >= 0, "tracking.delivery_timeout",
           cfg.tracking.delivery_timeout, "must be 0 or more seconds", "60")
    _check(cfg.eval_batch_size >= 1, "eval_batch_size", cfg.eval_batch_size,
           "must be at least 1", "500")
    for key, example in (("epochs", 1), ("batch_size", 20), ("shuffle_buffer", 100)):
        value = cfg.client[key]
        _check(value >= 1, f"client.{key}", value, "must be at least 1", str(example))
    for key in ("gradient_clip_norm", "update_clip_norm"):
        value = cfg.client[key]
        _check(value is None or value > 0, f"client.{key}", value,
               "must be positive (or null for no clipping)", "1.0")
    for node in ("client_optimizer", "server_optimizer"):
        if not isinstance(cfg[node], DictConfig):  # `server_optimizer=adam` sets a string
            raise ConfigError(f"{node}={cfg[node]}", "an optimizer is picked from the "
                              "optimizer group, used once for each side",
                              f"pass optimizer@{node}={cfg[node]}")
        lr = cfg[node].learning_rate
        _check(lr > 0, f"{node}.learning_rate", lr, "must be positive", "0.1")
        for key, example in (("momentum", "0.9"), ("beta_1", "0.9"), ("beta_2", "0.99")):
            value = cfg[node].get(key)
            _check(value is None or 0 <= value < 1, f"{node}.{key}", value,
                   "must be in [0, 1)", example)
        for key, example in (("epsilon", "0.001"), ("initial_preconditioner_value", "0.1")):
            value = cfg[node].get(key)
            _check(value is None or value > 0, f"{node}.{key}", value, "must be positive",
                   example)
    if "bits" in cfg.aggregator:
        _check(1 <= cfg.aggregator.bits <= 16, "aggregator.bits", cfg.aggregator.bits,
               "TFF's quantiser takes 1 to 16 bits", "8")
        _check(cfg.aggregator.threshold >= 0, "aggregator.threshold", cfg.aggregator.threshold,
               "must be 0 or more", "20000")
    data = cfg.dataset
    if "num_clients" in data:
        _check(data.num_clients >= 1, "dataset.num_clients", data.num_clients,
               "must be at least 1", "40")
    if "shards_per_client" in data:
        _check(data.shards_per_client >= 1, "dataset.shards_per_client", data.shards_per_client,
               "must be at least 1", "2")
    if "alpha" in data:
        _check(data.alpha > 0, "dataset.alpha", data.alpha, "must be positive", "0.5")
    if "seq_length" in data:
        _check(data.seq_length >= 1, "dataset.seq_length", data.seq_length,
               "must be at least 1", "100")
    if data.get("max_sequences") is not None:
        _check(data.max_sequences >= 1, "dataset.max_sequences", data.max_sequences,
               "must be at least 1 (or null for all)", "64")
    if "test_fraction" in data:
        _check(0 < data.test_fraction < 1, "dataset.test_fraction", data.test_fraction,
               "must be strictly between 0 and 1", "0.2")
