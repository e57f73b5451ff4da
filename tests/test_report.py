"""`pqprune report`: figures, summary numbers, self-contained HTML and the CLI's error paths (the phase rule
itself: tests/test_phases.py).

The database is written with the store's own functions and filled with synthetic rounds whose summary numbers
are worked out by hand below.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pqprune.cli.app import app
from pqprune.experiment.settings import RunSettings
from pqprune.report.build import generate, parse_where, write_report
from pqprune.report.figures import FIGURES, METHOD_STYLES, method_style
from pqprune.report.runs import ReportError, load_groups
from pqprune.report.summary import summary_cells, summary_row
from pqprune.store import Store

runner = CliRunner()

# 2 methods × 2 seeds × 5 rounds (T = 4).
SAP_DENSITY = [1.0, 0.8, 0.6, 0.45, 0.35]
SAP_ACC = {0: [0.90, 0.91, 0.90, 0.885, 0.80], 1: [0.90, 0.91, 0.90, 0.875, 0.78]}  # mean .90 .91 .90 .88 .79
SAP_PQI = [0.15, 0.12, 0.16, 0.20, 0.17]  # falls, rises to a peak at round 3, falls: the three phases
LT_DENSITY = [0.8**t for t in range(5)]
LT_ACC = {0: [0.90, 0.905, 0.90, 0.90, 0.898], 1: [0.90, 0.905, 0.90, 0.90, 0.898]}
LT_PQI = [0.15, 0.14, 0.13, 0.12, 0.11]  # falls throughout with accuracy intact: regularisation only


def _fill(db: Path) -> None:
    specs = [("sap", SAP_DENSITY, SAP_ACC, SAP_PQI), ("lt", LT_DENSITY, LT_ACC, LT_PQI)]
    with Store(db) as store:
        for method, density, acc, pqi in specs:
            for seed in (0, 1):
                s = RunSettings(
                    data="digits", model="mlp", method=method, scope="global", rounds=4, epochs=1, seed=seed
                )
                store.start_run(s.run_id(), s.run_hash(), s.resolved().to_dict())
                for t in range(5):
                    layers = {
                        name: {"density": density[t] * f, "pqi": pqi[t], "gini": 0.4}
                        for name, f in (("0.weight", 1.0), ("2.weight", 0.9 if t else 1.0))
                    }
                    store.record_round(
                        s.run_id(),
                        t,
                        {
                            "density": density[t],
                            "test_accuracy": acc[seed][t],
                            "pruned_test_accuracy": None if t == 0 else acc[seed][t] - 0.05,
                            "pqi": pqi[t] + 0.001 * seed,
                            "gini": 0.4 + 0.01 * t,
                            "layers": layers,
                        },
                    )
                store.set_status(s.run_id(), "finished")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "runs.db"
    _fill(path)
    return path


@pytest.fixture(scope="module")
def report(db: Path, tmp_path_factory: pytest.TempPathFactory):
    return generate(db, tmp_path_factory.mktemp("out") / "report")


# --------------------------------------------------------------------------------------------- files and HTML
@pytest.mark.slow
def test_files_exist(report) -> None:
    out = report.index.parent
    assert report.index.name == "index.html" and report.index.is_file()
    assert (out / "summary.md").is_file()
    assert len(report.groups) == 1 and report.groups[0].slug == "digits-mlp-global"
    pngs = report.figures["digits-mlp-global"]
    assert [p.name for p in pngs] == [f"digits-mlp-global_{stem}.png" for stem, _, _ in FIGURES]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


@pytest.mark.slow
def test_html_self_contained(report) -> None:
    page = report.index.read_text(encoding="utf-8")
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "max-width" in page  # readable on a laptop: a bounded container, images scale
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert len(srcs) == len(FIGURES)
    for src in srcs:
        assert src.startswith("data:image/png;base64,") or (report.index.parent / src).is_file()
    assert "SAP(0.5,1)" in page and "LT" in page and "collapse" in page


# --------------------------------------------------------------------------------------------- summary numbers
def test_groups_and_methods(db: Path) -> None:
    (g,) = load_groups(db)
    assert [m.label for m in g.methods] == ["SAP(0.5,1)", "LT"]  # the fixed method order
    assert all(sorted(m.seeds) == [0, 1] and m.n_rounds == 5 for m in g.methods)


def test_summary_numbers(db: Path) -> None:
    (g,) = load_groups(db)
    sap, lt = (summary_row(m) for m in g.methods)
    assert sap["seeds"] == 2 and sap["last_round"] == 4
    assert sap["final_density"] == pytest.approx(0.35)
    assert sap["final_accuracy"] == pytest.approx(0.79)
    assert sap["final_accuracy_std"] == pytest.approx(math.sqrt(2) * 0.01)  # sample std of .80, .78
    assert sap["dense_accuracy"] == pytest.approx(0.90)
    assert sap["min_density_within_1pt"] == pytest.approx(0.6)  # rounds 0-2 have mean accuracy ≥ 0.89
    assert sap["pqi_peak_round"] == 3
    # 11 points below dense: beyond 3 standard errors (7.6 points) of 200 test examples (read off the
    # accuracies, which are counts / 200) × 2 seeds
    assert sap["final_phase"] == "collapse"
    assert lt["final_density"] == pytest.approx(0.8**4)
    assert lt["min_density_within_1pt"] == pytest.approx(0.8**4)  # never more than 0.2 point below dense
    assert lt["pqi_peak_round"] is None and lt["final_phase"] == "regularisation"  # no compression phase: no peak


@pytest.mark.slow
def test_summary_markdown(report) -> None:
    md = report.summary_path.read_text(encoding="utf-8")
    assert md == report.summary
    assert "## data=digits, model=mlp, scope=global" in md
    sap_line = next(line for line in md.splitlines() if line.startswith("| SAP(0.5,1)"))
    cells = [c.strip() for c in sap_line.strip("|").split("|")]
    assert cells == ["SAP(0.5,1)", "2", "4", "35", "79.00 ± 1.41", "90.00", "60", "3", "collapse", "–"]


@pytest.mark.slow
def test_where_filters_and_write_report(db: Path, tmp_path: Path) -> None:
    (g,) = load_groups(db, where={"method": "lt", "seed": 1})
    assert [m.label for m in g.methods] == ["LT"] and g.methods[0].seeds == [1]
    index = write_report(db, tmp_path / "w", where={"method": "lt", "seed": 1})
    assert index == tmp_path / "w" / "index.html" and index.is_file()
    assert "SAP(0.5,1)" not in index.read_text(encoding="utf-8")


def test_method_styles_fixed_and_distinct() -> None:
    assert method_style("SAP(0.5,1)") == METHOD_STYLES["SAP(0.5,1)"]
    assert method_style("SAP(0.5,1)") != method_style("SAP(1,2)")
    assert method_style("SAP(0.5,2)") == method_style("SAP(0.5,2)")  # stable for labels outside the table
    assert len({c for c, _ in METHOD_STYLES.values()}) == len(METHOD_STYLES)


def test_errors(db: Path, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no results database"):
        generate(tmp_path / "missing.db", tmp_path / "o")
    assert not (tmp_path / "missing.db").exists()  # looking must not create an empty database
    with pytest.raises(ReportError, match="no runs .* match method=os"):
        generate(db, tmp_path / "o", where={"method": "os"})
    with pytest.raises(ReportError, match="unknown setting"):
        generate(db, tmp_path / "o", where={"methd": "sap"})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="is a file"):
        generate(db, tmp_path / "file")
    with pytest.raises(ReportError, match="KEY=VALUE"):
        parse_where(["method"])
    assert parse_where(["seed=0", "method=sap", "p=0.5", "nesterov=true"]) == {
        "seed": 0,
        "method": "sap",
        "p": 0.5,
        "nesterov": True,
    }


# --------------------------------------------------------------------------------------------- CLI
@pytest.mark.end_to_end
def test_cli_report(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = runner.invoke(app, ["report", "--db", str(db), "--where", "method=sap", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file()
    assert "index.html" in result.output and "SAP(0.5,1)" in result.output and "collapse" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "{tmp}/none.db"], "no results database"),
        (["--db", "{db}", "--where", "method=os"], "no runs"),
        (["--db", "{db}", "--where", "method"], "KEY=VALUE"),
    ],
)
def test_cli_errors(db: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.format(tmp=tmp_path, db=db) for a in args]
    result = runner.invoke(app, ["report", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ")


def test_differences_plot_pruned_pqi_when_recorded() -> None:
    """A database that records ``pruned_pqi`` (not schema 1 yet) gets its ΔPQI curve instead of the notice."""
    from pqprune.report.figures import fig_differences
    from pqprune.report.runs import Group, MethodRuns

    rounds = [
        {
            "round": t,
            "pqi": 0.2,
            "pruned_pqi": None if t == 0 else 0.15,
            "test_accuracy": 0.9,
            "pruned_test_accuracy": None if t == 0 else 0.8,
            "layers": {},
        }
        for t in range(3)
    ]
    fig = fig_differences(Group("d", "m", "global", [MethodRuns("LT", {}, ["a"], [0], [rounds])]))
    ax_pqi, ax_acc = fig.axes[:2]
    assert not ax_pqi.texts  # no "not recorded" notice
    assert list(ax_pqi.lines[0].get_ydata()) == pytest.approx([0.05, 0.05])
    assert list(ax_acc.lines[0].get_ydata()) == pytest.approx([10.0, 10.0])


def test_matched_runs_group_by_the_method_of_their_reference(tmp_path: Path) -> None:
    """random_matched runs name a different reference per seed; they are seeds of one method, labelled by it."""
    db = tmp_path / "runs.db"
    with Store(db) as store:
        for seed in (0, 1):
            ref = RunSettings(data="digits", model="mlp", method="lt", scope="layer", rounds=1, epochs=1, seed=seed)
            rm = RunSettings(
                data="digits",
                model="mlp",
                method="random_matched",
                method_options={"reference": ref.run_id()},
                scope="layer",
                rounds=1,
                epochs=1,
                seed=seed,
            )
            for s in (ref, rm):
                store.start_run(s.run_id(), s.run_hash(), s.resolved().to_dict())
                for t in range(2):
                    store.record_round(s.run_id(), t, {"density": 0.8**t, "test_accuracy": 0.9})
                store.set_status(s.run_id(), "finished")
    (group,) = load_groups(db)
    by_label = {m.label: m for m in group.methods}
    assert sorted(by_label) == ["LT", "RandomMatched"]
    assert sorted(by_label["RandomMatched"].seeds) == [0, 1]
    assert by_label["RandomMatched"].settings["reference"] == "LT"


def test_examples_behind_accuracies_recovers_the_evaluation_set_size() -> None:
    import numpy as np

    from pqprune.report.summary import examples_behind

    counts = np.array([[421, 423, 418, 400], [425, 419, 417, 399]])
    assert examples_behind(counts / 450) == 450
    assert examples_behind(np.array([0.5, 0.25, 0.75, np.nan])) == 4  # all counts share a factor: a divisor
    assert examples_behind(np.array([0.9, 0.9, np.nan])) is None  # too little to go by
    assert examples_behind(np.array([1 / 3, 1 / 7, 1 / 11]), largest=50) is None  # 231 is past the limit


def test_the_chosen_round_of_runs_stopped_at_a_phase(tmp_path: Path) -> None:
    """Two seeds that stopped at collapse choose rounds 2 and 3; a third never stopped and counts with its last."""
    db = tmp_path / "stops.db"
    acc = [0.90, 0.91, 0.89, 0.88, 0.60]
    with Store(db) as store:
        for seed, chosen, n_rounds in ((0, 2, 4), (1, 3, 5), (2, None, 5)):
            s = RunSettings(data="digits", method="random", rounds=4, epochs=1, seed=seed, stop_at_phase="collapse")
            stop = {} if chosen is None else {"stopped_at_phase": "collapse", "chosen_round": chosen}
            store.start_run(s.run_id(), s.run_hash(), {**s.resolved().to_dict(), **stop})
            for t in range(n_rounds):
                store.record_round(s.run_id(), t, {"density": 0.8**t, "test_accuracy": acc[t] + 0.01 * seed})
            store.set_status(s.run_id(), "finished")
    ((m,),) = [g.methods for g in load_groups(db)]
    row = summary_row(m)
    assert row["chosen_rounds"] == [2, 3, 4]
    assert row["chosen_density"] == pytest.approx((0.8**2 + 0.8**3 + 0.8**4) / 3)
    assert row["chosen_accuracy"] == pytest.approx((0.89 + 0.89 + 0.62) / 3)
    assert summary_cells(row)[-1] == "2/3/4 (52.05, 80.00)"


def test_a_seed_that_has_not_reached_t_is_not_averaged_at_t(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with Store(db) as store:
        for seed, rounds in ((0, 5), (1, 3)):  # seed 1 still running: rounds 0-2 recorded
            s = RunSettings(data="digits", model="mlp", method="lt", scope="global", rounds=4, epochs=1, seed=seed)
            store.start_run(s.run_id(), s.run_hash(), s.resolved().to_dict())
            for t in range(rounds):
                store.record_round(s.run_id(), t, {"density": 0.8**t, "test_accuracy": 0.9 - 0.01 * seed})
            if rounds == 5:
                store.set_status(s.run_id(), "finished")
    (g,) = load_groups(db)
    row = summary_row(g.methods[0])
    assert row["seeds"] == 2 and row["seeds_at_last_round"] == 1 and row["last_round"] == 4
    assert row["final_accuracy"] == pytest.approx(0.9)
    cells = summary_cells(row)
    assert cells[1] == "2 (1 at T)" and cells[4] == "90.00"  # no ± over a single seed
