"""What a federated image dataset looks like, client by client (scripts/explore_data.py).

The three views of TFF's image-classification tutorial: how many examples each
client has, which labels each client has, and each client's mean image per
label (a writer's own style of each digit). Non-IID data shows in all three.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federated_research.data.federated_data import FederatedData
from federated_research.errors import ConfigError

# EMNIST's 62 classes: digits, then upper case, then lower case letters.
LABEL_NAMES = string.digits + string.ascii_uppercase + string.ascii_lowercase


@dataclass
class ClientSummary:
    """Labels of every client examined, pixels of the first few."""

    client_ids: list[str]
    labels: list[np.ndarray]            # per client
    pixels: dict[str, np.ndarray]       # first `detailed` clients only
    num_classes: int

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(labels) for labels in self.labels])

    def describe(self) -> dict[str, float]:
        sizes = self.sizes
        classes = [len(np.unique(labels)) for labels in self.labels]
        return {"clients": len(sizes), "examples": int(sizes.sum()),
                "examples_per_client_min": int(sizes.min()),
                "examples_per_client_median": float(np.median(sizes)),
                "examples_per_client_max": int(sizes.max()),
                "labels_per_client_mean": float(np.mean(classes))}


def summarize(data: FederatedData, max_clients: int | None = None,
              detailed: int = 6) -> ClientSummary:
    """Read the labels of the first `max_clients` training clients (all when None) and
    the pixels of the first `detailed`."""
    if len(data.input_shape) != 3:
        raise ConfigError("dataset", f"inputs of shape {data.input_shape} are not images",
                          "pass an image dataset: dataset=mnist or dataset=emnist")
    ids = list(data.train.client_ids)[:max_clients]
    labels, pixels = [], {}
    for i, cid in enumerate(ids):
        dataset = data.train.create_tf_dataset_for_client(cid)
        if i < detailed:
            examples = list(dataset.batch(10_000).as_numpy_iterator())
            pixels[cid] = np.concatenate([e["pixels"] for e in examples])
            labels.append(np.concatenate([e["label"] for e in examples]).astype(int))
        else:
            labels.append(np.concatenate(list(dataset.map(lambda e: e["label"]).batch(10_000)
                                              .as_numpy_iterator())).astype(int))
    return ClientSummary(ids, labels, pixels, data.num_classes)


def _name(label: int) -> str:
    return LABEL_NAMES[label] if label < len(LABEL_NAMES) else str(label)


def save_figures(summary: ClientSummary, out_dir: Path, title: str) -> list[Path]:
    """The three figures as PNG files in `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = summary.sizes
    ax.hist(sizes, bins=min(40, max(5, len(np.unique(sizes)))), color="tab:blue")
    ax.axvline(np.median(sizes), color="black", linestyle="--",
               label=f"median {np.median(sizes):.0f}")
    ax.set(xlabel="training examples on the client", ylabel="clients",
           title=f"{title}: examples per client ({len(sizes)} clients, {sizes.sum()} examples)")
    ax.legend()
    paths.append(_save(fig, out_dir / "examples_per_client.png"))

    detailed = list(summary.pixels)
    cols = min(3, len(detailed))
    rows = int(np.ceil(len(detailed) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 2.8 * rows), squeeze=False)
    for ax, cid, labels in zip(axes.flat, detailed, summary.labels, strict=False):
        counts = np.bincount(labels, minlength=summary.num_classes)
        ax.bar(np.arange(summary.num_classes), counts, color="tab:green")
        ax.set_title(f"client {cid}: {len(labels)} examples, {np.count_nonzero(counts)} labels",
                     fontsize=9)
        step = 1 if summary.num_classes <= 10 else 4
        ax.set_xticks(np.arange(0, summary.num_classes, step),
                      [_name(i) for i in range(0, summary.num_classes, step)], fontsize=7)
    for ax in axes.flat[len(detailed):]:
        ax.axis("off")
    fig.suptitle(f"{title}: labels of each client")
    paths.append(_save(fig, out_dir / "client_label_histograms.png"))

    shown = [c for c in range(summary.num_classes)
             if any(np.any(summary.labels[i] == c) for i in range(len(detailed)))]
    bands = int(np.ceil(len(shown) / 36))  # 62 classes: digits and capitals, then small letters
    width = int(np.ceil(len(shown) / bands))
    fig, axes = plt.subplots(bands * len(detailed), width, squeeze=False,
                             figsize=(max(6.0, 0.55 * width), 0.7 * bands * len(detailed) + 0.6))
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    for index, label in enumerate(shown):
        band, col = divmod(index, width)
        for row, cid in enumerate(detailed):
            ax = axes[band * len(detailed) + row, col]
            labels = summary.labels[row]
            if np.any(labels == label):  # blank where the client never wrote this label
                ax.imshow(summary.pixels[cid][labels == label].mean(axis=0), cmap="gray",
                          vmin=0, vmax=1)
            if row == 0:
                ax.set_title(_name(label), fontsize=8)
            if col == 0:
                ax.set_ylabel(cid, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"{title}: mean image per label, one row per client", fontsize=10)
    paths.append(_save(fig, out_dir / "label_mean_images.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
