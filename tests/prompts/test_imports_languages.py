"""Imported names followed to their definitions in the languages other than Python, as their users write imports:
JavaScript default exports and TypeScript's `.js` specifiers, Go packages bound to their names (and a package's
own files), Rust use trees and `pub use` re-exports, Java static imports, a C header's source file. Each
repository has a decoy: a definition of the same name in a file the code does not import, and code of a similar
vocabulary around it; at a 1,024-token budget the imported definition must come first."""

import pytest

from prompts import build_completion_prompt, index_repository
from prompts.imports import follow_imports, module_files
from prompts.index import parse_file
from prompts.scan import source_file

BUDGET = 1024


def _prompt(make_repo, tokenizer, files: dict[str, str], path: str, marker: str, name: str = "repo"):
    """The index of ``files`` and the prompt for a cursor right after ``marker`` (its first line) in ``path``."""
    index = index_repository(make_repo(files, name=name))
    rows = files[path].split("\n")
    row = next(number for number, text in enumerate(rows) if marker in text)
    col = rows[row].index(marker) + len(marker)
    return index, build_completion_prompt(index, tokenizer, path, line=row + 1, col=col + 1, budget_tokens=BUDGET)


def _place(index, packed, path: str, name: str) -> int | None:
    """Where the chunk of ``path`` defining ``name`` is among the repository chunks the prompt chose (in the order
    chosen: the most relevant first), None when it is not in."""
    starts = {index.chunks[n].start_line for n in index.chunk_numbers(path) if name in index.chunks[n].defines}
    return next((i for i, (chosen, line) in enumerate(packed.chosen) if chosen == path and line in starts), None)


def _comes_first(index, packed, wanted: tuple[str, str], *decoys: tuple[str, str]) -> None:
    place = _place(index, packed, *wanted)
    assert place is not None, packed.chosen
    for decoy in decoys:
        other = _place(index, packed, *decoy)
        assert other is None or other > place, (decoy, packed.chosen)


def _definitions(index, found, bound: str) -> set[tuple[str, str]]:
    return {(index.chunks[n].path, name) for n in found.definitions.get(bound, ()) for name in index.chunks[n].defines}


# JavaScript and TypeScript -------------------------------------------------------------------------------------

def _js_widgets(count: int, extension: str = "js") -> dict[str, str]:
    return {f"src/components/Widget{i}.{extension}": (
        f"export function renderWidget{i}(order, currency) {{\n"
        f"  const price = order.totalCents / 100;\n"
        f"  return `${{currency}} ${{price.toFixed(2)}}`;\n}}\n\n"
        f"export function priceWidget{i}(cents, currency, locale) {{\n"
        f"  const amount = (cents / 100).toFixed(2);\n"
        f"  return `${{amount}} ${{currency}} (${{locale}})`;\n}}\n") for i in range(count)}


def _money_steps(count: int) -> str:
    return "".join(f"export function moneyStep{i}(cents, currency, locale) {{\n  const amount = cents / 100 + {i};\n"
                   f"  return amount.toFixed(2) + ' ' + currency + locale;\n}}\n\n" for i in range(count))


FORMAT_PRICE = ("function formatPrice(cents, currency = 'USD', locale = 'en-US') {\n  const amount = cents / 100;\n"
                "  return new Intl.NumberFormat(locale, { style: 'currency', currency }).format(amount);\n}\n")
LEGACY_FORMAT = "export function formatPrice(amount, symbol) {\n  return symbol + amount.toFixed(2);\n}\n"


def _cart(imports: str, call: str) -> str:
    return (f"{imports}\n\nexport function renderCart(cart, currency) {{\n"
            f"  const total = cart.items.reduce((sum, item) => sum + item.cents, 0);\n  return {call}\n}}\n")


@pytest.mark.parametrize("money, barrel, imports, call", [
    (_money_steps(10) + "export default " + FORMAT_PRICE, {}, "import fmt from '../utils/money';", "fmt("),
    (_money_steps(10) + FORMAT_PRICE + "\nexport default formatPrice;\n", {}, "import fmt from '../utils/money';",
     "fmt("),
    (_money_steps(10) + FORMAT_PRICE + "\nexport { formatPrice as default };\n", {},
     "import fmt from '../utils/money.js';", "fmt("),
    (_money_steps(10) + "export default " + FORMAT_PRICE,
     {"src/utils/index.js": "export { default as formatPrice } from './money';\nexport * from './dates';\n"},
     "import { formatPrice } from '../utils';", "formatPrice("),
], ids=["export-default-function", "export-default-name", "export-as-default", "barrel-default-as-name"])
def test_a_javascript_default_import_is_the_default_exports_definition(make_repo, smollm2_tokenizer, money, barrel,
                                                                      imports, call):
    """`import fmt from './money'` bound the module, so `fmt(` found formatPrice only among the module's ten other
    functions; `export { default as formatPrice }` in a barrel was not followed at all, and a same-named function
    elsewhere came first. The default export is now followed, through `export default name` too."""
    files = _js_widgets(20) | barrel | {
        "src/utils/money.js": money, "src/utils/dates.js": "export function formatDate(date) {\n  return date;\n}\n",
        "src/legacy/format.js": LEGACY_FORMAT, "src/components/Cart.js": _cart(imports, call)}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/components/Cart.js", call)
    found = follow_imports(index, "src/components/Cart.js", "javascript", index.imports("src/components/Cart.js"))
    bound = call.rstrip("(")
    assert ("src/utils/money.js", "formatPrice") in _definitions(index, found, bound)
    _comes_first(index, packed, ("src/utils/money.js", "formatPrice"), ("src/legacy/format.js", "formatPrice"),
                 *[("src/utils/money.js", f"moneyStep{i}") for i in range(10)])


def test_a_default_import_of_an_object_still_binds_the_module(make_repo):
    index = index_repository(make_repo({
        "src/api.js": "function get(url) {\n  return url;\n}\n\nexport default { get };\n",
        "src/app.js": "import api from './api';\n\napi.get('/');\n"}))
    found = follow_imports(index, "src/app.js", "javascript", index.imports("src/app.js"))
    assert found.modules == {"api": ["src/api.js"]} and not found.definitions


def test_typescript_imports_name_the_compiled_js_file_of_a_ts_source(make_repo, smollm2_tokenizer):
    """TypeScript's ES modules import `./money.js` for money.ts: that matched no file, and the same-named function
    of a file not imported came first."""
    ts = (_money_steps(6) + "export " + FORMAT_PRICE).replace("(cents, currency, locale)",
                                                             "(cents: number, currency: string, locale: string)")
    files = _js_widgets(20, "ts") | {"src/utils/money.ts": ts, "src/legacy/format.ts": LEGACY_FORMAT,
                                     "src/cart.ts": _cart("import { formatPrice } from './utils/money.js';",
                                                          "formatPrice(")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/cart.ts", "formatPrice(")
    assert module_files(index.paths, "src/cart.ts", "typescript", "./utils/money.js") == ["src/utils/money.ts"]
    assert module_files(index.paths, "src/cart.ts", "typescript", "@/utils/money.mjs") == ["src/utils/money.ts"]
    _comes_first(index, packed, ("src/utils/money.ts", "formatPrice"), ("src/legacy/format.ts", "formatPrice"))


def _commonjs_steps(count: int, exported: bool = False) -> str:
    """CommonJS twins of _money_steps: declared functions, or (``exported``) functions assigned to ``exports``."""
    head = "exports.moneyStep{i} = function (cents, currency, locale) {{\n" if exported else \
        "function moneyStep{i}(cents, currency, locale) {{\n"
    return "".join((head + "  const amount = cents / 100 + {i};\n  return amount.toFixed(2) + ' ' + currency + locale;"
                    "\n}};\n\n").format(i=i) for i in range(count))


COMMONJS_STEPS = "module.exports = { " + ", ".join(f"moneyStep{i}" for i in range(10))
EXPORTED_PRICE = FORMAT_PRICE.replace("function formatPrice", "exports.formatPrice = function").replace("\n}\n",
                                                                                                       "\n};\n")


@pytest.mark.parametrize("money, barrel, imports, call", [
    (_commonjs_steps(10) + FORMAT_PRICE + "\n" + COMMONJS_STEPS + ", formatPrice };\n", {},
     "const { formatPrice: fmt } = require('../utils/money');", "fmt("),
    (_commonjs_steps(10) + FORMAT_PRICE + "\n" + COMMONJS_STEPS + ", fmt: formatPrice };\n", {},
     "const { fmt } = require('../utils/money');", "fmt("),
    (_commonjs_steps(10, exported=True) + EXPORTED_PRICE, {}, "const { formatPrice } = require('../utils/money');",
     "formatPrice("),
    (_commonjs_steps(10, exported=True) + EXPORTED_PRICE.replace("exports.", "module.exports."), {},
     "const { formatPrice } = require('../utils/money');", "formatPrice("),
    (_commonjs_steps(10, exported=True) + FORMAT_PRICE + "\nexports.fmt = formatPrice;\n", {},
     "const { fmt } = require('../utils/money');", "fmt("),
    (_commonjs_steps(10) + "module.exports = " + FORMAT_PRICE, {}, "const fmt = require('../utils/money');", "fmt("),
    (_commonjs_steps(10) + FORMAT_PRICE + "\nmodule.exports = formatPrice;\n", {},
     "const fmt = require('../utils/money');", "fmt("),
    (_commonjs_steps(10) + FORMAT_PRICE + "\n" + COMMONJS_STEPS + ", formatPrice };\n",
     {"src/utils/index.js": "const { formatPrice } = require('./money');\nconst dates = require('./dates');\n\n"
                            "module.exports = { formatPrice, formatDate: dates.formatDate };\n"},
     "const { formatPrice: fmt } = require('../utils');", "fmt("),
    (_commonjs_steps(10) + FORMAT_PRICE + "\n" + COMMONJS_STEPS + ", formatPrice };\n",
     {"src/utils/index.js": "module.exports = require('./money');\n"},
     "const { formatPrice: fmt } = require('../utils');", "fmt("),
    (_commonjs_steps(10) + "module.exports = " + FORMAT_PRICE,
     {"src/utils/index.js": "module.exports = require('./money');\n"}, "const fmt = require('../utils');", "fmt("),
], ids=["destructure-alias", "exports-object-pair", "exports-dot", "module-exports-dot", "exports-name",
        "module-exports-function", "module-exports-name", "barrel", "barrel-reexport-names", "barrel-reexport-default"])
def test_commonjs_requires_follow_to_what_module_exports_names(make_repo, smollm2_tokenizer, money, barrel, imports,
                                                               call):
    """A `require` bound no name: `const { formatPrice: fmt } = require(...)` read as the module alone, and `exports.x
    = function`, `module.exports = function f` or `module.exports = f` defined nothing a name led to, so `fmt(` found
    the module's other functions, or a same-named function elsewhere, first. A destructured name is now followed to
    its definition (through a barrel's own requires too), and `const fmt = require(...)` to what module.exports is.
    A barrel's `module.exports = require('./money')` (all of money, as its own) was not followed at all."""
    files = _js_widgets(20) | barrel | {
        "src/utils/money.js": money,
        "src/utils/dates.js": "function formatDate(date) {\n  return date;\n}\n\nmodule.exports = { formatDate };\n",
        "src/legacy/format.js": LEGACY_FORMAT, "src/components/Cart.js": _cart(imports, call).replace("export ", "")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/components/Cart.js", call)
    found = follow_imports(index, "src/components/Cart.js", "javascript", index.imports("src/components/Cart.js"))
    bound = call.rstrip("(")
    assert ("src/utils/money.js", "formatPrice") in _definitions(index, found, bound)
    _comes_first(index, packed, ("src/utils/money.js", "formatPrice"), ("src/legacy/format.js", "formatPrice"),
                 *[("src/utils/money.js", f"moneyStep{i}") for i in range(10)])


@pytest.mark.parametrize("imports", ["import fmt from '../utils/money';", "const fmt = require('../utils/money');"],
                         ids=["import", "require"])
def test_a_default_require_counts_at_the_cursor_as_a_default_import_does(make_repo, smollm2_tokenizer, imports):
    """`const fmt = require(...)` read as the file's own variable (an assignment, a top-level binding), whose uses
    count half, and its definition for the base weight alone: the definition of a name used three lines above
    came before `fmt(`'s, where `import fmt from` put it first."""
    default = "export default " if imports.startswith("import") else "module.exports = "
    cart = _cart("const { describeCart } = require('./describe');\n" + imports, "fmt(").replace("export ", "")
    cart = cart.replace("  return fmt(", "  const label = describeCart(cart);\n\n\n\n  return label + fmt(")
    files = _js_widgets(20) | {
        "src/utils/money.js": _commonjs_steps(10) + default + FORMAT_PRICE, "src/components/Cart.js": cart,
        "src/components/describe.js": ("function describeCart(cart) {\n  return cart.items.length + ' items';\n}\n\n"
                                       "module.exports = { describeCart };\n")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/components/Cart.js", "fmt(")
    _comes_first(index, packed, ("src/utils/money.js", "formatPrice"), ("src/components/describe.js", "describeCart"))


def test_a_commonjs_require_of_an_object_binds_the_module(make_repo):
    """`module.exports = { get }` is no definition: `const api = require(...)` binds the module, whose `api.` lifts
    its files, as an ES default import of an object does."""
    index = index_repository(make_repo({
        "src/api.js": "function get(url) {\n  return url;\n}\n\nmodule.exports = { get };\n",
        "src/app.js": "const api = require('./api');\n\napi.get('/');\n"}))
    found = follow_imports(index, "src/app.js", "javascript", index.imports("src/app.js"))
    assert found.modules == {"api": ["src/api.js"]} and not found.definitions


@pytest.mark.parametrize("api, app, modules, definitions", [
    ("export function get(url: string): string {\n  return url;\n}\n",
     "import api = require('./api');\n\napi.get('/');\n", {"api": ["src/api.ts"]}, set()),
    ("function get(url: string): string {\n  return url;\n}\n\nexport = get;\n", "import fetch = require('./api');\n",
     {}, {("src/api.ts", "get")}),
], ids=["module", "export-assignment"])
def test_a_typescript_import_require_binds_the_module_or_what_export_assigns(make_repo, api, app, modules,
                                                                             definitions):
    """TypeScript's `import x = require('./y')` was not read: x bound nothing, and y was not even imported. It binds
    y's `export =` (as CommonJS's `const x = require` binds what module.exports is), else the module itself."""
    index = index_repository(make_repo({"src/api.ts": api, "src/app.ts": "import fs = require('fs');\n" + app}))
    found = follow_imports(index, "src/app.ts", "typescript", index.imports("src/app.ts"))
    assert found.files == {"src/api.ts"} and found.modules == modules
    assert {(index.chunks[n].path, name) for chunks in found.definitions.values() for n in chunks
            for name in index.chunks[n].defines} == definitions


# Go ------------------------------------------------------------------------------------------------------------

def _go_handlers(count: int) -> dict[str, str]:
    return {f"internal/handlers/h{i}.go": (
        f'package handlers\n\nimport "fmt"\n\nfunc HandleOrder{i}(total string, currency string) string {{\n'
        f'\treturn fmt.Sprintf("%s %s", total, currency)\n}}\n\nfunc New{i}(cents int64, currency string) string {{\n'
        f'\treturn fmt.Sprintf("%d %s", cents, currency)\n}}\n') for i in range(count)}


GO_PRICING = """package pricing

import "fmt"

// Price is an amount of money in cents.
type Price struct {
	Cents    int64
	Currency string
}

// New makes a price.
func New(cents int64, currency string) Price {
	return Price{Cents: cents, Currency: currency}
}

// Format renders a price for display.
func Format(p Price, locale string) string {
	return fmt.Sprintf("%s %.2f", p.Currency, float64(p.Cents)/100)
}
"""
GO_DECOYS = {
    "internal/legacy/legacy.go": "package legacy\n\nfunc New(amount float64) float64 {\n\treturn amount\n}\n\n"
                                 "type Price struct {\n\tAmount float64\n}\n",
    "internal/store/store.go": "package store\n\ntype Store struct {\n\tName string\n}\n\n"
                               "func New(name string) *Store {\n\treturn &Store{Name: name}\n}\n",
}


def _go_main(imports: str, line: str) -> str:
    return (f'package main\n\nimport (\n\t"fmt"\n\t"os"\n{imports}\n)\n\nfunc main() {{\n\tname := os.Getenv("SHOP")\n'
            f"\tfmt.Println(name)\n\t{line}\n}}\n")


def test_a_go_import_binds_its_package_name_or_its_alias(make_repo, smollm2_tokenizer):
    """A Go import bound no name (its alias was not even read), so `pr.` at the cursor lifted nothing and the
    package's definitions came after others'."""
    files = _go_handlers(20) | GO_DECOYS | {
        "go.mod": "module github.com/acme/shop\n\ngo 1.22\n", "internal/pricing/pricing.go": GO_PRICING,
        "internal/tax/v2/tax.go": "package tax\n\nfunc Rate(region string) float64 {\n\treturn 0.2\n}\n",
        "cmd/shop/main.go": _go_main('\tpr "github.com/acme/shop/internal/pricing"\n'
                                    '\t"github.com/acme/shop/internal/tax/v2"\n'
                                    '\t. "github.com/acme/shop/internal/store"',
                                    "p := pr.")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "cmd/shop/main.go", "pr.")
    found = follow_imports(index, "cmd/shop/main.go", "go", index.imports("cmd/shop/main.go"))
    assert found.modules == {"pr": ["internal/pricing/pricing.go"], "tax": ["internal/tax/v2/tax.go"]}
    assert "internal/store/store.go" in found.files  # (a dot import binds no name)
    assert packed.chosen[0][0] == "internal/pricing/pricing.go"
    _comes_first(index, packed, ("internal/pricing/pricing.go", "New"), ("internal/legacy/legacy.go", "New"),
                 ("internal/store/store.go", "New"))


def test_go_and_java_files_see_their_own_packages_names_unimported(make_repo, smollm2_tokenizer):
    """`New(` in pricing/tax.go is pricing.New, a file of its own package it never imports; same-named
    definitions of other packages came first. Likewise a Java class of the same package."""
    files = _go_handlers(20) | GO_DECOYS | {
        "internal/pricing/pricing.go": GO_PRICING,
        "internal/pricing/tax.go": "package pricing\n\nfunc WithTax(p Price, rate float64) Price {\n"
                                   "\treturn New(int64(float64(p.Cents)*(1+rate)), \n}\n"}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "internal/pricing/tax.go", "return New(")
    _comes_first(index, packed, ("internal/pricing/pricing.go", "New"), ("internal/legacy/legacy.go", "New"),
                 ("internal/store/store.go", "New"))

    shop = "src/main/java/com/acme/shop/"
    files = _java_handlers(20) | {
        shop + "pricing/Price.java": JAVA_PRICE, shop + "legacy/Price.java": JAVA_LEGACY_PRICE,
        shop + "pricing/Cart.java": _java_cart("com.acme.shop.pricing", "", "Price total = new Price(")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, shop + "pricing/Cart.java", "new Price(", "java")
    _comes_first(index, packed, (shop + "pricing/Price.java", "Price"), (shop + "legacy/Price.java", "Price"))


def test_a_go_import_path_is_the_modules_path_then_a_folder(make_repo):
    """A Go import path is the module's path (go.mod's `module` line) and then a folder below go.mod's; it was read
    as its last two parts, which match no folder where the module path ends with a major version
    (`github.com/go-chi/chi/v5/middleware`: no folder v5/middleware) or where the package is the module's root
    (`github.com/spf13/cobra`, imported by its own doc/ package): neither package was followed."""
    root_go = "package shop\n\nfunc NewRouter() *Router {\n\treturn &Router{}\n}\n\ntype Router struct{}\n"
    files = GO_DECOYS | {
        "go.mod": "module github.com/acme/shop/v2\n\ngo 1.22\n", "shop.go": root_go,
        "pricing/pricing.go": GO_PRICING, "README.md": "# shop\n",
        "examples/demo/go.mod": "module example.com/demo\n\nrequire github.com/acme/shop/v2 v2.0.0\n",
        "examples/demo/main.go": _go_main('\t"github.com/acme/shop/v2"\n\t"example.com/demo/util"', "shop."),
        "examples/demo/util/util.go": "package util\n\nfunc Pad(s string) string {\n\treturn s\n}\n",
        "cmd/shop/main.go": _go_main('\tpr "github.com/acme/shop/v2/pricing"\n'
                                     '\t"github.com/acme/shop/v2"', "r := shop.NewRouter()\n\tp := pr.")}
    index = index_repository(make_repo(files))
    found = follow_imports(index, "cmd/shop/main.go", "go", index.imports("cmd/shop/main.go"))
    assert found.modules == {"pr": ["pricing/pricing.go"], "shop": ["shop.go"]}
    found = follow_imports(index, "examples/demo/main.go", "go", index.imports("examples/demo/main.go"))
    assert found.modules == {"shop": ["shop.go"], "util": ["examples/demo/util/util.go"]}
    # A long-lived index reuses its path table while the same files are indexed: a go.mod saved with another module
    # path must give a new one.
    root = index.root
    (root / "go.mod").write_text("module github.com/acme/store\n")
    index = index.updated({"go.mod": parse_file(root, source_file(root, "go.mod"), 1 << 20)})
    assert index.paths.go_modules["github.com/acme/store"] == ""


def test_a_go_packages_test_files_are_not_what_importing_it_sees(make_repo):
    """A Go package's _test.go files are compiled only into its own tests, never into a package that imports it,
    nor into the package's other files; they were followed as the package's files (chi's mux_test.go: two thirds
    of the package's text, whose chunks shared the weight of `chi.` at the cursor with mux.go's)."""
    files = {"go.mod": "module github.com/acme/shop\n", "pricing/pricing.go": GO_PRICING,
             "pricing/tax.go": "package pricing\n\nfunc WithTax(p Price) Price {\n\treturn p\n}\n",
             "pricing/pricing_test.go": "package pricing\n\nfunc newTestPrice() Price {\n\treturn New(1, \"EUR\")\n}\n",
             "cmd/shop/main.go": _go_main('\t"github.com/acme/shop/pricing"', "p := pricing.")}
    index = index_repository(make_repo(files))
    found = follow_imports(index, "cmd/shop/main.go", "go", index.imports("cmd/shop/main.go"))
    assert found.modules == {"pricing": ["pricing/pricing.go", "pricing/tax.go"]}
    assert "pricing/pricing_test.go" not in found.files
    found = follow_imports(index, "pricing/tax.go", "go", index.imports("pricing/tax.go"))
    assert found.files == {"pricing/pricing.go"}
    found = follow_imports(index, "pricing/pricing_test.go", "go", index.imports("pricing/pricing_test.go"))
    assert found.files == {"pricing/pricing.go", "pricing/tax.go"}   # (its tests see the package's files)


@pytest.mark.parametrize("earlier, line, wanted, other", [
    ('p := pr.New(100, "USD")', "stores := append([]*store.Store{}, store.New(", "store", "pricing"),
    ("s := store.New(name)", "fmt.Println(s.Name, pr.Format(pr.New(", "pricing", "store"),
    ('p := pr.New(100, "USD")', "var s *store.Store = store.New(", "store", "pricing"),
    ("s := store.New(name)", "prices := map[string]pr.Price{s.Name: pr.New(", "pricing", "store"),
], ids=["append-call", "nested-call", "pointer-type", "map-literal"])
def test_a_go_qualified_use_is_a_use_of_that_packages_name(make_repo, smollm2_tokenizer, earlier, line, wanted,
                                                            other):
    """Two imported packages both define New (as Go packages do): `store.New(` at the cursor counted as a use of any
    New, so the other package's, used a line above, could come first. A qualified use, whatever punctuation is
    before it, is now one of the package the qualifier names."""
    files = _go_handlers(20) | GO_DECOYS | {
        "go.mod": "module github.com/acme/shop\n\ngo 1.22\n", "internal/pricing/pricing.go": GO_PRICING,
        "cmd/shop/main.go": _go_main('\tpr "github.com/acme/shop/internal/pricing"\n'
                                     '\t"github.com/acme/shop/internal/store"', f"{earlier}\n\t{line}")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "cmd/shop/main.go", line)
    _comes_first(index, packed, (f"internal/{wanted}/{wanted}.go", "New"), (f"internal/{other}/{other}.go", "New"),
                 ("internal/legacy/legacy.go", "New"))


# Rust ----------------------------------------------------------------------------------------------------------

def _rust_handlers(count: int) -> dict[str, str]:
    return {f"src/handlers/h{i}.rs": (
        f"pub fn handle_order_{i}(total: &str, currency: &str) -> String {{\n"
        f'    format!("{{}} {{}}", total, currency)\n}}\n\n'
        f"pub fn price_label_{i}(cents: i64, currency: &str) -> String {{\n"
        f'    format!("{{:.2}} {{}}", cents as f64 / 100.0, currency)\n}}\n') for i in range(count)}


RUST_FORMAT = """use super::Price;

/// Renders a price for display.
pub fn format_price(price: &Price, locale: &str) -> String {
    format!("{} {:.2} ({})", price.currency, price.cents as f64 / 100.0, locale)
}

pub fn parse_price(text: &str) -> Option<i64> {
    text.trim().parse::<f64>().ok().map(|v| (v * 100.0) as i64)
}
"""
RUST_PRICING = """pub mod format;

pub use format::format_price;
pub use self::format::{parse_price as parse};

/// An amount of money.
pub struct Price {
    pub cents: i64,
    pub currency: String,
}
"""
RUST_LEGACY = ("pub fn format_price(amount: f64, symbol: &str) -> String {\n"
               '    format!("{}{:.2}", symbol, amount)\n}\n\npub struct Price {\n    pub amount: f64,\n}\n')


def _rust_cart(uses: str, line: str) -> str:
    return (f"{uses}\n\npub struct Cart {{\n    pub items: Vec<i64>,\n}}\n\nimpl Cart {{\n"
            f"    pub fn total_label(&self, locale: &str) -> String {{\n"
            f"        let cents: i64 = self.items.iter().sum();\n        {line}\n    }}\n}}\n")


def _rust_repo(pricing: str = RUST_PRICING, pricing_path: str = "src/pricing/mod.rs") -> dict[str, str]:
    return _rust_handlers(20) | {
        "Cargo.toml": '[package]\nname = "shop"\n', "src/lib.rs": "pub mod pricing;\npub mod legacy;\npub mod cart;\n",
        pricing_path: pricing, "src/pricing/format.rs": RUST_FORMAT, "src/legacy/format.rs": RUST_LEGACY}


@pytest.mark.parametrize("pricing, pricing_path, uses", [
    (RUST_PRICING, "src/pricing/mod.rs", "use crate::pricing::{format_price, parse, Price};"),
    (RUST_PRICING, "src/pricing.rs", "use crate::pricing::{format_price, parse, Price};"),
    (RUST_PRICING.replace("pub use format::format_price;", "pub use self::format::*;"), "src/pricing/mod.rs",
     "use crate::pricing::{format_price, parse, Price};"),
    (RUST_PRICING, "src/pricing/mod.rs", "use crate::pricing::{\n    format::{format_price, parse_price as parse},\n"
                                         "    Price,\n};"),
], ids=["pub-use", "pricing.rs", "pub-use-glob", "nested-groups"])
def test_rust_use_trees_follow_pub_use_reexports(make_repo, smollm2_tokenizer, pricing, pricing_path, uses):
    """`pub use format::format_price` in pricing/mod.rs re-exports it; the re-export was not followed (a Rust
    import bound no name), nor a glob re-export, nor a nested group (`{format::{...}, Price}`), and the
    same-named function of legacy/format.rs came first."""
    files = _rust_repo(pricing, pricing_path) | {"src/cart.rs": _rust_cart(uses, "format_price(")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/cart.rs", "format_price(")
    found = follow_imports(index, "src/cart.rs", "rust", index.imports("src/cart.rs"))
    assert _definitions(index, found, "format_price") == {("src/pricing/format.rs", "format_price")}
    assert _definitions(index, found, "parse") == {("src/pricing/format.rs", "parse_price")}
    assert _definitions(index, found, "Price") == {(pricing_path, "Price")}
    _comes_first(index, packed, ("src/pricing/format.rs", "format_price"), ("src/legacy/format.rs", "format_price"))


def test_rust_paths_resolve_from_the_crate_root_the_file_and_its_parent(make_repo, smollm2_tokenizer):
    """`self::`, `super::` and `mod m;` were looked up anywhere by their last parts, so legacy/format.rs was as
    good as pricing/format.rs; in src/pricing.rs `mod format;` is src/pricing/format.rs; `use crate::pricing;`
    binds a module, and `pricing::` at the cursor lifts it."""
    files = _rust_repo(pricing_path="src/pricing.rs") | {"src/cart.rs": _rust_cart("use crate::pricing;", "pricing::")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/cart.rs", "pricing::")

    def resolve(path, module):
        return module_files(index.paths, path, "rust", module)

    assert resolve("src/pricing.rs", "format") == ["src/pricing/format.rs"]  # (`mod format;`)
    assert resolve("src/pricing/tax.rs", "super::format") == ["src/pricing/format.rs"]
    assert resolve("src/pricing.rs", "self::format::format_price") == ["src/pricing/format.rs"]
    assert resolve("src/cart.rs", "crate::legacy::format") == ["src/legacy/format.rs"]
    found = follow_imports(index, "src/cart.rs", "rust", index.imports("src/cart.rs"))
    assert found.modules == {"pricing": ["src/pricing.rs"]}
    assert packed.chosen[0][0] == "src/pricing.rs"


RUST_PRICE_ITEMS = """/// An amount of money.
pub struct Price {
    pub cents: i64,
    pub currency: String,
}

/// Renders a price for display.
pub fn format_price(price: &Price, locale: &str) -> String {
    format!("{} {:.2} ({})", price.currency, price.cents as f64 / 100.0, locale)
}
"""
# The decoy: the same definitions in a module not imported (their comments apart: ranking drops a chunk whose text
# is another's), in a file listed first (ties keep the index's order).
RUST_CONFIG = "/// Settings of a shop.\npub struct Config {\n    pub locale: String,\n}\n"
RUST_TWINS = (RUST_CONFIG + "\n" + RUST_PRICE_ITEMS).replace("/// ", "/// Legacy: ")
RUST_PRICE_TESTS = """{uses}

#[test]
fn labels_a_price_in_its_currency() {{
    let config = Config {{ locale: String::from("en-US") }};
    let cents: i64 = 1999;
    {line}
}}
"""


@pytest.mark.parametrize("uses, line, wanted", [
    ("use super::Price;\nuse crate::Config;", "let price = Price {", ("src/pricing.rs", "Price")),
    ("use super::{format_price, Price};\nuse crate::Config;", "let label = format_price(",
     ("src/pricing/format.rs", "format_price")),
    ("use super::*;\nuse crate::Config;", "let price = Price {", ("src/pricing.rs", "Price")),
    ("use super::Price;\nuse crate::Config;", "let config = Config {", ("src/lib.rs", "Config")),
], ids=["super-name", "super-group", "super-glob", "crate-name"])
def test_rust_super_and_crate_paths_name_items_of_the_parent_module_or_crate_root(make_repo, smollm2_tokenizer,
                                                                                 uses, line, wanted):
    """`use super::Price` (or `super::{...}`, `super::*`, `crate::Config`) is a path of one keyword and a name: it was
    taken for `mod super;`, a child module file named super.rs, and matched nothing, so another module's
    same-named definitions came first. It names an item of the parent module's file (src/pricing.rs) or of the
    crate root (src/lib.rs)."""
    files = _rust_repo(pricing_path="src/pricing.rs") | {
        "src/lib.rs": "pub mod legacy;\npub mod pricing;\n\n" + RUST_CONFIG,
        "src/pricing.rs": RUST_PRICING + "\n#[cfg(test)]\nmod tests;\n", "src/legacy.rs": RUST_TWINS,
        "src/pricing/tests.rs": RUST_PRICE_TESTS.format(uses=uses, line=line)}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/pricing/tests.rs", line)
    found = follow_imports(index, "src/pricing/tests.rs", "rust", index.imports("src/pricing/tests.rs"))
    assert {"src/pricing.rs", "src/lib.rs"} <= found.files and "src/legacy.rs" not in found.files
    _comes_first(index, packed, wanted, ("src/legacy.rs", wanted[1]))


RUST_CART = """mod helpers;

pub struct Cart {
    pub items: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::helpers::make_cart;
    use super::super::pricing::Price;

    #[test]
    fn sums_its_items() {
        let cart = make_cart(
    }
}
"""


def test_rust_paths_in_an_inline_module_start_one_module_down(make_repo, smollm2_tokenizer):
    """In cart.rs's inline `mod tests`, `super::` is cart itself: `super::helpers::make_cart` is cart/helpers.rs
    (`mod helpers;`), but was resolved from the file's own level, to the crate's src/helpers.rs, whose same-named
    function came first; `super::*` is the file's own items, not the crate root's."""
    files = _rust_repo(pricing_path="src/pricing.rs") | {
        "src/lib.rs": "pub mod pricing;\npub mod cart;\npub mod helpers;\n\npub use helpers::*;\n",
        "src/helpers.rs": "pub fn make_cart(total: i64) -> Vec<i64> {\n    vec![total]\n}\n",
        "src/cart/helpers.rs": "use super::Cart;\n\npub fn make_cart(items: &[i64]) -> Cart {\n"
                               "    Cart { items: items.to_vec() }\n}\n",
        "src/cart.rs": RUST_CART}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/cart.rs", "make_cart(")
    found = follow_imports(index, "src/cart.rs", "rust", index.imports("src/cart.rs"))
    assert _definitions(index, found, "make_cart") == {("src/cart/helpers.rs", "make_cart")}
    assert _definitions(index, found, "Price") == {("src/pricing.rs", "Price")}
    assert not {"src/lib.rs", "src/helpers.rs"} & found.files
    _comes_first(index, packed, ("src/cart/helpers.rs", "make_cart"), ("src/helpers.rs", "make_cart"))




@pytest.mark.parametrize("manifest, crate", [
    ('[package]\nname = "store-core"\nversion = "0.1.0"\n', "store_core"),
    ('[package]\nname = "store-core"\n\n[lib]\nname = "core_lib"\n', "core_lib"),
    ('[package]\nname = "store-core"\n\n[lib]\npath = "lib/core.rs"\n', "store_core"),
], ids=["package-name", "lib-name", "lib-path"])
def test_rust_paths_of_a_workspace_crate_resolve_to_that_crates_sources(make_repo, smollm2_tokenizer, manifest, crate):
    """`use store_core::pricing::format_price` names a member crate of the workspace (crates/store-core, its package
    name's hyphen an underscore); the path was looked for as a folder store_core/pricing and matched nothing, so the
    web crate's own legacy function came first."""
    root = "crates/store-core/" + ("lib" if "lib/core.rs" in manifest else "src")
    files = _rust_handlers(20) | {
        "Cargo.toml": '[workspace]\nmembers = ["crates/*"]\n',
        "crates/store-core/Cargo.toml": manifest,
        f"{root}/{'core.rs' if root.endswith('lib') else 'lib.rs'}": "pub mod pricing;\n\npub struct Config {\n"
                                                                     "    pub locale: String,\n}\n",
        f"{root}/pricing.rs": RUST_PRICE_ITEMS,
        "crates/shop-web/Cargo.toml": '[package]\nname = "shop-web"\n\n[dependencies]\n'
                                      'store-core = { path = "../store-core" }\n',
        "crates/shop-web/src/lib.rs": "pub mod cart;\npub mod legacy;\n",
        "crates/shop-web/src/legacy.rs": RUST_TWINS,
        "crates/shop-web/src/cart.rs": _rust_cart(f"use {crate}::pricing::{{format_price, Price}};\n"
                                                  f"use {crate}::Config;", "format_price(")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "crates/shop-web/src/cart.rs", "format_price(")
    found = follow_imports(index, "crates/shop-web/src/cart.rs", "rust", index.imports("crates/shop-web/src/cart.rs"))
    assert _definitions(index, found, "format_price") == {(f"{root}/pricing.rs", "format_price")}
    assert _definitions(index, found, "Config") == {(root + ("/core.rs" if root.endswith("lib") else "/lib.rs"),
                                                     "Config")}
    _comes_first(index, packed, (f"{root}/pricing.rs", "format_price"),
                 ("crates/shop-web/src/legacy.rs", "format_price"))


def test_a_renamed_workspace_crate_reaches_a_long_lived_index(make_repo):
    """A long-lived index reuses its path table while the same files are indexed; a Cargo.toml saved with another
    crate name must give a new one, or `use` paths keep resolving by the old name."""
    root = make_repo({"crates/store-core/Cargo.toml": '[package]\nname = "store-core"\n',
                      "crates/store-core/src/lib.rs": RUST_PRICE_ITEMS,
                      "crates/shop-web/src/lib.rs": "use money::format_price;\n"})
    index = index_repository(root)
    assert index.paths.crates == {"store_core": "crates/store-core/src/lib.rs"}
    (root / "crates/store-core/Cargo.toml").write_text('[package]\nname = "money"\n')
    index = index.updated({"crates/store-core/Cargo.toml": parse_file(root, source_file(root, "crates/store-core/"
                                                                                         "Cargo.toml"), 1 << 20)})
    assert index.paths.crates == {"money": "crates/store-core/src/lib.rs"}
    found = follow_imports(index, "crates/shop-web/src/lib.rs", "rust", index.imports("crates/shop-web/src/lib.rs"))
    assert _definitions(index, found, "format_price") == {("crates/store-core/src/lib.rs", "format_price")}


def test_a_rust_exported_macro_is_an_item_of_its_crates_root(make_repo):
    """`#[macro_export]` puts a macro at its crate's root wherever in the crate it is defined, so a test or another
    crate writes `use shop::price;` (serde_json's tests: `use serde_json::json;`); the crate's lib.rs defines no
    `price`, and the name was followed nowhere. A macro not exported, or one of another crate, is no such item."""
    macro = "#[macro_export]\nmacro_rules! price {\n    ($cents:expr) => {\n        $cents as f64 / 100.0\n    };\n}\n"
    files = {"Cargo.toml": '[package]\nname = "shop"\n', "src/lib.rs": "#[macro_use]\nmod macros;\npub mod cart;\n",
             "src/macros.rs": macro, "src/cart.rs": "macro_rules! price {\n    () => { 0 };\n}\n",
             "other/Cargo.toml": '[package]\nname = "other"\n', "other/src/lib.rs": macro,
             "tests/prices.rs": "use shop::price;\n\n#[test]\nfn cents() {\n    assert_eq!(price!(250), 2.5);\n}\n"}
    index = index_repository(make_repo(files))
    found = follow_imports(index, "tests/prices.rs", "rust", index.imports("tests/prices.rs"))
    assert _definitions(index, found, "price") == {("src/macros.rs", "price")}


# Java ----------------------------------------------------------------------------------------------------------

def _java_handlers(count: int) -> dict[str, str]:
    return {f"src/main/java/com/acme/shop/web/OrderHandler{i}.java": (
        f"package com.acme.shop.web;\n\npublic class OrderHandler{i} {{\n"
        f"    public static String format(long cents, String currency) {{\n"
        f'        return String.format("%.2f %s", cents / 100.0, currency);\n    }}\n\n'
        f"    public Price price(long cents) {{\n        return null;\n    }}\n}}\n") for i in range(count)}


JAVA_FORMATTER = """package com.acme.shop.pricing;

import java.util.Locale;

/** Renders prices for display. */
public final class PriceFormatter {
    private PriceFormatter() {}

    /** Formats cents in a currency. */
    public static String format(long cents, String currency, Locale locale) {
        return String.format(locale, "%s %.2f", currency, cents / 100.0);
    }
}
"""
JAVA_PRICE = ("package com.acme.shop.pricing;\n\npublic record Price(long cents, String currency) {\n"
              "    public Price plus(Price other) {\n"
              "        return new Price(cents + other.cents, currency);\n    }\n}\n")
JAVA_LEGACY_PRICE = "package com.acme.shop.legacy;\n\npublic class Price {\n    public double amount;\n}\n"
JAVA_LEGACY_FORMATTER = ("package com.acme.shop.legacy;\n\npublic class PriceFormatter {\n"
                         "    public static String format(double amount, String symbol) {\n"
                         "        return symbol + amount;\n    }\n}\n")


def _java_cart(package: str, imports: str, line: str) -> str:
    return (f"package {package};\n\nimport java.util.List;\nimport java.util.Locale;\n{imports}\n\n"
            f"public class Cart {{\n    private final List<Long> items;\n\n"
            f"    public Cart(List<Long> items) {{\n        this.items = items;\n    }}\n\n"
            f"    public String totalLabel(Locale locale) {{\n"
            f"        long cents = items.stream().mapToLong(Long::longValue).sum();\n        {line}\n    }}\n}}\n")


def test_a_java_static_import_names_a_member_of_its_class(make_repo, smollm2_tokenizer):
    """`import static com.acme.shop.pricing.PriceFormatter.format;` named no file (the path ends with a member, not
    a class), so `format(` found the legacy class's method first."""
    shop = "src/main/java/com/acme/shop/"
    files = _java_handlers(20) | {
        shop + "pricing/PriceFormatter.java": JAVA_FORMATTER,
        shop + "legacy/PriceFormatter.java": JAVA_LEGACY_FORMATTER,
        shop + "cart/Cart.java": _java_cart("com.acme.shop.cart",
                                            "import static com.acme.shop.pricing.PriceFormatter.format;",
                                            "return format(")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, shop + "cart/Cart.java", "return format(")
    found = follow_imports(index, shop + "cart/Cart.java", "java", index.imports(shop + "cart/Cart.java"))
    assert _definitions(index, found, "format") >= {(shop + "pricing/PriceFormatter.java", "format")}
    _comes_first(index, packed, (shop + "pricing/PriceFormatter.java", "format"),
                 (shop + "legacy/PriceFormatter.java", "format"))


# C and C++ -----------------------------------------------------------------------------------------------------

C_HEADER = """#ifndef SHOP_PRICING_H
#define SHOP_PRICING_H

#include <stddef.h>

typedef struct price {
    long cents;
    const char *currency;
} price_t;

/* Renders a price for display into out; returns the length written. */
int format_price(const price_t *price, const char *locale, char *out, size_t size);

#endif
"""
C_SOURCE = """#include <stdio.h>
#include "shop/pricing.h"

int format_price(const price_t *price, const char *locale, char *out, size_t size) {
    (void)locale;
    return snprintf(out, size, "%s %.2f", price->currency, price->cents / 100.0);
}
"""
C_LEGACY = """#include <stdio.h>

int format_price(double amount, const char *symbol, char *out, size_t size) {
    return snprintf(out, size, "%s%.2f", symbol, amount);
}
"""


@pytest.mark.parametrize("extension", ["c", "cpp"])
def test_a_c_headers_declarations_bring_their_source_files_definitions(make_repo, smollm2_tokenizer, extension):
    """cart.c includes shop/pricing.h, which declares format_price; its definition is in src/pricing.c, which
    nothing includes, so a same-named function elsewhere came before it."""
    handlers = {f"src/handlers/h{i}.{extension}": (
        f'#include <stdio.h>\n\nint price_label_{i}(long cents, const char *currency, char *out, size_t size) {{\n'
        f'    return snprintf(out, size, "%.2f %s", cents / 100.0, currency);\n}}\n') for i in range(20)}
    cart = ('#include <string.h>\n#include "shop/pricing.h"\n\n'
            "int cart_total_label(const long *items, size_t count, char *out, size_t size) {\n"
            '    price_t total = {0, "USD"};\n    for (size_t i = 0; i < count; i++) {\n'
            "        total.cents += items[i];\n    }\n    return format_price(\n}\n")
    source, legacy, path = f"src/pricing.{extension}", f"src/legacy/format.{extension}", f"src/cart.{extension}"
    files = handlers | {"include/shop/pricing.h": C_HEADER, source: C_SOURCE, legacy: C_LEGACY,
                        f"third_party/money/pricing.{extension}": C_LEGACY.replace("stdio.h", "money.h"), path: cart}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, path, "format_price(")
    found = follow_imports(index, path, "cpp" if extension == "cpp" else "c", index.imports(path))
    assert source in found.files and f"third_party/money/pricing.{extension}" not in found.files  # (not including it)
    _comes_first(index, packed, ("include/shop/pricing.h", "format_price"), (legacy, "format_price"))
    _comes_first(index, packed, (source, "format_price"), (legacy, "format_price"))
