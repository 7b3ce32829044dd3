"""Tokens a keystroke prefills, and how often the example lines change, while lines are typed at several cursors in
real files (packages of Python's standard library), both prompt orders.

    python bench/example_hold_prefill.py [--out FILE] [--budgets 1024,4096,8192] [--cursors 3]

For each package (json, email, asyncio: each its own repository, indexed once) and each of ``--cursors`` cursors (8) in
its files (code lines of 24-64 characters after their indentation, drawn with a fixed seed), the line is typed again
from its indentation, one request a character, through `Session.complete` (every route's path) with the editor's
whole buffer: the line's words and identifiers appear one by one, as they do while the user types them.
Per keystroke: the tokens the model's cache prefills again (the prompt's ids past the longest prefix it shares with
the last request's, at least one, as the engine counts them), whether the example lines changed (their places or
text), and how many of the prompt's example lines begin as the cursor's line now does (`examples.example_key`: the
lines a fresh prompt would look for), against how many a prompt without history finds (`fresh`): held lines may
lag the line typed. The tokenizer is the embedded SmolLM2's with StarCoder's FIM tokens added (as
bench/spm_infill_prefill.py); no model runs: counts, the same on every machine.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import run_info  # noqa: E402  (bench/, next to this script)
from spm_infill_prefill import fim_tokenizer  # noqa: E402

PACKAGES = ("json", "email", "asyncio")
BUDGETS = (1024, 4096, 8192)


def cursors(repo: Path, count: int, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` (file, row) of code lines to type again: indented, 24-64 characters after the indentation, not a
    comment, a string or a keyword's line."""
    lines = []
    for file in sorted(repo.rglob("*.py")):
        for row, line in enumerate(file.read_text(encoding="utf-8").split("\n")):
            code = line.strip()
            if (line.startswith("    ") and 24 <= len(code) <= 64 and (code[0].isalpha() or code[0] == "_")
                    and code.split()[0].rstrip(":(") not in {"def", "class", "if", "elif", "else", "for", "while",
                                                             "return", "raise", "import", "from", "try", "except",
                                                             "with", "assert", "yield", "del", "pass", "global"}):
                lines.append((str(file.relative_to(repo)), row))
    return random.Random(seed).sample(lines, count)


def stdlib_cursors(scratch: Path, per_package: int):
    """(package, its index, its folder, path, row) for `per_package` cursors in each of PACKAGES, each package
    copied from the standard library (its tests left out) into `scratch` and indexed there."""
    from prompts import index_repository

    for package in PACKAGES:
        repo = Path(scratch) / package
        shutil.copytree(Path(sysconfig.get_paths()["stdlib"]) / package, repo,
                        ignore=shutil.ignore_patterns("__pycache__", "test*"))
        index = index_repository(repo, cache_dir=Path(scratch) / "cache")
        for path, row in cursors(repo, per_package):
            yield package, index, repo, path, row


def type_line(session_for, index, path: str, text: str, row: int, budget: int, suffix_first: bool) -> list:
    """(prefilled, examples changed, examples matching the key, fresh examples, examples) for each keystroke after the
    first."""
    from codecomplete.session import Sampling
    from models.cache_reuse import common_run
    from prompts.examples import example_key
    from prompts.languages import language_for

    keywords = language_for(path).keywords
    rows = text.split("\n")
    line = rows[row]
    indent = len(line) - len(line.lstrip())
    session, fresh_session = session_for(suffix_first), session_for(suffix_first)
    out, last_ids, last_examples = [], None, None
    for typed in range(len(line) - indent + 1):
        rows[row] = line[:indent + typed]
        buffer = "\n".join(rows)
        kwargs = dict(text=buffer, line=row + 1, col=indent + typed + 1, budget=budget)
        packed = session.complete(path, sampling=Sampling(max_tokens=0), **kwargs).prompt
        fresh = fresh_session.complete(path, sampling=Sampling(max_tokens=0), sticky=False, **kwargs).prompt
        key = example_key(rows[row][:indent + typed], keywords)
        examples = [(item.path, item.start_line) for item in packed.context if item.form == "example"]
        matching = sum(1 for p, n in examples if key and index_line(index, p, n).strip().startswith(key))
        fresh_count = sum(1 for item in fresh.context if item.form == "example")
        if last_ids is not None:
            shared = common_run(last_ids, 0, packed.ids, 0, len(packed.ids))
            out.append((max(1, len(packed.ids) - shared), examples != last_examples, matching, fresh_count,
                        len(examples)))
        last_ids, last_examples = packed.ids, examples
    return out


def index_line(index, path: str, number: int) -> str:
    for chunk_number in index.chunk_numbers(path):
        chunk = index.chunks[chunk_number]
        if chunk.start_line <= number <= chunk.end_line:
            return chunk.text.split("\n")[number - chunk.start_line]
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scratch" / "example-hold-prefill.md",
                        help="where the table goes (default under bench/scratch/, which git ignores; "
                             "bench/results/example-hold-prefill.md is the committed one)")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--cursors", type=int, default=8, help="cursors a package")
    args = parser.parse_args(argv)
    budgets = tuple(int(b) for b in args.budgets.split(","))
    from codecomplete.session import Session

    tok = fim_tokenizer()
    engine = SimpleNamespace(tokenizer=tok, check_prompt=lambda ids: None, context_length=16384)
    results = {(budget, order): [] for budget in budgets for order in ("PSM", "SPM")}
    with tempfile.TemporaryDirectory() as scratch:
        for package, index, repo, path, row in stdlib_cursors(Path(scratch), args.cursors):
            text = (repo / path).read_text(encoding="utf-8")
            for budget in budgets:
                for order in ("PSM", "SPM"):
                    def session_for(suffix_first, index=index):
                        return Session(engine, index, suffix_first=suffix_first)
                    counts = type_line(session_for, index, path, text, row, budget, order == "SPM")
                    results[budget, order].append((f"{package}/{path}:{row + 1}", counts))
    lines = [f"# Example lines and tokens prefilled per keystroke, lines typed again in stdlib files "
             f"(`bench/example_hold_prefill.py`, {run_info.now()})", "",
             f"{run_info.machine()}; packages {', '.join(PACKAGES)}, {args.cursors} cursors each", "",
             "| budget | order | keystrokes | prefilled per keystroke, mean | median | examples changed | "
             "their tokens prefilled, of all | prompts with an example of the line typed | with one fresh | "
             "example lines of the line, mean | fresh, mean | prompts with examples, none of the line |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (budget, order), per_cursor in results.items():
        counts = [c for _, cs in per_cursor for c in cs]
        prefilled = sorted(c[0] for c in counts)
        lines.append(f"| {budget:,} | {order} | {len(counts)} | {sum(prefilled) / len(prefilled):.1f} | "
                     f"{prefilled[len(prefilled) // 2]} | {sum(c[1] for c in counts)} | "
                     f"{sum(c[0] for c in counts if c[1]):,} of {sum(prefilled):,} | "
                     f"{sum(1 for c in counts if c[2])} | {sum(1 for c in counts if c[3])} | "
                     f"{sum(c[2] for c in counts) / len(counts):.2f} | {sum(c[3] for c in counts) / len(counts):.2f} | "
                     f"{sum(1 for c in counts if c[4] and not c[2])} |")
    lines += ["", "Per cursor (budget, order: mean prefilled, examples changed):", ""]
    for (budget, order), per_cursor in results.items():
        lines.append(f"- {budget:,} {order}: " + "; ".join(
            f"{name} {sum(c[0] for c in cs) / max(1, len(cs)):.0f}, {sum(c[1] for c in cs)}"
            for name, cs in per_cursor))
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
