"""Every link to a heading in the project's Markdown (``[x](#anchor)``, ``[x](file.md#anchor)``)
names a heading that exists, as GitHub makes its anchors: a section renamed or moved must take
its links along."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")],
    key=str,
)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\]\(([^)\s#:]*\.md)?#([^)\s]+)\)")


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces
    made hyphens, a repeated one numbered (``-1``, ``-2``); lines in code fences are no
    headings."""
    seen: Counter[str] = Counter()
    found, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        found.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def test_anchors_follow_github() -> None:
    text = "# Title\n## `GET /jobs/<id>` — a job\n```sh\n# not a heading\n```\n## Title\n"
    assert anchors(text) == {"title", "get-jobsid--a-job", "title-1"}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_to_headings_resolve(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    broken = []
    for target, anchor in LINK.findall(text):
        linked = (document.parent / target) if target else document
        if not linked.is_file() or anchor not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{document.name} links to headings that do not exist: {broken}"
