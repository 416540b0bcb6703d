"""Keras model builders and their wrapping as TFF models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import hydra
import tensorflow as tf
import tensorflow_federated as tff
from omegaconf import DictConfig


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model: a fresh Keras model per call, as TFF requires."""

    keras_fn: Callable[[], tf.keras.Model]
    input_spec: tuple[tf.TensorSpec, tf.TensorSpec]

    def tff_model_fn(self) -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            self.keras_fn(), input_spec=self.input_spec, loss=loss(), metrics=metrics())

    def compiled_keras(self) -> tf.keras.Model:
        model = self.keras_fn()
        model.compile(loss=loss(), metrics=metrics())
        return model


def loss() -> tf.keras.losses.Loss:
    return tf.keras.losses.SparseCategoricalCrossentropy()


def metrics() -> list[tf.keras.metrics.Metric]:
    return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def build_model(cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelSpec:
    """Bind the model group's `_target_` to the dataset's input shape and classes."""
    build = hydra.utils.instantiate(cfg, _partial_=True)

    def keras_fn() -> tf.keras.Model:
        return build(input_shape=tuple(input_shape), num_classes=num_classes)

    input_spec = (tf.TensorSpec([None, *input_shape], tf.float32),
                  tf.TensorSpec([None], tf.int32))
    return ModelSpec(keras_fn=keras_fn, input_spec=input_spec)
