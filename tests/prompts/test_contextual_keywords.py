"""Contextual keywords are names where the code uses them as names (issue 14).

`get`, `set`, `of`, `static`, `async` were in JavaScript's keywords, so a cursor at `app.get(` (Express's and
Hono's commonest call) gave the ranking no word to look for, and a chunk calling `router.get(` referenced no `get`.
A word such as `get` is a keyword only where it begins a clause (`get size() {}`, `for (x of xs)`, `type T = ...`,
Python's `match x:`); after a dot, as a method's or a property's name, or bound, it is a name."""

import pytest

from prompts import build_completion_prompt, index_repository
from prompts.chunking import analyze_source, dropped_words
from prompts.languages import JAVA, JAVASCRIPT, PYTHON, TYPESCRIPT


@pytest.mark.parametrize("spec, text, names", [
    (JAVASCRIPT, 'app.get("/users", (req, res) => res.send(users));', {"get"}),
    (JAVASCRIPT, "const value = cache?.get(key);", {"get"}),
    (JAVASCRIPT, "  get(path, ...handlers) {\n    return this.route(path);\n  }", {"get"}),
    (JAVASCRIPT, "  set: (key, value) => store.put(key, value),", {"set"}),
    (JAVASCRIPT, "import { get, set } from 'lodash';", {"get", "set"}),
    (JAVASCRIPT, "return of(1, 2, 3).pipe(map(double));", {"of"}),
    (JAVASCRIPT, "app.use(express.static(root));", {"static"}),
    (JAVASCRIPT, "async.series(tasks, done);", {"async"}),
    (TYPESCRIPT, "const kind = node.type;\nreturn { type: kind };", {"type"}),
    (PYTHON, "found = re.match(pattern, text)\nif match:\n    pass", {"match"}),
    (JAVA, "Record record = records.next();\nrecord.value();", {"record"}),
], ids=["member-call", "optional-member", "method-definition", "property-key", "imported", "rxjs-of",
        "express-static", "async-library", "ts-type-property", "python-match", "java-record"])
def test_a_contextual_keyword_used_as_a_name_is_a_word(spec, text, names):
    assert names <= spec.contextual
    assert not names & dropped_words(text, spec.keywords, spec.contextual)


@pytest.mark.parametrize("spec, text, keywords", [
    (JAVASCRIPT, "class Box {\n  get size() {\n    return 1;\n  }\n  static set label(v) {}\n}", {"get", "set"}),
    (JAVASCRIPT, "for (const user of users) {}", {"of"}),
    (JAVASCRIPT, "class A {\n  static create() {}\n  static #count = 0;\n  static {}\n}", {"static"}),
    (JAVASCRIPT, "app.use(async (req, res) => {});\nasync function main() {}", {"async"}),
    (TYPESCRIPT, "import type { A } from './a';\ntype B = A as const;\ndeclare module 'x' {}", {"type", "as", "declare"}),
    (TYPESCRIPT, "class C {\n  readonly name: string;\n  get [Symbol.iterator]() {}\n  get #secret() {}\n}",
     {"readonly", "get"}),
    (PYTHON, "match command:\n    case Point(x=0):\n        pass\n    case [first, *rest]:\n        pass", {"match", "case"}),
    (JAVA, "var records = List.of();\nrecord Point(int x, int y) {}", {"var", "record"}),
], ids=["accessors", "for-of", "static-members", "async-functions", "ts-type-import-as-declare", "ts-readonly-accessors",
        "python-match-statement", "java-var-record"])
def test_a_contextual_keyword_beginning_a_clause_stays_a_keyword(spec, text, keywords):
    assert keywords <= dropped_words(text, spec.keywords, spec.contextual)


def test_reserved_words_and_uninteresting_globals_stay_out():
    """Only the contextual ones become names: `return`, `this`, `console`, `module.exports` never are words."""
    text = "module.exports = function () {\n  console.log(this.get(1));\n  return null;\n};"
    assert {"return", "this", "console", "module", "exports", "function", "null"} <= dropped_words(
        text, JAVASCRIPT.keywords, JAVASCRIPT.contextual)


def test_a_chunk_calling_router_get_references_get():
    source = ("import { Router } from './router';\n\nexport function mount(router) {\n"
              "  router.get('/users', listUsers);\n  return router;\n}\n\n"
              "export class Box {\n  get size() {\n    return 1;\n  }\n}\n")
    chunks = analyze_source("src/routes.js", source).chunks
    mount = next(chunk for chunk in chunks if "mount" in chunk.defines)
    box = next(chunk for chunk in chunks if "Box" in chunk.defines)
    assert "get" in mount.references
    assert "get" not in box.references  # (an accessor's `get`)


# Ranking: a cursor right after `router.get(` / `app.get(` ------------------------------------------------------------

_STEP = ("  step{i}(path, strict = false) {{\n    // step {i} of the routing rules\n"
         "    const found = this.stack.slice({i}).map((layer) => layer.path + path);\n"
         "    return strict ? found : found.slice(0, {i});\n  }}\n\n")
ROUTER = ("import { Layer } from './layer';\n\nexport class CLASS {\n  constructor() {\n    this.stack = [];\n  }\n\n"
          + "".join(_STEP.format(i=i) for i in range(16))
          + "  get(path, ...handlers) {\n    this.stack.push(new Layer(path, 'GET', handlers));\n    return this;\n  }\n}\n")


def _files(ext: str, cls: str) -> dict[str, str]:
    return {
        f"src/router.{ext}": ROUTER.replace("CLASS", cls),
        f"src/layer.{ext}": "export class Layer {\n  constructor(path, method, handlers) {\n    this.path = path;\n  }\n}\n",
        # an imported function used a line above, whose words the cursor's lines share (`users`, `handlers`)
        f"examples/users.{ext}": "export function listUsers(users, handlers) {\n  return users.map((user) => handlers);\n}\n",
        **{f"src/middleware/filler{i}.{ext}": f"export function middleware{i}(path, handler) {{\n"
                                              f"  const route = path + handler;\n  return [route, {i}];\n}}\n"
           for i in range(20)},
    }


@pytest.mark.parametrize("ext, cls, receiver", [
    ("js", "Router", "const router = new Router();"),
    ("ts", "Hono", "const app = new Hono();"),
], ids=["express-router-get", "hono-app-get"])
def test_a_call_of_get_carries_the_get_method(make_repo, smollm2_tokenizer, ext, cls, receiver):
    """`router.get(` / `app.get(`: the part of the router's long class that holds `get` is packed first at 1,024
    tokens (before the change it came in for its class's import only, after `listUsers`, if at all)."""
    variable = receiver.split()[1]
    line = f"  {variable}.get("
    app = (f"import {{ {cls} }} from './router';\nimport {{ listUsers }} from '../examples/users';\n\n{receiver}\n\n"
           f"export function mount(users, handlers) {{\n  const listed = listUsers(users, handlers);\n{line}\n}}\n")
    index = index_repository(make_repo(_files(ext, cls) | {f"src/app.{ext}": app}))
    rows = app.split("\n")
    row = next(number for number, text in enumerate(rows) if text == line)
    packed = build_completion_prompt(index, smollm2_tokenizer, f"src/app.{ext}", line=row + 1, col=len(line) + 1,
                                     budget_tokens=1024)
    chunks = [index.chunks[n] for n in index.chunk_numbers(f"src/router.{ext}")]
    holding = [c for c in chunks if "get" in c.defines]
    assert len(chunks) > 2 and len(holding) == 1 and cls not in holding[0].defines, chunks
    assert packed.chosen and packed.chosen[0] == (f"src/router.{ext}", holding[0].start_line), packed.chosen
