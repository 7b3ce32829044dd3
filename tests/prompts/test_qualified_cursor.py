"""A cursor after a qualifier (`pr.Ne|`, `crate::cache::Sto|`, or right after the dot: `pr.|`): the module the
qualifier names comes first, and of it the definitions whose names begin with the word being typed. Each
repository has a second imported module whose definition of a name with the same beginning is used on the line
above the cursor, an unimported twin of the wanted definition, and filler files of a similar vocabulary; at a
1,024-token budget the wanted definition must come first."""

import pytest

from prompts import build_completion_prompt, index_repository
from prompts.ranking import cursor_terms

BUDGET = 1024


def _prompt(make_repo, tokenizer, files: dict[str, str], path: str, marker: str):
    """The index of ``files`` and the prompt for a cursor right after ``marker`` (on its first line) in ``path``."""
    index = index_repository(make_repo(files))
    rows = files[path].split("\n")
    row = next(number for number, text in enumerate(rows) if marker in text)
    col = rows[row].index(marker) + len(marker)
    return index, build_completion_prompt(index, tokenizer, path, line=row + 1, col=col + 1, budget_tokens=BUDGET)


def _place(index, packed, path: str, name: str | None = None) -> int | None:
    """Where the first chunk of ``path`` (defining ``name``, if given) is among the repository chunks the prompt
    chose, most relevant first; None when none is in."""
    starts = {index.chunks[n].start_line for n in index.chunk_numbers(path)
              if name is None or name in index.chunks[n].defines}
    return next((i for i, (chosen, line) in enumerate(packed.chosen) if chosen == path and line in starts), None)


def _comes_first(index, packed, wanted: tuple[str, ...], *decoys: tuple[str, ...]) -> None:
    place = _place(index, packed, *wanted)
    assert place is not None, packed.chosen
    for decoy in decoys:
        other = _place(index, packed, *decoy)
        assert other is None or other > place, (decoy, packed.chosen)


def _fillers(folder: str, extension: str, template: str, count: int = 20) -> dict[str, str]:
    return {f"{folder}/filler{i}.{extension}": template.format(i=i) for i in range(count)}


# Python ----------------------------------------------------------------------------------------------------------

PY_PRICING = "".join(f"def price_step{i}(cents, currency):\n    return cents / 100 + {i}, currency\n\n\n"
                     for i in range(10)) + (
    "def new_price(cents, currency='USD'):\n    return {'cents': cents, 'currency': currency}\n\n\n"
    "def format_price(price, locale):\n    return f\"{price['currency']} {price['cents'] / 100:.2f}\"\n")
PY_FILES = _fillers("misc", "py", "def store_label{i}(name, cents):\n    return name + str(cents)\n\n\n"
                          "def price_label{i}(cents, currency):\n    return str(cents / 100) + currency\n") | {
    "shop/__init__.py": "", "shop/pricing.py": PY_PRICING,
    "shop/store.py": "def new_store(name):\n    return {'name': name}\n",
    "legacy/old_pricing.py": "def new_price(amount, symbol):\n    return symbol + str(amount)\n"}


def _py_app(imports: str, line: str) -> str:
    return (f"{imports}\nfrom shop import store\n\n\ndef open_shop(name, cents):\n    s = store.new_store(name)\n"
            f"    {line}\n    return s, p\n")


@pytest.mark.parametrize("imports, line, package", [
    ("import shop.pricing as pr", "p = pr.new_", ""),
    ("from shop import pricing as pr", "p = pr.new_", ""),
    ("import shop.pricing", "p = shop.pricing.new_", ""),
    ("import shop.pricing as pr", "p = pr.New_", ""),
    ("import shop as pr", "p = pr.new_", "from .pricing import format_price, new_price\n"),
    ("import shop as pr", "p = pr.new_", "from .pricing import *\n"),
], ids=["import-as", "from-import-as", "dotted-module", "other-case", "package-reexport", "package-star"])
def test_a_partly_typed_python_name_after_a_module_is_that_modules(make_repo, smollm2_tokenizer, imports, line,
                                                                   package):
    """`pr.new_|` dropped its partial word and its qualifier: nothing said pricing, and store's new_store, used a line
    above, came first. The definitions of pricing whose names begin with `new_` now do (in any case where none
    begins as typed), also where a package re-exports them."""
    files = PY_FILES | {"app/main.py": _py_app(imports, line), "shop/__init__.py": package}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "app/main.py", line)
    _comes_first(index, packed, ("shop/pricing.py", "new_price"), ("shop/store.py", "new_store"),
                 ("legacy/old_pricing.py", "new_price"), ("shop/pricing.py", "format_price"),
                 *[("shop/pricing.py", f"price_step{i}") for i in range(10)])


@pytest.mark.parametrize("line, col, qualifier, partial", [
    ("p = pr.new_", None, "pr", "new_"),
    ("p = pr.", None, "pr", ""),
    ("p = shop.pricing.Ne", None, "shop.pricing", "Ne"),
    ("let s = crate::cache::Sto", None, "crate::cache", "Sto"),
    ("x = fmt.Println(a)", 10, "fmt", "Pr"),     # (the word's rest after the cursor is not part of it)
    ("x = pr.new_ + 1", 11, "pr", "new_"),
    ("x = new_", None, None, ""),
    ("x = 1.5", None, None, ""),
], ids=["partial", "dot", "dotted", "rust-path", "inside-a-word", "mid-line", "unqualified", "number"])
def test_the_cursor_terms_say_the_qualifier_and_the_partial_word_after_it(line, col, qualifier, partial):
    terms = cursor_terms([line], 0, len(line) if col is None else col, frozenset())
    assert (terms.qualifier, terms.partial) == (qualifier, partial)
    assert partial == "" or partial not in terms.weights     # (the ranking's identifiers still leave it out)


# Go --------------------------------------------------------------------------------------------------------------

GO_PRICING = ("package pricing\n\nimport \"fmt\"\n\ntype Price struct {\n\tCents    int64\n\tCurrency string\n}\n\n"
              "func New(cents int64, currency string) Price {\n\treturn Price{Cents: cents, Currency: currency}\n}\n\n"
              "func Format(p Price) string {\n\treturn fmt.Sprintf(\"%s %.2f\", p.Currency, float64(p.Cents)/100)\n}\n")
GO_FILES = _fillers("misc", "go", "package misc\n\nfunc HandleOrder{i}(total string, currency string) string {{\n"
                                  "\treturn total + currency\n}}\n\n"
                                  "func NewLabel{i}(cents int64) int64 {{\n\treturn cents\n}}\n") | {
    "go.mod": "module github.com/acme/shop\n\ngo 1.22\n", "internal/pricing/pricing.go": GO_PRICING,
    "internal/store/store.go": "package store\n\ntype Store struct {\n\tName string\n}\n\n"
                               "func New(name string) *Store {\n\treturn &Store{Name: name}\n}\n",
    "internal/legacy/legacy.go": "package legacy\n\nfunc New(amount float64) float64 {\n\treturn amount\n}\n"}


def test_a_partly_typed_go_name_after_a_package_is_that_packages(make_repo, smollm2_tokenizer):
    """`pr.Ne|`: store.New, used a line above, came first, though the package being typed is pricing."""
    main = ('package main\n\nimport (\n\t"fmt"\n\tpr "github.com/acme/shop/internal/pricing"\n'
            '\t"github.com/acme/shop/internal/store"\n)\n\nfunc main() {\n\ts := store.New("shop")\n'
            "\tp := pr.Ne\n\tfmt.Println(s, p)\n}\n")
    files = GO_FILES | {"cmd/shop/main.go": main}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "cmd/shop/main.go", "pr.Ne")
    _comes_first(index, packed, ("internal/pricing/pricing.go", "New"), ("internal/store/store.go", "New"),
                 ("internal/legacy/legacy.go", "New"), ("internal/pricing/pricing.go", "Format"))


# JavaScript and TypeScript ---------------------------------------------------------------------------------------

def _js_money(exports: str) -> str:
    steps = "".join(f"function moneyStep{i}(cents, currency) {{\n  return cents / 100 + {i} + currency;\n}}\n\n"
                    for i in range(10))
    return (steps + "function newPrice(cents, currency) {\n  return { cents, currency };\n}\n\n"
            "function formatPrice(price, locale) {\n  return price.currency + (price.cents / 100).toFixed(2);\n}\n\n"
            + exports.format(names=", ".join([*(f"moneyStep{i}" for i in range(10)), "newPrice", "formatPrice"])))


JS_FILES = _fillers("src", "js", "export function openWidget{i}(name, cents) {{\n  const s = name + cents;\n"
                                "  return [s, cents];\n}}\n\n"
                                "export function newWidget{i}(cents) {{\n  return cents;\n}}\n") | {
    "src/store.js": "function newStore(name) {\n  return { name };\n}\n\nmodule.exports = { newStore };\n",
    "src/legacy/money.js": "function newPrice(amount, symbol) {\n  return symbol + amount;\n}\n\n"
                           "module.exports = { newPrice };\n"}


def _js_cart(imports: str, line: str) -> str:
    return (f"{imports}\nconst {{ newStore }} = require('./store');\n\nfunction openCart(name, cents) {{\n"
            f"  const s = newStore(name);\n  {line}\n  return [s, p];\n}}\n")


@pytest.mark.parametrize("money, imports, extension", [
    ("export {{ {names} }};\n", "import * as pr from './utils/money';", "js"),
    ("module.exports = {{ {names} }};\n", "const pr = require('./utils/money');", "js"),
    ("export {{ {names} }};\n", "import * as pr from './utils/money.js';", "ts"),
    ("export {{ {names} }};\n", "import pr = require('./utils/money');", "ts"),
], ids=["namespace-import", "require", "ts-namespace-import", "ts-import-require"])
def test_a_partly_typed_javascript_name_after_a_module_is_that_modules(make_repo, smollm2_tokenizer, money, imports,
                                                                       extension):
    """`pr.newP|` lost its qualifier (only `pr.|` named the module): store's newStore, used a line above, came first.
    TypeScript's `import pr = require(...)` was not read at all."""
    files = JS_FILES | {f"src/utils/money.{extension}": _js_money(money),
                        f"src/cart.{extension}": _js_cart(imports, "const p = pr.newP")}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, f"src/cart.{extension}", "pr.newP")
    _comes_first(index, packed, (f"src/utils/money.{extension}", "newPrice"), ("src/store.js", "newStore"),
                 ("src/legacy/money.js", "newPrice"), (f"src/utils/money.{extension}", "formatPrice"),
                 *[(f"src/utils/money.{extension}", f"moneyStep{i}") for i in range(10)])


# Rust ------------------------------------------------------------------------------------------------------------

RUST_CACHE = "".join(f"pub fn cache_step_{i}(key: &str) -> usize {{\n    key.len() + {i}\n}}\n\n"
                     for i in range(10)) + (
    "pub struct Store {\n    pub entries: Vec<String>,\n}\n\n"
    "impl Store {\n    pub fn new() -> Store {\n        Store { entries: Vec::new() }\n    }\n}\n\n"
    "pub fn evict(store: &mut Store) {\n    store.entries.clear();\n}\n")
RUST_FILES = _fillers("src", "rs", "pub fn open_stall_{i}(name: &str) -> usize {{\n    let stock = name.len();\n"
                                  "    stock\n}}\n\n"
                                  "pub struct Stock{i} {{\n    pub count: i64,\n}}\n") | {
    "Cargo.toml": '[package]\nname = "shop"\n', "src/lib.rs": "pub mod cache;\npub mod stock;\npub mod legacy;\n",
    "src/cache.rs": RUST_CACHE,
    "src/stock.rs": "pub struct Stock {\n    pub count: i64,\n}\n\nimpl Stock {\n    pub fn empty() -> Stock {\n"
                    "        Stock { count: 0 }\n    }\n}\n",
    "src/legacy.rs": "pub struct Store {\n    pub rows: Vec<u8>,\n}\n"}


def _rust_app(uses: str, line: str) -> str:
    return (f"{uses}\nuse crate::stock::Stock;\n\npub fn open_shop(name: &str) -> usize {{\n"
            f"    let stock = Stock::empty();\n    {line}\n    name.len()\n}}\n")


@pytest.mark.parametrize("uses, line", [
    ("", "let store = crate::cache::Sto"),
    ("use crate::cache;", "let store = cache::Sto"),
    ("use crate::cache as kv;", "let store = kv::Sto"),
], ids=["crate-path", "used-module", "renamed-module"])
def test_a_partly_typed_rust_name_after_a_module_path_is_that_modules(make_repo, smollm2_tokenizer, uses, line):
    """`crate::cache::Sto|` lost its path (and `cache::` was looked up only when bound by a `use`): Stock, used a
    line above, came first, and legacy's Store could."""
    files = RUST_FILES | {"src/app.rs": _rust_app(uses, line)}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/app.rs", line)
    _comes_first(index, packed, ("src/cache.rs", "Store"), ("src/stock.rs", "Stock"), ("src/legacy.rs", "Store"),
                 ("src/cache.rs", "evict"), *[("src/cache.rs", f"cache_step_{i}") for i in range(10)])


# Right after the dot ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("files, path, line, module, fillers", [
    (JS_FILES | {"src/utils/money.ts": _js_money("export {{ {names} }};\n"),
                 "src/cart.ts": _js_cart("import pr = require('./utils/money');", "const p = pr.")},
     "src/cart.ts", "pr.", "src/utils/money.ts", "src/filler{i}.js"),
    (RUST_FILES | {"src/app.rs": _rust_app("", "let store = crate::cache::")},
     "src/app.rs", "crate::cache::", "src/cache.rs", "src/filler{i}.rs"),
], ids=["ts-import-require", "rust-crate-path"])
def test_right_after_a_qualifier_its_module_outranks_unrelated_files(make_repo, smollm2_tokenizer, files, path, line,
                                                                     module, fillers):
    """`pr.|` lifted the module only when `pr` was bound to one, which `import pr = require` did not, nor a Rust path
    (`crate::cache::|`) that no `use` had bound: files of a similar vocabulary came before most of the module."""
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, path, line)
    places = [i for i, (chosen, _) in enumerate(packed.chosen) if chosen == module]
    others = [i for i, (chosen, _) in enumerate(packed.chosen) if chosen in {fillers.format(i=i) for i in range(20)}]
    assert len(places) == len(index.chunk_numbers(module)) and max(places) < min(others, default=len(packed.chosen))



def test_right_after_a_modules_dot_its_names_the_file_already_uses_come_first(make_repo, smollm2_tokenizer):
    """`pr.|` lifted all of pricing's chunks alike, a little each, and store's new_store, used on the line above, came
    first; of the module's names, those the file has used already (far above: no nearness) are the likeliest next."""
    earlier = ("def first_price(cents):\n    label = pr.format_price(pr.price_step3(cents, 'USD'), 'en')\n"
               + "    label = label.strip()\n" * 70 + "    return label\n\n\n")
    app = _py_app("import shop.pricing as pr", "p = pr.").replace("\n\n\ndef open_shop", "\n\n\n" + earlier
                                                                           + "def open_shop")
    files = PY_FILES | {"app/main.py": app}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "app/main.py", "p = pr.")
    _comes_first(index, packed, ("shop/pricing.py", "format_price"), ("shop/store.py", "new_store"),
                 ("shop/pricing.py", "new_price"), *[(f"misc/filler{i}.py",) for i in range(20)])
    _comes_first(index, packed, ("shop/pricing.py", "price_step3"), ("shop/store.py", "new_store"))


# After a type's qualifier ----------------------------------------------------------------------------------------

RUST_STORE_OPS = ("use crate::cache::Store;\n\nimpl Store {\n    pub fn new() -> Store {\n"
                  "        Store { entries: Vec::new() }\n    }\n}\n\n"
                  "impl Store {\n    pub fn evict(&mut self) {\n        self.entries.clear();\n    }\n}\n")
RUST_TYPE_FILES = RUST_FILES | {
    "src/lib.rs": "pub mod cache;\npub mod cache_ops;\npub mod stock;\npub mod legacy;\npub mod names;\n",
    "src/cache.rs": "".join(f"pub fn cache_step_{i}(key: &str) -> usize {{\n    key.len() + {i}\n}}\n\n"
                            for i in range(10)) + "pub struct Store {\n    pub entries: Vec<String>,\n}\n",
    "src/cache_ops.rs": RUST_STORE_OPS,
    "src/legacy.rs": "pub struct Store {\n    pub rows: Vec<u8>,\n}\n\n"
                     "impl Store {\n    pub fn new() -> Store {\n        Store { rows: Vec::new() }\n    }\n}\n",
    "src/names.rs": "pub fn new_store_name(name: &str) -> String {\n    name.to_string()\n}\n"}


@pytest.mark.parametrize("uses, line", [
    ("use crate::cache::Store;", "let store = Store::ne"),
    ("use crate::cache::Store;", "let store = Store::"),
    ("", "let store = crate::cache::Store::ne"),
], ids=["partial", "right-after", "type-path"])
def test_a_partly_typed_rust_name_after_a_type_is_its_associated_function(make_repo, smollm2_tokenizer, uses, line):
    """`Store::ne|` named no module: Stock::empty, used a line above, came first, and so could legacy's own
    `Store::new` or a free `new_store_name`. The `impl Store` blocks of the Store the file uses, here in another
    file than the struct, now do: the one defining `new` first; right after `::`, both before unrelated code."""
    files = RUST_TYPE_FILES | {"src/app.rs": _rust_app(uses, line)}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/app.rs", line)
    decoys = [("src/legacy.rs", "new"), ("src/names.rs", "new_store_name"),
              *[("src/cache.rs", f"cache_step_{i}") for i in range(10)], *[(f"src/filler{i}.rs",) for i in range(20)]]
    if line.endswith("::"):     # (nothing typed: Stock's impl, just used, may come first, as after a module)
        for member in ("new", "evict"):
            _comes_first(index, packed, ("src/cache_ops.rs", member), *decoys)
    else:
        _comes_first(index, packed, ("src/cache_ops.rs", "new"), ("src/stock.rs", "Stock"),
                     ("src/cache_ops.rs", "evict"), *decoys)


PY_STEP = ("    def step{i}(self, factor, rounding='half-even'):\n        \"\"\"Step {i} of the pricing rules.\"\"\"\n"
           "        cents = self.cents * factor + {i}\n        return Price(round(cents), self.currency)\n\n")
PY_PRICE = ("class Price:\n    \"\"\"An amount of money.\"\"\"\n\n    def __init__(self, cents, currency):\n"
            "        self.cents, self.currency = cents, currency\n\n"
            + "".join(PY_STEP.format(i=i) for i in range(12))
            + "    @classmethod\n    def from_cents(cls, cents, currency='USD'):\n"
            "        return cls(cents, currency)\n\n\n"
            "def from_text(text):\n    return Price(int(text), 'USD')\n")
PY_TYPE_FILES = PY_FILES | {
    "shop/pricing.py": PY_PRICE,
    "legacy/old_pricing.py": "class Price:\n    @classmethod\n    def from_cents(cls, amount):\n"
                             "        return amount\n"}


@pytest.mark.parametrize("imports, line", [
    ("from shop.pricing import Price", "p = Price.fr"),
    ("from shop.pricing import Price as Money", "p = Money.fr"),
], ids=["imported-class", "renamed-class"])
def test_a_partly_typed_python_name_after_a_class_is_its_method(make_repo, smollm2_tokenizer, imports, line):
    """`Price.fr|` named no module: store's new_store, used a line above, came first. The Price the file imports
    (under its name or another) has `from_cents` in the last part of its long class body (a chunk that names no
    class), which now comes first, before the module's free `from_text` and an unimported Price's own `from_cents`."""
    files = PY_TYPE_FILES | {"app/main.py": _py_app(imports, line)}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "app/main.py", line)
    assert len(index.chunk_numbers("shop/pricing.py")) > 2     # (the class is cut into several chunks)
    _comes_first(index, packed, ("shop/pricing.py", "from_cents"), ("shop/store.py", "new_store"),
                 ("shop/pricing.py", "from_text"), ("legacy/old_pricing.py", "from_cents"),
                 ("shop/pricing.py", "Price"))


TS_STEP = ("  step{i}(factor: number, rounding: string = 'half-even'): Price {{\n    // step {i} of the rules\n"
           "    const cents = this.cents * factor + {i};\n    return new Price(Math.round(cents), this.currency);\n"
           "  }}\n\n")
TS_PRICE = ("export class Price {\n  constructor(public cents: number, public currency: string) {}\n\n"
            + "".join(TS_STEP.format(i=i) for i in range(12)) +
            "  static fromCents(cents: number): Price {\n    return new Price(cents, 'USD');\n  }\n\n"
            "  format(): string {\n    return this.currency + (this.cents / 100).toFixed(2);\n  }\n}\n\n"
            "export function fromText(text: string): Price {\n  return new Price(Number(text), 'USD');\n}\n")


def test_a_partly_typed_typescript_name_after_a_class_is_its_static_member(make_repo, smollm2_tokenizer):
    """`Price.fr|`: store's newStore, used a line above, came before the part of the long class the file imports
    that defines fromCents, which now comes first, before the module's free fromText and an unimported Price's own
    fromCents."""
    line = "const p = Price.fr"
    files = JS_FILES | {"src/utils/price.ts": TS_PRICE,
                        "src/legacy/price.ts": "export class Price {\n  static fromCents(amount: number): number {\n"
                                               "    return amount;\n  }\n}\n",
                        "src/cart.ts": _js_cart("import { Price } from './utils/price';", line)}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/cart.ts", line)
    assert len(index.chunk_numbers("src/utils/price.ts")) > 2
    _comes_first(index, packed, ("src/utils/price.ts", "fromCents"), ("src/store.js", "newStore"),
                 ("src/utils/price.ts", "fromText"), ("src/legacy/price.ts", "fromCents"))


JAVA_STEP = ("    public Price step{i}(long factor, String rounding) {{\n        // step {i} of the pricing rules\n"
             "        long cents = this.cents * factor + {i};\n"
             "        return new Price(cents, this.currency);\n    }}\n\n")
JAVA_PRICE = ("package com.acme.shop;\n\npublic class Price {\n    private final long cents;\n"
              "    private final String currency;\n\n    public Price(long cents, String currency) {\n"
              "        this.cents = cents;\n        this.currency = currency;\n    }\n\n"
              + "".join(JAVA_STEP.format(i=i) for i in range(12))
              + "    public static Price fromCents(long cents) {\n"
              "        return new Price(cents, \"USD\");\n    }\n}\n")
JAVA_FILES = {"src/com/acme/shop/Price.java": JAVA_PRICE,
              "src/com/acme/shop/Store.java": "package com.acme.shop;\n\npublic class Store {\n"
                                              "    public Store(String name) {\n    }\n}\n",
              "src/com/acme/legacy/Price.java": "package com.acme.legacy;\n\npublic class Price {\n"
                                                "    public static long fromCents(long amount) {\n"
                                                "        return amount;\n    }\n}\n"}


def test_a_partly_typed_java_name_after_a_class_of_the_package_is_its_static_member(make_repo, smollm2_tokenizer):
    """`Price.fr|`, Price a class of the file's own package (seen unimported): the Store used a line above came
    before the part of Price's long body that defines fromCents, which now comes first, before a legacy Price's."""
    line = "Price p = Price.fr"
    cart = ("package com.acme.shop;\n\npublic class Cart {\n    public Object open(String name) {\n"
            f"        Store s = new Store(name);\n        {line}\n        return s;\n    }}\n}}\n")
    files = JAVA_FILES | {"src/com/acme/shop/Cart.java": cart}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/com/acme/shop/Cart.java", line)
    assert len(index.chunk_numbers("src/com/acme/shop/Price.java")) > 2
    _comes_first(index, packed, ("src/com/acme/shop/Price.java", "fromCents"),
                 ("src/com/acme/shop/Store.java", "Store"), ("src/com/acme/legacy/Price.java", "fromCents"))


# After the instance or class itself: self., cls., super()., this., super., this-> --------------------------------

def _cut_apart(index, path: str, type_name: str, member: str) -> None:
    """The long class ``type_name`` of ``path`` is cut into several chunks, ``member`` not in the one naming it."""
    chunks = [index.chunks[n] for n in index.chunk_numbers(path)]
    assert [c.defines for c in chunks if member in c.defines and type_name not in c.defines], chunks


def _base_parse_comes_first(make_repo, tokenizer, files: dict[str, str], path: str, line: str, base: str,
                            *decoys: tuple[str, ...]) -> None:
    """At ``line`` of ``path``: the long BaseParser of ``base`` is cut into several chunks, and the one defining
    `parse` comes first, before ``decoys``."""
    index, packed = _prompt(make_repo, tokenizer, files, path, line)
    _cut_apart(index, base, "BaseParser", "parse")
    _comes_first(index, packed, (base, "parse"), *decoys)


PY_PARSE_STEP = ("    def step{i}(self, tokens, strict=False):\n        \"\"\"Step {i} of the parsing rules.\"\"\"\n"
                 "        found = self.tokens[{i}:] + tokens\n        return found if strict else found[:{i}]\n\n")
PY_BASE_PARSER = ("class BaseParser:\n    \"\"\"Reads the tokens of a text.\"\"\"\n\n    def __init__(self, text):\n"
                  "        self.text, self.tokens = text, text.split()\n\n"
                  + "".join(PY_PARSE_STEP.format(i=i) for i in range(16))
                  + "    def parse(self, rules, strict=False):\n"
                  "        return [rule(self.tokens) for rule in rules]\n")
PY_PARSER_FILES = PY_FILES | {
    "parsing/__init__.py": "", "parsing/base.py": PY_BASE_PARSER,
    "parsing/grammar.py": "from .base import BaseParser\n\n\nclass Grammar(BaseParser):\n    def rules(self):\n"
                          "        return []\n",
    "parsing/tokens.py": "def read_token(text):\n    return text.split()[0]\n\n\n"
                         "def parse_number(text):\n    return int(text)\n",
    "legacy/old_parser.py": "class OldParser:\n    def parse(self, rules):\n        return rules\n"}
PY_PARSER_DECOYS = (("parsing/tokens.py", "read_token"), ("parsing/tokens.py", "parse_number"),
                    ("legacy/old_parser.py", "parse"), ("parsing/grammar.py", "Grammar"),
                    ("parsing/base.py", "BaseParser"))


def _py_parser(imports: str, head: str, line: str) -> str:
    return (f"{imports}\nfrom .tokens import parse_number, read_token\n\n\nclass {head}:\n"
            "    def run(self, text):\n        first = read_token(text)\n"
            f"        found = {line}\n        return first, found\n")


@pytest.mark.parametrize("imports, head, line", [
    ("from .base import BaseParser", "Parser(BaseParser)", "self.pa"),
    ("from .base import BaseParser as Base", "Parser(Base)", "self.pa"),
    ("from . import base", "Parser(base.BaseParser)", "self.pa"),
    ("from .grammar import Grammar", "Parser(Grammar)", "self.pa"),
    ("from .base import BaseParser", "Parser(BaseParser)", "super().pa"),
    ("from .base import BaseParser", "Parser(BaseParser)", "super(Parser, self).pa"),
    ("from typing import Generic, TypeVar\nfrom .base import BaseParser",
     "Parser(\n    Generic[T],\n    BaseParser,\n    metaclass=type,\n)", "cls.pa"),
], ids=["imported-base", "renamed-base", "module-qualified-base", "grandparent", "super", "super-with-arguments",
        "cls-multiline-head"])
def test_a_partly_typed_name_after_self_is_a_base_class_method(make_repo, smollm2_tokenizer, imports, head, line):
    """`self.pa|` in a subclass resolved `self` to nothing: read_token, used on the line above, came first, and the
    part of the long base class (another file) that defines `parse` was far down. The base (imported under its name
    or another, through its module, or the base's own base) is read from the class's head, and its `parse` comes
    first, before an unrelated class's `parse` and the imported `parse_number`."""
    files = PY_PARSER_FILES | {"parsing/parser.py": _py_parser(imports, head, line)}
    _base_parse_comes_first(make_repo, smollm2_tokenizer, files, "parsing/parser.py", line, "parsing/base.py",
                            *PY_PARSER_DECOYS)


TS_PARSE_STEP = ("  step{i}(tokens: string[], strict: boolean = false): string[] {{\n    // step {i} of the rules\n"
                 "    const found = this.tokens.slice({i}).concat(tokens);\n"
                 "    return strict ? found : found.slice(0, {i});\n  }}\n\n")
TS_BASE_PARSER = ("export class BaseParser {\n  tokens: string[];\n\n  constructor(public text: string) {\n"
                  "    this.tokens = text.split(' ');\n  }\n\n"
                  + "".join(TS_PARSE_STEP.format(i=i) for i in range(14))
                  + "  parse(rules: string[]): string[] {\n    return rules.map((rule) => rule + this.text);\n  }\n}\n")
TS_PARSING_FILES = JS_FILES | {
    "src/parsing/base.ts": TS_BASE_PARSER,
    "src/parsing/tokens.ts": "export function readToken(text: string): string {\n  return text.split(' ')[0];\n}"
                             "\n\nexport function parseNumber(text: string): number {\n  return Number(text);\n}\n",
    "src/legacy/old.ts": "export class OldParser {\n  parse(rules: string[]): string[] {\n    return rules;\n  }\n}\n"}
TS_PARSER_DECOYS = (("src/parsing/tokens.ts", "readToken"), ("src/parsing/tokens.ts", "parseNumber"),
                    ("src/legacy/old.ts", "parse"), ("src/parsing/base.ts", "BaseParser"))


@pytest.mark.parametrize("line", ["const found = this.pa", "const found = super.pa"], ids=["this", "super"])
def test_a_partly_typed_typescript_name_after_this_is_a_base_class_method(make_repo, smollm2_tokenizer, line):
    """`this.pa|` in a class that `extends BaseParser implements Sized`: readToken, used on the line above, came
    before the part of the long base class (another file) that defines `parse`, which now comes first."""
    parser = ("import { BaseParser } from './base';\nimport { parseNumber, readToken } from './tokens';\n\n"
              "interface Sized {\n  size(): number;\n}\n\n"
              "export class Parser<T> extends BaseParser implements Sized {\n  size(): number {\n    return 0;\n  }\n\n"
              f"  run(text: string): string[] {{\n    const first = readToken(text);\n    {line}\n"
              "    return [first, found];\n  }\n}\n")
    files = TS_PARSING_FILES | {"src/parsing/parser.ts": parser}
    _base_parse_comes_first(make_repo, smollm2_tokenizer, files, "src/parsing/parser.ts", line, "src/parsing/base.ts",
                            *TS_PARSER_DECOYS)


JAVA_PARSE_STEP = ("    public String step{i}(String tokens, boolean strict) {{\n"
                   "        // step {i} of the parsing rules\n"
                   "        String found = this.text.substring({i}) + tokens;\n"
                   "        return strict ? found : found.trim();\n    }}\n\n")
JAVA_BASE_PARSER = ("package com.acme.parsing;\n\npublic class BaseParser {\n    protected final String text;\n\n"
                    "    public BaseParser(String text) {\n        this.text = text;\n    }\n\n"
                    + "".join(JAVA_PARSE_STEP.format(i=i) for i in range(12))
                    + "    public String parse(String rules) {\n        return rules + this.text;\n    }\n}\n")
JAVA_PARSING_FILES = {
    "src/com/acme/parsing/BaseParser.java": JAVA_BASE_PARSER,
    "src/com/acme/parsing/Tokens.java": "package com.acme.parsing;\n\npublic class Tokens {\n"
                                        "    public final String text;\n\n"
                                        "    public Tokens(String text) {\n"
                                        "        this.text = text.trim();\n    }\n}\n",
    "src/com/acme/legacy/BaseParser.java": "package com.acme.legacy;\n\npublic class BaseParser {\n"
                                           "    public String parse(String rules) {\n        return rules;\n    }\n}\n"}
JAVA_PARSER_DECOYS = (("src/com/acme/parsing/Tokens.java", "Tokens"),
                      ("src/com/acme/legacy/BaseParser.java", "parse"),
                      ("src/com/acme/parsing/BaseParser.java", "BaseParser"))


@pytest.mark.parametrize("line", ["String found = this.pa", "String found = super.pa"], ids=["this", "super"])
def test_a_partly_typed_java_name_after_this_is_a_base_class_method(make_repo, smollm2_tokenizer, line):
    """`this.pa|` in a class extending a class of its own package (seen unimported): the Tokens made on the line
    above came before the part of BaseParser's long body that defines `parse`, which now comes first, before the
    `parse` of a legacy BaseParser of another package."""
    parser = ("package com.acme.parsing;\n\nimport java.util.List;\n\n"
              "public class Parser extends BaseParser implements Runnable {\n"
              "    public Parser(String text) {\n        super(text);\n    }\n\n"
              "    public void run() {\n    }\n\n"
              "    public String read(String text) {\n        Tokens first = new Tokens(text);\n"
              f"        {line}\n        return first.text + found;\n    }}\n}}\n")
    files = JAVA_PARSING_FILES | {"src/com/acme/parsing/Parser.java": parser}
    _base_parse_comes_first(make_repo, smollm2_tokenizer, files, "src/com/acme/parsing/Parser.java", line,
                            "src/com/acme/parsing/BaseParser.java", *JAVA_PARSER_DECOYS)


# After a variable whose type the code states ---------------------------------------------------------------------

def _py_reader(imports: str, body: str, declaration: str, line: str) -> str:
    return (f"{imports}\nfrom .tokens import parse_number, read_token\n\n\nclass Reader:\n{body}"
            "    def run(self, text, other: BaseParser = None):\n        first = read_token(text)\n"
            f"{declaration}        found = {line}\n        return first, found\n")


@pytest.mark.parametrize("imports, body, declaration, line", [
    ("from .base import BaseParser", "", "", "other.pa"),
    ("from .base import BaseParser", "", "        parser = BaseParser(text)\n", "parser.pa"),
    ("from typing import Optional\nfrom .base import BaseParser", "",
     "        parser: Optional[BaseParser] = None\n", "parser.pa"),
    ("from . import base", "", "        parser = base.BaseParser(text)\n", "parser.pa"),
    ("from .base import BaseParser as Base", "", "        parser = Base(text)\n", "parser.pa"),
    ("from .base import BaseParser", "    def __init__(self, text):\n        self.parser = BaseParser(text)\n\n",
     "", "self.parser.pa"),
    ("from .base import BaseParser", "    parser: 'BaseParser'\n\n", "", "self.parser.pa"),
], ids=["annotated-parameter", "instance", "optional-annotation", "module-qualified-class", "renamed-class",
        "attribute-set-in-init", "class-level-annotation"])
def test_a_partly_typed_name_after_a_python_variable_is_its_types_method(make_repo, smollm2_tokenizer, imports, body,
                                                                         declaration, line):
    """`parser.pa|` after `parser = BaseParser(text)` (or a parameter annotated `other: BaseParser`, an attribute
    `self.parser = BaseParser(text)`): the variable named no module and no type, so read_token, used on the line
    above, came first and the part of BaseParser's long body (another file) that defines `parse` was far down. The
    declaration above the cursor (or, for an attribute, anywhere in the class) now names the type, whose `parse`
    comes first."""
    files = PY_PARSER_FILES | {"parsing/reader.py": _py_reader(imports, body, declaration, line)}
    _base_parse_comes_first(make_repo, smollm2_tokenizer, files, "parsing/reader.py", line, "parsing/base.py",
                            *PY_PARSER_DECOYS)


@pytest.mark.parametrize("head, declaration, line", [
    ("", "", "other.pa"),
    ("", "    const parser = new BaseParser(text);\n", "parser.pa"),
    ("", "    let parser: BaseParser | undefined;\n", "parser.pa"),
    ("  constructor(private readonly parser: BaseParser) {}\n\n", "", "this.parser.pa"),
    ("  private parser?: BaseParser;\n\n", "", "this.parser.pa"),
], ids=["typed-parameter", "new-instance", "typed-local", "constructor-parameter-property", "class-field"])
def test_a_partly_typed_name_after_a_typescript_variable_is_its_types_method(make_repo, smollm2_tokenizer, head,
                                                                             declaration, line):
    """`parser.pa|` after `const parser = new BaseParser(text)` (a parameter `other: BaseParser`, a constructor's
    parameter property, a field): readToken, used on the line above, came before the part of BaseParser's long
    body (another file) that defines `parse`, which now comes first."""
    reader = ("import { BaseParser } from './base';\nimport { parseNumber, readToken } from './tokens';\n\n"
              f"export class Reader {{\n{head}  run(text: string, other: BaseParser): string[] {{\n"
              f"    const first = readToken(text);\n{declaration}    const found = {line};\n"
              "    return [first, found];\n  }\n}\n")
    files = TS_PARSING_FILES | {"src/parsing/reader.ts": reader}
    _base_parse_comes_first(make_repo, smollm2_tokenizer, files, "src/parsing/reader.ts", line, "src/parsing/base.ts",
                            *TS_PARSER_DECOYS)


@pytest.mark.parametrize("head, declaration, line", [
    ("", "", "other.pa"),
    ("", "        BaseParser parser = new BaseParser(text);\n", "parser.pa"),
    ("", "        var parser = new BaseParser(text);\n", "parser.pa"),
    ("    private final BaseParser parser;\n\n", "", "this.parser.pa"),
    ("    private final List<String> names = List.of();\n    private BaseParser parser;\n\n", "", "parser.pa"),
], ids=["parameter", "typed-local", "var-local", "this-field", "field"])
def test_a_partly_typed_name_after_a_java_variable_is_its_types_method(make_repo, smollm2_tokenizer, head,
                                                                       declaration, line):
    """`parser.pa|` after `BaseParser parser = ...` (a parameter, `var`, a field, `this.parser`), BaseParser a
    class of the file's own package: the Tokens made on the line above came before the part of BaseParser's long
    body that defines `parse`, which now comes first, before a legacy BaseParser's `parse`."""
    reader = ("package com.acme.parsing;\n\nimport java.util.List;\n\n"
              f"public class Reader {{\n{head}    public String read(String text, BaseParser other) {{\n"
              f"        Tokens first = new Tokens(text);\n{declaration}        String found = {line};\n"
              "        return first.text + found;\n    }\n}\n")
    files = JAVA_PARSING_FILES | {"src/com/acme/parsing/Reader.java": reader}
    _base_parse_comes_first(make_repo, smollm2_tokenizer, files, "src/com/acme/parsing/Reader.java", line,
                            "src/com/acme/parsing/BaseParser.java", *JAVA_PARSER_DECOYS)


GO_PARSING_FILES = GO_FILES | {
    "internal/parsing/parser.go": "package parsing\n\n// Parser reads the tokens of a text.\ntype Parser struct {\n"
                                  "\tText string\n}\n\n// NewParser makes a parser of a text.\n"
                                  "func NewParser(text string) *Parser {\n\treturn &Parser{Text: text}\n}\n",
    "internal/parsing/steps.go": "package parsing\n\nimport \"strings\"\n\n" + "".join(
        f"// Step{i} is step {i} of the parsing rules.\nfunc (p *Parser) Step{i}(tokens string, strict bool) string {{"
        f"\n\tfound := p.Text[{i}:] + tokens\n\tif strict {{\n\t\treturn found\n\t}}\n"
        "\treturn strings.TrimSpace(found)\n}\n\n" for i in range(12))
        + "// Parse applies the rules to the text.\nfunc (p *Parser) Parse(rules string) string {\n"
        "\treturn rules + p.Text\n}\n",
    "internal/tokens/tokens.go": "package tokens\n\nimport \"strings\"\n\nfunc Read(text string) string {\n"
                                 "\treturn strings.Fields(text)[0]\n}\n\nfunc ParseNumber(text string) int {\n"
                                 "\treturn len(text)\n}\n",
    "internal/legacy/old.go": "package legacy\n\ntype OldParser struct{}\n\n"
                              "func (o *OldParser) Parse(rules string) string {\n\treturn rules\n}\n"}


@pytest.mark.parametrize("declaration, line", [
    ("\tcount := len(text)\n", "other.Pa"),
    ("\tp := parsing.NewParser(text)\n", "p.Pa"),
    ("\tp, q := &parsing.Parser{Text: text}, 1\n", "p.Pa"),
    ("\tvar p parsing.Parser\n", "p.Pa"),
], ids=["parameter", "constructor-function", "composite-literal", "var"])
def test_a_partly_typed_name_after_a_go_variable_is_its_types_method(make_repo, smollm2_tokenizer, declaration,
                                                                     line):
    """`p.Pa|` after `p := parsing.NewParser(text)` (a parameter `other *parsing.Parser`, `&parsing.Parser{...}`,
    `var p parsing.Parser`): tokens.Read, used on the line above, came first and could the imported ParseNumber;
    the method Parse of the imported package's Parser (a file of its methods) now does. (Right below the line of
    `tokens.Read(...)`, its qualified use and its name's definition together, 3.75 + 6, still outweigh the member
    being typed, 8: a line stands between them here.)"""
    main = ('package main\n\nimport (\n\t"fmt"\n\n\t"github.com/acme/shop/internal/parsing"\n'
            '\t"github.com/acme/shop/internal/tokens"\n)\n\n'
            "func run(text string, other *parsing.Parser) {\n\tfirst := tokens.Read(text)\n"
            f"{declaration}\tfound := {line}\n\tfmt.Println(first, found)\n}}\n")
    files = GO_PARSING_FILES | {"cmd/shop/main.go": main}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "cmd/shop/main.go", line)
    _comes_first(index, packed, ("internal/parsing/steps.go", "Parse"), ("internal/tokens/tokens.go", "Read"),
                 ("internal/tokens/tokens.go", "ParseNumber"), ("internal/legacy/old.go", "Parse"),
                 *[("internal/parsing/steps.go", f"Step{i}") for i in range(12)])


@pytest.mark.parametrize("declaration, line", [
    ("", "other.ev"),
    ("    let mut store = Store::new();\n", "store.ev"),
    ("    let store: &mut cache::Store = other;\n", "store.ev"),
    ("", "self.store.ev"),
], ids=["parameter", "associated-constructor", "typed-local", "struct-field"])
def test_a_partly_typed_name_after_a_rust_variable_is_its_types_method(make_repo, smollm2_tokenizer, declaration,
                                                                       line):
    """`store.ev|` after `let mut store = Store::new()` (a parameter `other: &mut Store`, a typed local, a field of
    the struct whose impl the cursor is in): Stock, used on the line above, came first; the impl block (another
    file than the struct's) that defines Store's `evict` now does."""
    app = ("use crate::cache;\nuse crate::cache::Store;\nuse crate::stock::Stock;\n\n"
           "pub struct Shop {\n    store: Store,\n}\n\nimpl Shop {\n"
           "    pub fn open(&mut self, name: &str, other: &mut Store) -> usize {\n"
           f"        let stock = Stock::empty();\n    {declaration}        {line};\n        name.len()\n    }}\n}}\n")
    files = RUST_TYPE_FILES | {"src/app.rs": app}
    index, packed = _prompt(make_repo, smollm2_tokenizer, files, "src/app.rs", line)
    _comes_first(index, packed, ("src/cache_ops.rs", "evict"), ("src/stock.rs", "Stock"),
                 ("src/legacy.rs", "new"), ("src/names.rs", "new_store_name"),
                 *[(f"src/filler{i}.rs",) for i in range(20)])


CPP_PARSE_STEP = ("    std::string step{i}(const std::string &tokens, bool strict) {{\n"
                  "        // step {i} of the parsing rules\n        std::string found = text_.substr({i}) + tokens;\n"
                  "        return strict ? found : found.substr(1);\n    }}\n\n")
CPP_BASE_PARSER = ("#pragma once\n#include <string>\n\nclass BaseParser {\npublic:\n"
                   "    explicit BaseParser(const std::string &text) : text_(text) {}\n\n"
                   + "".join(CPP_PARSE_STEP.format(i=i) for i in range(12))
                   + "    std::string parse(const std::string &rules) {\n        return rules + text_;\n    }\n\n"
                   "private:\n    std::string text_;\n};\n")


@pytest.mark.parametrize("declaration, line", [
    ("", "other.pa"),
    ("    BaseParser parser(text);\n", "parser.pa"),
    ("    const BaseParser *parser = &other;\n", "parser->pa"),
    ("    auto parser = new BaseParser(text);\n", "parser->pa"),
], ids=["reference-parameter", "local", "pointer", "auto-new"])
def test_a_partly_typed_name_after_a_cpp_variable_is_its_types_method(make_repo, smollm2_tokenizer, declaration,
                                                                      line):
    """`parser.pa|` after `BaseParser parser(text);` (a parameter `BaseParser &other`, a pointer's `parser->pa|`,
    `auto parser = new BaseParser(text)`): read_token, used on the line above, came before the part of the
    included header's long class that defines `parse`, which now comes first."""
    reader = ('#include <string>\n#include "base_parser.h"\n#include "tokens.h"\n\n'
              "std::string run(const std::string &text, BaseParser &other) {\n"
              f"    std::string first = read_token(text);\n{declaration}    std::string found = {line}\n"
              "    return first + found;\n}\n")
    files = {"src/base_parser.h": CPP_BASE_PARSER, "src/reader.cpp": reader,
             "src/tokens.h": "#pragma once\n#include <string>\n\nstd::string read_token(const std::string &text);\n"
                             "int parse_number(const std::string &text);\n",
             "src/tokens.cpp": '#include "tokens.h"\n\nstd::string read_token(const std::string &text) {\n'
                               "    return text.substr(0, text.find(' '));\n}\n\n"
                               "int parse_number(const std::string &text) {\n    return std::stoi(text);\n}\n",
             "src/legacy/old_parser.h": "#pragma once\n#include <string>\n\nclass OldParser {\npublic:\n"
                                        "    std::string parse(const std::string &rules) {\n"
                                        "        return rules;\n    }\n};\n"}
    _base_parse_comes_first(make_repo, smollm2_tokenizer, files, "src/reader.cpp", line, "src/base_parser.h",
                            ("src/tokens.h", "read_token"), ("src/tokens.cpp", "read_token"),
                            ("src/tokens.cpp", "parse_number"), ("src/legacy/old_parser.h", "parse"))


JS_PARSE_STEP = ("  step{i}(tokens, strict = false) {{\n    // step {i} of the rules\n"
                 "    const found = this.tokens.slice({i}).concat(tokens);\n"
                 "    return strict ? found : found.slice(0, {i});\n  }}\n\n")
JS_BASE_PARSER = ("export class BaseParser {\n  constructor(text) {\n    this.text = text;\n"
                  "    this.tokens = text.split(' ');\n  }\n\n" + "".join(JS_PARSE_STEP.format(i=i) for i in range(14))
                  + "  parse(rules) {\n    return rules.map((rule) => rule + this.text);\n  }\n}\n")


@pytest.mark.parametrize("line", ["parser.pa", "this.parser.pa"], ids=["new-instance", "property-set-to-new"])
def test_a_partly_typed_name_after_a_javascript_variable_is_its_types_method(make_repo, smollm2_tokenizer, line):
    """`parser.pa|` after `const parser = new BaseParser(text)` (or `this.parser = new BaseParser(text)` in the
    constructor): readToken, used on the line above, came before the part of BaseParser's long body that defines
    `parse`, which now comes first."""
    made = "this.parser" if line.startswith("this.") else "const parser"
    reader = ("import { BaseParser } from './base.js';\nimport { parseNumber, readToken } from './tokens.js';\n\n"
              f"export class Reader {{\n  constructor(text) {{\n    {made} = new BaseParser(text);\n  }}\n\n"
              f"  run(text) {{\n    const first = readToken(text);\n    const found = {line};\n"
              "    return [first, found];\n  }\n}\n")
    if made == "const parser":   # (a local of the method, not the constructor's)
        reader = reader.replace("    const parser = new BaseParser(text);\n", "").replace(
            "    const first = readToken(text);\n", "    const parser = new BaseParser(text);\n"
            "    const first = readToken(text);\n")
    files = JS_FILES | {
        "src/parsing/base.js": JS_BASE_PARSER, "src/parsing/reader.js": reader,
        "src/parsing/tokens.js": "export function readToken(text) {\n  return text.split(' ')[0];\n}\n\n"
                                 "export function parseNumber(text) {\n  return Number(text);\n}\n",
        "src/legacy/old.js": "export class OldParser {\n  parse(rules) {\n    return rules;\n  }\n}\n"}
    _base_parse_comes_first(make_repo, smollm2_tokenizer, files, "src/parsing/reader.js", line, "src/parsing/base.js",
                            ("src/parsing/tokens.js", "readToken"), ("src/parsing/tokens.js", "parseNumber"),
                            ("src/legacy/old.js", "parse"))
