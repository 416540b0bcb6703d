#!/usr/bin/env python3
"""Pre-train the character model centrally, for `experiment=shakespeare_finetune`.

    .venv/bin/python scripts/pretrain_char_model.py --out pretrained/char_rnn.keras
    .venv/bin/python scripts/pretrain_char_model.py --text my_corpus.txt --steps 2000
    .venv/bin/python scripts/pretrain_char_model.py --tutorial-weights   # needs internet

TFF's text-generation tutorial starts from a GRU it downloads, pre-trained on
Dickens. Without the internet, this trains the same architecture (sizes as
options) on Shakespeare's training text, read with TFF's loader from
`--cache-dir` (downloaded there by TFF when missing), or on any text file
(`--text`, one snippet a line, the last tenth held out), and saves a Keras model
that `model=keras_file model.path=<file>` fine-tunes with federated training.

`--tutorial-weights` fetches the tutorial's published model instead and maps
its 86-character vocabulary onto the 90 ids used here (the same characters,
shifted by one, plus padding, out-of-vocabulary, beginning and end ids).

It prints the held-out loss and accuracy (real characters only) before and
after, and saves the model with the same ids, layers and masking as
`model=char_rnn`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

TUTORIAL_URL = "https://storage.googleapis.com/tff-models-public/dickens_rnn.batch8.kerasmodel"


def text_snippets(path: str, held_out: float = 0.1):
    """(train, held-out) datasets of `snippets` from a text file, one snippet a line."""
    import tensorflow as tf

    from federated_research.errors import ConfigError

    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError as exc:
        raise ConfigError(f"--text={path}", f"cannot be read ({exc.strerror})",
                          "pass a readable text file") from None
    if len(lines) < 2:
        raise ConfigError(f"--text={path}", "needs at least two non-empty lines",
                          "pass a text file with some text in it")
    cut = max(1, int(len(lines) * (1 - held_out)))
    cut = min(cut, len(lines) - 1)

    def dataset(part):
        return tf.data.Dataset.from_tensor_slices({"snippets": part})

    return dataset(lines[:cut]), dataset(lines[cut:])


def shakespeare_snippets(cache_dir: str | None):
    """(train, test) snippets of every role, through TFF's loader."""
    import tensorflow_federated as tff

    from federated_research.data.shakespeare import CACHE_FILE
    from federated_research.data.tff_cache import load_cached

    train, test = load_cached(tff.simulation.datasets.shakespeare.load_data, CACHE_FILE,
                              cache_dir)
    return (train.create_tf_dataset_from_all_clients(seed=0),
            test.create_tf_dataset_from_all_clients(seed=0))


def from_tutorial(url: str):
    """The tutorial's published GRU with its 86 ids mapped onto ours (id + 1).

    Rows and columns for padding, out-of-vocabulary, beginning and end ids are
    new: zero embeddings, and output biases below every character's so the model
    first predicts as the tutorial's did; fine-tuning learns the end id.
    """
    import numpy as np
    import tensorflow as tf

    from federated_research.data.shakespeare import CHAR_VOCAB, VOCAB_SIZE
    from federated_research.errors import ConfigError
    from federated_research.models.keras_file import load, with_state

    try:
        path = tf.keras.utils.get_file(origin=url, fname=Path(url).name)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTP errors, timeouts
        raise ConfigError(f"--tutorial-weights={url}", f"could not be downloaded ({exc})",
                          "train one here instead: leave out --tutorial-weights") from None
    tutorial = load(path, key="--tutorial-weights")
    chars = len(CHAR_VOCAB)
    embedding, dense = tutorial.layers[0], tutorial.layers[-1]
    if not (isinstance(embedding, tf.keras.layers.Embedding)
            and isinstance(dense, tf.keras.layers.Dense)
            and embedding.input_dim == chars and dense.units == chars):
        raise ConfigError(f"--tutorial-weights={url}", f"is not an Embedding({chars}) ... "
                          f"Dense({chars}) model like the tutorial's",
                          "pass the tutorial's model, or leave out --tutorial-weights")
    # the same layers over 90 ids, for batches of any size, without state
    config = with_state(tutorial.get_config(), stateful=False, batch_size=None)
    for layer in config["layers"]:
        if layer["class_name"] == "Embedding":
            layer["config"]["input_dim"] = VOCAB_SIZE
    config["layers"][-1]["config"]["units"] = VOCAB_SIZE
    model = type(tutorial).from_config(config)
    for old, new in zip(tutorial.layers, model.layers, strict=True):
        values = old.get_weights()
        if old is embedding:
            table = np.zeros((VOCAB_SIZE, values[0].shape[1]), values[0].dtype)
            table[1:chars + 1] = values[0]
            values = [table]
        elif old is dense:
            kernel = np.zeros((values[0].shape[0], VOCAB_SIZE), values[0].dtype)
            kernel[:, 1:chars + 1] = values[0]
            bias = np.full(VOCAB_SIZE, values[1].min() - 10.0, values[1].dtype)
            bias[1:chars + 1] = values[1]
            values = [kernel, bias]
        new.set_weights(values)
    return model


def train_central(train, held_out, args):
    """Keras fit on the pooled text, with the federated runs' batching, loss and metrics."""
    import tensorflow as tf

    from federated_research.data.shakespeare import VOCAB_SIZE, CharPrediction
    from federated_research.models.char_rnn import build_char_rnn

    tf.keras.utils.set_random_seed(args.seed)
    task = CharPrediction(args.seq_length)
    model = build_char_rnn((args.seq_length,), VOCAB_SIZE, args.embedding_dim, args.rnn_units,
                           args.rnn_layers)
    model.compile(optimizer=tf.keras.optimizers.Adam(args.learning_rate),
                  loss=task.loss(from_logits=True), metrics=task.metrics())
    batches = task.client_batches(train, epochs=1, batch_size=args.batch_size,
                                  shuffle_buffer=args.shuffle_buffer, seed=args.seed)
    held = task.eval_batches(held_out, 256).cache()
    before = model.evaluate(held, verbose=0, return_dict=True)
    model.fit(batches.repeat() if args.steps else batches, epochs=args.epochs,
              steps_per_epoch=args.steps, verbose=2)
    return model, before, held


def save_uncompiled(model, out: Path) -> None:
    """Without the training's loss and metrics (ours and TFF's classes), so that a plain
    `tf.keras.models.load_model(out)` reads it too."""
    import tensorflow as tf

    plain = tf.keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    plain.save(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="pretrained/char_rnn.keras",
                        help="where to save the model (.keras or .h5)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cache-dir", default=None,
                        help="folder with TFF's shakespeare.sqlite (default: TFF's, ~/.tff)")
    source.add_argument("--text", help="train on this text file instead (one snippet a line)")
    source.add_argument("--tutorial-weights", nargs="?", const=TUTORIAL_URL, metavar="URL",
                        help="fetch the tutorial's pre-trained model instead of training")
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--rnn-units", type=int, default=1024)
    parser.add_argument("--rnn-layers", type=int, default=1)
    parser.add_argument("--seq-length", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None,
                        help="batches per epoch (default: one pass over the text)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from federated_research import runtime
    from federated_research.errors import ConfigError

    runtime.install_default_context(runtime.WorkerService())  # TFF's own would warn at exit

    try:
        for key in ("embedding_dim", "rnn_units", "rnn_layers", "seq_length", "batch_size",
                    "shuffle_buffer", "epochs"):
            if getattr(args, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')}={getattr(args, key)}",
                                  "must be at least 1", "pass a positive number")
        if args.steps is not None and args.steps < 1:
            raise ConfigError(f"--steps={args.steps}", "must be at least 1",
                              "pass e.g. --steps 500, or leave it out for one pass")
        out = Path(args.out)
        if out.suffix not in (".keras", ".h5"):
            raise ConfigError(f"--out={out}", "needs a .keras or .h5 name",
                              "pass e.g. --out pretrained/char_rnn.keras")
        if args.tutorial_weights:
            model = from_tutorial(args.tutorial_weights)
            print(f"converted the tutorial's model from {args.tutorial_weights}")
        else:
            train, held_out = (text_snippets(args.text) if args.text
                               else shakespeare_snippets(args.cache_dir))
            model, before, held = train_central(train, held_out, args)
            after = model.evaluate(held, verbose=0, return_dict=True)
            print(f"held-out loss {before['loss']:.4f} -> {after['loss']:.4f}, accuracy "
                  f"{before['accuracy']:.4f} -> {after['accuracy']:.4f} "
                  f"({int(after['num_tokens'])} characters)")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_uncompiled(model, out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved {model.count_params():,} parameters to {out}; fine-tune it with: "
          f"python -m federated_research.train experiment=shakespeare_finetune "
          f"model.path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
