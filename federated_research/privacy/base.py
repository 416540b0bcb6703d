"""What every `privacy=` option shares: the run facts it is built from, which uplinks it
composes with (checked before TensorFlow loads), and the adapter that hands a private
mean to algorithms that pass client weights.

DP means are unweighted: a client's influence must not depend on how many examples it
holds, so the sum of clipped updates is divided by the expected clients a round, as in
McMahan et al. 2018 and TFF's `build_unweighted_fed_avg`. The weights the algorithm
passes are dropped on the clients, never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig

from federated_research.errors import ConfigError
from federated_research.options import Options, require

MEAN = "tensorflow_federated.aggregators.MeanFactory"


@dataclass(frozen=True)
class PrivacySpec:
    """The run facts a private aggregator and its accountant are built from."""

    clients_per_round: int
    population: int
    rounds: int
    seed: int


@dataclass
class Privacy(Options):
    """Base of the `privacy` options. `compresses`: a compression method may encode the
    clipped update (each decoded update is clipped again at the server, so a codec that
    inflates a norm cannot raise the sensitivity the noise is calibrated to)."""

    compresses: ClassVar[bool] = False
    why_not_compressed: ClassVar[str] = ""

    def check_run(self, cfg: DictConfig) -> None:
        """Refuse, in one line, a run this option cannot make private or secure."""
        name = self.option_name()
        if cfg.client.update_clip_norm is not None:
            raise ConfigError(f"client.update_clip_norm={cfg.client.update_clip_norm}",
                              f"privacy={name} builds the uplink with its own clipping",
                              "drop client.update_clip_norm (set privacy.clip where it has one)")
        algorithm = str(cfg.algorithm.get("_target_", "")).rsplit(".", 1)[-1]
        if algorithm in ("build_scaffold", "build_centralized"):
            raise ConfigError(f"algorithm={algorithm.removeprefix('build_')}",
                              f"privacy={name} covers the model update alone, and this "
                              "algorithm sends other things (control variates) or has no clients",
                              "use algorithm=fedavg, fedprox, fedsgd or custom_fedavg")
        if "FederatedDropout" in str(cfg.distributor.get("_target_", "")):
            raise ConfigError("distributor=federated_dropout", f"privacy={name} clips and sums "
                              "full-model updates; a sub-model's are mapped back afterwards",
                              "use distributor=plain, quantize or rotated_quantize")
        self.check_uplink(cfg.aggregator)

    def check_uplink(self, aggregator: DictConfig) -> None:
        target = str(aggregator.get("_target_", ""))
        if target == MEAN:
            return
        name = self.option_name()
        from federated_research.compression.method import is_method
        from federated_research.config import options_class

        method = options_class(aggregator)
        label = _option(target)
        if not self.compresses or not is_method(method):
            why = self.why_not_compressed or ("its uplink is TFF's or has state of its own, "
                                              "which a private sum cannot wrap")
            raise ConfigError(f"aggregator={label}", f"privacy={name} cannot take it: {why}",
                              "use aggregator=mean" + (", or a compression method such as "
                                                      "aggregator=drive" if self.compresses
                                                      else ""))
        rule = getattr(method, "server_rule", "mean")
        if rule != "mean":
            raise ConfigError(f"aggregator={label}", f"its server rule ({rule}) is not a sum, "
                              "and the noise is calibrated to a sum of clipped updates",
                              "use a method whose server takes the mean, e.g. aggregator=drive")
        for key in ("error_feedback", "zeroing", "clipping"):
            value = aggregator.get(key)
            if value not in (None, False, "none"):
                raise ConfigError(f"aggregator.{key}={value}".replace("True", "true"),
                                  f"privacy={name} clips every update to privacy.clip itself; "
                                  "error feedback would send what an earlier round clipped off",
                                  f"drop aggregator.{key}")

    def option_name(self) -> str:
        return type(self).__module__.rsplit(".", 1)[-1]

    def for_run(self, spec: PrivacySpec) -> Privacy:
        """The options as this run uses them (e.g. the noise a target epsilon asks for)."""
        del spec
        return self

    def factory(self, method, spec: PrivacySpec):
        """The uplink's aggregation factory (weighted, weights ignored where DP)."""
        raise NotImplementedError

    def accountant(self, spec: PrivacySpec):
        """What turns rounds into epsilon, or None where nothing is private."""
        return None


def _option(target: str) -> str:
    """The `aggregator=` option a target comes from, as the user typed it."""
    from federated_research.config import CONF_DIR

    for path in sorted((CONF_DIR / "aggregator").glob("*.yaml")):
        if f"_target_: {target}\n" in path.read_text():
            return path.stem
    return target.rsplit(".", 1)[-1]


@dataclass
class ClippedGaussian(Privacy):
    """The options of a central Gaussian mechanism on updates clipped to `clip`."""

    noise_multiplier: float = 1.0  # the noise's standard deviation over the clip
    clip: float = 0.1              # L2 norm each client's update is clipped to
    delta: float | None = None     # epsilon's delta; null = 1 / population^1.1

    compresses: ClassVar[bool] = True

    def check(self) -> None:
        check_noise(self.noise_multiplier)
        require(self.clip > 0, "clip", self.clip, "is an L2 norm: positive", 0.1)
        check_delta(self.delta)


def count_stddev(clients_per_round: int) -> float:
    """TFF's default noise on an adaptive clip's count of unclipped updates (Andrew et
    al. 2021: expected clients / 20); the total noise multiplier must stay below twice
    it, i.e. below 0.1 x clients_per_round."""
    return 0.05 * clients_per_round


def check_noise(noise_multiplier: float) -> None:
    require(noise_multiplier >= 0, "noise_multiplier", noise_multiplier,
            "is the noise's standard deviation over the clip: 0 or more", 1.0)


def check_delta(delta: float | None) -> None:
    require(delta is None or 0 < delta < 1, "delta", delta,
            "is a probability: between 0 and 1 (null = 1 / population^1.1)", 1e-5)


def check_target(target: float | None) -> None:
    require(target is None or target > 0, "target_epsilon", target,
            "must be positive (null = use noise_multiplier as set)", 8)
