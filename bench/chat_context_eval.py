"""Does a chat question's context hold the code it asks about? Recall of the REPL's chat prompts, by kind of question.

    python bench/chat_context_eval.py [--set tuning|heldout] [--repos a,b] [--per-kind 40] [--budgets 1024,4096]
                                      [--misses] [--out bench/scratch/chat-context-eval-SET]

Repositories are installed Python packages, each indexed as it lies in site-packages (the package folder is the
repository; nobody here wrote them). From ``ast`` (definitions, docstrings) and the index (files), seeded questions of
the kinds a user of the REPL asks, each with its ground truth:

- written: a definition named as written, backticked or not ("What does `Client.send` do?", "Where is
  parse_header_links used?"): the chunk that defines it;
- words: the same name as words, its snake_case/camelCase parts ("how does the session merge cookies work?"):
  users rarely type exact identifiers;
- docstring: what the definition does, by its docstring's first line with its name taken out (a CodeSearchNet-style
  proxy for a question in the user's words);
- file: a file or module by name ("What's in utils.py?", "Explain the cookies module."): any chunk of that file;
- followup: a written or words question, a canned answer that names no code, then "And what calls it?" and the
  like: the first question's definition, on the second turn.

Every prompt is built as the REPL builds it (prompts.build_chat_prompt with the REPL's history share, a follow-up
holding what the turn before it carried) at each budget: the REPL's default on the CPU (1,024 tokens) and larger.
Recall: the ground truth's chunk is among the prompt's excerpts. It also counts prompts over their budget (none may
be) and times the prompt builder (ranking and packing) per question.

The tuning set is what chat retrieval was tuned on; the held-out set was not looked at while tuning.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run_info  # noqa: E402  (bench/, next to this script)
from context_eval import embedded_tokenizer, holds_any  # noqa: E402
from prompts import ScanWarning, build_chat_prompt, index_repository  # noqa: E402
from prompts.question_terms import STOP_WORDS  # noqa: E402

TUNING = ("requests", "click", "urllib3", "uvicorn")
HELD_OUT = ("fsspec", "packaging", "typer", "huggingface_hub")
KINDS = ("written", "words", "docstring", "file", "followup")
REPL_BUDGET = 1024          # codecomplete.engines.CPU_PROMPT_BUDGET: the REPL's prompt budget on the CPU
REPL_HISTORY_SHARE = 0.5    # codecomplete.chat.HISTORY_SHARE
VERSIONS = ["transformers", "tokenizers", "tree-sitter", "tree-sitter-python", "numpy"]

# A canned answer to the first turn of a follow-up: it names no code, so the second turn's context depends on what
# the conversation's questions and the held excerpts carry, not on the model's words.
ANSWER = "It checks what it is given, does the work in a few steps and returns the result; the excerpt shows how."
WRITTEN = ("What does `{name}` do?", "Where is `{name}` used?", "How does {name} work?", "Explain {name}.",
           "Why does `{name}` exist?")
WORDS = ("how does the {words} work?", "what does {words} do?", "where do we {words}?", "explain {words}")
DOCSTRING = ("Where is the code that does this: {doc}?", "{doc}: which code does that?", "Which part handles this: {doc}")
FILE = ("What's in {file}?", "Explain the {stem} module.", "Give me an overview of {file}.", "what does {stem} do?")
FOLLOWUPS = ("And what calls it?", "Why is that needed?", "Can you show an example of using it?",
             "What could go wrong there?")


@dataclass
class Question:
    """A conversation whose last question is about one place of the repository."""

    repo: str
    kind: str                       # one of KINDS
    messages: list[dict]            # the conversation; a follow-up's first turn is asked (and answered) first
    truth: str                      # what the question is about: "Client.send", or a path
    places: list[tuple[str, int]]   # (path, line) of each definition of the name; a file's: (path, 0)
    results: dict = field(default_factory=dict)


@dataclass
class Definition:
    path: str
    line: int
    name: str               # as written in a question: "send", or "Client.send" for a method
    words: str              # the name as words: "client send"
    doc: str                # the docstring's first line, "" if none


def definitions(root: Path) -> list[Definition]:
    """Top-level functions and classes and the methods of top-level classes, with at least three lines, named by
    something a user would type (no dunders, no one-letter names)."""
    found = []
    for file in sorted(root.rglob("*.py")):
        path = file.relative_to(root).as_posix()
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [(None, node) for node in tree.body]
        nodes += [(node.name, item) for node in tree.body if isinstance(node, ast.ClassDef) for item in node.body]
        for owner, node in nodes:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("__") or len(node.name.strip("_")) < 3 or node.end_lineno - node.lineno < 2:
                continue
            name = f"{owner}.{node.name}" if owner else node.name
            words = " ".join(identifier_words(owner or "") + identifier_words(node.name))
            doc = (ast.get_docstring(node) or "").strip().split("\n")[0].strip()
            found.append(Definition(path, node.lineno, name, words, doc))
    return found


def identifier_words(name: str) -> list[str]:
    """``_merge_cookies`` -> [merge, cookies]; ``HTTPAdapter`` -> [http, adapter]."""
    return [w.lower() for w in re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+", name)]


def described(definition: Definition) -> str:
    """The docstring's first line without the definition's name (or its words), as a user would describe what it
    does; "" where too little is left."""
    doc = re.split(r"(?<=[a-z)])\. ", definition.doc)[0].rstrip(".:")    # its first sentence
    names = {name.lower() for name in definition.name.split(".")}
    kept = [word for word in re.sub(r"`+", "", doc).split()
            if not names.intersection(part.lower() for part in re.findall(r"\w+", word))]
    meaningful = [word for word in kept if word.lower().strip(".,:;?!()") not in STOP_WORDS]
    return " ".join(kept) if len(kept) >= 4 and len(meaningful) >= 3 else ""


def questions(repo: str, root: Path, index, per_kind: int, seed: int) -> list[Question]:
    rng = random.Random(f"{seed}:{repo}")
    found = [d for d in definitions(root) if d.path in index.files]
    # A name several files define (a class per protocol) is answered by any of its definitions
    same_name: dict[str, list[tuple[str, int]]] = {}
    for d in found:
        same_name.setdefault(d.name, []).append((d.path, d.line))
    out: list[Question] = []

    def ask(kind, question, truth, places, before=()):
        out.append(Question(repo, kind, [*before, {"role": "user", "content": question}], truth, places))

    for d in rng.sample(found, min(per_kind, len(found))):
        ask("written", rng.choice(WRITTEN).format(name=d.name), d.name, same_name[d.name])
    worded = [d for d in found if len(d.words.split()) >= 2]
    for d in rng.sample(worded, min(per_kind, len(worded))):
        ask("words", rng.choice(WORDS).format(words=d.words), d.name, same_name[d.name])
    documented = [(d, described(d)) for d in found]
    documented = [(d, doc) for d, doc in documented if doc]
    same_doc: dict[str, list[tuple[str, int]]] = {}     # (a docstring several methods share: any of them answers)
    for d in found:
        same_doc.setdefault(d.doc, []).append((d.path, d.line))
    for d, doc in rng.sample(documented, min(per_kind, len(documented))):
        ask("docstring", rng.choice(DOCSTRING).format(doc=doc), d.name, same_doc[d.doc])
    stems: dict[str, list[str]] = {}
    for path in index.files:
        if path.endswith(".py"):
            stems.setdefault(Path(path).stem, []).append(path)
    files = [paths[0] for stem, paths in stems.items() if len(paths) == 1 and stem not in ("__init__", "__main__")]
    for path in rng.sample(sorted(files), min(per_kind, len(files))):
        ask("file", rng.choice(FILE).format(file=Path(path).name, stem=Path(path).stem), path, [(path, 0)])
    for d in rng.sample(worded, min(per_kind, len(worded))):
        first = (rng.choice(WRITTEN).format(name=d.name) if rng.random() < 0.5
                 else rng.choice(WORDS).format(words=d.words))
        ask("followup", rng.choice(FOLLOWUPS), d.name, same_name[d.name],
            before=[{"role": "user", "content": first}, {"role": "assistant", "content": ANSWER}])
    return out


def holds(packed, question: Question) -> bool:
    if question.kind == "file":
        return any(item.path == question.truth for item in packed.context)
    return holds_any(packed, question.places)


def measure(index, tokenizer, question: Question, budget: int) -> dict:
    """The question's prompt as the REPL builds it (a follow-up after its first turn's, holding what that carried):
    whether it holds the truth, its tokens, and the builder's time."""
    held = first_holds = None
    if question.kind == "followup":
        first = build_chat_prompt(index, tokenizer, question.messages[:1], budget_tokens=budget,
                                  history_share=REPL_HISTORY_SHARE)
        held, first_holds = first.held, holds(first, question)
    started = time.perf_counter()
    packed = build_chat_prompt(index, tokenizer, question.messages, budget_tokens=budget,
                               history_share=REPL_HISTORY_SHARE, held=held)
    seconds = time.perf_counter() - started
    result = {"hit": holds(packed, question), "tokens": len(packed.ids), "seconds": seconds,
              "files": list(dict.fromkeys(item.path for item in packed.context))[:4]}
    if first_holds is not None:
        result["first_hit"] = first_holds
    return result


def summary(measured: list[Question], budgets: list[int]) -> dict:
    out: dict = {"questions": len(measured)}
    for kind in KINDS:
        of_kind = [q for q in measured if q.kind == kind]
        out[kind] = {"questions": len(of_kind)}
        for budget in budgets:
            results = [q.results[str(budget)] for q in of_kind]
            out[kind][f"recall_{budget}"] = _mean([r["hit"] for r in results])
            if kind == "followup":
                kept = [r["hit"] for r in results if r.get("first_hit")]
                out[kind][f"first_recall_{budget}"] = _mean([r.get("first_hit", False) for r in results])
                out[kind][f"kept_{budget}"] = _mean(kept)
    for budget in budgets:
        results = [q.results[str(budget)] for q in measured]
        out[f"recall_{budget}"] = _mean([r["hit"] for r in results])
        out[f"over_budget_{budget}"] = sum(r["tokens"] > budget for r in results)
        times = sorted(r["seconds"] for r in results)
        if times:
            out[f"ms_median_{budget}"] = 1000 * statistics.median(times)
            out[f"ms_p95_{budget}"] = 1000 * times[int(0.95 * (len(times) - 1))]
    return out


def _mean(values) -> float | None:
    values = list(values)
    return sum(map(float, values)) / len(values) if values else None


def markdown(results: dict, before: dict | None = None) -> str:
    budgets = results["budgets"]

    def percent(value) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    rows = [*results["repositories"].items(), ("all", results["overall"])]
    lines = [
        f"# Chat context: does a question's context hold the code it asks about? ({results['set']} set)",
        "",
        f"{results['date']} · {run_info.describe(results)}"
        + f" · code {results['commit']} · seed {results['seed']} · {results['per_kind']} questions per kind and"
          f" repository · load average {results['load_average_before'][0]:.1f} /"
          f" {results['load_average_after'][0]:.1f} · {results['seconds'] / 60:.1f} min",
        "",
        "Recall at each budget (tokens): the chunk defining what the question names (file: any chunk of the file) is"
        " among the excerpts of the prompt the REPL builds (history share 0.5; a follow-up holding its first turn's"
        " excerpts). followup: the first turn's definition on the second turn / the first turn's own recall.",
        "",
        "| repository | files | chunks | " + " | ".join(f"{kind} @{b}" for kind in KINDS for b in budgets)
        + " | all @" + " | all @".join(map(str, budgets)) + " |",
        "|---|---|---|" + "---|" * (len(KINDS) * len(budgets) + len(budgets)),
    ]
    for name, data in rows:
        cells = []
        for kind in KINDS:
            for b in budgets:
                cell = percent(data[kind][f"recall_{b}"])
                if kind == "followup":
                    cell += f" / {percent(data[kind][f'first_recall_{b}'])}"
                cells.append(cell)
        cells += [percent(data[f"recall_{b}"]) for b in budgets]
        lines.append(f"| {name} | {data.get('files', '')} | {data.get('chunks', '')} | " + " | ".join(cells) + " |")
    if before is not None:
        lines += ["", f"Before (code {before['commit']}, {before['date']}) -> after, all repositories:", "",
                  "| kind | questions | " + " | ".join(f"recall @{b}" for b in budgets) + " |",
                  "|---|---|" + "---|" * len(budgets)]
        for kind in KINDS:
            lines.append(f"| {kind} | {results['overall'][kind]['questions']} | " + " | ".join(
                f"{percent(before['overall'][kind][f'recall_{b}'])} -> {percent(results['overall'][kind][f'recall_{b}'])}"
                for b in budgets) + " |")
        lines.append(f"| all | {results['overall']['questions']} | " + " | ".join(
            f"{percent(before['overall'][f'recall_{b}'])} -> {percent(results['overall'][f'recall_{b}'])}"
            for b in budgets) + " |")
    lines += ["", "Prompts over their budget: " + ", ".join(
        f"{results['overall'][f'over_budget_{b}']} of {results['overall']['questions']} at {b}" for b in budgets) + ".",
        "", "Prompt builder time per question (ranking and packing; ms, median / 95th percentile):", "",
        "| repository | files | chunks | " + " | ".join(f"@{b}" for b in budgets) + " |",
        "|---|---|---|" + "---|" * len(budgets)]
    for name, data in rows[:-1]:
        lines.append(f"| {name} | {data['files']} | {data['chunks']} | " + " | ".join(
            f"{data[f'ms_median_{b}']:.0f} / {data[f'ms_p95_{b}']:.0f}" for b in budgets) + " |")
    lines += ["", "Questions, one per kind (templates filled from `ast` and the index, seeded):", ""]
    seen = set()
    for q in results["questions"]:
        if q["kind"] not in seen:
            seen.add(q["kind"])
            lines.append(f"- {q['kind']} ({q['repo']}): " + " / ".join(
                m["content"] for m in q["messages"] if m["role"] == "user") + f" -> {q['truth']}")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=("tuning", "heldout"), default="tuning")
    parser.add_argument("--repos", help="comma-separated installed packages (or folders), in place of the set's")
    parser.add_argument("--per-kind", type=int, default=40, help="questions per kind and repository")
    parser.add_argument("--budgets", default=f"{REPL_BUDGET},4096")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--misses", action="store_true", help="print every question missed at the first budget")
    parser.add_argument("--out", help="path without extension (default bench/scratch/chat-context-eval-SET)")
    parser.add_argument("--before", help="the JSON of a run of the same questions with other code: a before/after table")
    args = parser.parse_args()
    repos = args.repos.split(",") if args.repos else list(TUNING if args.set == "tuning" else HELD_OUT)
    missing = [repo for repo in repos if not _root(repo)]
    if missing:
        parser.error(f"{', '.join(missing)}: not an installed package (nor a folder) here")
    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        parser.error(f"--budgets {args.budgets}: token counts expected, e.g. 1024,4096")
    label = args.repos.replace(",", "-") if args.repos else args.set
    out = Path(args.out or f"bench/scratch/chat-context-eval-{label}")
    out.parent.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", ScanWarning)
    tokenizer = embedded_tokenizer()
    cache = Path(tempfile.mkdtemp(prefix="chat-context-eval-cache-"))
    started, load_before = time.perf_counter(), os.getloadavg()
    per_repo, everything = {}, []
    try:
        for repo in repos:
            root = _root(repo)
            repo = root.name if "/" in repo else repo
            index = index_repository(root, cache_dir=cache)
            asked = questions(repo, root, index, args.per_kind, args.seed)
            for question in asked:
                for budget in budgets:
                    question.results[str(budget)] = measure(index, tokenizer, question, budget)
                first = question.results[str(budgets[0])]
                if args.misses and not first["hit"]:
                    print(f"  miss {question.kind:9} {question.truth:40} | "
                          + " / ".join(m["content"] for m in question.messages if m["role"] == "user")
                          + f" | got {first['files']}")
            version = run_info.versions([repo.replace("_", "-")])[repo.replace("_", "-")]
            per_repo[repo] = {"version": version, "files": len(index.files), "chunks": len(index.chunks),
                              **summary(asked, budgets)}
            everything += asked
            print(repo, json.dumps({kind: per_repo[repo][kind] for kind in KINDS}), flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    results = {
        **run_info.header(load_before, VERSIONS),
        "commit": _commit(),
        "set": args.set if not args.repos else "custom",
        "seed": args.seed,
        "per_kind": args.per_kind,
        "budgets": budgets,
        "seconds": time.perf_counter() - started,
        "repositories": per_repo,
        "overall": summary(everything, budgets),
        "questions": [asdict(q) for q in everything],
    }
    # Every question is kept (~4 MB of JSON for the three sets): gzipped, as the other per-site results are.
    out.with_suffix(".json.gz").write_bytes(gzip.compress((json.dumps(results, indent=1) + "\n").encode(), mtime=0))
    before = None
    if args.before:
        raw = Path(args.before).read_bytes()
        before = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    out.with_suffix(".md").write_text(markdown(results, before))
    print(json.dumps({kind: results["overall"][kind] for kind in KINDS}))
    print(f"wrote {out.with_suffix('.json.gz')} and {out.with_suffix('.md')}")


def _root(repo: str) -> Path | None:
    """The folder of an installed package, or ``repo`` itself where it is a path (a source tree: django/django)."""
    if "/" in repo:
        return Path(repo) if Path(repo).is_dir() else None
    spec = importlib.util.find_spec(repo)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _commit() -> str:
    """The checkout's commit, "+" where its prompts/ differ from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "prompts"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "-"
    return head + ("+" if dirty else "")


if __name__ == "__main__":
    main()
