"""Federated EMNIST through TFF's own loader (its SQLite cache, or TFF's download)."""

from __future__ import annotations

import tensorflow_federated as tff

from federated_research.data.federated_data import FederatedData
from federated_research.data.tff_cache import load_cached

CACHE_FILE = "emnist_all.sqlite"


def load_emnist(only_digits: bool = True, cache_dir: str | None = None,
                seed: int = 0) -> FederatedData:
    """3,383 writers (digits: 3,383 / 62 classes: 3,400) in TFF's full cache."""
    del seed  # the writers are the clients: nothing to draw
    train, test = load_cached(tff.simulation.datasets.emnist.load_data, CACHE_FILE, cache_dir,
                              only_digits=only_digits)
    # TFF joins the test clients in a random order unless seeded: same order every run.
    return FederatedData(train=train, test=test.create_tf_dataset_from_all_clients(seed=0),
                         test_clients=test,
                         num_classes=10 if only_digits else 62)
