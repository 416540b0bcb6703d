"""What a dataset asks of a model: how its examples become batches, how predictions are scored.

A dataset builder returns its task with its data (FederatedData.task), so the
round loop, the evaluator and the TFF model wrapper never need to know whether
they train on images or on text.
"""

from __future__ import annotations

import tensorflow as tf

from federated_research.data import preprocessing


class ImageClassification:
    """EMNIST-shaped examples, OrderedDict(label=int32[], pixels=float32[28, 28]): one label
    per image, scored by plain accuracy."""

    def pooled(self) -> ImageClassification:
        """The task for every client's data pooled (algorithm=centralized)."""
        return self

    def input_spec(self, input_shape: tuple[int, ...]) -> tuple[tf.TensorSpec, tf.TensorSpec]:
        return (tf.TensorSpec([None, *input_shape], tf.float32), tf.TensorSpec([None], tf.int32))

    def examples(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """A client's raw dataset as (x, y) examples: every traced function of the
        pipeline is here, built once per client (see preprocessing.py)."""
        return preprocessing.examples(dataset)

    def batches(self, examples: tf.data.Dataset, epochs: int, batch_size: int,
                shuffle_buffer: int, seed: int) -> tf.data.Dataset:
        """A round's batches of `examples`: shuffle, repeat, batch; nothing traced."""
        return preprocessing.batches(examples, epochs, batch_size, shuffle_buffer, seed)

    def client_batches(self, dataset: tf.data.Dataset, epochs: int, batch_size: int,
                       shuffle_buffer: int, seed: int) -> tf.data.Dataset:
        return self.batches(self.examples(dataset), epochs, batch_size, shuffle_buffer, seed)

    def eval_batches(self, dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
        return self.examples(dataset).batch(batch_size)

    def loss(self, from_logits: bool) -> tf.keras.losses.Loss:
        return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)

    def metrics(self) -> list[tf.keras.metrics.Metric]:
        return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


Task = ImageClassification  # the interface every task implements (see data/shakespeare.py)
