"""Split a labelled pool of examples over simulated clients."""

from __future__ import annotations

import numpy as np

from federated_research.errors import ConfigError


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then deal the examples out in near-equal shares."""
    _check_enough(len(labels), num_clients)
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
              min_examples: int = 2, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed split of Hsu et al. (2019): each class is divided over the
    clients in proportions drawn from Dirichlet(alpha).

    Small alpha gives each client few classes; large alpha approaches IID.
    Draws again until every client has at least `min_examples` (a client with
    no data cannot train), and says so when alpha makes that impossible.
    """
    _check_enough(len(labels), num_clients * min_examples)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        clients = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(c) for c in clients) >= min_examples:
            return clients
    raise ConfigError(f"dataset.alpha={alpha}",
                      f"{max_tries} Dirichlet draws left some of the {num_clients} clients "
                      f"with fewer than {min_examples} examples",
                      "raise dataset.alpha or lower dataset.num_clients")


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int,
           rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al. (2017)'s pathological non-IID split: sort the examples by label,
    cut them into `num_clients * shards_per_client` equal shards, and give each client
    `shards_per_client` shards at random (with 2, most clients see two digits).

    Ties within a label are broken at random, so the seed also picks which examples
    of a label share a shard.
    """
    num_shards = num_clients * shards_per_client
    _check_enough(len(labels), num_shards)
    by_label = np.lexsort((rng.permutation(len(labels)), labels))
    pieces = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in dealt]


def _check_enough(num_examples: int, needed: int) -> None:
    if num_examples < needed:
        raise ConfigError("dataset.num_clients", f"{num_examples} training examples cannot "
                          f"give every client data (need {needed})",
                          "lower dataset.num_clients")
