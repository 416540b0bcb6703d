#!/usr/bin/env python3
"""Kill a run with SIGKILL, resume it, and compare it with a run that never stopped.

    .venv/bin/python scripts/resume_check.py rounds=40 checkpoint_every=10
    .venv/bin/python scripts/resume_check.py --kill-at 25 aggregator=drive rounds=40
    .venv/bin/python scripts/resume_check.py algorithm=scaffold client_state.store=disk

Runs `python -m federated_research.train <overrides>` three times, as a user
would, with its own MLflow store under --out: once through; once killed with
SIGKILL as soon as it has logged round --kill-at (default: half the rounds);
then `resume=<that run's MLflow id>`. Prints the killed run's MLflow status
before the resume, the checkpoint it resumed from, and the comparison: the
largest difference between the two final models' weights and between every
metric the two MLflow runs hold (all but time/* and system/*), between the
clients' states in the two runs' last checkpoints (error feedback, SCAFFOLD), and
whether any step was logged twice or is missing. Exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from federated_research.tracking.journal import read_journal  # noqa: E402

NOT_REPRODUCIBLE = ("time/", "system/")


def _train(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "federated_research.train", *args,
                             "tracking.progress_bar=false"], env=env, **kwargs)


def _rounds_logged(folder: Path) -> int:
    entries = read_journal(folder / "metrics.jsonl")[0] if folder.is_dir() else []
    return max((s for s, m, _ in entries if "train/loss" in m), default=-1) + 1


def _history(client, run_id: str) -> tuple[dict[str, dict[int, float]], list[str]]:
    """Every metric's values by step, and the metrics with a step logged twice."""
    run = client.get_run(run_id)
    history, twice = {}, []
    for key in run.data.metrics:
        values = client.get_metric_history(run_id, key)
        steps = [m.step for m in values]
        if len(steps) != len(set(steps)):
            twice.append(key)
        history[key] = {m.step: m.value for m in values}
    return history, twice


def _client_states(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The newest checkpoint's client states: when each was written, and every file."""
    saved = sorted((folder / "checkpoints").glob("round_*"), key=lambda p: int(p.name[6:]))
    states = saved[-1] / "client_state" if saved else None
    if states is None or not states.is_dir():
        return {}, {}
    return (json.loads((states / "written.json").read_text()),
            {p.name: np.load(p) for p in states.glob("*.npy")})


def _compare_client_states(whole: Path, killed: Path) -> float:
    """Print how the two runs' last client states compare; the largest difference."""
    (want_written, want_states), (got_written, got_states) = (
        _client_states(whole), _client_states(killed))
    if not (want_states or got_states):
        return 0.0
    same_files = sorted(want_states) == sorted(got_states)
    diff = max((float(np.max(np.abs(want_states[n] - got_states[n]), initial=0))
                for n in want_states), default=0.0) if same_files else float("inf")
    if want_written != got_written:
        diff = float("inf")
    print(f"client states: {len(want_written)} clients' states in the last checkpoint, "
          f"{len(want_states)} files; max |resumed - uninterrupted| = {diff:g}; rounds they "
          f"were written in {'equal' if want_written == got_written else 'DIFFER'}")
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-at", type=int, default=None,
                        help="SIGKILL once this many rounds are logged (default: half)")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "resume_check" /
                        time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("overrides", nargs="*", help="train overrides, e.g. rounds=40")
    args = parser.parse_args()
    from hydra import compose, initialize_config_dir
    from mlflow import MlflowClient

    from federated_research.train import CONF_DIR

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        rounds = compose("config", overrides=args.overrides).rounds
    kill_at = args.kill_at or rounds // 2
    whole, killed = out / "whole", out / "killed"

    start = time.perf_counter()
    if _train([*args.overrides, f"hydra.run.dir={whole}"], env).wait() != 0:
        sys.exit("error: the uninterrupted run failed")
    print(f"uninterrupted: {rounds} rounds in {time.perf_counter() - start:.0f} s")

    proc = _train([*args.overrides, f"hydra.run.dir={killed}"], env,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while _rounds_logged(killed) < kill_at:
        if proc.poll() is not None:
            sys.exit("error: the run ended before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    client = MlflowClient(uri)
    run_id = next(r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])
        if r.data.tags.get("output_dir") == str(killed))
    saved = sorted(p.name for p in (killed / "checkpoints").glob("round_*"))
    print(f"killed with SIGKILL after {_rounds_logged(killed)} logged rounds; MLflow status "
          f"{client.get_run(run_id).info.status}; checkpoints {', '.join(saved) or 'none'}")

    start = time.perf_counter()
    resumed = subprocess.run([sys.executable, "-m", "federated_research.train",
                              f"resume={run_id}", "tracking.progress_bar=false"], env=env,
                             capture_output=True, text=True)
    if resumed.returncode != 0:
        sys.exit(f"error: the resume failed:\n{resumed.stderr[-2000:]}")
    said = [line.split(" - ", 1)[-1] for line in resumed.stdout.splitlines() if "resuming" in line]
    print(f"resumed in {time.perf_counter() - start:.0f} s: {said[0] if said else '?'}; MLflow "
          f"status {client.get_run(run_id).info.status}")

    import tensorflow as tf

    weights = [tf.keras.models.load_model(f / "model.keras", compile=False).get_weights()
               for f in (whole, killed)]
    weight_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights, strict=True))
    whole_id = next(r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])
        if r.data.tags.get("output_dir") == str(whole))
    (want, _), (got, twice) = _history(client, whole_id), _history(client, run_id)
    keys = sorted(k for k in want if not k.startswith(NOT_REPRODUCIBLE))
    missing = [k for k in keys if sorted(got.get(k, {})) != sorted(want[k])]
    metric_diff = max((abs(got[k][s] - v) for k in keys if k not in missing
                       for s, v in want[k].items()), default=0.0)
    print(f"model weights: max |resumed - uninterrupted| = {weight_diff:g}")
    print(f"{len(keys)} metrics x their steps: max difference {metric_diff:g}; steps logged "
          f"twice: {', '.join(twice) or 'none'}; steps missing: {', '.join(missing) or 'none'}")
    state_diff = _compare_client_states(whole, killed)
    if weight_diff or metric_diff or state_diff or twice or missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
