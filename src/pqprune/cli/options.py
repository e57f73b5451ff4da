"""Options generated from :class:`pqprune.experiment.RunSettings`: every setting becomes an option of ``run`` (typed)
and of ``sweep`` (a comma-separated list), so a new setting is an option everywhere without touching the CLI.
"""

from __future__ import annotations

import typer

from pqprune.cli.app import _parse_kv

# --------------------------------------------------------------------------------------------- run, sweep, runs, demo
# Every RunSettings field becomes an option of `run` (typed) and of `sweep` (a comma-separated list), built from
# the dataclass so that a new setting is an option everywhere without touching this file.
_DICT_SETTINGS = ("data_options", "model_options")


def _setting_params(as_lists: bool) -> list:
    import inspect

    from pqprune.experiment.settings import HELP, RunSettings

    params = []
    defaults = RunSettings.defaults()
    for name in RunSettings.names():
        if name in _DICT_SETTINGS:
            continue
        flag = "--" + name.replace("_", "-")
        default = defaults[name]
        help_text = f"{HELP[name]} (default: {default})"
        if as_lists:
            option, annotation = (
                typer.Option(None, flag, help=help_text + " Comma-separated values sweep.", show_default=False),
                str | None,
            )
        elif isinstance(default, bool):
            option = typer.Option(None, f"{flag}/--no-{name.replace('_', '-')}", help=help_text, show_default=False)
            annotation = bool | None
        else:
            option, annotation = typer.Option(None, flag, help=help_text, show_default=False), type(default) | None
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def _with_settings(as_lists: bool):
    """Decorator: append one option per setting to a command's signature; they arrive as ``settings=dict``."""
    import functools
    import inspect

    def deco(fn):
        names = {p.name for p in _setting_params(as_lists)}

        @functools.wraps(fn)
        def wrapper(**kw):
            given = {k: kw.pop(k) for k in list(kw) if k in names}
            return fn(settings={k: v for k, v in given.items() if v is not None}, **kw)

        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "settings"]
        wrapper.__signature__ = inspect.Signature(
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + _setting_params(as_lists)
        )
        del wrapper.__wrapped__  # typer must see the new signature, not the original's
        return wrapper

    return deco


def _base_settings(
    config: str | None, given: dict, data_option: list[str] | None, model_option: list[str] | None
) -> dict:
    """Config file values, overridden by options given on the command line."""
    from pqprune.experiment.settings import load_config

    base = load_config(config) if config else {}
    base.update(given)
    for key, items in (("data_options", data_option), ("model_options", model_option)):
        extra = _parse_kv(items, "--" + key[:-1].replace("_", "-"))
        if extra:
            base[key] = {**base.get(key, {}), **extra}
    return base
