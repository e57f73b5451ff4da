"""The theory studies: the Monte-Carlo grid, the teacher experiment and their CLI (`pqprune theory`)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from pqprune import theory
from pqprune.cli import app
from pqprune.prune.methods import LqNeuron
from pqprune.store import Store, record_theory_cells, theory_cells
from pqprune.store.schema import THEORY_COLUMNS
from pqprune.theory import mc_study as MC
from pqprune.theory import teacher_study as S

runner = CliRunner()

# A grid small enough for a test: 2 widths × 1 depth × 1 density × 2 methods = 4 configurations, 2 ε each.
SMALL = dict(
    widths=(4, 8),
    depths=(2,),
    densities=(0.7,),
    methods=("random", "magnitude"),
    eps=(0.5, 50.0),
    draws=6,
    n_inputs=16,
    restarts=1,
    steps=3,
    seed=1,
)
# A small teacher: 16-32-2, short sweeps.
TEACHER = dict(
    input_dim=16,
    hidden=(32,),
    output_dim=2,
    n_test=256,
    bound_eps=(0.5, 1.0, 2.0),
    index_gammas=(1.0, 2.0),
    sap_gammas=(1.0,),
    densities=(0.1, 0.3, 0.6, 0.9),
)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ Monte-Carlo grid
def test_grid_stores_one_row_per_cell_and_round_trips(tmp_path):
    db = tmp_path / "r.db"
    seen = []
    cells = MC.monte_carlo_grid(**SMALL, db=db, progress=seen.append)
    assert len(cells) == 2 * 2 * 2 == len(seen)
    with Store(db) as store:
        rows = theory_cells(store)
        assert theory_cells(store, study=cells[0].settings["study"]) == rows
        assert theory_cells(store, study="other") == []
    assert len(rows) == len(cells)
    for row, cell in zip(rows, cells):
        for col in THEORY_COLUMNS:
            assert row[col] == pytest.approx(getattr(cell, col)), col
        assert row["settings"]["spec"]["width"] == cell.width and row["settings"]["draws"] == 6
        assert row["ci_low"] <= row["p_hat"] <= row["ci_high"]
        assert 0.0 <= row["guaranteed_probability"] <= 1.0
    # A cell is exactly monte_carlo_gap at that configuration (same seed for every configuration).
    c = cells[2]
    spec = theory.RandomNetSpec(width=c.width, depth=c.depth, density=c.density, method=c.method)
    ref = theory.monte_carlo_gap(spec, c.eps, n_draws=6, n_inputs=16, restarts=1, steps=3, seed=1)
    assert (c.successes, c.gap_max, c.guaranteed_probability) == (
        ref.successes,
        pytest.approx(float(ref.gaps.max())),
        pytest.approx(ref.guaranteed),
    )
    # The bound is a lower bound: never above the interval's top (a larger ε never lowers p̂ or the bound).
    for c in cells:
        assert c.guaranteed_probability <= c.ci_high + 1e-12
        assert c.bound_eps > c.gap_q > 0 and c.looseness > 1
    lo, hi = cells[0], cells[1]
    assert (
        (lo.eps, hi.eps) == (0.5, 50.0)
        and hi.p_hat >= lo.p_hat
        and hi.guaranteed_probability >= lo.guaranteed_probability
    )
    # A second study appends; an empty database has no theory table yet.
    MC.monte_carlo_grid(**{**SMALL, "widths": (4,), "methods": ("random",)}, db=db)
    with Store(db) as store:
        assert len(theory_cells(store)) == len(cells) + 2
    with Store(tmp_path / "empty.db") as store:
        assert theory_cells(store) == []


def test_record_theory_cells_is_one_transaction(tmp_path):
    good = MC.monte_carlo_grid(**{**SMALL, "widths": (4,), "methods": ("random",), "eps": (1.0,)})[0].as_dict()
    bad = {k: v for k, v in good.items() if k != "p_hat"}
    with Store(tmp_path / "r.db") as store:
        with pytest.raises(ValueError, match="p_hat"):
            record_theory_cells(store, [good, bad])
        assert theory_cells(store) == []  # nothing of a failed batch is written
        record_theory_cells(store, [good, good])
        assert len(theory_cells(store)) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"eps": (0.0,)},
        {"eps": (-1.0,)},
        {"delta": 0.0},
        {"delta": 1.0},
        {"densities": (0.0,)},
        {"methods": ("sap",)},
        {"archs": ("rnn",)},
        {"dist": "cauchy"},
        {"widths": ()},
        {"draws": 0},
        {"archs": ("cnn",), "depths": (1,)},
    ],
)
def test_grid_bad_input_raises_before_work(bad, tmp_path):
    with pytest.raises(ValueError):
        MC.monte_carlo_grid(**{**SMALL, **bad}, db=tmp_path / "r.db")
    assert not (tmp_path / "r.db").exists()


# ------------------------------------------------------------------------------------------------ teacher study
@pytest.fixture(scope="module")
def cauchy_study():
    torch.set_num_threads(1)
    return S.teacher_study("cauchy", **TEACHER)


def test_teacher_study_every_method_counts_and_errors(cauchy_study):
    st = cauchy_study
    total = 16 * 32 + 32 * 2
    for m, n in (("lq_bound", 3), ("lq_index", 2), ("sap", 1), ("magnitude", 4)):
        pts = st.by_method(m)
        assert len(pts) == n, m
        for p in pts:
            assert p.total == total and 0 < p.kept <= total
            assert p.max_err >= p.mean_err >= 0 and p.max_err_l2 >= p.max_err
            assert math.isfinite(p.mag_max_err) and math.isfinite(p.mag_mean_err)
    # the bound rule: its error is within its guarantee on every test input (max over inputs ≤ bound)
    for p in st.by_method("lq_bound"):
        assert p.max_err_l2 <= p.bound_tail * (1 + 1e-9) + 1e-12
        assert p.bound_tail <= p.bound * (1 + 1e-9) + 1e-12
        assert p.looseness is None or p.looseness > 1
    # larger ε keeps fewer weights; something is pruned at the largest ε
    kept = [p.kept for p in sorted(st.by_method("lq_bound"), key=lambda p: p.value)]
    assert kept == sorted(kept, reverse=True) and kept[-1] < total
    # magnitude at its own counts is itself
    for p in st.by_method("magnitude"):
        assert (p.mag_max_err, p.mag_mean_err) == (p.max_err, p.mean_err)
    # the index rule at γ = 1 keeps what the bound rule keeps at relative ε = 1 (the same formula)
    idx1 = next(p for p in st.by_method("lq_index") if p.value == 1.0)
    bnd1 = next(p for p in st.by_method("lq_bound") if p.value == 1.0)
    assert idx1.kept == bnd1.kept


def test_bound_rule_error_below_bound_on_every_test_input():
    """Per input, ‖F(x) − F'(x)‖₂ ≤ the network bound, with the engine's LqNeuron masks = lq_network_bound's."""
    from pqprune.experiment.data import make_teacher

    teacher = make_teacher(16, (32,), 2, "t", seed=3)
    model = teacher.as_module().to(torch.float64)
    x = S.box_test_inputs(16, 512, 1.5, torch.Generator().manual_seed(0))
    for eps in (0.7, 2.0):
        nb = theory.lq_network_bound(model, 0.5, eps, input_bound=1.5, relative=True)
        method = LqNeuron(
            q=0.5, rule="bound", eps=eps, relative=True, input_bound={lb.name: lb.input_bound for lb in nb.layers}
        )
        pruned, masks = S._prune(model, method, "neuron")
        assert all(torch.equal(masks[n], m) for n, m in nb.masks().items())
        with torch.no_grad():
            gaps = (model(x) - pruned(x)).norm(dim=1)
        assert bool((gaps <= nb.output_bound_tail * (1 + 1e-9)).all()) and nb.output_bound_tail <= nb.output_bound
        if eps > 1:  # at ε ≤ 1/SI_q nothing may be pruned; at ε = 2 something is, and the error is not 0
            assert nb.kept < nb.total and float(gaps.max()) > 0


def test_magnitude_monotone_on_fixed_teacher():
    """More weights kept → smaller or equal error (nested magnitude masks). For a linear teacher the worst case over
    the box is B·Σ_pruned|w| per output — monotone for nested masks — and the corners attain it closely; for the
    ReLU teacher it is an empirical property of this fixed teacher (not a theorem), checked on a coarse grid."""
    rhos = (0.05, 0.1, 0.2, 0.4, 0.7, 0.9, 1.0)
    for hidden in ((), (32,)):
        st = S.teacher_study("cauchy", **{**TEACHER, "hidden": hidden, "densities": rhos}, methods=("magnitude",))
        pts = st.by_method("magnitude")
        assert [p.kept for p in pts] == sorted(p.kept for p in pts)
        for a, b in zip(pts, pts[1:]):  # b keeps more
            assert b.max_err <= a.max_err and b.mean_err <= a.mean_err, (hidden, a, b)
        assert pts[-1].max_err == 0.0


def test_teacher_bad_input():
    with pytest.raises(ValueError, match="dist"):
        S.teacher_study("laplace", **TEACHER)
    with pytest.raises(ValueError):
        S.teacher_study("normal", **{**TEACHER, "q": 1.0})
    with pytest.raises(ValueError):
        S.teacher_study("normal", **{**TEACHER, "bound_eps": (0.0,)})
    with pytest.raises(ValueError):
        S.teacher_studies(["normal", "bogus"], **TEACHER)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.mark.end_to_end
def test_cli_theory_mc_table_json_db_and_figure(tmp_path):
    db, out = tmp_path / "r.db", tmp_path / "out"
    args = [
        "theory",
        "mc",
        "--arch",
        "fcn,cnn",
        "--widths",
        "2,4",
        "--depths",
        "2",
        "--densities",
        "0.7",
        "--method",
        "random",
        "--eps",
        "0.5,50",
        "--draws",
        "4",
        "--inputs",
        "8",
        "--restarts",
        "1",
        "--steps",
        "2",
        "--db",
        str(db),
        "--out",
        str(out),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "p̂ [95% CI]" in r.output and "bound P(gap≤ε)" in r.output
    assert (out / "theory_mc.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "theory_mc.json").read_text())
    assert saved["format"] == "pqprune.theory_mc" and len(saved["cells"]) > 0
    before = torch.get_num_threads()
    r = runner.invoke(app, [*args, "--json", "--threads", "2"])
    assert r.exit_code == 0, r.output
    assert torch.get_num_threads() == before  # the caller's thread count is restored
    data = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert len(data) == 8 and {d["eps"] for d in data} == {0.5, 50.0} and {d["arch"] for d in data} == {"fcn", "cnn"}
    with Store(db) as store:
        assert len(theory_cells(store)) == 16  # two invocations, eight cells each


@pytest.mark.end_to_end
def test_cli_theory_teacher(tmp_path):
    r = runner.invoke(
        app,
        [
            "theory",
            "teacher",
            "--dists",
            "cauchy",
            "--input-dim",
            "8",
            "--hidden",
            "16",
            "--output-dim",
            "2",
            "--eps",
            "1,2",
            "--gammas",
            "1",
            "--sap-gammas",
            "1",
            "--densities",
            "0.5",
            "--n-test",
            "64",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [p["method"] for p in data[0]["points"]] == ["lq_bound", "lq_bound", "lq_index", "sap", "magnitude"]
    assert (tmp_path / "theory_teacher.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "theory_teacher.json").read_text())
    assert (saved["format"], saved["format_version"], saved["studies"]) == ("pqprune.theory_teacher", 1, data)
    r = runner.invoke(
        app,
        [
            "theory",
            "teacher",
            "--dists",
            "normal",
            "--input-dim",
            "4",
            "--hidden",
            "",
            "--output-dim",
            "1",
            "--eps",
            "1",
            "--gammas",
            "1",
            "--sap-gammas",
            "1",
            "--densities",
            "0.5",
            "--n-test",
            "16",
            "--out",
            str(tmp_path),
            "--markdown",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("| teacher | method |") and "| normal | lq_bound | eps=1 |" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["theory", "mc", "--eps", "0"],
        ["theory", "mc", "--eps", "-1"],
        ["theory", "mc", "--eps", "abc"],
        ["theory", "mc", "--delta", "0"],
        ["theory", "mc", "--delta", "1.5"],
        ["theory", "mc", "--dist", "cauchy"],
        ["theory", "mc", "--method", "sap"],
        ["theory", "mc", "--arch", "cnn", "--depths", "1"],
        ["theory", "mc", "--densities", "0"],
        ["theory", "mc", "--widths", ""],
        ["theory", "teacher", "--q", "1"],
        ["theory", "teacher", "--q", "0"],
        ["theory", "teacher", "--q", "-0.5"],
        ["theory", "teacher", "--eps", "0"],
        ["theory", "teacher", "--dists", "laplace"],
        ["theory", "teacher", "--dists", "normal,laplace"],
        ["theory", "teacher", "--densities", "1.5"],
    ],
)
def test_cli_theory_bad_input_exit_2(args, tmp_path):
    r = runner.invoke(
        app, args + ["--out", str(tmp_path)] + (["--db", str(tmp_path / "r.db")] if args[1] == "mc" else [])
    )
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "r.db").exists()
