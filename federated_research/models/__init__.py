"""Keras model builders and their wrapping as TFF models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import hydra
import tensorflow as tf
import tensorflow_federated as tff
from omegaconf import DictConfig

from federated_research.data.task import ImageClassification, Task
from federated_research.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model (a fresh Keras model per call, as TFF requires) and score it.

    `from_logits`: whether the model's outputs are logits rather than
    probabilities (a softmax last layer), read off the model once.
    """

    keras_fn: Callable[[], tf.keras.Model]
    input_spec: tuple[tf.TensorSpec, tf.TensorSpec]
    task: Task
    from_logits: bool = False

    def tff_model_fn(self) -> tff.learning.models.VariableModel:
        """The Keras model as TFF's model, its weights created as zeros (see `_zeros`)."""
        with tf.variable_creator_scope(_zeros):
            keras_model = self.keras_fn()
        return tff.learning.models.from_keras_model(
            keras_model, input_spec=self.input_spec,
            loss=self.task.loss(self.from_logits), metrics=self.task.metrics())

    def compiled_keras(self) -> tf.keras.Model:
        model = self.keras_fn()
        model.compile(loss=self.task.loss(self.from_logits), metrics=self.task.metrics())
        return model


def _zeros(next_creator, **kwargs):
    """Create a model weight as zeros rather than by its random initialiser.

    TFF builds the model inside every client's computation, and its worker draws
    the initialiser's random numbers on every call (1.7 M for the CNN: 7% of the
    worker's time) for weights the server's model then overwrites. The run's
    initial model is drawn eagerly, from the run seed (algorithms.initial_state).
    """
    shape = kwargs.get("shape")
    if shape is not None and tf.TensorShape(shape).is_fully_defined():
        kwargs["initial_value"] = tf.zeros(shape, kwargs.get("dtype") or tf.float32)
    return next_creator(**kwargs)


PICK_A_MODEL = ("pick a model for the dataset: cnn, linear for images (mnist, emnist); "
                "char_rnn for text (shakespeare)")


def outputs_logits(model: tf.keras.Model) -> bool:
    """False when the last layer ends in a softmax (probabilities), True otherwise."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return not (isinstance(last, tf.keras.layers.Softmax)
                or getattr(activation, "__name__", "") == "softmax")


def _model_key(cfg: DictConfig) -> str:
    """`model=<option>` as the user typed it (the target's module outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return f"model={HydraConfig.get().runtime.choices.get('model')}"
    return f"model={str(cfg.get('_target_', '?')).rsplit('.', 2)[-2]}"


def _check_fits(model: tf.keras.Model, input_shape: tuple[int, ...], num_classes: int,
                key: str) -> None:
    wanted = (None, *input_shape)
    got = tuple(model.input_shape)
    fits = len(got) == len(wanted) and all(
        g in (None, w) for g, w in zip(got, wanted, strict=True))
    if not fits:
        raise ConfigError(key, f"the model takes inputs of shape {got}, the dataset gives "
                          f"{wanted}", PICK_A_MODEL)
    if model.output_shape[-1] != num_classes:
        raise ConfigError(key, f"the model predicts {model.output_shape[-1]} classes, the "
                          f"dataset has {num_classes}",
                          "use a model built for this dataset's classes or vocabulary")


def build_model(cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int,
                task: Task | None = None) -> ModelSpec:
    """Bind the model group's `_target_` to the dataset's input shape and classes.

    The model is built once here, in a graph of its own (TFF builds its own
    copies later), to check that it fits the dataset and to read whether it
    outputs logits: a mismatch is one line now rather than a trace from inside TFF.
    """
    task = task or ImageClassification()
    build = hydra.utils.instantiate(cfg, _partial_=True)
    input_shape = tuple(input_shape)

    def keras_fn() -> tf.keras.Model:
        return build(input_shape=input_shape, num_classes=num_classes)

    key = _model_key(cfg)
    with tf.Graph().as_default():
        try:
            probe = keras_fn()
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:  # Keras layers refusing the input shape
            raise ConfigError(key, f"cannot take the dataset's inputs of shape {input_shape} "
                              f"({' '.join(str(exc).split())[:200]})", PICK_A_MODEL) from None
        _check_fits(probe, input_shape, num_classes, key)
        from_logits = outputs_logits(probe)
    return ModelSpec(keras_fn=keras_fn, input_spec=task.input_spec(input_shape), task=task,
                     from_logits=from_logits)


def save_keras(model: ModelSpec, weights: tff.learning.models.ModelWeights, path) -> None:
    """The trained weights as a Keras model file that `tf.keras.models.load_model`,
    `model=keras_file` and scripts/generate_text.py read back."""
    keras_model = model.keras_fn()
    weights.assign_weights_to(keras_model)
    keras_model.save(path)
