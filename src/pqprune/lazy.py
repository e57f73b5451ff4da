"""Packages whose names are imported on first use (PEP 562), so that a command imports only what it runs:
``pqprune analyze`` never loads the results database's SQLAlchemy nor the training loop."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def exports(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: name ``n`` is imported from ``package.<where[n]>`` when first
    looked up, then kept in the package like an ordinary import."""

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
