"""Imported names followed to their definitions in the languages other than Python, as their users write imports:
JavaScript default exports and TypeScript's `.js` specifiers, Go packages bound to their names (and a package's
own files), Rust use trees and `pub use` re-exports, Java static imports, a C header's source file. Each
repository has a decoy: a definition of the same name in a file the code does not import, and code of a similar
vocabulary around it; at a 1,024-token budget the imported definition must come first."""

import pytest

from prompts import build_completion_prompt, index_repository
from prompts.imports import follow_imports, module_files

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
