"""What a command is pointed at: a state dict with its masks, a run folder, the model the weights belong to."""

from __future__ import annotations

from pqprune.cli.app import _parse_kv, fail


def _load_masks_file(path: str) -> dict:
    """Masks in the engine's format (pqprune.prune.masks) or a plain safetensors of bool / 0-1 uint8 tensors."""
    from pqprune.files import FileFormatError, load_state_dict, read_safetensors_metadata
    from pqprune.measure.weights import check_mask
    from pqprune.prune import masks as engine_masks

    if path.endswith(".safetensors") and read_safetensors_metadata(path).get("format") == engine_masks.MASK_FORMAT:
        return dict(engine_masks.load_masks(path))
    try:
        return {name: check_mask(name, m, source=path, allow_01=True) for name, m in load_state_dict(path).items()}
    except ValueError as err:
        raise FileFormatError(str(err)) from err


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,28,28"`` (or ``1x28x28``) → ``(1, 28, 28)``; None stays None."""
    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        fail(f"--input-shape takes comma-separated sizes like 1,28,28, got {text!r}")
    if not shape or any(s < 1 for s in shape):
        fail(f"--input-shape needs positive sizes, got {text!r}")
    return shape


def _export_source(source: str, masks_path: str | None) -> tuple[dict, dict, dict | None, str]:
    """(state dict, masks, run settings or None, description) of a state-dict file or a run directory.

    A run directory (runs/<run_id>) gives its last round's checkpoint (``RunDir.last_checkpoint``).
    """
    from pathlib import Path

    from pqprune.files import load_state_dict
    from pqprune.measure.weights import is_prunable_entry

    path = Path(source)
    if path.is_dir():
        from pqprune.experiment.rundir import RunDir

        if masks_path is not None:
            fail("--masks is for a state-dict file; a run directory carries its own masks")
        rd = RunDir(path.parent, path.name)
        last = rd.last_checkpoint()
        if last is None:
            fail(f"{path}: not a run directory with a round checkpoint (round_XXX.json + round_XXX.safetensors)")
        t, state, masks = last
        return state, masks, rd.settings(), f"run {path.name}, round {t}"
    state = load_state_dict(source)
    if masks_path is not None:
        masks = _load_masks_file(masks_path)
        what = f"{source} with masks {masks_path}"
    else:  # a state dict pruned elsewhere: its exact zeros are its masks
        masks = {n: t != 0 for n, t in state.items() if is_prunable_entry(n, t)}
        what = f"{source} (no --masks: zeros taken as pruned)"
    return state, masks, None, what


def _export_model(
    state: dict,
    settings: dict | None,
    model: str | None,
    data: str | None,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    model_option: list[str] | None,
):
    """The architecture for ``--format shrunk`` with ``state`` loaded: from the run's settings, or the options."""
    from pqprune.experiment import data as data_mod
    from pqprune.experiment import models as models_mod
    from pqprune.measure.weights import is_prunable_entry

    options = dict((settings or {}).get("model_options") or {})
    options.update(_parse_kv(model_option, "--model-option"))
    name = model or (settings or {}).get("model")
    if name is None:
        fail(
            "--format shrunk needs the architecture: --model NAME with --input-shape or --data (or export a run directory)"
        )
    data_name = data or (settings or {}).get("data")
    if input_shape is None and data_name is None:
        fail("building the model needs --input-shape (or --data NAME)")
    if input_shape is None or (num_classes is None and data_name is not None):
        assert data_name is not None  # checked above: no input shape means a data set
        s = settings or {}
        splits = data_mod.get_dataset(
            data_name, s.get("data_root") or None, seed=int(s.get("seed", 0)), **(s.get("data_options") or {})
        )
        input_shape = input_shape or tuple(splits.input_shape)
        num_classes = num_classes or splits.num_classes
    if num_classes is None:  # the registry's models end with their head: its rows are the classes
        heads = [t for n, t in state.items() if is_prunable_entry(n, t)]
        num_classes = int(heads[-1].shape[0])
    net = models_mod.build_model(name, input_shape, num_classes, **options)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"the weights do not fit model {name!r} on inputs {input_shape} with {num_classes} outputs "
            f"(give --model-option / --num-classes?): {str(err).splitlines()[0]}"
        ) from err
    return net.eval(), input_shape
