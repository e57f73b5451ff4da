"""The prune–retrain loop of one run (math.md §5), with per-round checkpoints, resume and run identity.

A run is one :class:`RunSettings`. Its identity is a hash of the settings that differ from their defaults
(OpenLTH style), so the same command names the same run: ``run_id = "<method>-<hash[:10]>"``, checkpoints under
``<runs_dir>/<run_id>/``, results in the database of :mod:`pqprune.store`.

The loop, for t = 0 … T (``T = settings.rounds``)::

    rewind (Pruner.rewind: surviving weights and all other state ← initial, pruned weights 0)
    train E epochs under the masks, keeping the epoch with the best validation accuracy (or test: --select-on test)
    evaluate it (val, test) and measure it (global and per-layer PQI and Gini of the survivors)
    if t < T: prune (Pruner.step → per-unit records), evaluate the pruned model before any retraining
    checkpoint round t atomically (safetensors + JSON), THEN record it in the database

Every round is seeded from ``(seed, t)`` alone, so a run resumed from the checkpoint of round k computes exactly
what an uninterrupted run computes: the checkpoint holds the masks and the pruner's state; the weights of round
k+1 come from the initial weights by rewinding. The checkpoint files are the source of truth; the database is
an index of them and is re-synchronised from them on resume.

Under ``torchrun`` with several processes (docs/distributed.md) every process runs the same loop under DDP
with the same global batch; the masks, computed by each from identical weights, are checked to be identical
every round; only rank 0 writes files and the database. The number of processes is not part of the identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import queue as queue_mod
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pqprune import data as data_mod
from pqprune import distributed
from pqprune import methods as methods_mod
from pqprune import models as models_mod
from pqprune import sparsity
from pqprune.files import FileFormatError, load_state_dict, save_json, save_tensors
from pqprune.methods import Method, UnitRecord
from pqprune.pruner import Pruner
from pqprune.store import DEFAULT_DB, Store, StoreError
from pqprune.train import Metrics, TrainConfig, evaluate, resolve_device, train_epochs

CHECKPOINT_FORMAT = "pqprune.round"
CHECKPOINT_VERSION = 1

# The pruning methods a run accepts, short name → name in pqprune.methods' registry.
METHODS: dict[str, str] = {"sap": "sap", "lt": "lottery_ticket", "os": "one_shot", "random": "random", "lq": "lq_neuron"}
SELECT_ON = ("val", "test")
KEEP = ("last", "all")
# The pair every round's PQI is reported with (math.md §2's default), whatever the method decides with, so that
# runs of different methods are comparable in the database.
REPORT_PQ = (0.5, 1.0)
# Settings that say where or how to compute, not what: they do not change a run's identity.
NOT_IDENTITY = frozenset({"device", "data_root", "download", "keep_checkpoints"})


class SettingsError(ValueError):
    """A run's settings are invalid or incompatible (unknown name, bad value, model that cannot take the data)."""


class RunBusy(RuntimeError):
    """Another process is computing the same run right now."""


Progress = Callable[[dict[str, Any]], None]


def _no_progress(_event: dict[str, Any]) -> None:
    pass


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class RunSettings:
    """Every setting of a run, with its default. Defaults follow Diao et al. (2023) and its code.

    ``rounds`` is T, the number of pruning steps: the loop trains T + 1 times (round 0 is the dense model).
    :data:`HELP` says what each setting means.
    """

    data: str = "mnist5k"
    model: str = "mlp"
    method: str = "sap"
    scope: str = "auto"
    rounds: int = 30
    epochs: int = 50
    seed: int = 0
    p: float = 0.5
    q: float = 1.0
    eta: float = 0.0
    gamma: float = 1.0
    beta: float = 0.9
    ratio: float = 0.2
    rewind_step: int = 0
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
    data_root: str = ""
    download: bool = False
    keep_checkpoints: str = "last"

    # ------------------------------------------------------------------ building
    @classmethod
    def names(cls) -> list[str]:
        """All setting names, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return cls().to_dict()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "settings") -> "RunSettings":
        """Settings from a mapping (dashes in keys read as underscores); an unknown key is a :class:`SettingsError`."""
        known = set(cls.names())
        clean: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                close = _closest(name, known)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise SettingsError(f"{source}: unknown setting {key!r}{hint}; known settings: {', '.join(cls.names())}")
            clean[name] = _coerce(name, value, source)
        return cls(**clean)

    def replace(self, **changes: Any) -> "RunSettings":
        """A copy with some settings changed (values coerced and checked like :meth:`from_dict`)."""
        return RunSettings.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    # ------------------------------------------------------------------ meaning
    def resolved(self) -> "RunSettings":
        """Canonical names (``lottery_ticket`` → ``lt``, ``MNIST-5k`` → ``mnist5k``) and ``scope="auto"`` resolved."""
        method = _canonical_method(self.method)
        scope = self.scope if self.scope != "auto" else methods_mod.get(METHODS[method]).default_scope
        return dataclasses.replace(
            self,
            method=method,
            scope=scope,
            data=_canonical_name(self.data, data_mod.available(), "data set"),
            model=_canonical_name(self.model, models_mod.available(), "model"),
        )

    def identity(self) -> dict[str, Any]:
        """The settings that define the run: those differing from their defaults, where-to-compute ones excluded."""
        res = self.resolved().to_dict()
        base = RunSettings().resolved().to_dict()
        base["scope"] = RunSettings(method=res["method"]).resolved().scope  # `--scope global` of SAP is its default
        return {k: v for k, v in res.items() if k not in NOT_IDENTITY and v != base[k]}

    def run_hash(self) -> str:
        """SHA-256 of the JSON of :meth:`identity` (sorted keys): equal settings, equal hash."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def run_id(self) -> str:
        return f"{self.resolved().method}-{self.run_hash()[:10]}"

    def validate(self) -> "RunSettings":
        """Check every value (cheap: loads no data); returns the resolved settings or raises :class:`SettingsError`."""
        res = self.resolved()
        checks = [
            (res.rounds >= 0, f"rounds must be >= 0, got {res.rounds}"),
            (res.epochs >= 1, f"epochs must be >= 1, got {res.epochs}"),
            (res.seed >= 0, f"seed must be >= 0, got {res.seed}"),
            (res.select_on in SELECT_ON, f"select_on must be one of {SELECT_ON}, got {res.select_on!r}"),
            (res.keep_checkpoints in KEEP, f"keep_checkpoints must be one of {KEEP}, got {res.keep_checkpoints!r}"),
            (res.augment in ("auto", "none", "crop_flip"), f"augment must be auto, none or crop_flip, got {res.augment!r}"),
            (0 <= res.val_fraction < 1, f"val_fraction must be in [0, 1), got {res.val_fraction}"),
            (not (res.select_on == "val" and res.val_fraction == 0), "select_on val needs val_fraction > 0"),
            (res.clip_norm >= 0, f"clip_norm must be >= 0 (0 = no clipping), got {res.clip_norm}"),
            (res.rewind_step >= 0, f"rewind_step must be >= 0, got {res.rewind_step}"),
            (0 < res.ratio < 1, f"ratio must be in (0, 1), got {res.ratio}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        try:
            sparsity.check_pq(res.p, res.q)  # every run reports I_{p,q}
            sparsity.check_scope(res.scope)
            method = build_method(res)
            method.check_scope(res.scope)
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
    "method": "Pruning method: sap (SAP), lt (lottery ticket), os (one-shot), random, lq (l_q per neuron).",
    "scope": "Unit of each pruning decision: global, layer, neuron, or auto (the method's own: neuron for lq).",
    "rounds": "Pruning rounds T; the loop trains T+1 times (round 0 is dense).",
    "epochs": "Training epochs per round (cosine schedule restarted each round).",
    "seed": "Seed of the initial weights, the validation split, batch order and random pruning.",
    "p": "SAP's p (0 < p < q); for lq, the l_q exponent (0 < p < 1).",
    "q": "SAP's q.",
    "eta": "SAP's eta_r >= 0 (larger prunes more).",
    "gamma": "SAP's gamma > 0 (scales the pruned fraction).",
    "beta": "SAP's cap beta in (0, 1] on the fraction pruned per round.",
    "ratio": "Fraction pruned per round by lt, os and random.",
    "rewind_step": "lt: rewind to the weights after this many training steps of round 0 (0 = initial).",
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
    "data_root": "Folder of torchvision-format data sets (default $PQPRUNE_DATA_ROOT or ./data).",
    "download": "Download a missing torchvision data set (needs a network).",
    "keep_checkpoints": "last: keep only the last round's tensors (every round's JSON stays); all: keep every round's.",
}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert a value (e.g. a string from the command line) to the type of setting ``name``."""
    default = getattr(RunSettings(), name)
    kind = type(default)
    try:
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
        if kind is dict:
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return dict(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
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


def _canonical_method(name: str) -> str:
    key = name.strip().lower()
    if key in METHODS:
        return key
    for short, registered in METHODS.items():
        if key == registered:
            return short
    raise SettingsError(f"unknown pruning method {name!r}; choose one of: {', '.join(METHODS)}")


def _check_options(given: Mapping[str, Any], accepted: Mapping[str, Any], what: str) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise SettingsError(f"unknown option(s) {', '.join(unknown)} for {what}; accepted: {', '.join(accepted) or 'none'}")


def build_method(settings: RunSettings) -> Method:
    """The pruning method of resolved ``settings`` (see :class:`RunSettings` for which settings each uses)."""
    name = METHODS[settings.method]
    if settings.method == "sap":
        kw: dict[str, Any] = dict(p=settings.p, q=settings.q, eta=settings.eta, gamma=settings.gamma, beta=settings.beta)
    elif settings.method == "lt":
        kw = dict(ratio=settings.ratio, rewind_step=settings.rewind_step)
    elif settings.method == "os":
        kw = dict(ratio=settings.ratio)
    elif settings.method == "random":
        kw = dict(ratio=settings.ratio, seed=settings.seed)
    else:  # lq, index rule: (p, q) := (p, 1)
        kw = dict(q=settings.p, eta=settings.eta, gamma=settings.gamma, beta=settings.beta)
    return methods_mod.get(name, **kw)


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
                    import tomli as tomllib  # type: ignore[no-redef]
                except ImportError:
                    raise SettingsError(f"config file {path}: reading TOML needs Python 3.11+ or the tomli package") from None
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


# --------------------------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    """What a run needs before its loop: checked settings, data on the device, a fresh model."""

    settings: RunSettings
    data: data_mod.DataSplits
    model: nn.Module
    device: torch.device
    train_config: TrainConfig


def prepare(settings: RunSettings, device: torch.device | None = None) -> Prepared:
    """Validate settings, load the data, build the model and check that it takes the data.

    ``device`` overrides the device setting (a distributed run puts each process on its own ``cuda:LOCAL_RANK``).
    Nothing is written. Raises :class:`SettingsError`, or :class:`pqprune.data.DatasetNotFound` (one line saying
    where the files were looked for) for a missing data set.
    """
    res = settings.validate()
    try:
        splits = data_mod.get_dataset(
            res.data,
            res.data_root or None,
            seed=res.seed,
            val_fraction=res.val_fraction,
            download=res.download,
            **res.data_options,
        )
    except data_mod.DatasetNotFound:
        raise
    except (ValueError, TypeError) as err:
        raise SettingsError(f"data set {res.data!r}: {err}") from err
    try:
        model = models_mod.build_model(res.model, splits.input_shape, splits.num_classes, seed=res.seed, **res.model_options)
    except (ValueError, TypeError) as err:
        raise SettingsError(f"model {res.model!r}: {err}") from err
    device = device if device is not None else resolve_device(res.device)
    model.to(device)
    _check_forward(model, splits, res)
    splits = _to_device(splits, device)
    augment = splits.augment if res.augment == "auto" else (None if res.augment == "none" else res.augment)
    return Prepared(res, splits, model, device, res.train_config(augment))


def _check_forward(model: nn.Module, splits: data_mod.DataSplits, res: RunSettings) -> None:
    """One forward pass of two examples, so an incompatible model and data set fail before anything is written."""
    x = splits.train.x[:2].to(next(model.parameters()).device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x)
    except Exception as err:  # shape errors come as RuntimeError, ValueError, IndexError…
        raise SettingsError(
            f"model {res.model!r} cannot take data set {res.data!r} (inputs of shape {tuple(splits.input_shape)}): "
            f"{str(err).splitlines()[0]}"
        ) from err
    finally:
        model.train(was)
    want = (2, splits.num_classes)
    if tuple(out.shape) != want:
        raise SettingsError(
            f"model {res.model!r} on data set {res.data!r} outputs shape {tuple(out.shape)}, expected {want}"
        )


def _to_device(splits: data_mod.DataSplits, device: torch.device) -> data_mod.DataSplits:
    if device.type == "cpu":
        return splits
    move = lambda s: data_mod.Split(s.x.to(device), s.y.to(device))  # noqa: E731
    return dataclasses.replace(splits, train=move(splits.train), val=move(splits.val), test=move(splits.test))


# --------------------------------------------------------------------------------------------- checkpoints
def _flatten(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Nested dicts/lists of tensors → a JSON skeleton with ``{"__tensor__": key}`` leaves, tensors collected."""
    if isinstance(obj, Tensor):
        key = prefix
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        return {str(k): _flatten(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(skeleton, Mapping):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton


def _round_name(t: int) -> str:
    return f"round_{t:03d}"


class RunDir:
    """The folder of one run: ``settings.json``, ``initial.safetensors``, ``round_XXX.{json,safetensors}``, a lock."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.path = root / run_id
        self.run_id = run_id

    def json(self, t: int) -> Path:
        return self.path / f"{_round_name(t)}.json"

    def tensors(self, t: int) -> Path:
        return self.path / f"{_round_name(t)}.safetensors"

    @property
    def initial(self) -> Path:
        return self.path / "initial.safetensors"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for computing this run; released by the OS even on SIGKILL."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "w")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(f"run {self.run_id} is being computed by another process ({self.path})") from None
            yield
        finally:
            fh.close()

    def is_live(self) -> bool:
        """Whether a process is computing this run now (holds its lock). A run marked ``running`` in the database
        that is not live was killed: rerunning the same command resumes it."""
        path = self.path / ".lock"
        if not path.exists():
            return False
        with open(path, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    def finished_rounds(self) -> list[int]:
        """Rounds whose JSON exists (a round's JSON is written last, so it marks the round complete)."""
        out = []
        for p in self.path.glob("round_*.json"):
            m = re.fullmatch(r"round_(\d+)\.json", p.name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def read_round(self, t: int) -> dict[str, Any]:
        path = self.json(t)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise FileFormatError(f"{path}: unreadable round checkpoint ({err})") from err
        if doc.get("format") != CHECKPOINT_FORMAT or int(doc.get("version", 0)) > CHECKPOINT_VERSION:
            raise FileFormatError(f"{path}: not a pqprune round checkpoint of version <= {CHECKPOINT_VERSION}")
        return doc

    def last_checkpoint(self) -> tuple[int, dict[str, Tensor], dict[str, Tensor]] | None:
        """(round, model weights, masks) of the last complete round that kept its tensors; None if there is none.

        The masks are the pruner's after that round's pruning step, so for an unfinished run they may already be
        those of the next round; they always fit the weights (pruning only removes).
        """
        rounds = [t for t in self.finished_rounds() if self.tensors(t).exists()]
        if not rounds:
            return None
        t = rounds[-1]
        doc = self.read_round(t)
        tensors = load_state_dict(self.tensors(t))
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        skeleton = (doc.get("pruner") or {}).get("masks") or {}
        try:
            masks = {name: tensors[leaf["__tensor__"]] for name, leaf in skeleton.items()}
        except (KeyError, TypeError) as err:
            raise FileFormatError(f"{self.tensors(t)}: masks named in {self.json(t)} are missing ({err})") from err
        return t, state, masks

    def settings(self) -> dict[str, Any] | None:
        """The run's settings as saved in ``settings.json``; None when missing or unreadable."""
        try:
            return json.loads((self.path / "settings.json").read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _write_round_tensors(rd: RunDir, t: int, model_state: Mapping[str, Tensor], pruner_state: Mapping[str, Any]) -> Any:
    """Write the round's tensors atomically (model weights, masks, pruner state); returns the pruner's skeleton.

    The initial weights are left out: they are saved once per run in ``initial.safetensors``.
    """
    tensors: dict[str, Tensor] = {f"model/{k}": v for k, v in model_state.items()}
    skeleton = _flatten({k: v for k, v in pruner_state.items() if k != "initial"}, "pruner", tensors)
    save_tensors(tensors, rd.tensors(t), {"format": CHECKPOINT_FORMAT, "round": str(t)})
    return skeleton


def _write_round_json(rd: RunDir, t: int, doc: Mapping[str, Any], keep: str) -> None:
    """Write the round's JSON atomically, after its tensors: the JSON marks the round complete. Then drop the
    previous round's tensors if only the last are kept (never before: a crash must leave a resumable round)."""
    save_json(_json_safe({**doc, "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}), rd.json(t))
    if keep == "last" and t > 0:
        rd.tensors(t - 1).unlink(missing_ok=True)


def _load_pruner_state(rd: RunDir, t: int, doc: Mapping[str, Any], initial: Mapping[str, Tensor]) -> dict[str, Any]:
    tensors = load_state_dict(rd.tensors(t))
    state = _unflatten(doc["pruner"], tensors)
    state["initial"] = dict(initial)
    return state


# --------------------------------------------------------------------------------------------- the loop
@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the run's id, status, folder and its rounds as in the database."""

    run_id: str
    status: str
    path: Path
    rounds: list[dict[str, Any]]
    reused: bool = False
    resumed_from: int | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


def _seed_for(seed: int, t: int) -> int:
    """A per-round seed from (seed, round) alone, so a resumed round draws what an uninterrupted one draws."""
    return int(np.random.SeedSequence([seed, t]).generate_state(1, dtype=np.uint32)[0])


def _measure(model: nn.Module, masks: Mapping[str, Tensor], p: float, q: float, density: Mapping[str, Any]) -> dict[str, Any]:
    """Global and per-layer PQI (p, q) and Gini of the surviving weights, with per-layer density."""
    stats = sparsity.power_sums(model, (p, q), masks)
    def pqi(scope: str) -> dict[str, float]:
        units = sparsity.reduce_scope(stats, scope)  # type: ignore[arg-type]
        values = sparsity.map_units(units, lambda u: sparsity.pq_from_sums(u.count, u.sums[p], u.sums[q], p, q))
        return {n: float(v[0]) for n, v in values.items()}
    layer_pqi = pqi("layer")
    layer_gini = sparsity.gini(model, "layer", masks)
    layers = {
        n: {"pqi": layer_pqi[n], "gini": layer_gini[n], "density": density[n].density}  # type: ignore[index]
        for n in layer_pqi
    }
    return {"pqi": pqi("global")[sparsity.GLOBAL], "gini": sparsity.gini(model, "global", masks), "layers": layers}


def _unit_dict(r: UnitRecord) -> dict[str, Any]:
    return {"unit": r.unit, "d": r.d, "pqi": r.index, "r": r.r, "c": r.c, "clipped": r.beta_clipped}


class _Loop:
    """One run's state between rounds; :meth:`round` does one round of math.md §5.

    In a distributed run every rank runs the same loop on the same model (trained under DDP) and computes the
    same masks from the same weights; only rank 0 (``store`` given) writes checkpoints and the database.
    """

    def __init__(self, prep: Prepared, rd: RunDir, store: Store | None, progress: Progress,
                 ctx: distributed.Context | None = None) -> None:
        self.prep, self.rd, self.store, self.progress = prep, rd, store, progress
        self.s = prep.settings
        self.model = prep.model
        self.pruner = Pruner(self.model, build_method(self.s), self.s.scope)
        self.pending: dict[str, Any] = {}  # the pruned-before-retraining metrics for the next round's row
        self.ctx = ctx or distributed.Context(device=prep.device)
        self.dist = self.ctx.active  # collectives in training, evaluation and the mask check
        self.main = self.ctx.is_main  # writes files and the database

    def _verify_masks(self, where: str) -> str | None:
        """Distributed: check that all ranks hold the same masks (stops the run otherwise); the digest in hex."""
        if not self.dist:
            return None
        return distributed.digest_hex(distributed.verify_masks(self.pruner.masks, where)[0])

    def _evaluate(self, split: Any) -> Metrics:
        return evaluate(self.model, split, self.prep.train_config.eval_batch_size, distributed=self.dist)

    def restore(self, t: int, initial: Mapping[str, Tensor]) -> None:
        doc = self.rd.read_round(t)
        self.pruner.load_state_dict(_load_pruner_state(self.rd, t, doc, initial))
        self.pending = dict(doc.get("next") or {})

    def _train(self, t: int, seed: int) -> tuple[dict[str, Any], float, float]:
        """Rewind, train E epochs under the masks, load the best epoch's weights (by the selection split).

        Returns the best epoch's record (``epoch``, ``metrics`` on the selection split), the training seconds
        and the seconds spent evaluating after each epoch (reported as evaluation, not training).
        """
        s, model, pruner, data = self.s, self.model, self.pruner, self.prep.data
        t0 = time.perf_counter()
        pruner.rewind()
        torch.manual_seed(seed)  # global RNG (dropout) is per round too
        select = data.val if s.select_on == "val" else data.test
        best: dict[str, Any] = {"acc": -math.inf, "state": None, "epoch": 0, "metrics": None}
        eval_seconds = 0.0

        def on_epoch(info: Any) -> None:
            nonlocal eval_seconds
            e0 = time.perf_counter()
            m = self._evaluate(select)
            if best["state"] is None or m.accuracy > best["acc"]:  # ties keep the earlier epoch
                best.update(acc=m.accuracy, epoch=info.epoch + 1, metrics=m,
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})
            eval_seconds += time.perf_counter() - e0
            self.progress({"event": "epoch", "run_id": self.rd.run_id, "round": t, "epoch": info.epoch + 1,
                           "epochs": s.epochs, "loss": info.loss, f"{s.select_on}_accuracy": m.accuracy})

        on_step = None
        if t == 0 and s.method == "lt" and s.rewind_step > 0:
            def on_step(info: Any) -> None:  # late rewinding [Frankle et al. 2020]: weights after k steps
                if info.step + 1 == s.rewind_step:
                    pruner.save_rewind_point()

        # Gradients are masked before clipping (so the norm is that of the survivors), weights after the step.
        train_epochs(
            model, data.train, s.epochs, self.prep.train_config, seed=seed,
            before_step=pruner.maskset.mask_grads, after_step=pruner.enforce,
            on_epoch=on_epoch, on_step=on_step, distributed=self.dist,
        )
        model.load_state_dict(best["state"])
        return best, time.perf_counter() - t0 - eval_seconds, eval_seconds

    def round(self, t: int) -> dict[str, Any]:
        s, model, pruner, data = self.s, self.model, self.pruner, self.prep.data
        last = t == s.rounds
        seed = _seed_for(s.seed, t)
        sec = dict(train=0.0, evaluate=0.0, measure=0.0, prune=0.0, checkpoint=0.0)
        self.progress({"event": "round", "run_id": self.rd.run_id, "round": t, "rounds": s.rounds + 1, "epochs": s.epochs})
        # Distributed: the masks trained under must be the same on every rank (also right after a resume).
        digest = self._verify_masks(f"round {t}")

        # --- retrain from the initial weights under the masks, keeping the best epoch
        best, sec["train"], eval_seconds = self._train(t, seed)

        # --- evaluate the kept model (the selection split's metrics are those of the kept epoch)
        t0 = time.perf_counter()
        other = data.test if s.select_on == "val" else data.val
        other_m = self._evaluate(other) if len(other) else Metrics(math.nan, math.nan)
        val_m, test_m = (best["metrics"], other_m) if s.select_on == "val" else (other_m, best["metrics"])
        sec["evaluate"] = eval_seconds + time.perf_counter() - t0

        # --- measure
        t0 = time.perf_counter()
        report = pruner.density_report()
        meas = _measure(model, pruner.masks, *REPORT_PQ, report)
        sec["measure"] = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "density": report["total"].density,
            "test_accuracy": test_m.accuracy, "test_loss": test_m.loss,
            "val_accuracy": val_m.accuracy, "val_loss": val_m.loss,
            "pruned_test_accuracy": self.pending.get("pruned_test_accuracy"),
            "pruned_val_accuracy": self.pending.get("pruned_val_accuracy"),
            "pruned_pqi": self.pending.get("pruned_pqi"),
            "pqi": meas["pqi"], "gini": meas["gini"], "layers": meas["layers"], "best_epoch": best["epoch"],
        }

        # --- prune, then evaluate the pruned model before any retraining (it belongs to the next round's row)
        units: list[dict[str, Any]] = []
        nxt: dict[str, Any] = {}
        next_digest = None
        t0 = time.perf_counter()
        # The weights measured above, for the checkpoint (only rank 0 writes one).
        model_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if self.main else {}
        sec["checkpoint"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if not last:
            # Every rank prunes its own (identical) weights with the same deterministic method, then checks.
            units = [_unit_dict(r) for r in pruner.step()]
            next_digest = self._verify_masks(f"round {t} (after its pruning step)")
        sec["prune"] = time.perf_counter() - t0
        if not last:
            t0 = time.perf_counter()
            pv = self._evaluate(data.val) if len(data.val) else Metrics(math.nan, math.nan)
            pt = self._evaluate(data.test)
            nxt = {"pruned_val_accuracy": pv.accuracy, "pruned_test_accuracy": pt.accuracy}
            sec["evaluate"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            # PQI of the just-pruned weights, to set against the retrained model's (Diao23, Fig. 5).
            nxt["pruned_pqi"] = sparsity.pq_index(model, *REPORT_PQ, masks=pruner.masks)
            sec["measure"] += time.perf_counter() - t0

        self.pending = nxt
        if not self.main:
            return metrics

        # --- checkpoint (atomic), then the database
        t0 = time.perf_counter()
        skeleton = _write_round_tensors(self.rd, t, model_state, pruner.state_dict())
        sec["checkpoint"] += time.perf_counter() - t0  # the small JSON below is not counted: it carries this number
        metrics.update({f"seconds_{k}": v for k, v in sec.items()})
        doc = {"run_id": self.rd.run_id, "round": t, "metrics": metrics, "units": units, "next": nxt, "pruner": skeleton}
        if self.dist:  # how this round was computed: not part of the run's identity (docs/distributed.md)
            # Digests every rank agreed on: of m_t (trained under) and of m_{t+1} (the checkpoint's masks).
            doc["launch"] = {**self.ctx.describe(), "mask_digest": digest, "next_mask_digest": next_digest}
        _write_round_json(self.rd, t, doc, s.keep_checkpoints)
        assert self.store is not None
        self.store.record_round(self.rd.run_id, t, metrics, units)
        self.progress({"event": "round_end", "run_id": self.rd.run_id, "round": t, "rounds": s.rounds + 1,
                       "metrics": {k: v for k, v in metrics.items() if k != "layers"}})
        return metrics


def _json_safe(obj: Any) -> Any:
    """NaN/inf → None, so checkpoint JSON stays standard JSON."""
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _sync_store(store: Store, rd: RunDir, upto: int) -> None:
    """Write rounds 0..upto from their checkpoint JSONs to the database (idempotent; the files are the truth)."""
    have = {r["round"] for r in store.rounds(rd.run_id)}
    for t in range(upto + 1):
        if t not in have:
            doc = rd.read_round(t)
            store.record_round(rd.run_id, t, doc["metrics"], doc.get("units", []))


def run_experiment(
    settings: RunSettings,
    db: Store | str | os.PathLike = DEFAULT_DB,
    runs_dir: str | os.PathLike = "runs",
    progress: Progress | None = None,
) -> RunResult:
    """Run (or resume, or reuse) the prune–retrain loop of ``settings``; see the module docstring.

    ``db`` is an open :class:`~pqprune.store.Store` or a database path. ``progress`` receives event dicts
    (``event`` = ``start``, ``round``, ``epoch``, ``round_end``, ``end``) for display.

    Raises :class:`SettingsError`, :class:`pqprune.data.DatasetNotFound` or :class:`~pqprune.store.StoreError`
    before anything is written; :class:`RunBusy` if another process computes the same run. On Ctrl-C the run is
    marked ``interrupted`` (the checkpoint of the last finished round stays) and ``KeyboardInterrupt``
    propagates; on any other error it is marked ``failed``.

    Launched by torchrun with several processes (docs/distributed.md), every process calls this with the same
    arguments: all train together under DDP; only rank 0 opens the database, takes the run's lock, writes files
    and reports progress. The other ranks return a result with the rounds they computed (the database's rows
    are rank 0's). The number of processes is not part of the run's identity.
    """
    progress = progress or _no_progress
    res = settings.validate()  # before any process group: bad input fails alike on every rank
    with distributed.session(resolve_device(res.device)) as ctx:
        prep = prepare(res, device=ctx.device if ctx.active else None)  # validates; writes nothing
        res = prep.settings
        run_id, run_hash = res.run_id(), res.run_hash()
        rd = RunDir(Path(runs_dir), run_id)
        if not ctx.is_main:
            return _run_follower(prep, rd, ctx)
        with contextlib.ExitStack() as stack:
            try:
                _check_runs_dir(Path(runs_dir))
                store = stack.enter_context(_open_store(db))
                stack.enter_context(rd.lock())
                last_done = _resume_point(rd, res, run_hash)
                load_initial = rd.initial.exists() and last_done is not None
            except BaseException as err:
                distributed.announce_start(ctx, error=f"{type(err).__name__}: {err}")
                raise
            distributed.announce_start(ctx, {"last_done": last_done, "load_initial": load_initial})
            return _run_locked(prep, rd, store, run_hash, progress, last_done, load_initial, ctx)


@contextlib.contextmanager
def _open_store(db: Store | str | os.PathLike) -> Iterator[Store]:
    if isinstance(db, Store):
        yield db
        return
    with Store(db) as store:
        yield store


def _check_runs_dir(root: Path) -> None:
    ancestor = root
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise SettingsError(f"cannot write run folders under {root}: {ancestor} is not a writable folder")


def _resume_point(rd: RunDir, res: RunSettings, run_hash: str) -> int | None:
    """The last complete round whose tensors can be read (``res.rounds`` = finished), or None to start afresh.

    Raises :class:`FileFormatError` if the folder holds another run's checkpoints.
    """
    done = rd.finished_rounds()
    if done:
        try:
            saved = json.loads((rd.path / "settings.json").read_text())
        except (OSError, ValueError) as err:
            raise FileFormatError(f"{rd.path}: has round checkpoints but no readable settings.json ({err})") from err
        if saved.get("run_hash") != run_hash:
            raise FileFormatError(f"{rd.path}: holds run {saved.get('run_hash')}, not {run_hash}; move the folder away")
    last_done = max((t for t in done if t <= res.rounds), default=None)
    # Only rounds whose tensors are readable can be resumed from (the JSON alone is not enough).
    while last_done is not None and not rd.tensors(last_done).exists() and last_done < res.rounds:
        last_done = last_done - 1 if last_done - 1 in done else None
    return last_done


def _initial_weights(prep: Prepared, rd: RunDir, load: bool) -> dict[str, Tensor]:
    """The run's initial weights: read from ``initial.safetensors`` into the model (``load``), else the model's own."""
    if load:
        initial = load_state_dict(rd.initial)
        prep.model.load_state_dict(initial)
        return initial
    return {k: v.detach().clone() for k, v in prep.model.state_dict().items()}


def _run_locked(prep: Prepared, rd: RunDir, store: Store, run_hash: str, progress: Progress, last_done: int | None,
                load_initial: bool, ctx: distributed.Context) -> RunResult:
    res = prep.settings
    settings_doc: dict[str, Any] = {"run_id": rd.run_id, "run_hash": run_hash, "identity": res.identity(),
                                    "settings": res.to_dict()}
    # What the database's settings JSON holds: the settings, plus (distributed runs only) how they were launched.
    db_settings = {**res.to_dict(), "launch": ctx.describe()} if ctx.active else res.to_dict()
    if ctx.active:
        settings_doc["launch"] = ctx.describe()

    if last_done == res.rounds:  # finished: reuse
        run = store.get_run(rd.run_id)
        if run is None or run["status"] != "finished" or run["rounds_done"] != res.rounds + 1:
            store.start_run(rd.run_id, run_hash, db_settings)
            _sync_store(store, rd, res.rounds)
            store.set_status(rd.run_id, "finished")
        progress({"event": "start", "run_id": rd.run_id, "rounds": res.rounds + 1, "epochs": res.epochs, "reused": True,
                  "resumed_from": None})
        progress({"event": "end", "run_id": rd.run_id, "status": "finished", "reused": True})
        run = store.get_run(rd.run_id)
        return RunResult(rd.run_id, "finished", rd.path, store.rounds(rd.run_id), reused=True,
                         seconds=run["seconds"] if run else 0.0, settings=res.to_dict())

    start = time.perf_counter()
    save_json(settings_doc, rd.path / "settings.json")
    store.start_run(rd.run_id, run_hash, db_settings)
    status, message = "failed", None
    try:
        initial = _initial_weights(prep, rd, load_initial)
        if not load_initial:
            save_tensors(initial, rd.initial, {"format": "pqprune.initial"})
        loop = _Loop(prep, rd, store, progress, ctx)
        first = 0
        if last_done is not None:
            loop.restore(last_done, initial)
            _sync_store(store, rd, last_done)
            first = last_done + 1
        store.truncate_rounds(rd.run_id, first - 1)  # rows of rounds that will be recomputed are stale
        progress({"event": "start", "run_id": rd.run_id, "rounds": res.rounds + 1, "epochs": res.epochs,
                  "reused": False, "resumed_from": last_done})
        for t in range(first, res.rounds + 1):
            loop.round(t)
        status = "finished"
    except KeyboardInterrupt:
        status, message = "interrupted", "interrupted (Ctrl-C); rerun the same command to resume"
        raise
    except BaseException as err:
        message = f"{type(err).__name__}: {err}"
        raise
    finally:
        seconds = time.perf_counter() - start
        with contextlib.suppress(Exception):  # never mask the original error with a database one
            store.set_status(rd.run_id, status, add_seconds=seconds, message=message)
        progress({"event": "end", "run_id": rd.run_id, "status": status, "reused": False})
    run = store.get_run(rd.run_id)
    return RunResult(rd.run_id, status, rd.path, store.rounds(rd.run_id), resumed_from=last_done,
                     seconds=run["seconds"] if run else seconds, settings=res.to_dict())


def _run_follower(prep: Prepared, rd: RunDir, ctx: distributed.Context) -> RunResult:
    """A rank > 0 of a distributed run: train and prune in step with rank 0, write nothing.

    It starts where rank 0 says (the same last complete round, read from rank 0's checkpoint files, which are
    complete before rank 0 announces them) and returns the metrics it computed itself.
    """
    res = prep.settings
    start = distributed.receive_start(ctx)  # PeerFailed if rank 0 could not start
    last_done = start["last_done"]
    if last_done == res.rounds:
        return RunResult(rd.run_id, "finished", rd.path, [], reused=True, settings=res.to_dict())
    t0 = time.perf_counter()
    initial = _initial_weights(prep, rd, bool(start["load_initial"]))
    loop = _Loop(prep, rd, None, _no_progress, ctx)
    first = 0
    if last_done is not None:
        loop.restore(last_done, initial)
        first = last_done + 1
    rounds = [{"round": t, **loop.round(t)} for t in range(first, res.rounds + 1)]
    return RunResult(rd.run_id, "finished", rd.path, rounds, resumed_from=last_done,
                     seconds=time.perf_counter() - t0, settings=res.to_dict())


# --------------------------------------------------------------------------------------------- sweeps
def expand_grid(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[RunSettings]:
    """The product of the value lists in ``grid`` over ``base`` settings, in order, duplicates (same run) removed.

    ``expand_grid({"epochs": 5}, {"method": ["sap", "lt"], "seed": [0, 1]})`` → 4 settings. Keys are checked.
    """
    import itertools

    keys = list(grid)
    for key in keys:
        if not grid[key]:
            raise SettingsError(f"sweep: empty list of values for {key!r}")
    out: dict[str, RunSettings] = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = RunSettings.from_dict({**base, **dict(zip(keys, combo))})
        out.setdefault(settings.run_id(), settings)
    return list(out.values())


@dataclass
class SweepItem:
    """The outcome of one run of a sweep: ``status`` is finished, skipped (already finished), failed or interrupted."""

    run_id: str
    settings: RunSettings
    status: str
    message: str | None = None


def check_sweep(settings_list: Sequence[RunSettings]) -> None:
    """Validate every run of a sweep before any starts: settings, data and model–data compatibility.

    Each distinct (data, model) pair is prepared once, so a bad combination fails the sweep up front.
    """
    seen: set[str] = set()
    for settings in settings_list:
        res = settings.validate()
        key = json.dumps([res.data, res.data_options, res.model, res.model_options, res.data_root], sort_keys=True)
        if key not in seen:
            seen.add(key)
            prepare(res.replace(device="cpu"))


def run_sweep(
    settings_list: Sequence[RunSettings],
    db: str | os.PathLike = DEFAULT_DB,
    runs_dir: str | os.PathLike = "runs",
    workers: int = 1,
    progress: Progress | None = None,
) -> list[SweepItem]:
    """Run every setting (skipping finished runs) with ``workers`` processes of one thread each.

    All runs are checked first (:func:`check_sweep`), so bad input fails before anything is written. A run that
    fails is recorded as failed and the sweep goes on. Progress events carry a ``worker`` field. On Ctrl-C the
    workers mark their runs interrupted and stop; ``KeyboardInterrupt`` propagates.
    """
    if workers < 1:
        raise SettingsError(f"workers must be >= 1, got {workers}")
    progress = progress or _no_progress
    check_sweep(settings_list)
    _check_runs_dir(Path(runs_dir))
    items: dict[str, SweepItem] = {}
    todo: list[RunSettings] = []
    with Store(db) as store:
        for settings in settings_list:
            run_id = settings.run_id()
            run = store.get_run(run_id)
            if run is not None and run["status"] == "finished" and RunDir(Path(runs_dir), run_id).json(settings.rounds).exists():
                items[run_id] = SweepItem(run_id, settings, "skipped")
                progress({"event": "skipped", "run_id": run_id})
            else:
                todo.append(settings)
    if workers == 1 or len(todo) <= 1:
        for settings in todo:
            items[settings.run_id()] = _sweep_one(settings, db, runs_dir, progress)
    else:
        for item in _run_parallel(todo, db, runs_dir, min(workers, len(todo)), progress):
            items[item.run_id] = item
    return [items[s.run_id()] for s in settings_list]


def _sweep_one(settings: RunSettings, db: Any, runs_dir: Any, progress: Progress) -> SweepItem:
    run_id = settings.run_id()
    try:
        result = run_experiment(settings, db, runs_dir, progress)
    except (KeyboardInterrupt, StoreError):
        raise
    except Exception as err:  # one failed run does not stop the sweep
        return SweepItem(run_id, settings, "failed", f"{type(err).__name__}: {err}")
    return SweepItem(run_id, settings, "skipped" if result.reused else result.status)


def _worker_main(index: int, tasks: Any, events: Any, db: str, runs_dir: str) -> None:
    """A sweep worker process: one thread, runs tasks until the sentinel; SIGTERM = one clean Ctrl-C."""
    import signal

    def on_term(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not break the clean-up
        raise KeyboardInterrupt

    # The parent owns Ctrl-C and forwards it as SIGTERM, so each worker is interrupted exactly once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    torch.set_num_threads(1)  # small models: N single-thread workers beat one N-thread process
    send = lambda e: events.put({**e, "worker": index})  # noqa: E731
    try:
        while True:
            settings = tasks.get()
            if settings is None:
                break
            item = _sweep_one(settings, db, runs_dir, send)
            events.put({"event": "result", "worker": index, "run_id": item.run_id, "status": item.status, "message": item.message})
    except KeyboardInterrupt:
        events.put({"event": "worker_interrupted", "worker": index})
    except BaseException as err:  # e.g. a database error: report it rather than die silently
        events.put({"event": "worker_error", "worker": index, "message": f"{type(err).__name__}: {err}"})


def _run_parallel(todo: Sequence[RunSettings], db: Any, runs_dir: Any, workers: int, progress: Progress) -> list[SweepItem]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
    tasks, events = ctx.Queue(), ctx.Queue()
    by_id = {s.run_id(): s for s in todo}
    for settings in todo:
        tasks.put(settings)
    for _ in range(workers):
        tasks.put(None)
    procs = [ctx.Process(target=_worker_main, args=(i, tasks, events, str(db), str(runs_dir)), daemon=True) for i in range(workers)]
    for proc in procs:
        proc.start()
    results: dict[str, SweepItem] = {}
    errors: list[str] = []
    try:
        while len(results) < len(todo):
            try:
                event = events.get(timeout=0.5)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if event["event"] == "result":
                results[event["run_id"]] = SweepItem(event["run_id"], by_id[event["run_id"]], event["status"], event["message"])
            elif event["event"] == "worker_error":
                errors.append(event["message"])
            progress(event)
    except KeyboardInterrupt:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM → KeyboardInterrupt in the worker → run marked interrupted
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        raise
    for proc in procs:
        proc.join(30)
    if errors and not results:
        raise StoreError("; ".join(errors))
    for run_id, settings in by_id.items():  # a worker that died (e.g. killed) leaves its run unreported
        results.setdefault(run_id, SweepItem(run_id, settings, "failed", "; ".join(errors) or "worker process died"))
    return list(results.values())


# --------------------------------------------------------------------------------------------- demo
def demo_settings(rounds: int = 30, epochs: int = 20, seed: int = 0, data: str = "mnist5k") -> list[RunSettings]:
    """The default comparison: SAP(0.5,1), SAP(1,2), lottery ticket, one-shot and random, global scope, the
    paper's MLP on ``mnist5k``."""
    base = RunSettings(data=data, model="mlp", scope="global", rounds=rounds, epochs=epochs, seed=seed)
    return [
        dataclasses.replace(base, method="sap", p=0.5, q=1.0),
        dataclasses.replace(base, method="sap", p=1.0, q=2.0),
        dataclasses.replace(base, method="lt"),
        dataclasses.replace(base, method="os"),
        dataclasses.replace(base, method="random"),
    ]


def method_label(settings: RunSettings | Mapping[str, Any]) -> str:
    """A short human name: ``SAP(0.5,1)``, ``LT``, ``OS``, ``Random``, ``LQ(0.5)``."""
    s = settings if isinstance(settings, Mapping) else settings.to_dict()
    m = _canonical_method(str(s["method"]))
    if m == "sap":
        return f"SAP({s['p']:g},{s['q']:g})"
    if m == "lq":
        return f"LQ({s['p']:g})"
    return {"lt": "LT", "os": "OS", "random": "Random"}[m]


def summarize(runs: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]], tolerance: float = 0.01) -> list[dict[str, Any]]:
    """One summary row per run from ``(settings, rounds)``: final density and test accuracy, dense (round 0) test
    accuracy, and the smallest density whose test accuracy is within ``tolerance`` (1 point) of dense."""
    rows = []
    for settings, rounds in runs:
        if not rounds:
            continue
        dense = rounds[0]["test_accuracy"]
        ok = [r["density"] for r in rounds if r["test_accuracy"] is not None and dense is not None and r["test_accuracy"] >= dense - tolerance]
        final = rounds[-1]
        rows.append({
            "method": method_label(settings),
            "rounds": len(rounds) - 1,
            "dense_test_accuracy": dense,
            "final_density": final["density"],
            "final_test_accuracy": final["test_accuracy"],
            "min_density_within_1pt": min(ok) if ok else None,
        })
    return rows
