"""A compression method: a dataclass of options that picks each tensor's codec.

A method is one module: a `Method` subclass whose fields are its options (the
keys of its `conf/aggregator/<name>.yaml`), whose `check()` bounds them, whose
`make_codec(shape)` returns the `Codec` of one tensor, and whose `unbiased` says
whether E[decode(encode(x))] = x (the tests hold every method to both: its
declared bits against the measured ones, its unbiasedness against 200 encodings).
The options every method shares (small tensors raw, random subsampling, the
seed, TFF's zeroing and clipping of updates) live here, once.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar

from federated_research.compression.codec import Codec, Raw, message_bits
from federated_research.compression.subsampled import SubsampledCodec
from federated_research.errors import ConfigError
from federated_research.options import Options, build_options, require

FEEDBACK = ("none", "ef14", "ef21")  # aggregators/error_feedback.py


@dataclass
class Method(Options, abc.ABC):
    """Options every compression method takes; subclasses add theirs and `make_codec`."""

    threshold: int = 0        # tensors of at most this many elements are sent as float32
    subsample: float = 1.0    # < 1: encode a shared-seed random subset of this fraction
    seed: int = 0             # the run seed; all randomness derives from it
    zeroing: bool = False     # TFF's adaptive zeroing of outlier updates (uplink only)
    clipping: bool = False    # TFF's adaptive L2 clipping of updates (uplink only)
    error_feedback: str = "none"  # none, ef14 or ef21: clients keep what was not sent (uplink)

    # E[decode(encode(x))] = x: a subclass says so, as a class attribute or, where an
    # option decides it (drive's `unbiased`), as a field of the same name.
    unbiased: ClassVar[bool] = False

    @abc.abstractmethod
    def make_codec(self, shape: tuple[int, ...]) -> Codec:
        """The codec of one tensor of this shape."""

    def check(self) -> None:
        require(self.threshold >= 0, "threshold", self.threshold, "must be 0 or more", 0)
        require(0 < self.subsample <= 1, "subsample", self.subsample,
                "is the fraction of coordinates sent: in (0, 1]", 0.5)
        require(self.error_feedback in FEEDBACK, "error_feedback", self.error_feedback,
                f"must be one of {', '.join(FEEDBACK)} (aggregators/error_feedback.py)", "ef14")

    def is_unbiased(self) -> bool:
        """Whether this method, with these options, is unbiased."""
        return self.unbiased

    def codec(self, shape: tuple[int, ...]) -> Codec:
        """`make_codec`, with small tensors raw and subsampling applied."""
        if math.prod(shape) <= self.threshold:
            return Raw(shape)
        if self.subsample < 1:
            return SubsampledCodec(shape, self.subsample, self.make_codec)
        return self.make_codec(shape)

    def codecs(self, shapes: list[tuple[int, ...]]) -> list[Codec]:
        return [self.codec(tuple(s)) for s in shapes]

    def message_bits(self, shapes: list[tuple[int, ...]]) -> int:
        """Exact bits one sender's message of tensors of these shapes takes."""
        return message_bits(self.codecs(shapes))


def is_method(target: object) -> bool:
    """Whether a config node's `_target_` object is a compression method."""
    return isinstance(target, type) and issubclass(target, Method)


def build_method(cfg, group: str) -> Method:
    """A Method from its config node, typed and range-checked against its own dataclass."""
    import hydra

    return build_options(hydra.utils.get_class(cfg._target_), cfg, group)


def check_downlink(method: Method) -> None:
    """A broadcast model takes no zeroing or clipping: those are for client updates.
    Nor error feedback: EF21-P's clients must all hear every broadcast to keep the
    server's estimate of the model, which sampled clients do not."""
    for key in ("zeroing", "clipping"):
        if getattr(method, key):
            raise ConfigError(f"distributor.{key}=true", "zeroing and clipping apply to "
                              "client updates, not to the broadcast model",
                              f"drop distributor.{key} (aggregator.{key} exists)")
    if method.error_feedback != "none":
        raise ConfigError(f"distributor.error_feedback={method.error_feedback}",
                          "downlink error feedback (EF21-P) needs every client to receive "
                          "every broadcast, and a run samples clients: a returning client's "
                          "copy of the model would be stale",
                          "drop distributor.error_feedback (aggregator.error_feedback exists)")


def check_uplink(method: Method) -> None:
    """Error feedback replaces TFF's weighted mean, around which its adaptive zeroing
    and clipping are built: the two do not compose."""
    if method.error_feedback == "none":
        return
    for key in ("zeroing", "clipping"):
        if getattr(method, key):
            raise ConfigError(f"aggregator.{key}=true", f"TFF's adaptive {key} wraps the "
                              "weighted mean that error feedback replaces",
                              f"drop aggregator.{key}, or clip each update with "
                              "client.update_clip_norm=<norm>")
