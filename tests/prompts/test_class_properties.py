"""Class properties that hold functions are their class's members, as methods are (issue 14).

`class Hono { request = (input) => {...}; fire = function () {...}; fetch: (r: Request) => Response }`: the index
recorded method definitions only, so `app.request(` found no definition in Hono's file, and the languages eval
took an unrelated function named `request` in another file for its definition. Each case below is what a chunk
of the file says it defines (the index's record, tree-sitter's), then a prompt that must carry the property."""

import pytest

from prompts import build_completion_prompt, index_repository
from prompts.chunking import analyze_source


def _defines(path: str, source: str) -> set[str]:
    return {name for chunk in analyze_source(path, source).chunks for name in chunk.defines}


JS_CLASS = """\
export class Router {
  route = (path, handler) => {
    return [path, handler];
  };
  static create = function (options) {
    return new Router(options);
  };
  #dispatch = (request) => request;
  handle = async function handle(request) {
    return this.#dispatch(request);
  };
  #secret() {
    return 1;
  }
  basePath = '/';
  routes = [];
  counter = 0;
  matcher = new Matcher();
  compiled = compile(this.routes);
}
"""

TS_CLASS = """\
export class Hono<E extends Env = Env> {
  get!: HandlerInterface<E, 'get'>;
  private router: Router = new RegExpRouter();
  readonly basePath: string = '/';
  strict?: boolean;
  request = (input: RequestInfo, init?: RequestInit): Response | Promise<Response> => {
    return this.fetch(new Request(input, init));
  };
  static of = function (options: Options): Hono {
    return new Hono(options);
  };
  #dispatch = (request: Request): Response => this.handler(request);
  fetch: (request: Request, env?: E) => Response | Promise<Response> = (request, env) => {
    return this.#dispatch(request);
  };
  onError: (handler: ErrorHandler) => void;
  private fire = (): void => {
    addEventListener('fetch', this.listener);
  };
  #notFound() {
    return new Response('Not Found', { status: 404 });
  }
}
"""


@pytest.mark.parametrize("path, source, functions, fields", [
    ("src/router.js", JS_CLASS, {"route", "create", "dispatch", "handle", "secret"},
     {"basePath", "routes", "counter", "matcher", "compiled"}),
    ("src/hono.ts", TS_CLASS, {"request", "of", "dispatch", "fetch", "onError", "fire", "notFound"},
     {"get", "router", "basePath", "strict"}),
    ("src/hono.tsx", TS_CLASS, {"request", "of", "dispatch", "fetch", "onError", "fire", "notFound"},
     {"get", "router", "basePath", "strict"}),
], ids=["javascript", "typescript", "tsx"])
def test_a_class_property_holding_a_function_is_a_member_its_class_defines(path, source, functions, fields):
    """An arrow function or function expression as a property's value (static, private `#x` too, recorded as the
    word `x` a use site's identifiers show), and in TypeScript a property typed as a function, are defined by
    the class's chunk; a property holding anything else (a string, an array, `new`, a call, a type that is no
    function type) is a field, which the index records for no language of these: no definition."""
    defines = _defines(path, source)
    assert functions <= defines, functions - defines
    assert not fields & defines, fields & defines


def test_a_function_assigned_to_this_in_a_class_is_its_member():
    """`this.use = (...) => {...}` in a constructor (Hono's `use` and `on`, a typed field assigned there): a member
    of the class; `this.name = name` and a bound method's copy (`this.run = this.run.bind(this)`) are no
    definitions, and neither is a function assigned to another object's property inside a method."""
    source = ("export class Hono {\n  use: MiddlewareHandler;\n  constructor(name: string) {\n"
              "    this.name = name;\n    this.run = this.run.bind(this);\n"
              "    this.use = (path: string, ...handlers: Handler[]) => {\n      return this;\n    };\n"
              "    this.on = function (method: string) {\n      return this;\n    };\n"
              "    other.callback = () => 1;\n  }\n  run() {\n    return 1;\n  }\n}\n")
    defines = _defines("src/hono.ts", source)
    assert {"use", "on", "run"} <= defines
    assert not {"name", "callback"} & defines


def test_a_function_in_an_exported_object_literal_is_a_definition_of_the_module():
    """`module.exports = { parse: function () {} }`, `export const helpers = { format: (x) => x }` and `export
    default { render() {} }`: the functions are the module's names; an object that is not exported, and a value
    that is no function, define nothing."""
    common = ("function helper() {}\n\nmodule.exports = {\n  parse: function (text) {\n    return text;\n  },\n"
              "  stringify: (value) => String(value),\n  check() {\n    return true;\n  },\n  version: '1.0',\n"
              "  helper,\n};\n\nconst local = { ignored: () => 1 };\n")
    defines = _defines("lib/json.js", common)
    assert {"parse", "stringify", "check", "helper"} <= defines
    assert not {"version", "ignored"} & defines
    module = ("export const helpers = {\n  format: (x: number): string => String(x),\n"
              "  trim: function (s: string) {\n    return s.trim();\n  },\n  width: 80,\n};\n\n"
              "export default {\n  render() {\n    return '';\n  },\n  mount: (el: Element) => el,\n};\n")
    defines = _defines("src/helpers.ts", module)
    assert {"helpers", "format", "trim", "render", "mount"} <= defines
    assert "width" not in defines


def test_a_function_assigned_to_an_objects_property_at_the_top_of_a_javascript_file_defines_it():
    """Express's `app.use = function use(fn) {...}`, `res.send = function send(body) {...}` and a prototype's
    `Router.prototype.handle = function (req) {...}`: what `app.use(` and `res.send(` call, at the file's top
    level; a value that is no function, and an assignment inside a function, define nothing."""
    source = ("var app = exports = module.exports = {};\n\napp.use = function use(fn) {\n  return this;\n};\n\n"
              "res.send = function send(body) {\n  return this;\n};\n\n"
              "Router.prototype.handle = function (req) {\n  return req;\n};\n\n"
              "app.settings = {};\napp.locals = Object.create(null);\n\n"
              "function init() {\n  app.inner = function () {};\n}\n")
    defines = _defines("lib/application.js", source)
    assert {"use", "send", "handle", "init"} <= defines
    assert not {"settings", "locals", "inner", "exports", "prototype"} & defines


# Ranking: a cursor right after `app.request(` / typing `app.ge` ----------------------------------------------------

HONO_STEP = ("  step{i} = (path: string, strict = false): string[] => {{\n    // step {i} of the routing rules\n"
             "    const found = this.routes.slice({i}).map((route) => route.path + path);\n"
             "    return strict ? found : found.slice(0, {i});\n  }};\n\n")
HONO = ("import { RegExpRouter } from './router';\n\nexport class Hono {\n  routes: { path: string }[] = [];\n"
        "  private router = new RegExpRouter();\n\n" + "".join(HONO_STEP.format(i=i) for i in range(16))
        + "  request = (input: string, init?: RequestInit): Promise<Response> => {\n"
        "    return this.fetch(new Request(input, init));\n  };\n\n"
        "  get = (path: string, handler: Handler): Hono => {\n    this.routes.push({ path });\n    return this;\n  };\n}\n")
HONO_FILES = {
    "src/hono.ts": HONO,
    "src/router.ts": "export class RegExpRouter {\n  add(path: string): void {}\n}\n",
    # unrelated functions of the same names, in files the app does not import
    "benchmarks/utils/get-path.ts": "export function request(url: string): string {\n  return url;\n}\n\n"
                                    "export function getPath(url: string): string {\n  return url.split('?')[0];\n}\n",
    "src/jsx/hooks.ts": "export function getSnapshot(value: unknown): unknown {\n  return value;\n}\n",
    **{f"src/middleware/filler{i}.ts": f"export function middleware{i}(path: string, handler: Handler) {{\n"
                                       f"  const route = path + handler;\n  return [route, {i}];\n}}\n"
       for i in range(20)},
}


@pytest.mark.parametrize("line, name, decoy_file", [
    ("const response = await app.request(", "request", "benchmarks/utils/get-path.ts"),
    ("app.ge", "get", "src/jsx/hooks.ts"),
], ids=["after-app-request-paren", "typing-app-ge"])
def test_a_call_of_a_class_property_carries_the_property(make_repo, smollm2_tokenizer, line, name, decoy_file):
    """`app.request(` (after `const app = new Hono()`) and `app.ge|`: the part of Hono's long class that holds the
    property is packed before an unrelated function of the same name that a file the app does not import defines
    (`request`), and before an imported function used a line above whose name begins the same (`getSnapshot`).
    The property defined nothing, so its chunk came in for its class's import only, after those."""
    app = ("import { Hono } from './hono';\nimport { getSnapshot } from './jsx/hooks';\n\nconst app = new Hono();\n\n"
           "export async function handle(path: string): Promise<Response> {\n  const state = getSnapshot(path);\n"
           f"  {line}\n}}\n")
    files = HONO_FILES | {"src/app.ts": app}
    index = index_repository(make_repo(files))
    rows = app.split("\n")
    row = next(number for number, text in enumerate(rows) if line in text)
    col = rows[row].index(line) + len(line)
    packed = build_completion_prompt(index, smollm2_tokenizer, "src/app.ts", line=row + 1, col=col + 1,
                                     budget_tokens=1024)
    chunks = [index.chunks[n] for n in index.chunk_numbers("src/hono.ts")]
    holding = [c for c in chunks if f"\n  {name} = (" in f"\n{c.text}"]  # (by its text: what the index says aside)
    assert len(chunks) > 2 and len(holding) == 1 and "Hono" not in holding[0].defines, chunks
    place = next((i for i, (path, start) in enumerate(packed.chosen)
                  if path == "src/hono.ts" and start == holding[0].start_line), None)
    assert place is not None, packed.chosen
    decoy = next((i for i, (path, _) in enumerate(packed.chosen) if path == decoy_file), None)
    assert decoy is None or decoy > place, packed.chosen
