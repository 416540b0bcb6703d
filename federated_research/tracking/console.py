"""A console progress bar: round, loss, accuracy and bits at a glance."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from tqdm import tqdm

MIBIT = 2**20


class ProgressBar:
    def __init__(self, rounds: int, description: str = "rounds", initial: int = 0) -> None:
        self._bar = tqdm(total=rounds, initial=initial, desc=description, unit="round",
                         file=sys.stderr,
                         dynamic_ncols=True, mininterval=0.5)
        self._shown: dict[str, str] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        shown = self._shown
        if "train/loss" in metrics:
            shown["loss"] = f"{metrics['train/loss']:.3f}"
            shown["acc"] = f"{metrics['train/accuracy']:.3f}"
        if "eval/accuracy" in metrics:
            shown["eval_acc"] = f"{metrics['eval/accuracy']:.3f}"
        if "comm/aggregated_bits_cumulative" in metrics:
            shown["up"] = f"{metrics['comm/aggregated_bits_cumulative'] / MIBIT:.1f}Mib"
            shown["down"] = f"{metrics['comm/broadcasted_bits_cumulative'] / MIBIT:.1f}Mib"
        self._bar.set_postfix(shown, refresh=False)
        if "train/loss" in metrics:  # a trained round (rounds=0 only logs an evaluation)
            self._bar.update(1)
        else:
            self._bar.refresh()

    def close(self, status: str) -> None:
        self._bar.close()
