#!/usr/bin/env python3
"""Start-up of a job against bare TFF doing the same work, in fresh processes.

    .venv/bin/python scripts/bench_startup.py              # 3 pairs, CNN on the embedded MNIST
    .venv/bin/python scripts/bench_startup.py --repeats 5 --json startup.json

Bare TFF is the tutorial's loop with nothing around it: import TFF, load the same
clients, build `build_weighted_fed_avg` for the same model and optimisers,
`initialize()`, build the evaluation model, then one round. Ours is
`python -m federated_research.train rounds=1` (Hydra, MLflow run, TensorBoard, bit
accounting, the owned TFF worker). Start-up is from the process's creation to the
first round (for ours: round 0's MLflow timestamp minus its duration, so any version
of the program can be measured; `time/startup_seconds` logs the same). The pairs run
interleaved, so both see the same machine; medians are reported. A basic-launcher
sweep of three jobs then shows what later jobs of one process pay.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE = r"""
import json, time, psutil
created = psutil.Process().create_time()
import tensorflow as tf
import tensorflow_federated as tff
from federated_research.data.mnist import load_mnist
from federated_research.models.cnn import build_cnn
from federated_research.data.preprocessing import client_batches
imported = time.time()
data = load_mnist(seed=0)

def model_fn():
    keras = build_cnn((28, 28, 1), 10)
    return tff.learning.models.from_keras_model(
        keras, loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        input_spec=BATCH_SPEC, metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

ids = list(data.train.client_ids)[:10]
datasets = [client_batches(data.train.create_tf_dataset_for_client(c), 1, 20, 100, 0)
            for c in ids]
BATCH_SPEC = datasets[0].element_spec
process = tff.learning.algorithms.build_weighted_fed_avg(
    model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.05),
    server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0))
state = process.initialize()
evaluation = build_cnn((28, 28, 1), 10)
evaluation.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                   metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
ready = time.time()
state = process.next(state, datasets).state
done = time.time()
import sys
with open(sys.argv[1], "w") as out:
    json.dump({"import_seconds": imported - created, "startup_seconds": ready - created,
               "total_seconds": done - created}, out)
"""


def _bare(tmp: Path) -> dict:
    """Bare TFF leaves its worker_binary running, holding any pipe it inherited: so no
    pipes, its own session, and the session killed when the script is done."""
    result = tmp / "bare.json"
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(result)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    code = proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if code != 0:
        sys.exit(f"error: the bare TFF script failed (exit {code})")
    return json.loads(result.read_text())


def _first_round_start(store: str, output_dir: Path) -> float:
    """When round 0 started, from MLflow: its metrics' timestamp minus its duration (works
    for any version of the program, with or without `time/startup_seconds`)."""
    from mlflow import MlflowClient

    from federated_research.tracking.mlflow_sink import store_call

    with store_call():
        client = MlflowClient(store)
        run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 f"tags.output_dir = '{output_dir}'")[0]
        (round0,) = [m for m in client.get_metric_history(run.info.run_id,
                                                          "time/round_seconds")
                     if m.step == 0]
    return round0.timestamp / 1000 - round0.value


def _ours(store: str, tmp: Path, n: int) -> dict:
    out_dir = tmp / f"ours{n}"
    start = time.time()
    subprocess.run([sys.executable, "-m", "federated_research.train", "rounds=1",
                    "tracking.progress_bar=false", f"hydra.run.dir={out_dir}"], cwd=ROOT,
                   env={**os.environ, "MLFLOW_TRACKING_URI": store}, check=True,
                   capture_output=True)
    total = time.time() - start
    return {"startup_seconds": _first_round_start(store, out_dir) - start,
            "total_seconds": total}


def _sweep(store: str, tmp: Path) -> list[float]:
    sweep = tmp / "sweep"
    subprocess.run([sys.executable, "-m", "federated_research.train", "-m", "seed=0,1,2",
                    "rounds=1", "tracking.sweep_report=false", f"hydra.sweep.dir={sweep}",
                    "hydra.sweep.subdir=${hydra.job.num}"],
                   cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": store}, check=True,
                   capture_output=True)
    return [json.loads((sweep / str(n) / "summary.json").read_text()).get(
        "time/startup_seconds", float("nan")) for n in range(3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        bare, ours = [], []
        for n in range(args.repeats):
            bare.append(_bare(tmp))
            ours.append(_ours(store, tmp, n))
            print(f"pair {n}: bare start-up {bare[-1]['startup_seconds']:.1f} s "
                  f"(imports {bare[-1]['import_seconds']:.1f} s), ours "
                  f"{ours[-1]['startup_seconds']:.1f} s", flush=True)
        sweep = _sweep(store, tmp)
    result = {key: {"bare": statistics.median(b[key] for b in bare),
                    "ours": statistics.median(o[key] for o in ours)}
              for key in ("startup_seconds", "total_seconds")}
    result["sweep_job_startup_seconds"] = sweep
    print(f"start-up to the first round (median of {args.repeats}): bare TFF "
          f"{result['startup_seconds']['bare']:.1f} s, ours "
          f"{result['startup_seconds']['ours']:.1f} s, difference "
          f"{result['startup_seconds']['ours'] - result['startup_seconds']['bare']:+.1f} s")
    print(f"whole process with one round: bare {result['total_seconds']['bare']:.1f} s, "
          f"ours {result['total_seconds']['ours']:.1f} s")
    print("one basic-launcher sweep of 3 jobs, start-up per job: " +
          ", ".join(f"{s:.1f} s" for s in sweep) + " (imports paid by the first only)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
