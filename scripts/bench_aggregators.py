#!/usr/bin/env python3
"""Round time of every aggregator (and distributor) against `mean`, in one process.

    .venv/bin/python scripts/bench_aggregators.py                 # every aggregator option, CNN
    .venv/bin/python scripts/bench_aggregators.py compression drive topk --rounds 8
    .venv/bin/python scripts/bench_aggregators.py "quantize:bits=2" "drive:zeroing=false"
    .venv/bin/python scripts/bench_aggregators.py "mean+quantize" --set model=linear
    .venv/bin/python scripts/bench_aggregators.py topk "topk:error_feedback=ef14" \
        "topk:error_feedback=ef14@disk"
    .venv/bin/python scripts/bench_aggregators.py drive "drive~dp_fixed" "mean~secure" \
        "mean~distributed_dp:bits=16"

A method is an aggregator option, optionally with `:key=value,...` overrides of its
node, optionally followed by `+<distributor option>` (downlink), by `~<privacy option>`
(with `:key=value,...` of its own) and by `@disk` (its clients' states in the disk
store; the memory store otherwise). All methods train
the same model from the same initial weights on the same clients each round, in
the same process and TFF worker; rounds are interleaved (round r of every method,
then round r+1) so that a busy machine slows all of them alike. The first round
(tracing) is reported apart; the ratio is the median round time against `mean`'s.
Speed is measured here, never in unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _method_overrides(method: str) -> list[str]:
    """`drive:bits=1,zeroing=false+quantize~dp_fixed:clip=1@disk` -> Hydra overrides."""
    method, _, store = method.partition("@")
    method, _, privacy = method.partition("~")
    uplink, _, downlink = method.partition("+")
    name, _, args = uplink.partition(":")
    overrides = [f"aggregator={name}"]
    overrides += [f"aggregator.{kv}" for kv in args.split(",") if kv]
    if downlink:
        name, _, args = downlink.partition(":")
        overrides += [f"distributor={name}"]
        overrides += [f"distributor.{kv}" for kv in args.split(",") if kv]
    if privacy:
        name, _, args = privacy.partition(":")
        overrides += [f"privacy={name}", *(f"privacy.{kv}" for kv in args.split(",") if kv)]
    return overrides + ([f"client_state.store={store}"] if store else [])


def _all_aggregators() -> list[str]:
    names = sorted(p.stem for p in (ROOT / "conf" / "aggregator").glob("*.yaml"))
    return [n for n in names if n != "mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("methods", nargs="*", help="default: every aggregator option")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds after the first")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every method, "
                        "e.g. model=linear clients_per_round=5")
    parser.add_argument("--update-error", action="store_true", help="keep log_update_error "
                        "on (off by default: it is a diagnostic, not part of a method)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    methods = ["mean", *[m for m in (args.methods or _all_aggregators()) if m != "mean"]]

    from hydra import compose, initialize_config_dir

    from federated_research.config import register_schemas, validate

    register_schemas()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        common = [f"log_update_error={str(args.update_error).lower()}",
                  "tracking.mlflow_uri=unused", *args.set]
        cfgs = {m: compose("config", overrides=[*common, *_method_overrides(m)])
                for m in methods}
    for cfg in cfgs.values():
        validate(cfg)

    from federated_research.runtime import TffRuntime

    with TffRuntime(Path(os.devnull)):
        results = _bench(cfgs, args.rounds)
    base = statistics.median(results["mean"]["seconds"][1:])
    print(f"\n{'method':<40} {'1st s':>6} {'median s':>9} {'ratio':>6} {'up bits/client':>15} "
          f"{'down bits/client':>16}")
    for method, r in results.items():
        median = statistics.median(r["seconds"][1:])
        r["ratio"] = median / base
        print(f"{method:<40} {r['seconds'][0]:>6.2f} {median:>9.3f} {r['ratio']:>6.3f} "
              f"{r['up']:>15,} {r['down']:>16,}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _bench(cfgs: dict, rounds: int) -> dict:
    import tempfile

    from federated_research.build import build_run_parts
    from federated_research.client_state import build_store
    from federated_research.data.client_examples import ClientExamples
    from federated_research.loop import (
        RunState,
        client_datasets,
        next_round,
        reported_bits,
        sample_clients,
    )

    first = next(iter(cfgs.values()))
    parts = {m: build_run_parts(cfg) for m, cfg in cfgs.items()}
    data = parts["mean"].data
    folder = tempfile.TemporaryDirectory()  # the disk stores' files
    runs = {m: RunState(p.initial_state, clients=build_store(
        cfgs[m].client_state.store, p.algorithm.client_state, list(data.train.client_ids),
        Path(folder.name) / str(i))) for i, (m, p) in enumerate(parts.items())}
    results = {m: {"seconds": [], "down": p.comm.model.down,
                   "up": p.comm.model.up_bits(p.spec.clients_per_round),  # secure sums grow
                   "measured": []} for m, p in parts.items()}
    client_ids = list(data.train.client_ids)
    examples = ClientExamples(data.train, data.task)  # decoded once, shared by every method
    for client_id in client_ids:  # all of them, so that memory growth is the stores'
        examples(client_id)
    import psutil

    def held() -> int:
        return sum(r.clients.memory_bytes() for r in runs.values() if r.clients is not None)

    rss_before = held_before = 0
    for round_num in range(rounds + 1):
        sampled = sample_clients(client_ids, first.clients_per_round, first.seed, round_num)
        for client_id in sampled:  # decoded before timing: the methods' rounds are compared
            examples(client_id)
        for method, p in parts.items():
            start = time.perf_counter()
            datasets = client_datasets(data, sampled, p.spec, round_num, examples)
            run = runs[method]  # reads and stages the clients' states, if they keep any
            output = next_round(p.algorithm.process, run, datasets, sampled, round_num)[0]
            run.state = output.state
            # variable-length codes (qsgd, stc): the bits the clients' codes really took
            results[method]["measured"].append(reported_bits(output.metrics) / len(sampled))
            if run.clients is not None:
                run.clients.commit()
            results[method]["seconds"].append(time.perf_counter() - start)
        print(f"round {round_num}: " + ", ".join(
            f"{m} {r['seconds'][-1]:.2f}s" for m, r in results.items()), flush=True)
        if round_num == 0:  # after the first round's tracing: growth from here is the stores'
            rss_before, held_before = psutil.Process().memory_info().rss, held()
    grown, stored = psutil.Process().memory_info().rss - rss_before, held() - held_before
    if stored:
        print(f"after the first round, the run's resident memory grew by {grown:,} bytes; the "
              f"memory stores by {stored:,} bytes ({grown / stored:.2f}x)")
    for r in results.values():  # up: the fixed part plus the codes' mean measured length
        r["up"] = round(r["up"] + statistics.mean(r.pop("measured")))
    _report_stores(runs, results)
    folder.cleanup()
    return results


def _report_stores(runs: dict, results: dict) -> None:
    """What each method's client-state store holds after the rounds."""
    for method, run in runs.items():
        if run.clients is not None:
            results[method].update(clients_stored=len(run.clients.written),
                                   state_bytes=run.clients.state_bytes(),
                                   memory_bytes=run.clients.memory_bytes(),
                                   disk_bytes=run.clients.disk_bytes())
            print(f"{method}: {len(run.clients.written)} clients' states of "
                  f"{run.clients.state_bytes():,} bytes; store {run.clients.memory_bytes():,} "
                  f"bytes in memory, {run.clients.disk_bytes():,} on disk")


if __name__ == "__main__":
    main()
