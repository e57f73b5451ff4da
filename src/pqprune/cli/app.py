"""The ``pqprune`` Typer application and what every command shares: one-line errors with exit code 2, parsing helpers."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

# Conventions of every command: -h and --help; flags without a value placeholder (plain help rather than Rich's
# panels, which print "<bool>" after every flag); defaults shown one way, "[default: X]".
CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="Sparsity-informed neural-network pruning: measure, prune, compare, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=CONTEXT,
)
err_console = Console(stderr=True)
DB_HELP = "Results database: an SQLite file, or a PostgreSQL URL postgresql://user@host/db (docs/database.md)."


def _version(value: bool) -> None:
    if value:
        from pqprune import __version__

        typer.echo(f"pqprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version of pqprune and exit."
    ),
) -> None:
    """Sparsity-informed neural-network pruning: measure, prune, compare, export."""


def fail(message: str) -> NoReturn:
    """Print one error line and exit with code 2 (a usage or input error)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def stopped(err: KeyboardInterrupt, kept: str) -> NoReturn:
    """After Ctrl-C or SIGTERM: one line saying what is kept and how to resume; exit 130 or 143 as a shell would."""
    from pqprune.experiment.signals import Terminated, exit_code

    how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
    err_console.print(f"{how}: {kept}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=exit_code(err))


def main() -> None:
    app()


def _parse_kv(items: list[str] | None, what: str) -> dict:
    """``KEY=VALUE`` pairs of option ``what`` (numbers, booleans, lists like [64,64]); a bad one fails (exit 2)."""
    from pqprune.experiment.settings import SettingsError, parse_assignments

    try:
        return parse_assignments(items or [], what)
    except SettingsError as err:
        fail(str(err))


_INPUT_ERRORS: tuple = ()


def _input_errors() -> tuple:
    """The exceptions that mean bad input (exit 2), imported lazily."""
    from pqprune.experiment.data.registry import DatasetNotFound
    from pqprune.experiment.settings import SettingsError
    from pqprune.files import FileFormatError
    from pqprune.store import StoreError

    return (SettingsError, DatasetNotFound, StoreError, FileFormatError)


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _csv_values(option: str, value: str, cast: type) -> list:
    """Parse a comma-separated option (``--widths 16,32,64``) or fail with exit code 2 naming the option."""
    items = _split_list(value)
    if not items:
        fail(f"{option}: give at least one value")
    try:
        return [cast(v) for v in items]
    except ValueError:
        fail(f"{option}: expected comma-separated {cast.__name__} values, got {value!r}")
