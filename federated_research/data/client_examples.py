"""Each client's examples decoded once and kept; what a round sends TFF's worker is lean.

Two costs sat between a round and its training steps (docs/explanation/round-time.md):

* TFF hands a client its data as a `tf.data.Dataset`, serialised as a graph
  that the worker rebuilds and runs. A dataset read from TFF's SQLite cache
  carries the SQL query and the parsing functions, so every round read and
  decoded each sampled client's examples again, and the worker instantiated the
  parsing functions again. Here a client's preprocessed examples are decoded
  once, the first time it is sampled, and kept as tensors; a round's dataset is
  built from them with no Python function in it (nothing traced: see
  preprocessing.py), so the worker only slices, shuffles and batches.
* tf.data rewrites a pipeline's graph (its default optimisations) and starts
  an autotuning model every time an iterator is made: once per client per round
  in the worker, for pipelines of a few dozen batches. `lean` turns both off.

Neither changes an element or its order: the same seed gives the same batches,
and the same metrics bit for bit (tests/test_round_speed.py).
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import tensorflow as tf
import tensorflow_federated as tff


def lean(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` without tf.data's per-iterator graph rewrites and autotuning."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return dataset.with_options(options)


def decode(dataset: tf.data.Dataset):
    """All of `dataset`'s elements stacked into tensors (its structure, one more axis);
    None when its elements' shapes vary, so that they cannot be stacked."""
    spec = dataset.element_spec
    if not all(s.shape.is_fully_defined() for s in tf.nest.flatten(spec)):
        return None
    chunks = list(dataset.batch(4096))  # tf.data reserves room for a whole batch up front
    if not chunks:
        return tf.nest.map_structure(lambda s: tf.zeros([0, *s.shape], s.dtype), spec)
    return tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *chunks)


class ClientExamples:
    """A client's preprocessed examples (`task.examples`), decoded the first time the
    client is asked for and kept for the run.

    Its pipeline is built once, too: building one traces its Python functions into
    TensorFlow's context for good (preprocessing.py); rebuilding every sampled
    client's each round grew the run by 0.75 MiB a round.

    `prefetch` decodes clients in a background thread: the round loop asks for
    the next round's clients while TFF's worker trains this round's, so that a
    client's first round does not wait for its decoding. Memory is that of the
    clients sampled so far, as the model reads them (float32 images: 3 KiB an
    example; 130 MiB for 300 FEMNIST writers), up to `max_bytes`: past it the
    clients asked for longest ago are dropped, and decoded again (the same tensors)
    if sampled again, so that a population of thousands (EMNIST-62's 3,400 writers,
    2 GiB decoded) does not grow the run without bound (`runtime.examples_cache_mib`).
    A client whose examples cannot be stacked keeps its pipeline, built once.
    """

    def __init__(self, client_data: tff.simulation.datasets.ClientData, task,
                 max_bytes: int | None = None) -> None:
        self._client_data, self._task = client_data, task
        self.max_bytes = max_bytes  # None: keep every client met
        self.bytes = 0  # what the kept clients' tensors hold
        self.decoded = 0  # decodes so far (a client dropped and met again counts twice)
        self._kept: OrderedDict[str, object] = OrderedDict()  # oldest use first
        self._pending: dict[str, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def _decode(self, client_id: str):
        self.decoded += 1
        examples = self._task.examples(self._client_data.create_tf_dataset_for_client(client_id))
        decoded = decode(lean(examples))
        return examples if decoded is None else decoded

    def prefetch(self, client_ids: list[str]) -> None:
        """Start decoding those of `client_ids` not decoded yet, in the background."""
        for client_id in client_ids:
            if client_id not in self._kept and client_id not in self._pending:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="client-examples")
                self._pending[client_id] = self._pool.submit(self._decode, client_id)

    def __call__(self, client_id: str) -> tf.data.Dataset:
        if client_id in self._pending:
            self._keep(client_id, self._pending.pop(client_id).result())
        elif client_id not in self._kept:
            self._keep(client_id, self._decode(client_id))
        self._kept.move_to_end(client_id)
        kept = self._kept[client_id]
        if isinstance(kept, tf.data.Dataset):
            return kept
        return tf.data.Dataset.from_tensor_slices(kept)

    def _keep(self, client_id: str, kept) -> None:
        self._kept[client_id] = kept
        self.bytes += _nbytes(kept)
        while self.max_bytes is not None and self.bytes > self.max_bytes and len(self._kept) > 1:
            oldest = next(iter(self._kept))
            if oldest == client_id:
                break
            self.bytes -= _nbytes(self._kept.pop(oldest))  # a round using it keeps its copy

    def wait(self) -> None:
        """Wait until every client asked for in `prefetch` is decoded."""
        for future in list(self._pending.values()):
            future.exception()

    def close(self) -> None:
        """Stop decoding ahead: what has not started is dropped (it is decoded again when
        asked for), so that an error or a signal does not wait for it."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending = {cid: f for cid, f in self._pending.items() if not f.cancelled()}


def _nbytes(kept) -> int:
    """The bytes a client's stacked tensors hold (0 for a kept pipeline)."""
    if isinstance(kept, tf.data.Dataset):
        return 0
    return sum(int(t.shape.num_elements()) * t.dtype.size for t in tf.nest.flatten(kept))
