"""Every reference to the maths resolves inside the repository: each `math.md §N` names a section of docs/math.md,
every module docs/math.md names exists, and nothing points at files outside the repository or at the issue tracker.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MATH = ROOT / "docs" / "math.md"
PYTHON = [
    *sorted((ROOT / "src").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.py")),
    *sorted((ROOT / "tests").glob("*.py")),
]
TEXT = [
    *PYTHON,
    *sorted((ROOT / "bench").rglob("*.sh")),
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
]
THIS = Path(__file__).resolve()

# A citation: "math.md §5", "[math.md](math.md) §5", and the lists and ranges that follow one
# ("§4, §7, §8", "§1–5", "§7–§8", "§2 and §3").
CITATION = re.compile(r"math\.md\)?\s*(§\d+(?:\s*[–-]\s*§?\d+|\s*(?:,|and)\s*§\d+)*)")
SECTION_NUMBER = re.compile(r"\d+")
# In Python sources no other document has sections, so any "§N" there is a section of docs/math.md.
ANY_SECTION = re.compile(r"§(\d+)")
# A leftover pointer: the specification's files ("design.md", "../shared/…", "shared/spec"), or an issue by number
# ("issue 5", "Issue #12", "issues 3 and 4"). Words such as "issued" or "tissue" and "an issue with" do not match.
OUTSIDE = re.compile(r"design\.md|\.\./shared|shared/spec|\bissues?\s*#?\d+", re.IGNORECASE)
# Outside docs/, the page is always named by its path from the repository root.
BARE_MATH_MD = re.compile(r"(?<![\w/(\[])math\.md")


def _sections() -> set[int]:
    return {int(n) for n in re.findall(r"^## (\d+)\. ", MATH.read_text(), flags=re.MULTILINE)}


def _cited(text: str) -> list[int]:
    return [int(n) for group in CITATION.findall(text) for n in SECTION_NUMBER.findall(group)]


def test_citation_pattern_reads_lists_and_ranges() -> None:
    assert _cited("see docs/math.md §5") == [5]
    assert _cited("maths: [math.md](math.md) §4, §7, §8; code") == [4, 7, 8]
    assert _cited("docs/math.md §1–5 and docs/math.md §7–§8") == [1, 5, 7, 8]
    assert _cited("docs/math.md §2 and §3.") == [2, 3]
    assert _cited("math.md") == []
    assert _cited("docs/math.md §5, 20 epochs") == [5]
    assert OUTSIDE.search("fixed in issue 12") and OUTSIDE.search("see Issue #3") and OUTSIDE.search("../shared/x")
    assert not OUTSIDE.search("an issue with ties; tissue 3; issued 2 warnings; 12 issues")


def test_math_md_has_the_nine_sections_and_its_references() -> None:
    text = MATH.read_text()
    assert _sections() == set(range(1, 10))
    assert "## References" in text
    for key in ("[Diao23]", "[Yang22]", "[Qian21]", "[FC19]"):
        assert key in text.split("## References")[1], key


def test_every_citation_names_a_section_of_docs_math_md() -> None:
    sections = _sections()
    cited = {(str(p.relative_to(ROOT)), n) for p in TEXT if p != MATH for n in _cited(p.read_text())}
    cited |= {(str(p.relative_to(ROOT)), int(n)) for p in PYTHON for n in ANY_SECTION.findall(p.read_text())}
    assert len(cited) > 40  # the docstrings do cite it: a broken pattern must not pass by finding nothing
    assert sorted(c for c in cited if c[1] not in sections) == []


def test_citations_outside_docs_name_the_path() -> None:
    bare = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in TEXT
        if p.parent != ROOT / "docs" and p.resolve() != THIS
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if BARE_MATH_MD.search(line)
    ]
    assert bare == []


def test_nothing_points_outside_the_repository() -> None:
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in TEXT
        if p.resolve() != THIS
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []


def _resolve(dotted: str) -> object:
    """The module or attribute a dotted name such as ``pqprune.prune.pruner.Pruner.rewind`` refers to."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("dotted", sorted(set(re.findall(r"`(pqprune(?:\.\w+)+)`", MATH.read_text()))))
def test_every_module_math_md_names_exists(dotted: str) -> None:
    # A missing module or attribute raises ModuleNotFoundError / AttributeError naming it.
    assert _resolve(dotted) is not None
