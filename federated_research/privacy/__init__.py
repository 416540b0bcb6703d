"""Privacy beside compression: the `privacy` group, one more axis of a sweep.

`privacy=none` (the default) leaves the uplink as the `aggregator` group builds it.
Every other option replaces the uplink's mean with a private or secure one built
from TFF's parts, and composes with a compression method where that is sound:

    none            the aggregator as it is
    dp_fixed        central DP, Gaussian noise, fixed clip          composes with a method
    dp_adaptive     central DP, adaptive clip (Andrew et al. 2021)  mean only
    dp_tree         DP-FTRL tree aggregation (Kairouz et al. 2021)  composes with a method
    secure          secure aggregation of the weighted mean         mean only
    distributed_dp  clip, rotate, quantise, discrete noise, SecAgg  mean only (it quantises)

A refused combination fails in one line that says why, before TensorFlow loads
(Privacy.check_run, called by config.validate). A DP option's accountant turns the
rounds run into `privacy/epsilon` (accounting.py), logged every round.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from federated_research.options import build_options
from federated_research.privacy.base import Privacy, PrivacySpec
from federated_research.privacy.none import NoPrivacy

__all__ = ["Privacy", "PrivacySpec", "build_privacy", "build_uplink"]


def build_privacy(node: DictConfig) -> Privacy:
    """The `privacy` node as its options dataclass, typed and range-checked."""
    return build_options(hydra.utils.get_class(node._target_), node, "privacy")


def build_uplink(cfg: DictConfig, participation: float, spec: PrivacySpec):
    """The uplink's aggregation factory and, for a DP option, its accountant (else None).

    Without privacy: the `aggregator` group's factory, clipped by client.update_clip_norm.
    With it: the option's private factory around the compression method, if any."""
    from federated_research.aggregators import build_aggregator
    from federated_research.clipping import clip_updates
    from federated_research.compression.method import build_method, is_method

    privacy = build_privacy(cfg.privacy).for_run(spec)
    if isinstance(privacy, NoPrivacy):
        return clip_updates(build_aggregator(cfg.aggregator, participation),
                            cfg.client.update_clip_norm), None
    method = None
    if is_method(hydra.utils.get_object(cfg.aggregator._target_)):
        method = build_method(cfg.aggregator, "aggregator")
    return privacy.factory(method, spec), privacy.accountant(spec)
