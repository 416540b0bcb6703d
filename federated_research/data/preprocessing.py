"""Turn EMNIST-shaped examples into the (x, y) batches a Keras model trains on."""

from __future__ import annotations

import tensorflow as tf


def _to_xy(element):
    return tf.expand_dims(element["pixels"], -1), element["label"]


def client_batches(dataset: tf.data.Dataset, epochs: int, batch_size: int,
                   shuffle_buffer: int, seed: int) -> tf.data.Dataset:
    """Local training data: shuffled with an explicit seed (different every round
    and client, same for the same run seed), repeated `epochs` times, batched."""
    return (dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
            .repeat(epochs).batch(batch_size).map(_to_xy))


def eval_batches(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Held-out data, in order, batched."""
    return dataset.batch(batch_size).map(_to_xy)
