"""Find the run to resume, and refuse one whose config has changed.

A run's output folder holds `run.json`: the MLflow store and run id, the
overrides it was started with, and its resolved config. Re-running into that
folder (the same `hydra.run.dir`, or a sweep's same `hydra.sweep.dir`) or passing
`resume=<folder or MLflow run id>` reopens the same MLflow run and TensorBoard
folder and goes on from the newest checkpoint. `resume=` alone is enough: the
run's own overrides are put back before Hydra composes, and any typed after
them win. Only keys that cannot change what is trained may differ (`rounds` may
grow, to extend a run); anything else is refused in one line, because the
resumed rounds would not be those of the run they are logged into.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from federated_research.errors import ConfigError
from federated_research.flat import flat_config
from federated_research.tracking.mlflow_sink import check_reachable, store_call

RUN_FILE = "run.json"
# Keys a resumed run may change: none of them changes the rounds it trains.
CHANGEABLE = ("resume", "rounds", "checkpoint_every", "checkpoint_keep", "on_nonfinite",
              "dataset.cache_dir", "tracking.progress_bar", "tracking.delivery_timeout",
              "tracking.save_model", "tracking.sweep_report", "tracking.run_name",
              "runtime.", "runtime=")  # where it runs, not what it trains
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class RunRecord:
    """What `run.json` holds about a run's MLflow run and config."""

    mlflow_uri: str
    run_id: str
    experiment: str
    overrides: list[str]
    config: dict[str, object]

    def write(self, output_dir: Path) -> None:
        path = Path(output_dir) / RUN_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)  # atomic: never half a record

    @classmethod
    def read(cls, output_dir: Path) -> RunRecord | None:
        path = Path(output_dir) / RUN_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"resume={output_dir}", f"{path} is not a run record ({err})",
                              "start a fresh run in a new output folder") from None


def check_same_config(record: RunRecord, cfg: DictConfig, folder: Path) -> None:
    """Refuse to resume when a key that shapes training differs from the run's own."""
    now = flat_config(cfg)
    changed = [key for key in sorted(set(now) | set(record.config))
               if not key.startswith(CHANGEABLE) and now.get(key) != record.config.get(key)]
    if changed:
        key = changed[0]
        was, new = record.config.get(key, "<unset>"), now.get(key, "<unset>")
        more = f" (and {len(changed) - 1} more key(s): {', '.join(changed[1:4])})" \
            if len(changed) > 1 else ""
        raise ConfigError(f"{key}={new}", f"the run in {folder} was trained with "
                          f"{key}={was}{more}; resuming must train the same rounds",
                          f"pass {key}={was} (or just resume={folder}), or start a new run in "
                          "another output folder")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resume_argv(argv: list[str], cwd: Path) -> list[str]:
    """Expand `resume=<folder or run id>` into the run's overrides and its output folder."""
    wanted = [a for a in argv if _key(a) == "resume"]
    if not wanted:
        return argv
    value = wanted[-1].split("=", 1)[1]
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError(f"resume={value}", "resume= reopens one run, not a sweep",
                          "re-run the sweep with hydra.sweep.dir=<its folder>: each of its "
                          "jobs resumes")
    folder = find_run_folder(value, argv, cwd)
    record = RunRecord.read(folder)
    flags = [a for a in argv if a.startswith("-") or "=" not in a]
    typed = [a for a in argv if a not in flags and _key(a) not in ("hydra.run.dir", "resume")]
    kept = [o for o in record.overrides
            if _key(o) not in {_key(a) for a in typed} | {"resume"}]
    return [*flags, *kept, *typed, f"resume={folder}", f"hydra.run.dir={folder}"]


def find_run_folder(value: str, argv: list[str], cwd: Path) -> Path:
    """The output folder `resume=` names: a folder with run.json, or an MLflow run's."""
    folder = Path(value).expanduser()
    if not folder.is_absolute():
        folder = cwd / folder
    if (folder / RUN_FILE).is_file():
        return folder.resolve()
    if folder.is_dir():
        raise ConfigError(f"resume={value}", f"{folder} holds no {RUN_FILE}, so no run of "
                          "this program started there",
                          "pass the output folder a run printed (outputs/<date>/<time>) or "
                          "its MLflow run id")
    if not _RUN_ID.match(value):
        raise ConfigError(f"resume={value}", "no such folder, and not an MLflow run id",
                          "pass the output folder a run printed (outputs/<date>/<time>) or "
                          "its 32-character MLflow run id")
    uri = next((a.split("=", 1)[1] for a in argv if _key(a) == "tracking.mlflow_uri"),
               os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{cwd}/mlflow.db"))
    return _folder_of_mlflow_run(value, uri)


def _folder_of_mlflow_run(run_id: str, uri: str) -> Path:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_reachable(uri)
    try:
        with store_call():
            run = MlflowClient(uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"resume={run_id}", f"no MLflow run with that id in {uri}",
                          "pass tracking.mlflow_uri=<the store it was logged to>, or the "
                          "run's output folder") from None
    folder = run.data.tags.get("output_dir")
    if not folder or not (Path(folder) / RUN_FILE).is_file():
        raise ConfigError(f"resume={run_id}", f"its output folder ({folder or 'not recorded'}) "
                          "is not on this machine", "resume on the machine that ran it, or "
                          "pass resume=<a copy of its output folder>")
    return Path(folder)
