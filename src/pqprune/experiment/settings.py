"""The settings of a run (:class:`RunSettings`), their help, config files, and the run's identity.

A run's identity is a hash of the settings that differ from their defaults (OpenLTH style), so the same command
names the same run: ``run_id = "<method>-<hash[:10]>"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pqprune.experiment import data as data_mod
from pqprune.experiment import models as models_mod
from pqprune.experiment.phases import STOP_PHASES
from pqprune.experiment.train import TrainConfig, resolve_device
from pqprune.measure.weights import check_scope
from pqprune.prune.methods import Method, RunContext
from pqprune.prune.methods.base import coerce_value
from pqprune.prune.methods.registry import available, lookup, option_names, shared_option, takers

SELECT_ON = ("val", "test")
KEEP = ("last", "all")
# Settings that say where or how to compute, not what: they do not change a run's identity.
NOT_IDENTITY = frozenset({"device", "threads", "data_root", "download", "keep_checkpoints"})


class SettingsError(ValueError):
    """A run's settings are invalid or incompatible (unknown name, bad value, model that cannot take the data)."""


def parse_assignment(item: str, what: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` → ``(key, value text)``, the one reader of every ``KEY=VALUE`` option (``--where``,
    ``--set``, ``--model-option``, ``--data-option``). Dashes in the key read as underscores (``target-density`` is
    ``target_density``). Raises :class:`SettingsError` naming the option ``what`` when there is no ``=`` or the
    key is not a name."""
    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise SettingsError(f"{what} takes KEY=VALUE with KEY a name, got {item!r}")
    return key, value.strip()


def parse_assignments(items: Iterable[str], what: str) -> dict[str, Any]:
    """``["seed=0", "method=sap"]`` → ``{"seed": 0, "method": "sap"}``: each item read by :func:`parse_assignment`,
    each value by :func:`parse_value`; a later item overrides an earlier one with the same key."""
    out: dict[str, Any] = {}
    for item in items:
        key, value = parse_assignment(item, what)
        out[key] = parse_value(value)
    return out


def parse_value(text: str) -> Any:
    """A value typed on the command line: JSON first (``0`` → 0, ``1e-3`` → 0.001, ``true`` → True, ``[64, 64]``),
    then YAML for unquoted lists (``[a, b]``); anything else stays the text (``sap`` → "sap")."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (list, dict)) else text


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class RunSettings:
    """Every setting of a run, with its default. Defaults follow Diao et al. (2023) and its code.

    ``rounds`` is T, the number of pruning steps: the loop trains T + 1 times (round 0 is the dense model).
    :data:`HELP` says what each setting means. ``method_options`` holds the hyper-parameters of the chosen
    method, named as its :class:`~pqprune.prune.methods.Option` s declare them (``p``, ``ratio``, ``rule``…); in
    a mapping given to :meth:`from_dict` (a config file, the command line) they may stand at the top level.
    """

    data: str = "mnist5k"
    model: str = "mlp"
    method: str = "sap"
    scope: str = "auto"
    rounds: int = 30
    epochs: int = 50
    seed: int = 0
    method_options: dict = field(default_factory=dict)
    batch_size: int = 250
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    clip_norm: float = 1.0
    schedule: str = "cosine"
    augment: str = "auto"
    val_fraction: float = 0.1
    select_on: str = "val"
    data_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    device: str = "auto"
    threads: int = 0
    data_root: str = ""
    download: bool = False
    keep_checkpoints: str = "last"
    stop_at_phase: str = ""

    # ------------------------------------------------------------------ building
    @classmethod
    def names(cls) -> list[str]:
        """All setting names, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return cls().to_dict()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "settings") -> RunSettings:
        """Settings from a mapping (dashes in keys read as underscores). Keys are settings or options of a
        registered method (those go to ``method_options``); an unknown key is a :class:`SettingsError`."""
        known = set(cls.names())
        options = set(option_names())
        clean: dict[str, Any] = {}
        method_options: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name == "method_options":
                if not isinstance(value, Mapping):
                    raise SettingsError(f"{source}: method_options must be a mapping, got {value!r}")
                method_options.update({str(k).replace("-", "_"): v for k, v in value.items()})
            elif name in known:
                clean[name] = _coerce(name, value, source)
            elif name in options:
                method_options[name] = value
            else:
                close = _closest(name, known | options)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise SettingsError(
                    f"{source}: unknown setting {key!r}{hint}; settings: {', '.join(cls.names())}; "
                    f"method options: {', '.join(option_names())}"
                )
        for name, value in method_options.items():
            opt = shared_option(name)
            if opt is None:
                raise SettingsError(f"{source}: no pruning method takes option {name!r}")
            try:
                method_options[name] = opt.coerce(value)
            except ValueError as err:
                raise SettingsError(f"{source}: {err}") from None
        return cls(**clean, method_options=method_options)

    @classmethod
    def from_stored(cls, values: Mapping[str, Any]) -> RunSettings:
        """Settings as stored by any version of pqprune (a database row, a run's settings.json).

        Earlier versions stored every method's hyper-parameters in every run, and ran ``lq`` with SAP's ``p`` as
        its exponent; both are read as today's settings. Keys no setting knows (``launch``…) are dropped.
        """
        values = {k: v for k, v in values.items() if k in set(cls.names()) | set(option_names())}
        try:
            method = lookup(str(values.get("method", "sap")))
        except ValueError:
            return cls.from_dict({k: v for k, v in values.items() if k in cls.names()})
        own = {o.name for o in method.options}
        if method.name == "lq" and "rule" not in values and "p" in values:  # version 0.1: lq's exponent was p
            values = {**values, "q": values["p"]}
        kept = {k: v for k, v in values.items() if k in cls.names() or (k in own and v is not None)}
        return cls.from_dict(kept)

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with some settings changed (values coerced and checked like :meth:`from_dict`)."""
        return RunSettings.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Every setting, with the method's options at the top level (the form stored in the database)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "method_options"}
        out.update(_plain(self.method_options))
        return out

    def option(self, name: str) -> Any:
        """The value of one of the method's options (its default when not set)."""
        return {**lookup(self.method).defaults(), **self.method_options}[name]

    # ------------------------------------------------------------------ meaning
    def resolved(self) -> RunSettings:
        """Canonical names (``lottery_ticket`` → ``lt``, ``MNIST-5k`` → ``mnist5k``) and ``scope="auto"`` resolved."""
        try:
            cls = lookup(self.method)
        except ValueError as err:
            raise SettingsError(str(err)) from None
        wrong = sorted(set(self.method_options) - {o.name for o in cls.options})
        if wrong:
            raise SettingsError(
                "; ".join(
                    f"method {cls.name!r} takes no option {w!r} (methods that do: {', '.join(takers(w))})"
                    for w in wrong
                )
            )
        try:
            options = cls.resolve_options(self.method_options)
        except ValueError as err:
            raise SettingsError(str(err)) from None
        scope = self.scope if self.scope != "auto" else cls.default_scope
        return dataclasses.replace(
            self,
            method=cls.name,
            method_options=options,
            scope=scope,
            data=_canonical_name(self.data, data_mod.available(), "data set"),
            model=_canonical_name(self.model, models_mod.available(), "model"),
        )

    def identity(self) -> dict[str, Any]:
        """The settings that define the run: those differing from their defaults, where-to-compute ones excluded."""
        res = self.resolved().to_dict()
        base = RunSettings().resolved().to_dict()
        own = RunSettings(method=res["method"]).resolved()
        base.update(_plain(own.method_options))  # the method's own defaults (lq's q is 0.5, SAP's 1)
        base["scope"] = own.scope  # `--scope global` of SAP, `--scope neuron` of lq are their defaults
        return {k: v for k, v in res.items() if k not in NOT_IDENTITY and v != base.get(k)}

    def run_hash(self) -> str:
        """SHA-256 of the JSON of :meth:`identity` (sorted keys): equal settings, equal hash."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def run_id(self) -> str:
        return f"{self.resolved().method}-{self.run_hash()[:10]}"

    def validate(self) -> RunSettings:
        """Check every value (cheap: loads no data); returns the resolved settings or raises :class:`SettingsError`."""
        res = self.resolved()
        checks = [
            (res.rounds >= 0, f"rounds must be >= 0, got {res.rounds}"),
            (res.epochs >= 1, f"epochs must be >= 1, got {res.epochs}"),
            (res.seed >= 0, f"seed must be >= 0, got {res.seed}"),
            (res.select_on in SELECT_ON, f"select_on must be one of {SELECT_ON}, got {res.select_on!r}"),
            (res.keep_checkpoints in KEEP, f"keep_checkpoints must be one of {KEEP}, got {res.keep_checkpoints!r}"),
            (
                res.stop_at_phase in ("", *STOP_PHASES),
                f"stop_at_phase must be one of {', '.join(STOP_PHASES)} (or empty: run all rounds), "
                f"got {res.stop_at_phase!r}",
            ),
            (
                res.augment in ("auto", "none", "crop_flip"),
                f"augment must be auto, none or crop_flip, got {res.augment!r}",
            ),
            (0 <= res.val_fraction < 1, f"val_fraction must be in [0, 1), got {res.val_fraction}"),
            (not (res.select_on == "val" and res.val_fraction == 0), "select_on val needs val_fraction > 0"),
            (res.clip_norm >= 0, f"clip_norm must be >= 0 (0 = no clipping), got {res.clip_norm}"),
            (res.threads >= 0, f"threads must be >= 0 (0 = chosen by model size), got {res.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        try:
            check_scope(res.scope)
            lookup(res.method).check_options(res.method_options, res.scope)
            res.train_config(augment=None)
            resolve_device(res.device)
            _check_options(res.data_options, data_mod.options(res.data), f"data set {res.data!r}")
            _check_options(res.model_options, models_mod.options(res.model), f"model {res.model!r}")
        except SettingsError:
            raise
        except (ValueError, TypeError) as err:
            raise SettingsError(str(err)) from err
        return res

    def train_config(self, augment: str | None) -> TrainConfig:
        return TrainConfig(
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            schedule=self.schedule,
            clip_norm=self.clip_norm if self.clip_norm > 0 else None,
            augment=augment,
        )


HELP: dict[str, str] = {
    "data": "Data set: " + ", ".join(data_mod.available()) + ".",
    "model": "Model: " + ", ".join(models_mod.available()) + " (adapted to the data's input shape).",
    "method": "Pruning method: " + ", ".join(available()) + " (or an alias); its options are flags of their own.",
    "scope": "Unit of each pruning decision: global, layer, neuron, or auto (the method's own default scope).",
    "rounds": "Pruning rounds T; the loop trains T+1 times (round 0 is dense).",
    "epochs": "Training epochs per round (cosine schedule restarted each round).",
    "seed": "Seed of the initial weights, the validation split, batch order and random pruning.",
    "method_options": "Options of the pruning method (a mapping; each is also a flag/key of its own).",
    "batch_size": "Training batch size.",
    "lr": "Learning rate (SGD).",
    "momentum": "SGD momentum.",
    "nesterov": "Nesterov momentum.",
    "weight_decay": "Weight decay.",
    "clip_norm": "Gradient-norm clipping after masking the gradients (0 = off).",
    "schedule": "Learning-rate schedule per round: cosine or constant.",
    "augment": "Training augmentation: auto (the data set's own: crop+flip for CIFAR), none, crop_flip.",
    "val_fraction": "Fraction of the training set held out for validation.",
    "select_on": "Keep each round's best epoch by val accuracy, or by test accuracy (the paper's protocol).",
    "data_options": "Extra options of the data set (a mapping; e.g. teacher's n_train).",
    "model_options": "Extra options of the model (a mapping; e.g. mlp's hidden).",
    "device": "auto (cuda if present), cpu or cuda[:N]; not part of the run's identity.",
    "threads": "CPU threads for training and measuring: 0 = by model size (one for small models, else the "
    "process's default); not part of the run's identity (results may differ in the last bits between thread counts).",
    "data_root": "Folder of torchvision-format data sets (default $PQPRUNE_DATA_ROOT or ./data).",
    "download": "Download a missing torchvision data set (needs a network).",
    "keep_checkpoints": "last: keep only the last round's tensors (every round's JSON stays); all: keep every round's.",
    "stop_at_phase": "Stop the run once its validation accuracy and PQI enter this phase (docs/math.md §9): "
    "compression or collapse; its result is the first compression round, or the last round before collapse.",
}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert a value (e.g. a string from the command line) to the type of setting ``name``
    (:func:`~pqprune.prune.methods.base.coerce_value`; a mapping for a dict setting; None is refused)."""
    kind = type(getattr(RunSettings(), name))
    try:
        if value is None:
            raise ValueError(value)
        if kind is dict:
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return dict(value)
        return coerce_value(kind, value)
    except (TypeError, ValueError):
        raise SettingsError(f"{source}: setting {name!r} must be a {kind.__name__}, got {value!r}") from None


def _closest(name: str, known: Iterable[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, sorted(known), n=1)
    return match[0] if match else None


def _canonical_name(name: str, available: Sequence[str], what: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in available:
        raise SettingsError(f"unknown {what} {name!r}; choose one of: {', '.join(available)}")
    return key


def _check_options(given: Mapping[str, Any], accepted: Mapping[str, Any], what: str) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise SettingsError(
            f"unknown option(s) {', '.join(unknown)} for {what}; accepted: {', '.join(accepted) or 'none'}"
        )


def build_method(settings: RunSettings, context: RunContext | None = None) -> Method:
    """The pruning method of ``settings``, built by its class from the run's options and ``context``."""
    res = settings.resolved()
    ctx = context if context is not None else RunContext(seed=res.seed)
    try:
        return lookup(res.method).from_options(res.method_options, ctx)
    except (ValueError, TypeError) as err:
        raise SettingsError(f"method {res.method!r}: {err}") from err


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file: a flat mapping of setting names.

    Keys are checked (an unknown one is a :class:`SettingsError` naming the file); values are returned as read.
    A ``[run]`` table / ``run:`` mapping is accepted as the whole file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SettingsError(f"cannot read config file {path}: {err.strerror or err}") from err
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser as a package
                try:
                    import tomli as tomllib  # type: ignore[no-redef,unused-ignore]
                except ImportError:
                    raise SettingsError(
                        f"config file {path}: reading TOML needs Python 3.11+ or the tomli package"
                    ) from None
            obj: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
            obj = {} if obj is None else obj
        else:
            raise SettingsError(f"config file {path}: use a .yaml, .yml or .toml file")
    except SettingsError:
        raise
    except Exception as err:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise SettingsError(f"config file {path} is not valid {path.suffix[1:].upper()}: {err}") from err
    if isinstance(obj, Mapping) and set(obj) == {"run"} and isinstance(obj["run"], Mapping):
        obj = obj["run"]
    if not isinstance(obj, Mapping):
        raise SettingsError(f"config file {path}: expected a mapping of setting names to values")
    RunSettings.from_dict(obj, source=f"config file {path}")  # checks keys and types
    return {str(k).replace("-", "_"): v for k, v in obj.items()}


def method_label(settings: RunSettings | Mapping[str, Any]) -> str:
    """The display label its class gives the method of ``settings`` (``SAP(0.5,1)``, ``LT``, ``LQ(0.5)``…);
    stored settings of any version are accepted."""
    s = settings if isinstance(settings, RunSettings) else RunSettings.from_stored(settings)
    return lookup(s.method).label(s.method_options)
