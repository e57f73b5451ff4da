"""What a command is pointed at: a state dict with its masks, a run folder, the model the weights belong to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pqprune.cli.app import _parse_kv, fail

# Options every command reading a checkpoint takes, with the same names and help.
SOURCE_HELP = (
    "A checkpoint: a .safetensors / torch.save file (kind read from the content), a Hugging Face folder of shards or "
    "its *.index.json, a pqprune run folder (its masks applied), or a pqprune sparse/shrunk export."
)
ROUND_HELP = "Round of a run folder (default: its last finished round that kept its tensors)."
MASKS_HELP = "Masks of a plain checkpoint: pqprune's mask file, or safetensors/.pt of bool or 0/1 tensors by name."
INCLUDE_HELP = (
    "Measure/prune the tensors whose names match this glob (repeatable), instead of the default: floating "
    "'*weight' tensors with 2+ dims, embedding tables ('*embed*', GPT-2's wte/wpe) left out."
)
EXCLUDE_HELP = "Leave out the tensors whose names match this glob (repeatable), e.g. 'lm_head.*'."


def open_checkpoint(path: str, round_: int | None = None, masks: str | None = None):
    """The :class:`pqprune.checkpoint.sources.Source` at ``path``; any error is one line and exit code 2."""
    from pqprune.checkpoint.sources import open_source
    from pqprune.files import FileFormatError

    try:
        return open_source(path, round_, masks)
    except FileFormatError as err:
        fail(str(err))


def selected_names(source, include: list[str] | None, exclude: list[str] | None) -> list[str]:
    """``source.select(include, exclude)``; an error is one line and exit code 2."""
    try:
        return source.select(include or None, exclude or None)
    except ValueError as err:
        fail(str(err))


def check_out(out: str, inputs, suffixes: tuple[str, ...], what: str) -> None:
    """Refuse an ``--out`` that is one of ``inputs``, a folder, in a folder that cannot be written, or whose
    extension is not one of ``suffixes`` (the format written: ``what``); one line and exit code 2 each."""
    import os
    from pathlib import Path

    path = Path(out)
    if path.is_dir():
        fail(f"--out {out} is a folder; give a file name ending in {suffixes[0]}")
    for p in inputs:
        if path.resolve() == Path(p).resolve() or (path.exists() and os.path.samefile(path, p)):
            fail(f"--out {out} is an input of this command ({p}); write to another file")
    if path.suffix not in suffixes:
        fail(f"--out {out}: the file written is {what}; name it *{suffixes[0]}")
    folder = path.parent if str(path.parent) else Path(".")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        fail(f"--out {out}: cannot write in folder {existing}")


@contextlib.contextmanager
def writing(out: str) -> Iterator[None]:
    """Turn an error writing ``--out`` (a full disk, a read-only file system) into one line and exit code 2; the
    write is atomic, so nothing is left behind."""
    try:
        yield
    except OSError as err:
        fail(f"--out {out}: cannot write ({err.strerror or err})")


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
