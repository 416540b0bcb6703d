"""A nested config as flat `a.b.c` keys: MLflow params, run records, sweep params."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """{'client': {'epochs': 1}} -> {'client.epochs': 1}: MLflow params are flat."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def flat_config(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as {'client.epochs': 1, ...}, JSON-normalised."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return json.loads(json.dumps(flatten(resolved), default=str))
