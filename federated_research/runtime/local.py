"""`runtime=local`: every computation on one TFF worker this program starts (the default).

A round's clients all go to that worker in one call: its memory grows with the clients
a round (about 20 MB each for the CNN). For hundreds of clients a round, use
`runtime=sharded` (even with one worker: its shards bound what a call holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from federated_research.options import Options, require


@dataclass
class Local(Options):
    # clients the worker trains at once (its --max_concurrent_computation_calls); null: all
    max_concurrent_calls: int | None = None
    # decoded client examples kept in this process (data/client_examples.py); null: all
    examples_cache_mib: int | None = 1024

    def check(self) -> None:
        check_concurrency(self.max_concurrent_calls, "max_concurrent_calls")
        check_cache(self.examples_cache_mib)

    @property
    def shards(self) -> int:
        return 1


def check_cache(value: int | None) -> None:
    require(value is None or value >= 1, "examples_cache_mib", value,
            "must be 1 or more (MiB; or null: keep every client met)", 1024)


def check_concurrency(value: int | None, key: str) -> None:
    require(value is None or value >= 1, key, value, "must be 1 or more (or null: no limit)", 2)
