"""The command line's index is kept out of the cycle collector's sight (session.open_session, through
prompts.index.collector_paused), which is only sound for objects that reference counting alone frees: an index is no
cycle of objects, built or updated."""

import gc
import weakref

from prompts.index import collector_paused


def test_what_the_index_is_built_of_is_frozen_before_the_collector_resumes():
    """Every object made inside is frozen (none is left young for the collector's next passes to walk), and the
    collector runs again after; with the switch off nothing is frozen."""
    frozen_before = gc.get_freeze_count()
    try:
        with collector_paused(freeze=True):
            assert not gc.isenabled()
            built = [(number, str(number)) for number in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(built)
        frozen_now = gc.get_freeze_count()
        with collector_paused(freeze=False):
            more = [(number, str(number)) for number in range(1000)]
        assert gc.isenabled() and gc.get_freeze_count() == frozen_now and more
    finally:
        gc.unfreeze()


def test_an_index_built_and_updated_is_freed_by_reference_counting_alone(tmp_path):
    """Frozen objects are never collected as cycles: an index that referenced itself (a bound method kept in its path
    table, say) would stay in memory for good once frozen, each one a server's or the REPL's updates replaced."""
    from prompts import index_repository
    from prompts.index import parse_file
    from prompts.scan import source_file

    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    for number in range(4):
        (root / "pkg" / f"m{number}.py").write_text(f"def f{number}():\n    return {number}\n")
    (root / "go.mod").write_text("module example.com/shop\n")
    index = index_repository(root, cache_dir=tmp_path / "cache")
    (root / "pkg" / "added.py").write_text("from .m1 import f1\n")
    updated = index.updated({"pkg/added.py": parse_file(root, source_file(root, "pkg/added.py"), 1 << 20)})
    updated.chunk_families, updated.term_starts, index._by_folded_case   # (the cached properties too)
    alive = [weakref.ref(index), weakref.ref(updated), weakref.ref(updated.paths)]
    gc.disable()
    try:
        del index, updated
        assert [ref() for ref in alive] == [None, None, None]
    finally:
        gc.enable()


def test_the_command_lines_session_freezes_its_index_unless_switched_off(tmp_path, monkeypatch):
    """open_session builds the index frozen (the model, loaded after, is not); CODECOMPLETE_GC_FREEZE=0 leaves the
    collector as it was, as it does for serve, and so does a process that imported torch before (this one: a test's
    earlier models' Triton objects, frozen, were reported as leaked by nanobind at exit)."""
    from types import SimpleNamespace

    from codecomplete import engines, session

    root = tmp_path / "repo"
    root.mkdir()
    (root / "m.py").write_text("def f():\n    return 1\n")
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(engines, "load", lambda *args, **kwargs: object())
    args = SimpleNamespace(context_tokens=None)
    try:
        for switch, torch_before, frozen in (("0", False, False), ("1", False, True), ("1", True, False)):
            monkeypatch.setenv("CODECOMPLETE_GC_FREEZE", switch)
            monkeypatch.setattr(session, "_torch_imported", lambda: torch_before)
            gc.unfreeze()
            opened = session.open_session(args, root)
            assert opened.index.chunks and (gc.get_freeze_count() > 0) == frozen, switch
    finally:
        gc.unfreeze()
