"""Federated algorithms: each builder returns a FederatedAlgorithm."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
import tensorflow_federated as tff

from federated_research.models import ModelSpec
from federated_research.seeds import Stream, int_seed


@dataclass(frozen=True)
class FederatedAlgorithm:
    """The learning process plus the parts whose traffic is the model's.

    The loop runs `process`; the bit accounting measures `distributor` and
    `aggregation` on their own to tell model traffic from control traffic.
    """

    process: tff.learning.templates.LearningProcess
    distributor: tff.templates.MeasuredProcess
    aggregation: tff.templates.AggregationProcess


def initial_state(process: tff.learning.templates.LearningProcess, model: ModelSpec,
                  seed: int) -> object:
    """`process.initialize()` with the model weights drawn from the run seed.

    TFF initialises weights inside its own graphs without a seed, so two runs
    would start from different models; here the Keras initialisers run eagerly
    under a seed derived from the run seed (after the process is built, see
    ARCHITECTURE.md §4) and the result replaces the initial weights.
    """
    tf.keras.utils.set_random_seed(int_seed(seed, Stream.INIT))
    keras_model = model.keras_fn()
    weights = tff.learning.models.ModelWeights(
        trainable=[v.numpy() for v in keras_model.trainable_weights],
        non_trainable=[v.numpy() for v in keras_model.non_trainable_weights])
    return process.set_model_weights(process.initialize(), weights)
