"""Writing a report: ``write_report(db, out_dir)`` reads the runs of the store (optionally filtered by settings),
groups them and writes one PNG per figure and group, ``summary.md`` and a self-contained ``index.html`` (images
embedded as ``data:`` URIs, inline CSS, no script, no network request). The database is only read.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pqprune.files import atomic_write
from pqprune.plotting import save_png
from pqprune.report.figures import FIGURES, layer_method, method_style
from pqprune.report.phases import PHASE_RULE
from pqprune.report.runs import Group, ReportError, _where_text, load_groups
from pqprune.report.summary import SUMMARY_COLUMNS, summary_cells, summary_markdown, summary_row

# --------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1200px;margin:0 auto;padding:1rem 1.5rem 3rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2.5rem}
.meta{color:#555;font-size:.9rem}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:.88rem;margin:.5rem 0 1rem;background:#fff}
th,td{border:1px solid #ddd;padding:.3rem .55rem}td{text-align:right}td:first-child{text-align:left;white-space:nowrap}
th{background:#f0f0f0}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:1rem}
figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:.5rem}
figure img{width:100%;height:auto;display:block}
figure.wide{grid-column:1/-1}
figcaption{font-size:.82rem;color:#444;margin-top:.3rem}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.35em;border-radius:2px;vertical-align:middle}
"""


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _html_table(g: Group) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in SUMMARY_COLUMNS)
    body = []
    for m in g.methods:
        cells = summary_cells(summary_row(m))
        colour, _ = method_style(m.label)
        first = f'<span class="swatch" style="background:{colour}"></span>{html.escape(cells[0])}'
        body.append("<tr><td>" + first + "</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells[1:]) + "</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def render_html(
    groups: Sequence[Group],
    figures: Mapping[str, Sequence[tuple[Path, str]]],
    *,
    source: str,
    where: Mapping[str, Any] | None,
    embed: bool = True,
) -> str:
    """The page: per group, its summary table and its figures (embedded as data URIs, or linked beside it)."""
    n_runs = sum(len(m.rounds) for g in groups for m in g.methods)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>pqprune report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>pqprune report</h1>",
        f'<p class="meta">{n_runs} runs from <code>{html.escape(source)}</code>, filter: '
        f"{html.escape(_where_text(where))}; generated {stamp}. Curves: mean over seeds, band: ± one sample "
        "standard deviation.</p>",
    ]
    for g in groups:
        parts.append(f'<section id="{html.escape(g.slug)}"><h2>{html.escape(g.title)}</h2>')
        parts.append(_html_table(g))
        parts.append('<div class="figs">')
        for png, caption in figures[g.slug]:
            src = _data_uri(png) if embed else html.escape(png.name)
            wide = ' class="wide"' if png.stem.endswith("_differences") else ""  # two panels: the full row
            parts.append(
                f'<figure{wide}><img src="{src}" alt="{html.escape(caption)}" loading="eager">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div></section>")
    parts.append(f"<h2>How the phase is decided</h2><p>{html.escape(PHASE_RULE)}</p>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- entry points
@dataclass
class ReportResult:
    """What :func:`generate` wrote."""

    index: Path
    summary_path: Path
    summary: str
    groups: list[Group]
    figures: dict[str, list[Path]]


def parse_where(items: Sequence[str]) -> dict[str, Any]:
    """``["method=sap", "seed=0"]`` → ``{"method": "sap", "seed": 0}``; dashes in keys read as underscores.

    Raises:
        ReportError: an item is not KEY=VALUE.
    """
    from pqprune.experiment.settings import SettingsError, parse_assignments

    try:
        return parse_assignments(items, "--where")
    except SettingsError as err:
        raise ReportError(str(err)) from err


def _prepare_out(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"the report folder {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"cannot create the report folder {out}: {err.strerror or err}") from err
    return out


def generate(db_path: str | Path, out_dir: str | Path, where: Mapping[str, Any] | None = None) -> ReportResult:
    """Write the figures, ``summary.md`` and ``index.html`` of the runs matching ``where`` into ``out_dir``.

    Raises:
        ReportError: no database, no matching run with rounds, or the folder cannot be written.
    """
    groups = load_groups(db_path, where)
    out = _prepare_out(out_dir)
    figures: dict[str, list[tuple[Path, str]]] = {}
    try:
        for g in groups:
            figures[g.slug] = []
            for stem, caption, build in FIGURES:
                png = save_png(build(g), out / f"{g.slug}_{stem}.png")
                if stem == "layers" and (m := layer_method(g)) is not None:
                    caption = caption.replace("one method", m.label)
                figures[g.slug].append((png, caption))
        summary = summary_markdown(groups)
        summary_path = atomic_write(out / "summary.md", lambda tmp: tmp.write_text(summary, encoding="utf-8"))
        page = render_html(groups, figures, source=str(db_path), where=where)
        index = atomic_write(out / "index.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    except OSError as err:
        raise ReportError(f"cannot write the report into {out}: {err.strerror or err}") from err
    return ReportResult(index, summary_path, summary, groups, {k: [p for p, _ in v] for k, v in figures.items()})


def write_report(db_path: str | Path, out_dir: str | Path, where: Mapping[str, Any] | None = None) -> Path:
    """Write the report of the runs in ``db_path`` matching ``where`` into ``out_dir``; return ``index.html``'s path.

    The entry point for other commands (``pqprune demo`` calls it at its end). Raises :class:`ReportError`.
    """
    return generate(db_path, out_dir, where).index
