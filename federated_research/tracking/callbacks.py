"""Hydra callbacks that run in the launching process, around all of a sweep's jobs."""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from federated_research.errors import ConfigError
from federated_research.report import report_sweep
from federated_research.tracking.hparams import run_hparams, write_experiment
from federated_research.tracking.mlflow_sink import check_reachable, mlflow_ui_hint
from federated_research.tracking.sweep import (
    end_sweep,
    group_choices,
    record_failed_job,
    start_sweep,
    sweep_dir,
)

log = logging.getLogger("federated_research")


class SweepTracking(Callback):
    """A multirun becomes one family of runs: store, parent run, HParams table, report.

    Before the first job: the MLflow store and experiment are created once (jobs of
    a parallel sweep would otherwise all find a new SQLite store empty and run its
    schema migrations at the same time, which fails), the parent run is opened, and
    the TensorBoard HParams table of the sweep is defined at its root (an unreachable
    server stops the sweep there, in one line). After the last job: the parent takes
    its children's status and the report.
    A sweep that stops early is closed by `train.main` (`sweep.end_sweep`).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # not yet set here; ${hydra:...} needs it
        try:
            check_reachable(config.tracking.mlflow_uri)
        except ConfigError as exc:
            # Hydra turns a callback's exception into a warning and runs every job into
            # the same wall: stop the sweep here, in one line, before any job starts.
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        info = start_sweep(config)
        if config.tracking.tensorboard:
            names = list(run_hparams(config, group_choices(), info.swept))
            swept = [k.split("@")[-1] for k in info.swept]  # TensorBoard shows the first ones
            write_experiment(sweep_dir(config.hydra),
                             [n for n in swept if n in names] + [n for n in names
                                                                 if n not in swept])

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Runs where the job ran: a job that failed before its MLflow run existed
        still counts against the sweep (a marker file in the sweep dir)."""
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if (config.hydra.mode == RunMode.MULTIRUN
                and getattr(job_return, "status", None) == JobStatus.FAILED):
            record_failed_job(sweep_dir(config.hydra), config.hydra.job.num,
                              str(getattr(job_return, "_return_value", "")))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:

        status = end_sweep(report=report_sweep if config.tracking.sweep_report else None)
        if status is None:
            return
        folder = sweep_dir(config.hydra)
        log.info("sweep %s; runs nested under its parent run: %s; curves and HParams: "
                 "tensorboard --logdir %s; report: %s", status,
                 mlflow_ui_hint(config.tracking.mlflow_uri), folder, folder / "report")
