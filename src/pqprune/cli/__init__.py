"""The ``pqprune`` command line (Typer). It only parses arguments and calls the library; every command turns a user
error (bad file, bad argument) into one line on stderr and exit code 2.
"""

from pqprune.cli import analyze, export, methods, prune, report, runs, theory  # noqa: F401  (each module adds its commands)
from pqprune.cli.app import app, main

__all__ = ["app", "main"]
