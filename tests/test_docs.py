"""README and docs/: short README, every relative link resolves, generated reference pages are current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokbench import docs_gen

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_short_and_names_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make run" in text and "make test" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # web addresses and anchors within the page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert broken == [], f"{page.name}: {broken}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[ok](p.md) [gone](missing.md) [web](https://example.org)")
    assert [t for t in LINK.findall(page.read_text()) if not (page.parent / t).exists()
            and not t.startswith("https:")] == ["missing.md"]


def test_generated_pages_are_current():
    # run `python -m tokbench.docs_gen` after changing a family, a variant or a suite field
    assert docs_gen.FAMILIES_PAGE.read_text() == docs_gen.families_markdown()
    assert docs_gen.SUITES_PAGE.read_text() == docs_gen.with_suite_fields(docs_gen.SUITES_PAGE.read_text())
    assert docs_gen.suite_fields_markdown() in docs_gen.SUITES_PAGE.read_text()
