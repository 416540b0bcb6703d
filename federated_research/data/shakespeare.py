"""Federated Shakespeare (LEAF) through TFF's own loader: next-character prediction.

715 speaking roles are the clients. Text becomes ids over TFF's fixed character
vocabulary (the 86 characters of TFF's text-generation tutorial and of its
Shakespeare baseline task), shifted by one to keep 0 for padding, plus
out-of-vocabulary, beginning- and end-of-snippet tokens: 90 ids in all.

The tutorial cuts each client's text into 101-character pieces and drops the
rest, so a role with less than 101 characters (88 of the 715) never trains. Here
a client's snippets, each wrapped in beginning/end tokens, run into one stream
of ids that is cut into sequences of `seq_length + 1` and the last one padded:
every client trains, and padding is masked out of the loss and of the accuracy.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.simulation.baselines import keras_metrics
from tensorflow_federated.python.simulation.baselines.shakespeare import (
    char_prediction_preprocessing as tff_chars,
)

from federated_research.data.federated_data import FederatedData
from federated_research.data.tff_cache import load_cached

CACHE_FILE = "shakespeare.sqlite"
CHAR_VOCAB: list[str] = tff_chars.CHAR_VOCAB
PAD, OOV, BOS, EOS = tff_chars.get_special_tokens()
VOCAB_SIZE = tff.simulation.baselines.shakespeare.VOCAB_LENGTH  # 86 characters + 4 tokens


def _byte_ids() -> np.ndarray:
    """id of every byte value: vocabulary characters 1..86, everything else OOV.

    TFF splits snippets into bytes (tf.strings.bytes_split) and looks them up in
    a hash table; a 256-entry gather gives the same ids without a table resource
    in every client dataset.
    """
    ids = np.full(256, OOV, np.int64)
    for i, char in enumerate(CHAR_VOCAB):
        ids[ord(char)] = i + 1
    return ids


BYTE_IDS = _byte_ids()


def encode(text: str | bytes) -> np.ndarray:
    """Ids of a text, without beginning/end tokens (for prompts)."""
    data = text.encode() if isinstance(text, str) else text
    return BYTE_IDS[np.frombuffer(data, np.uint8)]


def decode(ids) -> str:
    """Text of ids; special tokens are left out."""
    return "".join(CHAR_VOCAB[i - 1] for i in np.asarray(ids).tolist() if 1 <= i <= len(CHAR_VOCAB))


class MaskedSparseCategoricalCrossentropy(tf.keras.losses.Loss):
    """Mean cross-entropy over the target positions that are not padding.

    TFF's baseline task averages over padding too, which rewards predicting
    padding after the end of a client's text; here padding does not count.
    """

    def __init__(self, from_logits: bool = True, pad: int = PAD,
                 name: str = "masked_sparse_categorical_crossentropy") -> None:
        super().__init__(name=name, reduction=tf.keras.losses.Reduction.SUM)  # call reduces
        self.from_logits, self.pad = from_logits, pad

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.int64)
        per_token = tf.keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits)
        mask = tf.cast(tf.not_equal(y_true, self.pad), per_token.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(per_token * mask), tf.reduce_sum(mask))

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits, "pad": self.pad}


class CharPrediction:
    """Sequences of `seq_length` ids in, the same shifted by one out."""

    def __init__(self, seq_length: int, max_sequences: int | None = None) -> None:
        self.seq_length, self.max_sequences = seq_length, max_sequences

    def pooled(self) -> CharPrediction:
        """The task for every client's data pooled (algorithm=centralized): no per-client cap."""
        return CharPrediction(self.seq_length)

    def input_spec(self, input_shape: tuple[int, ...]) -> tuple[tf.TensorSpec, tf.TensorSpec]:
        del input_shape  # (seq_length,)
        spec = tf.TensorSpec([None, self.seq_length], tf.int64)
        return spec, spec

    def sequences(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """Snippets -> one id stream (BOS text EOS BOS text EOS ...) -> padded pieces.

        Pieces of `seq_length + 1` ids overlap by one, so that every id after the
        first is a target exactly once, wherever the pieces start; the last piece
        is padded.
        """
        byte_ids = tf.constant(BYTE_IDS)
        length = self.seq_length + 1

        def to_ids(example):
            data = tf.io.decode_raw(example["snippets"], tf.uint8)
            ids = tf.gather(byte_ids, tf.cast(data, tf.int32))
            return tf.concat([[BOS], ids, [EOS]], 0)

        def pad(piece):
            return tf.reshape(tf.pad(piece, [[0, length - tf.shape(piece)[0]]]), [length])

        return (dataset.map(to_ids).unbatch()
                .window(length, shift=self.seq_length).flat_map(lambda w: w.batch(length))
                .filter(lambda piece: tf.shape(piece)[0] > 1)  # a lone last id predicts nothing
                .map(pad))

    @staticmethod
    def _split(piece):
        return piece[:-1], piece[1:]

    def examples(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """(input, target) pairs, a piece shifted by one; every traced function of the
        pipeline is here, built once per client (see preprocessing.py)."""
        return self.sequences(dataset).map(self._split)

    def batches(self, examples: tf.data.Dataset, epochs: int, batch_size: int,
                shuffle_buffer: int, seed: int) -> tf.data.Dataset:
        """The client's sequences, shuffled by `seed`; each epoch draws at most
        `max_sequences` of them (all when None). Nothing here is traced."""
        pieces = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if self.max_sequences is not None:
            pieces = pieces.take(self.max_sequences)
        return pieces.repeat(epochs).batch(batch_size)

    def client_batches(self, dataset: tf.data.Dataset, epochs: int, batch_size: int,
                       shuffle_buffer: int, seed: int) -> tf.data.Dataset:
        return self.batches(self.examples(dataset), epochs, batch_size, shuffle_buffer, seed)

    def eval_batches(self, dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
        return self.examples(dataset).batch(batch_size)

    def loss(self, from_logits: bool) -> tf.keras.losses.Loss:
        return MaskedSparseCategoricalCrossentropy(from_logits=from_logits)

    def metrics(self) -> list[tf.keras.metrics.Metric]:
        """Accuracy over real characters only, as TFF's Shakespeare task scores it
        (padding, out-of-vocabulary, beginning and end tokens do not count), and the
        number of tokens that do count."""
        return [keras_metrics.MaskedCategoricalAccuracy(masked_tokens=[PAD, OOV, BOS, EOS],
                                                        name="accuracy"),
                keras_metrics.NumTokensCounter(masked_tokens=[PAD, OOV, BOS, EOS],
                                               name="num_tokens")]


def load_shakespeare(seq_length: int = 100, max_sequences: int | None = None,
                     cache_dir: str | None = None, seed: int = 0) -> FederatedData:
    """715 roles; train and test text of every role (TFF splits each role's snippets)."""
    del seed  # the roles are the clients: nothing to draw
    train, test = load_cached(tff.simulation.datasets.shakespeare.load_data, CACHE_FILE,
                              cache_dir)
    # TFF joins the test clients in a random order unless seeded: same order every run.
    return FederatedData(train=train, test=test.create_tf_dataset_from_all_clients(seed=0),
                         test_clients=test,
                         num_classes=VOCAB_SIZE, input_shape=(seq_length,),
                         task=CharPrediction(seq_length, max_sequences))
