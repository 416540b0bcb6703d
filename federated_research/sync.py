"""`python -m federated_research.sync <output folder>`: send MLflow what it missed.

A run whose tracking server went away and did not come back in time ends by
naming what the server did not receive. Everything the run logged is in its
folder's metrics.jsonl; this sends the (metric, step) values the MLflow run
lacks, in order and with their original times, then the run's end status.
Running it twice sends nothing the second time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from federated_research.errors import ConfigError
from federated_research.resume import RunRecord
from federated_research.tracking.journal import JOURNAL_FILE, read_journal
from federated_research.tracking.mlflow_sink import Delivery, MlflowRun, MlflowSink


def sync(folder: Path) -> str:
    """Deliver the journal of the run in `folder`; returns what was done, in one line."""
    record = RunRecord.read(folder)
    if record is None:
        raise ConfigError(str(folder), "no run.json here, so no run of this program",
                          "pass the output folder the run printed")
    entries, status = read_journal(folder / JOURNAL_FILE)
    sink = MlflowSink(record.mlflow_uri,
                      MlflowRun(record.experiment, resume_run_id=record.run_id, journal=entries,
                                reopen=False),
                      Delivery(timeout=0, sync_hint=f"python -m federated_research.sync {folder}"))
    queued = sink.undelivered() or "nothing"
    if status:
        sink.close(status)
    else:
        sink.flush()
    if sink.undelivered():
        raise ConfigError(record.mlflow_uri, f"MLflow still does not answer; "
                          f"{sink.undelivered()} remain", "run this again once it is up")
    end = f"; run status {status}" if status else "; the run has not ended (status unchanged)"
    return f"sent {queued} to MLflow run {record.run_id} at {record.mlflow_uri}{end}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m federated_research.sync",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the run's output folder (holds run.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        print(sync(args.folder))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
