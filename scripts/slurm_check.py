#!/usr/bin/env python3
"""Run a two-job sweep through `hydra/launcher=slurm` on a private one-node SLURM.

    .venv/bin/python scripts/slurm_check.py            # as root on a Debian/Ubuntu machine
    .venv/bin/python scripts/slurm_check.py --keep     # keep the temp dir (logs, store, sweep)

Checks conf/hydra/launcher/slurm.yaml against a real SLURM on this machine:

1. installs `slurm-wlm` and `munge` with apt-get (no recommends, no service started)
   when `slurmctld`, `slurmd` or `munged` is not on PATH; refuses if not root;
2. starts munged, slurmctld and slurmd in the foreground from a temp dir holding all
   they use (slurm.conf, munge key and socket, state, spool, logs, pid files; free
   ports), nothing under /etc; every slurm command gets `SLURM_CONF`; waits for the node
   to be idle;
3. submits a probe job that prints where the job's Python finds `federated_research`
   (sbatch must export `PYTHONPATH` and `SLURM_CONF`), then runs
   `python -m federated_research.train -m hydra/launcher=slurm seed=0,1 ...` (linear
   model, 2 rounds, 2 clients a round, no TensorBoard, saved model or report), its MLflow
   store and sweep dir in the temp dir, watching `squeue` while it runs;
4. checks the store: one parent run and two FINISHED children of it, each child's output
   folder run by a SLURM array task that squeue saw and whose submitit log names it;
5. cancels any job left and stops the daemons it started, on success, error or Ctrl-C,
   and removes the temp dir unless --keep.

6. then runs one more job (many rounds) and `scancel`s it once it has logged two rounds:
   its run must end KILLED (not RUNNING), its last round saved, its TFF workers gone;
7. and submits scripts/run_big.sbatch (the docs' recipe: a `worker_binary` job step on
   each node, the run reaching them as `runtime.workers=[host:port]`): its run must
   finish on that worker, with none of its own, and leave no worker behind.

Prints a summary and exits 0 only when every check passed; 3 when this machine cannot
host a SLURM (not root, packages not installable, daemons that will not come up; with
their log tails); otherwise one `error:` line and exit 1. `.ci/run` runs it after the
tests and counts 3 as a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAEMONS = ("slurmctld", "slurmd", "munged")
PACKAGES = ("slurm-wlm", "munge")
POLICY_RC = Path("/usr/sbin/policy-rc.d")  # apt's hook: exit 101 = start no service
PARTITION = "check"
JOB_MEM_GB = 4  # the run and its 2 TFF workers
SEEDS = (0, 1)
# The smallest real run: the embedded MNIST, softmax regression, 2 rounds of 2 clients.
# Each job shards its rounds over 2 TFF workers of its own (runtime=sharded).
TINY = ["model=linear", "runtime=sharded", "runtime.local_workers=2", "rounds=2",
        "clients_per_round=2", "eval_every=1",
        "checkpoint_every=0", "tracking.tensorboard=false", "tracking.save_model=false",
        "tracking.sweep_report=false", "tracking.progress_bar=false",
        "tracking.experiment=slurm_check"]
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
            f"hydra.launcher.mem_gb={JOB_MEM_GB}", "hydra.launcher.timeout_min=10"]
PROBE = ("import importlib.util, os; print(os.environ.get('SLURM_JOB_ID'), "
         "os.environ.get('SLURM_CONF'), importlib.util.find_spec('federated_research').origin)")
JOB_ENV = re.compile(r"Starting with JobEnvironment\(job_id=([^,]+), hostname=([^,]+)")


class CheckError(Exception):
    """A check failed; the message is the error line."""


class CannotHost(CheckError):
    """This machine cannot run a SLURM (not root, no packages, daemons that will not
    start): exit 3, which CI reports as a warning, not a failure."""

    exit_code = 3


def say(message: str) -> None:
    print(f"[slurm_check] {message}", flush=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"--- {path.name}: (none)"
    return "\n".join([f"--- {path.name}:", *text])


def run(argv: list[str], env: dict | None = None, timeout: float = 60,
        **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise CheckError(f"`{shlex.join(argv)}` did not answer within {timeout:.0f} s") from exc


# ---------------------------------------------------------------- 1. install


@contextlib.contextmanager
def no_service_starts():
    """Keep the packages' scripts from starting a system munged/slurmd (Debian's policy-rc.d)."""
    if POLICY_RC.exists():
        yield
        return
    POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
    POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC.unlink(missing_ok=True)


def ensure_installed() -> float:
    """Install SLURM and MUNGE if a daemon is missing; the seconds it took."""
    lacking = [m for m in ("hydra", "submitit", "mlflow")
               if importlib.util.find_spec(m) is None]
    if lacking:
        raise CheckError(f"{sys.executable} lacks {', '.join(lacking)}: run this script with "
                         "the project's .venv/bin/python")
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise CannotHost(f"{', '.join(missing)} not on PATH and not root: run as root, or "
                         f"`apt-get install {' '.join(PACKAGES)}` first")
    started = time.monotonic()
    say(f"{', '.join(missing)} missing: apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with no_service_starts():
        for argv in (["apt-get", "-q", "update"],
                     ["apt-get", "-q", "-y", "--no-install-recommends", "install", *PACKAGES]):
            done = run(argv, env=env, timeout=900)
            if done.returncode:
                last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
                raise CannotHost(f"`{shlex.join(argv)}` failed: {' '.join(last)}")
    still = [d for d in DAEMONS if shutil.which(d) is None]
    if still:
        raise CannotHost(f"{', '.join(still)} still not on PATH after installing {PACKAGES}")
    return time.monotonic() - started


# ---------------------------------------------------------------- 2. the cluster


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def real_memory_mb() -> int:
    """Half the available memory (at most 16 GiB): what the node offers SLURM."""
    meminfo = Path("/proc/meminfo").read_text()
    available = int(re.search(r"MemAvailable:\s+(\d+)", meminfo).group(1)) // 1024
    memory = min(available // 2, 16384) // 256 * 256
    if memory < JOB_MEM_GB * 1024:
        raise CannotHost(f"only {available} MB available: a job asks for {JOB_MEM_GB} GB")
    return memory


def slurm_conf(tmp: Path, host: str, memory_mb: int) -> str:
    ctld_port, slurmd_port = free_ports(2)
    return f"""\
ClusterName=slurmcheck
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={getpass.getuser()}
SlurmdUser={getpass.getuser()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={tmp}/munge/munge.socket
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/run/slurmctld.pid
SlurmdPidFile={tmp}/run/slurmd.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def processes_with(variable: str) -> list[int]:
    """Processes (not this one) whose environment holds `variable` (NAME=value)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


@dataclass
class Cluster:
    """munged, slurmctld and slurmd of one temp dir, each in its own process group."""

    tmp: Path
    host: str
    memory_mb: int
    env: dict = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def log_tails(self) -> str:
        """Each daemon's log file, or what it printed when it has none (munged)."""
        logs = [self.tmp / "log" / f"{name}.{ext}" for name in DAEMONS for ext in ("log", "out")]
        shown = [p for p in logs if p.exists() and p.stat().st_size
                 and not (p.suffix == ".out" and p.with_suffix(".log").exists())]
        return "\n".join(tail(p) for p in shown)

    def prepare(self) -> None:
        self.tmp.chmod(0o711)  # munged wants its socket's folders searchable by all
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.tmp / sub).mkdir(mode=0o711 if sub == "munge" else 0o700)
        key = self.tmp / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        conf = self.tmp / "slurm.conf"
        conf.write_text(slurm_conf(self.tmp, self.host, self.memory_mb))
        # sbatch exports its environment to the jobs: this checkout's package, this conf
        self.env = {**os.environ, "SLURM_CONF": str(conf), "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def start_daemon(self, name: str, argv: list[str]) -> None:
        with open(self.tmp / "log" / f"{name}.out", "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.tmp, start_new_session=True)
        self.procs.append((name, proc))

    def start(self) -> None:
        self.prepare()
        munge, conf = self.tmp / "munge", self.env["SLURM_CONF"]
        self.start_daemon("munged", [
            "munged", "--foreground", f"--socket={munge}/munge.socket",
            f"--key-file={munge}/munge.key", f"--pid-file={self.tmp}/run/munged.pid",
            f"--log-file={self.tmp}/log/munged.log", f"--seed-file={munge}/munged.seed"])
        self.wait_for(lambda: (munge / "munge.socket").exists(), "munged's socket", 20)
        self.start_daemon("slurmctld", ["slurmctld", "-D", "-f", conf])
        self.start_daemon("slurmd", ["slurmd", "-D", "-N", self.host, "-f", conf])

    def alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise CheckError(f"{name} exited with code {proc.returncode}\n"
                                 f"{self.log_tails()}")

    def wait_for(self, ready, what, timeout: float) -> None:
        """Poll `ready()` while the daemons live; `what` (text or a function giving it)
        names what never came."""
        deadline = time.monotonic() + timeout
        while not ready():
            self.alive()
            if time.monotonic() > deadline:
                what = what() if callable(what) else what
                raise CheckError(f"no {what} after {timeout:.0f} s\n{self.log_tails()}")
            time.sleep(0.5)

    def slurm(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return run(list(argv), env=self.env, timeout=timeout, cwd=self.tmp)

    def node_state(self) -> str:
        done = self.slurm("sinfo", "-h", "-N", "-o", "%T")
        return done.stdout.strip() or done.stderr.strip()

    def wait_idle(self, timeout: float) -> None:
        last = {"state": ""}

        def idle() -> bool:
            last["state"] = self.node_state()
            return last["state"] == "idle"

        self.wait_for(idle, lambda: f"idle node in sinfo (last: {last['state']!r})", timeout)

    def cancel_jobs(self) -> None:
        """Cancel whatever is still queued or running, and give it a moment to go."""
        if not any(n == "slurmctld" and p.poll() is None for n, p in self.procs):
            return  # no slurmctld to ask
        with contextlib.suppress(CheckError):
            self.slurm("scancel", f"--user={getpass.getuser()}")
            deadline = time.monotonic() + 30
            while self.slurm("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
                time.sleep(1)

    def stop(self) -> None:
        """Cancel the jobs left, stop slurmd, slurmctld and munged, then kill any process
        still carrying this cluster's SLURM_CONF (a job step that outlived its slurmd)."""
        if not self.procs:
            return
        self.cancel_jobs()
        for _name, proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()
        for pid in processes_with(f"SLURM_CONF={self.env['SLURM_CONF']}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        say("stopped slurmd, slurmctld, munged")


# ---------------------------------------------------------------- 3. the jobs


def probe_job(cluster: Cluster) -> str:
    """One job that tells where its Python finds the package: the env sbatch exports."""
    out = cluster.tmp / "probe.out"
    done = cluster.slurm("sbatch", "--parsable", "--wait", f"--output={out}", "--time=2",
                         "--mem=100M", "--cpus-per-task=1", "--job-name=slurm_check_probe",
                         f"--wrap={shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}",
                         timeout=120)
    job_id = done.stdout.strip().split(";")[0]
    fields = out.read_text().split() if out.exists() else []
    if done.returncode or len(fields) != 3:
        raise CheckError(f"probe job {job_id or '?'} failed (sbatch exit {done.returncode}): "
                         f"{done.stderr.strip()} {' '.join(fields)}".strip())
    slurm_id, conf, origin = fields
    if slurm_id != job_id or conf != cluster.env["SLURM_CONF"]:
        raise CheckError(f"probe job {job_id}: SLURM_JOB_ID={slurm_id}, SLURM_CONF={conf}: "
                         "sbatch does not export this environment")
    if not Path(origin).resolve().is_relative_to(ROOT):
        raise CheckError(f"probe job {job_id} imports federated_research from {origin}, "
                         f"not from {ROOT}: PYTHONPATH did not reach the job")
    return f"probe job {job_id}: federated_research from {origin}"


@dataclass
class Sweep:
    """What the sweep left: its folder, exit code, seconds, and the jobs squeue showed."""

    folder: Path
    uri: str
    returncode: int = -1
    seconds: float = 0.0
    seen: dict[str, set[str]] = field(default_factory=dict)  # job id -> states


def sweep_command(sweep: Sweep, seeds=SEEDS, more: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "federated_research.train", "-m", *LAUNCHER,
            f"seed={','.join(map(str, seeds))}", *TINY, *more,
            f"tracking.mlflow_uri={sweep.uri}", f"hydra.sweep.dir={sweep.folder}"]


# A sweep stopped early closes its parent run (KILLED) on Ctrl-C: it gets the terminal's
# Ctrl-C with this script (same process group), else one from here, before SIGTERM.
SWEEP_STOP = ((None, 5), (signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, None))
DAEMON_STOP = ((signal.SIGTERM, 15), (signal.SIGKILL, None))


def stop_process(proc: subprocess.Popen, steps=DAEMON_STOP) -> None:
    """Send each step's signal (None: none) and wait its seconds for the process to end."""
    for signum, seconds in steps:
        if proc.poll() is not None:
            return
        if signum is not None:
            proc.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=seconds)


def watch_queue(cluster: Cluster, sweep: Sweep) -> None:
    done = cluster.slurm("squeue", "-h", "-o", "%i %T")
    for line in done.stdout.splitlines():
        job_id, state = line.split()
        sweep.seen.setdefault(job_id, set()).add(state)


def run_sweep(cluster: Cluster, timeout: float) -> Sweep:
    """The Hydra multirun through the preset, its output in sweep.log."""
    sweep = Sweep(cluster.tmp / "sweep", f"sqlite:///{cluster.tmp}/mlflow.db")
    say("sweep: " + shlex.join(sweep_command(sweep)[1:]))
    started = time.monotonic()
    with open(cluster.tmp / "sweep.log", "wb") as out:
        proc = subprocess.Popen(sweep_command(sweep), stdout=out, stderr=subprocess.STDOUT,
                                env=cluster.env, cwd=cluster.tmp)
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    raise CheckError(f"the sweep did not end within {timeout:.0f} s (squeue "
                                     f"saw {sorted(sweep.seen)})")
                cluster.alive()
                watch_queue(cluster, sweep)
                time.sleep(1)
        finally:
            stop_process(proc, SWEEP_STOP)
    sweep.returncode, sweep.seconds = proc.returncode, time.monotonic() - started
    return sweep


def worker_pids() -> set[int]:
    """TFF worker processes on this machine."""
    found = run(["pgrep", "-f", "tensorflow_federated/data/worker_binary"])
    return {int(p) for p in found.stdout.split()}


def run_under(uri: str, folder: Path):
    """The check's MLflow run whose output folder is `folder` or inside it (None: none)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("slurm_check").experiment_id
    return next((r for r in client.search_runs([experiment])
                 if Path(r.data.tags.get("output_dir", "/")).is_relative_to(folder)), None)


def cancel_check(cluster: Cluster, timeout: float) -> list[str]:
    """scancel a running job: its run must end KILLED (not left RUNNING) with its last
    round saved, and its TFF workers must be gone."""

    before = worker_pids()
    sweep = Sweep(cluster.tmp / "cancel", f"sqlite:///{cluster.tmp}/mlflow.db")
    command = sweep_command(sweep, seeds=(7,), more=("rounds=100000", "checkpoint_every=100000"))
    say("cancel: " + shlex.join(command[1:]))
    started = time.monotonic()
    with open(cluster.tmp / "cancel.log", "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env=cluster.env, cwd=cluster.tmp)
        try:
            journal = None
            while journal is None or len(journal.read_text().splitlines()) < 3:
                if proc.poll() is not None or time.monotonic() - started > timeout:
                    raise CheckError(f"the job to cancel did not reach round 2 (sweep exit "
                                     f"{proc.poll()})\n{tail(cluster.tmp / 'cancel.log', 10)}")
                watch_queue(cluster, sweep)
                journal = next(sweep.folder.glob("*/metrics.jsonl"), None)
                time.sleep(1)
            job_id = max(sweep.seen, key=lambda j: int(j.split("_")[0]))
            cluster.slurm("scancel", job_id.split("_")[0])
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                raise CheckError(f"the sweep did not end within 120 s of `scancel {job_id}`"
                                 f"\n{tail(cluster.tmp / 'cancel.log', 10)}") from None
        finally:
            stop_process(proc, SWEEP_STOP)
    child = run_under(sweep.uri, sweep.folder)
    if child is None:
        raise CheckError(f"cancelled job {job_id}: no run under {sweep.folder} in the store")
    saved = sorted(p.name for p in journal.parent.glob("checkpoints/round_*"))
    left = worker_pids() - before
    said = tail(cluster.tmp / "cancel.log", 1).splitlines()[-1]
    if proc.returncode != 130 or "received SIGTERM" not in said:
        raise CheckError(f"the cancelled sweep exited {proc.returncode}, saying: {said}")
    if child.info.status != "KILLED" or not saved or left:
        raise CheckError(f"cancelled job {job_id}: its run is {child.info.status} (want "
                         f"KILLED), checkpoints {saved or 'none'}, TFF workers left {left}")
    return [f"scancel of job {job_id} once it had logged 2 rounds: "
            f"run {child.info.run_id} KILLED, {saved[-1]} saved, its 2 TFF workers stopped, "
            f"in {time.monotonic() - started:.1f} s; the sweep exited 130 saying:", said]


def remote_workers_check(cluster: Cluster, timeout: float) -> list[str]:
    """scripts/run_big.sbatch, the docs' recipe: a worker_binary on each node as a job
    step, the round loop reaching them by host:port (runtime.workers)."""

    before = worker_pids()
    port, out, folder = free_ports(1)[0], cluster.tmp / "run_big.out", cluster.tmp / "run_big"
    overrides = [o for o in TINY if not o.startswith("runtime")] + [
        f"tracking.mlflow_uri=sqlite:///{cluster.tmp}/mlflow.db", f"hydra.run.dir={folder}"]
    say("run_big.sbatch: " + shlex.join(overrides))
    started = time.monotonic()
    done = run(["sbatch", "--parsable", "--wait", f"--output={out}", "--time=10",
                f"--mem={JOB_MEM_GB}G", "--cpus-per-task=1", "--nodes=1",
                str(ROOT / "scripts" / "run_big.sbatch"), *overrides],
               env={**cluster.env, "PYTHON": sys.executable, "PORT": str(port)},
               timeout=timeout, cwd=cluster.tmp)
    job_id = done.stdout.strip().split(";")[0] or "?"
    if done.returncode:
        raise CheckError(f"run_big.sbatch job {job_id} failed (sbatch exit {done.returncode})"
                         f"\n{tail(out, 15)}")
    run_ = run_under(f"sqlite:///{cluster.tmp}/mlflow.db", folder)
    if run_ is None or run_.info.status != "FINISHED":
        raise CheckError(f"run_big.sbatch job {job_id}: its run is "
                         f"{run_.info.status if run_ else 'missing'}\n{tail(out, 15)}")
    workers = run_.data.params.get("runtime.workers", "")
    local_logs = sorted(p.name for p in folder.glob("tff_worker*.log"))
    left = worker_pids() - before
    if f"{cluster.host}:{port}" not in workers or local_logs or left:
        raise CheckError(f"run_big.sbatch job {job_id}: runtime.workers={workers}, local "
                         f"worker logs {local_logs}, TFF workers left {left}")
    return [f"run_big.sbatch job {job_id}: run {run_.info.run_id} FINISHED on "
            f"runtime.workers={workers} (a worker_binary job step; no local worker), "
            f"eval/accuracy {run_.data.metrics.get('eval/accuracy', float('nan')):.4f}, "
            f"in {time.monotonic() - started:.1f} s"]


# ---------------------------------------------------------------- 4. the checks


def submitit_jobs(folder: Path) -> dict[str, str]:
    """SLURM job id -> host, from each task's submitit log (written inside the job)."""
    jobs = {}
    for log in sorted((folder / ".submitit").glob("*/*_log.out")):
        found = JOB_ENV.search(log.read_text(errors="replace"))
        if found:
            jobs[found.group(1)] = found.group(2)
    return jobs


def sweep_failure(sweep: Sweep) -> str:
    """The sweep's and its jobs' last lines, for a sweep that did not exit 0."""
    logs = [sweep.folder.parent / "sweep.log",
            *sorted((sweep.folder / ".submitit").glob("*/*_log.err"))]
    return "\n".join(tail(p, 10) for p in logs)


def hydra_job_id(output_dir: str) -> str:
    from omegaconf import OmegaConf

    hydra_yaml = Path(output_dir) / ".hydra" / "hydra.yaml"
    if not hydra_yaml.exists():
        return "?"
    return str(OmegaConf.load(hydra_yaml).hydra.job.get("id", "?"))


def check_children(children: list, sweep: Sweep) -> list[str]:
    """Each child FINISHED, run by a SLURM task that squeue saw and submitit logged."""
    logged = submitit_jobs(sweep.folder)
    lines = []
    for child in sorted(children, key=lambda r: int(r.data.tags.get("job_num", -1))):
        run_id, tags = child.info.run_id, child.data.tags
        job_id = hydra_job_id(tags.get("output_dir", ""))
        if child.info.status != "FINISHED":
            raise CheckError(f"child run {run_id} ({child.info.run_name}) is "
                             f"{child.info.status}")
        if job_id not in logged or job_id not in sweep.seen:
            raise CheckError(f"child run {run_id}: hydra job id {job_id} is not a SLURM job "
                             f"that squeue saw ({sorted(sweep.seen)}) and submitit logged "
                             f"({sorted(logged)})")
        accuracy = child.data.metrics.get("eval/accuracy")
        if accuracy is None:
            raise CheckError(f"child run {run_id} has no eval/accuracy")
        lines.append(f"child   {run_id}  {child.info.status}  {child.info.run_name:<6} "
                     f"SLURM job {job_id} on {logged[job_id]} "
                     f"({'/'.join(sorted(sweep.seen[job_id]))})  eval/accuracy {accuracy:.4f}")
    return lines


def check_runs(sweep: Sweep) -> list[str]:
    """One parent, len(SEEDS) FINISHED children of it, each run under SLURM."""
    import logging

    from mlflow import MlflowClient

    logging.disable(logging.INFO)  # the store's migration lines (alembic's own config)
    if sweep.returncode != 0:
        raise CheckError(f"the sweep exited with code {sweep.returncode}\n"
                         f"{sweep_failure(sweep)}")
    info = json.loads((sweep.folder / "mlflow_sweep.json").read_text())
    client = MlflowClient(tracking_uri=sweep.uri)
    runs = client.search_runs([info["experiment_id"]])
    parents = [r for r in runs if r.data.tags.get("run_type") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == info["parent_run_id"]]
    if [r.info.run_id for r in parents] != [info["parent_run_id"]]:
        raise CheckError(f"{len(parents)} parent runs in the store, want 1 "
                         f"({info['parent_run_id']})")
    if len(children) != len(SEEDS) or len(runs) != len(SEEDS) + 1:
        raise CheckError(f"{len(children)} child runs of {info['parent_run_id']} "
                         f"({len(runs)} runs in all), want {len(SEEDS)}")
    if parents[0].info.status != "FINISHED":
        raise CheckError(f"parent run {info['parent_run_id']} is {parents[0].info.status}")
    return [f"parent  {info['parent_run_id']}  FINISHED  {parents[0].info.run_name}",
            *check_children(children, sweep)]


# ---------------------------------------------------------------- main


def slurm_version(cluster: Cluster) -> str:
    return cluster.slurm("sinfo", "--version").stdout.strip() or "unknown"


def seen_text(sweep: Sweep) -> str:
    return ", ".join(f"{job} {'/'.join(sorted(states))}" for job, states in sweep.seen.items())


def check(cluster: Cluster, args: argparse.Namespace) -> list[str]:
    """Start the cluster, run the probe and the sweep, check them; the summary's lines."""
    started = time.monotonic()
    try:
        cluster.start()
        cluster.wait_idle(args.start_timeout)
    except CannotHost:
        raise
    except CheckError as exc:
        raise CannotHost(f"the one-node SLURM did not come up: {exc}") from exc
    version = slurm_version(cluster)
    say(f"{version} up on {cluster.host} in {time.monotonic() - started:.1f} s "
        f"({os.cpu_count()} CPUs, {cluster.memory_mb} MB, partition {PARTITION})")
    probe = probe_job(cluster)
    say(probe)
    sweep = run_sweep(cluster, args.timeout)
    runs = check_runs(sweep)
    cancelled = cancel_check(cluster, args.timeout)
    remote = remote_workers_check(cluster, args.timeout)
    return [f"SLURM: {version} on {cluster.host} ({os.cpu_count()} CPUs, "
            f"{cluster.memory_mb} MB, partition {PARTITION})", probe,
            f"sweep: {len(SEEDS)} jobs in {sweep.seconds:.1f} s (exit {sweep.returncode}); "
            f"squeue saw {seen_text(sweep)}",
            *runs, *cancelled, *remote]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (slurm.conf, logs, MLflow store, sweep dir)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds the sweep may take (default 900)")
    parser.add_argument("--start-timeout", type=float, default=60,
                        help="seconds for the node to be idle (default 60)")
    return parser.parse_args()


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _terminated)
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    cluster, code = None, 1
    try:
        installed = ensure_installed()
        host, memory = socket.gethostname().split(".")[0], real_memory_mb()
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="slurm_check-")), host, memory)
        summary = check(cluster, args)
        code = 0
    except CannotHost as exc:
        print(f"cannot host a SLURM here: {exc}", file=sys.stderr)
        code = CannotHost.exit_code
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt as exc:
        print(f"error: interrupted ({str(exc) or 'Ctrl-C'}); stopping what was started",
              file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up runs to its end
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if cluster is not None:
            cluster.stop()
            if args.keep:
                say(f"kept {cluster.tmp}")
            else:
                shutil.rmtree(cluster.tmp, ignore_errors=True)
    if code == 0:
        print("\n".join(summary))
        print(f"all checks passed in {time.monotonic() - started:.1f} s"
              + (f" (installing SLURM: {installed:.1f} s)" if installed else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
