"""Ranking: what the code at the cursor uses comes first; imports resolve to repository files."""

import random

import pytest

from prompts import build_completion_prompt, index_repository
from prompts.imports import Import, PathTable, follow_imports, module_files
from prompts.ranking import Query, cursor_terms, rank


def _filler_files(count: int, seed: int = 0) -> dict[str, str]:
    """Unrelated modules that still share everyday identifiers (value, result, data) with the code under test."""
    rng = random.Random(seed)
    files = {}
    for i in range(count):
        functions = []
        for j in range(4):
            name = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(4))
            functions.append(
                f"def {name}_{j}(value, data):\n    result = value\n    for item in data:\n"
                f"        result = result + item * {j}\n    return result\n"
            )
        files[f"misc/module_{i}.py"] = "\n\n".join(functions)
    return files


REPO = _filler_files(30) | {
    "pkg/__init__.py": "",
    "pkg/geometry.py": (
        "import math\n\n\ndef circle_area(radius):\n    return math.pi * radius * radius\n\n\n"
        "def square_area(side):\n    return side * side\n"
    ),
    "pkg/strings.py": "def shout(text):\n    return text.upper()\n\n\ndef whisper(text):\n    return text.lower()\n",
    "pkg/app.py": (
        "from pkg import geometry\nimport pkg.strings\n\n\ndef main(value, data):\n"
        "    result = value\n    total = geometry.circle_area(2)\n    \n    return total\n"
    ),
}


@pytest.fixture
def repo_index(make_repo):
    return index_repository(make_repo(REPO))


def test_a_function_called_before_the_cursor_gets_its_definition_into_the_prompt(repo_index, smollm2_tokenizer):
    # Cursor on the blank line after `total = geometry.circle_area(2)`; the budget holds a few chunks only.
    packed = build_completion_prompt(repo_index, smollm2_tokenizer, "pkg/app.py", line=8, col=5, budget_tokens=200)
    repository = [item for item in packed.context if item.path != "pkg/app.py"]
    assert any(item.path == "pkg/geometry.py" and item.start_line <= 4 <= item.end_line for item in repository)
    assert repository[-1].path == "pkg/geometry.py"  # the most relevant file sits nearest the cursor
    text = smollm2_tokenizer.decode(packed.ids)
    assert "<file_sep>pkg/geometry.py\n" in text
    assert "def circle_area(radius):\n    return math.pi * radius * radius" in text


def test_imported_modules_outrank_unrelated_ones(repo_index):
    source = REPO["pkg/app.py"]
    imports = [Import("pkg", "geometry"), Import("pkg.strings")]
    imported = follow_imports(repo_index, "pkg/app.py", "python", imports).files
    assert imported == {"pkg/__init__.py", "pkg/geometry.py", "pkg/strings.py"}
    weights = cursor_terms(source.split("\n"), 7, 4, frozenset()).weights
    query = Query(weights=weights, path="pkg/app.py", imported=frozenset(imported))
    ranked = [chunk.path for _, chunk in rank(repo_index, query) if chunk.path != "pkg/app.py"]
    first_misc = next(i for i, path in enumerate(ranked) if path.startswith("misc/"))
    assert {"pkg/geometry.py", "pkg/strings.py"} <= set(ranked[:first_misc])
    assert ranked[0] == "pkg/geometry.py"  # the definition of what is called, above all other files
    definitions = [chunk.path for _, chunk in rank(repo_index, query, definitions_only=True)]
    assert definitions[0] == "pkg/geometry.py"


def test_the_cursor_region_and_duplicates_are_left_out(make_repo):
    copy = "def helper(value):\n    return value + 1\n"
    user = "x = helper(1)\n\n\ndef helper_user():\n    return helper(2)\n"
    index = index_repository(make_repo({"a.py": copy, "b.py": copy, "c.py": user}))
    query = Query(weights={"helper": 1.0}, path="c.py", shown=(4, 5))
    ranked = [(chunk.path, chunk.start_line) for _, chunk in rank(index, query)]
    assert ranked == [("c.py", 1), ("a.py", 1)]  # the file's own other lines first; b.py is a's twin; c.py's
                                                 # lines 4-5 are on screen


def test_identifiers_near_the_cursor_weigh_most_and_the_word_being_typed_not_at_all():
    lines = ["import far_away", *["pass"] * 30, "near = compute(args)", "    total = geome"]
    weights = cursor_terms(lines, 32, len(lines[32]), frozenset({"pass", "import"})).weights
    assert weights["compute"] > weights["far_away"] > 0
    assert "geome" not in weights and "pass" not in weights
    assert weights["total"] == 0.5  # assigned here: a local, worth half


def test_text_after_the_cursor_and_in_comments_weighs_less():
    """Before the cursor counts twice as much as after it (a name 10 lines up weighs what one 5 lines down does),
    and words in comments and strings weigh PROSE_FACTOR of code's."""
    from prompts.ranking import DISTANCE_SCALE, PROSE_FACTOR
    lines = ["up_ten = 1", *["pass"] * 8, "up_one(x)  # in_comment", "    ", "down_one(y)", *["pass"] * 3,
             "down_five = 2"]
    weights = cursor_terms(lines, 10, 4, frozenset({"pass"})).weights
    assert weights["up_one"] == 1 / (1 + 1 / DISTANCE_SCALE) > weights["down_one"] == 1 / (1 + 2 / DISTANCE_SCALE)
    assert weights["up_ten"] == weights["down_five"] == 0.5 * 0.5       # both locals: assigned here
    assert weights["in_comment"] == pytest.approx(PROSE_FACTOR * weights["up_one"])


@pytest.mark.parametrize("opener, closer, comment", [('    """Loads the index.', '    """', "#"),
                                                      ("  const usage = `Loads the index.", "  `;", "//")])
def test_a_window_that_starts_inside_a_docstring_keeps_code_and_prose_apart(opener, closer, comment):
    """The query's window of lines before the cursor may begin inside a long docstring (a Python triple-quoted
    string, a JavaScript template literal): what lies above the window decides that its top is prose, so the
    code after the string's end weighs as code and the string's words as prose, not the other way round."""
    from prompts.ranking import DISTANCE_SCALE, LINES_BEFORE, PROSE_FACTOR
    lines = ["def long_function(arg):", opener, *[f"    Explains step {i}." for i in range(LINES_BEFORE + 10)],
             "    Returns docstring_word.", closer, "    index_repository(arg)", "    "]
    row = len(lines) - 1
    assert row - LINES_BEFORE > 1  # the window's top is inside the string
    weights = cursor_terms(lines, row, 4, frozenset({"def"}), comment).weights
    assert weights["index_repository"] == pytest.approx(1 / (1 + 1 / DISTANCE_SCALE))
    assert weights["docstring_word"] == pytest.approx(PROSE_FACTOR / (1 + 3 / DISTANCE_SCALE))


DEFINITIONS_REPO = {
    "app.py": "x = rare_name(1) + common_name(2) + once_defined(3) + twice_defined(4) + both_defined(5)\n",
    "lib/rare.py": "def rare_name(value):\n    return value\n",
    "lib/common.py": "def common_name(value):\n    return value\n",
    **{f"lib/user_{i}.py": f"def user_{i}(value):\n    return common_name(value)\n" for i in range(6)},
    "lib/once.py": "def once_defined(value):\n    return value\n",
    "lib/twice_a.py": "def twice_defined(value):\n    return value\n",
    "lib/twice_b.py": "def twice_defined(value):\n    return value + 0\n",
    "lib/plain_def.py": "def both_defined(value):\n    return value\n",
    "lib/imported_def.py": "def both_defined(value):\n    return value + 0\n",
}


def test_each_definition_signal_weighs_as_documented(make_repo):
    """One query per signal of the definition ranking, each scored alone: a signal whose weight were ignored
    would leave the scores equal (or empty) here, where the end-to-end prompts above still came out right."""
    from prompts.ranking import IMPORTED_FILE_BOOST, IMPORTED_NAME_BASE, IMPORTED_NAME_WEIGHT
    index = index_repository(make_repo(DEFINITIONS_REPO))

    def scores(definitions_only=True, **query):
        return {chunk.path: score for score, chunk in rank(index, Query(**query), definitions_only)}

    both = dict.fromkeys(["rare_name", "common_name"], 1.0)
    ranked = scores(weights=both)
    assert ranked["lib/rare.py"] > ranked["lib/common.py"] > 0         # a name used everywhere tells less
    ranked = scores(weights=dict.fromkeys(["once_defined", "twice_defined"], 1.0))
    assert ranked["lib/twice_a.py"] == ranked["lib/twice_b.py"] < 0.6 * ranked["lib/once.py"]   # shared by two
    ranked = scores(weights={"both_defined": 1.0}, imported=frozenset({"lib/imported_def.py"}))
    assert ranked["lib/imported_def.py"] == pytest.approx(IMPORTED_FILE_BOOST * ranked["lib/plain_def.py"])
    rare = list(index.chunk_numbers("lib/rare.py"))
    assert scores(weights={}, imported_names={"rare_name": rare}) == {
        "lib/rare.py": pytest.approx(IMPORTED_NAME_WEIGHT * IMPORTED_NAME_BASE)}   # imported, not used yet
    assert list(scores(weights={}, module_at_cursor=("lib/once.py",))) == ["lib/once.py"]
    assert scores(weights={"rare_name": 1.0}, local=frozenset({"rare_name"})) == {}   # bound here: not theirs
    assert list(scores(False, weights={}, mentioned=frozenset({"lib/common.py"}))) == ["lib/common.py"]


def test_an_imported_names_definitions_in_one_file_are_one_definition_not_rival_candidates(make_repo):
    """An imported name defined by several chunks of one file (TypeScript's overloads, a Java class and its
    constructors, a Rust struct and its impl blocks) had its weight shared among the chunks as among rival
    definitions in several files, so ky's `createHttpTestServer` (two overload signatures and the function) came
    after every name defined once: its file's first chunk now counts as the definition, the share taken among the
    files and the chunks alike (the geometric mean of the two)."""
    overloads = "".join(f"export function createServer(options: Options{i}): Server;\n" for i in range(2))
    files = {"src/server.ts": overloads + "export function createServer(options?: unknown): Server {\n"
                                          "  return new Server(options);\n}\n",
             **{f"src/parse_{part}.ts": f"export function parse(text: string) {{\n  return text.split('{part}');\n}}\n"
                for part in "abc"}}
    index = index_repository(make_repo(files))
    server = list(index.definers["createServer"])
    parse = list(index.definers["parse"])
    assert len(server) == 3 and len({index.chunks[n].path for n in server}) == 1 and len(parse) == 3
    scores = {(chunk.path, chunk.start_line): score for score, chunk in rank(
        index, Query(weights={}, imported_names={"createServer": server, "parse": parse}), True)}
    first, *others = [scores[index.chunks[n].path, index.chunks[n].start_line] for n in server]
    rivals = [scores[index.chunks[n].path, index.chunks[n].start_line] for n in parse]
    assert first > max(rivals) and first == pytest.approx(3 ** 0.5 * rivals[0])
    assert others == pytest.approx(rivals[:2])


@pytest.mark.parametrize(
    "language, importer, imports, expected",
    [
        ("python", "pkg/sub/mod.py", [".sibling", "..top", "pkg.util", "os"],
         {"pkg/sub/sibling.py", "pkg/top/__init__.py", "src/pkg/util.py"}),
        ("javascript", "web/app.js", ["./lib/fmt", "../shared/api.js", "react", "@/components/button"],
         {"web/lib/fmt.ts", "shared/api.js", "web/components/button/index.js"}),
        ("go", "cmd/main.go", ["fmt", "example.com/proj/internal/store"],
         {"internal/store/db.go", "internal/store/cache.go"}),
        ("rust", "src/main.rs", ["crate::net::client::Client", "std::io", "util"],
         {"src/net/client.rs", "src/util/mod.rs"}),
        ("c", "lib/parse.c", ["parse.h", "<stdio.h>", "common/defs.h"], {"lib/parse.h", "include/common/defs.h"}),
        ("cpp", "lib/parse.c", ["common\\defs.h", "..\\lib\\parse.h"], {"lib/parse.h", "include/common/defs.h"}),
        ("java", "app/src/Main.java", ["com.acme.store.Store", "java.util.List"],
         {"app/src/com/acme/store/Store.java"}),
    ],
)
def test_imports_resolve_to_repository_files(language, importer, imports, expected):
    table = PathTable([
        "pkg/sub/mod.py", "pkg/sub/sibling.py", "pkg/top/__init__.py", "src/pkg/util.py",
        "web/app.js", "web/lib/fmt.ts", "shared/api.js", "web/components/button/index.js",
        "cmd/main.go", "internal/store/db.go", "internal/store/cache.go",
        "src/main.rs", "src/net/client.rs", "src/util/mod.rs",
        "lib/parse.c", "lib/parse.h", "include/common/defs.h",
        "app/src/Main.java", "app/src/com/acme/store/Store.java",
    ])
    assert set().union(*(module_files(table, importer, language, module) for module in imports)) == expected


def test_a_target_with_a_folder_is_looked_up_by_its_last_two_parts(monkeypatch):
    """5,000 packages: every `import x` also asks for `x/__init__`, which went through all 5,000 `__init__.py`
    (1,000 imports, 4,000 packages: 1 s a prompt, more through re-exports). Only paths that can match are compared."""
    import prompts.imports as imports_module

    table = PathTable([f"p{i}/__init__.py" for i in range(5000)] + [f"src/p{i}/mod.py" for i in range(5000)]
                      + ["x/p7/__init__.py", "go/a/b/x.go", "go/c/b/y.go"])
    compared = []
    real = imports_module._ends_with
    monkeypatch.setattr(imports_module, "_ends_with", lambda *args: compared.append(args) or real(*args))
    assert module_files(table, "main.py", "python", "missing") == []
    assert module_files(table, "main.py", "python", "p7") == ["p7/__init__.py", "x/p7/__init__.py"]
    assert module_files(table, "src/main.py", "python", ".p7.mod") == ["src/p7/mod.py"]
    assert table.folder("a/b", False) == ["go/a/b/x.go"] and table.folder("src/p7", True) == ["src/p7/mod.py"]
    assert table.files("p7/__init__.py", True, extension=True) == ["p7/__init__.py"]
    assert len(compared) < 20


def _context_eval(monkeypatch):
    """bench/context_eval.py as a module, its folder first on the path as when it runs (its run_info)."""
    import importlib.util
    import sys
    from pathlib import Path
    script = Path(__file__).parents[2] / "bench" / "context_eval.py"
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location("context_eval", script)
    context_eval = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "context_eval", context_eval)     # its dataclasses look their module up
    spec.loader.exec_module(context_eval)
    return context_eval


def test_context_eval_resumes_only_sites_measured_with_the_same_options(monkeypatch, tmp_path):
    """bench/context_eval.py resumes an interrupted run from its .partial.jsonl: sites measured there with other
    budgets were taken as they were, so the new budget's recall was the mean over the new sites alone."""
    import json
    import sys
    context_eval = _context_eval(monkeypatch)
    out = tmp_path / "eval"

    def run(budgets):
        monkeypatch.setattr(sys, "argv", ["context_eval.py", "--repos", "click", "--no-model", "--sites", "3",
                                          "--budgets", budgets, "--out", str(out)])
        context_eval.main()
        return json.loads(out.with_suffix(".json").read_text())["sites"]

    first = run("256")
    # As a run with --budgets 256 cut short leaves it (the sites' results, keyed by site) then resumed with 256,1024:
    lines = [{"key": f"click:{s['path']}:{s['line']}:{s['col']}", "results": s["results"]} for s in first[:2]]
    out.with_suffix(".partial.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    again = run("256,1024")
    assert [s["path"] for s in again] == [s["path"] for s in first]
    assert all("recall_file_1024" in s["results"] and "recall_prefix_1024" in s["results"] for s in again)
    assert not out.with_suffix(".partial.jsonl").exists()


def test_context_eval_languages_takes_a_class_propertys_definition_from_the_index(make_repo, monkeypatch):
    """Hono's `request = (...) => {` and Context's `status = (...) => {` are class properties: the index recorded no
    definition of them, so `app.request(` was a site whose truth was an unrelated `request` function of
    benchmarks/ (the only file defining the name), and `c.status(` no site. The eval's truth is the index's: now
    `request` has two definitions, which the text cannot tell apart (no site), and `status` is Context's. A member
    every array has (`rows.map(`) is no use of a repository's `map` (an exported object's here)."""
    evaluation = _context_eval_languages(monkeypatch)
    files = {"src/hono.ts": "export class Hono {\n  request = (input: string): Response => {\n"
                            "    return new Response(input);\n  };\n}\n",
             "src/context.ts": "export class Context {\n  status = (code: number): void => {\n"
                               "    this.code = code;\n  };\n}\n",
             "src/children.ts": "export const Children = {\n  map: (children: unknown[]) => children,\n};\n",
             "benchmarks/get-path.ts": "export function request(url: string): string {\n  return url;\n}\n",
             "src/app.ts": "import { Hono } from './hono';\nimport { Context } from './context';\n\n"
                           "export function handle(app: Hono, c: Context, rows: number[]) {\n"
                           "  app.request('/');\n  c.status(200);\n  return rows.map((row) => row + 1);\n}\n"}
    index = index_repository(make_repo(files))
    sites = {(s.path, s.line, s.col, s.name, s.definition[0]) for s in evaluation.find_sites("hono", index)}
    assert {s for s in sites if s[3] not in ("Hono", "Context")} == {
        ("src/app.ts", 6, 5, "status", "src/context.ts")}


def test_context_eval_languages_takes_a_contextual_keyword_used_as_a_name_for_a_site(make_repo, monkeypatch):
    """`router.get(` is a use of the router's `get` method (the keywords took every `get` out of the sites), while
    `console.log(` stays none (a predeclared global, whatever a file of the repository calls `console`) and an
    accessor's `get size()` is no identifier at all."""
    evaluation = _context_eval_languages(monkeypatch)
    files = {"src/router.js": "export class Router {\n  get(path, handler) {\n    return [path, handler];\n  }\n}\n",
             "src/console.js": "export function console() {}\n",
             "src/app.js": "import { Router } from './router';\n\nexport function mount(router) {\n"
                           "  console.log('mount');\n  return router.get('/', mount);\n}\n\n"
                           "export class Box {\n  get size() {\n    return 1;\n  }\n}\n"}
    index = index_repository(make_repo(files))
    sites = {(s.path, s.line, s.col, s.name, s.definition[0]) for s in evaluation.find_sites("app", index)}
    assert {s for s in sites if s[3] != "Router"} == {("src/app.js", 5, 17, "get", "src/router.js")}


@pytest.mark.parametrize("argv, says", [(["--budgets", "1k"], "--budgets 1k: token counts expected"),
                                        (["--sites", "0"], "--sites take 1 or more"),
                                        (["--repos", "no_such_package_here"], "not an installed package here")])
def test_context_eval_options_are_checked_first(argv, says, monkeypatch, capsys):
    import sys
    context_eval = _context_eval(monkeypatch)
    monkeypatch.setattr(context_eval, "index_repository", lambda *a, **kw: pytest.fail("indexed"))
    monkeypatch.setattr(sys, "argv", ["context_eval.py", "--repos", "click", "--no-model", *argv])
    with pytest.raises(SystemExit) as exit:
        context_eval.main()
    err = capsys.readouterr().err
    assert exit.value.code == 2 and says in err and err.count("\n") == 1      # one line, as the product's commands


def _context_eval_languages(monkeypatch):
    """bench/context_eval_languages.py as a module (it imports context_eval, beside it)."""
    import importlib.util
    import sys
    from pathlib import Path
    _context_eval(monkeypatch)
    script = Path(__file__).parents[2] / "bench" / "context_eval_languages.py"
    spec = importlib.util.spec_from_file_location("context_eval_languages", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "context_eval_languages", module)
    spec.loader.exec_module(module)
    return module


def test_context_eval_languages_finds_uses_of_names_defined_in_one_other_file(make_repo, monkeypatch):
    """A use site is a name defined in exactly one other file, where the language lets the name be that definition:
    an imported name or a qualified one, not a local or a parameter named alike, not a keyword."""
    evaluation = _context_eval_languages(monkeypatch)
    files = {"src/money.ts": "export function formatPrice(cents: number): string {\n  return String(cents);\n}\n",
             "src/cart.ts": "import { formatPrice } from './money';\n\nexport function label(total: number) {\n"
                            "  return formatPrice(total);\n}\n",
             "src/other.ts": "export function show(formatPrice: number) {\n  return formatPrice + 1;\n}\n",
             "go.mod": "module example.com/shop\n",
             "store/store.go": "package store\n\nfunc Open(name string) string {\n\treturn name\n}\n",
             "cmd/main.go": 'package main\n\nimport "example.com/shop/store"\n\nfunc main() {\n'
                            '\tOpen := 1\n\t_ = Open\n\t_ = store.Open("x")\n}\n'}
    index = index_repository(make_repo(files))
    sites = {(s.path, s.line, s.col, s.name, s.kind, s.imported, s.definition[0])
             for s in evaluation.find_sites("shop", index)}
    assert sites == {("src/cart.ts", 4, 10, "formatPrice", "name", True, "src/money.ts"),
                     ("cmd/main.go", 8, 12, "Open", "qualified", True, "store/store.go")}


def test_context_eval_languages_takes_no_name_a_function_around_it_binds_for_a_use(make_repo, monkeypatch):
    """A bare name that a function around the site binds (a parameter, a local declaration, an outer function's
    parameter seen from a closure) is that local, not another file's definition of the name: hiredis's adapters'
    `void *privdata` parameter was a site with test.c's `struct privdata` as its truth. Outside such a function the
    same name is still a use."""
    evaluation = _context_eval_languages(monkeypatch)
    files = {"test.c": "struct privdata {\n    int dtor_counter;\n};\n\nint counter(void) {\n    return 0;\n}\n",
             "adapters/ae.h": "static void readEvent(int fd, void *privdata, int mask) {\n"
                              "    int counter;\n    use(privdata, counter);\n}\n\n"
                              "static void count(void) {\n    counter();\n}\n\nint attach(void *privdata);\n",
             "go.mod": "module example.com/shop\n",
             "store/open.go": "package store\n\nfunc Open(name string) string {\n\treturn name\n}\n",
             "store/use.go": "package store\n\nfunc Use(Open string) func() string {\n"
                             "\treturn func() string { return Open }\n}\n\nfunc Loop() {\n"
                             "\tfor Open := range []string{} {\n\t\t_ = Open\n\t}\n}\n\n"
                             "func Again() string {\n\treturn Open(\"x\")\n}\n",
             "src/money.ts": "export function formatPrice(cents: number): string {\n  return String(cents);\n}\n",
             "src/cart.ts": "import { formatPrice } from './money';\n\n"
                            "export const label = (formatPrice: number) => formatPrice + 1;\n"
                            "export function total({ formatPrice }: { formatPrice: number }) {\n"
                            "  return formatPrice;\n}\n"
                            "export function shown() {\n  return formatPrice(1);\n}\n",
             "src/lib.rs": "pub mod money;\nuse crate::money::price;\n\n"
                           "pub fn total(items: &[u32]) -> u32 {\n    let price = 1;\n    price\n}\n\n"
                           "pub fn shown() -> u32 {\n    price()\n}\n",
             "src/money.rs": "pub fn price() -> u32 {\n    1\n}\n",
             "java/shop/Price.java": "package shop;\n\npublic class Price {\n}\n",
             "java/shop/Cart.java": "package shop;\n\nclass Cart {\n    int total(int Price) {\n"
                                    "        return Price;\n    }\n\n    Object shown() {\n"
                                    "        return new Price();\n    }\n}\n"}
    index = index_repository(make_repo(files))
    sites = {(s.path, s.line, s.col, s.name) for s in evaluation.find_sites("shop", index)}
    assert sites == {("adapters/ae.h", 7, 5, "counter"), ("store/use.go", 14, 9, "Open"),
                     ("src/cart.ts", 8, 10, "formatPrice"), ("src/lib.rs", 10, 5, "price"),
                     ("java/shop/Cart.java", 9, 20, "Price")}


@pytest.mark.parametrize("argv, says", [(["--budgets", "1k"], "--budgets 1k: token counts expected"),
                                        (["--tuning", "/no/such/folder"], "not a folder"),
                                        ([], "name repositories with --tuning")])
def test_context_eval_languages_options_are_checked_first(argv, says, monkeypatch, capsys, tmp_path):
    import sys
    evaluation = _context_eval_languages(monkeypatch)
    monkeypatch.setattr(evaluation, "index_repository", lambda *a, **kw: pytest.fail("indexed"))
    monkeypatch.setattr(evaluation, "embedded_tokenizer", lambda: pytest.fail("tokenizer loaded"))
    given = argv if "--tuning" in argv or not argv else ["--tuning", str(tmp_path), *argv]
    monkeypatch.setattr(sys, "argv", ["context_eval_languages.py", *given])
    with pytest.raises(SystemExit) as exit:
        evaluation.main()
    err = capsys.readouterr().err
    assert exit.value.code == 2 and says in err and err.count("\n") == 1
