"""The config's schemas, each with its own checks, and `validate`, which runs them all.

Every node of the composed config is checked by its own dataclass, in one line
that names the full key and the fix (options.py):

* a compression method's node (aggregator, distributor) by the method's own
  dataclass (federated_research/compression/), the same one that builds it;
* every other option's node by its schema below: the YAML file extends it
  (`- /schema_<group>_<name>@_here_`), so a wrong type or an unknown key fails
  while Hydra composes, and its `check()` bounds the values;
* the loop's keys, `client`, `fed_eval` and `tracking` by the root schema.

`validate` calls them in turn and keeps only the rules that span several nodes.
Nothing here imports TensorFlow: bad input fails in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from federated_research.compression.method import check_downlink, is_method
from federated_research.errors import ConfigError
from federated_research.options import Options, build_options, require

_SCHEMAS: list[tuple[str, str, type]] = []


def schema(group: str, *names: str):
    """Register a dataclass as the schema of `group` options `names` (see register_schemas)."""

    def register(cls: type) -> type:
        _SCHEMAS.extend((group, name, cls) for name in names)
        return cls

    return register


class Partition(Enum):
    iid = "iid"
    dirichlet = "dirichlet"
    shards = "shards"


@schema("dataset", "mnist")
@dataclass
class MnistConfig(Options):
    _target_: str = "federated_research.data.mnist.load_mnist"
    num_clients: int = 40
    partition: Partition = Partition.dirichlet
    alpha: float = 0.5
    shards_per_client: int = 2
    test_fraction: float = 0.2

    def check(self) -> None:
        require(self.num_clients >= 1, "num_clients", self.num_clients, "must be at least 1", 40)
        require(self.alpha > 0, "alpha", self.alpha, "must be positive", 0.5)
        require(self.shards_per_client >= 1, "shards_per_client", self.shards_per_client,
                "must be at least 1", 2)
        require(0 < self.test_fraction < 1, "test_fraction", self.test_fraction,
                "must be strictly between 0 and 1", 0.2)


@schema("dataset", "emnist")
@dataclass
class EmnistConfig(Options):
    _target_: str = "federated_research.data.emnist.load_emnist"
    only_digits: bool = True
    cache_dir: str | None = None


@schema("dataset", "shakespeare")
@dataclass
class ShakespeareConfig(Options):
    _target_: str = "federated_research.data.shakespeare.load_shakespeare"
    seq_length: int = 100
    max_sequences: int | None = None
    cache_dir: str | None = None

    def check(self) -> None:
        require(self.seq_length >= 1, "seq_length", self.seq_length, "must be at least 1", 100)
        require(self.max_sequences is None or self.max_sequences >= 1, "max_sequences",
                self.max_sequences, "must be at least 1 (or null for all)", 64)


@schema("model", "target")
@schema("aggregator", "target")
@schema("distributor", "target")
@schema("algorithm", "target")
@dataclass
class TargetConfig(Options):
    """A part built by calling `_target_` with no options of its own."""

    _target_: str = MISSING


@schema("distributor", "federated_dropout")
@dataclass
class FederatedDropoutConfig(Options):
    """`distributor=federated_dropout`: the fraction of hidden units a round drops, and the
    codec (another distributor, composed from the group) that sends the sub-model."""

    _target_: str = "federated_research.distributors.federated_dropout.FederatedDropout"
    rate: float = 0.25
    seed: int = 0
    codec: Any = None

    def check(self) -> None:
        require(0 < self.rate < 1, "rate", self.rate,
                "must be between 0 and 1 (the fraction of each hidden layer's units dropped)",
                0.25)


@schema("model", "char_rnn")
@dataclass
class CharRnnConfig(TargetConfig):
    _target_: str = "federated_research.models.char_rnn.build_char_rnn"
    embedding_dim: int = 256
    rnn_units: int = 1024
    rnn_layers: int = 1

    def check(self) -> None:
        for key, example in (("embedding_dim", 256), ("rnn_units", 256), ("rnn_layers", 1)):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be at least 1",
                    example)


@schema("model", "mlp")
@dataclass
class MlpConfig(TargetConfig):
    _target_: str = "federated_research.models.mlp.build_mlp"
    hidden_units: list[int] = field(default_factory=lambda: [200, 200])

    def check(self) -> None:
        require(all(units >= 1 for units in self.hidden_units), "hidden_units",
                self.hidden_units, "every layer needs at least one unit", "[200,200]")


@schema("model", "keras_file")
@dataclass
class KerasFileConfig(TargetConfig):
    _target_: str = "federated_research.models.keras_file.build_keras_file"
    path: str = MISSING

    missing_problem = {"path": "model=keras_file needs the saved model to start from"}
    missing_fix = {"path": "pass model.path=<a .keras or .h5 file, a SavedModel folder, or "
                           "a finished run's output folder>"}


@schema("aggregator", "tff_compression")
@dataclass
class TffCompressionConfig(TargetConfig):
    _target_: str = "tensorflow_federated.learning.compression_aggregator"
    zeroing: bool = True
    clipping: bool = True


@schema("aggregator", "compression")
@dataclass
class CompressionConfig(TffCompressionConfig):
    _target_: str = "federated_research.aggregators.compression.compression_aggregator"
    bits: int = 8
    threshold: int = 20000
    seed: int = 0

    def check(self) -> None:
        require(1 <= self.bits <= 16, "bits", self.bits, "TFF's quantiser takes 1 to 16 bits", 8)
        require(self.threshold >= 0, "threshold", self.threshold, "must be 0 or more", 20000)


_TFF_OPTIMIZERS = "tensorflow_federated.learning.optimizers"


@dataclass
class OptimizerConfig(TargetConfig):
    learning_rate: float = MISSING

    def check(self) -> None:
        require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be positive",
                0.1)
        for key, example in (("momentum", 0.9), ("beta_1", 0.9), ("beta_2", 0.99)):
            value = getattr(self, key, None)
            require(value is None or 0 <= value < 1, key, value, "must be in [0, 1)", example)
        for key, example in (("epsilon", 0.001), ("initial_preconditioner_value", 0.1)):
            value = getattr(self, key, None)
            require(value is None or value > 0, key, value, "must be positive", example)


@schema("optimizer", "sgdm")
@dataclass
class SgdmConfig(OptimizerConfig):
    _target_: str = f"{_TFF_OPTIMIZERS}.build_sgdm"
    momentum: float | None = None


@schema("optimizer", "adam")
@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = f"{_TFF_OPTIMIZERS}.build_adam"
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


@schema("optimizer", "yogi")
@dataclass
class YogiConfig(AdamConfig):
    _target_: str = f"{_TFF_OPTIMIZERS}.build_yogi"
    epsilon: float = 1e-3
    initial_preconditioner_value: float = 1e-6


@schema("optimizer", "adagrad")
@dataclass
class AdagradConfig(OptimizerConfig):
    _target_: str = f"{_TFF_OPTIMIZERS}.build_adagrad"
    initial_preconditioner_value: float = 0.1
    epsilon: float = 1e-7


@schema("algorithm", "fedprox")
@dataclass
class FedProxConfig(TargetConfig):
    _target_: str = "federated_research.algorithms.fedprox.build_fedprox"
    mu: float = 0.01

    def check(self) -> None:
        require(self.mu >= 0, "mu", self.mu, "the proximal strength must be 0 or more "
                "(0 is FedAvg)", 0.01)


@schema("algorithm", "centralized")
@dataclass
class CentralizedConfig(TargetConfig):
    _target_: str = "federated_research.algorithms.centralized.build_centralized"
    shuffle_buffer: int = 10_000

    def check(self) -> None:
        require(self.shuffle_buffer >= 1, "shuffle_buffer", self.shuffle_buffer,
                "must be at least 1", 10000)


@schema("tracking", "default")
@dataclass
class TrackingConfig(Options):
    mlflow_uri: str = MISSING
    experiment: str = "federated_research"
    run_name: str | None = None
    tensorboard: bool = True
    progress_bar: bool | None = None
    sweep_report: bool = True
    save_model: bool = True
    delivery_timeout: float = 60.0

    def check(self) -> None:
        require(self.delivery_timeout >= 0, "delivery_timeout", self.delivery_timeout,
                "must be 0 or more seconds", 60)


@dataclass
class ClientConfig(Options):
    epochs: int = 1
    batch_size: int = 20
    shuffle_buffer: int = 100
    gradient_clip_norm: float | None = None
    update_clip_norm: float | None = None

    def check(self) -> None:
        for key, example in (("epochs", 1), ("batch_size", 20), ("shuffle_buffer", 100)):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be at least 1",
                    example)
        for key in ("gradient_clip_norm", "update_clip_norm"):
            value = getattr(self, key)
            require(value is None or value > 0, key, value,
                    "must be positive (or null for no clipping)", 1.0)


@dataclass
class FedEvalConfig(Options):
    every: int = 0
    clients: int = 20

    def check(self) -> None:
        require(self.every >= 0, "every", self.every, "must be 0 (off) or more", 5)
        require(self.clients >= 1, "clients", self.clients, "must be at least 1", 20)


@dataclass
class ClientStateConfig(Options):
    store: str = "memory"

    def check(self) -> None:
        require(self.store in ("memory", "disk"), "store", self.store,
                "must be memory or disk (one file per client in the run's output folder)",
                "disk")


@dataclass
class LoopConfig(Options):
    """The run's own keys: rounds, sampling, evaluation, checkpoints."""

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

    def check(self) -> None:
        require(self.rounds >= 0, "rounds", self.rounds, "must be 0 or more", 20)
        require(self.clients_per_round >= 1, "clients_per_round", self.clients_per_round,
                "must be at least 1", 10)
        require(self.eval_every >= 1, "eval_every", self.eval_every, "must be at least 1", 5)
        require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size,
                "must be at least 1", 500)
        require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every,
                "must be 0 (no checkpoints) or more", 10)
        require(self.checkpoint_keep >= 1, "checkpoint_keep", self.checkpoint_keep,
                "must be at least 1", 3)
        require(self.on_nonfinite in ("stop", "continue"), "on_nonfinite", self.on_nonfinite,
                "must be stop (end the run as FAILED) or continue", "stop")


@dataclass
class Config(LoopConfig):
    dataset: Any = MISSING
    model: Any = MISSING
    aggregator: Any = MISSING
    distributor: Any = MISSING
    privacy: Any = MISSING
    runtime: Any = MISSING
    algorithm: Any = MISSING
    client_optimizer: Any = MISSING
    server_optimizer: Any = MISSING
    tracking: Any = MISSING
    client: ClientConfig = field(default_factory=ClientConfig)
    fed_eval: FedEvalConfig = field(default_factory=FedEvalConfig)
    client_state: ClientStateConfig = field(default_factory=ClientStateConfig)


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def all_options(group: str, *excluded: str) -> str:
    """Every option of a config group but `excluded`, comma-separated, for a sweep.

    A preset that sweeps `aggregator: ${all_options:aggregator}` picks up a new
    method's YAML file by itself: no list to keep by hand.
    """
    names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    unknown = set(excluded) - set(names)
    if unknown:
        raise ConfigError(f"all_options:{group}", f"{', '.join(sorted(unknown))} is not an "
                          f"option of {group}", f"exclude only some of {', '.join(names)}")
    return ",".join(n for n in names if n not in excluded)


def register_schemas() -> None:
    """Put the schemas where the YAML files' defaults lists look for them.

    As root configs (`- /schema_<group>_<name>@_here_`), not in a config group:
    `--help` then lists only the groups and options a user picks.
    """
    OmegaConf.register_new_resolver("all_options", all_options, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, name, node in _SCHEMAS:
        cs.store(name=f"schema_{group}_{name}", node=node)
    # Hydra finds plugins by listing the folders of `hydra_plugins`, which an editable
    # install does not have: the project's sweeper is registered by hand, after Hydra's
    # scan (which re-executes the modules it finds, the basic sweeper's among them).
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    from hydra_plugins.federated_research_arms.arms_sweeper import ArmsSweeper

    if f"{ArmsSweeper.__module__}.{ArmsSweeper.__name__}" not in plugins.class_name_to_class:
        plugins.register(ArmsSweeper)


GROUP_NODES = ("dataset", "model", "aggregator", "distributor", "privacy", "algorithm",
               "client_optimizer", "server_optimizer", "runtime")
_BY_TARGET = {cls._target_: cls for _, _, cls in _SCHEMAS
              if isinstance(getattr(cls, "_target_", None), str) and cls._target_ != MISSING}


def options_class(node: DictConfig) -> type[Options]:
    """The dataclass that checks a group node: a method's own class, or its option's schema.

    Only the compression package's targets are imported here: they load without
    TensorFlow (lazy.py). Any other target (TFF's factories) is known by its schema;
    a method defined elsewhere is checked when it is built instead.
    """
    target = node.get("_target_")
    if target in _BY_TARGET:
        return _BY_TARGET[target]
    if str(target).startswith(("federated_research.compression.",
                               "federated_research.privacy.",
                               "federated_research.runtime.")):
        cls = hydra.utils.get_class(target)
        if is_method(cls) or issubclass(cls, Options):  # a method, or PowerSGD's options
            return cls
    return TargetConfig if set(node.keys()) <= {"_target_"} else _Untyped


@dataclass
class _Untyped(Options):
    """An option composed without a schema (a user's own YAML): its keys pass as they are."""


def validate_codec(node: object) -> None:
    """Federated dropout's codec: a distributor option, composed as one, checked as one."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"distributor.codec={node}", "the codec that sends the sub-model is "
                          "an option of the distributor group",
                          f"pass distributor@distributor.codec={node or 'quantize'}")
    cls = options_class(node)
    if cls is FederatedDropoutConfig:
        raise ConfigError("distributor.codec=federated_dropout", "a sub-model of a sub-model "
                          "is one sub-model with a higher rate", "raise distributor.rate")
    if cls is not _Untyped:
        built = build_options(cls, node, "distributor.codec")
        if hasattr(built, "make_codec"):
            check_downlink(built)


def runtime_options(cfg: DictConfig):
    """The `runtime` group's options, checked (validate has checked them already)."""
    return build_options(options_class(cfg.runtime), cfg.runtime, "runtime")


def too_few_clients(clients_per_round: int, available: int) -> ConfigError:
    return ConfigError(f"clients_per_round={clients_per_round}",
                       f"the dataset has only {available} training clients",
                       f"pass clients_per_round={available} or fewer")


def validate(cfg: DictConfig) -> None:
    """Check every node of a composed config by its own dataclass, then the cross-node rules."""
    for node in ("client_optimizer", "server_optimizer"):
        if not isinstance(cfg[node], DictConfig):  # `server_optimizer=adam` sets a string
            raise ConfigError(f"{node}={cfg[node]}", "an optimizer is picked from the "
                              "optimizer group, used once for each side",
                              f"pass optimizer@{node}={cfg[node]}")
    loop = {key: cfg[key] for key in LoopConfig.__dataclass_fields__ if key in cfg}
    build_options(LoopConfig, loop, "")
    for key, cls in (("client", ClientConfig), ("fed_eval", FedEvalConfig),
                     ("client_state", ClientStateConfig), ("tracking", TrackingConfig)):
        build_options(cls, cfg[key], key)
    for key in GROUP_NODES:
        cls = options_class(cfg[key])
        if cls is _Untyped:
            continue
        built = build_options(cls, cfg[key], key)
        if key == "distributor" and hasattr(built, "make_codec"):
            check_downlink(built)
        if isinstance(built, FederatedDropoutConfig):
            validate_codec(cfg.distributor.codec)
        if key == "privacy" and hasattr(built, "check_run"):
            built.check_run(cfg)  # which uplinks and algorithms it can make private
    _check_across_nodes(cfg)


def _check_across_nodes(cfg: DictConfig) -> None:
    known = cfg.dataset.get("num_clients")  # a simulated split: known before any import
    if isinstance(known, int) and cfg.clients_per_round > known:
        raise too_few_clients(cfg.clients_per_round, known)
    scaffold = str(cfg.algorithm.get("_target_", "")).endswith(".build_scaffold")
    if scaffold and options_class(cfg.distributor) is FederatedDropoutConfig:
        raise ConfigError("distributor=federated_dropout", "SCAFFOLD's control variates are "
                          "full-model and every client's is updated each round it is sampled, "
                          "which a sub-model round cannot do", "use distributor=plain with "
                          "algorithm=scaffold, or algorithm=fedavg")
    if scaffold and cfg.client.update_clip_norm is not None:
        raise ConfigError(f"client.update_clip_norm={cfg.client.update_clip_norm}",
                          "SCAFFOLD sends its control change through the same aggregator, "
                          "and an update's norm is no bound for it",
                          "drop client.update_clip_norm with algorithm=scaffold")
