"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tests on tiny tensors: several threads only add overhead on a busy 2-core machine.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the previous count is restored afterwards.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def out_args(tmp_path: Path) -> list[str]:
    """``--db`` and ``--runs-dir`` options that keep a CLI test's results inside its temporary folder."""
    return ["--db", str(tmp_path / "out" / "db.sqlite"), "--runs-dir", str(tmp_path / "out" / "runs")]
