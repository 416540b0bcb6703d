"""The "2NN" of McMahan et al. (2017): a multilayer perceptron with two hidden layers."""

from __future__ import annotations

import tensorflow as tf


def build_mlp(input_shape: tuple[int, ...], num_classes: int,
              hidden_units: tuple[int, ...] = (200, 200)) -> tf.keras.Model:
    """Flatten, dense 200 ReLU, dense 200 ReLU, dense classes (softmax).

    199,210 parameters for 28x28 inputs and 10 classes, as in the paper.
    """
    layers = tf.keras.layers
    return tf.keras.Sequential([
        layers.InputLayer(input_shape=input_shape),
        layers.Flatten(),
        *[layers.Dense(units, activation="relu") for units in hidden_units],
        layers.Dense(num_classes, activation="softmax"),
    ])
