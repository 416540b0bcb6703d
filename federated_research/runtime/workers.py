"""TFF's C++ runtime, with worker processes this program owns and always stops.

TFF's default context starts `worker_binary` lazily, lets it inherit stdout and
stderr, and only stops it from a `__del__` that may never run. The worker then
outlives a crashed or interrupted run, and `train ... | tee log` hangs because
the worker still holds the pipe. `TffRuntime` builds the same execution context
(`create_sync_local_cpp_execution_context` in TFF 0.87) around its own service
manager, which
  * starts the worker with its output in a log file, never our stdout/stderr;
  * asks the kernel to SIGTERM the worker if this process dies, even by SIGKILL;
  * stops it (SIGINT, then SIGKILL) on `close()`, at interpreter exit, and on
    the way out of a `with` block that ends by exception or signal;
  * runs secure aggregation in simulation: `federated_secure_sum_bitwidth` and its
    kin are compiled to their plain bodies, as TFF's test backend does (the C++
    worker has no secure intrinsics); the bits they would send are counted from
    their declared widths (comm_bits.py);
  * never restarts it for a computation begun before `close()`. On Ctrl-C the
    round's computation goes on in TFF's event-loop thread; once its worker is
    gone TFF retries it, and the retry used to start a new worker from that
    thread and run the whole round again while the main thread was shutting
    down (a sweep's Ctrl-C once ended in glibc's "free(): invalid next size").
    A computation begun after `close()` starts a worker as before.

`runtime=sharded` (sharded.py) runs several such workers, and `RemoteWorker`s started
elsewhere, behind one `ShardedContext` (sharding.py). There a worker that dies is not
restarted: the round stops with one line (`WorkerLost`) and the run can be resumed
from its last checkpoint.
"""

from __future__ import annotations

import atexit
import contextvars
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import portpicker
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.backends.test import compiler as test_compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import (
    tensorflow_computation,
)
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
from tensorflow_federated.python.core.impl.executors import (
    executor_factory,
    remote_executor,
    remote_executor_grpc_stub,
)
from tensorflow_federated.python.core.impl.types import placements

from federated_research.errors import ConfigError
from federated_research.resources import worker_malloc_env

WORKER_BINARY = Path(tff.__file__).parent / "data" / "worker_binary"
_GRPC_OPTIONS = [("grpc.max_message_length", 2_000_000_000),
                 ("grpc.max_receive_message_length", 2_000_000_000),
                 ("grpc.max_send_message_length", 2_000_000_000)]
# A remote host that vanishes without closing its connection (power, network) is
# noticed during a call within ~5 minutes, and the call ends UNAVAILABLE instead of
# waiting forever. Not more often: a gRPC server's default policy answers pings more
# frequent than 5 minutes (or pings without a call) by closing the connection.
_KEEPALIVE = [("grpc.keepalive_time_ms", 300_000), ("grpc.keepalive_timeout_ms", 20_000)]
_PR_SET_PDEATHSIG = 1
log = logging.getLogger(__name__)
_LIVE: set[WorkerService] = set()  # strong refs: a dropped service must still be stopped
_current: list[WorkerService] = []  # the service behind the installed default context
# The `WorkerService.epoch` a computation began in; TFF runs it, and its retries, in a
# task that copies the invoking thread's context (asyncio.run_coroutine_threadsafe).
_begun_in: contextvars.ContextVar[int | None] = contextvars.ContextVar("begun_in", default=None)


class WorkerLost(ConfigError):
    """A worker of a sharded runtime died or cannot be reached: the run stops (FAILED),
    resumable from its last checkpoint."""

    exit_code = 1


class WorkerClosed(RuntimeError):
    """A computation begun before its runtime was closed asked for the worker again.
    (Not TFF's RetryableError: the computation ends here.)"""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerService:
    """One local `worker_binary` and the gRPC stub that talks to it."""

    def __init__(self, log_path: Path | None = None, start_timeout: float = 60.0,
                 concurrent_calls: int | None = None, restart: bool = True,
                 name: str = "runtime") -> None:
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.concurrent_calls = concurrent_calls  # clients it trains at once (None: all)
        self.restart = restart  # start a new worker when this one died (runtime=local)
        self.name = name  # the key a lost worker is reported under
        self.lost: WorkerLost | None = None  # how it died, once it has (restart=False)
        self.process: subprocess.Popen | None = None
        self._channel: grpc.Channel | None = None
        self._stub: remote_executor_grpc_stub.RemoteExecutorGrpcStub | None = None
        # TFF's event-loop thread asks for the stub while the main thread may be stopping
        # the worker (Ctrl-C, SIGTERM): one of them at a time, or a restart's channel is
        # wiped by the stop it raced with.
        self._lock = threading.RLock()
        self.generation = 0  # which worker: executors made on an earlier one are stale
        self.epoch = 0  # how many times closed: computations begun earlier are over
        _LIVE.add(self)

    def stub(self) -> remote_executor_grpc_stub.RemoteExecutorGrpcStub:
        """The stub of a running worker; (re)starts the worker when it is not running."""
        with self._lock:
            begun_in = _begun_in.get()
            if begun_in is not None and begun_in != self.epoch:
                log.info("a TFF computation begun before its runtime was closed asked for "
                         "the worker again: it is not run again")
                raise WorkerClosed("this computation began before the TFF runtime was "
                                   "closed; it is not run again on a new worker")
            if self._stub is not None and self.process is not None \
                    and self.process.poll() is None and _ready(self._channel, self._stub):
                return self._stub
            if self._stub is None and self.process is not None and self.process.poll() is None:
                self._connect()  # launched, not yet connected to
                return self._stub
            if self.lost is not None or (self.process is not None and not self.restart):
                if self.lost is None:  # first seen now: stop what is left of it
                    self.lost = WorkerLost(
                        self.name, f"TFF worker {self.process_pid} ended "
                        f"({_exit_words(self.process.poll())}) during the round; see "
                        f"{self.log_path}", "resume the run (its last checkpoint is kept)")
                    self.stop()
                    # Executors made on it are stale: TFF's clean-up after this error
                    # must not call the closed channel (its ValueError would hide ours).
                    self.generation += 1
                raise self.lost  # never restarted under a sharded runtime
            self.stop()
            self._start()
            return self._stub

    def _start(self) -> None:
        if not WORKER_BINARY.is_file():
            raise RuntimeError(f"TFF's worker binary is missing at {WORKER_BINARY}; "
                               "reinstall tensorflow-federated (scripts/bootstrap.py setup)")
        self.launch()
        self._connect()

    def launch(self) -> None:
        """Start the worker process (not yet connected to). A runtime of several
        workers starts them all before any gRPC channel exists: forking while gRPC's
        threads run skips its fork handlers (and says so on stderr)."""
        if self.process is not None and self.process.poll() is None:
            return
        self.generation += 1
        port = portpicker.pick_unused_port()
        self._port = port
        calls = self.concurrent_calls or -1  # TFF's own default: no limit
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115

        try:
            self.process = subprocess.Popen(
                [str(WORKER_BINARY), f"--port={port}",
                 f"--max_concurrent_computation_calls={calls}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **worker_malloc_env()},  # flat memory (resources.py)
                start_new_session=True,  # a terminal Ctrl-C reaches us; we stop the worker
                preexec_fn=_die_with_parent)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()

    def _connect(self) -> None:
        self._channel = grpc.insecure_channel(f"localhost:{self._port}", _GRPC_OPTIONS)
        self._stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(self._channel)
        deadline = time.monotonic() + self.start_timeout
        while not self._stub.is_ready:
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                raise RuntimeError(f"TFF worker_binary did not start (exit code {code}); "
                                   f"see {self.log_path or 'its output'}")
            time.sleep(0.05)
        self.process_pid = self.process.pid

    def close(self, grace: float = 5.0) -> None:
        """Stop the worker for the computations begun so far: TFF's retry of one of them
        (its worker is gone) fails instead of starting another. Later ones start one."""
        with self._lock:
            self.epoch += 1
            self.lost = None
            self.stop(grace)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the worker: SIGINT, then SIGKILL after `grace` seconds; then close the
        channel. Idempotent. The worker goes first: on Ctrl-C a round's call may still be
        in flight on TFF's event-loop thread, and closing a gRPC channel under a live
        call from another thread can corrupt gRPC's memory; so the channel closes once
        gRPC has seen the worker go (up to 2 s), when that call has ended UNAVAILABLE."""
        with self._lock:
            process, self.process = self.process, None
            channel, stub = self._channel, self._stub
            self._channel, self._stub = None, None
            try:
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGINT)
                    try:
                        process.wait(grace)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
            finally:  # a second Ctrl-C during the wait still ends the worker and the channel
                if process is not None and process.poll() is None:
                    process.kill()
                if channel is not None:
                    if process is not None:
                        _until_disconnected(stub, within=2.0)
                    channel.close()


def _ready(channel: grpc.Channel | None, stub, within: float = 5.0) -> bool:
    """Whether the worker answers: a channel idle for a while (gRPC's idle timeout) is
    not READY until a connection is asked for, so ask before calling it gone."""
    if stub is not None and stub.is_ready:
        return True
    if channel is None:
        return False
    try:
        grpc.channel_ready_future(channel).result(timeout=within)
    except grpc.FutureTimeoutError:
        return False
    return True


def _exit_words(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class RemoteWorker:
    """A `worker_binary` started elsewhere (`host:port`): connected to, never started or
    stopped from here. When it stops answering, the round's calls on it wait up to
    `timeout` seconds for it to come back (TFF then runs that shard again from its
    start, on fresh executors), and otherwise end the run with one line."""

    process = None  # nothing of ours to stop

    def __init__(self, address: str, timeout: float = 60.0) -> None:
        self.address, self.timeout = address, timeout
        self.generation = 0  # a new connection: executors made on the old one are stale
        self.epoch = 0
        self._channel: grpc.Channel | None = None
        self._stub: remote_executor_grpc_stub.RemoteExecutorGrpcStub | None = None
        self._lock = threading.RLock()
        _LIVE.add(self)

    def stub(self) -> remote_executor_grpc_stub.RemoteExecutorGrpcStub:
        with self._lock:
            begun_in = _begun_in.get()
            if begun_in is not None and begun_in != self.epoch:
                raise WorkerClosed("this computation began before the TFF runtime was closed")
            if self._stub is not None and self._stub.is_ready:
                return self._stub
            if self._channel is None:
                self._channel = grpc.insecure_channel(self.address,
                                                      _GRPC_OPTIONS + _KEEPALIVE)
                self._stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(self._channel)
            channel, stub = self._channel, self._stub
        # Waited for outside the lock: `close()` (Ctrl-C, SIGTERM) must not wait as long.
        deadline = time.monotonic() + self.timeout
        while not _ready(channel, stub, within=1.0):
            if self._channel is not channel:
                raise WorkerClosed(f"runtime.workers={self.address}: closed while waiting")
            if time.monotonic() > deadline:
                seen = "stopped answering" if self.generation else "did not answer"
                raise WorkerLost(f"runtime.workers={self.address}",
                                 f"the TFF worker there {seen} within {self.timeout:g} s",
                                 "start one there (worker_binary --port=<port>, the "
                                 "same TFF version), check host and port, or raise "
                                 "runtime.connect_timeout")
            time.sleep(0.05)
        with self._lock:
            if self._channel is not channel:
                raise WorkerClosed(f"runtime.workers={self.address}: closed while waiting")
            self.generation += 1  # a worker that came back has none of the old values
            return stub

    def close(self, grace: float = 0.0) -> None:
        with self._lock:
            self.epoch += 1
            self.stop(grace)

    def stop(self, grace: float = 0.0) -> None:
        with self._lock:
            channel, self._channel, self._stub = self._channel, None, None
            if channel is not None:
                channel.close()


def _until_disconnected(stub, within: float) -> None:
    """Wait until gRPC has seen the worker go: the call in flight then ends UNAVAILABLE,
    which TFF retries (and `WorkerService.stub` refuses), rather than CANCELLED by the
    channel's close racing the worker's exit."""
    deadline = time.monotonic() + within
    while stub is not None and stub.is_ready and time.monotonic() < deadline:
        time.sleep(0.01)


class _ServiceExecutors(executor_factory.ExecutorFactory):
    """One remote executor per cardinalities, on the service's current worker.

    TFF's ResourceManagingExecutorFactory keeps an executor for good, with the stub of
    the worker it was made on; once that worker is stopped (a TffRuntime block ended, a
    Ctrl-C, a new runtime installed), every later computation with the same
    cardinalities failed with "Cannot invoke RPC on closed channel". Here an executor
    is kept with the worker it belongs to (`WorkerService.generation`) and made again on
    the new one."""

    def __init__(self, service: WorkerService, dispose_batch_size: int = 20) -> None:
        self.service = service
        self.dispose_batch_size = dispose_batch_size
        self._executors: dict[tuple, tuple[int, remote_executor.RemoteExecutor]] = {}

    @staticmethod
    def _key(cardinalities) -> tuple:
        return tuple(sorted((str(k), v) for k, v in cardinalities.items()))

    def create_executor(self, cardinalities):
        cardinalities = {placements.CLIENTS: 0, **cardinalities}
        stub = self.service.stub()  # (re)starts the worker if it is not running
        generation, key = self.service.generation, self._key(cardinalities)
        kept = self._executors.get(key)
        if kept is not None and kept[0] == generation:
            return kept[1]
        executor = remote_executor.RemoteExecutor(stub,
                                                  dispose_batch_size=self.dispose_batch_size)
        executor.set_cardinalities(cardinalities)
        self._executors[key] = (generation, executor)
        return executor

    def clean_up_executor(self, cardinalities) -> None:
        kept = self._executors.pop(self._key({placements.CLIENTS: 0, **cardinalities}), None)
        if kept is not None and kept[0] == self.service.generation:
            kept[1].close()  # a stale one's worker, and its state, are gone already


class _ServiceContext(sync_execution_context.SyncExecutionContext):
    """TFF's synchronous context, its computations marked with the service's epoch."""

    def __init__(self, service: WorkerService, dispose_batch_size: int = 20,
                 **kwargs) -> None:
        super().__init__(executor_fn=_ServiceExecutors(service, dispose_batch_size), **kwargs)
        self.service = service

    def invoke(self, comp, arg):
        token = _begun_in.set(self.service.epoch)
        try:
            return super().invoke(comp, arg)
        finally:
            _begun_in.reset(token)


def allow_deep_computations() -> None:
    """Let protobuf parse TFF computations nested deeper than its default 100 levels.

    TFF builds a computation's proto by copying each part into its parent, and the
    upb runtime parses every copy with that depth limit: distributed DP's stack of
    aggregators (concat, rotation, clipping, discretisation, DP, two modular clips,
    SecAgg) inside FedAvg fails with "Error parsing message". The worker itself
    parses them without complaint."""
    try:
        from google._upb import _message
    except ImportError:  # another protobuf runtime: no such limit to lift
        return
    _message.SetAllowOversizeProtos(True)


def _compile(comp):
    """Secure sums become plain sums in simulation (TFF's test backend does the same)."""
    return compiler.desugar_and_transform_to_native(
        test_compiler.replace_secure_intrinsics_with_bodies(comp))


def worker_context(service, dispose_batch_size: int = 20) -> _ServiceContext:
    """TFF's synchronous context on one worker (ours, or one started elsewhere).

    TFF's remote executor tells the worker to drop the values it no longer needs 20 at a
    time; a call makes about five (the computation, its argument's parts, the result),
    so a worker keeps the arguments of its last ~4 calls. A sharded runtime's argument
    is a whole shard's client data: there each value is dropped as soon as it is done
    with (`dispose_batch_size=1`), so a worker holds one shard, not four."""
    return _ServiceContext(
        service, dispose_batch_size,
        compiler_fn=_compile,
        transform_args=tensorflow_computation.transform_args,
        transform_result=tensorflow_computation.transform_result)


def install_default_context(service: WorkerService, sharded=None) -> None:
    """Make `service` run every TFF computation (TFF's own default context is dropped
    here, while it has no worker yet, so its `__del__` has nothing to clean up); with
    `sharded` (the runtime.sharded options), `service` is a list of workers and a
    round's clients are cut into shards across them."""
    services = service if isinstance(service, list) else [service]
    if sharded is None:
        context = worker_context(services[0])
    else:
        from federated_research.runtime.sharding import ShardedContext

        context = ShardedContext([worker_context(s, 1) for s in services], sharded.shards,
                                 sharded.shards_in_flight)
    replaced = context_stack_impl.context_stack._stack[0]  # noqa: SLF001 - the default
    context_stack_impl.context_stack.set_default_context(context)
    if hasattr(replaced, "close") and replaced is not context:  # a ShardedContext's threads
        replaced.close()
    for previous in _current:
        if previous not in services:
            previous.close()
    _current[:] = services


class TffRuntime:
    """Context manager: TFF computations run on workers that end with the block.

    `options` is the `runtime` group's (runtime/local.py, runtime/sharded.py); without
    it, one local worker as `runtime=local`."""

    def __init__(self, log_path: Path | None = None, options=None) -> None:
        self.sharded = options if hasattr(options, "local_workers") else None
        calls = getattr(options, "max_concurrent_calls", None)
        if self.sharded is None:
            self.services = [WorkerService(log_path, concurrent_calls=calls)]
        else:
            count = self.sharded.local_workers
            self.services = [
                WorkerService(_numbered(log_path, i), restart=False,
                              concurrent_calls=self.sharded.max_concurrent_calls,
                              name=f"runtime.local_workers={count}")
                for i in range(count)]
            self.services += [RemoteWorker(a, self.sharded.connect_timeout)
                              for a in self.sharded.workers]
        self.service = self.services[0]

    def __enter__(self) -> TffRuntime:
        install_default_context(self.services if self.sharded else self.service, self.sharded)
        for service in self.services:
            if isinstance(service, WorkerService):
                service.launch()  # every process first, then the channels
        for service in self.services:
            service.stub()  # start now, from the main thread (see _die_with_parent)
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for service in self.services:
            service.close()

    @property
    def worker_pid(self) -> int | None:
        return self.service.process.pid if self.service.process else None

    @property
    def worker_pids(self) -> list[int]:
        return [s.process.pid for s in self.services if s.process is not None]


def _numbered(log_path: Path | None, index: int) -> Path | None:
    """tff_worker.log -> tff_worker_0.log, tff_worker_1.log, ..."""
    return None if log_path is None else log_path.with_stem(f"{log_path.stem}_{index}")


@atexit.register
def stop_all_workers() -> None:
    """Stop every worker this process started (also run at interpreter exit)."""
    for service in list(_LIVE):
        service.close(grace=2.0)


def _forget_parents_workers() -> None:
    # A forked child (e.g. a multiprocessing worker) must never signal its parent's
    # worker: not at exit, and not when it installs a runtime of its own.
    _LIVE.clear()
    _current.clear()


os.register_at_fork(after_in_child=_forget_parents_workers)
allow_deep_computations()
