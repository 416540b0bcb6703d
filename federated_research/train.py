"""`python -m federated_research.train [overrides]`: one FedAvg run, tracked.

Builds every part from the composed config, runs the round loop, and reports
to MLflow, TensorBoard and the console. Errors in what the user typed come out
as one line (`error: <key>=<value>: <problem>. Fix: <what to type>`), exit 2.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from federated_research.config import register_schemas, validate
from federated_research.errors import ConfigError, DivergedError, one_line, write_error

log = logging.getLogger("federated_research")
register_schemas()


_process_ready = False  # True once a job of this process got as far as its first round


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one job of the composed config; returns the final metrics."""
    job_start = time.time()
    validate(cfg)  # before the heavy imports: bad input fails in a second
    from federated_research.tracking.mlflow_sink import check_reachable, mlflow_ui_hint

    check_reachable(cfg.tracking.mlflow_uri)
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    from federated_research.resume import RunRecord, check_same_config

    record = RunRecord.read(output_dir)  # a run started in this folder before: resume it
    if record is not None:
        check_same_config(record, cfg, output_dir)
    from federated_research.runtime import TffRuntime  # imports TensorFlow

    # TFF logs each model trace, TensorFlow each checkpoint's "Assets written to".
    for noisy in ("absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Start-up: from the process's start for its first job (imports included), from
    # the job's start for later jobs of the same process (a sweep's basic launcher).
    started = job_start if _process_ready else _process_start_time()
    with TffRuntime(output_dir / "tff_worker.log"):
        run, name = _build_and_run(cfg, output_dir, started, record)
    summary = {**run.last, "rounds": run.next_round,
               "mean_round_seconds": (sum(run.round_seconds) / len(run.round_seconds)
                                      if run.round_seconds else math.nan),
               "time/startup_seconds": run.startup_seconds,
               "job_seconds": time.time() - job_start}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accuracy = summary.get("eval/accuracy", math.nan)
    up = summary.get("comm/aggregated_bits_cumulative", 0)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # one line per job; the sweep says where to look
        log.info("job %d %s: eval accuracy %.4f, %s up, %s down, %.0f s", hydra_cfg.job.num,
                 name, accuracy, _bits(up), _bits(summary.get("comm/broadcasted_bits_cumulative",
                                                              0)), summary["job_seconds"])
    else:
        log.info("done: eval accuracy %.4f, %d bits uploaded, %.2f s/round; outputs in %s; %s",
                 accuracy, up, summary["mean_round_seconds"], output_dir,
                 mlflow_ui_hint(cfg.tracking.mlflow_uri))
    return summary


def _bits(bits: float) -> str:
    """2.47 Gibit, 16.0 Mibit, 3.1 kibit: 2^10 steps, as the README counts."""
    for unit, size in (("Gibit", 2**30), ("Mibit", 2**20), ("kibit", 2**10)):
        if bits >= size:
            return f"{bits / size:.4g} {unit}"
    return f"{bits:.0f} bit"


def _process_start_time() -> float:
    import psutil

    return psutil.Process().create_time()


def _build_and_run(cfg: DictConfig, output_dir: Path, started: float, record):
    """Build every part from the config, then run the rounds inside an MLflow run
    (the run's own, reopened, when `record` says this folder's run is resumed)."""
    global _process_ready
    from federated_research.build import build_run_parts
    from federated_research.checkpoint import Checkpoints
    from federated_research.evaluation import CentralEvaluator
    from federated_research.loop import Diverged, RunState, run_rounds
    from federated_research.models import save_keras
    from federated_research.models.keras_file import MODEL_FILE
    from federated_research.signals import Terminated
    from federated_research.tracking.run import open_tracker

    parts = build_run_parts(cfg)
    checkpoints = Checkpoints(output_dir, cfg.checkpoint_every, cfg.checkpoint_keep, cfg.seed)
    run = (checkpoints.resume(parts.initial_state, cfg.rounds) if record is not None
           else RunState(parts.initial_state))
    evaluate = CentralEvaluator(parts.model, parts.data.test, cfg.eval_batch_size)
    fed_evaluate = None
    if cfg.fed_eval.every > 0:
        from federated_research.fed_evaluation import FederatedEvaluator

        fed_evaluate = FederatedEvaluator(parts.model, parts.data.test_clients,
                                          cfg.fed_eval.clients, cfg.eval_batch_size, cfg.seed)
    weights = parts.algorithm.process.get_model_weights(parts.initial_state)
    comm = {**parts.comm.describe(), "model_parameters": int(sum(
        w.size for w in [*weights.trainable, *weights.non_trainable]))}
    with open_tracker(cfg, output_dir, {"comm_bits.json": comm}, record,
                      start_round=run.next_round) as tracker:
        _process_ready = True
        if record is None:
            run.startup_seconds = time.time() - started
            tracker.log_metrics({"time/startup_seconds": run.startup_seconds}, step=0)
        try:
            run = run_rounds(parts.algorithm, run, parts.data, parts.spec, parts.comm,
                             evaluate, tracker, fed_evaluate,
                             functools.partial(checkpoints.save_if_due, rounds=cfg.rounds))
        except (KeyboardInterrupt, Terminated) as exc:
            exc.add_note(checkpoints.save_on_interrupt(run))
            raise
        except Diverged as exc:
            lr = cfg.client_optimizer.learning_rate
            raise DivergedError(
                f"client_optimizer.learning_rate={lr}", f"training diverged: {exc}",
                "lower the learning rate, clip local steps (client.gradient_clip_norm=1.0), "
                "or pass on_nonfinite=continue to train on") from exc
        if cfg.tracking.save_model:
            path = output_dir / MODEL_FILE
            save_keras(parts.model, parts.algorithm.process.get_model_weights(run.state), path)
            tracker.log_file(path, "model")
        return run, tracker.run_name


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra's entry; returns the final eval accuracy (for sweepers that optimise it)."""
    try:
        return train(cfg).get("eval/accuracy", math.nan)
    except Exception as exc:
        user_error = _config_error_in(exc)
        if user_error is None:
            raise
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # The other jobs go on; the sweep ends with this error (see main).
            log.error("job %d: error: %s", HydraConfig.get().job.num, user_error)
            raise user_error from None
        print(f"error: {user_error}", file=sys.stderr)  # exit here: Hydra would add a line
        raise SystemExit(user_error.exit_code) from None


def _config_error_in(exc: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `exc` (hydra.utils.instantiate wraps what builders raise)."""
    while exc is not None and not isinstance(exc, ConfigError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _is_user_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, ConfigError | HydraException | OmegaConfBaseException)


def _end_open_sweep(aborted: str | None) -> None:
    """Close the parent run of a sweep that did not reach its end (no-op otherwise)."""
    from federated_research.tracking.sweep import end_sweep

    try:
        end_sweep(aborted=aborted, report=aborted != "KILLED")
    except Exception:  # noqa: BLE001 - the original error matters more
        log.exception("could not close the sweep's parent run")


def main() -> None:
    from federated_research.resources import tune_malloc
    from federated_research.signals import Terminated, raise_on_sigterm

    tune_malloc()  # before TensorFlow's threads: flat memory over long runs

    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, to print them in one line
    # TF's C++ INFO lines drown the progress bar and its import-time "Unable to
    # register cuDNN factory" lines (CPU build) read like errors; set it to see them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # google.rpc (via TFF) imports pkg_resources, which warns on every run; the
    # setuptools pin that keeps TensorBoard's CLI working keeps the module, not the noise.
    quiet = "ignore:pkg_resources is deprecated:UserWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                          quiet]))  # sweep workers too
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                            category=UserWarning)
    raise_on_sigterm()
    try:
        from federated_research.resume import resume_argv

        sys.argv[1:] = resume_argv(sys.argv[1:], Path.cwd())
        hydra_main()
    except (KeyboardInterrupt, Terminated) as exc:
        _end_open_sweep("KILLED")
        saved = "".join(f"; {note}" for note in getattr(exc, "__notes__", []))
        print(f"interrupted ({str(exc) or 'Ctrl-C'}): the run is marked KILLED in MLflow"
              f"{saved}", file=sys.stderr)
        sys.exit(130)
    except BaseException as exc:
        _end_open_sweep("FAILED")  # a sweep that stopped early, reported with what finished
        if not isinstance(exc, Exception):
            raise
        cause = exc
        while (not _is_user_error(cause) and write_error(cause) is None
               and cause.__cause__ is not None):
            cause = cause.__cause__
        if write_error(cause) is not None:
            print(f"error: {write_error(cause)}", file=sys.stderr)
            sys.exit(1)
        if not _is_user_error(cause):
            raise
        print(f"error: {one_line(cause)}", file=sys.stderr)
        sys.exit(getattr(cause, "exit_code", 2))


if __name__ == "__main__":
    main()
