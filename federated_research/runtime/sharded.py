"""`runtime=sharded`: a round's clients cut into shards, run by several TFF workers at once.

The round's sampled clients are cut into `shards` contiguous slices; each slice runs the
round up to its aggregation on whichever worker is free, and the partial aggregates are
merged in shard order (runtime/sharding.py), so a run's numbers depend on `shards`,
never on how many workers there are or which finished first. Workers are started here
(`local_workers`, owned and always stopped like `local`'s) or elsewhere (`workers`,
`host:port` of a `worker_binary --port=<port>` started by hand, SLURM or Ray; TFF's gRPC
is unauthenticated: a trusted network or a tunnel only).

More shards than workers bound memory: a call holds one shard's clients, and at most
`shards_in_flight` calls are in flight (default: one per worker). `max_concurrent_calls`
means what it means under `local`: clients a worker trains at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from federated_research.options import Options, require
from federated_research.runtime.local import check_cache, check_concurrency

EXAMPLE_WORKER = "node1:8000"


@dataclass
class Sharded(Options):
    shards: int = 2                 # contiguous slices of a round's clients
    local_workers: int = 2          # workers started on this machine
    workers: list[str] = field(default_factory=list)  # host:port of workers started elsewhere
    max_concurrent_calls: int | None = None  # clients a worker trains at once; null: all
    shards_in_flight: int | None = None  # shards being run at once; null: one per worker
    connect_timeout: float = 60.0   # seconds to wait for a remote worker to answer
    examples_cache_mib: int | None = 1024  # decoded client examples kept here; null: all

    def check(self) -> None:
        require(self.shards >= 1, "shards", self.shards, "must be 1 or more", 4)
        require(self.local_workers >= 0, "local_workers", self.local_workers,
                "must be 0 or more", 2)
        listed = f"[{','.join(self.workers)}]"
        for address in self.workers:
            require(_is_address(address), "workers", listed,
                    f"{address} is not host:port (port 1-65535)", f"[{EXAMPLE_WORKER}]")
        require(len(set(self.workers)) == len(self.workers), "workers", listed,
                "names a worker twice", f"[{EXAMPLE_WORKER}]")
        require(self.local_workers + len(self.workers) >= 1, "local_workers",
                self.local_workers, "no worker to run on: start some here or list "
                "runtime.workers", 2)
        check_concurrency(self.max_concurrent_calls, "max_concurrent_calls")
        check_concurrency(self.shards_in_flight, "shards_in_flight")
        check_cache(self.examples_cache_mib)
        require(self.connect_timeout > 0, "connect_timeout", self.connect_timeout,
                "must be more than 0 seconds", 60)

    @property
    def worker_count(self) -> int:
        return self.local_workers + len(self.workers)


def _is_address(text: str) -> bool:
    host, _, port = str(text).rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535
