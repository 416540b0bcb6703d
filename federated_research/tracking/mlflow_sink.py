"""One MLflow run per Hydra job: config as params, group choices as tags, metrics per round."""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from federated_research.errors import ConfigError

_URI_KEY = "tracking.mlflow_uri"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a tracking server does not answer.

    MLflow's client would otherwise retry with back-off for minutes, after the
    data, model and TFF process were built. A SQLite store just needs its folder.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(f"{_URI_KEY}={uri}", f"no MLflow server answers there ({reason})",
                              "start the server, or unset MLFLOW_TRACKING_URI to use the "
                              "local SQLite store") from None
    elif parsed.scheme == "sqlite":
        db = Path(parsed.path[1:] if parsed.path.startswith("//") else parsed.path)
        db.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def logging_preserved():
    """Keep MLflow's SQLite store from taking over the program's logging.

    Creating or checking a store runs alembic, whose `env.py` calls
    `logging.config.fileConfig`: that replaces the root logger's handlers (Hydra's
    console and the job's log file), sets root to WARN and alembic to INFO, so a new
    store prints a wall of migration lines. Inside this context `fileConfig` does
    nothing and INFO lines are held back; every MLflow call goes through it (also
    as a decorator).
    """
    import logging.config

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.INFO))  # migration scripts force INFO on their loggers
    quiet = [logging.getLogger(name) for name in ("alembic", "mlflow.store.db.utils")]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    file_config = logging.config.fileConfig
    logging.config.fileConfig = lambda *args, **kwargs: None
    try:
        yield
    finally:
        logging.config.fileConfig = file_config
        logging.disable(disabled)
        root.handlers[:] = handlers
        root.setLevel(level)


def _artifact_location(uri: str) -> str | None:
    """Keep a SQLite store's artifacts beside its database, not in the current folder."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None  # a server decides for itself
    db = Path(parsed.path[1:] if parsed.path.startswith("//") else parsed.path)
    return (db.parent / "mlartifacts").resolve().as_uri()


@logging_preserved()
def ensure_experiment(client, name: str, uri: str) -> str:
    """The id of experiment `name`, created (artifacts beside a SQLite store) if missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri))
    except Exception:  # another job of a parallel sweep created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class MlflowSink:
    """Creates the run at construction; `close` sets FINISHED, FAILED or KILLED."""

    @logging_preserved()
    def __init__(self, uri: str, experiment: str, run_name: str, params: Mapping[str, object],
                 tags: Mapping[str, str], artifact_dirs: Mapping[str, Path] = (),
                 artifact_dicts: Mapping[str, dict] = ()) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        check_reachable(uri)
        self.client = MlflowClient(tracking_uri=uri)
        experiment_id = ensure_experiment(self.client, experiment, uri)
        run = self.client.create_run(experiment_id, run_name=run_name,
                                     tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        source = RunTag("mlflow.source.name", "federated_research.train")
        self.client.log_batch(self.run_id, tags=[source])
        for artifact_path, folder in dict(artifact_dirs).items():
            if Path(folder).is_dir():
                self.client.log_artifacts(self.run_id, str(folder), artifact_path)
        for name, content in dict(artifact_dicts).items():
            self.client.log_dict(self.run_id, content, name)

    @logging_preserved()
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    @logging_preserved()
    def log_file(self, path, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @logging_preserved()
    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def mlflow_ui_hint(uri: str) -> str:
    """The command that shows this store's runs."""
    if urlparse(uri).scheme in ("http", "https"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"

