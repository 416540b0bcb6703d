"""Turn EMNIST-shaped examples into the (x, y) batches a Keras model trains on.

Split in two on purpose. `examples` holds every Python function of the
pipeline (`map`): tf.data traces such a function into TensorFlow's context each
time a pipeline is built, and the context keeps it for the life of the process
(about 70 KiB a dataset; 0.75 MiB a round of 10 clients, for ever). `batches`
only shuffles, repeats and batches, which traces nothing, so the loop builds a
client's examples once (client_examples.ClientExamples) and its round's batches from them.
"""

from __future__ import annotations

import tensorflow as tf


def _to_xy(element):
    return tf.expand_dims(element["pixels"], -1), element["label"]


def examples(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """(x, y) examples: the image with a channel axis, and its label."""
    return dataset.map(_to_xy)


def batches(examples: tf.data.Dataset, epochs: int, batch_size: int, shuffle_buffer: int,
            seed: int) -> tf.data.Dataset:
    """Local training data: shuffled with an explicit seed (different every round
    and client, same for the same run seed), repeated `epochs` times, batched."""
    return (examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
            .repeat(epochs).batch(batch_size))


def client_batches(dataset: tf.data.Dataset, epochs: int, batch_size: int,
                   shuffle_buffer: int, seed: int) -> tf.data.Dataset:
    """`batches` of a client's raw dataset (builds its examples: one trace)."""
    return batches(examples(dataset), epochs, batch_size, shuffle_buffer, seed)


def eval_batches(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Held-out data, in order, batched."""
    return examples(dataset).batch(batch_size)
