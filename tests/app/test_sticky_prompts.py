"""Sticky completion prompts per file (Session._remember): one file's without an engine prompt cache (its prompt is
what the KV cache holds), the last few files' with one (models/prompt_store.py), so that a request back in a file
builds the prompt whose K/V the cache saved for it. Likewise the last chat prompt of each of a few conversations
(Session._remember_chat)."""
from types import SimpleNamespace

import pytest

from codecomplete.session import STICKY_CHATS, STICKY_FILES, Sampling, Session


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


CHAT_FILES = {f"{topic}.py": "\n\n".join(
    f"def {topic}_{k}(value, limit):\n    \"\"\"Step {k} of {topic}.\"\"\"\n"
    f"    checked_{topic} = value * {k} + limit\n    return {topic}_{(k + 1) % 10}(checked_{topic}, limit)\n"
    for k in range(10)) for topic in ("encode", "decode", "stream")}
CHAT_BUDGET = 600


def _chat_session(engine, root):
    """A session that only builds chat prompts, its engine keeping earlier prompts' K/V (a server's --cache-ram)."""
    from prompts import index_repository

    stub = SimpleNamespace(tokenizer=engine.tokenizer, check_prompt=lambda ids: None, prompt_store=object())
    return Session(stub, index_repository(root, cache_dir=root.parent / "cache"))


def _chat_prompt(session, messages) -> list[int]:
    return session.chat(messages, sampling=Sampling(max_tokens=0), budget=CHAT_BUDGET, history_share=0.5).prompt.ids


def _conversation(opening: str, follow_ups: list[str]) -> list[list[dict]]:
    """The messages of each turn of a conversation: the opening question, then each follow-up after an answer."""
    turns = [[{"role": "user", "content": opening}]]
    for k, question in enumerate(follow_ups):
        answer = f"It adds the limit, then calls the next step with the sum ({question[:9]}, {k}). " * 2
        turns.append([*turns[-1], {"role": "assistant", "content": answer},
                      {"role": "user", "content": question}])
    return turns


def _alone(engine, root, conversation) -> list[list[int]]:
    """The prompts of a conversation's turns on a session of its own."""
    session = _chat_session(engine, root)
    return [_chat_prompt(session, messages) for messages in conversation]


def _taking_turns(engine, root, conversations) -> list[list[list[int]]]:
    """The prompts of several conversations' turns on one session, the conversations taking turns."""
    session = _chat_session(engine, root)
    prompts = [[] for _ in conversations]
    for turn in range(max(map(len, conversations))):
        for k, conversation in enumerate(conversations):
            if turn < len(conversation):
                prompts[k].append(_chat_prompt(session, conversation[turn]))
    return prompts


def test_conversations_that_open_alike_each_hold_their_own(engine, make_chat_repo):
    """Three chat clients that open with the same question, then part, a turn each in turn: each gets the prompts it
    gets alone. The first to go on took the opening's hold (they all stood at it), and the others' next turns were
    built afresh, whole prompts read again."""
    opening = "How does encode_3 use its limit?"
    conversations = [_conversation(opening, follow_ups) for follow_ups in
                     (["Why?", "And then?"], ["Which step calls it?", "Why that one?"], ["Is it safe?", "Why?"])]
    assert _taking_turns(engine, make_chat_repo, conversations) == [
        _alone(engine, make_chat_repo, conversation) for conversation in conversations]


def test_a_conversations_own_past_turns_take_no_others_place(engine, make_chat_repo):
    """One conversation's turn, then another's many turns, then the first's follow-up: it still holds its own
    excerpts. (What two conversations opening alike keep is kept only while another conversation stands there.)"""
    first = _conversation("How does decode_2 use its limit?", ["Why?"])
    second = _conversation("How does stream_5 use its limit?", ["Why?"] * (STICKY_CHATS + 1))
    session = _chat_session(engine, make_chat_repo)
    opened = _chat_prompt(session, first[0])
    for messages in second:
        _chat_prompt(session, messages)
    assert [opened, _chat_prompt(session, first[1])] == _alone(engine, make_chat_repo, first)


@pytest.fixture
def make_chat_repo(tmp_path):
    root = tmp_path / "chat_repo"
    root.mkdir()
    for name, text in CHAT_FILES.items():
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("retried_turn", [0, 1], ids=["opening", "follow-up"])
def test_a_retried_turn_takes_no_other_conversations_place(engine, make_chat_repo, retried_turn):
    """A turn sent twice (a client's retry after a timeout, a "regenerate"), then the conversation goes on: the retry
    counted as a second conversation standing at those messages, so a phantom hold stayed there after the next turn,
    one of STICKY_CHATS' places, and another conversation's hold was pushed out before its time. An opening sent
    twice is by its messages also a second client opening alike, and still counted so after the follow-ups' fix.
    (Clients that do open alike still each hold their own: test_conversations_that_open_alike_each_hold_their_own.)"""
    first = _conversation("How does decode_2 use its limit?", ["Why?"])
    retried = _conversation("How does stream_5 use its limit?", ["Why?", "And then?"])
    session = _chat_session(engine, make_chat_repo)
    opened = _chat_prompt(session, first[0])
    for turn in retried[:retried_turn + 1]:
        _chat_prompt(session, turn)
    _chat_prompt(session, retried[retried_turn])            # the retry
    _chat_prompt(session, retried[retried_turn + 1])
    assert len(session._chats) == 2
    for k in range(STICKY_CHATS - 2):           # others open, up to the places left
        _chat_prompt(session, _conversation(f"How does encode_{k} use its limit?", [])[0])
    assert [opened, _chat_prompt(session, first[1])] == _alone(engine, make_chat_repo, first)
