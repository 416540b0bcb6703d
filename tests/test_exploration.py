"""scripts/explore_data.py: the tutorial's three figures, from the clients a run trains on."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from mlflow import MlflowClient

from federated_research.data.mnist import load_mnist
from federated_research.exploration import summarize
from tests.conftest import write_shakespeare_cache

FIGURES = ["client_label_histograms.png", "examples_per_client.png", "label_mean_images.png"]


def test_summary_counts_every_clients_labels_and_keeps_pixels_of_the_first():
    data = load_mnist(num_clients=5, partition="shards", shards_per_client=2)
    summary = summarize(data, detailed=2)
    assert summary.sizes.sum() == 4000 and len(summary.client_ids) == 5
    assert list(summary.pixels) == summary.client_ids[:2]
    first = list(data.train.create_tf_dataset_for_client(summary.client_ids[0])
                 .as_numpy_iterator())
    np.testing.assert_array_equal(summary.labels[0], [e["label"] for e in first])
    np.testing.assert_array_equal(summary.pixels[summary.client_ids[0]],
                                  np.stack([e["pixels"] for e in first]))
    assert summary.describe()["labels_per_client_mean"] <= 4  # two shards of sorted labels


def test_the_script_refuses_text_in_one_line(tmp_path, run_script):
    write_shakespeare_cache(tmp_path)
    code, _, err = run_script("explore_data.py", "dataset=shakespeare",
                              f"dataset.cache_dir={tmp_path}", "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("error: dataset: inputs of shape (100,) are not images")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_script_writes_the_figures_and_logs_them_to_mlflow(tmp_path, monkeypatch, run_script):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    code, out, err = run_script("explore_data.py", "dataset.num_clients=7",
                                "--out", str(tmp_path / "figs"), "--clients", "3",
                                "--mlflow-experiment", "explore", "--mlflow-uri", uri)
    assert code == 0, err[-3000:]
    assert "alembic" not in out + err  # a new store, quietly
    for name in FIGURES:
        image = matplotlib.image.imread(tmp_path / "figs" / name)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # something is drawn
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("explore").experiment_id])
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "exploration")) == [
        f"exploration/{name}" for name in FIGURES]
    assert run.data.metrics["data/clients"] == 7 and run.data.metrics["data/examples"] == 4000
    assert run.info.status == "FINISHED"
