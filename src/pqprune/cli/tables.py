"""The tables the commands print (Rich tables, plain fixed-width tables, Markdown)."""

from __future__ import annotations

import math

import typer
from rich.console import Console

from pqprune.files import MISSING


def _fmt(x: object, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _rounds_table(run_id: str, rounds: list[dict]):
    from rich.table import Table

    table = Table(title=f"run {run_id}")
    cols = ("round", "density", "val acc", "test acc", "pruned test acc", "PQI", "Gini", "seconds")
    for col in cols:
        table.add_column(col, justify="right")
    for r in rounds:
        secs = sum(r.get(f"seconds_{k}") or 0.0 for k in ("train", "evaluate", "measure", "prune", "checkpoint"))
        table.add_row(
            str(r["round"]),
            _fmt(r["density"]),
            _fmt(r["val_accuracy"]),
            _fmt(r["test_accuracy"]),
            _fmt(r["pruned_test_accuracy"]),
            _fmt(r["pqi"]),
            _fmt(r["gini"]),
            f"{secs:.2f}",
        )
    return table


def _text_table(headers: tuple[str, ...], rows: list[list[str]]) -> str:
    """A plain fixed-width table: cells never wrap or get cut (Rich's tables cut them on narrow terminals), headers
    wrap onto several lines at word boundaries, columns two spaces apart."""
    import textwrap

    widths = [max([len(r[i]) for r in rows] + [max(len(w) for w in h.split())]) for i, h in enumerate(headers)]
    head = [textwrap.wrap(h, w) for h, w in zip(headers, widths)]
    depth = max(len(h) for h in head)
    head = [[""] * (depth - len(h)) + h for h in head]  # headers sit on the rule, like Rich's

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line([h[k] for h in head]) for k in range(depth)]
    out.append("  ".join("─" * w for w in widths))
    out += [line(r) for r in rows]
    return "\n".join(out)


def _metrics_table(title: str, columns: dict[str, dict]):
    """A Rich table of model_metrics records side by side (before / after)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    rows = [
        ("parameters", "parameters", "{:,}"),
        ("nonzeros", "nonzeros", "{:,}"),
        ("density", "density", "{:.4f}"),
        ("dense float32 bytes", "dense_bytes", "{:,}"),
        ("compact bytes", "compact_bytes", "{:,}"),
        ("file bytes", "file_bytes", "{:,}"),
        ("dense FLOPs (MACs)", "flops_dense", "{:,}"),
        ("nonzero FLOPs (MACs)", "flops_nonzero", "{:,}"),
        ("theoretical speedup", "speedup", "{:.2f}x"),
    ]
    for label, key, fmt in rows:
        values = [c.get(key) for c in columns.values()]
        if all(v is None for v in values):
            continue
        table.add_row(label, *[MISSING if v is None else fmt.format(v) for v in values])
    return table


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _print_rows(title: str, headers: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        typer.echo(_markdown_table(headers, rows))
        return
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the wide table into 80 columns
        console = Console(width=200)
    console.print(table)


def _g(x: float | None, digits: int = 3) -> str:
    return MISSING if x is None else f"{x:.{digits}g}"
