"""Does retrieval follow names in the languages other than Python? Recall at cross-file use sites, no model.

    python bench/context_eval_languages.py --tuning NAME=PATH,... --heldout NAME=PATH,... [--sites 150]
                                           [--budgets 1024,4096] [--seed 0] [--out bench/results/context-languages]
                                           [--before RESULTS.json.gz]

Repositories are folders given on the command line (snapshots of public repositories, never part of this one);
each is indexed as it lies. For every language whose imports the index reads (JavaScript, TypeScript, Go, Rust,
C, C++, Java), a use site is a cursor right before a name in one file whose definition, as the index's own chunks
record it (tree-sitter), lies in exactly one other file; a C or C++ name may also be declared in one header (``sds.h``
for ``sds.c``, ``lua.h`` for ``lapi.c``), and either counts. Names are found with tree-sitter too: identifiers
outside import, include, package and use statements, and not the name of a definition in the file itself; a
bare name (not after ``.``, ``::`` or ``->``) only where the language lets it be the definition's (a Go name of the
file's own package; a JavaScript, TypeScript or Rust name an import binds; a Java class of the file's package or
a name imported), else it is a local of the same name, and never a name that a function around it binds (a
parameter, a local declaration: bench/function_locals.py reads them from the tree; hiredis's ``void *privdata``
parameters are no uses of test.c's ``struct privdata``); and in C and C++ no field after ``.`` or ``->`` (fields
are no definitions the index records); in JavaScript and TypeScript no member every array, string, object or
promise has (`.map`, `.then`, `.toString`) after a dot.

For a seeded sample of sites per repository and language (each site's place in the draw a hash of the seed and
the site, so that a change of the index that adds or removes some sites leaves the others drawn) it measures what
bench/context_eval.py measures, with the same prompt builder: whether a chunk defining the name is in the packed
context at each budget, with the file as on disk and with only the text before the cursor; split by whether the
file imports the defining file (as prompts/imports.py resolves its imports: the name's file among the files
followed) or sees it another way (a Go or Java package's other files, a C global, a name reached through a
variable).

"Tuning" repositories were looked at while fixing ranking and import resolution; "held-out" ones only run at the end.
``--before`` takes the results of the same command run on other code (an earlier commit's prompts/): its recalls
go beside these, row by row.
"""

from __future__ import annotations

import hashlib
import gzip
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run_info  # noqa: E402  (bench/, next to this script)
from context_eval import Site, embedded_tokenizer, holds_any, packed_at, summary  # noqa: E402
from function_locals import bound_by_function  # noqa: E402  (bench/, the eval's own)
from codecomplete.cli import _Parser  # noqa: E402  (the product's one-line usage errors)
from prompts import ScanWarning, index_repository  # noqa: E402
from prompts.imports import bindings, follow_imports  # noqa: E402
from prompts.languages import language_for, language_name, load_grammar  # noqa: E402

LANGUAGES = ("javascript", "typescript", "tsx", "go", "rust", "c", "cpp", "java")  # those imports.py resolves
VERSIONS = ["transformers", "tokenizers", "tree-sitter", "tree-sitter-javascript", "tree-sitter-typescript",
            "tree-sitter-go", "tree-sitter-rust", "tree-sitter-c", "tree-sitter-cpp", "tree-sitter-java", "numpy"]
_HEADERS = (".h", ".hh", ".hpp", ".hxx")
# Statements whose names are no uses: what an import binds is not where its definition is wanted.
_NOT_USES = {"import_statement", "import_declaration", "import_spec", "import_clause", "use_declaration",
             "preproc_include", "package_clause", "package_declaration", "mod_item", "extern_crate_declaration",
             "comment", "string", "string_literal", "interpreted_string_literal", "raw_string_literal",
             "template_string"}
# Methods every JavaScript array, string, object, function or promise has (ECMAScript's prototypes): after a dot
# the text cannot tell `rows.map(` from a repository's `Children.map`, so neither is a site (a class property `map =
# (...) =>` or an exported `{ map: ... }` made every array's `.map(` a "use" of it).
# Keywords that the grammars read as names where tree-sitter gives them as identifiers (`app.get(`, `get(path) {}`,
# `{ type }`; an accessor's `get size()` is a keyword node, no identifier): those are sites as any name is. The other
# keywords' identifiers are predeclared names, never a use of the repository's (`string` in Go, `console` in
# JavaScript). The script's own list, from the grammars, not the index's.
_TS_CONTEXTUAL = frozenset("get set of static async type declare readonly abstract namespace is infer keyof as".split())
_CONTEXTUAL = {"javascript": frozenset("get set of static async".split()), "typescript": _TS_CONTEXTUAL,
               "tsx": _TS_CONTEXTUAL, "java": frozenset({"record"})}
_JS_BUILTIN_MEMBERS = frozenset("""
    at concat copyWithin entries every fill filter find findIndex findLast findLastIndex flat flatMap forEach
    includes indexOf join keys lastIndexOf map pop push reduce reduceRight reverse shift slice some sort splice
    toLocaleString toReversed toSorted toSpliced toString unshift values with charAt charCodeAt codePointAt endsWith
    isWellFormed localeCompare match matchAll normalize padEnd padStart repeat replace replaceAll search split
    startsWith substring toLocaleLowerCase toLocaleUpperCase toLowerCase toUpperCase toWellFormed trim trimEnd
    trimStart valueOf hasOwnProperty isPrototypeOf propertyIsEnumerable apply bind call then catch finally
""".split())
_NAME_TYPES = ("identifier", "type_identifier", "field_identifier", "property_identifier",
               "shorthand_property_identifier", "scoped_type_identifier")


@dataclass
class LanguageSite(Site):
    """A use site of a name defined elsewhere, in a language other than Python."""

    language: str = ""
    imported: bool = False  # the file's imports, followed, reach the defining file
    also: tuple = ()  # other chunks that count as the definition (an overload, a C header's declaration): (path, line)


def find_sites(repo: str, index) -> list[LanguageSite]:
    """Every use site in the repository's files of LANGUAGES, in file and line order."""
    where = _defined_once(index)
    sites = []
    for path in index.files:
        language = language_name(path)
        if language not in LANGUAGES:
            continue
        source = (index.root / path).read_bytes()
        lines = source.decode("utf-8", "replace").split("\n")
        followed = None
        # (`string` in Go: a type, never a use of a method named string)
        keywords = language_for(path).keywords.difference(_CONTEXTUAL.get(language, ()))
        for name, row, byte_col, bound in _names_used(path, source):
            definitions = where.get(name)
            if name in keywords or name == "_" or not definitions or any(p == path for p, _ in definitions):
                continue
            text = lines[row] if row < len(lines) else ""
            col = len(text.encode("utf-8")[:byte_col].decode("utf-8", "replace"))
            if text[col : col + len(name)] != name:
                continue
            if followed is None:  # (once per file with a site: following imports reads other files)
                followed = follow_imports(index, path, language, index.imports(path)).files
            before = text[:col]
            kind = "qualified" if re.search(r"(\.|::|->)\s*$", before) else "name"
            if kind == "name" and (bound or not _can_see(index, path, language, name, definitions)):
                continue  # a local of the same name (a parameter or declaration of a function around it)
            if language == "go" and not path.endswith("_test.go") and all(p.endswith("_test.go")
                                                                           for p, _ in definitions):
                continue  # a Go package's tests are compiled into its tests alone
            if kind == "qualified" and language in ("c", "cpp") and "::" not in before[-3:]:
                continue  # a struct's field (`ci->next`): fields are no definitions the index records
            if kind == "qualified" and language in ("javascript", "typescript", "tsx") and name in _JS_BUILTIN_MEMBERS:
                continue  # `rows.map(`: likelier the array's than the repository's `map`
            sites.append(LanguageSite(repo, path, row + 1, col + 1, name, kind, text[col:].rstrip(),
                                      not before.strip() or before[-1].isspace(), definitions[0], language=language,
                                      imported=any(p in followed for p, _ in definitions), also=tuple(definitions[1:])))
    return sites


def _can_see(index, path: str, language: str, name: str, definitions: list[tuple[str, int]]) -> bool:
    """Whether a bare name in the file can be the definition's: in Go only a name of the file's own package (its
    folder); in JavaScript, TypeScript and Rust only a name an import binds (or a ``*`` import may); in Java a class
    of the file's package or a name imported; in C and C++ any (what the includes declare, taken as written)."""
    if language == "go":
        return any(posixpath.dirname(p) == posixpath.dirname(path) for p, _ in definitions)
    if language in ("javascript", "typescript", "tsx", "rust"):
        imports = bindings(language, index.imports(path))
        return any(i.bound == name or i.name == "*" for i in imports)
    if language == "java":  # a class of the file's package, or a name imported (a class; a static member)
        same_package = name[:1].isupper() and any(posixpath.dirname(p) == posixpath.dirname(path)
                                                   for p, _ in definitions)
        return same_package or any(i.module.rsplit(".", 1)[-1] == name for i in index.imports(path))
    return True


def _defined_once(index) -> dict[str, list[tuple[str, int]]]:
    """Name -> where its definitions are, (path, line) of each chunk defining it (TypeScript's overloads, a C
    prototype: several), for names defined in one file only, or in a C or C++ source and declared in a header; the
    source's first."""
    found = {}
    for name, numbers in index.definers.items():
        chunks = [index.chunks[n] for n in numbers]
        files = sorted({c.path for c in chunks}, key=lambda p: posixpath.splitext(p)[1].lower() in _HEADERS)
        if len(files) == 2:  # a C function's definition and its prototype in a header
            if sum(p.lower().endswith(_HEADERS) for p in files) != 1:
                continue
        elif len(files) != 1:
            continue
        found[name] = [(path, _line_of(chunk, name)) for path in files for chunk in chunks if chunk.path == path]
    return found


def _line_of(chunk, name: str) -> int:
    """The line of the chunk's code that names ``name`` first (a definition's chunk may open with its comment, which
    an outline of it leaves out)."""
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    for offset, line in enumerate(chunk.text.split("\n")):
        if pattern.search(line) and not line.lstrip().startswith(("//", "/*", "*", "#[", "@")):
            return chunk.start_line + offset
    return chunk.start_line


def _names_used(path: str, source: bytes):
    """(name, 0-based row, byte column, whether a function around it binds the name) of every identifier in the
    file that is a use: not inside an import, include, package or use statement, and not the name a definition of
    the file gives."""
    spec = language_for(path)
    grammar = load_grammar(spec)
    try:
        tree = grammar.parse(source)
    except Exception:  # (a parse past its deadline: no sites in that file)
        return
    binds = bound_by_function(spec, tree.root_node)
    stack = [(tree.root_node, frozenset())]  # a node, and the names the functions around it bind
    while stack:
        node, bound = stack.pop()
        if node.type in _NOT_USES:
            continue
        if node.type in _NAME_TYPES and node.child_count == 0:
            parent = node.parent
            if parent is None or parent.child_by_field_name("name") != node or not _declares(parent.type):
                name = node.text.decode("utf-8", "replace")
                yield name, node.start_point[0], node.start_point[1], name in bound
            continue
        bound |= binds.get(node.id, frozenset())
        stack.extend((child, bound) for child in reversed(node.children))


def _declares(node_type: str) -> bool:
    return any(word in node_type for word in ("declaration", "definition", "declarator", "spec", "item",
                                              "signature", "method", "class", "function", "interface", "enum"))


def recall_any(index, tokenizer, site: LanguageSite, budget: int, prefix_only: bool) -> bool:
    """Whether a chunk defining the site's name (its definition, or a header's declaration of it) is, whole or as
    an outline, in the packed context."""
    return holds_any(packed_at(index, tokenizer, site, budget, prefix_only), (site.definition, *site.also))


def _commit(root: Path) -> str:
    """The commit a snapshot came from: the file NAME.commit beside its folder (written when extracting it, outside
    what is indexed), else git's, else "-"."""
    marker = root.parent / f"{root.name}.commit"
    if marker.exists():
        return marker.read_text().split()[0]
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "-"


def _repositories(parser, text: str | None, role: str) -> list[tuple[str, Path, str]]:
    found = []
    for item in filter(None, (text or "").split(",")):
        name, equals, path = item.partition("=")
        root = Path(path if equals else name).expanduser()
        if not root.is_dir():
            parser.error(f"--{role} {item}: not a folder")
        found.append((name if equals else root.name, root, role))
    return found


def main() -> None:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuning", help="NAME=PATH,...: repositories looked at while tuning")
    parser.add_argument("--heldout", help="NAME=PATH,...: repositories run only at the end")
    parser.add_argument("--sites", type=int, default=150, help="sites per repository and language (default 150)")
    parser.add_argument("--budgets", default="1024,4096", help="prompt budgets in tokens (default: 1024,4096)")
    parser.add_argument("--seed", type=int, default=0, help="which sites are drawn (default: 0)")
    parser.add_argument("--out", default="bench/scratch/context-languages", help="results path without extension")
    parser.add_argument("--before", help="results (.json.gz or .json) of the same command on other code, to compare")
    args = parser.parse_args()
    before = None
    if args.before:
        try:
            raw = Path(args.before).read_bytes()
            before = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
            before = {"rows": before["rows"], "overall": before["overall"], "date": before["date"]}
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--before {args.before}: not a results file of this script ({error})")
    repos = _repositories(parser, args.tuning, "tuning") + _repositories(parser, args.heldout, "heldout")
    if not repos:
        parser.error("name repositories with --tuning and/or --heldout")
    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        parser.error(f"--budgets {args.budgets}: token counts expected, e.g. 1024,4096")
    if min(budgets) < 1 or args.sites < 1:
        parser.error("--budgets and --sites take 1 or more")
    warnings.simplefilter("ignore", ScanWarning)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = embedded_tokenizer()
    cache = Path(tempfile.mkdtemp(prefix="context-languages-cache-"))
    started, load_before = time.perf_counter(), os.getloadavg()
    rows, all_sites = [], []
    try:
        for name, root, role in repos:
            index = index_repository(root, cache_dir=cache)
            found = find_sites(name, index)
            for language in LANGUAGES:
                of_language = [s for s in found if s.language == language]
                if not of_language:
                    continue
                sample = sorted(of_language, key=lambda site: _draw(args.seed, site))[: args.sites]
                for site in sample:
                    for budget in budgets:
                        for buffer in ("file", "prefix"):
                            site.results[f"recall_{buffer}_{budget}"] = recall_any(index, tokenizer, site, budget,
                                                                                   buffer == "prefix")
                row = {"repository": name, "role": role, "commit": _commit(root), "language": language,
                       "files": sum(language_name(f) == language for f in index.files), "sites_found": len(of_language),
                       **summary(sample, budgets, False),
                       "imported": summary([s for s in sample if s.imported], budgets, False),
                       "not_imported": summary([s for s in sample if not s.imported], budgets, False)}
                rows.append(row)
                all_sites += sample
                print(name, language, json.dumps({k: round(v, 3) for k, v in row.items() if "recall" in k}),
                      flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    results = {**run_info.header(load_before, VERSIONS), "seed": args.seed, "budgets": budgets,
               "seconds": time.perf_counter() - started, "rows": rows,
               "overall": {role: summary([s for s in all_sites if _role(s, repos) == role], budgets, False)
                           for role in ("tuning", "heldout")},
               **({"before": before} if before else {}), "sites": [asdict(site) for site in all_sites]}
    # Every site is kept (1.3 MB for 17 repositories): gzipped, as the other per-site results are.
    out.with_suffix(".json.gz").write_bytes(gzip.compress(_json(results).encode(), mtime=0))
    out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out.with_suffix('.json.gz')} and {out.with_suffix('.md')}")


def _draw(seed: int, site: LanguageSite) -> bytes:
    """A site's place in the seeded draw, its own: code that adds or removes sites elsewhere (a definition more in
    the index) leaves the others drawn as they were (a seeded sample of the list drew a different 250 of 300 lua
    sites after such a change, and moved its recall by 6 points with no site's result changed)."""
    return hashlib.sha256(f"{seed}:{site.repo}:{site.path}:{site.line}:{site.col}".encode()).digest()


def _json(results: dict) -> str:
    """The results as JSON, one line a site (indented, every site's fields on lines of their own took 1.7 MB)."""
    head = json.dumps({**results, "sites": []}, indent=1)
    sites = ",\n".join(json.dumps(site, separators=(",", ":")) for site in results["sites"])
    return head.replace('"sites": []', f'"sites": [\n{sites}\n]') + "\n"


def _role(site: LanguageSite, repos) -> str:
    return next(role for name, _, role in repos if name == site.repo)


def markdown(results: dict) -> str:
    budgets = results["budgets"]
    machine = results["machine"]

    def percent(value) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    def cells(data: dict) -> str:
        return " | ".join(f"{percent(data.get(f'recall_file_{b}'))} / {percent(data.get(f'recall_prefix_{b}'))}"
                          for b in budgets)

    lines = [
        "# Repository context in the other languages: retrieval at cross-file use sites (no model)",
        "",
        f"{results['date']} · {machine['cpu']}, {machine['cores']} cores · Python {machine['python']} · "
        + " · ".join(f"{k} {v}" for k, v in results["versions"].items())
        + f" · tokenizer SmolLM2's · seed {results['seed']} · load average {results['load_average_before'][0]:.1f}"
        + f" / {results['load_average_after'][0]:.1f} · {results['seconds'] / 60:.0f} min",
        "",
        "Recall: a chunk defining the name at the cursor is in the packed context (the file as on disk / only the"
        " text before the cursor). \"imported\": sites whose file's imports, followed, reach the defining file.",
        "",
        "| set | repository | commit | language | files | sites found | sampled | "
        + " | ".join(f"recall@{b} file / prefix" for b in budgets) + " | imported: sites, "
        + " | ".join(f"@{b}" for b in budgets) + " | not imported: sites, " + " | ".join(f"@{b}" for b in budgets)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(budgets) + "---|" + "---|" * len(budgets) + "---|"
        + "---|" * len(budgets),
    ]
    for row in results["rows"]:
        parts = [f"{row[part]['sites']} | " + " | ".join(percent(row[part].get(f"recall_file_{b}")) for b in budgets)
                 for part in ("imported", "not_imported")]
        lines.append(f"| {row['role']} | {row['repository']} | {row['commit'][:10]} | {row['language']} | "
                     f"{row['files']} | {row['sites_found']} | {row['sites']} | {cells(row)} | {parts[0]} | "
                     f"{parts[1]} |")
    for role, data in results["overall"].items():
        if data["sites"]:
            lines.append(f"| {role} | all | | | | | {data['sites']} | {cells(data)} | | |")
    before = results.get("before")
    if before:
        earlier = {(row["repository"], row["language"]): row for row in before["rows"]}
        lines += ["", f"Before and after: recall of the run of {before['date']} (--before) -> this one's, the file"
                  " as on disk / only the text before the cursor (a different sample where the index's definitions"
                  " changed: sites found differs).", "",
                  "| set | repository | language | sites found before | " + " | ".join(
                      f"recall@{b} file | recall@{b} prefix" for b in budgets) + " |",
                  "|---|---|---|---|" + "---|---|" * len(budgets)]
        pairs = [(row, earlier.get((row["repository"], row["language"]), {})) for row in results["rows"]]
        pairs += [({"role": role, "repository": "all", "language": "", **data}, before["overall"].get(role, {}))
                  for role, data in results["overall"].items() if data["sites"]]
        for row, old in pairs:
            changes = " | ".join(
                f"{percent(old.get(f'recall_{buffer}_{b}'))} -> {percent(row.get(f'recall_{buffer}_{b}'))}"
                for b in budgets for buffer in ("file", "prefix"))
            lines.append(f"| {row['role']} | {row['repository']} | {row['language']} | {old.get('sites_found', '')} | "
                         f"{changes} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
