"""What a run needs before its loop: checked settings, data on the device, a fresh model that takes the data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from pqprune.experiment import data as data_mod
from pqprune.experiment import models as models_mod
from pqprune.experiment.settings import RunSettings, SettingsError
from pqprune.experiment.train import TrainConfig, resolve_device
from pqprune.prune.methods import Method


# --------------------------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    """What a run needs before its loop: checked settings, data on the device, a fresh model."""

    settings: RunSettings
    data: data_mod.DataSplits
    model: nn.Module
    device: torch.device
    train_config: TrainConfig
    # Set by the runner (pqprune.experiment.method_context.run_method): the pruning method with what it needs
    # from the run resolved, and the input bounds it last measured (ℓ_q bound rule).
    method: Method | None = None
    input_bounds: dict[str, float] = field(default_factory=dict)


def prepare(settings: RunSettings, device: torch.device | None = None) -> Prepared:
    """Validate settings, load the data, build the model and check that it takes the data.

    ``device`` overrides the device setting (a distributed run puts each process on its own ``cuda:LOCAL_RANK``).
    Nothing is written. Raises :class:`SettingsError`, or :class:`pqprune.experiment.data.DatasetNotFound` (one line saying
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
        model = models_mod.build_model(
            res.model, splits.input_shape, splits.num_classes, seed=res.seed, **res.model_options
        )
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
