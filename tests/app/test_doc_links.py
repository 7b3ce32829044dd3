"""Every relative link of the project's Markdown (README, ARCHITECTURE, the plans' README, bench/results) names a file
that exists, and every in-page anchor of the README a heading: a result moved or renamed is a dead link otherwise."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "kernels" / "plans" / "README.md",
            *sorted((ROOT / "bench" / "results").rglob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_names_a_file_that_exists():
    dead = [f"{doc.relative_to(ROOT)}: {target}" for doc in documents()
            for target in LINK.findall(doc.read_text(encoding="utf-8"))
            if not re.match(r"[a-z]+:", target) and target.split("#")[0]
            and not (doc.parent / target.split("#")[0]).exists()]
    assert dead == []


def test_every_anchor_of_the_readme_is_a_heading():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    headings = {anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
    dead = [target for target in LINK.findall(text) if target.startswith("#") and target[1:] not in headings]
    assert dead == []
