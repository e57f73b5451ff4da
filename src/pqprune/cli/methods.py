"""``pqprune methods``: the registered pruning methods, their aliases, default scope and options."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from pqprune.cli.app import app
from pqprune.cli.tables import _text_table
from pqprune.files import MISSING, to_json


@app.command("methods")
def methods_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the pruning methods `run`, `sweep` and `prune` take, with their options (each a flag of its own)."""
    from pqprune.prune.methods import lookup
    from pqprune.prune.methods.registry import available

    rows: list[dict[str, Any]] = []
    for name in available():
        cls = lookup(name)
        rows.append(
            {
                "name": cls.name,
                "aliases": list(cls.aliases),
                "default_scope": cls.default_scope,
                "label": cls.label(cls.defaults()),
                "options": [
                    {
                        "name": o.name,
                        "type": o.kind.__name__,
                        "default": o.default,
                        "help": o.help,
                        **({"choices": list(o.choices)} if o.choices else {}),
                    }
                    for o in cls.options
                ],
                "summary": (cls.__doc__ or "").strip().splitlines()[0],
            }
        )
    if as_json:
        typer.echo(to_json(rows))
        return
    out = Console()
    for row in rows:
        aliases = f" (aliases: {', '.join(row['aliases'])})" if row["aliases"] else ""
        out.print(f"{row['name']}{aliases}, default scope {row['default_scope']}: {row['summary']}", highlight=False)
        cells = [
            [
                f"--{o['name'].replace('_', '-')}",
                o["type"],
                MISSING if o["default"] is None else str(o["default"]),
                o["help"],
            ]
            for o in row["options"]
        ]
        out.print(_text_table(("option", "type", "default", "meaning"), cells) + "\n", highlight=False, soft_wrap=True)
