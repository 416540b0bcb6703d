"""What every dataset builder returns, and the shared client-data plumbing."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.data.task import ImageClassification, Task


@dataclass(frozen=True)
class FederatedData:
    """Federated training clients plus a held-out test set for centralised evaluation.

    `task` turns the raw examples of both into model batches and scores the
    predictions; the image datasets' examples are EMNIST-shaped,
    OrderedDict(label=int32[], pixels=float32[28, 28]). `input_shape` and
    `num_classes` are what a model builder gets: (28, 28, 1) and 10 for digits,
    (seq_length,) and the vocabulary size for text. `test_clients` is the same
    held-out data split over clients, for federated evaluation.
    """

    train: tff.simulation.datasets.ClientData
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple[int, ...] = (28, 28, 1)
    task: Task = field(default_factory=ImageClassification)
    test_clients: tff.simulation.datasets.ClientData | None = None

    @property
    def num_clients(self) -> int:
        return len(self.train.client_ids)


def client_data_from_arrays(pixels: np.ndarray, labels: np.ndarray,
                            parts: list[np.ndarray]) -> tff.simulation.datasets.ClientData:
    """A TFF ClientData whose client i holds the examples `parts[i]`.

    The examples are stored once, ordered by client, and each client's dataset
    is a slice of them: building a round's client datasets costs no copying.
    """
    order = np.concatenate(parts)
    bounds = np.cumsum([0] + [len(p) for p in parts])
    all_pixels = tf.constant(pixels[order], tf.float32)
    all_labels = tf.constant(labels[order], tf.int32)
    starts, ends = tf.constant(bounds[:-1], tf.int64), tf.constant(bounds[1:], tf.int64)
    width = len(str(len(parts) - 1))
    client_ids = [f"{i:0{width}d}" for i in range(len(parts))]

    def dataset_fn(client_id: tf.Tensor) -> tf.data.Dataset:
        i = tf.strings.to_number(client_id, tf.int64)
        lo, hi = starts[i], ends[i]
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
            label=all_labels[lo:hi], pixels=all_pixels[lo:hi]))

    return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(client_ids, dataset_fn)
