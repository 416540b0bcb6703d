"""Client-side clipping: of every local gradient, or of the update a client sends.

Both bound what one client can do to the model (a diverging client, an outlier),
the usual companions of adaptive server optimisers (Reddi et al. 2021) and of
differential privacy. Set by `client.gradient_clip_norm` / `client.update_clip_norm`.
"""

from __future__ import annotations

from dataclasses import replace

import tensorflow as tf
import tensorflow_federated as tff

from federated_research.aggregators.error_feedback import ClientStepFactory


class GradientClipping(tff.learning.optimizers.Optimizer):
    """A client optimizer that first scales each step's gradients to global L2 norm
    at most `clip_norm` (`tf.clip_by_global_norm`), then steps with `inner`."""

    def __init__(self, inner: tff.learning.optimizers.Optimizer, clip_norm: float) -> None:
        self.inner = inner
        self.clip_norm = clip_norm

    def initialize(self, specs):
        return self.inner.initialize(specs)

    def next(self, state, weights, gradients):
        flat, _ = tf.clip_by_global_norm(tf.nest.flatten(gradients), self.clip_norm)
        return self.inner.next(state, weights, tf.nest.pack_sequence_as(gradients, flat))

    def get_hparams(self, state):
        return self.inner.get_hparams(state)

    def set_hparams(self, state, hparams):
        return self.inner.set_hparams(state, hparams)


def clip_gradients(optimizer: tff.learning.optimizers.Optimizer,
                   clip_norm: float | None) -> tff.learning.optimizers.Optimizer:
    return optimizer if clip_norm is None else GradientClipping(optimizer, clip_norm)


def clip_updates(aggregator: tff.aggregators.WeightedAggregationFactory,
                 clip_norm: float | None) -> tff.aggregators.WeightedAggregationFactory:
    """TFF's `clipping_factory` around the uplink: each client projects its update onto
    the L2 ball of radius `clip_norm` before it is encoded and sent. Its traffic (the
    clipped-count sum) is the aggregator's, counted with it. Under error feedback (and
    PowerSGD, error_feedback.ClientStepFactory) the client clips its update before adding
    what it owes, and sends no count."""
    if clip_norm is None:
        return aggregator
    if isinstance(aggregator, ClientStepFactory):  # clipped on the client, before feedback
        return replace(aggregator, clip_norm=clip_norm)
    return tff.aggregators.clipping_factory(clip_norm, aggregator)
