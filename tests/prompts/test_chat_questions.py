"""A chat question finds the code it asks about however the user names it (prompts/chat.py, prompts/question_terms.py):
a type's member as written (`Client.send`), a name as words ("merge cookies"), a file by name; its prose's stop words
pull in nothing; a follow-up pointing back ("And what calls it?") keeps the excerpts of the question before it.
(bench/chat_context_eval.py measures these on real repositories.)"""

import pytest

from prompts import build_chat_prompt, index_repository
from prompts.chat import EARLIER_WEIGHT, _mentioned_files, _question_weights, _stems_in_prose
from prompts.question_terms import content_words
from prompts.ranking import PROSE_MENTION_WEIGHT, Query, _context_scores, ordered, score_both

BUDGET = 900


def _transport(name: str) -> str:
    """A class with a `send` and a `close` of its own, a few lines each."""
    steps = "".join(f"        attempt_{name.lower()} = attempt_{name.lower()} * {k} + retries\n" for k in range(40))
    return (f"class {name}:\n"
            f"    \"\"\"Moves bytes for the {name.lower()}.\"\"\"\n\n"
            f"    def send(self, payload, retries):\n"
            f"        attempt_{name.lower()} = payload + retries\n{steps}"
            f"        return attempt_{name.lower()}\n\n"
            f"    def close(self, reason):\n"
            f"        self.closed_{name.lower()} = reason\n"
            f"        return reason\n")


TRANSPORTS = {f"transport_{k}.py": _transport(f"Transport{k}") for k in range(24)}
CLIENT = {"client.py": _transport("Client") + (
    "\n\ndef merge_cookies(jar, cookies):\n"
    "    \"\"\"Adds the cookies to the jar.\"\"\"\n"
    "    for cookie in cookies:\n"
    "        jar.append(cookie)\n"
    "    return jar\n")}
# Prose that says what questions say, and merges and cookies in words, in files nobody asks about.
NOTES = {f"notes_{k}.py": (f"# How does the {k} work? What does it do? Explain it: merge the cookies, or merge the\n"
                           f"# cookies of the jar, and what calls it and what could go wrong there.\n"
                           f"# The calls that go wrong: wrong calls, calls gone wrong.\n"
                           f"def note_{k}(what, how, does):\n    return what + how + does + {k}\n") for k in range(6)}


@pytest.fixture
def index(make_repo):
    return index_repository(make_repo({**TRANSPORTS, **CLIENT, **NOTES}))


def _ask(question: str) -> dict:
    return {"role": "user", "content": question}


def _holds(packed, path: str, line: int) -> bool:
    return any(item.path == path and item.start_line <= line <= item.end_line for item in packed.context)


SEND, MERGE = ("client.py", 4), ("client.py", 53)


@pytest.mark.parametrize("question", ["What does `Client.send` do?", "How does Client.send work?",
                                      "how does the client send work?", "Why does the client's send retry?"])
def test_a_member_named_after_its_type_finds_that_types_member(index, smollm2_tokenizer, question):
    """25 classes define `send`: by its name alone each got a 25th of a definition's weight, and the excerpts went
    to the class `Client` (named once) and to transports, not to Client's send."""
    packed = build_chat_prompt(index, smollm2_tokenizer, [_ask(question)], budget_tokens=BUDGET)
    assert _holds(packed, *SEND), question


@pytest.mark.parametrize("question", ["how does the client merge cookies?", "what does merge cookie do?",
                                      "Where do we mergeCookies?"])
def test_a_name_written_as_words_finds_its_definition(index, smollm2_tokenizer, question):
    """`merge_cookies` is one term of the index: "merge" and "cookies" as words found the notes that say them."""
    packed = build_chat_prompt(index, smollm2_tokenizer, [_ask(question)], budget_tokens=BUDGET)
    assert _holds(packed, *MERGE), question


def test_the_stop_words_of_prose_are_no_query_terms():
    """"How", "does", "the", "What" are rare words in code (BM25 weighs them high) and found comments, not code; the
    same words written as code still count."""
    weights = _question_weights([_ask("How does the parser work? What does `the` mean?")])
    assert {"How", "does", "What"}.isdisjoint(weights) and {"parser", "work", "the"} <= set(weights)


def test_a_file_named_comes_before_the_words_around_it(make_repo, smollm2_tokenizer):
    """"What's in globals.py?": its chunks had a mention's weight, less than the best word match's, and "What" and
    "py" matched other files' comments best."""
    files = {**NOTES, "globals.py": "".join(f"def local_{k}(value):\n    return value * {k}\n\n\n" for k in range(4)),
             **{f"other_{k}.py": f"# What py? What py?\ndef other_{k}(globals):\n    return globals\n"
                for k in range(6)}}
    index = index_repository(make_repo(files))
    packed = build_chat_prompt(index, smollm2_tokenizer, [_ask("What's in globals.py?")], budget_tokens=300)
    assert "globals.py" in {item.path for item in packed.context}


def test_a_prose_word_that_is_a_files_stem_names_no_file_but_a_module_does(make_repo):
    index = index_repository(make_repo({"response.py": "def parse(raw):\n    return raw\n", "other.py": "x = 1\n"}))
    assert _mentioned_files(index, "How is the response parsed?") == set()
    assert _mentioned_files(index, "Explain the response module.") == {"response.py"}
    assert _mentioned_files(index, "What does `response` hold?") == {"response.py"}
    assert _mentioned_files(index, "What's in response.py?") == {"response.py"}


@pytest.mark.parametrize("follow_up", ["And what calls it?", "What could go wrong there?"])
def test_a_follow_up_pointing_back_keeps_the_code_it_points_at(index, smollm2_tokenizer, follow_up, monkeypatch):
    """Its own words ("calls", "wrong") found the notes, so the held excerpts about merge_cookies were ranked against
    a fresh choice (here made to win every comparison) and gave way."""
    import prompts.chat

    monkeypatch.setattr(prompts.chat, "HOLD_MARGIN", -0.99)    # a fresh choice is worth more than 1% of the held
    first = [_ask("What does `merge_cookies` do?")]
    before = build_chat_prompt(index, smollm2_tokenizer, first, budget_tokens=BUDGET, history_share=0.5)
    assert _holds(before, *MERGE)
    conversation = [*first, {"role": "assistant", "content": "It adds them one by one."}, _ask(follow_up)]
    after = build_chat_prompt(index, smollm2_tokenizer, conversation, budget_tokens=BUDGET, history_share=0.5,
                              held=before.held)
    assert _holds(after, *MERGE) and after.ids[:len(before.ids)] == before.ids


def test_a_type_named_in_capitals_finds_its_member(make_repo, smollm2_tokenizer):
    """`HTTPAdapter` was read as the words H, T, T, P, Adapter: too many to spell it, so `HTTPAdapter.send` was
    `send`, shared among every class that defines one."""
    from prompts.question_terms import members_named

    index = index_repository(make_repo({**TRANSPORTS, "adapters.py": _transport("HTTPAdapter")}))
    assert set(members_named(index, "Why does `HTTPAdapter.send` exist?")) == {"HTTPAdapter.send"}
    packed = build_chat_prompt(index, smollm2_tokenizer, [_ask("Why does `HTTPAdapter.send` exist?")],
                               budget_tokens=BUDGET)
    assert _holds(packed, "adapters.py", 4)


def test_a_name_written_as_the_code_spells_it_spells_no_other(make_repo):
    """`WSProtocol` is the words "ws protocol", and their plural spelled `WS_PROTOCOLS`, a list in another file that
    then outranked the class."""
    from prompts.question_terms import spelled_names

    index = index_repository(make_repo({"impl.py": "class WSProtocol:\n    pass\n",
                                        "config.py": "WS_PROTOCOLS = {'auto': 'impl:WSProtocol'}\n"}))
    assert spelled_names(index, "How does WSProtocol work?") == set()
    assert "WSProtocol" in spelled_names(index, "how does the ws protocol work?")


def test_a_follow_up_pointing_back_weighs_less_than_the_question_it_follows():
    """"Why is that needed?" is about merge_cookies: at the follow-up's full weight, "needed" found other code when
    the excerpts were chosen again for the longer conversation, and merge_cookies (at half weight) lost its place."""
    conversation = [_ask("What does `merge_cookies` do?"), {"role": "assistant", "content": "It adds them."},
                    _ask("Why is that needed?")]
    weights = _question_weights(conversation)
    assert weights["merge_cookies"] == 1.0 and weights["needed"] == EARLIER_WEIGHT


def test_words_read_as_a_member_take_their_longest_reading(make_repo):
    """"prepared request prepare auth" also read as PreparedRequest.prepare and Request.prepare, whose chunks then
    shared the member's weight and outranked prepare_auth."""
    from prompts.question_terms import members_named

    methods = "".join(f"    def {name}(self):\n        return self.{name}_done\n\n" for name in ("prepare", "prepare_auth"))
    index = index_repository(make_repo({"models.py": f"class Request:\n{methods}\n\nclass PreparedRequest:\n{methods}"}))
    assert set(members_named(index, "how does the prepared request prepare auth work?")) == {
        "PreparedRequest.prepare_auth"}


def test_a_files_stem_in_prose_still_counts_for_that_file(make_repo, smollm2_tokenizer):
    """"what does termui do?" names the module in prose: its chunks (none says "termui") had nothing, and the files
    that say the word took the excerpts; they count for less than a file named as one (`termui.py`)."""
    files = {"termui.py": "".join(f"def prompt_{k}(text):\n    return text * {k}\n\n\n" for k in range(4)),
             **{f"other_{k}.py": f"# see termui\ndef other_{k}(value):\n    return value\n" for k in range(3)}}
    index = index_repository(make_repo(files))
    packed = build_chat_prompt(index, smollm2_tokenizer, [_ask("what does termui do?")], budget_tokens=300)
    assert "termui.py" in {item.path for item in packed.context}


def test_a_stem_in_a_long_questions_prose_counts_for_little(make_repo):
    """A question that describes code in many words (a docstring's: "Generate manylinux tags compatible to the current
    platform") says a file's stem ("tags") as one word among them: it counts for that file in proportion, not as much
    as a question that is only that word ("what does termui do?"). The tags.py file's chunks, that say some of the
    words too, tied with the function described (round 26's docstring questions)."""
    index = index_repository(make_repo(_a_module_and_a_described_function(
        "tags", "platform, compatible", "# generate the current platform's compatible tags",
        "wheel.py", "def platform_names(platform, compatible):\n"
                    "    \"\"\"Generate manylinux tags compatible to the current platform.\"\"\"\n"
                    "    return list_platforms(platform, compatible, current=True)\n")))
    question = "Where is the code that does this: Generate manylinux tags compatible to the current platform?"
    assert _stems_in_prose(index, question) == {"tags.py"}
    query = Query(weights=_question_weights([_ask(question)], index.definers.__contains__, index),
                  mentioned_in_prose=frozenset({"tags.py"}), prose_words=len(content_words(question)))
    words_alone = Query(weights=query.weights)
    tags = index.chunk_numbers("tags.py").start
    assert len(content_words(question)) == 7        # code, Generate, manylinux, tags, compatible, current, platform
    said = _context_scores(index, query)[tags] - _context_scores(index, words_alone)[tags]
    assert said == pytest.approx(PROSE_MENTION_WEIGHT / 7)
    assert next(chunk.path for _, chunk in ordered(index, query, score_both(index, query)[1])) == "wheel.py"
    # a question of that word alone is about the file, as before
    alone = Query(weights={}, mentioned_in_prose=frozenset({"tags.py"}),
                  prose_words=len(content_words("what does tags do?")))
    assert {chunk.path for _, chunk in ordered(index, alone, score_both(index, alone)[1])} == {"tags.py"}


def test_a_file_of_many_words_is_no_module(make_repo, smollm2_tokenizer):
    """"file" beside a stem names that module ("the cookies file"), but in a question that describes code in many
    words it is prose's word for the files the code handles ("Perform side-effect actions on closing a cached file"):
    cached.py, named so, took the excerpts from the function described (fsspec's CacheMetadata.on_close_cached_file)."""
    index = index_repository(make_repo(_a_module_and_a_described_function(
        "cached", "entry, actions", "# actions on the entry",
        "metadata.py", "def after_close(entry, actions):\n"
                       "    \"\"\"Perform side-effect actions on closing a cached file.\"\"\"\n"
                       "    return perform_side_effect(entry, actions, closing=True)\n")))
    question = "Where is the code that does this: Perform side-effect actions on closing a cached file?"
    packed = build_chat_prompt(index, smollm2_tokenizer, [_ask(question)], budget_tokens=200)
    assert "metadata.py" in {item.path for item in packed.context}


def _a_module_and_a_described_function(stem: str, parameters: str, comment: str, described: str, function: str):
    """A repository of a module `stem`.py (six functions whose names and comments say some of the question's words),
    the function a question describes in the file `described`, and three others."""
    either = parameters.replace(", ", " or ")
    return {f"{stem}.py": "".join(f"def {stem}_{k}({parameters}):\n    {comment}\n"
                                  f"    return {either} or {k}\n\n\n" for k in range(6)),
            described: function,
            **{f"other_{k}.py": f"def other_{k}(value):\n    return value + {k}\n" for k in range(3)}}
