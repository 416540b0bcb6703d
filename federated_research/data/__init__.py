"""Datasets: each builder returns a FederatedData (see federated_data.py)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from federated_research.data.federated_data import FederatedData


def build_dataset(cfg: DictConfig, seed: int) -> FederatedData:
    """Call the dataset group's `_target_` with its options and the run seed."""
    return hydra.utils.instantiate(cfg, seed=seed, _convert_="all")
