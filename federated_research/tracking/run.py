"""Open the sinks of one Hydra job: MLflow run, TensorBoard dir, progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from federated_research.flat import flat_config, flatten
from federated_research.resume import RunRecord
from federated_research.tracking import Tracker
from federated_research.tracking.console import ProgressBar
from federated_research.tracking.hparams import run_hparams, write_session
from federated_research.tracking.journal import JOURNAL_FILE, MetricJournal, read_journal
from federated_research.tracking.mlflow_sink import Delivery, MlflowRun, MlflowSink
from federated_research.tracking.sweep import (
    PARENT_TAG,
    SWEEP_ID_TAG,
    SweepInfo,
    group_choices,
    job_run_name,
    sweep_dir,
)
from federated_research.tracking.tensorboard_sink import TensorBoardSink


def run_name(cfg: DictConfig, choices: dict[str, str], sweep: SweepInfo | None) -> str:
    """`tracking.run_name`; in a sweep, what differs between its jobs; else the parts
    (and the algorithm, when it is not FedAvg)."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    hydra_cfg = HydraConfig.get()
    if sweep is not None:
        named = job_run_name(list(hydra_cfg.overrides.task), sweep.swept, sweep.groups)
        if named:
            return named
    name = "-".join(choices[g] for g in ("dataset", "model", "aggregator") if g in choices)
    if choices.get("algorithm", "fedavg") != "fedavg":  # e.g. mnist-cnn-mean-centralized
        name += f"-{choices['algorithm']}"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        name += f"-{hydra_cfg.job.num}"
    return name


def current_sweep() -> SweepInfo | None:
    """The sweep this job belongs to (None for a single run, or if its parent is gone)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return SweepInfo.read(sweep_dir(hydra_cfg))


def show_progress_bar(cfg: DictConfig) -> bool:
    """`tracking.progress_bar`; unset: a bar for a single run on a terminal, none in a
    sweep (each finished job prints one line instead)."""
    if cfg.tracking.progress_bar is not None:
        return bool(cfg.tracking.progress_bar)
    return HydraConfig.get().mode != RunMode.MULTIRUN and sys.stderr.isatty()


def open_tracker(cfg: DictConfig, output_dir: Path, extra_artifacts: dict[str, dict],
                 record: RunRecord | None = None, start_round: int = 0) -> Tracker:
    """All sinks of the run; MLflow last, so no run is left open if another sink fails.

    The journal (metrics.jsonl) comes first, so every value is on disk before any
    other sink sees it. With `record` (a run being resumed) the same MLflow run
    and TensorBoard folder are reopened; on a new run, run.json is written.
    """
    sweep = current_sweep()
    choices = group_choices()
    name = run_name(cfg, choices, sweep)
    if record is None:  # a stale journal of a run that never got its MLflow run
        (output_dir / JOURNAL_FILE).unlink(missing_ok=True)
    journal = MetricJournal(output_dir)
    sinks: list = [journal]
    if cfg.tracking.tensorboard:
        sinks.append(TensorBoardSink(output_dir / "tensorboard", resume=record is not None))
        if record is None:
            write_session(output_dir / "tensorboard", run_hparams(
                cfg, choices, sweep.swept if sweep else []), trial_id=name)
    if show_progress_bar(cfg):
        sinks.append(ProgressBar(max(cfg.rounds, 1), initial=start_round))
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tags = {**choices, "seed": str(cfg.seed), "output_dir": str(output_dir)}
    if sweep is not None:
        tags.update({PARENT_TAG: sweep.parent_run_id, SWEEP_ID_TAG: sweep.sweep_id,
                     "job_num": str(HydraConfig.get().job.num)})
    try:
        mlflow = MlflowSink(cfg.tracking.mlflow_uri, MlflowRun(
            experiment=cfg.tracking.experiment, name=name, params=flatten(resolved), tags=tags,
            artifact_dirs={".hydra": output_dir / ".hydra"}, artifact_dicts=extra_artifacts,
            resume_run_id=record.run_id if record else None,
            journal=read_journal(journal.path)[0] if record else ()), Delivery(
            timeout=cfg.tracking.delivery_timeout,
            sync_hint=f"python -m federated_research.sync {output_dir}"))
    except BaseException:
        Tracker(sinks).close("FAILED")
        raise
    sinks.append(mlflow)
    if record is None:
        overrides = [o for o in HydraConfig.get().overrides.task
                     if not o.startswith(("resume=", "hydra."))]
        RunRecord(cfg.tracking.mlflow_uri, mlflow.run_id, cfg.tracking.experiment, overrides,
                  flat_config(cfg)).write(output_dir)
    return Tracker(sinks, run_name=name)
