"""``pqprune analyze``: how compressible a checkpoint is now, without training."""

from __future__ import annotations

from typing import cast

import typer
from rich.console import Console

from pqprune.cli.app import app, fail
from pqprune.cli.sources import (
    EXCLUDE_HELP,
    INCLUDE_HELP,
    MASKS_HELP,
    ROUND_HELP,
    SOURCE_HELP,
    _export_model,
    _parse_shape,
    open_checkpoint,
    selected_names,
)
from pqprune.cli.tables import _fmt, _metrics_table

# ----------------------------------------------------------------------------------------------- analyze


def _report_rows(report: dict) -> list[dict]:
    """Flat rows (layers, or roles with --group-by, then the model as ``global``) for CSV and the table."""
    rows = []
    for layer in report.get("groups") or report["layers"]:
        if "shape" in layer:
            shape = "x".join(str(s) for s in layer["shape"])
        else:
            shape = f"{layer['layers']} layer{'s' if layer['layers'] > 1 else ''}"
        row = {"name": layer["name"], "shape": shape}
        row.update({k: layer[k] for k in ("numel", "density", "pqi", "gini", "sap_keep_fraction")})
        for k, v in layer.get("neuron_pqi", {}).items():
            row[f"neuron_pqi_{k}"] = v
        rows.append(row)
    g = report["global"]
    rows.append(
        {"name": "global", "shape": "", **{k: g[k] for k in ("numel", "density", "pqi", "gini", "sap_keep_fraction")}}
    )
    return rows


def _print_table(report: dict, title: str) -> None:
    from rich.table import Table

    neuron = any("neuron_pqi" in layer for layer in report["layers"])
    table = Table(title=title)
    for col in ("name", "shape", "numel", "density", "pqi", "gini", "sap keep"):
        table.add_column(col, justify="left" if col in ("name", "shape") else "right")
    if neuron:
        for col in ("neuron pqi min", "median", "max"):
            table.add_column(col, justify="right")
    rows = _report_rows(report)
    for i, row in enumerate(rows):
        cells = [row["name"], row["shape"], str(row["numel"])]
        cells += [_fmt(row[k]) for k in ("density", "pqi", "gini", "sap_keep_fraction")]
        if neuron:
            cells += [
                _fmt(row.get(f"neuron_pqi_{k}")) if row["name"] != "global" else "" for k in ("min", "median", "max")
            ]
        table.add_row(*cells, end_section=row["name"] != "global" and i == len(rows) - 2, style=None)
    console = Console()
    if not console.is_terminal:  # piped or captured: long tensor names are not cut to 80 columns
        console = Console(width=200)
    console.print(table)
    if not report["global"].get("gini_exact", True):
        Console().print(
            "global Gini from binned float32 magnitudes: at most 2^-14 below the exact value", highlight=False
        )


def _emit(report: dict, as_json: bool, as_csv: bool, title: str) -> None:
    import csv
    import sys

    from pqprune.files import to_json

    if as_json:
        typer.echo(to_json(report))
    elif as_csv:
        rows = _report_rows(report)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    else:
        _print_table(report, title)


@app.command()
def analyze(
    path: str = typer.Argument(..., help=SOURCE_HELP),
    masks: str | None = typer.Option(None, "--masks", help=MASKS_HELP),
    round_: int | None = typer.Option(None, "--round", help=ROUND_HELP),
    include: list[str] | None = typer.Option(None, "--include", metavar="PATTERN", help=INCLUDE_HELP),
    exclude: list[str] | None = typer.Option(None, "--exclude", metavar="PATTERN", help=EXCLUDE_HELP),
    group_by: str | None = typer.Option(
        None, "--group-by", help="suffix: one row per role across layers (all q_proj, all mlp.down_proj, ...)."
    ),
    p: float = typer.Option(0.5, "--p", help="PQ Index exponent p (0 < p < q)."),
    q: float = typer.Option(1.0, "--q", help="PQ Index exponent q."),
    scope: str = typer.Option(
        "layer",
        "--scope",
        help="Unit of SAP's decision: global, layer or neuron (layer: what each layer alone allows; run and Pruner "
        "default to the method's scope, global for all but lq).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (NaN as null)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per layer (or role) and a 'global' row."),
    input_shape: str | None = typer.Option(
        None,
        "--input-shape",
        help="Input shape without batch (e.g. 1,28,28): adds FLOPs to the metrics (and the metrics to --json).",
    ),
    model: str | None = typer.Option(
        None, "--model", help="Registry model the weights belong to (with --input-shape): FLOPs of conv nets too."
    ),
) -> None:
    """Measure how compressible a model is now: PQ Index, Gini, density and SAP's keep fraction per layer.

    Tensors are read one at a time from memory-mapped files, so sharded checkpoints of any size are measured."""
    from pqprune.checkpoint.analyze import GROUP_BY, analyze_source
    from pqprune.export.metrics import model_metrics
    from pqprune.files import FileFormatError
    from pqprune.measure.indices import check_pq
    from pqprune.measure.weights import SCOPES, Scope

    if as_json and as_csv:
        fail("choose one of --json and --csv")
    if scope not in SCOPES:
        fail(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if group_by is not None and group_by not in GROUP_BY:
        fail(f"--group-by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    try:
        check_pq(p, q)
    except ValueError as err:
        fail(f"--p/--q: {err}")
    shape = _parse_shape(input_shape)
    if model is not None and shape is None:
        fail("--model needs --input-shape")
    source = open_checkpoint(path, round_, masks)
    names = selected_names(source, include, exclude)
    want_metrics = (not as_csv and model is None) and (not as_json or shape is not None)
    try:
        report = analyze_source(
            source, names, p, q, cast(Scope, scope), group_by, metrics=want_metrics, chain_flops=shape is not None
        )
        if model is not None:  # a known architecture: FLOPs from hooks on the real layers
            state, mask_map = source.load()
            net, shape = _export_model(state, source.settings, model, None, shape, None, None)
            report["metrics"] = model_metrics(net, mask_map, shape)
    except (FileFormatError, ValueError, TypeError) as err:
        fail(str(err))
    _emit(report, as_json, as_csv, f"{source.what}: PQ Index I_{{{p:g},{q:g}}}, SAP at {scope} scope")
    if not (as_json or as_csv):
        Console().print(_metrics_table("model metrics (ShrinkBench style)", {"value": report["metrics"]}))
