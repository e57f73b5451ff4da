"""Runs of the results database grouped for a report: by ``(data, model, scope)``, then by method, seeds together."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pqprune.experiment.settings import RunSettings, method_label
from pqprune.files import finite_or_none
from pqprune.prune.methods.registry import lookup, methods

# One colour and marker per method, the same in every figure and every report: the styles the method classes
# declare for their well-known labels (SAP(0.5,1), SAP(1,2), LT…). Other labels get a style from a stable hash of
# the label (report.figures.method_style), so the same label looks the same in every report.
METHOD_STYLES: dict[str, tuple[str, str]] = {label: style for cls in methods() for label, style in cls.styles.items()}
_EXTRA_COLOURS = ("#9467bd", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")
_EXTRA_MARKERS = ("D", "*", "h", "<", ">", "p", "X", "d")


# --------------------------------------------------------------------------------------------- constants
GROUP_KEYS: tuple[str, ...] = ("data", "model", "scope")
# Settings that do not make two runs different *methods*: the group keys, the seed (averaged over) and the
# where-to-compute settings. Runs of one group that agree on everything else are seeds of one method.
_NOT_METHOD = frozenset(GROUP_KEYS) | {"seed", "device", "data_root", "download", "keep_checkpoints", "launch"}


class ReportError(ValueError):
    """The report cannot be made: no database, no matching runs, or an unusable output folder."""


# --------------------------------------------------------------------------------------------- loading
@dataclass
class MethodRuns:
    """The seeds of one method configuration in one group: their settings and recorded rounds."""

    label: str
    settings: dict[str, Any]  # of the first run; equal for all seeds except the seed
    run_ids: list[str] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    rounds: list[list[dict[str, Any]]] = field(default_factory=list)  # per seed, by round
    examples: list[dict[str, int]] = field(default_factory=list)  # per seed: examples per data split, if recorded

    @property
    def n_rounds(self) -> int:
        return max((r["round"] for rs in self.rounds for r in rs), default=-1) + 1

    def matrix(self, get: Callable[[dict[str, Any]], Any]) -> np.ndarray:
        """(seeds, rounds) array of ``get(round_row)``; NaN where a seed lacks the round or the value is undefined
        (None or non-finite)."""
        out = np.full((len(self.rounds), self.n_rounds), np.nan)
        for i, rs in enumerate(self.rounds):
            for r in rs:
                if (v := finite_or_none(get(r))) is not None:
                    out[i, r["round"]] = float(v)
        return out

    def column(self, key: str) -> np.ndarray:
        return self.matrix(lambda r: r.get(key))

    def layer_names(self) -> list[str]:
        names = {n for rs in self.rounds for r in rs for n in (r.get("layers") or {})}
        return sorted(names, key=_natural_key)


@dataclass
class Group:
    """The runs sharing (data, model, scope), one :class:`MethodRuns` per method configuration, in fixed order."""

    data: str
    model: str
    scope: str
    methods: list[MethodRuns]

    @property
    def title(self) -> str:
        return f"data={self.data}, model={self.model}, scope={self.scope}"

    @property
    def n_rounds(self) -> int:
        """Rounds of the longest method (the common x range of the figures)."""
        return max((m.n_rounds for m in self.methods), default=0)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.data}-{self.model}-{self.scope}")


def _natural_key(name: str) -> list[Any]:
    """'layers.10.weight' after 'layers.2.weight'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Stored settings of any version as today's (a method's own options only), so that runs of one
    configuration group together whichever version wrote them; unreadable ones are kept as they are."""
    try:
        return RunSettings.from_stored(settings).to_dict()
    except (ValueError, TypeError):
        return dict(settings)


def _label(settings: Mapping[str, Any]) -> str:
    try:
        return method_label(settings)
    except (KeyError, TypeError, ValueError):
        return str(settings.get("method", "?"))


def _method_order(m: MethodRuns) -> tuple[int, str]:
    """Methods in the registry's order (SAP, LT, OS, Random, …), then by label."""
    try:
        rank = lookup(str(m.settings.get("method"))).rank
    except ValueError:
        rank = 1_000
    return (rank, m.label)


def canonical_where(where: Mapping[str, Any] | None) -> dict[str, Any]:
    """A settings filter with a method named by its registered name (``lottery_ticket``, ``LT`` → ``lt``)."""
    out = dict(where or {})
    if "method" in out:
        try:
            out["method"] = lookup(str(out["method"])).name
        except ValueError as err:
            raise ReportError(str(err)) from None
    return out


def load_groups(db_path: str | Path, where: Mapping[str, Any] | None = None) -> list[Group]:
    """Read the runs matching ``where`` (setting → value) and their rounds, grouped by (data, model, scope).

    Runs with no recorded round are left out. Seeds of one method are the runs of a group whose settings agree
    except for the seed (and where-to-compute settings); when two such configurations share a label (e.g. SAP
    with two values of eta), the settings that differ are appended to their labels.

    Raises:
        ReportError: no database at ``db_path``, or no run with rounds matches.
    """
    from pqprune.store.database import Store, StoreError

    path = Path(db_path)
    if not path.is_file():
        raise ReportError(f"no results database at {path} (run `pqprune run` or `pqprune demo` first, or pass --db)")
    try:
        where = canonical_where(where)
        with Store(path) as store:
            runs = store.list_runs(where=where)
            all_runs = store.list_runs()
            everything = [run["settings"] for run in all_runs] if not runs else []  # for the error message
            loaded = [(run, store.rounds(run["run_id"])) for run in runs]
    except (StoreError, ValueError) as err:
        raise ReportError(str(err)) from err
    if not runs:
        known = sorted({k for settings in everything for k in settings})
        bad = [k for k in (where or {}) if known and k not in known]
        hint = f"; unknown setting(s) {bad}, known: {', '.join(known)}" if bad else ""
        raise ReportError(
            f"no runs in {path} match {_where_text(where)} ({len(everything)} runs in the database){hint}"
        )
    loaded = [(run, rounds) for run, rounds in loaded if rounds]
    if not loaded:
        raise ReportError(f"the {len(runs)} runs in {path} matching {_where_text(where)} have no finished round yet")

    # A run matched to another (random_matched) names its reference by id, one per seed: what makes two such
    # runs the same method is the reference's method, so the id is replaced by that method's label.
    labels = {run["run_id"]: _label(_normalised(run["settings"])) for run in all_runs}
    groups: dict[tuple[str, str, str], dict[str, MethodRuns]] = {}
    for run, rounds in loaded:
        s = _normalised(run["settings"])
        if s.get("reference") in labels:
            s["reference"] = labels[s["reference"]]
        gkey = tuple(str(s.get(k)) for k in GROUP_KEYS)
        config = json.dumps({k: v for k, v in s.items() if k not in _NOT_METHOD}, sort_keys=True)
        mr = groups.setdefault(gkey, {}).setdefault(config, MethodRuns(_label(s), dict(s)))  # type: ignore[arg-type]
        mr.run_ids.append(run["run_id"])
        mr.seeds.append(s.get("seed"))
        mr.rounds.append(rounds)
        mr.examples.append(dict(run["settings"].get("examples") or {}))
    out = []
    for (data, model, scope), configs in sorted(groups.items()):
        methods = list(configs.values())
        _disambiguate(methods)
        out.append(Group(data, model, scope, sorted(methods, key=_method_order)))
    return out


def _where_text(where: Mapping[str, Any] | None) -> str:
    return " and ".join(f"{k}={v}" for k, v in (where or {}).items()) or "(no filter)"


def _disambiguate(methods: list[MethodRuns]) -> None:
    """Append the differing settings to labels that two configurations share."""
    by_label: dict[str, list[MethodRuns]] = {}
    for m in methods:
        by_label.setdefault(m.label, []).append(m)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = sorted(
            {
                k
                for m in same
                for k in m.settings
                if k not in _NOT_METHOD and len({json.dumps(x.settings.get(k), sort_keys=True) for x in same}) > 1
            }
        )
        for m in same:
            m.label += " " + ",".join(f"{k}={m.settings.get(k)}" for k in keys)
