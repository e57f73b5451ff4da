"""Every reference to the maths resolves inside the repository: each `math.md §N` names a section of docs/math.md,
and nothing points at files outside the repository or at the issue tracker."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = [
    *sorted((ROOT / "src").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.sh")),
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "tests").glob("*.py")),
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
]
CITATION = re.compile(r"math\.md\)? §(\d+)")
# A leftover pointer: the specification's files, or an issue by number ("issue 5", "issue #5").
OUTSIDE = re.compile(r"design\.md|shared/spec|\bissues? #?\d+", re.IGNORECASE)


def _sections() -> set[int]:
    text = (ROOT / "docs" / "math.md").read_text()
    return {int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE)}


def test_math_sections_are_the_nine_topics() -> None:
    assert _sections() == set(range(1, 10))


def test_every_citation_names_a_section_of_docs_math_md() -> None:
    sections = _sections()
    cited = {(p.relative_to(ROOT), int(n)) for p in TEXT for n in CITATION.findall(p.read_text())}
    assert len(cited) > 40  # the docstrings do cite it: a broken pattern must not pass by finding nothing
    assert [c for c in cited if c[1] not in sections] == []


def test_nothing_points_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in TEXT
        if p.resolve() != this
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []
