"""Downlink: how the server's model reaches the clients (the `distributor` group).

`plain` broadcasts the float32 model (TFF's `build_broadcast_process`); any
compression Method (quantize, rotated_quantize, ...) broadcasts an encoded model
that clients decode and train on (compressed.py). Independent of the uplink, except
`federated_dropout` (federated_dropout.py), whose `bind` cuts the uplink to the
round's sub-model too; its `codec` is another distributor, which sends the sub-model.
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
    """The distributor of a config node; `codec` (federated dropout's) is one in turn."""
    if "codec" in cfg:  # federated dropout, checked here too: a script may skip validate()
        from federated_research.config import FederatedDropoutConfig, validate_codec
        from federated_research.options import build_options

        checked = build_options(FederatedDropoutConfig, cfg, "distributor")
        validate_codec(cfg.codec)
        return hydra.utils.get_class(cfg._target_)(rate=checked.rate, seed=checked.seed,
                                                   codec=build_distributor(cfg.codec))
    if not is_method(hydra.utils.get_object(cfg._target_)):
        return hydra.utils.instantiate(cfg)
    method = build_method(cfg, "distributor")
    check_downlink(method)
    return CompressedBroadcast(method)
