"""Federated EMNIST through TFF's own loader, read offline from its SQLite cache."""

from __future__ import annotations

import os

import tensorflow_federated as tff

from federated_research.data.federated_data import FederatedData
from federated_research.errors import ConfigError

CACHE_FILE = "emnist_all.sqlite"


def default_cache_dir() -> str:
    """TFF's own default (tff.simulation.datasets.download)."""
    return os.path.join(os.path.expanduser("~"), ".tff")


def load_emnist(only_digits: bool = True, cache_dir: str | None = None,
                seed: int = 0) -> FederatedData:
    """3,383 writers (digits: 3,383 / 62 classes: 3,400) in TFF's full cache.

    TFF would try to download a missing cache; this machine has no network, so
    a missing file is reported up front with where to put it.
    """
    del seed  # the writers are the clients: nothing to draw
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    path = os.path.join(cache_dir, CACHE_FILE)
    if not os.path.isfile(path):
        raise ConfigError(
            f"dataset.cache_dir={cache_dir}", f"no EMNIST cache: {path} does not exist",
            f"put TFF's {CACHE_FILE} (from TFF's federated EMNIST download) in that folder "
            f"or pass dataset.cache_dir=<folder holding {CACHE_FILE}>")
    train, test = tff.simulation.datasets.emnist.load_data(
        only_digits=only_digits, cache_dir=cache_dir)
    return FederatedData(train=train, test=test.create_tf_dataset_from_all_clients(),
                         num_classes=10 if only_digits else 62)
