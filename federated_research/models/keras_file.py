"""A saved Keras model as the starting point of federated training (fine-tuning)."""

from __future__ import annotations

import os

import tensorflow as tf

from federated_research.errors import ConfigError

MODEL_FILE = "model.keras"  # what every run saves in its output dir (see train.py)
FIX = ("pass model.path=<a .keras or .h5 file, a SavedModel folder, or the output folder "
       "of a finished run>, e.g. one written by scripts/pretrain_char_model.py")


def resolve(path: str) -> str:
    """The model file behind `path`: the path itself, or a run output dir's model.keras."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_FILE)):
        return os.path.join(path, MODEL_FILE)
    return path


def load(path: str, key: str = "model.path") -> tf.keras.Model:
    """The model at `path`, uncompiled; one-line errors for what cannot be loaded."""
    file = resolve(path)
    if not os.path.exists(file):
        raise ConfigError(f"{key}={path}", f"{file} does not exist", FIX)
    try:
        model = tf.keras.models.load_model(file, compile=False)
    except Exception as exc:  # noqa: BLE001 - h5py, zip, protobuf and Keras errors alike
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{key}={path}", f"{file} is not a Keras model TensorFlow 2.14 can "
                          f"load ({type(exc).__name__}: {reason})", FIX) from None
    return model


def rebuild(model: tf.keras.Model, stateful: bool, batch_size: int | None = None
            ) -> tf.keras.Model:
    """The same layers and weights with recurrent layers (not) stateful.

    Training needs a model that takes batches of any size with fresh state per
    sequence; generating text one character at a time needs a stateful model
    with a fixed batch size. TFF's tutorial ships its model in both forms; this
    turns either into the other.
    """
    copy = type(model).from_config(with_state(model.get_config(), stateful, batch_size))
    copy.set_weights(model.get_weights())
    return copy


def with_state(config: dict, stateful: bool, batch_size: int | None) -> dict:
    """A Sequential or functional model's config with its recurrent layers (not)
    stateful and its batch size fixed (or open, None)."""
    for layer in config.get("layers", []):
        inner = layer.get("config", {})
        if "stateful" in inner:
            inner["stateful"] = stateful
        if "batch_input_shape" in inner:
            inner["batch_input_shape"] = [batch_size, *inner["batch_input_shape"][1:]]
    return config


def is_stateful(model: tf.keras.Model) -> bool:
    return any(getattr(layer, "stateful", False) for layer in model.layers)


def build_keras_file(input_shape: tuple[int, ...], num_classes: int, path: str
                     ) -> tf.keras.Model:
    """The model saved at `path`, with its weights, as a trainable (not stateful) model.

    Its fit to the dataset (input shape, classes or vocabulary) is checked by
    models.build_model like any other model's.
    """
    del input_shape, num_classes  # the file fixes both
    model = load(path)
    if is_stateful(model) or model.input_shape[0] is not None:  # e.g. the tutorial's batch-8 model
        return rebuild(model, stateful=False)
    return model
