"""Open the sinks of one Hydra job: MLflow run, TensorBoard dir, progress bar."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from federated_research.tracking import Tracker
from federated_research.tracking.console import ProgressBar
from federated_research.tracking.mlflow_sink import MlflowSink
from federated_research.tracking.tensorboard_sink import TensorBoardSink


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """{'client': {'epochs': 1}} -> {'client.epochs': 1}: MLflow params are flat."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def group_choices() -> dict[str, str]:
    """The option chosen in each config group: dataset=mnist, client_optimizer=sgd, ..."""
    choices = HydraConfig.get().runtime.choices
    return {group.split("@")[-1]: str(option) for group, option in choices.items()
            if not group.startswith("hydra/") and option is not None
            and not group.startswith("tracking")}


def run_name(cfg: DictConfig, choices: dict[str, str]) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    name = "-".join(choices[g] for g in ("dataset", "model", "aggregator") if g in choices)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        name += f"-{hydra_cfg.job.num}"
    return name


def open_tracker(cfg: DictConfig, output_dir: Path, extra_artifacts: dict[str, dict]) -> Tracker:
    """All sinks of the run; MLflow last, so no run is left open if another sink fails."""
    sinks = []
    if cfg.tracking.tensorboard:
        sinks.append(TensorBoardSink(output_dir / "tensorboard"))
    if cfg.tracking.progress_bar:
        sinks.append(ProgressBar(max(cfg.rounds, 1)))
    choices = group_choices()
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    try:
        sinks.append(MlflowSink(
            uri=cfg.tracking.mlflow_uri, experiment=cfg.tracking.experiment,
            run_name=run_name(cfg, choices), params=flatten(resolved),
            tags={**choices, "seed": str(cfg.seed), "output_dir": str(output_dir)},
            artifact_dirs={".hydra": output_dir / ".hydra"}, artifact_dicts=extra_artifacts))
    except BaseException:
        Tracker(sinks).close("FAILED")
        raise
    return Tracker(sinks)
