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


def _arrays(index):
    """Everything ranking reads from an index, comparable."""
    starts, owners = index.postings
    return {
        "files": index.files, "chunks": index.chunks, "vocabulary": index.vocabulary,
        "file_chunks": index._file_chunks, "definers": index.definers, "term_ids": index.term_ids.tolist(),
        "document_frequency": index.document_frequency.tolist(), "reference_counts": index.reference_counts.tolist(),
        "term_owner": index.term_owner.tolist(), "folders": index.folders,
        "folder_of_chunk": index.folder_of_chunk.tolist(), "starts": starts.tolist(), "owners": owners.tolist(),
        "families": (index.chunk_families[0], index.chunk_families[1].tolist()),
    }


def _module(seed: int, functions: int) -> str:
    return "\n\n".join(f"def f{seed}_{i}(value_{i % 5}):\n    return helper_{(seed + i) % 7}(value_{i % 5}, shared)"
                       for i in range(functions)) + "\n"


def test_an_index_updated_for_a_few_files_is_the_index_built_from_scratch(make_repo):
    """RepoIndex.updated takes what did not change from the index before (postings, definers) instead of building
    them again; whatever changed (a file edited in place or growing a function, added, emptied, deleted, a new
    name), the result is the index a fresh build of the same entries makes."""
    import random

    from prompts.index import RepoIndex, parse_file
    from prompts.scan import source_file

    root = make_repo({f"pkg{i % 3}/m{i}.py": _module(i, 2 + i % 4) for i in range(12)})
    index = index_repository(root)
    rnd = random.Random(0)
    shrank = 0      # updates whose vocabulary dropped the names no file references any more (renumbered)
    for step in range(60):
        path = f"pkg{rnd.randrange(4)}/m{rnd.randrange(14)}.py" if step < 30 else "pkg0/m0.py"
        # (past step 30, every update brings one file's new names, so that the unused ones pile up and are dropped)
        action = rnd.choice(["same count", "grow", "delete", "empty"] if step < 30 else ["same count", "grow"])
        removed = []
        if action == "delete":
            if (root / path).exists():
                (root / path).unlink()
            removed = [path]
        else:
            chunks = len(index.entries[path].chunks) if path in index.entries else 3
            count = chunks if action == "same count" else chunks + 1
            (root / path).parent.mkdir(exist_ok=True)
            functions = max(count, 1) + 20 * (step >= 30)
            (root / path).write_text("" if action == "empty" else _module(100 + step, functions))
        changed = {}
        if action != "delete":
            changed[path] = parse_file(root, source_file(root, path), 512 * 1024)
        before = len(index.vocabulary)
        index = index.updated(changed, removed)
        shrank += len(index.vocabulary) < before
        fresh = RepoIndex(index.root, index.entries, dict(index.vocabulary), dict(index._term_ids))
        assert _arrays(index) == _arrays(fresh), (step, action, path)
    assert shrank


def test_an_update_for_one_file_does_not_sort_every_reference_again(make_repo, monkeypatch):
    """Found at scale: a server over 30k files (221k chunks, 8.8 million references) took 1.1-1.4 s (this 2-core
    CPU) before each request that followed a save, rebuilding the whole index for the one file: 0.6 s of it a
    stable sort of every reference for the postings, the rest loops over every chunk. The postings of the files that
    did not change are kept, and only the changed file's are sorted into them."""
    import numpy as np

    from prompts.index import parse_file
    from prompts.scan import source_file

    root = make_repo({f"pkg/m{i}.py": _module(i, 6) for i in range(40)})
    index = index_repository(root)
    sorted_sizes = []
    real_argsort, real_lexsort = np.argsort, np.lexsort
    monkeypatch.setattr(np, "argsort", lambda a, *args, **kwargs: sorted_sizes.append(np.size(a)) or
                        real_argsort(a, *args, **kwargs))
    monkeypatch.setattr(np, "lexsort", lambda keys, *args, **kwargs: sorted_sizes.append(np.size(keys[0])) or
                        real_lexsort(keys, *args, **kwargs))
    (root / "pkg/m3.py").write_text(_module(3, 7))
    index.updated({"pkg/m3.py": parse_file(root, source_file(root, "pkg/m3.py"), 512 * 1024)})
    assert max(sorted_sizes, default=0) < len(index.term_ids) // 10, sorted_sizes


def test_a_file_deleted_while_the_repository_is_indexed_is_left_out_without_a_warning(make_repo, monkeypatch):
    """Found indexing a tree that a script churned meanwhile (deleting files, moving folders away and back): every
    file deleted between the walk and its reading was a warning line, `skipped PATH: No such file or directory`
    (85 of 300 lines), where a file deleted before the walk is left out quietly. Files that cannot be read for
    another reason still say why."""
    import warnings

    import prompts.index
    from prompts import ScanWarning

    root = make_repo({"a.py": "def a():\n    return 1\n", "pkg/gone.py": "def gone():\n    pass\n",
                      "pkg/moved.py": "def moved():\n    pass\n", "locked.py": "def locked():\n    pass\n"})
    real_read = prompts.index.read_source

    def read(folder, path, *rest):
        if path == "pkg/gone.py":
            (root / path).unlink()
        if path == "pkg/moved.py":
            raise FileNotFoundError(2, "No such file or directory", path)     # (its folder moved away)
        if path == "locked.py":
            raise PermissionError(13, "Permission denied", path)
        return real_read(folder, path, *rest)

    monkeypatch.setattr(prompts.index, "read_source", read)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScanWarning)
        index = index_repository(root)
    assert index.files == ["a.py"]
    assert [str(w.message) for w in caught] == ["skipped locked.py: Permission denied"]


def test_the_walk_finds_the_rules_of_a_folder_once_for_all_its_files(make_repo, monkeypatch):
    """Found at scale: a warm start of a 37k-file tree spent 2.2-2.6 s (2-core CPU) walking it, a second command-line
    request through a server as much again (it walks the whole repository), most of it asking, path by path, which
    ignore files of every folder up to the top decide it. That answer is the same for every path of a folder: it is
    found once per folder (the walk 1.3-1.5x faster there), and decides as before (test_scan checks against git)."""
    from prompts.scan import IgnoreRules, scan_repository

    files = {f"src/app/deep/m{i}.py": f"x{i} = {i}\n" for i in range(60)}
    root = make_repo({**files, ".gitignore": "*.log\n", "src/.gitignore": "!keep.log\n", "src/app/deep/a.log": "",
                      "src/app/deep/keep.log": "kept\n"}, git=True)
    asked = []
    real = IgnoreRules._specs_of
    monkeypatch.setattr(IgnoreRules, "_specs_of", lambda self, *where: asked.append(where) or real(self, *where))
    paths = [source.path for source in scan_repository(root)]
    assert "src/app/deep/keep.log" in paths and "src/app/deep/a.log" not in paths and len(paths) == 63
    assert len(asked) < 30, len(asked)


def _notebook(cells, language="python"):
    import json

    return json.dumps({"cells": cells, "metadata": {"kernelspec": {"language": language, "name": language}},
                       "nbformat": 4, "nbformat_minor": 5}, indent=1)


def test_a_notebook_is_indexed_as_its_code_cells(make_repo, smollm2_tokenizer):
    """Found at scale: a notebook with a plot in its outputs (150 KB of base64 on one line) was left out as minified,
    and one without outputs was indexed as its JSON, code escaped in strings (and a notebook over 512 KiB, as plots
    make them, not looked at). A Jupyter notebook is read as its code cells, one Python file in jupytext's percent
    format (IPython's magics commented out), whatever its outputs weigh; one of another kernel's language is left
    out."""
    import base64

    plot = base64.b64encode(bytes(range(256)) * 2400).decode()      # 600 KB of plot: the notebook is over 512 KiB
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Pricing analysis\n"]},
        {"cell_type": "code", "execution_count": 1, "metadata": {}, "source": ["%matplotlib inline\n", "import math\n"],
         "outputs": []},
        {"cell_type": "code", "execution_count": 2, "metadata": {},
         "source": ["def seasonal_discount(price, month):\n", "    return price * (0.9 if month in (6, 7) else 1.0)\n"],
         "outputs": [{"output_type": "display_data", "data": {"image/png": plot, "text/plain": ["<Figure>"]},
                      "metadata": {}}]},
    ]
    root = make_repo({
        "analysis/pricing.ipynb": _notebook(cells),
        "analysis/model.ipynb": _notebook([{"cell_type": "code", "metadata": {}, "outputs": [],
                                            "source": "seasonal_discount <- function(price) price * 0.9\n"}], "R"),
        "shop/cart.py": "def total(prices, month):\n    return sum(seasonal_discount(p, month) for p in prices)\n",
    })
    index = index_repository(root)
    assert "analysis/pricing.ipynb" in index.files and "analysis/model.ipynb" not in index.files
    text = "\n".join(chunk.text for chunk in index.entries["analysis/pricing.ipynb"].chunks)
    assert "def seasonal_discount(price, month):" in text and "# %matplotlib inline" in text
    assert "image/png" not in text and "Pricing analysis" not in text
    assert index.definers["seasonal_discount"]
    packed = build_completion_prompt(index, smollm2_tokenizer, "shop/cart.py", line=2, col=15, budget_tokens=512)
    assert "analysis/pricing.ipynb" in {item.path for item in packed.context}


def test_the_index_caches_of_repositories_that_are_gone_are_removed(make_repo, cache_dir, tmp_path):
    """Found at scale: an index cache is as large as a fair part of its repository (95 MB for the 8.4k-file monorepo,
    330 MB for a 37k-file tree), one per folder ever indexed, kept for good: every temporary checkout, every clone
    deleted since, every subfolder once opened as the repository. An index write removes those of repositories that
    are gone (their folder deleted while the folder above is there), and nothing else."""
    import shutil

    from prompts.index import CACHE_VERSION

    kept = make_repo({"a.py": "def a():\n    return 1\n"}, name="kept")
    gone = make_repo({"b.py": "def b():\n    return 2\n"}, name="gone")
    away = tmp_path / "disk" / "repo"          # a repository on a disk that is away for now
    away.mkdir(parents=True)
    (away / "c.py").write_text("def c():\n    return 3\n")
    for root in (kept, gone, away):
        index_repository(root)
    folder = cache_dir / f"index-v{CACHE_VERSION}"
    assert len(list(folder.glob("*.pickle"))) == 3
    shutil.rmtree(gone)
    (tmp_path / "disk").rename(tmp_path / "unmounted")
    index_repository(kept)                      # nothing changed: no write, nothing removed
    assert len(list(folder.glob("*.pickle"))) == 3
    (kept / "a.py").write_text("def a():\n    return 10\n")
    index_repository(kept)
    assert len(list(folder.glob("*.pickle"))) == 2
    (tmp_path / "unmounted").rename(tmp_path / "disk")
    assert index_repository(away).files == ["c.py"]
