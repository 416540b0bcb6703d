"""Federated Shakespeare: TFF's loader on a tiny cache in TFF's schema, padding and masking,
character models trained by real TFF rounds, fine-tuning a saved model, generation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient

from federated_research.build import build_run_parts
from federated_research.data.shakespeare import (
    BOS,
    EOS,
    OOV,
    PAD,
    VOCAB_SIZE,
    CharPrediction,
    MaskedSparseCategoricalCrossentropy,
    decode,
    encode,
    load_shakespeare,
)
from federated_research.models.keras_file import load
from federated_research.text_generation import generate
from tests.conftest import (
    REPO,
    SHAKESPEARE_TEXT,
    cli_env,
    compose_config,
    write_shakespeare_cache,
)

SHORT_ROLE = "A_SHORT_ROLE"  # "Hi!": 3 characters
TINY_MODEL = ["model=char_rnn_small", "model.embedding_dim=4", "model.rnn_units=8"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tff_cache")
    write_shakespeare_cache(folder)
    return folder


def _stream(snippets: list[str]) -> list[int]:
    """What a client's text becomes: BOS text EOS, snippet after snippet."""
    return [i for s in snippets for i in [BOS, *encode(s).tolist(), EOS]]


def test_shakespeare_loads_through_tff_from_a_sqlite_cache(cache_dir):
    data = load_shakespeare(seq_length=10, cache_dir=str(cache_dir))
    assert sorted(data.train.client_ids) == sorted(SHAKESPEARE_TEXT)
    assert data.num_classes == VOCAB_SIZE == 90 and data.input_shape == (10,)
    role = "MUCH_ADO_ABOUT_NOTHING_EMILIA"
    snippets = [e["snippets"].numpy().decode()
                for e in data.train.create_tf_dataset_for_client(role)]
    assert snippets == SHAKESPEARE_TEXT[role][0]
    assert decode(encode("Hark! My lord.")) == "Hark! My lord."
    assert encode("~")[0] == OOV  # not in TFF's vocabulary


def test_text_becomes_shifted_sequences_covering_every_character(cache_dir):
    data = load_shakespeare(seq_length=10, cache_dir=str(cache_dir))
    role = "THE_TRAGEDY_OF_KING_LEAR_MACBETH"
    task = data.task
    batches = list(task.eval_batches(data.train.create_tf_dataset_for_client(role), 2))
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.shape[1] == y.shape[1] == 10 and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # the target is the input, shifted
    np.testing.assert_array_equal(x[1:, 0], y[:-1, -1])  # pieces overlap by one id
    stream = _stream(SHAKESPEARE_TEXT[role][0])
    assert y[y != PAD].tolist() == stream[1:]  # every id after the first is a target once
    assert y[-1, -1] == PAD and PAD not in y[:-1]  # only the last piece is padded


def test_client_batches_are_seeded_and_capped(cache_dir):
    data = load_shakespeare(seq_length=4, max_sequences=3, cache_dir=str(cache_dir))
    ds = data.train.create_tf_dataset_for_client("THE_TRAGEDY_OF_KING_LEAR_MACBETH")

    def draw(seed, epochs=1):
        return np.concatenate([b[0].numpy() for b in data.task.client_batches(
            ds, epochs=epochs, batch_size=2, shuffle_buffer=100, seed=seed)])

    assert len(draw(0)) == 3 and len(draw(0, epochs=2)) == 6
    np.testing.assert_array_equal(draw(0), draw(0))
    assert not np.array_equal(draw(0), draw(1))


def test_padding_never_counts_toward_accuracy_or_loss():
    task = CharPrediction(seq_length=6)
    h, i = encode("Hi").tolist()
    y_true = tf.constant([[h, i, EOS, PAD, PAD, PAD]], tf.int64)

    def scores(predicted: list[int]):
        logits = tf.one_hot([predicted], VOCAB_SIZE, on_value=5.0, off_value=-5.0)
        accuracy = task.metrics()[0]
        accuracy.update_state(y_true, logits)
        return float(accuracy.result()), float(task.loss(True)(y_true, logits))

    right_on_padding = scores([h, OOV, EOS, PAD, PAD, PAD])
    wrong_on_padding = scores([h, OOV, EOS, h, i, h])
    assert right_on_padding[0] == wrong_on_padding[0] == 0.5  # H right, i wrong; EOS not scored
    assert right_on_padding[1] == pytest.approx(wrong_on_padding[1])
    per_token = tf.keras.losses.sparse_categorical_crossentropy(
        y_true, tf.one_hot([[h, OOV, EOS, h, i, h]], VOCAB_SIZE, 5.0, -5.0), from_logits=True)
    assert wrong_on_padding[1] == pytest.approx(float(tf.reduce_mean(per_token[0, :3])))
    assert MaskedSparseCategoricalCrossentropy().get_config()["pad"] == PAD


@pytest.fixture(scope="module")
def tiny_parts(cache_dir):
    cfg = compose_config(["dataset=shakespeare", f"dataset.cache_dir={cache_dir}",
                          "dataset.seq_length=20", *TINY_MODEL, "clients_per_round=2"])
    return build_run_parts(cfg)


@pytest.mark.xdist_group("shakespeare_tiny_parts")  # shares a module-scoped TFF process: one worker
def test_a_three_character_client_trains(tiny_parts):
    """The tutorial drops text shorter than one sequence; here it is one padded sequence."""
    parts = tiny_parts
    ds = parts.data.task.client_batches(parts.data.train.create_tf_dataset_for_client(
        SHORT_ROLE), epochs=1, batch_size=8, shuffle_buffer=10, seed=0)
    process = parts.algorithm.process
    output = process.next(parts.initial_state, [ds])
    train = output.metrics["client_work"]["train"]
    assert train["num_examples"] == 1 and train["num_tokens"] == 3  # H, i, ! are scored
    before = process.get_model_weights(parts.initial_state).trainable
    after = process.get_model_weights(output.state).trainable
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.xdist_group("shakespeare_tiny_parts")  # shares a module-scoped TFF process: one worker
def test_the_char_model_bits_are_counted_like_any_model(tiny_parts):
    weights = tiny_parts.algorithm.process.get_model_weights(tiny_parts.initial_state)
    params = sum(w.size for w in weights.trainable)
    bits = tiny_parts.comm.round_metrics(2)
    assert bits["comm/broadcasted_bits"] == bits["comm/aggregated_bits"] - 2 * 32 \
        == 2 * params * 32  # mean: float32 weights, plus each client's weight up


@pytest.mark.parametrize("preset", ["shakespeare_char_rnn", "shakespeare_finetune"])
def test_the_presets_compose(preset):
    extra = ["model.path=x.keras"] if preset == "shakespeare_finetune" else []
    cfg = compose_config([f"experiment={preset}", *extra])
    assert cfg.dataset._target_.endswith("load_shakespeare")
    assert cfg.rounds >= 10 and cfg.dataset.max_sequences >= 1


@pytest.mark.slow
def test_a_pretrained_file_is_fine_tuned_saved_back_and_generates(tmp_path, cache_dir,
                                                                   mlflow_uri, run_script):
    pre = tmp_path / "pre.keras"
    code, out, err = run_script(
        "pretrain_char_model.py", "--cache-dir", str(cache_dir), "--out", str(pre),
        "--embedding-dim", "4", "--rnn-units", "8", "--seq-length", "20", "--steps", "3",
        "--batch-size", "2")
    assert code == 0, err[-3000:]
    assert "held-out loss" in out and "model.path=" in out
    plain = tf.keras.models.load_model(str(pre))  # Keras alone reads it, without our classes
    assert plain.output_shape[-1] == VOCAB_SIZE

    done = subprocess.run(
        [sys.executable, "-m", "federated_research.train", "-m",
         "experiment=shakespeare_finetune", f"model.path={pre}", f"dataset.cache_dir={cache_dir}",
         "dataset.seq_length=20", "clients_per_round=2", "rounds=0,2", "eval_every=1",
         f"hydra.sweep.dir={tmp_path}/sweep", "hydra.sweep.subdir=r${rounds}",
         "tracking.progress_bar=false", "tracking.sweep_report=false"],
        cwd=tmp_path, env=cli_env(mlflow_uri), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    start = load(str(pre)).get_weights()
    untrained = load(str(tmp_path / "sweep" / "r0")).get_weights()  # a run folder works too
    trained = load(str(tmp_path / "sweep" / "r2" / "model.keras")).get_weights()
    # training starts from the file's weights
    assert all(np.array_equal(a, b) for a, b in zip(start, untrained, strict=True))
    assert [w.shape for w in trained] == [w.shape for w in start]
    assert any(not np.allclose(a, b) for a, b in zip(start, trained, strict=True))

    client = MlflowClient(mlflow_uri)
    run = next(r for r in client.search_runs([e.experiment_id for e in
                                              client.search_experiments()])
               if r.data.params.get("rounds") == "2")
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["eval/accuracy"] <= 1
    logged = load(client.download_artifacts(run.info.run_id, "model/model.keras",
                                            str(tmp_path))).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(logged, trained, strict=True))

    model = load(str(tmp_path / "sweep" / "r2"))
    text = generate(model, "Hark", length=40, temperature=1.0, seed=3)
    assert text.startswith("Hark") and len(text) == 44
    assert generate(model, "Hark", length=40, temperature=1.0, seed=3) == text
    assert generate(model, "Hark", length=40, temperature=1.0, seed=4) != text
    code, out, err = run_script("generate_text.py", "--run", run.info.run_id, "--prompt",
                                "Hark", "--length", "40", "--seed", "3", "--mlflow-uri",
                                mlflow_uri)
    assert code == 0, err[-3000:]
    assert out.rstrip("\n") == text  # by run id: the same model, the same text


def test_the_tutorial_model_is_mapped_onto_our_ids(tmp_path, monkeypatch):
    """`pretrain_char_model.py --tutorial-weights`: a model shaped like the tutorial's
    (86 characters, stateful GRU, batch 8), fetched from a file:// URL, predicts the same
    characters after the conversion as before."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pretrain_char_model", REPO / "scripts" / "pretrain_char_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("HOME", str(tmp_path))  # tf.keras.utils.get_file caches under ~/.keras
    tf.keras.utils.set_random_seed(0)
    tutorial = tf.keras.Sequential([
        tf.keras.layers.Embedding(86, 8, batch_input_shape=[8, None]),
        tf.keras.layers.GRU(16, return_sequences=True, stateful=True),
        tf.keras.layers.Dense(86)])
    tutorial.save(tmp_path / "tutorial.h5")
    model = script.from_tutorial((tmp_path / "tutorial.h5").as_uri())
    assert model.output_shape[-1] == VOCAB_SIZE and not any(
        getattr(layer, "stateful", False) for layer in model.layers)
    ids = encode("Hark! who goes there?")
    tutorial.reset_states()
    theirs = tutorial(np.tile(ids - 1, (8, 1)))[0].numpy()  # the tutorial's ids: ours - 1
    ours = model(ids[None, :])[0].numpy()
    np.testing.assert_allclose(ours[:, 1:87], theirs, rtol=1e-5, atol=1e-5)
    assert (ours[:, [PAD, OOV, BOS, EOS]].max(axis=1) < theirs.min(axis=1)).all()
