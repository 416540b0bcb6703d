"""TFF's federated datasets, read from TFF's cache or downloaded by TFF as for any user.

`tff.simulation.datasets.<name>.load_data(cache_dir=...)` reads
`<cache_dir>/<name>.sqlite` when it is there and downloads it otherwise. This
wraps that call so that what can go wrong ends in one line naming the file:
no network (and no file), a download cut short (the partial file is removed,
so the next run tries again rather than reading half a database), or a file
that is not TFF's SQLite cache.
"""

from __future__ import annotations

import http.client
import lzma
import os
import socket
import sqlite3
from collections.abc import Callable
from contextlib import contextmanager

from federated_research.errors import ConfigError

ORIGIN = "https://storage.googleapis.com/tff-datasets-public/{}.lzma"  # TFF's download URL
DOWNLOAD_TIMEOUT = 60.0  # seconds without a byte before a download counts as failed


def default_cache_dir() -> str:
    """TFF's own default (tff.simulation.datasets.download)."""
    return os.path.join(os.path.expanduser("~"), ".tff")


@contextmanager
def _socket_timeout(seconds: float):
    """TFF opens its URL without a timeout; a network that drops packets would hang."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def load_cached(load_data: Callable[..., tuple], cache_file: str, cache_dir: str | None,
                **kwargs) -> tuple:
    """`load_data(cache_dir=..., **kwargs)`, TFF's loader, with one-line errors."""
    from tensorflow_federated.python.simulation.datasets.sql_client_data import (
        DatabaseFormatError,
    )

    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    path = os.path.join(cache_dir, cache_file)
    key = f"dataset.cache_dir={cache_dir}"
    present = os.path.isfile(path)  # if not, TFF downloads it (with its own progress bar)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            train, test = load_data(cache_dir=cache_dir, **kwargs)
    except (sqlite3.DatabaseError, DatabaseFormatError) as exc:
        if not present:  # TFF has just downloaded it: the download was cut or corrupt
            _remove(path)
            raise ConfigError(key, f"the download of {cache_file} was incomplete or corrupt "
                              f"({exc})", f"run again to download it again, or put TFF's "
                              f"{cache_file} in that folder") from None
        raise ConfigError(key, f"{path} is not TFF's SQLite cache ({exc})",
                          f"delete it to download it again, or put TFF's {cache_file} there"
                          ) from None
    except (OSError, http.client.HTTPException, lzma.LZMAError, EOFError) as exc:
        # URLError, timeouts, refused or cut connections, a corrupt download, a full disk
        if not present:
            _remove(path)  # a partial download would pass for a cache next time
        url = ORIGIN.format(cache_file)
        raise ConfigError(key, f"{path} does not exist and TFF could not download it "
                          f"({_reason(exc)})",
                          f"put TFF's {cache_file} in that folder (download {url} where "
                          f"there is internet, then `xz -d {cache_file}.lzma`), or pass "
                          f"dataset.cache_dir=<folder holding {cache_file}>") from None
    if not train.client_ids:
        raise ConfigError(key, f"{path} holds no clients for this dataset",
                          f"put TFF's own {cache_file} there")
    return train, test


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or repr(exc)
    return " ".join(str(reason).split())
