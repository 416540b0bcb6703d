"""Where TFF computations run: the `runtime` group and the workers behind it.

`runtime=local` (the default) runs every computation on one TFF `worker_binary` this
program starts, owns and always stops (workers.py); `runtime=sharded` cuts a round's
clients into shards run by several workers at once and merges their partial
aggregates in shard order (sharded.py, sharding.py). The options (local.py,
sharded.py) load without TensorFlow, so a bad `runtime.*` value fails in the first
second; the worker machinery is imported on first use.
"""

from __future__ import annotations

_WORKERS = ("TffRuntime", "WorkerService", "WorkerClosed", "install_default_context",
            "stop_all_workers", "allow_deep_computations", "WORKER_BINARY")


def __getattr__(name: str):
    if name in _WORKERS:
        from federated_research.runtime import workers

        return getattr(workers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
