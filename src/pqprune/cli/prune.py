"""``pqprune prune``: one-shot pruning of a checkpoint without training, a tensor at a time."""

from __future__ import annotations

import typer
from rich.console import Console

from pqprune.cli.app import app, fail
from pqprune.cli.options import _with_settings
from pqprune.cli.sources import (
    EXCLUDE_HELP,
    INCLUDE_HELP,
    MASKS_HELP,
    ROUND_HELP,
    SOURCE_HELP,
    check_out,
    open_checkpoint,
    selected_names,
    writing,
)
from pqprune.cli.tables import _fmt


def _method(name: str, given: dict, seed: int):
    """The method ``name`` with the options given (those of other methods refused), as a run would build it."""
    from pqprune.prune.methods.base import RunContext
    from pqprune.prune.methods.registry import load_plugins, lookup

    load_plugins()
    try:
        cls = lookup(name)
        options = cls.resolve_options(given)
        if cls.name == "lq" and options.get("rule") == "bound" and options.get("input_bound") is None:
            fail("lq --rule bound needs --input-bound B: no data is seen here to measure the inputs")
        return cls.from_options(options, RunContext(seed=seed))
    except ValueError as err:
        fail(str(err))


@app.command("prune")
@_with_settings(as_lists=False, methods_only=True)
def prune_command(
    settings: dict,
    source: str = typer.Argument(..., help=SOURCE_HELP),
    method: str = typer.Option(..., "--method", help="Pruning method: sap, os, random, lq, ... (pqprune methods)."),
    out: str = typer.Option(..., "--out", help="Masks file to write (.safetensors, pqprune's mask format)."),
    scope: str | None = typer.Option(None, "--scope", help="global, layer or neuron [default: the method's]."),
    sparse_out: str | None = typer.Option(
        None, "--sparse-out", help="Also write the sparse export of the pruned checkpoint (.safetensors)."
    ),
    masks: str | None = typer.Option(None, "--masks", help=MASKS_HELP + " Pruning continues among its survivors."),
    round_: int | None = typer.Option(None, "--round", help=ROUND_HELP),
    include: list[str] | None = typer.Option(None, "--include", metavar="PATTERN", help=INCLUDE_HELP),
    exclude: list[str] | None = typer.Option(None, "--exclude", metavar="PATTERN", help=EXCLUDE_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of random methods."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Prune a checkpoint once, without training: the method's counts, exact-k selection, masks written tensor by
    tensor (the same masks as Pruner(model, method, scope).step() on the loaded model)."""

    from pqprune.checkpoint.prune import prune_source
    from pqprune.files import FileFormatError, to_json
    from pqprune.measure.weights import SCOPES

    pruner = _method(method, settings, seed)
    scope = scope or pruner.default_scope
    if scope not in SCOPES:
        fail(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    try:
        pruner.check_scope(scope)
    except ValueError as err:
        fail(str(err))
    src = open_checkpoint(source, round_, masks)
    check_out(out, src.inputs, (".safetensors",), "a safetensors file (pqprune's mask file)")
    if sparse_out is not None:
        check_out(sparse_out, [*src.inputs, out], (".safetensors",), "a safetensors file (pqprune's sparse export)")
    names = selected_names(src, include, exclude)
    try:
        with writing(out if sparse_out is None else f"{out} / {sparse_out}"):
            result = prune_source(src, names, pruner, scope, out, sparse_out)  # type: ignore[arg-type]
    except (FileFormatError, ValueError, TypeError) as err:
        fail(str(err))
    summary = result.summary()
    if as_json:
        doc = {"source": src.what, "method": pruner.name, "hparams": pruner.hparams(), "scope": scope, **summary}
        doc["out"], doc["sparse_out"] = out, sparse_out
        typer.echo(to_json(doc))
        return
    _print(summary, f"{src.what}: {pruner!r} at {scope} scope")
    Console().print(
        f"wrote {out} (load with pqprune.load_masks or Pruner.load_masks)"
        + (f" and {sparse_out} (pqprune.export.load_sparse)" if sparse_out else ""),
        highlight=False,
    )


def _print(summary: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("name", "numel", "kept before", "kept", "density"):
        table.add_column(col, justify="left" if col == "name" else "right")
    rows = summary["tensors"]
    for i, t in enumerate(rows):
        table.add_row(
            t["name"],
            f"{t['numel']:,}",
            f"{t['kept_before']:,}",
            f"{t['kept']:,}",
            _fmt(t["density"]),
            end_section=i == len(rows) - 1,
        )
    table.add_row(
        "total",
        f"{summary['numel']:,}",
        f"{summary['kept_before']:,}",
        f"{summary['kept']:,}",
        _fmt(summary["density"]),
        style="bold",
    )
    console = Console()
    if not console.is_terminal:  # piped or captured: long tensor names are not cut to 80 columns
        console = Console(width=200)
    console.print(table)
