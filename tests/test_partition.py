"""Partitioners: every example goes to exactly one client; skew follows alpha."""

from __future__ import annotations

import numpy as np
import pytest

from federated_research.data import partition
from federated_research.errors import ConfigError

LABELS = np.repeat(np.arange(10), 100)


def _check_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


def test_iid_covers_every_example_once_in_equal_shares():
    parts = partition.iid(LABELS, 7, np.random.default_rng(0))
    _check_exact_cover(parts, len(LABELS))
    assert {len(p) for p in parts} <= {142, 143}


def test_dirichlet_covers_every_example_once_with_no_empty_client():
    parts = partition.dirichlet(LABELS, 20, 0.5, np.random.default_rng(0))
    _check_exact_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 2


def _mean_classes_per_client(alpha):
    parts = partition.dirichlet(LABELS, 20, alpha, np.random.default_rng(1))
    return np.mean([len(np.unique(LABELS[p])) for p in parts])


def test_small_alpha_gives_label_skew_large_alpha_approaches_iid():
    skewed, near_iid = _mean_classes_per_client(0.1), _mean_classes_per_client(100.0)
    assert skewed < 6 < 9.5 < near_iid


def test_same_seed_same_split():
    a = partition.dirichlet(LABELS, 10, 0.5, np.random.default_rng(3))
    b = partition.dirichlet(LABELS, 10, 0.5, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_more_clients_than_examples_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset.num_clients"):
        partition.iid(LABELS[:5], 6, np.random.default_rng(0))


def test_shards_deal_label_sorted_shards_of_equal_size():
    parts = partition.shards(LABELS, 20, 2, np.random.default_rng(0))
    _check_exact_cover(parts, len(LABELS))
    assert {len(p) for p in parts} == {50}  # 2 shards of 1000 / 40 = 25 examples
    # A shard of 25 never spans two labels here (100 per label), so a client sees <= 2.
    assert max(len(np.unique(LABELS[p])) for p in parts) <= 2
    assert np.mean([len(np.unique(LABELS[p])) for p in parts]) > 1.5  # mostly two
    again = partition.shards(LABELS, 20, 2, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_too_many_shards_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset.num_clients"):
        partition.shards(LABELS[:30], 20, 2, np.random.default_rng(0))
