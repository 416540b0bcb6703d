"""Program state saved every `checkpoint_every` rounds, so a run resumes where it stopped.

A checkpoint is one version of TFF's `tff.program.FileProgramStateManager`,
numbered by the rounds done, in `<output dir>/checkpoints/round_<n>/`: the
arrays in `state.npz`, the rest in `meta.json` (NumpyStateManager says why not
TFF's SavedModel). It is written into a temporary folder and renamed into place,
so a run killed while saving leaves the previous checkpoint whole; the manager
keeps the last `checkpoint_keep`.

What is saved is everything a round changes:
  * the learning process's state, flattened: model weights, client and server
    optimizer state, distributor and aggregator state (error feedback, norms);
  * the round counter, the cumulative bits both ways, the round times and the
    latest metrics (for summary.json), as one JSON string;
  * what clients remember, when they do (error feedback, SCAFFOLD): the
    client-state store, one file per client in `client_state/` (client_state.py).
Random draws need no saved generator state: sampling, shuffling, initialisation
and every compressor's randomness derive from (seed, stream, round) or from the
content being encoded (seeds.py, aggregators/codec.py), so round r after a
resume draws exactly what round r draws in an uninterrupted run. The seed is
kept in the JSON for the record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.client_state import STORE_DIR, WRITTEN_FILE, ClientStateStore
from federated_research.errors import ConfigError
from federated_research.loop import RunState
from federated_research.seeds import Stream

log = logging.getLogger("federated_research")

CHECKPOINT_DIR = "checkpoints"
PREFIX = "round_"
STATE_FILE, META_FILE = "state.npz", "meta.json"


class NumpyStateManager(tff.program.FileProgramStateManager):
    """TFF's file program-state manager (versions, keeping the newest K, refusing to
    overwrite a version), storing each version as a numpy archive and a JSON file.

    TFF's own format is a SavedModel: every save builds variables and traces a
    function. Saved every 10 rounds between rounds of the default CNN, that grew
    the run by about 4.5 MiB a save; this format writes the arrays as they are and
    touches no TensorFlow state. Like TFF's, a version is written into a temporary
    folder and renamed into place, so a kill leaves the previous one whole.
    """

    async def save(self, program_state: dict, version: int) -> None:
        path = Path(self._get_path_for_version(version))
        if path.exists():
            raise tff.program.ProgramStateExistsError(version=version, path=self._root_dir)
        temp = path.with_name(f"{path.name}_temp{os.getpid()}")
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        with open(temp / STATE_FILE, "wb") as f:
            np.savez(f, *program_state["server"])
            f.flush()
            os.fsync(f.fileno())
        (temp / META_FILE).write_text(program_state["meta"])
        if program_state.get("clients") is not None:  # what clients remember (client_state.py)
            program_state["clients"].save(temp / STORE_DIR)
        os.rename(temp, path)
        await self._remove_old_program_state()

    async def load(self, version: int, structure: dict) -> dict:
        path = Path(self._get_path_for_version(version))
        if not (path / STATE_FILE).is_file():
            raise tff.program.ProgramStateNotFoundError(version)
        with np.load(path / STATE_FILE) as saved:
            leaves = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        return {"server": leaves, "meta": (path / META_FILE).read_text()}


class Checkpoints:
    """Save and load a run's `RunState` in `<output_dir>/checkpoints`."""

    def __init__(self, output_dir: Path, every: int, keep: int, seed: int) -> None:
        self.root = Path(output_dir) / CHECKPOINT_DIR
        self.every, self.keep, self.seed = every, keep, seed
        self._manager: NumpyStateManager | None = None
        self.saved_round: int | None = None  # the rounds done in the newest checkpoint

    @property
    def manager(self) -> NumpyStateManager:
        if self._manager is None:  # created on first use: a run that never saves makes no folder
            self._manager = NumpyStateManager(
                str(self.root), prefix=PREFIX, keep_total=self.keep, keep_first=False)
        return self._manager

    def due(self, rounds_done: int, rounds: int) -> bool:
        """Every `every` rounds and after the last (so a finished run can be extended)."""
        return self.every > 0 and (rounds_done % self.every == 0 or rounds_done == rounds)

    def save_if_due(self, run: RunState, rounds: int) -> None:
        if self.due(run.next_round, rounds):
            self.save(run)

    def save(self, run: RunState) -> Path:
        """Write `run` as the version `run.next_round` (no-op if that version exists)."""
        if self.saved_round == run.next_round:
            return self.path(run.next_round)
        meta = {"format": 1, "next_round": run.next_round,
                "broadcasted_bits": int(run.broadcasted_bits),
                "aggregated_bits": int(run.aggregated_bits),
                "round_seconds": run.round_seconds, "last": run.last,
                "startup_seconds": run.startup_seconds,
                "rng": {"seed": self.seed, "streams": {s.name: int(s) for s in Stream}}}
        leaves = [np.asarray(leaf) for leaf in tf.nest.flatten(run.state)]
        asyncio.run(self.manager.save({"server": leaves, "meta": json.dumps(meta),
                                       "clients": run.clients}, run.next_round))
        self.saved_round = run.next_round
        return self.path(run.next_round)

    def resume(self, initial_state: object, rounds: int,
               clients: ClientStateStore | None = None) -> RunState:
        """Where a resumed run starts: its newest checkpoint, or round 0 without one."""
        done = self.latest()
        where = self.root.parent
        if done is None:  # stopped before its first checkpoint: again from round 0, same run
            log.info("resuming %s at round 0 (no checkpoint yet)", where)
            return RunState(initial_state, clients=clients)
        if rounds < done:
            raise ConfigError(f"rounds={rounds}", f"the run already did {done} rounds",
                              f"pass rounds={done} or more (or resume without rounds=)")
        run = self.load(initial_state, done, clients)
        log.info("resuming %s: %d of %d rounds done (checkpoint %s)", where, done, rounds,
                 self.path(done).name)
        return run

    def save_on_interrupt(self, run: RunState) -> str:
        """Save an interrupted run's last finished round; say what is saved and how to go on."""
        if self.every > 0 and run.next_round > 0:
            self.save(run)
        done = self.saved_round or 0
        if done:
            saved = (f"the state after {done} round{'s' if done > 1 else ''} is saved in "
                     f"{self.path(done)}")
        elif self.every == 0:
            saved = "checkpoints are off (checkpoint_every=0), so a resumed run starts at round 0"
        else:
            saved = "no round had finished, so a resumed run starts at round 0"
        return f"{saved}; resume with: python -m federated_research.train resume={self.root.parent}"

    def path(self, rounds_done: int) -> Path:
        return self.root / f"{PREFIX}{rounds_done}"

    def latest(self) -> int | None:
        """The rounds done in the newest whole checkpoint (None when there is none)."""
        if not self.root.is_dir():
            return None
        for leftover in self.root.glob(f"{PREFIX}*_temp*"):  # a save cut short by a kill
            shutil.rmtree(leftover, ignore_errors=True)
        versions = asyncio.run(self.manager.get_versions())
        return max(versions) if versions else None

    def load(self, template_state: object, version: int | None = None,
             clients: ClientStateStore | None = None) -> RunState:
        """Checkpoint `version` (the newest by default) as a RunState, its process state
        packed like `template_state`, and the client states put back into `clients`."""
        version = self.latest() if version is None else version
        if version is None:
            raise FileNotFoundError(f"no checkpoint in {self.root}")
        template = [np.asarray(leaf) for leaf in tf.nest.flatten(template_state)]
        saved = asyncio.run(self.manager.load(version, {"server": template, "meta": ""}))
        leaves = saved["server"]
        if len(leaves) != len(template) or any(
                a.shape != b.shape or a.dtype != b.dtype
                for a, b in zip(leaves, template, strict=True)):
            raise ValueError(f"{self.path(version)} holds the state of another model or "
                             "algorithm")
        if clients is not None:
            if not (self.path(version) / STORE_DIR / WRITTEN_FILE).is_file():
                raise ValueError(f"{self.path(version)} holds no client states, so it is not "
                                 "a checkpoint of this algorithm")
            clients.load(self.path(version) / STORE_DIR)
        meta = json.loads(saved["meta"])
        self.saved_round = version
        state = tf.nest.pack_sequence_as(template_state, [
            type(t)(a) if isinstance(t, np.generic | int | float) else a  # scalars stay scalars
            for t, a in zip(tf.nest.flatten(template_state), leaves, strict=True)])
        return RunState(state, next_round=meta["next_round"],
                        broadcasted_bits=meta["broadcasted_bits"],
                        aggregated_bits=meta["aggregated_bits"],
                        round_seconds=list(meta["round_seconds"]), last=meta["last"],
                        startup_seconds=meta["startup_seconds"], clients=clients)
