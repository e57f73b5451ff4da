"""Options generated from :class:`pqprune.experiment.RunSettings` and the method registry: every setting and every
option of a registered method becomes an option of ``run`` (typed) and of ``sweep`` (a comma-separated list), so a
new setting or a new method's option is a flag everywhere without touching the CLI.
"""

from __future__ import annotations

import inspect

import typer

from pqprune.cli.app import _parse_kv

_DICT_SETTINGS = ("data_options", "model_options", "method_options")
METHOD_PANEL = "Method options (each belongs to the methods named in its help)"


def _param(name: str, kind: type, help_text: str, as_lists: bool, panel: str | None) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    annotation: object
    if as_lists and kind is not bool:
        option = typer.Option(None, flag, help=help_text + " Comma-separated values sweep.", rich_help_panel=panel)
        annotation = str | None
    elif kind is bool:  # a flag pair in run and sweep alike (sweep both values with --set NAME=true,false)
        option = typer.Option(None, f"{flag}/--no-{name.replace('_', '-')}", help=help_text, rich_help_panel=panel)
        annotation = bool | None
    else:
        option = typer.Option(None, flag, help=help_text, rich_help_panel=panel)
        annotation = kind | None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _setting_params(as_lists: bool) -> list[inspect.Parameter]:
    """One parameter per run setting, then one per method option (help says which methods take it)."""
    from pqprune.experiment.settings import HELP, RunSettings

    defaults = RunSettings.defaults()
    params = [
        _param(name, type(defaults[name]), f"{HELP[name]} [default: {defaults[name]}]", as_lists, None)
        for name in RunSettings.names()
        if name not in _DICT_SETTINGS
    ]
    return params + _method_params(as_lists)


def _method_params(as_lists: bool) -> list[inspect.Parameter]:
    """One parameter per option of a registered method (help says which methods take it)."""
    from pqprune.prune.methods.registry import option_help, option_names, shared_option

    params = []
    for name in option_names():
        opt = shared_option(name)
        assert opt is not None
        params.append(_param(name, opt.kind, option_help(name), as_lists, METHOD_PANEL))
    return params


def _with_settings(as_lists: bool, methods_only: bool = False):
    """Decorator: append one option per setting (``methods_only``: per method option) to a command's signature;
    they arrive as ``settings=dict`` (those given)."""
    import functools

    def params() -> list[inspect.Parameter]:
        return _method_params(as_lists) if methods_only else _setting_params(as_lists)

    def deco(fn):
        names = {p.name for p in params()}

        @functools.wraps(fn)
        def wrapper(**kw):
            given = {k: kw.pop(k) for k in list(kw) if k in names}
            return fn(settings={k: v for k, v in given.items() if v is not None}, **kw)

        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "settings"]
        wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + params()
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
