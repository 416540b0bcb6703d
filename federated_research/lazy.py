"""TensorFlow imported on first use, for modules whose import must stay light.

A compression method's module holds both its options (a dataclass the config
check reads in the first second of a run) and its codec (TensorFlow code that
runs only when the method is built). `from federated_research.lazy import tf`
lets the module load without TensorFlow's ~10 s import; the first attribute
read (`tf.reduce_sum`) imports it, and every later read is a dict lookup.
"""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """A stand-in for a module that imports it when an attribute is first read."""

    def __getattr__(self, name: str):
        return getattr(importlib.import_module(self.__name__), name)


tf = LazyModule("tensorflow")
