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

from federated_research.compression.method import build_method, check_downlink, is_method
from federated_research.distributors.compressed import CompressedBroadcast


class Distributor(Protocol):
    def create(self, weights_type: tff.Type) -> tff.learning.templates.DistributionProcess:
        """The distribution process for a model of this weights type."""


def build_distributor(cfg: DictConfig) -> Distributor:
    if not is_method(hydra.utils.get_object(cfg._target_)):
        return hydra.utils.instantiate(cfg)
    method = build_method(cfg, "distributor")
    check_downlink(method)
    return CompressedBroadcast(method)
