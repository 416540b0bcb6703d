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
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from federated_research.config import CONF_DIR, register_schemas, runtime_options, validate
from federated_research.errors import JobCancelled, config_error_in, diverged, exit_for
from federated_research.process import StartupClock, prepare_process
from federated_research.report import report_sweep
from federated_research.resume import RunRecord, check_same_config, resume_argv
from federated_research.signals import Terminated, raise_on_sigterm
from federated_research.tracking.mlflow_sink import check_reachable, mlflow_ui_hint
from federated_research.tracking.sweep import end_sweep

log = logging.getLogger("federated_research")
register_schemas()


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one job of the composed config; returns the final metrics."""
    job_start = time.time()
    validate(cfg)  # before the heavy imports: bad input fails in a second
    check_reachable(cfg.tracking.mlflow_uri)
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    record = RunRecord.read(output_dir)  # a run started in this folder before: resume it
    if record is not None:
        check_same_config(record, cfg, output_dir)
    from federated_research.runtime import TffRuntime  # imports TensorFlow

    # TFF logs each model trace, TensorFlow each checkpoint's "Assets written to".
    for noisy in ("absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Start-up: from the process's start for its first job (imports included), from
    # the job's start for later jobs of the same process (a sweep's basic launcher).
    started = StartupClock.started(job_start)
    with TffRuntime(output_dir / "tff_worker.log", runtime_options(cfg)):
        run, name = _build_and_run(cfg, output_dir, started, record)
    summary = {**run.last, "rounds": run.next_round,
               "mean_round_seconds": (sum(run.round_seconds) / len(run.round_seconds)
                                      if run.round_seconds else math.nan),
               "time/startup_seconds": run.startup_seconds,
               "job_seconds": time.time() - job_start}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accuracy = summary.get("eval/accuracy", math.nan)
    up = summary.get("comm/aggregated_bits_cumulative", 0)
    spent = (f", epsilon {summary['privacy/epsilon']:.4g} at delta {summary['privacy/delta']:.3g}"
             if "privacy/epsilon" in summary else "")
    if hydra_cfg.mode == RunMode.MULTIRUN:  # one line per job; the sweep says where to look
        log.info("job %d %s: eval accuracy %.4f%s, %s up, %s down, %.0f s", hydra_cfg.job.num,
                 name, accuracy, spent, _bits(up),
                 _bits(summary.get("comm/broadcasted_bits_cumulative", 0)), summary["job_seconds"])
    else:
        log.info("done: eval accuracy %.4f%s, %d bits uploaded, %.2f s/round; outputs in %s; %s",
                 accuracy, spent, up, summary["mean_round_seconds"], output_dir,
                 mlflow_ui_hint(cfg.tracking.mlflow_uri))
    return summary


def _bits(bits: float) -> str:
    """2.47 Gibit, 16.0 Mibit, 3.1 kibit: 2^10 steps, as the README counts."""
    for unit, size in (("Gibit", 2**30), ("Mibit", 2**20), ("kibit", 2**10)):
        if bits >= size:
            return f"{bits / size:.4g} {unit}"
    return f"{bits:.0f} bit"


def _build_and_run(cfg: DictConfig, output_dir: Path, started: float, record):
    """Build every part from the config, then run the rounds inside an MLflow run
    (the run's own, reopened, when `record` says this folder's run is resumed)."""
    # These import TensorFlow and TFF: only once the config has passed its checks.
    from federated_research.build import build_run_parts, cache_bytes, check_shardable
    from federated_research.checkpoint import Checkpoints
    from federated_research.client_state import build_store
    from federated_research.evaluation import CentralEvaluator
    from federated_research.loop import Diverged, Evaluations, RunState, run_rounds
    from federated_research.models import save_keras
    from federated_research.models.keras_file import MODEL_FILE
    from federated_research.runtime.workers import WorkerLost
    from federated_research.tracking.run import open_tracker

    parts = build_run_parts(cfg)
    checkpoints = Checkpoints(output_dir, every=cfg.checkpoint_every, keep=cfg.checkpoint_keep,
                              seed=cfg.seed)
    clients = build_store(cfg.client_state.store, parts.algorithm.client_state,
                          list(parts.data.train.client_ids), output_dir)
    run = (checkpoints.resume(parts.initial_state, cfg.rounds, clients) if record is not None
           else RunState(parts.initial_state, clients=clients))
    evaluate = CentralEvaluator(parts.model, parts.data.test, batch_size=cfg.eval_batch_size)
    fed_evaluate = None
    if cfg.fed_eval.every > 0:
        from federated_research.fed_evaluation import FederatedEvaluator

        fed_evaluate = FederatedEvaluator(parts.model, parts.data.test_clients,
                                          clients=cfg.fed_eval.clients,
                                          batch_size=cfg.eval_batch_size, seed=cfg.seed,
                                          cache_bytes=cache_bytes(cfg))
        check_shardable(cfg, fed_evaluate.process.next)  # before round 1, not mid-run
    weights = parts.algorithm.process.get_model_weights(parts.initial_state)
    comm = {**parts.comm.describe(), "model_parameters": int(sum(
        w.size for w in [*weights.trainable, *weights.non_trainable]))}
    with open_tracker(cfg, output_dir, {"comm_bits.json": comm}, record,
                      start_round=run.next_round) as tracker:
        StartupClock.ready()
        if record is None:
            run.startup_seconds = time.time() - started
            tracker.log_metrics({"time/startup_seconds": run.startup_seconds,
                                 "data/train_clients": len(parts.data.train.client_ids)},
                                step=0)
        try:
            run = run_rounds(parts, run, Evaluations(evaluate, fed_evaluate), tracker,
                             functools.partial(checkpoints.save_if_due, rounds=cfg.rounds))
        except (KeyboardInterrupt, Terminated) as exc:
            exc.add_note(checkpoints.save_on_interrupt(run))
            raise
        except Diverged as exc:
            raise diverged(cfg, str(exc)) from exc
        except WorkerLost as exc:  # a sharded runtime's worker died: keep what is done
            raise WorkerLost(exc.key, exc.problem, checkpoints.save_on_interrupt(run)) from exc
        if cfg.tracking.save_model:
            path = output_dir / MODEL_FILE
            save_keras(parts.model, parts.algorithm.process.get_model_weights(run.state), path)
            tracker.log_file(path, "model")
        return run, tracker.run_name


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra's entry; returns the final eval accuracy (for sweepers that optimise it)."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        # A SLURM job (hydra/launcher=slurm) runs this in submitit's process, not main():
        # submitit only logs SIGTERM (scancel, time limit, preemption) and SLURM's SIGKILL
        # follows, which would leave the run RUNNING and its rounds unsaved.
        raise_on_sigterm()
    try:
        return train(cfg).get("eval/accuracy", math.nan)
    except Terminated as exc:
        if not os.environ.get("SUBMITIT_EXECUTOR"):
            raise
        # submitit stores only an Exception as a job's answer: without one the sweep
        # would wait for the job (a cluster without accounting never says it ended)
        saved = " ".join(getattr(exc, "__notes__", [])) or "no round was saved"
        raise JobCancelled(f"SLURM job {os.environ.get('SLURM_JOB_ID', '?')}",
                           "received SIGTERM (scancel, its time limit, or preemption); "
                           "its run is marked KILLED in MLflow", saved) from None
    except Exception as exc:
        answer = exit_for(exc)
        if answer is None:  # our bug: its traceback
            raise
        line, code = answer
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # The other jobs go on; the sweep ends with this error (see main).
            log.error("job %d: %s", HydraConfig.get().job.num, line)
            raise (config_error_in(exc) or exc) from None
        print(line, file=sys.stderr)  # exit here: Hydra would add a line of its own
        raise SystemExit(code) from None


def _end_open_sweep(aborted: str | None) -> None:
    """Close the parent run of a sweep that did not reach its end (no-op otherwise)."""
    try:
        end_sweep(aborted=aborted, report=None if aborted == "KILLED" else report_sweep)
    except Exception:  # noqa: BLE001 - the original error matters more
        log.exception("could not close the sweep's parent run")


def main() -> None:
    """The command line: set the process up, resume if asked, run, and exit with one line."""
    prepare_process()
    try:
        sys.argv[1:] = resume_argv(sys.argv[1:], Path.cwd())
        hydra_main()
    except (KeyboardInterrupt, Terminated) as exc:
        _end_open_sweep("KILLED")
        saved = "".join(f"; {note}" for note in getattr(exc, "__notes__", []))
        print(f"interrupted ({str(exc) or 'Ctrl-C'}): the run is marked KILLED in MLflow"
              f"{saved}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        _end_open_sweep("FAILED")  # a sweep that stopped early, reported with what finished
        answer = exit_for(exc)
        if answer is None:  # our bug: its traceback
            raise
        print(answer[0], file=sys.stderr)
        sys.exit(answer[1])


if __name__ == "__main__":
    main()
