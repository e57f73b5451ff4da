"""``pqprune report``: figures and summary tables of the results database."""

from __future__ import annotations

import typer
from rich.console import Console

from pqprune.cli.app import DB_HELP, app, fail
from pqprune.cli.tables import _text_table

# --------------------------------------------------------------------------------------------- report
# pqprune.report.SUMMARY_COLUMNS, abbreviated so the table fits an 80-column terminal (summary.md has the long ones).
_REPORT_TERMINAL_HEADERS = (
    "method",
    "n",
    "T",
    "density %",
    "acc. %",
    "dense acc. %",
    "min density within 1 pt %",
    "PQI peak",
    "phase at T",
    "chosen round (density %, acc. %)",
)


@app.command("report")
def report_command(
    out: str = typer.Option(..., "--out", help="Folder to write index.html, summary.md and the PNG figures into."),
    db: str = typer.Option("runs/pqprune.db", "--db", help=DB_HELP),
    where: list[str] | None = typer.Option(
        None, "--where", metavar="KEY=VALUE", help="Only runs with this setting (repeatable)."
    ),
) -> None:
    """Figures (accuracy, density, PQI, Gini, per-layer density, retrained − pruned) and a summary table per
    (data, model, scope), mean ± std over seeds, as PNG files, summary.md and a self-contained index.html."""

    from pqprune.report.build import generate, parse_where
    from pqprune.report.runs import ReportError
    from pqprune.report.summary import summary_cells, summary_row

    try:
        result = generate(db, out, parse_where(where or []))
    except ReportError as err:
        fail(str(err))
    # The Markdown summary (summary.md) as Rich tables: the method column never wraps, so labels stay readable
    # on an 80-column terminal.
    console = Console()
    for group in result.groups:
        console.print(f"[bold]{group.title}[/]", highlight=False)
        table = _text_table(_REPORT_TERMINAL_HEADERS, [summary_cells(summary_row(m)) for m in group.methods])
        console.print(table + "\n", highlight=False, markup=False, soft_wrap=True)
    n_figs = sum(len(v) for v in result.figures.values())
    console.print(
        f"report: {result.index} ({len(result.groups)} groups, {n_figs} figures); summary table with the "
        f"phase rule: {result.summary_path}",
        highlight=False,
        soft_wrap=True,
    )
