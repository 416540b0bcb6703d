"""Resident memory of the run and of its TFF worker, logged every round.

Memory that grows round after round is how long federated runs die; logging it
as `system/*` puts the curve beside the loss in MLflow and TensorBoard, where a
leak shows long before it kills the run.
"""

from __future__ import annotations

import ctypes
import os
import sys

import psutil

MIB = 2**20
WORKER_NAME = "worker_binary"
# glibc's malloc keeps freed memory in the process in two ways that grow a long
# run round after round (scripts/memory_profile.py): an arena for each thread
# that allocates concurrently, up to 8 per core, which TensorFlow's many threads
# fragment (the TFF worker grew ~1 MiB a round holding nothing); and, in this
# process, a threshold for returning big blocks to the system that rises each
# time one is freed, so each round's megabyte-sized buffers (the model and the
# client datasets, serialised to and from the worker) end up in the heap,
# fragmented. Both get two arenas; this process also a fixed threshold (the
# worker, where the training allocates, would pay for it in speed). The threshold is
# 32 MiB, above a model-sized buffer (6.6 MB for the CNN), so that the model crossing
# to and from the worker reuses the heap's blocks: at 128 KiB every copy of it was a
# fresh mmap, faulted in page by page, 20% of a round (scripts/memory_profile.py, 300
# rounds: 0.685 s a round against 0.852, the run's RSS +0.2% against +0.5% from round
# 50, its level 72 MiB higher). Environment variables of the same names win.
ARENAS = ("MALLOC_ARENA_MAX", "2", -8)  # (variable, value, mallopt parameter)
MMAP_THRESHOLD = ("MALLOC_MMAP_THRESHOLD_", str(32 * 2**20), -3)


def _setting(name: str, value: str) -> str:
    return os.environ.get(name, value)


def tune_malloc() -> None:
    """Apply the settings above to this process (call before TensorFlow starts its
    threads)."""
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
            for name, value, parameter in (ARENAS, MMAP_THRESHOLD):
                mallopt(parameter, int(_setting(name, value)))
        except (AttributeError, OSError, ValueError):  # not glibc: nothing to set
            pass


def worker_malloc_env() -> dict[str, str]:
    """The environment that caps a child process's arenas (TFF's worker reads it at start)."""
    return {ARENAS[0]: _setting(ARENAS[0], ARENAS[1])}


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of `proc` and all its descendants (a run and its TFF workers): what
    the benchmark scripts sample for a peak. 0 once `proc` is gone."""
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in tree:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # exited meanwhile
            continue
    return total


def rss_metrics() -> dict[str, float]:
    """`system/rss_mib` (this process) and `system/worker_rss_mib` (its TFF workers)."""
    me = psutil.Process()
    worker = 0
    for child in me.children():
        try:
            if child.name() == WORKER_NAME:
                worker += child.memory_info().rss
        except psutil.Error:  # a worker that just exited
            continue
    return {"system/rss_mib": me.memory_info().rss / MIB, "system/worker_rss_mib": worker / MIB}
