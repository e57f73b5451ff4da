"""``pqprune analyze``: how compressible a checkpoint is now, without training."""

from __future__ import annotations

import typer
from rich.console import Console

from pqprune.cli.app import app, fail
from pqprune.cli.sources import _export_model, _load_masks_file, _parse_shape
from pqprune.cli.tables import _fmt, _metrics_table

# ----------------------------------------------------------------------------------------------- analyze


def _report_rows(report: dict) -> list[dict]:
    """Flat rows (layers, then the model as ``global``) for CSV and the table."""
    rows = []
    for layer in report["layers"]:
        row = {"name": layer["name"], "shape": "x".join(str(s) for s in layer["shape"])}
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
    for i, row in enumerate(_report_rows(report)):
        cells = [row["name"], row["shape"], str(row["numel"])]
        cells += [_fmt(row[k]) for k in ("density", "pqi", "gini", "sap_keep_fraction")]
        if neuron:
            cells += [
                _fmt(row.get(f"neuron_pqi_{k}")) if row["name"] != "global" else "" for k in ("min", "median", "max")
            ]
        table.add_row(
            *cells, end_section=i == len(report["layers"]) - 1, style="bold" if row["name"] == "global" else None
        )
    Console().print(table)


def _emit(report: dict, as_json: bool, as_csv: bool, title: str) -> None:
    import csv
    import json
    import sys

    if as_json:
        typer.echo(json.dumps(report, indent=2))
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
    path: str = typer.Argument(..., help="Model weights: .safetensors, or a .pt/.pth state dict (weights_only)."),
    masks: str | None = typer.Option(
        None, "--masks", help="Masks: safetensors of bool tensors keyed by parameter name."
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
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per layer and a 'global' row."),
    input_shape: str | None = typer.Option(
        None,
        "--input-shape",
        help="Input shape without batch (e.g. 1,28,28): adds FLOPs to the metrics (and the metrics to --json).",
    ),
    model: str | None = typer.Option(
        None, "--model", help="Registry model the weights belong to (with --input-shape): FLOPs of conv nets too."
    ),
) -> None:
    """Measure how compressible a model is now: PQ Index, Gini, density and SAP's keep fraction per layer."""
    from pqprune.checkpoint.analyze import analyze as build_report
    from pqprune.files import FileFormatError, load_state_dict
    from pqprune.measure.indices import check_pq
    from pqprune.measure.weights import SCOPES

    if as_json and as_csv:
        fail("choose one of --json and --csv")
    if scope not in SCOPES:
        fail(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    try:
        check_pq(p, q)
    except ValueError as err:
        fail(f"--p/--q: {err}")
    try:
        state = load_state_dict(path)
        mask_map = _load_masks_file(masks) if masks is not None else None
        shape = _parse_shape(input_shape)
        obj = state
        if model is not None:  # a known architecture: FLOPs from hooks on the real layers
            if shape is None:
                fail("--model needs --input-shape")
            obj, shape = _export_model(state, None, model, None, shape, None, None)
        report = build_report(obj, mask_map, p=p, q=q, scope=scope, metrics=not as_csv, input_shape=shape)  # type: ignore[arg-type]
    except (FileFormatError, ValueError, TypeError) as err:
        fail(str(err))
    if as_json and shape is None:
        report.pop("metrics", None)  # the JSON report gains "metrics" only when asked for (--input-shape)
    _emit(report, as_json, as_csv, f"{path}: PQ Index I_{{{p:g},{q:g}}}, SAP at {scope} scope")
    if not (as_json or as_csv):
        Console().print(_metrics_table("model metrics (ShrinkBench style)", {"value": report["metrics"]}))
