"""``pqprune export``: a pruned model written compactly (sparse) or physically smaller (shrunk)."""

from __future__ import annotations

import typer
from rich.console import Console

from pqprune.cli.app import _input_errors, app, fail
from pqprune.cli.sources import (
    EXCLUDE_HELP,
    INCLUDE_HELP,
    ROUND_HELP,
    SOURCE_HELP,
    _export_model,
    _parse_shape,
    check_out,
    open_checkpoint,
    selected_names,
    writing,
)
from pqprune.cli.tables import _metrics_table

# --------------------------------------------------------------------------------------------- export


@app.command("export")
def export_command(
    source: str = typer.Argument(..., help=SOURCE_HELP + " Without masks, a plain checkpoint's zeros are pruned."),
    fmt: str = typer.Option(
        ..., "--format", help="sparse (compact encoding, same model) or shrunk (dead neurons removed)."
    ),
    out: str = typer.Option(..., "--out", help="Output .safetensors file (written atomically)."),
    masks: str | None = typer.Option(None, "--masks", help="Masks of a plain checkpoint (the engine's mask file)."),
    round_: int | None = typer.Option(None, "--round", help=ROUND_HELP),
    include: list[str] | None = typer.Option(None, "--include", metavar="PATTERN", help=INCLUDE_HELP),
    exclude: list[str] | None = typer.Option(None, "--exclude", metavar="PATTERN", help=EXCLUDE_HELP),
    model: str | None = typer.Option(None, "--model", help="Architecture for shrunk / FLOPs (default: the run's)."),
    data: str | None = typer.Option(
        None, "--data", help="Data set giving the input shape and classes (default: the run's)."
    ),
    input_shape: str | None = typer.Option(None, "--input-shape", help="Input shape without batch, e.g. 1,28,28."),
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Outputs of the model (default: from the data or the head)."
    ),
    model_option: list[str] | None = typer.Option(
        None, "--model-option", metavar="KEY=VALUE", help="Option of the model (repeatable)."
    ),
) -> None:
    """Write a pruned model compactly (sparse) or physically smaller (shrunk); print its metrics before and after."""
    import os

    from pqprune.checkpoint.sparse_stream import export_sparse
    from pqprune.files import FileFormatError

    if fmt not in ("sparse", "shrunk"):
        fail(f"--format must be sparse or shrunk, got {fmt!r}")
    shape = _parse_shape(input_shape)
    src = open_checkpoint(source, round_, masks)
    check_out(out, src.inputs, (".safetensors",), f"a safetensors file (pqprune's {fmt} export)")
    names = selected_names(src, include, exclude)
    what = src.what + ("" if src.masks_from is not None else " (no masks: zeros taken as pruned)")
    try:
        if fmt == "sparse" and model is None:  # tensor by tensor: checkpoints of any size
            with writing(out):
                before = export_sparse(src, names, out, zeros_as_masks=src.masks_from is None).result(
                    chain=shape is not None
                )
            after = dict(before)
        else:  # a model is built: the checkpoint is loaded whole
            before, after = _export_model_whole(src, names, fmt, out, model, data, shape, num_classes, model_option)
    except (FileFormatError, ValueError, TypeError, *_input_errors()) as err:
        fail(str(err))
    after["file_bytes"] = os.path.getsize(out)
    before["file_bytes"] = before["dense_bytes"]
    Console().print(
        _metrics_table(f"export {fmt}: {what}", {"before (dense float32)": before, f"after ({fmt})": after})
    )
    ratio = after["file_bytes"] / before["dense_bytes"]
    Console().print(
        f"wrote {out}: {after['file_bytes']:,} bytes, {100 * ratio:.1f}% of the dense float32 model"
        + ("" if fmt == "shrunk" else "; load it with pqprune.export.load_sparse"),
        highlight=False,
    )


def _export_model_whole(src, names, fmt, out, model, data, shape, num_classes, model_option) -> tuple[dict, dict]:
    """Export through the model the weights belong to (shrunk, or FLOPs of the real layers): metrics before/after."""
    import torch

    from pqprune import export
    from pqprune.checkpoint.sparse_stream import check_finite

    state, mask_map = src.load()
    if src.masks_from is None:  # a state dict pruned elsewhere: its exact zeros are its masks
        mask_map = {n: state[n] != 0 for n in names}
    mask_map = {n: m.to(torch.bool) for n, m in mask_map.items()}
    export.check_pruned(mask_map)
    for name, t in state.items():
        check_finite(src.what, name, t, mask_map.get(name))
    net, shape = _export_model(state, src.settings, model, data, shape, num_classes, model_option)
    before = export.model_metrics(net, mask_map, shape)
    if fmt == "sparse":
        with writing(out):
            export.save_sparse(state, mask_map, out)
        return before, dict(before)
    small = export.shrink(net, mask_map)
    with writing(out):
        export.save_shrunk(small, out)
    return before, export.model_metrics(small, None, shape)
