"""The one implementation of each small shared concept: non-finite numbers in JSON/SQL, KEY=VALUE options,
the smallest density within a tolerance of dense."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pqprune.experiment.settings import RunSettings, SettingsError, parse_assignment, parse_assignments, parse_value
from pqprune.files import finite_or_none, json_safe, to_json
from pqprune.prune.methods.base import Option, coerce_value
from pqprune.report.summary import min_density_within


def test_non_finite_numbers_become_none_everywhere_in_a_document() -> None:
    assert finite_or_none(math.nan) is None and finite_or_none(-math.inf) is None
    assert finite_or_none(torch.tensor(float("nan"))) is None and finite_or_none(np.float64("inf")) is None
    assert finite_or_none(torch.tensor(0.25)) == 0.25 and finite_or_none(np.int64(3)) == 3
    assert finite_or_none("text") == "text" and finite_or_none(None) is None
    doc = {"a": [1.0, math.nan, (2, math.inf)], 3: {"b": np.float32("nan"), "c": "x"}}
    assert json_safe(doc) == {"a": [1.0, None, [2, None]], "3": {"b": None, "c": "x"}}


def test_json_text_is_always_valid_json() -> None:
    doc = {"b": [math.inf, np.float64(0.5)], "a": torch.tensor(float("nan")), "c": {"d": -math.inf}}
    assert to_json(doc, indent=None, sort_keys=True) == '{"a": null, "b": [null, 0.5], "c": {"d": null}}'
    assert to_json([1, 2]) == "[\n  1,\n  2\n]"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("method=sap", ("method", "sap")),
        (" target-density = 0.1 ", ("target_density", "0.1")),
        ("hidden=[64, 64]", ("hidden", "[64, 64]")),
        ("x=", ("x", "")),
    ],
)
def test_assignments_split_once_with_dashes_as_underscores(item: str, expected: tuple[str, str]) -> None:
    assert parse_assignment(item, "--where") == expected


@pytest.mark.parametrize("item", ["method", "=sap", "2x=1", "a b=1"])
def test_a_bad_assignment_names_the_option(item: str) -> None:
    with pytest.raises(SettingsError, match=r"--set takes KEY=VALUE"):
        parse_assignment(item, "--set")


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("1e-3", 0.001), ("true", True), ("[64, 64]", [64, 64]), ("[a, b]", ["a", "b"]), ("sap", "sap")],
)
def test_values_read_as_json_then_yaml_lists_else_text(text: str, value: object) -> None:
    assert parse_value(text) == value


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [(bool, "yes", True), (bool, "OFF", False), (bool, 1, True), (int, "3", 3), (int, 4.0, 4), (float, "1e-3", 0.001)],
)
def test_settings_and_method_options_read_typed_values_the_same_way(kind: type, text: object, value: object) -> None:
    assert coerce_value(kind, text) == value
    assert Option("x", kind, None, "").coerce(text) == value
    name = {bool: "nesterov", int: "epochs", float: "lr"}[kind]
    assert getattr(RunSettings.from_dict({name: text}), name) == value


@pytest.mark.parametrize(("kind", "text"), [(bool, "maybe"), (bool, 2), (int, 2.5), (int, True), (float, "nan")])
def test_settings_and_method_options_refuse_the_same_values(kind: type, text: object) -> None:
    with pytest.raises(ValueError):
        coerce_value(kind, text)
    with pytest.raises(ValueError, match="option 'x' takes a"):
        Option("x", kind, None, "").coerce(text)
    name = {bool: "nesterov", int: "epochs", float: "lr"}[kind]
    with pytest.raises(SettingsError, match=f"setting '{name}' must be a {kind.__name__}"):
        RunSettings.from_dict({name: text})


def test_a_list_of_assignments_reads_keys_and_values_and_the_last_one_wins() -> None:
    got = parse_assignments(["seed=0", "method=sap", "hidden=[64, 64]", "target-density=0.1", "seed=2"], "--where")
    assert got == {"seed": 2, "method": "sap", "hidden": [64, 64], "target_density": 0.1}
    assert parse_assignments([], "--set") == {}
    with pytest.raises(SettingsError, match=r"--model-option takes KEY=VALUE with KEY a name, got 'width'"):
        parse_assignments(["depth=2", "width"], "--model-option")


def test_min_density_within_one_point_of_dense() -> None:
    density = [1.0, 0.8, 0.64, 0.51, 0.41]
    assert min_density_within(density, [0.90, 0.91, 0.89, 0.885, 0.95]) == 0.41
    assert min_density_within(density, [0.90, 0.91, 0.89, 0.885, 0.80]) == 0.64  # exactly one point below counts
    assert min_density_within(density, [0.90, None, math.nan, 0.70, 0.60]) == 1.0
    assert min_density_within(density, [None, 0.9, 0.9, 0.9, 0.9]) is None
    assert min_density_within([], []) is None
    assert min_density_within(density, [0.9, 0.895, 0.85, 0.8, 0.7], tolerance=0.05) == 0.64


@pytest.mark.end_to_end
def test_plotting_leaves_the_callers_backend_and_pyplot_alone(tmp_path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, matplotlib; matplotlib.use('svg')\n"
        "from pqprune.plotting import new_figure, save_png\n"
        "from pqprune.theory.mc_study import plot_grid\n"
        "fig, axes = new_figure(1, 2); axes[0][1].plot([0, 1], [1, 0])\n"
        f"out = save_png(fig, {str(tmp_path / 'a' / 'f.png')!r})\n"
        "assert out.read_bytes()[:8] == b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _mask_entry_points() -> dict:
    """Every place a set of masks comes in, as ``f(name → mask)`` against one 2×3 weight named ``fc.weight``."""
    from torch import nn

    from pqprune.export import apply_masks, pruned_copy
    from pqprune.measure.weights import check_masks
    from pqprune.prune.masks import MaskSet, to_torch_prune
    from pqprune.prune.select import select_keep, smallest_in_rows
    from pqprune.theory.lq_bounds import keep_largest_mask

    model = nn.Sequential()
    model.add_module("fc", nn.Linear(3, 2))
    w = model.fc.weight.detach()
    state = {"fc.weight": w}
    return {
        "check_masks": lambda m: check_masks(state, m),
        "MaskSet": lambda m: MaskSet(model).update(m, allow_regrow=True),
        "apply_masks": lambda m: apply_masks(state, m),
        "pruned_copy": lambda m: pruned_copy(model, m),
        "to_torch_prune": lambda m: to_torch_prune(state, m),
        "select_keep (global)": lambda m: select_keep(state, {"global": 0}, "global", m),
        "smallest_in_rows": lambda m: smallest_in_rows(w, 0, m.get("fc.weight"), "fc.weight"),
        "keep_largest_mask": lambda m: keep_largest_mask(w, torch.tensor([1, 1]), m.get("fc.weight")),
    }


@pytest.mark.parametrize("entry", list(_mask_entry_points()))
def test_one_mask_check_behind_every_entry_point(entry: str) -> None:
    use = _mask_entry_points()[entry]
    use({"fc.weight": torch.tensor([[True, False, True], [True, True, False]])})  # a good mask passes
    with pytest.raises(ValueError, match=r"mask for '(fc\.weight|w)' has shape \(3, 2\), the weight has \(2, 3\)"):
        use({"fc.weight": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask for '(fc\.weight|w)' must be bool"):
        use({"fc.weight": torch.full((2, 3), 0.5)})
    if entry not in ("smallest_in_rows", "keep_largest_mask"):  # one tensor, no names
        with pytest.raises(
            ValueError, match=r"unknown [a-z ]+ name\(s\) \['fc9\.weight'\]; the [a-z ]+s are \['fc\.weight'"
        ):
            use({"fc9.weight": torch.ones(2, 3, dtype=torch.bool)})


def test_torch_threads_restores_the_callers_count_also_after_an_error() -> None:
    from pqprune.threads import torch_threads

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other) as n:
        assert n == other and torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), torch_threads(other):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="thread count must be >= 1, got 0"), torch_threads(0):
        pass
    assert torch.get_num_threads() == before


def test_commands_that_open_no_database_do_not_load_it() -> None:
    # The packages' names are imported on first use: loading the CLI (what `pqprune analyze` does before it runs)
    # imports neither SQLAlchemy nor the training loop; the names still resolve, and unknown ones fail as usual.
    import subprocess
    import sys

    code = (
        "import sys, pqprune.cli, pqprune.experiment as e, pqprune.store as s; "
        "print(sorted(m for m in ('sqlalchemy', 'pqprune.experiment.loop') if m in sys.modules)); "
        "print(e.RunSettings.__module__, s.Store.__module__, s.STATUSES[0]); "
        "print('sqlalchemy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["[]", "pqprune.experiment.settings pqprune.store.database running", "True"]
    import pqprune.store

    with pytest.raises(AttributeError, match="has no attribute 'Stor'"):
        pqprune.store.Stor  # noqa: B018


def test_every_table_shows_a_missing_value_the_same_way() -> None:
    from rich.console import Console

    from pqprune.cli.tables import _fmt, _g, _rounds_table
    from pqprune.files import MISSING

    assert _fmt(None) == _fmt(math.nan) == _g(None) == MISSING and _fmt(0.5, 2) == "0.50"
    keys = ("density", "val_accuracy", "test_accuracy", "pruned_test_accuracy", "pqi", "gini")
    round0 = {"round": 0, **dict.fromkeys(keys, 0.9), "pruned_test_accuracy": None}
    console = Console(width=200, record=True)
    console.print(_rounds_table("sap-0", [round0]))
    line = next(row for row in console.export_text().splitlines() if "0.9000" in row)
    assert line.count(MISSING) == 1 and "nan" not in line
