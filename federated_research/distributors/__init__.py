"""Downlink: how the server's model reaches the clients (the `distributor` group).

`plain` broadcasts the float32 model (TFF's `build_broadcast_process`); any
compression Method (quantize, rotated_quantize, ...) broadcasts an encoded model
that clients decode and train on (compressed.py). Independent of the uplink.
"""

from __future__ import annotations

from typing import Protocol

import hydra
import tensorflow_federated as tff
from omegaconf import DictConfig


class Distributor(Protocol):
    def create(self, weights_type: tff.Type) -> tff.learning.templates.DistributionProcess:
        """The distribution process for a model of this weights type."""


def build_distributor(cfg: DictConfig) -> Distributor:
    from federated_research.aggregators import is_method
    from federated_research.aggregators.codec import build_method
    from federated_research.errors import ConfigError

    if not is_method(cfg):
        return hydra.utils.instantiate(cfg)
    method = build_method(cfg, "distributor")
    for key in ("zeroing", "clipping"):
        if getattr(method, key):
            raise ConfigError(f"distributor.{key}=true", "zeroing and clipping apply to "
                              "client updates, not to the broadcast model",
                              f"drop distributor.{key} (aggregator.{key} exists)")
    from federated_research.distributors.compressed import CompressedBroadcast

    return CompressedBroadcast(method)
