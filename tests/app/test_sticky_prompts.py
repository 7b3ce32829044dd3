"""Sticky completion prompts per file (Session._remember): one file's without an engine prompt cache (its prompt is
what the KV cache holds), the last few files' with one (models/prompt_store.py), so that a request back in a file
builds the prompt whose K/V the cache saved for it."""
import pytest

from codecomplete.session import STICKY_FILES, Sampling, Session


@pytest.fixture
def session(engine, served_repo):
    from prompts import index_repository

    yield Session(engine, index_repository(served_repo))
    engine.keep_prompts(0)
    engine.clear_prefix_cache()


def complete(session, path: str, text: str, line: int):
    return session.complete(path, text=text, line=line, col=1, sampling=Sampling(max_tokens=1)).run()


def test_without_a_prompt_cache_only_the_last_files_prompt_is_sticky(session, engine):
    engine.keep_prompts(0)
    for name in ("a.py", "b.py"):
        complete(session, name, "import math\n\n\ndef f():\n    return math.pi\n", 5)
    assert list(session._last) == ["b.py"]


def test_with_one_the_last_files_prompts_are_and_the_oldest_goes_first(session, engine):
    engine.keep_prompts(64)
    names = [f"f{i}.py" for i in range(STICKY_FILES + 2)]
    for name in names:
        complete(session, name, "x = 1\n", 1)
    complete(session, names[3], "x = 1\n", 1)
    assert list(session._last) == names[2:3] + names[4:] + [names[3]]


def test_back_in_a_file_the_saved_prompt_serves_the_request(session, engine, served_repo):
    """Typing in geometry.py, a chat-like request in between (sharing nothing), typing on in geometry.py: the
    prompt is built as before and its K/V come back from the prompt cache."""
    engine.keep_prompts(64)
    text = (served_repo / "shapes" / "geometry.py").read_text()
    line = text[:text.index("def ")].count("\n") + 1
    first = complete(session, "shapes/geometry.py", text, line)
    session.raw("Tell me a story about a circle. " * 20, sampling=Sampling(max_tokens=1)).run()
    again = complete(session, "shapes/geometry.py", text, line)
    assert again.timings.restored_tokens > 0
    assert again.reused_prefix_tokens == first.prompt_tokens - 1
