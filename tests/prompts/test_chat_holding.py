"""A chat's later turns hold the excerpts the turn before carried (prompts/chat.py): a follow-up reads only itself."""

import pytest

from prompts import build_chat_prompt, index_repository
from prompts.chat import (EARLIER_QUESTIONS, EARLIER_WEIGHT, GROWTH_SHARE, _finds_code, _names_code,
                          _question_weights, continued)


def _module(name: str, topic: str, count: int = 12) -> str:
    """A file of `count` functions about `topic`, each with a few lines of its own."""
    return "\n\n".join(
        f"def {name}_{topic}_{k}(value, limit):\n"
        f"    \"\"\"Step {k} of {topic}.\"\"\"\n"
        f"    checked_{topic} = value * {k} + limit\n"
        f"    if checked_{topic} > limit:\n"
        f"        return {name}_{topic}_{(k + 1) % count}(checked_{topic}, limit)\n"
        f"    return checked_{topic}\n"
        for k in range(count)) + "\n"


FILES = {"encoder.py": _module("encode", "floats"), "decoder.py": _module("decode", "objects"),
         "streams.py": _module("read", "until")}
BUDGET = 900


@pytest.fixture
def index(make_repo):
    return index_repository(make_repo(FILES))


def _turn(index, tokenizer, messages, held=None, **options):
    """A turn as the REPL builds it (half the budget for the earlier turns at most)."""
    return build_chat_prompt(index, tokenizer, messages, budget_tokens=BUDGET, history_share=0.5, held=held,
                             **options)


def _ask(question: str) -> dict:
    return {"role": "user", "content": question}


def _answer(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _excerpt_tokens(packed) -> int:
    return sum(item.tokens for item in packed.context)


def _second_turn(index, tokenizer):
    """A conversation's second turn about encoder.py, and its prompt: its excerpts still wanted, but chosen again
    with room for the conversation to grow into (the first question's took it all)."""
    first = [_ask("How does encode_floats_3 use its limit?")]
    second = [*first, _answer("It adds the limit."), _ask("Why that limit?")]
    packed = _turn(index, tokenizer, second, held=_turn(index, tokenizer, first).held)
    assert "encoder.py" in {item.path for item in packed.context}
    return second, packed


def test_a_follow_up_naming_no_code_holds_the_excerpts_and_continues_the_last_prompt(index, smollm2_tokenizer):
    second, before = _second_turn(index, smollm2_tokenizer)
    follow_up = [*second, _answer("It adds the limit, then calls the next step with the sum. " * 4), _ask("Why?")]
    after = _turn(index, smollm2_tokenizer, follow_up, held=before.held)
    assert after.context == before.context
    # The last prompt (up to where its answer began) is where this one begins: the model's cache holds all of it.
    assert after.ids[:len(before.ids)] == before.ids
    assert len(after.ids) <= BUDGET
    # Without the last prompt's excerpts the same turn is chosen again: less room (the answer took some), other
    # excerpts, and a prompt that differs from its start.
    fresh = _turn(index, smollm2_tokenizer, follow_up)
    assert fresh.context != before.context and fresh.ids[:len(before.ids)] != before.ids


def test_a_question_about_other_code_gets_its_own_excerpts(index, smollm2_tokenizer):
    first = [_ask("How does encode_floats_3 use its limit?")]
    before = _turn(index, smollm2_tokenizer, first)
    turn = [*first, _answer("It adds the limit."), _ask("And how do read_until_5 and read_until_6 stop?")]
    after = _turn(index, smollm2_tokenizer, turn, held=before.held)
    assert "streams.py" in {item.path for item in after.context}
    assert after.context != before.context


def test_excerpts_still_wanted_but_outgrown_are_chosen_again_leaving_room_to_grow(index, smollm2_tokenizer):
    first = [_ask("How does encode_floats_3 use its limit?")]
    before = _turn(index, smollm2_tokenizer, first)
    assert len(before.ids) > BUDGET - 50         # a first question's excerpts take what the turn leaves
    turn = [*first, _answer("It adds the limit."), _ask("Why that limit?")]
    after = _turn(index, smollm2_tokenizer, turn, held=before.held)
    alone = _turn(index, smollm2_tokenizer, turn)      # the same messages without the conversation's last prompt
    assert _excerpt_tokens(after) <= _excerpt_tokens(alone) - GROWTH_SHARE * BUDGET + 100
    assert len(alone.ids) > BUDGET - 100 and len(after.ids) < BUDGET - GROWTH_SHARE * BUDGET + 100


def test_a_question_about_other_code_takes_the_whole_room_as_a_first_one_does(index, smollm2_tokenizer):
    first = [_ask("How does encode_floats_3 use its limit?")]
    before = _turn(index, smollm2_tokenizer, first)
    turn = [*first, _answer("It adds the limit."), _ask("And how do read_until_5 and read_until_6 stop?")]
    assert _turn(index, smollm2_tokenizer, turn, held=before.held).ids == _turn(index, smollm2_tokenizer, turn).ids


@pytest.mark.parametrize("change", ["another conversation", "an edited question", "another pinned file"])
def test_excerpts_are_held_only_for_the_same_conversation_and_pins(index, smollm2_tokenizer, change):
    first = [_ask("How does encode_floats_3 use its limit?")]
    before = _turn(index, smollm2_tokenizer, first)
    messages = [*first, _answer("It adds the limit."), _ask("Why?")]
    pinned = ()
    if change == "another conversation":
        messages = [_ask("Why?")]
    elif change == "an edited question":
        messages[0] = _ask("How does encode_floats_4 use its limit?")
    else:
        pinned = ("decoder.py",)
    held = _turn(index, smollm2_tokenizer, messages, held=before.held, pinned_paths=pinned)
    assert held.ids == _turn(index, smollm2_tokenizer, messages, pinned_paths=pinned).ids


def test_excerpts_of_a_file_changed_since_are_not_held(make_repo, smollm2_tokenizer):
    root = make_repo(FILES)
    second, before = _second_turn(index_repository(root), smollm2_tokenizer)
    assert "floats = value * 3 + limit" in smollm2_tokenizer.decode(before.ids)
    edited = FILES["encoder.py"].replace("floats = value * 3 + limit", "floats = value * 3 - limit")
    (root / "encoder.py").write_text(edited)
    follow_up = [*second, _answer("It adds the limit."), _ask("Why?")]
    after = _turn(index_repository(root), smollm2_tokenizer, follow_up, held=before.held)
    text = smollm2_tokenizer.decode(after.ids)
    assert "floats = value * 3 - limit" in text and "floats = value * 3 + limit" not in text


def test_holding_never_costs_the_conversation_an_earlier_turn(index, smollm2_tokenizer):
    first = [_ask("How does encode_floats_3 use its limit?")]
    before = _turn(index, smollm2_tokenizer, first)
    # An answer long enough that the held excerpts and the conversation do not fit the budget together.
    follow_up = [*first, _answer("It adds the limit, step by step. " * 40), _ask("Why?")]
    after = _turn(index, smollm2_tokenizer, follow_up, held=before.held)
    assert after.history == 2 and len(after.ids) <= BUDGET
    assert after.ids[:len(before.ids)] != before.ids        # chosen again, smaller


def test_the_questions_before_weigh_in_at_a_lower_weight():
    conversation = [_ask("alpha beta"), _answer("gamma"), _ask("beta delta"), _answer("x"), _ask("epsilon")]
    weights = _question_weights(conversation)
    assert weights["epsilon"] == 1.0
    assert weights["delta"] == weights["beta"] == EARLIER_WEIGHT            # beta: its heavier (newer) weight
    assert weights["alpha"] == EARLIER_WEIGHT ** 2
    assert "gamma" not in weights                                           # the answers' words do not count


def test_follow_ups_that_name_no_code_keep_the_question_that_did(index, smollm2_tokenizer):
    """Four follow-ups naming no code ("Why?") pushed the question they are about out of the retrieval's questions:
    the fifth ranked on "Why" alone, its excerpts no longer about encode_floats_3. (Where a question in the window
    names code, the window is as it was: test_the_questions_before_weigh_in_at_a_lower_weight.)"""
    conversation = [_ask("How does encode_floats_3 use its limit?")]
    for k in range(5):
        conversation += [_answer(f"Step {k} adds it."), _ask("Why?")]
    weights = _question_weights(conversation, defined=index.definers.__contains__)
    assert weights["encode_floats_3"] == EARLIER_WEIGHT ** EARLIER_QUESTIONS and "Why" not in weights  # (prose)
    packed = _turn(index, smollm2_tokenizer, conversation)
    assert "encoder.py" in {item.path for item in packed.context}


def test_the_same_messages_again_get_the_same_prompt(index, smollm2_tokenizer):
    """A retry, or a prompt only looked at first (llama.cpp's /apply-template), then asked: the prompt does not change,
    as the conversation's next turn would hold it."""
    second, before = _second_turn(index, smollm2_tokenizer)
    again = _turn(index, smollm2_tokenizer, second, held=before.held)
    assert again.ids == before.ids
    follow_up = [*second, _answer("It adds the limit."), _ask("Why?")]
    assert _turn(index, smollm2_tokenizer, follow_up, held=again.held).context == before.context


def test_a_first_turn_without_excerpts_does_not_keep_the_conversation_from_them(index, smollm2_tokenizer):
    first = [_ask("Hello there!")]
    before = _turn(index, smollm2_tokenizer, first)
    assert before.context == []            # nothing in the repository ranks for it
    turn = [*first, _answer("Hello."), _ask("How does read_until_3 use its limit?")]
    assert "streams.py" in {item.path for item in _turn(index, smollm2_tokenizer, turn, held=before.held).context}


def test_a_pinned_file_changed_since_is_not_held_without_its_new_part(make_repo, smollm2_tokenizer):
    root = make_repo({**FILES, "notes.py": _module("note", "pins", count=2)})
    pins = ["notes.py"]
    first = [_ask("How does encode_floats_3 use its limit?")]
    second = [*first, _answer("It adds the limit."), _ask("Why that limit?")]
    index = index_repository(root)
    before = _turn(index, smollm2_tokenizer, second, pinned_paths=pins,
                   held=_turn(index, smollm2_tokenizer, first, pinned_paths=pins).held)
    follow_up = [*second, _answer("It adds the limit."), _ask("Why?")]
    assert _turn(index, smollm2_tokenizer, follow_up, held=before.held, pinned_paths=pins).context == before.context
    # A function added to the pinned file, in a chunk of its own: the chunks held are all still there as they were.
    added = "\n\ndef note_tail_added(value):\n    return value\n"
    (root / "notes.py").write_text(_module("note", "pins", count=2) + added)
    after = _turn(index_repository(root), smollm2_tokenizer, follow_up, held=before.held, pinned_paths=pins)
    assert "note_tail_added" in smollm2_tokenizer.decode(after.ids)


def test_excerpts_chosen_again_never_cut_a_pinned_file_for_the_room_to_grow(make_repo, smollm2_tokenizer):
    index = index_repository(make_repo({**FILES, "notes.py": _module("note", "pins", count=9)}))
    pins = ["notes.py"]
    first = [_ask("How does encode_floats_3 use its limit?")]
    before = _turn(index, smollm2_tokenizer, first, pinned_paths=pins)
    pinned_rows = {item.start_line for item in before.context if item.path == "notes.py"}
    assert len(pinned_rows) == len(index.chunk_numbers("notes.py"))          # the whole file fits a turn
    # An answer long enough that the held excerpts no longer fit beside the conversation: still wanted, chosen again.
    turn = [*first, _answer("It adds the limit, then calls the next step. " * 8), _ask("Why that limit?")]
    after = _turn(index, smollm2_tokenizer, turn, held=before.held, pinned_paths=pins)
    assert after.context != before.context
    assert {item.start_line for item in after.context if item.path == "notes.py"} == pinned_rows


def test_of_several_conversations_the_one_continued_is_found(index, smollm2_tokenizer):
    """Two chat clients taking turns on one server: each turn continues its own conversation's last prompt, the
    longest one it continues (a later turn of it), never another's."""
    floats = [_ask("How does encode_floats_3 use its limit?")]
    until = [_ask("How does read_until_2 use its limit?")]
    first_floats, first_until = (_turn(index, smollm2_tokenizer, m).held for m in (floats, until))
    floats_2 = [*floats, _answer("It adds it."), _ask("Why?")]
    second_floats = _turn(index, smollm2_tokenizer, floats_2, held=first_floats).held
    held = [first_floats, first_until, second_floats]
    assert continued(held, [*floats_2, _answer("Because."), _ask("And then?")]) is second_floats
    assert continued(held, [*until, _answer("It adds it too."), _ask("Why?")]) is first_until
    assert continued(held, floats) is first_floats     # (the same request again: the one it repeats)
    assert continued(held, [_ask("How does decode_objects_1 use its limit?")]) is None
    assert continued([], floats) is None


def _long_conversation(index, tokenizer, turns: int):
    """A conversation about encode_floats_3 of `turns` follow-ups about it (each naming it: "Why?" alone, four
    times over, has nothing left to rank by), each turn built from the last one's held prompt, as a session builds
    them: the prompts."""
    messages = [_ask("How does encode_floats_3 use its limit?")]
    prompts = [_turn(index, tokenizer, messages)]
    for k in range(turns):
        messages = [*messages, _answer(f"Step {k} adds the limit, then calls the next step with the sum. " * 2),
                    _ask("Why does encode_floats_3 do that?")]
        prompts.append(_turn(index, tokenizer, messages, held=prompts[-1].held))
    return prompts


def test_a_long_conversation_drops_its_older_turns_a_step_at_a_time(index, smollm2_tokenizer):
    """Once the conversation fills the room beside its held excerpts, dropping the one oldest exchange a turn moved
    every later turn's start: each turn read its whole conversation again. Now the turn that must drop drops down to
    GROWTH_SHARE of the budget below it, and the turns after it begin where it does."""
    prompts = _long_conversation(index, smollm2_tokenizer, 16)
    cuts = [k for k in range(2, len(prompts)) if prompts[k].held.dropped != prompts[k - 1].held.dropped]
    assert cuts, "the conversation never outgrew the budget: the test shows nothing"
    for k in range(2, len(prompts)):
        before, after = prompts[k - 1], prompts[k]
        assert len(after.ids) <= BUDGET
        if after.context != before.context:
            continue      # (excerpts outgrown and chosen again: test_excerpts_still_wanted_but_outgrown_...)
        if k in cuts:     # the older turns gave way down to a quarter of the budget below it
            assert len(after.ids) <= BUDGET * (1 - GROWTH_SHARE)
            assert after.held.dropped > before.held.dropped
        else:             # the last prompt is where this one begins: the model's cache holds it all
            assert after.ids[:len(before.ids)] == before.ids, k
    read_whole = [k for k in range(cuts[0] + 1, len(prompts)) if prompts[k].ids[:len(prompts[k - 1].ids)]
                  != prompts[k - 1].ids]
    assert len(read_whole) <= (len(prompts) - cuts[0]) // 3, read_whole     # not every turn, as it was


def test_the_turn_after_an_answer_begun_holds_its_excerpts(index, smollm2_tokenizer):
    """A client's "continue" (the answer begun, the assistant's message last) is remembered with the answer as it
    was begun; the client's next turn carries that answer whole (begun, then the model's words), which matched no
    conversation held: its excerpts were chosen again and the whole prompt read again."""
    second, before = _second_turn(index, smollm2_tokenizer)
    going_on = _turn(index, smollm2_tokenizer, [*second, _answer("It adds the limit")], held=before.held)
    assert going_on.context == before.context
    follow_up = [*second, _answer("It adds the limit, then calls the next step with the sum."), _ask("Why?")]
    assert continued([going_on.held], follow_up) is going_on.held
    after = _turn(index, smollm2_tokenizer, follow_up, held=going_on.held)
    assert after.context == going_on.context
    # (an answer that is not the one begun, or a question in its place, continues nothing)
    assert continued([going_on.held], [*second, _answer("It subtracts it."), _ask("Why?")]) is None
    assert continued([going_on.held], [*second, _ask("It adds the limit, then?")]) is None


COMMON_WORDS = {**FILES, "workers.py": (
    "it = iter(range(3))\n\n\ndef work(value):\n    return next(it) + value\n\n\n"
    "class Worker:\n    def work_on(self, value):\n        return work(value)\n")}


def _five_follow_ups(last: str) -> list[dict]:
    """A question about encode_floats_3, then five follow-ups, the last ``last``, the others "Why does it work?"."""
    conversation = [_ask("How does encode_floats_3 use its limit?")]
    for k, question in enumerate(["Why does it work?"] * 4 + [last]):
        conversation += [_answer(f"Step {k} adds it."), _ask(question)]
    return conversation


def test_a_common_word_the_repository_defines_is_prose_in_a_follow_up(make_repo, smollm2_tokenizer):
    """Where the repository defines `it` and `work`, "Why does it work?" counted as naming code, so five such
    follow-ups kept the window of questions as it was: the question about encode_floats_3 fell out of the retrieval
    and the excerpts went to workers.py. A word written as prose is prose (the retrieval still weighs it)."""
    index = index_repository(make_repo(COMMON_WORDS))
    assert {"it", "work"} <= set(index.definers)       # (else the test shows nothing)
    conversation = _five_follow_ups("Why does it work?")
    weights = _question_weights(conversation, defined=index.definers.__contains__)
    # (each follow-up points back, "it": the question it follows keeps its weight, the follow-up's own words less)
    assert weights["encode_floats_3"] == 1.0 and weights["work"] == EARLIER_WEIGHT
    assert "encoder.py" in {item.path for item in _turn(index, smollm2_tokenizer, conversation).context}


@pytest.mark.parametrize("last", ["Why does `work` need it?", "Why does work() need it?", "Is it.work called?",
                                  "Why does work_on call it?", "Why does a Worker need it?"])
def test_a_name_written_as_code_still_names_code(make_repo, last):
    """Backticked, called, dotted, shaped as code (an underscore) or capitalized mid-sentence (a class): the last
    follow-up names code, so the window of questions stays as it is, the question about encode_floats_3 out of it."""
    index = index_repository(make_repo(COMMON_WORDS))
    assert {"work", "work_on", "Worker"} <= set(index.definers)
    weights = _question_weights(_five_follow_ups(last), defined=index.definers.__contains__)
    assert "encode_floats_3" not in weights and {"work", "work_on", "Worker"} & {n for n, w in weights.items() if w == 1}


@pytest.mark.parametrize("question, names", [
    ("Why does it work?", False), ("Does it work. Why?", False), ("it works...", False), ("Why?", False),
    ("List them again?", False),                # (a class `List`: a capital that begins a sentence is prose's)
    ("What does work() return?", True), ("Why `it`?", True), ("Is it.work right?", True),
    ("What is a Worker?", True), ("Why work_on?", True), ("Why is it slow?\nAnd a Worker?", True)])
def test_a_question_names_code_by_a_defined_name_written_as_code(question, names):
    defined = {"it", "work", "work_on", "Worker", "List"}.__contains__
    assert _names_code(question, defined) is names
    assert not _names_code(question, lambda name: False)      # (a name the repository does not define is none)


@pytest.mark.parametrize("question, names", [
    ("Which parser should it use, e.g. for a config file?", False), ("Is the cache emptied, i.e. cleared?", False),
    ("Why does the API answer JSON here?", False), ("Is it OK to call this twice?", False),
    ("How are HTTP errors and URLs handled?", False), ("What does the CLI print, e.g. on a bad flag?", False),
    ("Why does `API` answer it?", True), ("Is API.get called twice?", True), ("Is OK() called?", True),
    ("Where is OK_STATUS set?", True), ("What does a JSONDecoder hold?", True), ("Use a helper, e.g. work_on?", True)])
def test_abbreviations_and_acronyms_in_prose_name_no_code(question, names):
    """A word in capitals (API, JSON, OK, URLs) counted as code-shaped and as a class capitalized mid-sentence:
    where the repository defined it (`API = ...`, `OK = 200`), a question in prose named code. An acronym is
    prose's; written as code (backticked, dotted, called, an underscore, a class's inner capitals) it still names
    code. ("e.g." and "i.e." never did: an identifier is two characters or more.)"""
    defined = {"API", "JSON", "OK", "HTTP", "URLs", "CLI", "OK_STATUS", "JSONDecoder", "work_on", "get"}.__contains__
    assert _names_code(question, defined) is names


@pytest.mark.parametrize("question, names", [
    ("Two things:\n- Explain the cache\n- Check the retries", False),
    ("What next?\n* List the callers\n* Check them", False), ("1) Explain the cache\n2) Check it", False),
    ("  - Explain the nested item", False), ("Why is it slow? (Maybe the cache?)", False),
    ("(Also: is it thread-safe?)", False), ("It fails.\n(Check the log?)", False),
    ("Which shapes (Rectangle, Circle) define area?", True), ("Is area defined (see Rectangle) twice?", True),
    ("Does it hold width, Rectangle and Circle?", True), ("Which holds state - Rectangle or Circle?", True),
    ("- Why does a Rectangle hold it?", True), ("Compare:\n- the Rectangle\n- the Circle", True)])
def test_a_capital_that_opens_a_list_item_or_a_parenthesized_sentence_is_prose(question, names):
    """A capital after a list item's mark ("- ", "* ", "1) ") or an opening parenthesis that begins a sentence read
    as a class's: where the repository defined `Explain`, `Check` or `Maybe`, the question named code. They begin a
    clause, as a sentence's first word does. A parenthesis or a comma mid-sentence still takes a class's name: "(see
    Rectangle)", "(Rectangle, Circle)"."""
    defined = {"Explain", "Check", "List", "Maybe", "Also", "Rectangle", "Circle"}.__contains__
    assert _names_code(question, defined) is names


def test_an_acronym_the_repository_defines_is_prose_in_a_follow_up(make_repo):
    """Where the repository defines `OK` and `API`, "Is it OK to call the API twice?" named code: five such
    follow-ups left the question about encode_floats_3 out of the retrieval. It is prose now, as "Why does it
    work?" is."""
    index = index_repository(make_repo({**FILES, "status.py": "OK = 200\n\n\nclass API:\n    base = '/v1'\n"}))
    assert {"OK", "API"} <= set(index.definers)        # (else the test shows nothing)
    weights = _question_weights(_five_follow_ups("Is it OK to call the API twice?"),
                                defined=index.definers.__contains__)
    assert weights["encode_floats_3"] == 1.0 and weights["OK"] == EARLIER_WEIGHT     # (pointing back: "it")


LOGIN = ("import hashlib\n\n\ndef hash_password(password, salt):\n"
         "    return hashlib.sha256(salt + password).hexdigest()\n\n\n"
         "def check_password(password, salt, hashed):\n    return hash_password(password, salt) == hashed\n")


def test_a_follow_up_finding_no_code_keeps_its_excerpts_whatever_the_ranking_says(index, smollm2_tokenizer,
                                                                                   monkeypatch):
    """A follow-up whose words find no code ranks on earlier questions at less weight, and as older turns were
    cut those weights moved: a fresh choice of the same files came out a fifth ahead, and the REPL read its whole
    prompt again (round 9). Such a follow-up keeps the held excerpts whatever the worth of a fresh choice (here
    made to win every comparison)."""
    import prompts.chat

    monkeypatch.setattr(prompts.chat, "HOLD_MARGIN", -0.99)    # a fresh choice is worth more than 1% of the held
    second, before = _second_turn(index, smollm2_tokenizer)
    for question in ["Why?", "Explain it with an example."]:
        follow_up = [*second, _answer("It adds the limit."), _ask(question)]
        after = _turn(index, smollm2_tokenizer, follow_up, held=before.held)
        assert after.ids[:len(before.ids)] == before.ids, question


def test_a_follow_up_naming_code_a_file_or_a_new_topic_in_prose_is_ranked_again(make_repo, smollm2_tokenizer):
    """What finds code is ranked against the held excerpts, as before: a question naming code, a file, or a new
    topic in prose (words of login.py's, written as prose: "passwords" is no name written as code, and a rule by
    `_names_code` kept the old excerpts, which lack check_password)."""
    index = index_repository(make_repo({**FILES, "login.py": LOGIN}))
    assert not _finds_code(index, "Why?") and not _finds_code(index, "Explain it with an example.")
    assert _finds_code(index, "Why does encode_floats_3 add it?")
    assert _finds_code(index, "How is a password hashed and checked?")
    second, before = _second_turn(index, smollm2_tokenizer)
    for question, path in [("How is a password hashed and checked?", "login.py"),
                           ("What is in streams.py?", "streams.py")]:
        follow_up = [*second, _answer("It adds the limit."), _ask(question)]
        after = _turn(index, smollm2_tokenizer, follow_up, held=before.held)
        assert path in {item.path for item in after.context} and path not in {item.path for item in before.context}
