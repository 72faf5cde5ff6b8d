"""The user-facing text: every relative link leads somewhere, the README stays short, and no page
speaks of the work's internal history ("session 9's weights") instead of versions a user can see.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 260

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    pages += sorted((ROOT / "docs").glob("*.md"))
    pages += sorted((ROOT / "scripts").glob("*/README.md"))
    return [p for p in pages if p.exists()]


def _prose_lines(path: Path) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text in lower case, punctuation dropped, spaces
    to hyphens (links and code spans keep their text)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = CODE_SPAN.sub(lambda m: m.group(2), text)
    text = text.replace("*", "").lower()
    kept = "".join(
        c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN"
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    found = []
    for line in _prose_lines(path):
        line = CODE_SPAN.sub("", line)
        found += LINK.findall(line)
    return found


def _relative_links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in _pages()
        for target in links(page)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_checked_pages_exist():
    names = {p.relative_to(ROOT).as_posix() for p in _pages()}
    assert {"README.md", "CHANGELOG.md", "docs/README.md"} <= names
    assert len(_relative_links()) > 20


@pytest.mark.parametrize(
    "page,target", _relative_links(), ids=lambda v: v.relative_to(ROOT).as_posix() if isinstance(v, Path) else v
)
def test_relative_link_points_to_an_existing_file_and_heading(page: Path, target: str):
    file_part, _, anchor = target.partition("#")
    dest = (page.parent / file_part).resolve() if file_part else page
    assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target!r}, but {dest} does not exist"
    if anchor:
        assert dest.suffix == ".md", f"{page.relative_to(ROOT)}: anchor {target!r} into a file that is not markdown"
        assert anchor in anchors(dest), (
            f"{page.relative_to(ROOT)}: no heading {anchor!r} in {dest.relative_to(ROOT)} "
            f"(has {sorted(anchors(dest))})"
        )


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_keeps_its_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert (
        "python3 -m venv .venv && . .venv/bin/activate && pip install . && "
        "stan detect examples/ped2_test02.mp4 --out report/"
    ) in text
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install '.[test]' && pytest -q" in text


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_speaks_of_sessions(page: Path):
    hits = [
        f"{n}: {line.strip()}"
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"session", line, re.IGNORECASE)
    ]
    assert not hits, f"{page.relative_to(ROOT)} names sessions; use dates or weights versions:\n" + "\n".join(hits)


def test_slug_follows_github():
    assert slug("Where the maps point (measured)") == "where-the-maps-point-measured"
    assert slug("Every evaluated version, measured on the Ped2 test set") == (
        "every-evaluated-version-measured-on-the-ped2-test-set"
    )
    assert slug("The report folder (a contract; tests check every file)") == (
        "the-report-folder-a-contract-tests-check-every-file"
    )
    assert slug("`stan detect` options") == "stan-detect-options"
    assert slug("Many inputs: the index") == "many-inputs-the-index"
