#!/usr/bin/env python3
"""A round of the framework against its compute floor: the same arithmetic in plain TensorFlow.

    .venv/bin/python scripts/floor_benchmark.py                          # embedded MNIST, CNN
    .venv/bin/python scripts/floor_benchmark.py --cache-dir ~/.tff mnist emnist shakespeare
    .venv/bin/python scripts/floor_benchmark.py --rounds 20 --set clients_per_round=20

For each dataset, in one process and interleaved round by round (round r of every
variant, then round r+1, so that a busy machine slows all of them alike):

* floor         - the round in plain TensorFlow, no TFF: the same sampled clients,
                  the same batches in the same order (read from the framework's own
                  round datasets, in memory, before timing), the same Keras model,
                  client SGD, example-weighted mean and server step; one
                  `tf.function` call a client, on tensors.
* tff_default   - the round as TFF's documentation builds it: the builder's default
                  client loop (`dataset.reduce`), each client's pipeline built from
                  its `ClientData` every round, tf.data's default options.
* +while_loop   - the same with the framework's client loop (algorithms.CLIENT_LOOP)
                  and model weights created as zeros (models.ModelSpec.tff_model_fn).
* +lean         - ... and tf.data's per-iterator rewrites and autotuning off.
* framework     - the framework's round (loop.RoundInputs: examples decoded once,
                  the next round's clients decoded while this one trains, lean
                  pipelines, weights created as zeros) and its bit accounting: what
                  a run pays. It runs first in each round and its time includes
                  decoding the clients it has not met, this round's and the next's.

The variants differ one step at a time, so the table says where the time between
tff_default and the floor goes. Every TFF variant trains from the same initial
state on the same batches; the script checks that their models stay equal bit for
bit (the speed-ups change nothing but time). The first round (tracing) is reported
apart; the figures are medians of the rest. Datasets: `mnist` (embedded), `emnist`
(FEMNIST digits, TFF's cache in --cache-dir), `shakespeare` (TFF's cache, the
`shakespeare_char_rnn` experiment with a small char model). Speed is measured here,
never in unit tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DATASETS = {
    "mnist": ["model=cnn"],
    "emnist": ["dataset=emnist", "model=cnn"],
    "shakespeare": ["experiment=shakespeare_char_rnn", "model.embedding_dim=64",
                    "model.rnn_units=256"],
}
VARIANTS = ["floor", "tff_default", "+while_loop", "+lean", "framework"]


def compose(dataset: str, cache_dir: str | None, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from federated_research.config import register_schemas

    register_schemas()
    overrides = [*DATASETS[dataset], "tracking.mlflow_uri=unused", *extra]
    if cache_dir and dataset != "mnist":
        overrides.append(f"dataset.cache_dir={cache_dir}")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


class Floor:
    """The round's arithmetic in plain TensorFlow: client SGD from the server weights on
    in-memory batches, the example-weighted mean of the deltas, the server SGD step.
    One `tf.function` call a client; the weights never leave TensorFlow."""

    def __init__(self, parts, cfg) -> None:
        import tensorflow as tf

        from federated_research.models import outputs_logits

        self.tf = tf
        self.model = parts.model.keras_fn()
        self.loss = parts.model.task.loss(from_logits=outputs_logits(self.model))
        self.client_lr = float(cfg.client_optimizer.learning_rate)
        self.server_lr = float(cfg.server_optimizer.learning_rate)
        start = parts.algorithm.process.get_model_weights(parts.initial_state)
        self.server = [tf.Variable(w) for w in start.trainable]  # the runs' initial model
        self.total = [tf.Variable(tf.zeros_like(w)) for w in start.trainable]
        self.examples = tf.Variable(0.0)
        x_spec, y_spec = parts.model.input_spec
        self.client = tf.function(self._client, input_signature=[
            tf.TensorSpec([None, *x_spec.shape[1:]], x_spec.dtype),
            tf.TensorSpec([None, *y_spec.shape[1:]], y_spec.dtype)])
        self.batch = parts.spec.batch_size
        self.server_step = tf.function(self._server_step)

    def _client(self, x, y):
        tf = self.tf
        variables = self.model.trainable_variables
        for v, w in zip(variables, self.server, strict=True):
            v.assign(w)
        count = tf.shape(x)[0]
        for start in tf.range(0, count, self.batch):
            end = tf.minimum(start + self.batch, count)
            with tf.GradientTape() as tape:
                loss = self.loss(y[start:end], self.model(x[start:end], training=True))
            for v, g in zip(variables, tape.gradient(loss, variables), strict=True):
                v.assign_sub(self.client_lr * tf.convert_to_tensor(g))  # embeddings: sparse
        n = tf.cast(count, tf.float32)
        for t, w, v in zip(self.total, self.server, variables, strict=True):
            t.assign_add(n * (w - v))
        self.examples.assign_add(n)

    def _server_step(self):
        for t, w in zip(self.total, self.server, strict=True):
            w.assign_sub(self.server_lr * t / self.tf.maximum(self.examples, 1.0))
            t.assign(self.tf.zeros_like(t))
        self.examples.assign(0.0)

    @property
    def weights(self) -> list:
        return [w.numpy() for w in self.server]

    def round(self, clients: list) -> None:
        """`clients`: each client's (x, y), its round's batches concatenated in order."""
        for x, y in clients:
            self.client(x, y)
        self.server_step()


def in_memory(datasets: list) -> list:
    """Each round dataset's batches, concatenated, as numpy arrays (the floor's input)."""
    import numpy as np

    out = []
    for dataset in datasets:
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True) or ([], [])
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return out


def bench(cfg, rounds: int, warm: bool) -> dict[str, list[float]]:
    import numpy as np
    import tensorflow_federated as tff

    from federated_research.build import build_run_parts
    from federated_research.data.client_examples import lean
    from federated_research.loop import RoundInputs, RunState, round_metrics
    from federated_research.seeds import Stream, int_seed

    parts = build_run_parts(cfg)
    if parts.algorithm.pooled_shuffle_buffer is not None or cfg.algorithm.get("proximal_strength"):
        sys.exit("error: the floor is FedAvg's round: pick algorithm=fedavg")
    spec, data, task = parts.spec, parts.data, parts.data.task
    model = parts.model

    def model_fn():  # the weights created by their initialisers, as TFF's tutorials do
        return tff.learning.models.from_keras_model(
            model.keras_fn(), input_spec=model.input_spec,
            loss=model.task.loss(model.from_logits), metrics=model.task.metrics())

    default_process = tff.learning.algorithms.build_weighted_fed_avg(  # TFF's defaults
        model_fn, client_optimizer_fn=_optimizer(cfg.client_optimizer),
        server_optimizer_fn=_optimizer(cfg.server_optimizer),
        model_aggregator=tff.aggregators.MeanFactory())
    ours = parts.algorithm.process
    weights = ours.get_model_weights(parts.initial_state)
    states = {"tff_default": default_process.set_model_weights(default_process.initialize(),
                                                                weights),
              "+while_loop": parts.initial_state, "+lean": parts.initial_state,
              "framework": parts.initial_state}
    floor = Floor(parts, cfg)
    inputs = RoundInputs(parts)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    run = RunState(state=parts.initial_state)
    if warm:
        for round_num in range(rounds):
            inputs(round_num)

    def pipelines(round_num: int, sampled: list[str], options: bool) -> list:
        made = [task.client_batches(data.train.create_tf_dataset_for_client(cid), spec.epochs,
                                    spec.batch_size, spec.shuffle_buffer,
                                    seed=int_seed(spec.seed, Stream.SHUFFLE, round_num, i))
                for i, cid in enumerate(sampled)]
        return [lean(d) for d in made] if options else made

    for round_num in range(rounds):
        start = time.perf_counter()  # first: it pays for decoding its clients' examples
        sampled, round_data = inputs(round_num)
        output = ours.next(states["framework"], round_data)
        round_metrics(output, parts.comm, run, len(sampled), 0.0)
        states["framework"] = output.state
        inputs.examples.wait()  # its decoding ahead is its own cost, not the next variant's
        seconds["framework"].append(time.perf_counter() - start)
        floor_data = in_memory(inputs(round_num)[1])  # not timed: the floor's data is ready
        start = time.perf_counter()
        floor.round(floor_data)
        seconds["floor"].append(time.perf_counter() - start)
        for name, process, options in [("tff_default", default_process, False),
                                       ("+while_loop", ours, False), ("+lean", ours, True)]:
            start = time.perf_counter()
            states[name] = process.next(states[name], pipelines(round_num, sampled,
                                                                options)).state
            seconds[name].append(time.perf_counter() - start)
        print(f"  round {round_num}: " + "  ".join(f"{v} {seconds[v][-1]:.2f}s"
                                                  for v in VARIANTS), flush=True)
    final = {name: default_process.get_model_weights(state) if name == "tff_default"
             else ours.get_model_weights(state) for name, state in states.items()}
    reference = final["tff_default"].trainable
    for name, w in final.items():
        same = all(np.array_equal(a, b) for a, b in zip(reference, w.trainable, strict=True))
        print(f"  {name}: model after {rounds} rounds equal to tff_default's bit for bit: {same}")
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, floor.weights, strict=True))
    print(f"  floor: largest difference from tff_default's model {gap:.2g} "
          "(same arithmetic, different kernels and order of sums)")
    return seconds


def _optimizer(node):
    import hydra

    return hydra.utils.instantiate(node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # (no list default: Python 3.11's argparse checks a list default against `choices`
    # as one value, and fails whenever no dataset is named, e.g. after `--set a=1`)
    parser.add_argument("datasets", nargs="*", choices=list(DATASETS),
                        help="mnist (default), emnist, shakespeare")
    parser.add_argument("--rounds", type=int, default=12, help="rounds, the first untimed")
    parser.add_argument("--cache-dir", help="folder with TFF's emnist_all.sqlite and "
                        "shakespeare.sqlite (default: TFF's own, ~/.tff)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every dataset, "
                        "e.g. clients_per_round=20 client.epochs=2")
    parser.add_argument("--warm", action="store_true", help="decode the timed rounds' "
                        "clients before timing: the rounds of a long run, once every client "
                        "has been seen (default: the framework decodes them as they come)")
    parser.add_argument("--update-error", action="store_true", help="keep log_update_error "
                        "on in the framework's round (off by default: a diagnostic the "
                        "floor does not compute)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first round traces)")

    from federated_research.runtime import TffRuntime

    for dataset in args.datasets or ["mnist"]:
        extra = [f"log_update_error={str(args.update_error).lower()}", *args.set]
        cfg = compose(dataset, args.cache_dir, extra)
        print(f"{dataset}: {' '.join(DATASETS[dataset] + extra)}", flush=True)
        with TffRuntime(Path(os.devnull)):
            seconds = bench(cfg, args.rounds, args.warm)
        report(dataset, seconds)


def report(dataset: str, seconds: dict[str, list[float]]) -> None:
    """Median s/round (rounds after the first), ratio to the floor, spread, first round."""
    median = {v: statistics.median(s[1:]) for v, s in seconds.items()}
    rounds = len(seconds["floor"])
    print(f"\n{dataset}: median s/round over rounds 2-{rounds} (round 1 apart); "
          "ratio to the floor")
    print(f"{'':<10}" + "".join(f"{v:>20}" for v in VARIANTS))
    print(f"{'median':<10}" + "".join(
        f"{median[v]:>12.3f} ({median[v] / median['floor']:4.2f}x)" for v in VARIANTS))
    print(f"{'min-max':<10}" + "".join(
        f"{min(seconds[v][1:]):>14.3f}-{max(seconds[v][1:]):<5.3f}" for v in VARIANTS))
    print(f"{'round 1':<10}" + "".join(f"{seconds[v][0]:>20.3f}" for v in VARIANTS),
          flush=True)


if __name__ == "__main__":
    main()
