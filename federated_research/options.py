"""Options: a config node's keys as a dataclass that checks its own types and ranges.

Every option of a config group that takes keys is described by one dataclass:
its fields are the YAML keys (with their types and defaults) and its `check()`
says which values are out of range. `build_options` turns a config node into an
instance, or into one line that names the full key and the fix:

    aggregator.bits=abc: wrong type. Fix: give aggregator.bits a whole number
    aggregator.bits=0: must be 1 to 16. Fix: pass e.g. aggregator.bits=8

`require` is the one helper a `check()` uses; it names the key relative to the
node, and `build_options` adds the node's path. Nothing here imports TensorFlow,
so every check runs in the first second of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from federated_research.errors import TYPE_WORDS, ConfigError


def require(ok: bool, key: str, value: object, problem: str, example: object) -> None:
    """Raise a ConfigError for `key=value` unless `ok`; `example` is a value that works."""
    if not ok:
        raise ConfigError(f"{key}={_typed(value)}", problem, f"pass e.g. {key}={example}")


@dataclass
class Options:
    """Base of every option dataclass: a `check()` of ranges (types are the fields')."""

    def check(self) -> None:
        """Raise ConfigError (through `require`) for a value out of range."""


def under(prefix: str, error: ConfigError) -> ConfigError:
    """The same error with `prefix.` in front of the key it names (and of the fix's key)."""
    if not prefix:
        return error
    key = error.key.split("=", 1)[0]
    fix = error.fix.replace(f"{key}=", f"{prefix}.{key}=")
    return ConfigError(f"{prefix}.{error.key}", error.problem, fix)


def build_options(cls: type[Options], node: DictConfig | dict, prefix: str) -> Any:
    """An instance of `cls` from the node's keys (`_target_` aside), checked.

    Unknown keys, wrong types, missing values and out-of-range values each come
    out as one ConfigError naming `<prefix>.<key>`.
    """
    node = OmegaConf.create(node) if isinstance(node, dict) else node
    container = OmegaConf.to_container(node, resolve=False)
    known = {f.name for f in fields(cls)}
    for key in container:
        if key != "_target_" and key not in known:
            raise ConfigError(join(prefix, key), f"{cls.__name__} has no such option",
                              f"use one of {', '.join(sorted(known))}")
    for key in container:
        if key != "_target_" and OmegaConf.is_missing(node, key):
            raise missing_value(cls, key, prefix)
    options = {key: _resolved(node, key) for key in container
               if key != "_target_" or key in known}
    try:
        instance = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), options))
    except MissingMandatoryValue as exc:
        raise missing_value(cls, str(exc.full_key), prefix) from None
    except OmegaConfBaseException as exc:
        key = join(prefix, str(exc.full_key))
        raise ConfigError(f"{key}={_typed(exc.value)}", "wrong type",
                          f"give {key} {type_words(cls, str(exc.full_key))}") from None
    try:
        instance.check()
    except ConfigError as exc:
        name = exc.key.split("=", 1)[0]
        if name in options and name != "_target_":  # as the config holds it: 0, not 0.0
            exc = ConfigError(f"{name}={_typed(options[name])}", exc.problem, exc.fix)
        raise under(prefix, exc) from None
    return instance


def missing_value(cls: type, key: str, prefix: str) -> ConfigError:
    """A required key with no value: the class may say how to fill it (`missing_fix`)."""
    fix = getattr(cls, "missing_fix", {}).get(key, f"pass {join(prefix, key)}=<value>")
    problem = getattr(cls, "missing_problem", {}).get(key, "has no value and needs one")
    return ConfigError(join(prefix, key), problem, fix)


def _resolved(node: DictConfig, key: str) -> object:
    """The key's value with interpolations resolved where they can be (a Hydra-only
    resolver outside a Hydra run keeps its text: it is a string either way)."""
    try:
        value = node[key]
    except InterpolationResolutionError:
        return str(OmegaConf.to_container(node, resolve=False)[key]).replace("${", "\\${")
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def join(prefix: str, key: str) -> str:
    """`client.epochs` from `client` and `epochs`; a root key keeps its bare name."""
    return f"{prefix}.{key}" if prefix else key


def type_words(cls: type, key: str) -> str:
    """How to describe the type of `cls.key` to a user ("a whole number, e.g. 10")."""
    kind = next((f.type for f in fields(cls) if f.name == key), "value")
    kind = getattr(kind, "__name__", str(kind)).replace(" | None", "")
    return TYPE_WORDS.get(kind, f"a {kind}")


def _typed(value: object) -> str:
    """A value as a user types it on the command line (true, not True; null, not None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)
