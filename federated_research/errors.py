"""User-facing errors: one line that names the key, the problem and the fix."""

from __future__ import annotations

import errno


class ConfigError(ValueError):
    """A value the run cannot use. `key` is what the user typed (`rounds=-1`)."""

    exit_code = 2

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"{key}: {problem}. Fix: {fix}")

    def __reduce__(self):
        # A failed job's error travels back from a launcher's worker process (joblib,
        # Ray) pickled: rebuild it from its three parts, not from the joined message.
        return self.__class__, (self.key, self.problem, self.fix)


class DivergedError(ConfigError):
    """Training diverged (a NaN or infinite loss); named after the key most likely to blame."""

    exit_code = 1


def diverged(cfg, detail: str) -> DivergedError:
    """The one line for a run whose training diverged, blaming what most likely did it:
    error feedback around a compressor whose error can exceed the update (1-bit
    stochastic quantize, sketch: the residual then grows every round), else the
    client learning rate (also under PowerSGD's feedback, `error_feedback: true`: its
    residual is a projection's error, never larger than the update)."""
    feedback = cfg.aggregator.get("error_feedback", "none")
    if isinstance(feedback, str) and feedback != "none":  # ef14, ef21
        return DivergedError(
            f"aggregator.error_feedback={feedback}", f"training diverged: {detail}",
            "error feedback needs a compressor whose error is smaller than the update "
            "(topk, sign, drive); with an unbiased one that errs more (quantize with few "
            "bits, sketch) the residual grows every round. Drop aggregator.error_feedback, "
            "send more bits, or lower client_optimizer.learning_rate")
    return DivergedError(
        f"client_optimizer.learning_rate={cfg.client_optimizer.learning_rate}",
        f"training diverged: {detail}",
        "lower the learning rate, clip local steps (client.gradient_clip_norm=1.0), "
        "or pass on_nonfinite=continue to train on")


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                 errno.ENOTDIR}


def write_error(exc: BaseException) -> str | None:
    """One line for a full disk or an output folder that cannot be written (else None)."""
    if not isinstance(exc, OSError) or exc.errno not in _WRITE_ERRNOS:
        return None
    where = exc.filename or "the output folder"
    fix = {errno.ENOSPC: "free space on that disk", errno.EDQUOT: "free space on that disk",
           errno.ENOTDIR: "move the file that is in the way"}.get(exc.errno, "make it writable")
    return (f"cannot write {where}: {exc.strerror}. Fix: {fix}, or pass "
            "hydra.run.dir=<a writable folder>")


def config_error_in(exc: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `exc` (hydra.utils.instantiate wraps what builders raise)."""
    while exc is not None and not isinstance(exc, ConfigError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _is_user_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, ConfigError | HydraException | OmegaConfBaseException)


class JobCancelled(ConfigError):
    """A cluster job (hydra/launcher=slurm) got SIGTERM: scancel, its time limit, or
    preemption. Its run is KILLED and its last round saved; an Exception, unlike
    Terminated, so that submitit records it as the job's answer."""

    exit_code = 130


OURS_BY_NAME = {"ConfigError": 2, "WorkerLost": 1, "JobCancelled": 130}  # their exit codes


def _cluster_job_error(exc: BaseException) -> tuple[str, int] | None:
    """A sweep job that failed on a cluster: submitit hands the sweep only the job's
    traceback, as text (FailedJobError). Its last line, when the error is one of ours."""
    if type(exc).__name__ != "FailedJobError":
        return None
    lines = [line for line in str(exc).splitlines() if line.strip()]
    name, _, message = (lines[-1] if lines else "").partition(": ")
    kind = name.rsplit(".", 1)[-1]
    if kind not in OURS_BY_NAME:
        return None
    return f"error: {message}", OURS_BY_NAME[kind]


def exit_for(exc: BaseException) -> tuple[str, int] | None:
    """What the user sees for an exception: (one line, exit code), or None for a bug.

    A mistake in what the user typed (a ConfigError anywhere behind `exc`, or
    Hydra's and OmegaConf's own composition errors) exits 2 (1 for a diverged
    run); a disk that is full or a folder that cannot be written exits 1. Any
    other exception is ours: the caller lets its traceback through.
    """
    found = config_error_in(exc)
    if found is not None:
        return f"error: {found}", found.exit_code
    cause: BaseException | None = exc
    while cause is not None:
        from_cluster = _cluster_job_error(cause)
        if from_cluster is not None:
            return from_cluster
        if write_error(cause) is not None:
            return f"error: {write_error(cause)}", 1
        if _is_user_error(cause):
            return f"error: {one_line(cause)}", getattr(cause, "exit_code", 2)
        cause = cause.__cause__
    return None


def one_line(exc: BaseException) -> str:
    """Turn a Hydra/OmegaConf composition error into one readable line.

    Hydra prints these over several lines with hints about HYDRA_FULL_ERROR;
    a researcher needs the key, what is wrong and what to type instead.
    """
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, ConfigError):
        return str(exc)
    from hydra.errors import InstantiationException

    if isinstance(exc, InstantiationException):  # "Error in call to target X:\n<cause>"
        return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, MissingConfigException):
        options = sorted(exc.options or [])
        group = (exc.missing_cfg_file or "").rsplit("/", 1)[0]
        name = (exc.missing_cfg_file or "").rsplit("/", 1)[-1]
        if options and group:
            return (f"{group}={name}: no such option. Fix: choose one of "
                    f"{', '.join(options)}")
        return _first_line(str(exc)) + ". Fix: check the spelling of the option"
    inner = exc.__cause__ or exc.__context__  # Hydra raises composition errors while handling
    cause = inner if isinstance(inner, OmegaConfBaseException) else exc
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        value = getattr(cause, "value", None)
        problem = _first_line(getattr(cause, "msg", None) or str(cause))
        if not key:
            return problem
        if isinstance(cause, ConfigAttributeError | ConfigKeyError):
            return _no_such_key(key, problem)
        wanted = next((w for t, w in _CONVERSIONS.items() if f"converted to {t}" in problem),
                      None)
        if wanted is not None:  # the same words as a method's own dataclass (options.py)
            return f"{key}={value}: wrong type. Fix: give {key} {wanted}"
        if "expected one of" in problem:
            return (f"{key}={value}: {problem}. Fix: give {key} one of "
                    + problem.split("expected one of", 1)[1].strip())
        return f"{key}={value}: {problem}. Fix: give {key} a value of the right type"
    return _first_line(str(exc))


def _no_such_key(key: str, problem: str) -> str:
    if key in KEY_HINTS:
        return f"{key}: {KEY_HINTS[key]}"
    return (f"{key}: no such config key ({problem}). Fix: check the spelling, or drop the key "
            "if the option you picked does not have it "
            "(`python -m federated_research.train --cfg job` prints every key)")


# Keys that exist for some options of a group only: what to say when the option picked
# does not have them.
KEY_HINTS = {
    "aggregator.error_feedback": "this aggregator keeps no client memory: mean sends the "
    "update exactly, and TFF's own aggregators (tff_compression, compression) are not "
    "methods of this library. Fix: pick a compression method, e.g. aggregator=topk "
    "aggregator.error_feedback=ef14 (or quantize, rotated_quantize, drive, subsampled, sketch, "
    "sign)",
    "distributor.error_feedback": "downlink error feedback (EF21-P) needs every client to "
    "receive every broadcast, and a run samples clients: a returning client's copy of the "
    "model would be stale. Fix: drop distributor.error_feedback (aggregator.error_feedback "
    "exists)",
}

# How a type is named to a user, by Python's name and by OmegaConf's ("converted to Float").
TYPE_WORDS = {"int": "a whole number, e.g. 10", "float": "a number, e.g. 0.1",
              "bool": "true or false", "str": "a string"}
_CONVERSIONS = {"Float": TYPE_WORDS["float"], "Integer": TYPE_WORDS["int"],
                "Boolean": TYPE_WORDS["bool"]}


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)
