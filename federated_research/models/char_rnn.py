"""The character model of TFF's text-generation tutorial: embedding, GRU, dense logits."""

from __future__ import annotations

import tensorflow as tf

from federated_research.errors import ConfigError


def build_char_rnn(input_shape: tuple[int, ...], num_classes: int, embedding_dim: int = 256,
                   rnn_units: int = 1024, rnn_layers: int = 1) -> tf.keras.Model:
    """Embedding(vocab, 256) -> GRU(1024) -> Dense(vocab) logits, as in the tutorial.

    The GRU is not stateful and the sequence length is left open, so one model
    trains on padded batches of any size and generates text from any prompt.
    4,053,594 parameters with the tutorial's sizes over the 90 ids of
    dataset=shakespeare.
    """
    if len(input_shape) != 1:
        raise ConfigError("model=char_rnn", f"takes sequences of character ids, the dataset "
                          f"gives inputs of shape {tuple(input_shape)}",
                          "use dataset=shakespeare, or model=cnn / model=linear for images")
    layers = tf.keras.layers
    return tf.keras.Sequential([
        layers.InputLayer(input_shape=(None,), dtype=tf.int64),
        layers.Embedding(num_classes, embedding_dim),
        *[layers.GRU(rnn_units, return_sequences=True, recurrent_initializer="glorot_uniform")
          for _ in range(rnn_layers)],
        layers.Dense(num_classes),
    ])
