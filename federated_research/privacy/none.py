"""No privacy mechanism: the uplink as the `aggregator` group builds it (the default)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from federated_research.privacy.base import Privacy


@dataclass
class NoPrivacy(Privacy):
    def check_run(self, cfg: DictConfig) -> None:
        """Every uplink works without privacy."""
