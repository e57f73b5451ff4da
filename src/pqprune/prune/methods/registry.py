"""The registry of pruning methods: names and aliases → method classes, in registration order.

``get("sap", p=1.0, q=2.0)`` builds a method by name or alias, :func:`lookup` gives its class, :func:`register`
adds one (a class decorator), :func:`available` lists the names. Everything that names a method — runs, the
command line, config files, the results database, reports — goes through :func:`lookup`, so an alias is
accepted wherever a method is named.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from pqprune.prune.methods.base import Method, Option

_REGISTRY: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name`` and ``cls.aliases``.

    Options of different methods may share a name (``q``, ``eta``…) but then must have the same type, because
    they share one command-line flag.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    for key in (cls.name, *cls.aliases):
        if _key(key) in _REGISTRY or _key(key) in _ALIASES:
            raise ValueError(f"pruning method name {key!r} is already registered")
    for opt in cls.options:
        other = shared_option(opt.name)
        if other is not None and other.kind is not opt.kind:
            raise ValueError(
                f"option {opt.name!r} of {cls.name!r} is a {opt.kind.__name__}, elsewhere a {other.kind.__name__}"
            )
    _REGISTRY[_key(cls.name)] = cls
    for alias in cls.aliases:
        _ALIASES[_key(alias)] = _key(cls.name)
    return cls


def methods() -> list[type[Method]]:
    """Registered method classes, by ``rank`` then name."""
    return sorted(_REGISTRY.values(), key=lambda c: (c.rank, c.name))


def available() -> list[str]:
    """Registered method names (aliases not included), by ``rank`` then name."""
    return [c.name for c in methods()]


def lookup(name: str) -> type[Method]:
    """The class registered under ``name`` or an alias of it (case and ``-``/``_`` do not matter)."""
    key = _ALIASES.get(_key(name), _key(name))
    if key not in _REGISTRY:
        names = ", ".join(f"{c.name} ({', '.join(c.aliases)})" if c.aliases else c.name for c in methods())
        raise ValueError(f"unknown pruning method {name!r}; available: {names}")
    return _REGISTRY[key]


def canonical(name: str) -> str:
    """The registered name of ``name`` (an alias or a spelling of it)."""
    return lookup(name).name


def get(name: str, **hparams: Any) -> Method:
    """Build a registered method: ``get("sap", p=1.0, q=2.0)``. Unknown names list the available ones."""
    return lookup(name)(**hparams)


def option_names() -> list[str]:
    """Every option of every registered method, each once, in registration order."""
    seen: dict[str, None] = {}
    for cls in methods():
        for opt in cls.options:
            seen.setdefault(opt.name)
    return list(seen)


def shared_option(name: str) -> Option | None:
    """The first registered :class:`Option` called ``name`` (its type is that of every option of that name)."""
    for cls in methods():
        for opt in cls.options:
            if opt.name == name:
                return opt
    return None


def takers(name: str) -> list[str]:
    """Names of the methods that take option ``name``."""
    return [c.name for c in methods() if any(o.name == name for o in c.options)]


def option_help(name: str) -> str:
    """Help of a shared option: what it means for each method that takes it, with that method's default."""
    parts = []
    for cls in methods():
        for opt in cls.options:
            if opt.name == name:
                default = "" if opt.default is None else f" [default: {opt.default}]"
                parts.append(f"{cls.name}: {opt.help}{default}")
    return "; ".join(parts) + "."


ENTRY_POINT_GROUP = "pqprune.methods"
_loaded = False


def load_plugins() -> None:
    """Import every module of :mod:`pqprune.prune.methods` (each registers its method) and every module named by
    an installed package's ``pqprune.methods`` entry point; once per process."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module("pqprune.prune.methods")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"pqprune.prune.methods.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not break pqprune: say which one and go on
            import warnings

            warnings.warn(f"pruning method plugin {ep.name!r} ({ep.value}) failed to load: {err}", stacklevel=2)
