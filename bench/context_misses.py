"""Where next-line misses start: the name at the cursor, or the rest of the line? (issue 14)

    python bench/context_misses.py bench/results/context-eval-heldout-2026-12-05.json [--run repo_heal]

Reads the sites of a `bench/context_eval.py` result (every site's completion and truth are in it) and sorts each
model run's completions by how their first word relates to the name the truth begins with:

- the name right: the completion starts with the name as a whole word, and is exact or not after it;
- the name wrong, and what came instead: an identifier the current file or Python already knows (a local, a
  parameter, ``None``, ``zip``), one only another file of the repository has, one the repository never spells (an
  invented name), or no identifier at all (a quote, a bracket, a number).

Only the invented names could be corrected by restricting decoding to names that exist (monitor-guided decoding,
Agrawal et al. 2023); the rest are other valid code. The repositories are read where they are installed, as
context_eval.py indexes them.
"""

from __future__ import annotations

import argparse
import builtins
import gzip
import importlib.util
import json
import keyword
import re
from collections import Counter
from pathlib import Path

IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
WORD_CHAR = re.compile(r"\w")
KINDS = ("exact", "name right, rest wrong", "known to the file or Python", "only elsewhere in the repository",
         "invented", "no identifier first")


def load(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        return json.load(file)


def spells(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


class Sources:
    """The text of each installed repository's files, read once."""

    def __init__(self):
        self._roots: dict[str, Path] = {}
        self._whole: dict[str, str] = {}

    def root(self, repo: str) -> Path:
        if repo not in self._roots:
            self._roots[repo] = Path(importlib.util.find_spec(repo).submodule_search_locations[0])
        return self._roots[repo]

    def file(self, repo: str, path: str) -> str:
        return (self.root(repo) / path).read_text(errors="replace")

    def whole(self, repo: str) -> str:
        if repo not in self._whole:
            self._whole[repo] = "\n".join(p.read_text(errors="replace") for p in sorted(self.root(repo).rglob("*.py")))
        return self._whole[repo]


def kind_of_miss(site: dict, completion: str, sources: Sources) -> str:
    name = site["name"]
    if completion == site["truth"]:
        return "exact"
    if completion.startswith(name) and not WORD_CHAR.match(completion[len(name):len(name) + 1]):
        return "name right, rest wrong"
    first = IDENTIFIER.match(completion)
    if first is None:
        return "no identifier first"
    word = first.group(0)
    if keyword.iskeyword(word) or hasattr(builtins, word) or spells(sources.file(site["repo"], site["path"]), word):
        return "known to the file or Python"
    if spells(sources.whole(site["repo"]), word):
        return "only elsewhere in the repository"
    return "invented"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("result", type=Path, help="a bench/context_eval.py result (.json or .json.gz)")
    parser.add_argument("--run", action="append", help="model runs to sort (default: every run in the file)")
    args = parser.parse_args()
    sites = load(args.result)["sites"]
    runs = args.run or sorted({run for site in sites for run, value in site["results"].items()
                               if isinstance(value, dict) and "completion" in value})
    sources = Sources()
    print(f"| run | sites | {' | '.join(KINDS)} |")
    print(f"|---|---|{'---|' * len(KINDS)}")
    for run in runs:
        counts = Counter(kind_of_miss(site, site["results"][run]["completion"], sources)
                         for site in sites if run in site["results"])
        total = sum(counts.values())
        cells = " | ".join(f"{counts[kind]} ({counts[kind] / total:.0%})" for kind in KINDS)
        print(f"| {run} | {total} | {cells} |")


if __name__ == "__main__":
    main()
