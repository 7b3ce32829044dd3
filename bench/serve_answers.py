"""Two keystroke replays' answers side by side (codecomplete.serve_bench's NAME.json): how many are the same text, and
how each scores against the code that was really typed there (the rest of the cursor's line in the file).

    python bench/serve_answers.py A.json B.json --repo REPO_SERVED

serve_bench types a function's body into its file a few characters per request, so the text after each cursor is
the file's own: the first line of an answer is compared with the rest of that line (exact, and difflib's ratio).
For a change that should not change answers (exact reuse) every text is the same; for one that may (cache reuse,
approximate) this says how many changed and whether they got closer to the code or further.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def scores(report: dict, source: str) -> tuple[int, float, list[str]]:
    """Exact matches of the rest of the line, mean similarity, and the answers' texts."""
    from codecomplete.serve_bench import typing_through

    requests = report["requests"]
    cursors = typing_through(source, report["function"], report["chars_per_request"], len(requests) + 1)[1:]
    exact, similarity = 0, 0.0
    for cursor, request in zip(cursors, requests):
        if (cursor.line, cursor.col) != (request["line"], request["col"]):
            raise SystemExit("the replay's cursors are not this file's: serve the same frozen text")
        lines = cursor.text.split("\n")
        typed = "\n".join(lines[:cursor.line - 1] + [lines[cursor.line - 1][:cursor.col - 1]])
        truth = source[len(typed):].split("\n")[0].rstrip()
        answer = request["text"].split("\n")[0].rstrip()
        exact += answer == truth
        similarity += difflib.SequenceMatcher(None, answer, truth).ratio()
    return exact, similarity / len(requests), [r["text"] for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--repo", type=Path, required=True, help="the repository text the replays served")
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in (args.a, args.b)]
    source = (args.repo / reports[0]["file"]).read_text(encoding="utf-8")
    results = [scores(report, source) for report in reports]
    same = sum(x == y for x, y in zip(results[0][2], results[1][2]))
    print(f"{same} of {len(results[0][2])} answers the same text")
    print(f"{'replay':40} {'rest of line exact':>19} {'similarity':>11}")
    for path, (exact, similarity, texts) in zip((args.a, args.b), results):
        print(f"{path.name:40} {exact:>12} of {len(texts):<4} {similarity:11.3f}")


if __name__ == "__main__":
    main()
