"""One MLflow run per Hydra job: config as params, group choices as tags, metrics per round."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from federated_research.errors import ConfigError
from federated_research.signals import deferred
from federated_research.tracking.journal import Entry, Logged, unlogged

log = logging.getLogger(__name__)

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
        db = Path(parsed.path[1:])  # sqlite:///relative.db, sqlite:////absolute.db
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"{_URI_KEY}={uri}", f"cannot create the store's folder "
                              f"{db.parent} ({err.strerror})", "point it at a folder you can "
                              "write, e.g. MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db") from None
    elif not _mlflow_tracks_to(parsed.scheme):
        raise ConfigError(f"{_URI_KEY}={uri}", f"MLflow cannot keep runs at a {parsed.scheme}:// "
                          "URI", "use sqlite:///<path>/mlflow.db (the default), an MLflow "
                          "server's http(s):// address, or a database (postgresql://, mysql://)")


# The schemes MLflow 3.5 ships a tracking store for (a plugin may add more: asked below).
_BUILT_IN_SCHEMES = {"", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql",
                     "databricks", "databricks-uc", "uc"}


def _mlflow_tracks_to(scheme: str) -> bool:
    """Whether MLflow has a tracking store for this URI scheme (`postgresql+psycopg2` too)."""
    engine = scheme.split("+", 1)[0]
    if engine in _BUILT_IN_SCHEMES:
        return True
    if len(scheme) == 1:  # a Windows drive letter: a plain path
        return True
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return engine in _tracking_store_registry._registry  # built-ins and plugins' entry points


@contextlib.contextmanager
def store_call():
    """One conversation with MLflow's store: whole, and quiet.

    Whole: SIGINT and SIGTERM wait until it is done (signals.deferred). A signal
    raised inside SQLAlchemy's commit leaves SQLite's write lock with a connection
    nobody closes, and every later call of the process, the one that marks the run
    KILLED included, then waits on "database is locked" forever.

    Quiet: creating or checking a store runs alembic, whose `env.py` calls
    `logging.config.fileConfig`: that replaces the root logger's handlers (Hydra's
    console and the job's log file), sets root to WARN and alembic to INFO, so a new
    store prints a wall of migration lines. Inside this context `fileConfig` does
    nothing and INFO lines are held back. Every MLflow call goes through it (also
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
        with deferred():
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


@store_call()
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


@dataclass(frozen=True)
class MlflowRun:
    """The run a sink logs to: a new one (name, params, tags, artifacts) or, with
    `resume_run_id`, an existing one, given the journal of what was logged to it
    (set RUNNING again when `reopen`)."""

    experiment: str
    name: str = ""
    params: Mapping[str, object] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    artifact_dirs: Mapping[str, Path] = field(default_factory=dict)
    artifact_dicts: Mapping[str, dict] = field(default_factory=dict)
    resume_run_id: str | None = None
    journal: Sequence[Entry] = ()
    reopen: bool = True


@dataclass(frozen=True)
class Delivery:
    """How long to wait for a store that stopped answering (`timeout` at the end,
    a retry every `retry_seconds`), and the command that delivers the rest later."""

    timeout: float = 60.0
    sync_hint: str = ""
    retry_seconds: float = 10.0


class MlflowSink:
    """One MLflow run: created (or, to resume, reopened) at construction; `close` sets
    FINISHED, FAILED or KILLED.

    Metrics are sent in order from a queue. When the store does not answer (a
    server that went away), training goes on: the batches wait in the queue, a
    retry is made at most every `retry_seconds`, and they are delivered when the
    server is back. `close` waits up to `delivery_timeout` seconds for that; what
    is still undelivered is then named, with the command that sends it from the
    run's journal (tracking/journal.py).
    """

    @store_call()
    def __init__(self, uri: str, run: MlflowRun, delivery: Delivery | None = None) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        delivery = delivery or Delivery()

        check_reachable(uri)
        if urlparse(uri).scheme in ("http", "https"):  # fail fast, the queue retries
            for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                                ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
                                ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")):
                os.environ.setdefault(name, value)
            # One line of ours says the server is gone; not urllib3's line per retry.
            logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.delivery_timeout = uri, delivery.timeout
        self.sync_hint, self.retry_seconds = delivery.sync_hint, delivery.retry_seconds
        self._pending: deque[tuple[int, list]] = deque()  # (step, [Metric]) in order
        self._files: deque[tuple[str, str]] = deque()  # (path, artifact_path) in order
        self._retry_at = 0.0
        self._down: str | None = None  # why the store stopped answering
        self._logged: Logged = set()
        run_tags = [RunTag(k, str(v)) for k, v in run.tags.items()]
        if run.resume_run_id is not None:
            self.run_id = run.resume_run_id
            self._reopen(run_tags, run.journal, run.reopen)
            return
        experiment_id = ensure_experiment(self.client, run.experiment, uri)
        self.run_id = self.client.create_run(
            experiment_id, run_name=run.name, tags={k: str(v) for k, v in run.tags.items()},
        ).info.run_id
        items = [Param(k, str(v)) for k, v in run.params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        source = RunTag("mlflow.source.name", "federated_research.train")
        self.client.log_batch(self.run_id, tags=[source])
        for artifact_path, folder in dict(run.artifact_dirs).items():
            if Path(folder).is_dir():
                self.client.log_artifacts(self.run_id, str(folder), artifact_path)
        for name, content in dict(run.artifact_dicts).items():
            self.client.log_dict(self.run_id, content, name)

    def _reopen(self, tags: list, journal: Sequence[Entry], reopen: bool) -> None:
        """Queue what the journal has and the store lacks; set the run RUNNING again
        (`reopen`, to resume it) with the tags of this launch and one more `resumes`."""
        from mlflow.entities import RunTag

        run = self.client.get_run(self.run_id)
        if reopen:
            self.client.update_run(self.run_id, status="RUNNING")
            resumes = int(run.data.tags.get("resumes", "0")) + 1
            self.client.log_batch(self.run_id, tags=[*tags, RunTag("resumes", str(resumes))])
        for key in run.data.metrics:
            self._logged.update((key, m.step) for m in self.client.get_metric_history(
                self.run_id, key))
        for step, metrics, logged_ms in journal:
            self._queue(metrics, step, timestamp=logged_ms, remember=True)

    def _queue(self, metrics: Mapping[str, float], step: int, timestamp: int | None,
               remember: bool = False) -> None:
        """Queue what the store lacks; `remember` what an earlier launch logged (this
        launch logs each pair once, so its own need not be kept)."""
        from mlflow.entities import Metric

        new = unlogged(metrics, step, self._logged)
        if new:
            now = timestamp or int(time.time() * 1000)
            self._pending.append((step, [Metric(k, float(v), now, step) for k, v in new.items()]))
            if remember:
                self._logged.update((key, step) for key in new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._queue(metrics, step, timestamp=None)
        self._deliver()

    @store_call()
    def _deliver(self, force: bool = False) -> bool:
        """Send the queue in order, metrics then files; False (and a retry later) when
        the store does not answer."""
        if self._down is not None and not force and time.monotonic() < self._retry_at:
            return False
        try:
            self._send_metrics()
            self._send_files()
        except Exception as err:  # noqa: BLE001 - sorted out by _unreachable
            if not _unreachable(err):
                if self._files and not self._pending:
                    self._files.popleft()  # refused, not unreachable: never retried
                raise
            if self._pending and self._down is None:
                log.warning("MLflow at %s stopped answering at round %d (%s); training "
                            "goes on, metrics are kept and sent when it is back",
                            self.uri, self._pending[0][0], _first_line(err))
            elif self._down is None:
                log.warning("MLflow did not receive %s (%s); it is in the output folder, "
                            "and is sent when MLflow is back", self._files[0][0],
                            _first_line(err))
            self._down = _first_line(err)
            self._retry_at = time.monotonic() + self.retry_seconds
            return False
        if self._down is not None:
            log.warning("MLflow at %s is back: everything queued is delivered", self.uri)
            self._down = None
        return True

    def _send_metrics(self) -> None:
        while self._pending:
            _, batch = self._pending[0]
            for i in range(0, len(batch), 1000):  # MLflow's limit per batch
                self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
            self._pending.popleft()

    def _send_files(self) -> None:
        while self._files:
            path, artifact_path = self._files[0]
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, path, artifact_path)
            else:  # gone from the output folder: nothing to send
                log.warning("%s no longer exists; MLflow does not get it", path)
            self._files.popleft()

    def flush(self) -> bool:
        """Try to deliver the queue now; whether it is empty."""
        return self._deliver(force=True)

    def undelivered(self) -> str:
        """The metrics the store has not received, e.g. '46 values of rounds 12-19'."""
        steps = [step for step, _ in self._pending]
        values = sum(len(batch) for _, batch in self._pending)
        return f"{values} values of rounds {min(steps)}-{max(steps)}" if steps else ""

    def _undelivered_files(self) -> str:
        return ", ".join(Path(path).name for path, _ in self._files)

    def log_file(self, path, artifact_path: str) -> None:
        """Queue a file of the run (it waits, like metrics, while the store is away)."""
        self._files.append((str(path), artifact_path))
        self._deliver()

    def close(self, status: str) -> None:
        deadline = time.monotonic() + self.delivery_timeout
        ended = False
        try:
            if (self._pending or self._files) and self._down is not None:
                log.warning("waiting up to %.0f s for MLflow at %s to deliver %s",
                            self.delivery_timeout, self.uri,
                            " and ".join(filter(None, [self.undelivered(),
                                                       self._undelivered_files()])))
            while not self._deliver(force=True) and time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        finally:  # the run ends in the store whatever happened to its queue
            try:
                with store_call():
                    self.client.set_terminated(self.run_id, status)
                ended = True
            except Exception as err:  # noqa: BLE001
                if not _unreachable(err):
                    raise
                self._down = self._down or _first_line(err)
        if self._down is not None:
            files = self._undelivered_files()
            missing = [m for m in (self.undelivered(), files) if m]
            if not ended:
                missing.append(f"the run's end ({status})")
            log.error("MLflow at %s did not receive %s: %s. Everything is in the run's "
                      "metrics.jsonl; send it with: %s%s", self.uri, " nor ".join(missing),
                      self._down, self.sync_hint,
                      f" ({files} stayed in the output folder)" if files else "")


def _unreachable(err: BaseException) -> bool:
    """Whether an MLflow error means the store did not answer (retry later) rather than
    that it refused the request (a bug or a deleted run: raise)."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code not in {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST",
                                      "PERMISSION_DENIED", "INVALID_STATE", "BAD_REQUEST"}
    return isinstance(err, OSError | ConnectionError) or "requests" in type(err).__module__


def _first_line(err: BaseException) -> str:
    """The reason in a few words: 'Connection refused' rather than urllib3's paragraph."""
    text = str(err).strip()
    errno_reason = re.findall(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno_reason:
        return errno_reason[-1].strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


def mlflow_ui_hint(uri: str) -> str:
    """The command that shows this store's runs."""
    if urlparse(uri).scheme in ("http", "https"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"

