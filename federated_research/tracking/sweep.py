"""A Hydra multirun as one family of MLflow runs: a parent run, every job a child.

The launching process opens the parent before any job starts (the `SweepTracking`
callback) and writes its id to `<sweep dir>/mlflow_sweep.json`. A job, wherever the
launcher runs it (the same process, a joblib or Ray worker, a SLURM node that sees
the sweep dir), reads that file and tags its own run `mlflow.parentRunId`, which is
what nests runs in the MLflow UI. A file, not an environment variable, because
only the sweep dir reaches every launcher's jobs. When the sweep ends, the parent
takes FINISHED if every child did and FAILED otherwise, and gets the report.

Run names say what differs between the jobs: the sweep's swept keys (from the
command line and `hydra.sweeper.params`, Optuna's search space included), a group
by its option (`compression`), any other key by a short label and its value
(`lr0.1`, `seed1`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from federated_research.flat import flatten
from federated_research.tracking.mlflow_sink import ensure_experiment, store_call

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"
FAILED_DIR = "failed_jobs"  # one marker file per job that failed before its run existed
SWEEP_ID_TAG = "sweep_id"
PARENT_TAG = "mlflow.parentRunId"
_SHORT = {"learning_rate": "lr", "clients_per_round": "clients", "batch_size": "bs",
          "num_clients": "nclients", "only_digits": "digits", "error_feedback": "",
          "fraction": "top"}


@dataclass
class SweepInfo:
    """What a job needs to join its sweep (the content of `mlflow_sweep.json`)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str
    swept: list[str]
    groups: list[str]
    started: float
    folder: str

    @classmethod
    def read(cls, sweep_dir: Path) -> SweepInfo | None:
        path = Path(sweep_dir) / SWEEP_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    def write(self, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = sweep_dir / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(sweep_dir / SWEEP_FILE)  # a job never reads half a file


def group_choices() -> dict[str, str]:
    """The option chosen in each config group: dataset=mnist, client_optimizer=sgd, ..."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices
    return {group.split("@")[-1]: str(option) for group, option in choices.items()
            if not group.startswith("hydra/") and option is not None
            and not group.startswith("tracking")}


def sweep_dir(hydra_cfg: DictConfig) -> Path:
    """The sweep's folder, absolute: a Ray or SLURM worker may start elsewhere."""
    folder = Path(str(hydra_cfg.sweep.dir))
    return folder if folder.is_absolute() else Path(str(hydra_cfg.runtime.cwd)) / folder


def sweep_values(hydra_cfg: DictConfig) -> dict[str, str]:
    """Each swept key with what was asked for it, as typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {}
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        if override.is_sweep_override():
            values[override.get_key_element().lstrip("+~")] = override.get_value_string()
    params = OmegaConf.select(hydra_cfg, "sweeper.params") or {}
    values.update({str(k): str(v) for k, v in params.items() if str(k) not in values})
    arms: dict[str, list[str]] = {}  # hydra/sweeper=arms: every key an arm sets
    for arm in OmegaConf.select(hydra_cfg, "sweeper.arms") or []:
        for override in str(arm).split():
            key, value = override.split("=", 1)
            arms.setdefault(key.lstrip("+~"), []).append(value)
    values = {**{k: ",".join(v) for k, v in arms.items()},
              **{k: v for k, v in values.items() if k not in arms}}
    return {k: v for k, v in values.items() if not k.startswith("hydra")}


def sweep_params(hydra_cfg: DictConfig) -> dict[str, object]:
    """The parent run's params: each swept key (`sweep.<key>`; a package override's key by
    its package, `distributor@distributor.codec` -> `sweep.distributor.codec`, since MLflow
    refuses `@` in a name), the sweeper's and the launcher's settings."""
    sweeper = OmegaConf.to_container(hydra_cfg.sweeper, resolve=True)
    launcher = OmegaConf.to_container(hydra_cfg.launcher, resolve=True)
    params = {f"sweep.{k.split('@')[-1]}": v for k, v in sweep_values(hydra_cfg).items()}
    params.update(flatten({k: v for k, v in sweeper.items() if k not in ("params", "_target_")},
                          "sweeper."))
    params.update(flatten({k: v for k, v in launcher.items() if k != "_target_"}, "launcher."))
    return params


def swept_keys(hydra_cfg: DictConfig) -> list[str]:
    """Keys that take more than one value: `a=x,y`, `range(3)`, `hydra.sweeper.params`."""
    return list(sweep_values(hydra_cfg))


def key_label(key: str, taken: list[str]) -> str:
    """`lr` for client_optimizer.learning_rate; `client_lr` if server_lr is also in
    `taken`; `server_lr` always for the server's (a bare `lr` reads as the client's)."""
    last = key.split("@")[-1].split(".")[-1]
    short = _SHORT.get(last, last)
    if short == "lr" and key.split("@")[-1].startswith("server_optimizer"):
        return "server_lr"
    if sum(_SHORT.get(k.split(".")[-1], k.split(".")[-1]) == short for k in taken) > 1:
        short = f"{key.split('.')[0].split('_')[0]}_{short}"  # client_lr, server_lr
    return short


def value_text(value: object) -> str:
    """A value as a run name shows it: floats to 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def key_value_label(key: str, value: object, taken: list[str]) -> str:
    """`lr0.1`, `top0.02`; `ef14` for a key whose value names itself, and for a switch
    without a short name the switch's name (`error_feedback`, `no_error_feedback`), since
    a bare `False` says nothing."""
    short = key_label(key, taken)
    if not short and str(value) in ("True", "False", "true", "false"):
        last = key.split("@")[-1].split(".")[-1]
        return last if str(value).lower() == "true" else f"no_{last}"
    return f"{short}{value_text(value)}"


def job_run_name(task_overrides: list[str], swept: list[str], groups: list[str]) -> str | None:
    """`compression-seed1`, `lr0.1-mean`: the job's value of every swept key, in order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    mine = {}
    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        if not override.is_sweep_override():
            mine[override.get_key_element().lstrip("+~")] = override.value()
    parts = []
    for key in swept:
        if key not in mine:
            continue
        value = mine[key]
        if key in groups:  # a config group: its option says it all
            prefix = key.split("@")[1] + "-" if "@" in key else ""
            parts.append(f"{prefix}{value}")
        else:
            parts.append(key_value_label(key, value, swept))
    return "-".join(parts) or None


_open: SweepInfo | None = None  # the parent this process opened and has not yet closed


def start_sweep(config: DictConfig) -> SweepInfo:
    """Open the parent run of a multirun and tell its future jobs where it is."""
    global _open
    from mlflow import MlflowClient

    hydra_cfg = config.hydra
    uri = config.tracking.mlflow_uri
    folder = sweep_dir(hydra_cfg)
    swept = swept_keys(hydra_cfg)
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices)
    groups = [g for g in choices if not g.startswith("hydra/")]
    preset = choices.get("experiment") or choices.get("hparams_search") or "sweep"
    sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    sweeper = OmegaConf.to_container(hydra_cfg.sweeper, resolve=True)
    launcher = OmegaConf.to_container(hydra_cfg.launcher, resolve=True)
    params = sweep_params(hydra_cfg)
    tags = {SWEEP_ID_TAG: sweep_id, "sweep_dir": str(folder), "run_type": "sweep",
            "sweeper": str(sweeper.get("_target_", "")).rsplit(".", 1)[-1],
            "launcher": str(launcher.get("_target_", "")).rsplit(".", 1)[-1],
            "swept_keys": ",".join(swept), "preset": preset,
            "mlflow.source.name": "federated_research.train -m",
            "mlflow.note.content": (f"Sweep over {', '.join(swept) or 'one configuration'}; "
                                    f"jobs in `{folder}`. The report (table and plots) is in "
                                    "this run's artifacts when the sweep ends.")}
    with store_call():
        client = MlflowClient(tracking_uri=uri)
        experiment_id = ensure_experiment(client, config.tracking.experiment, uri)
        run = client.create_run(experiment_id, run_name=f"{preset}-{time.strftime('%H-%M-%S')}",
                                tags=tags)
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        try:
            for i in range(0, len(items), 100):
                client.log_batch(run.info.run_id, params=items[i:i + 100])
        except Exception:
            client.set_terminated(run.info.run_id, "FAILED")  # never left RUNNING
            raise
    info = SweepInfo(uri=uri, experiment_id=experiment_id, parent_run_id=run.info.run_id,
                     sweep_id=sweep_id, swept=swept, groups=groups, started=time.time(),
                     folder=str(folder))
    try:
        shutil.rmtree(folder / FAILED_DIR, ignore_errors=True)  # an earlier sweep's, same dir
        info.write(folder)
    except OSError:
        with store_call():
            client.set_terminated(run.info.run_id, "FAILED")  # never left RUNNING
        raise
    _open = info
    return info


def record_failed_job(folder: Path, job_num: int, error: str) -> None:
    """One file per failed job (parallel jobs never write the same file)."""
    failed = Path(folder) / FAILED_DIR
    failed.mkdir(parents=True, exist_ok=True)
    (failed / f"{job_num}.txt").write_text(error + "\n")


def children(client, info: SweepInfo) -> list:
    return client.search_runs(all_experiments(client),
                              f"tags.`{PARENT_TAG}` = '{info.parent_run_id}'", max_results=10000)


def all_experiments(client) -> list[str]:
    """Every experiment's id: a sweep over presets (`-m experiment=a,b`) whose presets set
    `tracking.experiment` has its children in their experiments, its parent in the default."""
    return [e.experiment_id for e in client.search_experiments()]


def end_sweep(info: SweepInfo | None = None, aborted: str | None = None,
              report: Callable[[SweepInfo], object] | None = None) -> str | None:
    """Close the parent: FINISHED if every child finished, else FAILED (KILLED if
    `aborted` says so); log the sweep's counts and call `report(info)` (the caller's
    report.report_sweep, so that this module never imports the report back).
    Returns the parent's status, or None when this process opened no parent."""
    global _open
    info = info or _open
    if info is None:
        return None
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    _open = None
    with store_call():
        client = MlflowClient(tracking_uri=info.uri)
        runs = children(client, info)
        failed = [r for r in runs if r.info.status != "FINISHED"]
        # jobs that failed before their run existed (e.g. a value out of range)
        early = [p for p in (Path(info.folder) / FAILED_DIR).glob("*.txt")
                 if not any(r.data.tags.get("job_num") == p.stem for r in runs)]
        status = aborted or ("FINISHED" if runs and not failed and not early else "FAILED")
        now = int(time.time() * 1000)
        client.log_batch(info.parent_run_id, metrics=[
            Metric("sweep/jobs", len(runs), now, 0),
            Metric("sweep/failed_jobs", len(failed) + len(early), now, 0),
            Metric("sweep/wall_seconds", time.time() - info.started, now, 0)])
    if report is not None and runs:
        try:
            report(info)
        except Exception as exc:  # noqa: BLE001 - the runs are safe; the report can be redone
            log.warning("could not write the sweep report (%s); run scripts/compare_runs.py "
                        "--parent %s", exc, info.parent_run_id)
    with store_call():
        client.set_terminated(info.parent_run_id, status)
    return status
