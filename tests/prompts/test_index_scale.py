"""Round 25: the index at real scale. A warm start that finds nothing changed takes the postings the cache saved; a
file added to (or gone from) a server's repository updates the path table in place of building it again; the
postings sort by term in two radix passes. Each gives exactly what a build from scratch gives. (The one-shot's index
kept out of the cycle collector's sight: tests/app/test_index_frozen.py.)"""

import random

import numpy as np

from prompts import index_repository
from prompts.imports import PathTable


def _lookups(table: PathTable):
    """Everything a path table answers from, comparable."""
    return (table.by_name, table.by_stem, table.by_folder_name, table._by_name_tail, table._by_stem_tail,
            table._by_folder_tail, table.crates, table.go_modules, table.crate_roots, table.root_name)


def _random_path(rnd: random.Random) -> str:
    """Paths that share names, stems, folders and tails with each other: `pkg/a/__init__.py`, `src/a.ts`, `a`."""
    folder = "/".join(rnd.choice(["pkg", "src", "a", "lib", "a.b"]) for _ in range(rnd.randrange(4)))
    name = rnd.choice(["a", "__init__", "index", "mod", "a.b"]) + rnd.choice([".py", ".ts", ".d.ts", "", ".c"])
    return f"{folder}/{name}" if folder else name


def test_a_path_table_with_paths_added_and_removed_is_the_one_built_from_scratch():
    """Each step adds and removes a few paths (emptying a lookup's list, then filling it again); the table after it
    equals one built from the sorted paths, and the table before it is left as it was (the index before an update
    still answers requests)."""
    rnd = random.Random(25)
    paths = sorted({_random_path(rnd) for _ in range(40)})
    table = PathTable(paths, "repo")
    for step in range(200):
        gone = rnd.sample(paths, min(len(paths), rnd.randrange(4)))
        added = sorted({_random_path(rnd) for _ in range(rnd.randrange(4))} - set(paths))
        before = [{key: list(found) for key, found in lookup.items()} for lookup in _lookups(table)[:6]]
        changed = table.with_changes(added, gone)
        assert [{key: list(found) for key, found in lookup.items()} for lookup in _lookups(table)[:6]] == before
        paths = sorted(set(paths) - set(gone) | set(added))
        assert _lookups(changed) == _lookups(PathTable(paths, "repo")), step
        table = changed


def test_an_index_with_files_added_and_deleted_keeps_its_path_table_exact_without_building_it_again(
        make_repo, monkeypatch):
    """RepoIndex.updated for files added and deleted: every chunk after them moves, and the definers, reference
    counts and postings are the base's renumbered; the path table is changed in place of built again, except where a
    Cargo.toml or go.mod is touched (their crate names and module paths are read from the manifests' text). Each is
    what a fresh build makes."""
    import prompts.index as index_module
    from prompts.index import RepoIndex, parse_file
    from prompts.scan import source_file
    from test_round20_monorepo import _arrays

    def module(number: int) -> str:     # (names several files define, one defined twice in a file)
        return (f"from .m{number % 12} import f{number % 12}\n\ndef f{number % 5}():\n    return shared\n\n"
                f"def shared(x):\n    return f{number % 12}(x)\n\n" + "def twice():\n    pass\n" * (number % 2 + 1))

    root = make_repo({f"pkg{i % 3}/m{i}.py": module(i) for i in range(12)})
    index = index_repository(root)
    built = []
    monkeypatch.setattr(index_module, "PathTable", lambda *args: built.append(args) or PathTable(*args))
    rnd = random.Random(7)
    for step in range(30):
        path = f"pkg{rnd.randrange(4)}/m{rnd.randrange(16)}.py"
        if path in index.entries and rnd.random() < 0.5:
            (root / path).unlink()
            index = index.updated({}, [path])
        else:
            (root / path).parent.mkdir(exist_ok=True)
            (root / path).write_text(module(step) + f"def g{step}():\n    return f{step % 12}()\n" * (step % 3))
            index = index.updated({path: parse_file(root, source_file(root, path), 512 * 1024)})
        assert _lookups(index.paths) == _lookups(PathTable(index.files, root.name, index._text)), step
        fresh = RepoIndex(index.root, index.entries, dict(index.vocabulary), dict(index._term_ids),
                          paths=index.paths)     # (the table compared above)
        assert _arrays(index) == _arrays(fresh), step
    assert not built
    (root / "crates/core/src").mkdir(parents=True)
    (root / "crates/core/Cargo.toml").write_text('[package]\nname = "core_crate"\n')
    (root / "crates/core/src/lib.rs").write_text("pub fn total() -> u32 { 1 }\n")
    changed = {path: parse_file(root, source_file(root, path), 512 * 1024)
               for path in ("crates/core/Cargo.toml", "crates/core/src/lib.rs")}
    index = index.updated(changed)
    assert built and index.paths.crates == {"core_crate": "crates/core/src/lib.rs"}


def test_the_postings_order_is_a_stable_sort_of_every_reference_by_term():
    """Two radix passes over 16-bit halves order the references exactly as a stable sort by term does, with term ids
    under and over 2**16 (a large repository's vocabulary), and none."""
    from prompts.index import _stable_order

    rnd = np.random.default_rng(25)
    for high in (1, 300, 70_000, 2**31 - 1):
        ids = rnd.integers(0, high, size=5_000, dtype=np.int32)
        assert np.array_equal(_stable_order(ids), np.argsort(ids, kind="stable")), high
    assert _stable_order(np.zeros(0, np.int32)).tolist() == []


def test_a_warm_start_that_finds_nothing_changed_takes_the_saved_postings(make_repo, monkeypatch):
    """The cache keeps the postings' chunks with the term ids (8.8 million references sorted again at every warm
    start took 0.5 s at 37k files): taken where nothing was parsed or gone, sorted again where something was; the
    index is the one built from scratch either way."""
    import prompts.index as index_module
    from prompts.index import RepoIndex
    from test_round20_monorepo import _arrays, _module

    root = make_repo({f"pkg{i % 3}/m{i}.py": _module(i, 2 + i % 4) for i in range(12)})
    index_repository(root)
    sorts = []
    real_order = index_module._stable_order
    monkeypatch.setattr(index_module, "_stable_order", lambda ids: sorts.append(len(ids)) or real_order(ids))
    for change in (None, lambda: (root / "pkg1/m4.py").write_text(_module(40, 3)),
                   lambda: (root / "pkg2/m5.py").unlink(), lambda: (root / "pkg0/new.py").write_text(_module(41, 2))):
        if change is not None:
            change()
        sorts.clear()
        index = index_repository(root)
        assert bool(sorts) == (change is not None)
        fresh = RepoIndex(index.root, index.entries, dict(index.vocabulary), dict(index._term_ids))
        assert _arrays(index) == _arrays(fresh)
        assert index.postings[1].dtype == fresh.postings[1].dtype
        sorts.clear()
        assert _arrays(index_repository(root)) == _arrays(fresh) and not sorts      # (saved as changed)
