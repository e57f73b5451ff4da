"""What a run gives its pruning method besides the options: the run's seed, the per-layer counts of a reference
run (``random_matched``) and input bounds measured on the training data (the ℓ_q bound rule, docs/math.md §7).

Methods know nothing of data or runs (:class:`pqprune.prune.methods.RunContext`); this module is where the
experiment answers their questions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pqprune.experiment.prepare import Prepared
from pqprune.experiment.rundir import RunDir
from pqprune.experiment.settings import RunSettings, SettingsError, build_method
from pqprune.files import FileFormatError
from pqprune.prune.masks import discover
from pqprune.prune.methods import Method, RunContext

# Settings a reference run must share with the run that matches it: they decide the prunable tensors.
_SAME_MODEL = ("data", "model", "model_options", "data_options")


def max_abs_inputs(model: nn.Module, x: Tensor, names: list[str], batch_size: int = 1000) -> dict[str, float]:
    """The largest |input| that the layer owning each weight ``names[i]`` sees over the inputs ``x``.

    One forward pass in eval mode without gradients, with a pre-hook on each layer. A layer that receives no
    input (unused) gets 0.
    """
    found = {n: 0.0 for n in names}
    hooks = []
    for name in names:
        owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model

        def hook(_mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if args and isinstance(args[0], Tensor):
                found[name] = max(found[name], float(args[0].detach().abs().max()))

        hooks.append(owner.register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return found


def reference_counts(
    runs_dir: Path, run_id: str, settings: RunSettings, weights: Mapping[str, Tensor]
) -> list[dict[str, int | Tensor]]:
    """Survivor counts of rounds 1 … T of reference run ``run_id`` (round t of a run is pruned to match round
    t + 1 of the reference): per layer, or per row (an int64 tensor per weight) when this run prunes at neuron
    scope — read from the reference's per-neuron decisions, so the reference must be a neuron-scope run.
    Refused with a :class:`SettingsError` if the run is unknown, of another model or data set, or has not
    finished the rounds needed."""
    rd = RunDir(runs_dir, run_id)
    stored = rd.settings()
    if stored is None:
        raise SettingsError(
            f"--reference {run_id}: no such run under {runs_dir} (no readable {rd.path / 'settings.json'})"
        )
    ref = RunSettings.from_stored(stored).resolved().to_dict()
    mine = settings.resolved().to_dict()
    differ = [k for k in _SAME_MODEL if ref.get(k) != mine.get(k)]
    if differ:
        raise SettingsError(
            f"--reference {run_id} is of another model: its {', '.join(f'{k}={ref.get(k)!r}' for k in differ)} "
            f"(this run: {', '.join(f'{k}={mine.get(k)!r}' for k in differ)})"
        )
    done = set(rd.finished_rounds())
    missing = [t for t in range(1, settings.rounds + 1) if t not in done]
    if missing:
        raise SettingsError(
            f"--reference {run_id} has not finished the rounds this run needs: {missing[:5]}{'…' if len(missing) > 5 else ''} "
            f"(it needs rounds 1 to {settings.rounds})"
        )
    if settings.resolved().scope == "neuron":
        if ref.get("scope") != "neuron":
            raise SettingsError(
                f"--reference {run_id} pruned at {ref.get('scope')} scope: matching per neuron needs a neuron-scope run"
            )
        return [_row_kept(rd, t, weights, run_id) for t in range(settings.rounds)]
    out: list[dict[str, int | Tensor]] = []
    for t in range(1, settings.rounds + 1):
        try:
            layers = rd.read_round(t)["metrics"]["layers"]
            out.append({n: _kept(layers[n], w.numel()) for n, w in weights.items()})
        except (KeyError, TypeError, FileFormatError, json.JSONDecodeError) as err:
            raise SettingsError(
                f"--reference {run_id}: round {t} does not list the layers of this model ({err})"
            ) from err
    return out


def _row_kept(rd: RunDir, t: int, weights: Mapping[str, Tensor], run_id: str) -> dict[str, int | Tensor]:
    """Survivors per row after round ``t``'s pruning step, from the step's per-neuron records ``name[i]`` (d − c)."""
    kept = {n: torch.full((w.shape[0],), -1, dtype=torch.int64) for n, w in weights.items()}
    try:
        for u in rd.read_round(t)["units"]:
            name, _, index = u["unit"].rstrip("]").rpartition("[")
            kept[name][int(index)] = int(u["d"]) - int(u["c"])
    except (KeyError, ValueError, IndexError, TypeError, FileFormatError, json.JSONDecodeError) as err:
        raise SettingsError(f"--reference {run_id}: round {t} has no per-neuron records of this model ({err})") from err
    incomplete = [n for n, k in kept.items() if bool((k < 0).any())]
    if incomplete:
        raise SettingsError(f"--reference {run_id}: round {t} does not record every neuron of {incomplete}")
    return dict(kept)


def _kept(layer: Mapping[str, Any], numel: int) -> int:
    """Survivors of one layer in a round record: ``kept`` when recorded, else from the density (exact: the density
    is a ratio of integers below 2^53, so rounding recovers the count)."""
    if layer.get("kept") is not None:
        return int(layer["kept"])
    return round(float(layer["density"]) * numel)


def run_method(prep: Prepared, runs_dir: Path) -> tuple[Method, dict[str, float]]:
    """The run's pruning method, with what it asks of the run resolved now (a bad reference fails before anything
    is written). The returned dict is filled with the input bounds each time the method measures them."""
    res = prep.settings
    weights = {n: p.detach() for n, p in discover(prep.model).items()}
    measured: dict[str, float] = {}

    def input_bounds() -> dict[str, float]:
        measured.clear()
        measured.update(max_abs_inputs(prep.model, prep.data.train.x, list(weights)))
        return dict(measured)

    context = RunContext(
        seed=res.seed,
        reference=lambda run_id: reference_counts(runs_dir, run_id, res, weights),
        input_bounds=input_bounds,
    )
    return build_method(res, context), measured
