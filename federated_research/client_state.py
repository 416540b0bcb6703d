"""The client-state store: what each client remembers between the rounds it is sampled in.

An algorithm or method whose clients keep state (error feedback's residuals,
SCAFFOLD's control variates) declares it as `process.initial_client_state`, a
structure of numpy arrays. The loop reads the round's sampled clients' states
from the store, passes them into `process.next` as a CLIENTS-placed argument and
writes what comes out back; a client never sampled before reads the initial
state. `client_state.store` picks where the states live:

  memory  a dict in the run's process: as many states as clients ever sampled,
          bounded by the population (40 MNIST clients x the CNN: 266 MB).
  disk    one file per client in `<output dir>/client_state/`, read and written
          only for the round's clients: memory bounded by a round's clients, for
          populations whose states do not fit (3,400 EMNIST writers x the CNN: 22 GiB).

Writes are staged and take effect with `commit()`, which the loop calls when the
round counts (RunState.advance, with SIGINT and SIGTERM held until the server's
state has moved too): an interrupted round leaves no state behind, so a checkpoint
holds the states of its own round. A checkpoint saves the store in its version
folder (`save`), one `.npy` file per state leaf and client, with `written.json`,
the round each client's state was last written; `load` puts them back. The disk
store hard-links its files into the checkpoint (the save copies nothing; a file
rewritten later then has two versions on disk, until the checkpoint is dropped).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

STORE_DIR = "client_state"
WRITTEN_FILE = "written.json"


class ClientStateStore:
    """Per-client states as lists of numpy arrays (the leaves of `initial`), keyed by id.

    `written[id]` is the round a client's state was last written: what the
    staleness metrics read. Subclasses keep the leaves somewhere (`_get`, `_put`).
    """

    def __init__(self, initial: list[np.ndarray], client_ids: list[str]) -> None:
        self.initial = [np.asarray(leaf) for leaf in initial]
        self.index = {cid: i for i, cid in enumerate(client_ids)}  # file names: ids may hold '/'
        self.written: dict[str, int] = {}
        self._staged: list[tuple[str, list[np.ndarray], int]] = []

    def read(self, client_ids: list[str]) -> list[list[np.ndarray]]:
        """The clients' states, the initial state for a client never written."""
        return [self._get(cid) if cid in self.written else self.initial for cid in client_ids]

    def write(self, client_ids: list[str], states: list[list[np.ndarray]],
              round_num: int) -> None:
        """Stage the round's new states; they take effect on `commit()`."""
        for cid, leaves in zip(client_ids, states, strict=True):
            leaves = [np.asarray(leaf, dtype=ref.dtype).reshape(ref.shape)
                      for leaf, ref in zip(leaves, self.initial, strict=True)]
            self._staged.append((cid, leaves, round_num))

    def commit(self) -> None:
        for cid, leaves, round_num in self._staged:
            self._put(cid, leaves)
            self.written[cid] = round_num
        self._staged = []

    def metrics(self, client_ids: list[str], round_num: int) -> dict[str, float]:
        """`client_state/*` before a round: how many of its clients have a state, how
        old it is (rounds since it was written) and the store's size."""
        ages = [round_num - self.written[cid] for cid in client_ids if cid in self.written]
        metrics = {"client_state/fraction_with_state": len(ages) / max(1, len(client_ids)),
                   "client_state/memory_bytes": float(self.memory_bytes()),
                   "client_state/disk_bytes": float(self.disk_bytes())}
        if ages:  # nothing to say about the age of states no client has
            metrics["client_state/mean_staleness"] = float(np.mean(ages))
            metrics["client_state/max_staleness"] = float(max(ages))
        return metrics

    def state_bytes(self) -> int:
        """Bytes of one client's state."""
        return sum(leaf.nbytes for leaf in self.initial)

    def memory_bytes(self) -> int:
        return 0

    def disk_bytes(self) -> int:
        return 0

    def save(self, folder: Path) -> None:
        """Write every written client's state into `folder` (a checkpoint's)."""
        folder.mkdir(parents=True, exist_ok=True)
        for cid in self.written:
            self._save_client(cid, folder)
        (folder / WRITTEN_FILE).write_text(json.dumps(self.written))

    def load(self, folder: Path) -> None:
        """Replace the store's states with those `save` wrote into `folder`."""
        self.clear()
        written = json.loads((folder / WRITTEN_FILE).read_text())
        for cid, round_num in written.items():
            self._load_client(cid, folder)
            self.written[cid] = round_num

    def clear(self) -> None:
        self.written, self._staged = {}, []

    def _name(self, cid: str, leaf: int) -> str:
        return f"{self.index[cid]}_{leaf}.npy"

    def _save_client(self, cid: str, folder: Path) -> None:
        for i, leaf in enumerate(self._get(cid)):
            np.save(folder / self._name(cid, i), leaf)

    def _load_client(self, cid: str, folder: Path) -> None:
        self._put(cid, [np.load(folder / self._name(cid, i)) for i in range(len(self.initial))])

    def _get(self, cid: str) -> list[np.ndarray]:
        raise NotImplementedError

    def _put(self, cid: str, leaves: list[np.ndarray]) -> None:
        raise NotImplementedError


class MemoryStore(ClientStateStore):
    """`client_state.store=memory`: the states in a dict."""

    def __init__(self, initial, client_ids) -> None:
        super().__init__(initial, client_ids)
        self._states: dict[str, list[np.ndarray]] = {}

    def _get(self, cid):
        return self._states[cid]

    def _put(self, cid, leaves):
        self._states[cid] = leaves

    def clear(self) -> None:
        super().clear()
        self._states = {}

    def memory_bytes(self) -> int:
        return len(self._states) * self.state_bytes()


class DiskStore(ClientStateStore):
    """`client_state.store=disk`: one `.npy` file per client and leaf in `folder`.

    A file is replaced by renaming a new one over it, never rewritten in place,
    so a checkpoint's hard link to it keeps the old state.
    """

    def __init__(self, initial, client_ids, folder: Path) -> None:
        super().__init__(initial, client_ids)
        self.folder = Path(folder)
        self._sizes: dict[str, int] = {}  # bytes of each file, kept as they are written
        self.clear()

    def _get(self, cid):
        return [np.load(self.folder / self._name(cid, i)) for i in range(len(self.initial))]

    def _put(self, cid, leaves):
        for i, leaf in enumerate(leaves):
            path = self.folder / self._name(cid, i)
            temp = path.with_name(f"new_{path.name}")
            np.save(temp, leaf)
            self._sizes[path.name] = temp.stat().st_size
            os.replace(temp, path)

    def clear(self) -> None:
        super().clear()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self._sizes = {}

    def disk_bytes(self) -> int:
        return sum(self._sizes.values())

    def _save_client(self, cid, folder):
        for i in range(len(self.initial)):
            _link_or_copy(self.folder / self._name(cid, i), folder / self._name(cid, i))

    def _load_client(self, cid, folder):
        for i in range(len(self.initial)):
            _link_or_copy(folder / self._name(cid, i), self.folder / self._name(cid, i))
            self._sizes[self._name(cid, i)] = (self.folder / self._name(cid, i)).stat().st_size


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


def build_store(kind: str, initial: object | None, client_ids: list[str],
                output_dir: Path | None) -> ClientStateStore | None:
    """The store `client_state.store=<kind>` names, for states shaped like `initial`
    (None when clients keep no state)."""
    import tensorflow as tf

    if initial is None:
        return None
    leaves = tf.nest.flatten(initial)
    if kind == "disk":
        if output_dir is None:
            raise ValueError("client_state.store=disk needs the run's output folder")
        return DiskStore(leaves, client_ids, Path(output_dir) / STORE_DIR)
    return MemoryStore(leaves, client_ids)
