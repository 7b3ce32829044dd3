"""Warming the prompt caches (codecomplete/server/warming.py) and the engine thread's idle work that runs it."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from types import SimpleNamespace

import pytest

from codecomplete.server.warming import PromptWarmer
from codecomplete.server.worker import EngineWorker
from codecomplete.session import Sampling, Session
from models.generation import GenerationResult, Timings
from prompts import index_repository
from prompts.freshness import FreshIndex

FILES = {f"pkg/m{i}.py": f"def f{i}(x):\n    return x + {i}\n\n\ndef g{i}(y):\n    return f{i}(y) * 2\n"
         for i in range(6)}


@pytest.fixture
def small_repo(tmp_path):
    root = tmp_path / "repo"
    for number, (name, text) in enumerate(FILES.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        os.utime(root / name, ns=(10**18 + number * 10**9,) * 2)       # m5 is the newest
    (root / "notes.txt").write_text("")                                  # no chunks: nothing to warm
    (root / "NEWS.md").write_text("# News\n\nThe newest file, but no source code.\n")
    os.utime(root / "NEWS.md", ns=(2 * 10**18,) * 2)
    return root


class Recording:
    """A session stand-in: the real index, and the prompts the warmer asks for."""

    def __init__(self, root, fail: str | None = None):
        self.index = index_repository(root, cache_dir=root.parent / "cache")
        self.warmed, self.fail = [], fail

    def warm_prompt(self, path, *, line, budget):
        self.warmed.append((path, line, budget))
        if path == self.fail:
            raise OSError("gone")


def test_source_first_the_newest_first_at_most_max_files_and_again_once_changed(small_repo):
    session = Recording(small_repo, fail="pkg/m4.py")
    assert PromptWarmer(session, budget=300).pending()[-1] == "NEWS.md"    # the newest, but after the source
    warmer = PromptWarmer(session, budget=300, max_files=4)
    assert warmer.pending() == ["pkg/m5.py", "pkg/m4.py", "pkg/m3.py", "pkg/m2.py"]
    assert warmer.run(60) == 4                            # m4 failed: counted, not retried
    assert [p for p, _, _ in session.warmed] == ["pkg/m5.py", "pkg/m4.py", "pkg/m3.py", "pkg/m2.py"]
    assert all(line == 3 and budget == 300 for _, line, budget in session.warmed)   # the middle of 6 lines
    assert warmer.pending() == [] and not warmer.step() and warmer.run(60) == 0
    # A change: the file is warmed again (the index sees it through the session's refresh; here, a new index).
    (small_repo / "pkg/m3.py").write_text(FILES["pkg/m3.py"] + "\n\ndef h3():\n    return g3(0)\n")
    os.utime(small_repo / "pkg/m3.py", ns=(3 * 10**18,) * 2)
    session.index = index_repository(small_repo, cache_dir=small_repo.parent / "cache")
    assert warmer.pending() == ["pkg/m3.py"]
    assert warmer.step() is False and session.warmed[-1][0] == "pkg/m3.py"


def test_a_file_rewritten_under_its_old_modification_time_is_warmed_again_and_one_saved_unchanged_is_not(small_repo):
    """`cp -p`, `rsync -t`, a checkout tool that keeps dates: the index sees the new text (by the size, the change
    time), but the warmer went by the modification time alone and took the file as warmed. What a warmed prompt
    depends on is the file's text."""
    session = Recording(small_repo)
    fresh = FreshIndex(session.index)
    warmer = PromptWarmer(session, budget=300)
    warmer.run(60)
    m5 = small_repo / "pkg/m5.py"
    stamp = m5.stat().st_mtime_ns
    m5.write_text("def f5_renamed(x):\n    return x\n")
    os.utime(m5, ns=(stamp, stamp))
    session.index = fresh.refresh("pkg/m5.py")
    assert session.index.definers["f5_renamed"] and warmer.pending() == ["pkg/m5.py"]
    warmer.run(60)
    os.utime(small_repo / "pkg/m4.py")            # saved again as it was: parsed again, the same text
    session.index = fresh.refresh("pkg/m4.py")
    assert session.index.entries["pkg/m4.py"].mtime_ns != 10**18 + 4 * 10**9 and warmer.pending() == []


def test_run_stops_at_its_deadline(small_repo):
    session = Recording(small_repo)
    slow = session.warm_prompt
    session.warm_prompt = lambda *a, **k: (time.sleep(0.05), slow(*a, **k))
    assert 1 <= PromptWarmer(session, budget=300).run(0.01) <= 2


class Counting:
    """A tokenizer that counts the batches of prompt pieces it is asked to encode."""

    def __init__(self, tokenizer):
        self._tokenizer, self.piece_batches = tokenizer, 0

    def __call__(self, text, **options):
        if isinstance(text, list):
            self.piece_batches += 1
        return self._tokenizer(text, **options)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_a_warmed_file_builds_its_prompt_without_encoding_a_new_piece(engine, repo, tmp_path):
    """After warming, a first request in a file at the warmed place tokenizes no piece of the prompt again; without
    warming the same request does."""
    index = index_repository(repo, cache_dir=tmp_path)
    line = max(1, index.entries["app.py"].chunks[-1].end_line // 2)
    for warm in (False, True):
        tokenizer = Counting(engine.tokenizer)            # a new object: a fresh Encoder, nothing remembered
        session = Session(SimpleNamespace(tokenizer=tokenizer, check_prompt=lambda ids: None), index)
        if warm:
            assert PromptWarmer(session, budget=300).run(60) == 4        # every file of the repository
        tokenizer.piece_batches = 0
        session.complete("app.py", line=line, sampling=Sampling(max_tokens=4), budget=300)
        assert (tokenizer.piece_batches == 0) == warm, tokenizer.piece_batches


def run_worker_job(worker: EngineWorker, start) -> None:
    async def submit():
        job = worker.submit(start, "POST /test")
        async for _ in job.events():
            pass
    asyncio.run(submit())


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_idle_work_runs_in_quiet_moments_only_and_resumes_after_a_request():
    busy, calls = threading.Event(), []

    def idle():
        calls.append(busy.is_set())
        return len(calls) not in (3, 4)        # stops after 3 slices; after the request, one more, then stops

    result = GenerationResult("", [], 1, 0, "length", Timings(ttft_ms=1.0))

    def start():
        busy.set()
        time.sleep(0.05)                       # longer than idle_s: no idle slice may run meanwhile

        def run(on_text=None, should_stop=None):
            busy.clear()
            return result
        return SimpleNamespace(run=run)

    worker = EngineWorker(idle=idle, idle_s=0.01, log=lambda line: None)
    try:
        wait_for(lambda: len(calls) >= 3)
        time.sleep(0.1)
        assert len(calls) == 3                 # it said nothing was left: no more slices
        run_worker_job(worker, start)
        wait_for(lambda: len(calls) >= 4)
        time.sleep(0.1)
        assert len(calls) == 4 and not any(calls)
    finally:
        worker.shutdown()


def test_quiet_moments_after_a_request_bring_the_whole_index_up_to_the_disk_then_stop(tmp_path):
    """Every file changed (a `git checkout`) while a walk of the repository was under way: after one request the
    engine thread's quiet moments walk on until a walk begun after it has ended, so that the index holds every file as
    it is now, then stop. The index was swept once after each request only: 4 files walked and 8 parsed here, the
    rest stale until more requests came."""
    root = tmp_path / "repo"
    root.mkdir()
    for i in range(40):
        (root / f"m{i}.py").write_text(f"def old_{i}(x):\n    return x\n")
    result = GenerationResult("", [], 3, 0, "length", Timings(ttft_ms=1.0))
    engine = SimpleNamespace(check_prompt=lambda ids: None, generate=lambda *args, **options: result)
    session = Session(engine, index_repository(root, cache_dir=tmp_path / "cache"))
    session._index.files_per_refresh = 4                 # the slices of a repository of thousands of files
    tidied = []

    def tidy(should_stop):
        tidied.append(1)
        return session.tidy(should_stop)
    session.tidy(None)                                   # a walk under way, past some of the files
    for i in range(40):
        (root / f"m{i}.py").write_text(f"def new_{i}(x):\n    return x + {i}\n")
    worker = EngineWorker(between=tidy, idle_s=0.01, log=lambda line: None)
    try:
        time.sleep(0.1)
        assert tidied == []                              # no request, no upkeep
        run_worker_job(worker, lambda: session.raw([1, 2, 3], sampling=Sampling(max_tokens=1)))
        wait_for(lambda: all(f"new_{i}" in session.index.definers for i in range(40)))
        assert all(f"new_{i}" in session.index.definers and f"old_{i}" not in session.index.definers
                   for i in range(40))
        time.sleep(0.3)                                  # (the walk that began after the request ends)
        calls = len(tidied)
        time.sleep(0.1)
        assert len(tidied) == calls                      # caught up: no more walks until the next request
    finally:
        worker.shutdown()


def test_a_request_that_follows_at_once_runs_before_the_upkeep_of_the_one_before():
    """The upkeep after a request waits for a quiet moment (upkeep_after_s): its Python work holds the GIL that the
    event loop needs to send the answer's end (a completion that ended at its first token reached the client 15-20
    ms late on an H200's host), and a keystroke that comes at once goes first. It ran as soon as a job ended."""
    order = []

    def tidy(should_stop):
        order.append("upkeep")
        return False

    result = GenerationResult("", [], 1, 0, "length", Timings(ttft_ms=1.0))

    def job(name):
        def start():
            order.append(name)
            return SimpleNamespace(run=lambda on_text=None, should_stop=None: result)
        return start

    worker = EngineWorker(between=tidy, idle_s=30, upkeep_after_s=3.0, log=lambda line: None)
    try:
        run_worker_job(worker, job("first"))
        run_worker_job(worker, job("second"))
        wait_for(lambda: "upkeep" in order)
        assert order == ["first", "second", "upkeep"]        # once, after both: the slices after it wait idle_s
    finally:
        worker.shutdown()


def test_failing_idle_work_is_logged_and_the_worker_serves_on():
    lines = []

    def idle():
        raise RuntimeError("broken")

    result = GenerationResult("", [], 1, 0, "length", Timings(ttft_ms=1.0))
    worker = EngineWorker(idle=idle, idle_s=0.01, log=lines.append)
    try:
        wait_for(lambda: lines)
        time.sleep(0.05)
        assert lines == ["idle work · error: RuntimeError: broken"]     # once: not retried until a request
        run_worker_job(worker, lambda: SimpleNamespace(run=lambda on_text=None, should_stop=None: result))
        wait_for(lambda: len(lines) >= 3)
        assert lines[1].startswith("POST /test · prompt 1") and lines[2] == lines[0]
    finally:
        worker.shutdown()


def test_the_warm_up_runs_on_the_engine_thread_before_any_job():
    """What the warm-up prepares can be per thread (cuDNN's attention plans are), so it runs where requests will."""
    threads = []

    def warm_up():
        time.sleep(0.05)
        threads.append(threading.current_thread())
        return "warmed"

    result = GenerationResult("", [], 1, 0, "length", Timings(ttft_ms=1.0))

    def start():
        threads.append(threading.current_thread())
        return SimpleNamespace(run=lambda on_text=None, should_stop=None: result)

    worker = EngineWorker(first=warm_up, log=lambda line: None)
    try:
        assert worker.wait_ready() == "warmed"
        run_worker_job(worker, start)
        assert len(threads) == 2 and threads[0] is threads[1] is not threading.main_thread()
    finally:
        worker.shutdown()

    def broken():
        raise RuntimeError("no GPU after all")

    worker = EngineWorker(first=broken, log=lambda line: None)
    with pytest.raises(RuntimeError, match="no GPU after all"):
        worker.wait_ready()
