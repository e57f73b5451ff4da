"""The pruning methods, one class per file, behind one registry.

``get("sap", p=1.0, q=2.0)`` builds a method by name or alias, :func:`register` adds one, :func:`available`
lists them. Every module of this package is imported here, so a new method is one file in this folder; methods
of other packages register through the ``pqprune.methods`` entry point group (docs/methods.md).
"""

from pqprune.prune.methods.base import Method, Option, Plan, RunContext, UnitRecord
from pqprune.prune.methods.lq import LqNeuron
from pqprune.prune.methods.magnitude import LotteryTicket, OneShot
from pqprune.prune.methods.random import RandomMatched, RandomPruning
from pqprune.prune.methods.registry import available, canonical, get, load_plugins, lookup, methods, register
from pqprune.prune.methods.sap import SAP

__all__ = [
    "SAP",
    "LotteryTicket",
    "LqNeuron",
    "Method",
    "OneShot",
    "Option",
    "Plan",
    "RandomMatched",
    "RandomPruning",
    "RunContext",
    "UnitRecord",
    "available",
    "canonical",
    "get",
    "lookup",
    "methods",
    "register",
]

load_plugins()
