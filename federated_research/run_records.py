"""A report's runs as one portable file: what a study's answer is computed from, without
the MLflow store.

A 72-job study takes hours; its MLflow store (metrics of every round, checkpoints,
models) is hundreds of megabytes and tied to one machine. What the report reads from a
run is small: its params and group choices, the eval accuracy and cumulative bits by
round, the round times, the update error and the per-client bits. `save` writes those
records, one JSON line per run (gzip when the name ends in `.gz`); `load` reads them
back, so `scripts/compare_runs.py --from <file>` rebuilds the same table and plots
anywhere, and runs from several stores (or machines, or sessions) can be pooled into one
answer. Curves keep every step the store had, so nothing the report computes changes.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

from federated_research.report import ReportError, Run

FORMAT = "federated_research.runs/1"
_STEP_CURVES = ("accuracy", "up", "down", "round_seconds")


def _open(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return path.open(mode, encoding="utf-8")


def save(runs: list[Run], path: Path) -> Path:
    """Write `runs` to `path`: a header line, then one line per run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open(path, "w") as out:
        out.write(json.dumps({"format": FORMAT, "runs": len(runs)}) + "\n")
        for run in runs:
            out.write(json.dumps(dataclasses.asdict(run), sort_keys=True) + "\n")
    return path


def _run(record: dict) -> Run:
    for name in _STEP_CURVES:  # JSON keys are strings; steps are ints
        record[name] = {int(step): value for step, value in record[name].items()}
    record["fed_eval"] = {key: {int(s): v for s, v in curve.items()}
                          for key, curve in record.get("fed_eval", {}).items()}
    return Run(**record)


def load(path: Path) -> list[Run]:
    """The runs `save` wrote to `path`; a missing, foreign or damaged file is one
    ReportError naming the file."""
    if not path.is_file():
        raise ReportError(f"no file {path} (write one with compare_runs.py --export)")
    try:
        with _open(path, "r") as lines:
            header = json.loads(next(lines))
            if header.get("format") != FORMAT:
                raise ReportError(f"{path} is not a runs file of this version "
                                  f"(format {header.get('format')!r}, expected {FORMAT!r})")
            runs = [_run(json.loads(line)) for line in lines if line.strip()]
    except ReportError:
        raise
    except (OSError, EOFError, StopIteration, ValueError, TypeError, KeyError,
            AttributeError) as exc:
        raise ReportError(f"{path} is damaged or not a runs file ({type(exc).__name__}: "
                          f"{exc})") from exc
    if len(runs) != header.get("runs"):
        raise ReportError(f"{path} is truncated: {len(runs)} runs of {header.get('runs')}")
    return runs


def pool(groups: list[list[Run]]) -> list[Run]:
    """Runs from several sources, each run once (the same run id read twice is one run)."""
    seen: dict[str, Run] = {}
    for runs in groups:
        for run in runs:
            seen.setdefault(run.run_id, run)
    return list(seen.values())
