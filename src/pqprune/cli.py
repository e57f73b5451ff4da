"""The ``pqprune`` command line (Typer). It only parses arguments and calls the library.

Every command turns a user error (bad file, bad argument) into one line on stderr and exit code 2.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

app = typer.Typer(
    help="Sparsity-informed neural-network pruning: measure, prune, compare, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print one error line and exit with code 2 (a usage or input error)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def main() -> None:
    app()


# Commands are added below, one section per command family.
