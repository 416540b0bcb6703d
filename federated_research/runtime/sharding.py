"""One computation across several TFF workers: the round's clients cut into shards.

TFF 0.87 compiles a computation with one aggregation (or several independent ones)
into a *mergeable form*: `up_to_merge` (the work up to the aggregation, on a slice of
the clients, ending in a partial aggregate at the server), `merge` (two partials into
one) and `after_merge` (the server's work on the merged aggregate). Its own
`MergeableCompExecutionContext` runs that form on several workers, but its remote
executor blocks the one event loop they share, so the workers take turns, and it
merges partials (and concatenates client results) in the order the workers finish,
so a round's numbers depend on timing. `ShardedContext` keeps TFF's compiler and does
the scheduling:

  * the clients are cut into `shards` contiguous slices (TFF's own cut: sizes
    ceil(remaining / slices left), larger first), which depend only on the clients and
    `shards`, never on how many workers there are;
  * each slice's `up_to_merge` runs on whichever worker is free, the slices in
    threads, so the workers' calls overlap;
  * partials are merged left to right in shard order, and per-client results are
    put back in shard order: `shards=K` gives the same numbers bit for bit with any
    number of workers;
  * a computation without client data (`initialize`, reading weights) runs on the
    first worker, unchanged.

An algorithm whose aggregations depend on each other (an aggregate broadcast back and
aggregated again, as PowerSGD's two passes) has no mergeable form: `mergeable` refuses
it with one line, before the first round.
"""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.backends.test import compiler as test_compiler
from tensorflow_federated.python.core.impl.computation import computation_impl
from tensorflow_federated.python.core.impl.context_stack import context_base
from tensorflow_federated.python.core.impl.execution_contexts import (
    mergeable_comp_execution_context as tff_mergeable,
)
from tensorflow_federated.python.core.impl.executors import cardinalities_utils
from tensorflow_federated.python.core.impl.types import (
    computation_types,
    placements,
    type_analysis,
    type_conversions,
)


class NotMergeable(ValueError):
    """The computation's aggregations depend on each other: it cannot be sharded."""


@functools.lru_cache(maxsize=64)
def mergeable(comp) -> tff_mergeable.MergeableCompForm:
    """`comp` in TFF's mergeable form (secure sums as their simulation bodies first, as
    the local runtime runs them, with the Python containers of its result kept)."""
    plain = computation_impl.ConcreteComputation.with_type(
        test_compiler.replace_secure_intrinsics_with_bodies(comp), comp.type_signature)
    try:
        return mergeable_comp_compiler.compile_to_mergeable_comp_form(plain)
    except ValueError as error:  # TFF's message is the whole syntax tree: not for users
        raise NotMergeable(
            "its aggregations depend on each other (an aggregate is sent back to the "
            "clients and aggregated again), which TFF's mergeable form cannot split "
            "across workers") from error
    except TypeError as error:  # a partial aggregate TFF cannot type or merge
        raise NotMergeable(f"TFF cannot split it into mergeable parts ({type(error).__name__})"
                           ) from error


def _has_client_data(type_spec) -> bool:
    """Whether an argument of this type carries per-client values to cut into shards."""
    if type_spec is None:
        return False
    return not type_analysis.contains_only(
        type_spec, lambda t: not (isinstance(t, computation_types.FederatedType)
                                  and t.placement is placements.CLIENTS and not t.all_equal))


def _server_only(type_spec) -> bool:
    return type_analysis.contains_only(
        type_spec, lambda t: not isinstance(t, computation_types.FederatedType) or t.all_equal)


def split(arg, type_spec, shards: int) -> list:
    """The argument's clients in `shards` contiguous slices (fewer when there are fewer
    clients); everything else copied into each. TFF's cut, so that the slices are
    those its own mergeable context would make."""
    return tff_mergeable._split_value_into_subrounds(arg, type_spec, shards)  # noqa: SLF001


def first_client(arg, type_spec):
    """The slice cut down to its first client: the argument of an `after_merge` whose
    result is at the server only (its client work is compiled away, but its clients'
    data would still be sent)."""
    clients = cardinalities_utils.infer_cardinalities(arg, type_spec)[placements.CLIENTS]
    return tff_mergeable._split_value_into_subrounds(arg, type_spec, clients)[0]  # noqa: SLF001


class ShardedContext(context_base.SyncContext):
    """Runs computations with client data as `shards` slices over several workers.

    `workers` are synchronous contexts, one per TFF worker (workers.py's), each
    called from one thread at a time; `shards_in_flight` bounds how many slices
    are in flight at once, and with it how many slices' client data are held in
    memory in this process."""

    def __init__(self, workers: Sequence[context_base.SyncContext], shards: int,
                 shards_in_flight: int | None = None,
                 on_call: Callable[[int, str, float, float], None] | None = None) -> None:
        if not workers:
            raise ValueError("a sharded runtime needs at least one worker")
        self.workers = list(workers)
        self.shards = shards
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(self.workers)):
            self._free.put(index)
        width = min(shards_in_flight or len(self.workers), len(self.workers))
        self._pool = ThreadPoolExecutor(width, thread_name_prefix="shard")
        self._on_call = on_call  # (worker, what, start, end): tests see the overlap

    def _each(self, what: str, comp, args: list) -> list:
        """`comp` on every argument, on free workers at once; the results in the
        arguments' order. The first failure (a lost worker) ends the round at once:
        the shards not yet begun are dropped, not run."""
        futures = [self._pool.submit(self._call, what, comp, a) for a in args]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            raise failed.exception()
        return [f.result() for f in futures]

    def _call(self, what: str, comp, arg):
        index = self._free.get()
        try:
            start = time.monotonic()
            result = self.workers[index].invoke(comp, arg)
            if self._on_call is not None:
                self._on_call(index, what, start, time.monotonic())
            return result
        finally:
            self._free.put(index)

    def invoke(self, comp, arg=None):
        parameter = comp.type_signature.parameter
        if arg is None or not _has_client_data(parameter):
            return self.workers[0].invoke(comp, arg)
        form = mergeable(comp)
        slices = split(arg, form.up_to_merge.type_signature.parameter, self.shards)
        partials = self._each("up_to_merge", form.up_to_merge, slices)
        merged = partials[0]
        for partial in partials[1:]:  # left to right: the same sums whoever finished first
            merged = self._call("merge", form.merge, structure.Struct.unnamed(merged, partial))
        result_type = form.after_merge.type_signature.result
        if _server_only(result_type):
            one = first_client(slices[0], form.up_to_merge.type_signature.parameter)
            result = self._call("after_merge", form.after_merge,
                                structure.Struct.unnamed(one, merged))
        else:
            parts = self._each("after_merge", form.after_merge,
                               [structure.Struct.unnamed(s, merged) for s in slices])
            result = tff_mergeable._repackage_partitioned_values(parts, result_type)  # noqa: SLF001
        return type_conversions.type_to_py_container(result, result_type)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
