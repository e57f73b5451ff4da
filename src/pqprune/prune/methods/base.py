"""What every pruning method is: the :class:`Method` interface, the options it declares, the plan it returns.

A method answers one question: *how many to prune in each unit, ranked by what*. Its :meth:`Method.plan` sees
the prunable weights, the current masks, the scope and the round number, and returns a :class:`Plan`: a count per
unit, a score per entry (smallest pruned first) and one :class:`UnitRecord` per unit for reports. Selecting
exactly those entries is :mod:`pqprune.prune.select`'s job; applying them is the
:class:`pqprune.prune.pruner.Pruner`'s. Methods know nothing of data or training.

A method class is also the single source of truth for everything else that names it: its registry name and
aliases, the options a run sets (:class:`Option`: the ``--flags`` of ``pqprune run``/``sweep`` and the keys of a
config file), their defaults and help, its display label and its colour in reports. Adding a method is one
class in one file (docs/methods.md).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from pqprune.measure.weights import Masks, Scope, check_scope

Weights = Mapping[str, Tensor]
Counts = dict[str, "int | Tensor"]


class WeightsOnDemand(Mapping[str, Tensor]):
    """Weights read when looked up (e.g. from checkpoint shards) and never all held at once: a method reads each
    as it needs it and keeps none. ``shapes`` gives every shape without reading; a method that would copy all
    weights for later rounds (OneShot's reference) keeps the mapping itself, as such weights are pruned once."""

    shapes: dict[str, torch.Size]


def shapes_of(weights: Weights) -> dict[str, torch.Size]:
    """Name → shape of ``weights``, without reading :class:`WeightsOnDemand`."""
    if isinstance(weights, WeightsOnDemand):
        return dict(weights.shapes)
    return {n: w.shape for n, w in weights.items()}


# --------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class UnitRecord:
    """What was decided for one unit in one round (docs/math.md §5: d, I, r, c, whether β clipped).

    The fields are named for what they count; the paper's one-letter names ``d``, ``r`` and ``c`` (also the
    columns of the ``units`` table) still read as deprecated aliases and go in the next release.
    """

    unit: str  # "global", a parameter name, or "name[row]" at neuron scope
    survivors: int  # d: weights of the unit that survive before this round's step
    index: float  # I: the sparsity index the decision used; NaN if undefined or if the method uses none
    retained_target: int  # r: how many survivors the rule aims to keep (survivors − pruned for fixed ratios)
    pruned: int  # c: weights pruned this round (after the β cap)
    beta_clipped: bool  # the β cap lowered the number pruned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def d(self) -> int:
        """Deprecated alias of :attr:`survivors`."""
        _deprecated("d", "survivors")
        return self.survivors

    @property
    def r(self) -> int:
        """Deprecated alias of :attr:`retained_target`."""
        _deprecated("r", "retained_target")
        return self.retained_target

    @property
    def c(self) -> int:
        """Deprecated alias of :attr:`pruned`."""
        _deprecated("c", "pruned")
        return self.pruned


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"UnitRecord.{old} is deprecated and goes in the next release; use UnitRecord.{new}",
        DeprecationWarning,
        stacklevel=3,
    )


@dataclass
class Plan:
    """A method's decision: ``counts`` per unit (scope convention of :mod:`pqprune.prune.select`), ``scores``."""

    counts: Counts
    scores: Mapping[str, Tensor]
    records: list[UnitRecord]


# --------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Option:
    """One hyper-parameter a run can set: ``--name`` on the command line, ``name`` in a config file.

    ``kind`` is ``float``, ``int``, ``str`` or ``bool``; ``default`` None means "not set" (the method decides);
    ``choices`` restricts a string. Range checks live in the method's constructor, the one place that knows them.
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any) -> Any:
        """``value`` (e.g. a string from the command line) as this option's type; ValueError naming the option."""
        try:
            out = coerce_value(self.kind, value)
        except (TypeError, ValueError):
            raise ValueError(f"option {self.name!r} takes a {self.kind.__name__}, got {value!r}") from None
        if self.choices and out not in self.choices:
            raise ValueError(f"option {self.name!r} must be one of {', '.join(self.choices)}, got {value!r}")
        return out


def coerce_value(kind: type, value: Any) -> Any:
    """``value`` as a ``kind`` (``bool``, ``int``, ``float`` or ``str``), the one reading of a typed setting or
    option, from a config file or the command line: a bool from ``true/false``, ``yes/no``, ``on/off``, ``1/0``; an
    int from a whole number only; a finite float; None stays None. Raises ``ValueError`` (or ``TypeError``)."""
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        out = float(value)
        if not math.isfinite(out):
            raise ValueError(value)
        return out
    if not isinstance(value, str):
        raise ValueError(value)
    return value


@dataclass
class RunContext:
    """What an experiment supplies to a method besides its options (methods know nothing of data or runs).

    ``seed``: the run's seed (random draws). ``reference``: run id → per-round reference masks or per-layer
    survivor counts (``random_matched``). ``input_bounds``: measures the largest |input| of every prunable layer
    on the training data, called at each pruning step (the ℓ_q bound rule).
    """

    seed: int = 0
    reference: Callable[[str], Sequence[Mapping[str, Any]]] | None = None
    input_bounds: Callable[[], Mapping[str, float]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- the interface
class Method(ABC):
    """A pruning policy. Subclasses implement :meth:`plan` and :meth:`hparams` and declare, as class attributes:

    * ``name`` and ``aliases``: how runs, the command line and :func:`pqprune.prune.methods.get` name it;
    * ``options``: the :class:`Option` s a run sets (their names are the constructor's keyword arguments unless
      :meth:`from_options` maps them);
    * ``label_format``: the display label, a format string over the options (``"SAP({p:g},{q:g})"``);
    * ``styles``: colour and marker of well-known labels in figures (others get a stable colour of their own);
    * ``default_scope``: the scope ``--scope auto`` resolves to;
    * ``rank``: where it comes in listings and reports (lower first; new methods come after the built-in ones).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[Option, ...]] = ()
    label_format: ClassVar[str] = ""
    styles: ClassVar[Mapping[str, tuple[str, str]]] = {}
    default_scope: ClassVar[str] = "global"
    rank: ClassVar[int] = 100

    @abstractmethod
    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        """Counts, scores and records for pruning round ``round_`` (0 = first call of ``Pruner.step``).

        ``masks`` maps names to bool masks (True = survives); a name without a mask is fully dense.
        """

    @abstractmethod
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments (JSON-serialisable), e.g. for reports and ``repr``."""

    # ------------------------------------------------------------------ run options
    @classmethod
    def option(cls, name: str) -> Option:
        for opt in cls.options:
            if opt.name == name:
                return opt
        raise KeyError(name)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option with its default."""
        return {o.name: o.default for o in cls.options}

    @classmethod
    def resolve_options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every option of this method: the given ones (coerced) over the defaults. An option this method does
        not take raises ``ValueError``."""
        unknown = sorted(set(given) - {o.name for o in cls.options})
        if unknown:
            raise ValueError(f"method {cls.name!r} takes no option {', '.join(map(repr, unknown))}")
        return {o.name: o.coerce(given[o.name]) if o.name in given else o.default for o in cls.options}

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: RunContext) -> Method:
        """Build the method of a run from its resolved options (default: they are the constructor's arguments)."""
        return cls(**{k: v for k, v in options.items() if v is not None})

    @classmethod
    def check_options(cls, options: Mapping[str, Any], scope: str) -> None:
        """Raise ``ValueError`` if resolved ``options`` or ``scope`` do not work for a run; needs no data
        (default: build the method without a run and check the scope)."""
        cls.from_options(options, RunContext()).check_scope(scope)

    @classmethod
    def label(cls, options: Mapping[str, Any]) -> str:
        """Display label of the method with these options (defaults fill the missing ones)."""
        values = {**cls.defaults(), **{k: v for k, v in options.items() if v is not None}}
        return (cls.label_format or cls.name).format(**values)

    # ------------------------------------------------------------------ instance
    def check_scope(self, scope: str) -> None:
        """Raise if this method cannot work at ``scope``."""
        check_scope(scope)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers needed to resume (nothing for stateless methods)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name}: unexpected state {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"
