"""The run's own copy of every metric: `<output dir>/metrics.jsonl`, written first.

Each `log_metrics` call appends one line, `{"step": 3, "time": <ms>, "metrics": {...}}`, and
syncs it to disk before any other sink sees the values; the run's end appends
`{"status": "FINISHED"}`. So whatever a tracking server missed (it went away,
the run was killed) is on disk, and `python -m federated_research.sync <dir>`
or a resumed run delivers it. On a resumed run a (metric, step) pair already
in the journal is not written again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

JOURNAL_FILE = "metrics.jsonl"

Logged = set[tuple[str, int]]


def unlogged(metrics: Mapping[str, float], step: int, logged: Logged) -> dict[str, float]:
    """The metrics of `step` a sink has not stored yet (all of them on a fresh run)."""
    if not logged:
        return dict(metrics)
    return {k: v for k, v in metrics.items() if (k, step) not in logged}


Entry = tuple[int, dict[str, float], int]  # step, metrics, when logged (ms since the epoch)


def read_journal(path: Path) -> tuple[list[Entry], str | None]:
    """The (step, metrics, time) lines of a journal and its last end status (None: not
    ended)."""
    entries, status = [], None
    for record in _records(path):
        if "status" in record:
            status = record["status"]
        else:
            entries.append((record["step"], record["metrics"], record["time"]))
            status = None  # a resumed run logs again after an earlier end
    return entries, status


def _records(path: Path) -> Iterator[dict]:
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):  # a line cut short by a kill is not a record
                yield json.loads(line)


class MetricJournal:
    """A sink that appends to `metrics.jsonl`; put it first in the Tracker."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / JOURNAL_FILE
        self.logged: Logged = set()  # what earlier launches wrote
        if self.path.is_file():
            self._drop_partial_line()
            for step, metrics, _ in read_journal(self.path)[0]:
                self.logged.update((key, step) for key in metrics)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _drop_partial_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        new = unlogged(metrics, step, self.logged)  # (a launch logs each pair once)
        if new:
            self._write({"step": step, "time": int(time.time() * 1000),
                         "metrics": {k: float(v) for k, v in new.items()}})

    def close(self, status: str) -> None:
        try:
            self._write({"status": status})
        finally:
            self._file.close()
