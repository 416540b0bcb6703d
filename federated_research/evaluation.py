"""Centralised evaluation of the global model on the held-out data."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff

from federated_research.models import ModelSpec


class CentralEvaluator:
    """Evaluates model weights with a Keras copy of the model.

    The Keras model is built on first use, after the learning process exists:
    TFF traces `model_fn` in its own graphs, and a Keras model built eagerly
    before that ends up "in an invalid state".
    """

    def __init__(self, model: ModelSpec, test: tf.data.Dataset, batch_size: int) -> None:
        self._model = model
        self._batches = model.task.eval_batches(test, batch_size).cache()
        self._keras: tf.keras.Model | None = None

    def __call__(self, weights: tff.learning.models.ModelWeights) -> dict[str, float]:
        if self._keras is None:
            self._keras = self._model.compiled_keras()
        weights.assign_weights_to(self._keras)
        scores = self._keras.evaluate(self._batches, verbose=0, return_dict=True)
        return {f"eval/{name}": float(value) for name, value in scores.items()}
