#!/usr/bin/env python3
"""Figures of a federated image dataset: examples per client, labels per client, and
each client's mean image per label (as in TFF's image-classification tutorial).

    .venv/bin/python scripts/explore_data.py                      # the embedded MNIST
    .venv/bin/python scripts/explore_data.py dataset=mnist dataset.partition=shards
    .venv/bin/python scripts/explore_data.py dataset=emnist dataset.only_digits=false \
        dataset.cache_dir=~/.tff --out figures/emnist62 --mlflow-experiment data_exploration

Positional arguments are the training command's overrides (dataset=..., seed=...),
so the figures show exactly the clients a run with them trains on. PNG files go to
`--out`; `--mlflow-run ID` adds them to a run's artifacts (exploration/), and
`--mlflow-experiment NAME` logs them as a new run of that experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="dataset=..., dataset.<key>=..., seed=...")
    parser.add_argument("--out", type=Path, default=Path("exploration"),
                        help="folder for the PNG files (default: ./exploration)")
    parser.add_argument("--clients", type=int, default=6,
                        help="clients shown one by one (label histograms, mean images)")
    parser.add_argument("--max-clients", type=int, default=None,
                        help="count examples of the first N clients only (default: all)")
    parser.add_argument("--mlflow-run", help="an MLflow run id to add the figures to")
    parser.add_argument("--mlflow-experiment", help="log the figures as a new run of this "
                        "MLflow experiment")
    parser.add_argument("--mlflow-uri", default=os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}"),
        help="tracking store (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    args = parser.parse_args()

    from federated_research.errors import ConfigError
    from federated_research.exploration import save_figures

    try:
        if args.clients < 1 or (args.max_clients is not None and args.max_clients < 1):
            raise ConfigError("--clients/--max-clients", "must be at least 1", "pass e.g. 6")
        summary, title = _summarize(args.overrides, args.max_clients, args.clients)
        paths = save_figures(summary, args.out, title)
        stats = summary.describe()
        print(json.dumps(stats, indent=2))
        for path in paths:
            print(f"wrote {path}")
        if args.mlflow_run or args.mlflow_experiment:
            print(_log_to_mlflow(args, paths, stats, title))
    except Exception as exc:  # one line for what the user typed, a trace for our bugs
        from federated_research.errors import exit_for

        answer = exit_for(exc)  # builders' errors arrive wrapped by Hydra
        if answer is None:
            raise
        print(answer[0], file=sys.stderr)
        return 2
    return 0


def _summarize(overrides: list[str], max_clients: int | None, clients: int):
    from hydra import compose, initialize_config_dir

    from federated_research import runtime
    from federated_research.config import register_schemas
    from federated_research.data import build_dataset
    from federated_research.exploration import summarize
    from federated_research.train import CONF_DIR

    runtime.install_default_context(runtime.WorkerService())  # TFF's own would warn at exit
    register_schemas()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    data = build_dataset(cfg.dataset, cfg.seed)
    choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")), "mnist")
    title = choice + ("-62" if cfg.dataset.get("only_digits") is False else "")
    return summarize(data, max_clients, clients), title


def _log_to_mlflow(args, paths: list[Path], stats: dict, title: str) -> str:
    from mlflow import MlflowClient

    from federated_research.tracking.mlflow_sink import (
        check_reachable,
        ensure_experiment,
        store_call,
    )

    check_reachable(args.mlflow_uri)
    with store_call():  # no store set-up chatter
        client = MlflowClient(args.mlflow_uri)
        if args.mlflow_run:
            from mlflow.exceptions import MlflowException

            from federated_research.errors import ConfigError

            try:
                run_id = client.get_run(args.mlflow_run).info.run_id
            except MlflowException:
                raise ConfigError(f"--mlflow-run={args.mlflow_run}", f"no such run in "
                                  f"{args.mlflow_uri}", "pass the id of a run in that store "
                                  "(mlflow ui shows it), or --mlflow-uri") from None
        else:
            experiment = ensure_experiment(client, args.mlflow_experiment, args.mlflow_uri)
            run_id = client.create_run(experiment, run_name=f"explore-{title}",
                                       tags={"dataset": title}).info.run_id
            for key, value in stats.items():
                client.log_metric(run_id, f"data/{key}", value)
            client.set_terminated(run_id)
        for path in paths:
            client.log_artifact(run_id, str(path), "exploration")
    return f"logged {len(paths)} figures to MLflow run {run_id} (exploration/)"


if __name__ == "__main__":
    sys.exit(main())
