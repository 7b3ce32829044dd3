"""Round 20: repositories at real scale and of real shapes (monorepos of several languages, data files beside code),
reproduced in small synthetic trees."""

from prompts import build_completion_prompt, index_repository


def _monorepo(make_repo):
    """A monorepo's shape: a TypeScript web app beside a Python backend and C sources, the other parts holding the
    words the web app's code uses (as Django's Python and static JavaScript did those of a web app's TypeScript)."""
    python = "\n\n".join(
        f"def render_total_{i}(document, quote):\n    element = document.querySelector('#total')\n"
        f"    element.textContent = quote.gross\n    return element" for i in range(6))
    c = "\n\n".join(
        f"int render_total_{i}(struct document *document, struct quote *quote) {{\n"
        f"    struct element *element = querySelector(document, \"#total\");\n"
        f"    element->textContent = quote->gross;\n    return 0;\n}}" for i in range(6))
    return make_repo({
        "backend/render.py": python,
        "native/render.c": c,
        "backend/locale/messages.json": '{"total": "quote gross textContent querySelector document element"}\n' * 20,
        "web/src/client.ts": "export interface Quote { net: string; gross: string; }\n",
        "web/src/view.ts": "export function showTotal(element: Element, text: string) {\n"
                           "  element.textContent = text;\n}\n",
        "web/src/main.ts": 'import { Quote } from "./client";\n\nexport function refresh(quote: Quote) {\n'
                           '  const element = document.querySelector("#total")!;\n  element.textContent = quote.\n',
    })


def test_a_cursor_in_one_language_gets_no_context_from_files_of_another(make_repo, smollm2_tokenizer):
    """Found at scale: in a monorepo of Django, SymPy, C and a TypeScript web app, 14% of the context tokens of 40
    sampled cursors came from files of another language than the cursor's (SymPy's Python in C++ and JavaScript
    prompts). Code like the code at the cursor is looked for among files of its own language family (JavaScript with
    TypeScript, C with C++), as Tabby's retrieval does; a file the current one imports counts whatever it is."""
    index = index_repository(_monorepo(make_repo))
    packed = build_completion_prompt(index, smollm2_tokenizer, "web/src/main.ts", budget_tokens=1024)
    paths = {item.path for item in packed.context}
    assert "web/src/client.ts" in paths and "web/src/view.ts" in paths
    assert not paths & {"backend/render.py", "native/render.c", "backend/locale/messages.json"}, paths
    # The other parts keep their own context: a Python cursor gets the Python code like it.
    packed = build_completion_prompt(index, smollm2_tokenizer, "backend/render.py", line=3, budget_tokens=1024)
    assert {item.path for item in packed.context} == {"backend/render.py"}


def test_a_cursor_in_a_text_file_still_ranks_every_file(make_repo, smollm2_tokenizer):
    """Only a cursor in code narrows the context to its language: a cursor in a README or a config file has no
    language to keep to."""
    root = _monorepo(make_repo)
    (root / "NOTES.txt").write_text("the total: document.querySelector, element.textContent, quote.gross\n")
    index = index_repository(root)
    packed = build_completion_prompt(index, smollm2_tokenizer, "NOTES.txt", budget_tokens=1024)
    assert {"backend/render.py", "native/render.c"} <= {item.path for item in packed.context}

