"""Progress of runs, driven by the runner's progress events, on stderr.

In a terminal: Rich progress bars (rounds and epochs of each run). Anywhere else — CI, ``make demo 2> log``, a
cluster's job output — bars would be cut to one frozen line, so :func:`run_display` writes one plain line per
finished round instead (run, round, density, test accuracy, seconds), plus one when a run starts and ends.
"""

from __future__ import annotations

from typing import Any

from rich.progress import TaskID

from pqprune.cli.app import err_console
from pqprune.cli.tables import _fmt


def run_display(enabled: bool = True) -> _RunDisplay | _RunLog:
    """The progress display of ``run``/``sweep``/``demo``: bars if stderr is a terminal, else one line per round."""
    if enabled and not err_console.is_terminal:
        return _RunLog()
    return _RunDisplay(enabled)


def _start_note(event: dict[str, Any]) -> str:
    if event["reused"]:
        return "finished earlier: reused"
    if event["resumed_from"] is not None:
        return f"resumed after round {event['resumed_from']}"
    return ""


class _RunLog:
    """One readable line per event that matters, for logs that are not a terminal (no bars, no colours)."""

    def __enter__(self) -> _RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, text: str) -> None:
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    def __call__(self, event: dict[str, Any]) -> None:
        kind, run_id = event["event"], event.get("run_id", "")
        if kind == "start":
            last, epochs = event["rounds"] - 1, event["epochs"]
            note = _start_note(event) or "started"
            self._line(f"{run_id}: {note} (rounds 0–{last}, {epochs} epoch{'' if epochs == 1 else 's'} per round)")
        elif kind == "round_end":
            m = event["metrics"]
            seconds = sum(v for k, v in m.items() if k.startswith("seconds_") and v is not None)
            self._line(
                f"{run_id} round {event['round']}/{event['rounds'] - 1}: density {m['density']:.4f}, "
                f"test acc {_fmt(m['test_accuracy'])}, {seconds:.1f} s"
            )
        elif kind == "end" and not event.get("reused"):
            self._line(f"{run_id}: {event['status']}")
        elif kind == "skipped":
            self._line(f"{run_id}: finished earlier: skipped")


class _RunDisplay:
    """Rich progress bars (on stderr) driven by the runner's progress events: rounds and epochs of each run."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=err_console,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[tuple[str, str], TaskID] = {}

    def __enter__(self) -> _RunDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, run_id: str, kind: str, total: int) -> TaskID:
        key = (run_id, kind)
        if key not in self.tasks:
            label = f"{run_id} rounds" if kind == "rounds" else "  epochs"
            self.tasks[key] = self.progress.add_task(label, total=total, info="")
        return self.tasks[key]

    def __call__(self, event: dict) -> None:
        kind, run_id = event["event"], event.get("run_id", "")
        if kind == "start":
            task = self._task(run_id, "rounds", event["rounds"])
            done = (
                event["rounds"]
                if event["reused"]
                else (0 if event["resumed_from"] is None else event["resumed_from"] + 1)
            )
            self.progress.update(task, total=event["rounds"], completed=done, info=_start_note(event))
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
        elif kind == "waiting":  # another process (another sweep, another machine) holds the run
            self.progress.update(self._task(run_id, "rounds", 1), info="computed elsewhere: waiting for it")
        elif kind == "skipped":
            self.progress.add_task(f"{run_id} rounds", total=1, completed=1, info="finished earlier: skipped")
