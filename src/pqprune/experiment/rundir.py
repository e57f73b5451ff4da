"""The folder of one run: ``settings.json``, ``initial.safetensors`` and ``round_XXX.{json,safetensors}``.

A round's tensors are written first and its JSON last, both atomically, so a round whose JSON exists is complete.
The checkpoint files are the source of truth; the database is an index of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from pqprune.files import FileFormat, FileFormatError, NewerFormatError
from pqprune.measure.weights import match_masks

# A round's JSON record and its tensors; the initial weights every round rewinds to; settings.json (the run's
# identity and settings). 0.1.0 wrote the tensors with a format name but no version, settings.json with neither.
ROUND = FileFormat("pqprune.round", 1, "round checkpoint", legacy=1)
INITIAL = FileFormat("pqprune.initial", 1, "initial weights file", legacy=1)
RUN = FileFormat("pqprune.run", 1, "run settings file", legacy=1, legacy_unnamed=True)


class RunBusy(RuntimeError):
    """Another process, on this machine or another, is computing the same run right now (it holds the run's claim)."""


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
    """The folder of one run: ``settings.json``, ``initial.safetensors``, ``round_XXX.{json,safetensors}``.

    Which process computes the run is not recorded here but in the results database (a claim every machine sees,
    :meth:`pqprune.store.Store.claim`), so the folder may live on a file system shared by several machines.
    """

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

    def finished_rounds(self) -> list[int]:
        """Rounds whose JSON exists (a round's JSON is written last, so it marks the round complete)."""
        out = []
        for p in self.path.glob("round_*.json"):
            m = re.fullmatch(r"round_(\d+)\.json", p.name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def read_round(self, t: int) -> dict[str, Any]:
        """Round ``t``'s JSON record (metrics, per-unit decisions, the pruner's state skeleton), format-checked."""
        return ROUND.read_json(self.json(t))

    def load_tensors(self, t: int) -> dict[str, Tensor]:
        """Round ``t``'s tensors (model weights under ``model/``, the pruner's masks and state), format-checked."""
        return ROUND.load_tensors(self.tensors(t))[0]

    def load_initial(self) -> dict[str, Tensor]:
        """The run's initial weights (what every round rewinds to), format-checked."""
        return INITIAL.load_tensors(self.initial)[0]

    def save_initial(self, tensors: Mapping[str, Tensor]) -> None:
        INITIAL.save_tensors(tensors, self.initial)

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
        tensors = self.load_tensors(t)
        state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
        skeleton = (doc.get("pruner") or {}).get("masks") or {}
        try:
            masks = {name: tensors[leaf["__tensor__"]] for name, leaf in skeleton.items()}
        except (KeyError, TypeError) as err:
            raise FileFormatError(f"{self.tensors(t)}: masks named in {self.json(t)} are missing ({err})") from err
        try:
            return t, state, match_masks(state, masks, str(self.tensors(t)), what="model weight")
        except ValueError as err:
            raise FileFormatError(str(err)) from err

    @property
    def settings_file(self) -> Path:
        return self.path / "settings.json"

    def settings_document(self) -> dict[str, Any]:
        """The whole ``settings.json`` (run id, run hash, identity, settings), format-checked.

        Raises:
            FileFormatError: it is missing, unreadable, of another format (NewerFormatError: of a newer version).
        """
        return RUN.read_json(self.settings_file)

    def settings(self) -> dict[str, Any] | None:
        """The run's settings as saved in ``settings.json``; None when it is missing or unreadable.

        Raises:
            NewerFormatError: the file is of a newer format version than this pqprune reads.
        """
        try:
            settings = self.settings_document()["settings"]
        except NewerFormatError:
            raise
        except (FileFormatError, KeyError, TypeError):
            return None
        return settings if isinstance(settings, dict) else None

    def save_settings(self, doc: Mapping[str, Any]) -> None:
        RUN.save_json(doc, self.settings_file)


def _write_round_tensors(rd: RunDir, t: int, model_state: Mapping[str, Tensor], pruner_state: Mapping[str, Any]) -> Any:
    """Write the round's tensors atomically (model weights, masks, pruner state); returns the pruner's skeleton.

    The initial weights are left out: they are saved once per run in ``initial.safetensors``.
    """
    tensors: dict[str, Tensor] = {f"model/{k}": v for k, v in model_state.items()}
    skeleton = _flatten({k: v for k, v in pruner_state.items() if k != "initial"}, "pruner", tensors)
    ROUND.save_tensors(tensors, rd.tensors(t), {"round": str(t)})
    return skeleton


def _write_round_json(rd: RunDir, t: int, doc: Mapping[str, Any], keep: str) -> None:
    """Write the round's JSON atomically, after its tensors: the JSON marks the round complete. Then drop the
    previous round's tensors if only the last are kept (never before: a crash must leave a resumable round)."""
    ROUND.save_json(doc, rd.json(t))
    if keep == "last" and t > 0:
        rd.tensors(t - 1).unlink(missing_ok=True)


def _load_pruner_state(rd: RunDir, t: int, doc: Mapping[str, Any], initial: Mapping[str, Tensor]) -> dict[str, Any]:
    tensors = rd.load_tensors(t)
    state = _unflatten(doc["pruner"], tensors)
    state["initial"] = dict(initial)
    return state
