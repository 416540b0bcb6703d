"""A codec: one tensor's round trip, `encode` on the sending side, `decode` on the receiving one.

A codec is made for a fixed shape. `encode(x, seed)` takes the flat float32
tensor and returns the message, a dict of tensors of static shape; `decode`
returns the receiver's estimate of x; `bits()` is the exact size of the message,
the formula the bit accounting's measurement is tested against.

Randomness. Every sender derives a 32-bit seed from the run seed and the content
of what it encodes (`content_seed`), so runs reproduce and clients differ. A
codec whose decoder must regenerate the encoder's randomness (a rotation, a
subset, a projection) sets `needs_seed`; the seed then travels with the message
(32 bits, counted like everything else). Stochastic rounding noise never needs
to be known by the receiver and so is never sent.

A method may send the whole update as one vector (FetchSGD's count sketch): its
`codecs` are then a single codec for the tensors' concatenation, which
`encode_fn` builds, and `restore` splits the decoded vector back into tensors.
"""

from __future__ import annotations

import abc
import collections
import math

from federated_research.lazy import tf

SEED_BITS = 32  # the sender's seed, when a decoder needs it
VARLEN = "varlen"  # a message's variable-length code: counted as written (varlen.py)


def tensor_seed(client_seed: tf.Tensor, run_seed: int, index: int, stream: int = 0) -> tf.Tensor:
    """A stateless-RNG seed for tensor `index`, random stream `stream`, of one client."""
    base = tf.stack([client_seed, tf.constant(run_seed % 2**31, tf.int32)])
    return tf.random.experimental.stateless_fold_in(base, index * 16 + stream)


def content_seed(tensors: list[tf.Tensor], run_seed: int) -> tf.Tensor:
    """int32 seed from the run seed and the values being encoded (differs by client and round)."""
    total = tf.add_n([tf.reduce_sum(t) for t in tensors])
    squares = tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])
    seed = tf.constant([run_seed % 2**31, 0x5EED], tf.int32)
    for word in (tf.bitcast(total, tf.int32), tf.bitcast(squares, tf.int32)):
        seed = tf.random.experimental.stateless_fold_in(seed, word)
    return tf.cast(seed[0] ^ seed[1], tf.int32)


class Codec(abc.ABC):
    """One tensor's round trip, for a fixed shape.

    A `variable` codec's message length depends on the data: part of its message is
    a `varlen` entry (varlen.py) whose bits are measured as written, and `bits()`
    is the fixed rest."""

    needs_seed: bool = False
    variable: bool = False

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.size = math.prod(self.shape)

    @abc.abstractmethod
    def encode(self, x: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """float32 [size] -> the message (tensors of static shape)."""

    @abc.abstractmethod
    def decode(self, message: dict[str, tf.Tensor], seed: tf.Tensor) -> tf.Tensor:
        """The message -> float32 [size], the receiver's estimate of x."""

    @abc.abstractmethod
    def bits(self) -> int:
        """Exact bits of one message (the seed aside): the formula in the method's docstring."""


class Raw(Codec):
    """float32 values as they are: small tensors, and the reference point."""

    def encode(self, x, seed):
        return collections.OrderedDict(values=x)

    def decode(self, message, seed):
        return message["values"]

    def bits(self) -> int:
        return 32 * self.size


def measured_bits(codecs: list[Codec], message) -> tf.Tensor:
    """int64: the bits the variable-length codes of one message of `encode_fn(codecs, ...)`
    really take (0 if no codec is variable)."""
    found = [tf.cast(message["tensors"][i][VARLEN]["bits"], tf.int64)
             for i, c in enumerate(codecs) if c.variable]
    return tf.add_n(found) if found else tf.constant(0, tf.int64)


def message_bits(codecs: list[Codec]) -> int:
    """Exact bits of one message of `encode_fn(codecs, ...)`: every tensor, plus the seed
    (for variable codecs, the fixed part: `measured_bits` of a message adds the rest)."""
    return sum(c.bits() for c in codecs) + (SEED_BITS if any(c.needs_seed for c in codecs)
                                            else 0)


def encode_fn(codecs: list[Codec], run_seed: int):
    """The sending side: flatten each tensor, encode it, add the seed if a decoder needs it."""

    def encode(value):
        flat = [tf.reshape(tf.cast(v, tf.float32), [-1]) for v in tf.nest.flatten(value)]
        seed = content_seed(flat, run_seed)
        if len(codecs) == 1 < len(flat):  # one codec for the whole update
            flat = [tf.concat(flat, 0)]
        message = collections.OrderedDict(tensors=[
            c.encode(x, tensor_seed(seed, run_seed, i)) for i, (c, x) in enumerate(
                zip(codecs, flat, strict=True))])
        if any(c.needs_seed for c in codecs):
            message["seed"] = seed
        return message

    return encode


def decode_fn(codecs: list[Codec], run_seed: int):
    """The receiving side: each tensor's estimate, flat float32."""

    def decode(message):
        seed = message["seed"] if "seed" in message else tf.constant(0, tf.int32)
        return [c.decode(m, tensor_seed(seed, run_seed, i)) for i, (c, m) in enumerate(
            zip(codecs, message["tensors"], strict=True))]

    return decode


def restore(flat: list[tf.Tensor], specs):
    """Flat float32 tensors back into the shapes, dtypes and structure of `specs`."""
    flat_specs = tf.nest.flatten(specs)
    if len(flat) == 1 < len(flat_specs):  # the whole update as one vector
        flat = tf.split(flat[0], [s.shape.num_elements() for s in flat_specs])
    return tf.nest.pack_sequence_as(specs, [
        tf.cast(tf.reshape(t, s.shape), s.dtype) for t, s in zip(flat, flat_specs, strict=True)])
