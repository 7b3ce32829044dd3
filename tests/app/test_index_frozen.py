"""The command line's index is kept out of the cycle collector's sight (session._frozen), which is only sound for
objects that reference counting alone frees: an index is no cycle of objects, built or updated."""

import gc
import weakref

from codecomplete.session import _frozen


def test_what_the_index_is_built_of_is_frozen_before_the_collector_resumes():
    """Every object made inside is frozen (none is left young for the collector's next passes to walk), and the
    collector runs again after; with the switch off nothing is frozen."""
    frozen_before = gc.get_freeze_count()
    try:
        with _frozen(True):
            assert not gc.isenabled()
            built = [(number, str(number)) for number in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(built)
        frozen_now = gc.get_freeze_count()
        with _frozen(False):
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
