"""The one implementation of each small shared concept: non-finite numbers in JSON/SQL, KEY=VALUE options,
the smallest density within a tolerance of dense."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pqprune.experiment.settings import SettingsError, parse_assignment, parse_value
from pqprune.files import finite_or_none, json_safe
from pqprune.report.summary import min_density_within


def test_non_finite_numbers_become_none_everywhere_in_a_document() -> None:
    assert finite_or_none(math.nan) is None and finite_or_none(-math.inf) is None
    assert finite_or_none(torch.tensor(float("nan"))) is None and finite_or_none(np.float64("inf")) is None
    assert finite_or_none(torch.tensor(0.25)) == 0.25 and finite_or_none(np.int64(3)) == 3
    assert finite_or_none("text") == "text" and finite_or_none(None) is None
    doc = {"a": [1.0, math.nan, (2, math.inf)], 3: {"b": np.float32("nan"), "c": "x"}}
    assert json_safe(doc) == {"a": [1.0, None, [2, None]], "3": {"b": None, "c": "x"}}


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


def test_min_density_within_one_point_of_dense() -> None:
    density = [1.0, 0.8, 0.64, 0.51, 0.41]
    assert min_density_within(density, [0.90, 0.91, 0.89, 0.885, 0.95]) == 0.41
    assert min_density_within(density, [0.90, 0.91, 0.89, 0.885, 0.80]) == 0.64  # exactly one point below counts
    assert min_density_within(density, [0.90, None, math.nan, 0.70, 0.60]) == 1.0
    assert min_density_within(density, [None, 0.9, 0.9, 0.9, 0.9]) is None
    assert min_density_within([], []) is None
    assert min_density_within(density, [0.9, 0.895, 0.85, 0.8, 0.7], tolerance=0.05) == 0.64
