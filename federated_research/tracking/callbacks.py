"""Hydra callbacks that run in the launching process, around all of a sweep's jobs."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrepareMlflowStore(Callback):
    """Create the MLflow store and experiment once, before a sweep's jobs start.

    Jobs of a parallel sweep (hydra/launcher=joblib) would otherwise all find a
    new SQLite store empty and run MLflow's schema migrations at the same time,
    which fails ("duplicate column name"). Hydra only warns when a callback
    raises, so an unreachable server is then still reported by each job.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from mlflow import MlflowClient

        from federated_research.tracking.mlflow_sink import check_reachable, ensure_experiment

        HydraConfig.instance().set_config(config)  # not yet set here; ${hydra:...} needs it
        uri = config.tracking.mlflow_uri
        check_reachable(uri)
        ensure_experiment(MlflowClient(tracking_uri=uri), config.tracking.experiment, uri)
