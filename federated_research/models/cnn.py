"""The CNN of McMahan et al. (2017), "Communication-Efficient Learning of Deep
Networks from Decentralized Data", as used in TFF's compression tutorial."""

from __future__ import annotations

import tensorflow as tf


def build_cnn(input_shape: tuple[int, ...], num_classes: int) -> tf.keras.Model:
    """5x5 conv 32, 2x2 max-pool, 5x5 conv 64, 2x2 max-pool, dense 512, dense classes.

    1,663,370 parameters for 28x28x1 inputs and 10 classes.
    """
    layers = tf.keras.layers
    return tf.keras.Sequential([
        layers.InputLayer(input_shape=input_shape),
        layers.Conv2D(32, 5, padding="same", activation="relu"),
        layers.MaxPool2D(2, strides=2, padding="same"),
        layers.Conv2D(64, 5, padding="same", activation="relu"),
        layers.MaxPool2D(2, strides=2, padding="same"),
        layers.Flatten(),
        layers.Dense(512, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ])
