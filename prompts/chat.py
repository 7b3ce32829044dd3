"""The prompt for a chat turn: the conversation through the tokenizer's chat template, with repository context
retrieved for the question (and the pinned files) in the system message.

Tokenizers without a chat template get CodeLlama-Instruct's format: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n
{user} [/INST]``. When the conversation alone overflows the budget, its oldest turns are dropped.

The excerpts are retrieved for the question and, at a lower weight, the questions before it: a follow-up ("why is
that check needed?") is about the code the question before it was given, and one that points back at it ("that")
weighs less than the question it follows. A question's words are read in the repository's terms (question_terms.py:
"merge cookies" is `merge_cookies`, `Client.send` that class's send), without the stop words of its prose. A later turn of the same conversation
holds the excerpts the last prompt carried, text for text, unless the ranking clearly prefers others (holding.py's
margin) or holding them would carry fewer earlier turns than a fresh choice: the model's cache then still holds the
system message, the earlier turns and the last answer, and a follow-up prefills only itself, where excerpts
retrieved again for its few words (and laid out before the whole conversation) prefilled the whole prompt. Excerpts
take all the room the turns leave (a question may have no follow-up), so the turn after may find them still wanted
but without room for its longer conversation: they are then chosen again leaving GROWTH_SHARE of the budget for the
conversation to grow into, and the turns after that can hold them. Likewise a conversation that fills the room
beside its held excerpts: the turn that must drop older exchanges drops them until GROWTH_SHARE of the budget is
left for it to grow into, and the turns after it begin where it does (dropping one exchange a turn moved every later
turn's start, and each read its whole conversation again).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .chunking import IDENTIFIER, Chunk
from .errors import BudgetError, ChatTemplateError, PromptError
from .holding import HOLD_MARGIN, chunk_number, worth
from .index import RepoIndex
from .packing import ContextItem, Layout, PackedPrompt, select_chunks
from .question_terms import content_words, members_named, prose_words, spelled_names
from .ranking import Query, ordered, score_both, text_weights
from .tokens import Encoder, encoder_for, surely_over

SYSTEM = (
    "You are a coding assistant working in the repository {name}. Answer the user's questions about its code. "
    "Excerpts of the repository that may help follow; refer to files by their paths."
)
PINNED_WEIGHT = 0.3  # identifiers of pinned files, next to the question's (1.0)
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

EARLIER_QUESTIONS = 3  # the user's messages before the question whose identifiers weigh in the retrieval too,
EARLIER_WEIGHT = 0.5   # each at this much of the next one's weight
GROWTH_SHARE = 0.25    # of the budget, left for the conversation to grow into by excerpts chosen again that it outgrew
                       # and by the older turns a conversation that outgrew its held excerpts' room drops
HOLD_HEAD = 3          # held excerpts and a fresh choice are compared by the worth of their best few chunks

_WORD = re.compile(r"[\w./-]+")
_CODE_SHAPED = re.compile(r"[_0-9]|.[A-Z]")    # snake_case, a digit; camelCase, CamelCase's inner capitals
_ACRONYM = re.compile(r"[A-Z]{2,}s?")          # API, JSON, URLs: prose's capitals, not a constant's nor a class's
_MODULE_WORDS = frozenset(("module", "modules", "file", "files", "package", "script", "submodule"))
# ... of which "file" is also prose's word for the files code handles ("closing a cached file", "the parquet files"):
# beside a stem it names that module only in a question of at most DESCRIBING_WORDS words (but its stop words)
_FILE_WORDS = frozenset(("file", "files"))
DESCRIBING_WORDS = 3
_BACK_REFERENCES = frozenset(("it", "its", "that", "this", "there", "them", "they", "those", "these", "he", "she"))
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+")     # a list item's mark, at its line's start

Message = dict[str, str]
Renderer = Callable[[str, list[Message]], list[int]]


@dataclass(frozen=True)
class HeldExcerpts:
    """A chat prompt's repository excerpts, as the next turn of its conversation may hold them."""

    messages: tuple[tuple[str, str], ...]  # (role, content) of the messages the prompt answered
    pinned: tuple[tuple[str, tuple[Chunk, ...]], ...]   # the pinned files it was given, each with its chunks then
    chunks: tuple[Chunk, ...]              # the chunks the excerpts show, as indexed then
    text: str                              # the excerpts, as appended to the system message
    context: tuple[ContextItem, ...]       # PackedPrompt.context
    dropped: int = 0                       # the conversation's messages (not the system's) left out, oldest first


def build_chat_prompt(
    index: RepoIndex,
    tokenizer,
    messages: Sequence[Message],
    budget_tokens: int = 4096,
    pinned_paths: Sequence[str] = (),
    reserve_tokens: int = 0,
    history_share: float = 1.0,
    held: HeldExcerpts | None = None,
) -> PackedPrompt:
    """The prompt for answering the last (user) message of ``messages``, or for going on with the answer begun by
    an assistant's message after it (llama.cpp's assistant prefill, a chat client's "continue"), within
    ``budget_tokens - reserve_tokens``. Pinned files (paths relative to the root) are included first, as much as fits.
    ``history_share``: the part of that the earlier turns may take, the rest kept for the repository's excerpts
    (the question and the exchange before it may take more; room the excerpts leave goes back to the turns); 1:
    the conversation first, as an API client's own context. ``held``: the last prompt's ``held``, whose excerpts
    this one keeps if it continues that conversation and they are still wanted (the module's docstring)."""
    if not messages or messages[-1].get("role") not in ("user", "assistant") or not any(
            m.get("role") == "user" for m in messages):
        raise PromptError("a chat prompt needs the user's message last (or an answer begun after it, to go on with)")
    encoder = encoder_for(tokenizer)
    limit = budget_tokens - reserve_tokens
    render = _renderer(tokenizer, encoder)
    # Every system message counts, in order (a client's own beside a tool's, or one mid-conversation), as OpenAI
    # and Ollama take each one; the conversation itself is the rest.
    given = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    system = given or SYSTEM.format(name=index.name)
    turns = [m for m in messages if m["role"] != "system"]
    if turns[-1]["role"] == "assistant" and not turns[-1]["content"].strip():
        # An answer begun that is empty or white space only is none: CodeLlama-Instruct's format, and ChatML's with
        # " ", would end the prompt in a lone space (or newline) token, which a byte-level vocabulary almost only
        # has before digits. It stays as an empty message, the renderers' mark for a fresh answer: dropped, an
        # answer before it would become the answer begun (`_answer_begun`).
        turns[-1] = {"role": "assistant", "content": ""}
    question = next(m["content"] for m in reversed(turns) if m["role"] == "user")
    # (told from their starts: a huge question or system message was encoded whole only to be refused)
    if surely_over(tokenizer, question, limit):
        raise BudgetError(f"the question does not fit into a prompt budget of {limit} tokens")
    if surely_over(tokenizer, given, limit):
        raise BudgetError(f"the system message ({len(given):,} characters) leaves no room for the question in a prompt "
                          f"budget of {limit} tokens")
    whole = _latest_turns_that_fit(render, system, turns, limit, bool(given))
    shared = whole      # the turns within the history share
    if history_share < 1 and len(whole) > 1:
        # A long chat filled the whole budget and left no room for the code it is about, pinned files included.
        # The last exchange stays whole (a follow-up refers to it); older ones only within the share.
        latest = len(render(system, whole[-3:]))
        shared = _latest_turns_that_fit(render, system, whole, max(latest, int(limit * history_share)))

    pinned = [_pinned_chunks(index, path) for path in pinned_paths]
    pins = tuple((path, tuple(chunks)) for path, chunks in zip(pinned_paths, pinned))
    question = next(m["content"] for m in reversed(shared) if m["role"] == "user")
    weights = {name: PINNED_WEIGHT for chunks in pinned for chunk in chunks for name in chunk.references}
    weights.update(_question_weights(whole, defined=index.definers.__contains__, index=index))
    mentioned = _mentioned_files(index, question)
    query = Query(weights=weights, mentioned=frozenset(mentioned),
                  mentioned_in_prose=frozenset(_stems_in_prose(index, question) - mentioned),
                  prose_words=len(content_words(question)),
                  qualified=_question_members(whole, index))
    _, scores = score_both(index, query)
    layout = Layout(
        section=lambda c: [f"\n{c.path}\n"],
        chunk=lambda c: [_excerpt(c)],
        gap=lambda c: [],  # every excerpt names its lines
        blank=lambda c: [],
        code_between=index.code_between,
    )

    def choose(room: int) -> _Chosen:
        """Excerpts chosen for ``room`` tokens, and the turns they leave room for."""
        candidates = _pinned_first([c for chunks in pinned for c in chunks], ordered(index, query, scores))
        selection = select_chunks(encoder, layout, candidates, room)
        while True:
            segments, context = selection.segments()  # all text: the chat layout has no special tokens
            ids = render(system + "".join(segments), shared)
            if len(ids) <= limit:
                break
            selection.drop_last()  # the template joined the pieces into a few more tokens than counted
        excerpts, turns = "".join(segments), shared
        if len(shared) < len(whole):
            # The share kept room the excerpts did not take (a question naming no code): older turns have it back.
            turns = _latest_turns_that_fit(render, system + excerpts, whole, limit)
            ids = render(system + excerpts, turns)
        return _Chosen(excerpts, tuple(choice.chunk for choice in selection.order), context, turns, ids)

    room = limit - len(render(system, shared))
    chosen = choose(room)
    if (held is not None and _continues(held, messages, pins)
            and _still_wanted(index, held, chosen.chunks, scores, follows_on=_follows_on(index, question, query))):
        kept = _turns_beside(render, system + held.text, whole, limit)
        if len(kept) >= len(chosen.conversation):     # (holding them must not cost the conversation earlier turns)
            kept = _held_turns(render, system + held.text, turns, held.dropped, kept, limit)
            chosen = _Chosen(held.text, held.chunks, list(held.context), kept, render(system + held.text, kept))
        else:
            # Still wanted, but the conversation outgrew the room they left it: chosen again, leaving it room to
            # grow into (at most half of what the turns leave), so that the next turns can hold them; not where
            # that would cut a pinned file (/add promised it whole, as far as the budget allows).
            again = choose(room - min(int(limit * GROWTH_SHARE), room // 2))
            if _pinned_shown(again, pinned) == _pinned_shown(chosen, pinned):
                chosen = again
    excerpts, chunks, context, conversation, ids = chosen
    stops = [i for i in map(encoder.token_id, END_OF_TURN) if i is not None]
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    now = HeldExcerpts(tuple((m["role"], m["content"]) for m in messages), pins, chunks, excerpts, tuple(context),
                       dropped=len(turns) - len(conversation))
    return PackedPrompt(ids, context, list(dict.fromkeys(stops)), [], "chat", history=len(conversation) - 1,
                        held=now)


def _question_weights(conversation: list[Message], defined: Callable[[str], bool] = lambda name: True,
                      index: RepoIndex | None = None) -> dict[str, float]:
    """Identifier weights for the retrieval: the question's and the questions' before it (`_question_window`), an
    identifier at its heaviest weight. Each question's are its words (the stop words of its prose left out) and the
    names of the ``index`` that its words spell ("merge cookies": `merge_cookies`)."""
    weights: dict[str, float] = {}
    for factor, text in _question_window(conversation, defined):
        for name, weight in _text_terms(text, index).items():
            weights[name] = max(weights.get(name, 0.0), weight * factor)
    return weights


def _question_members(conversation: list[Message], index: RepoIndex) -> dict[str, tuple[float, list[int]]]:
    """The types' members the questions name (`Client.send`, "client send"), as ranking's qualified uses: "Type.member"
    -> (its question's weight, the chunks defining it)."""
    members: dict[str, tuple[float, list[int]]] = {}
    for factor, text in _question_window(conversation, index.definers.__contains__):
        for use, chunks in members_named(index, text).items():
            if factor > members.get(use, (0.0, []))[0]:
                members[use] = (factor, chunks)
    return members


def _question_window(conversation: list[Message], defined: Callable[[str], bool]) -> list[tuple[float, str]]:
    """The user messages whose words the retrieval weighs, each with its weight: the question (1), and the
    EARLIER_QUESTIONS before it at EARLIER_WEIGHT less each. Where none of them names code (`_names_code`: "Why?"
    four times over), the last question that did counts as the oldest of them: those follow-ups are about what it
    named, and left the retrieval nothing to rank by."""
    questions = [m["content"] for m in reversed(conversation) if m["role"] == "user"]
    window = questions[:EARLIER_QUESTIONS + 1]
    if not any(_names_code(question, defined) for question in window):
        named = (q for q in questions[EARLIER_QUESTIONS + 1:] if _names_code(q, defined))
        window += list(itertools.islice(named, 1))
    weighted, age = [], 0
    for text in window:
        # A follow-up pointing back at what came before ("Why is that needed?") is about it: it weighs less than the
        # question it follows, which keeps its weight (its words, "needed", found other code when excerpts were
        # chosen again for a longer conversation)
        pointing_back = _points_back(text) and not _names_code(text, defined)
        weighted.append((EARLIER_WEIGHT ** min(age + pointing_back, EARLIER_QUESTIONS), text))
        age += not pointing_back
    return weighted


def _text_terms(text: str, index: RepoIndex | None) -> dict[str, float]:
    """One question's identifier weights: its words but the stop words of its prose ("How does the ..."), which pull
    in whatever chunk says "how" or "explain" in a comment, and the names of the ``index`` its words spell."""
    weights = text_weights(text)
    for word in prose_words(_identifiers_as_written(text)):
        del weights[word]
    if index is not None:
        weights.update(dict.fromkeys(spelled_names(index, text), 1.0))
        for word in _WORD.findall(text):        # a file named ("utils.py"): its extension names nothing
            stem, dot, extension = word.strip("./").rpartition(".")
            if dot and stem and index.paths.files(word.strip("./"), False, extension=True):
                weights.pop(extension, None)
    return weights


def _names_code(question: str, defined: Callable[[str], bool]) -> bool:
    """Whether ``question`` names the repository's code: a name the repository ``defined``, written as code is
    (`_identifiers_as_written`). A word of prose is not, though the repository defines it (`it`, `work`, `run`):
    "Why does it work?" is about what a question before it named."""
    return any(defined(name) and as_code for name, as_code in _identifiers_as_written(question))


def _identifiers_as_written(text: str) -> Iterator[tuple[str, bool]]:
    """Each identifier of ``text``, and whether it is written as code: shaped as code (an underscore, a digit, a
    capital after its first letter: `encode_floats`, `utf8`, `JSONDecoder`, `MAX_LEN`), set as code (in backticks,
    called, dotted: `work`, work(), it.work), or capitalized mid-sentence, as a class is named ("What does a
    Rectangle hold?"); a capital that begins a clause (`_begins_a_clause`: "Why", "List them", "- Explain") is
    prose's, and so is a word in capitals alone, an acronym ("Does the API answer JSON?"), unless set as code. One
    pass over the text: a pasted log of 100 KB is a question too."""
    quoted, end = False, 0
    for found in IDENTIFIER.finditer(text):
        name, start = found.group(), found.start()
        gap = text[end:start]                       # since the identifier before, or the start
        quoted ^= gap.count("`") % 2 == 1
        before, after = text[max(0, start - 2):start], text[found.end():found.end() + 2]
        dotted = (len(before) == 2 and before[1] == "." and before[0].isalnum()
                  or after[:1] == "." and after[1:2].isalpha())        # ("it works." ends a sentence)
        set_as_code = quoted or after[:1] == "(" or dotted
        shaped_as_code = _CODE_SHAPED.search(name) or name[0].isupper() and not _begins_a_clause(gap, end == 0)
        yield name, bool(set_as_code or shaped_as_code and not _ACRONYM.fullmatch(name))
        end = found.end()


def _begins_a_clause(gap: str, first: bool) -> bool:
    """Whether the word after ``gap`` (the text since the identifier before it; ``first``: there is none) begins a
    clause of prose: a sentence (after a sentence's end, a colon or a line break, or an opening parenthesis there:
    "Why? (Maybe ...)") or a list item ("- ", "* ", "1) "). A parenthesis or a comma mid-sentence does not: "(see
    Rectangle)", "(Rectangle, Circle)" name classes."""
    if ("\n" in gap or first) and _LIST_ITEM.fullmatch(gap.rpartition("\n")[2]):
        return True
    lead = gap.rstrip()
    lead = lead[:-1].rstrip() if lead.endswith("(") else lead
    return not lead and first or lead[-1:] in (".", "!", "?", ":") or "\n" in gap[len(lead):]


class _Chosen(NamedTuple):
    """A chat prompt's excerpts and the conversation beside them."""

    excerpts: str                     # as appended to the system message
    chunks: tuple[Chunk, ...]         # the chunks they show, in the order chosen
    context: list[ContextItem]
    conversation: list[Message]       # the turns carried
    ids: list[int]


def _pinned_shown(chosen: _Chosen, pinned: list[list[Chunk]]) -> int:
    """How many of the pinned files' chunks the excerpts show."""
    keys = {(chunk.path, chunk.start_line) for chunks in pinned for chunk in chunks}
    return sum((chunk.path, chunk.start_line) in keys for chunk in chosen.chunks)


def continued(held: Sequence[HeldExcerpts], messages: Sequence[Message]) -> HeldExcerpts | None:
    """Of several conversations' last prompts (``held``, the most recent last), the one ``messages`` continue: the
    longest, the most recent of equals; None where they continue none. (Two chat clients taking turns on one server
    each continue their own.)"""
    going_on = [past for past in held if _same_start(past, messages)]
    return max(reversed(going_on), key=lambda past: len(past.messages), default=None)


def _continues(held: HeldExcerpts, messages: Sequence[Message], pins) -> bool:
    """Whether ``messages`` continue the conversation ``held`` was built for (`_same_start`) with the same pinned
    files, chunk for chunk (a function added to one would be missing from the excerpts held)."""
    return pins == held.pinned and _same_start(held, messages)


def _same_start(held: HeldExcerpts, messages: Sequence[Message]) -> bool:
    """Whether ``messages`` are the ones ``held`` answered, then more, or none more (the same request again, a retry
    or a prompt only looked at, gets the same prompt). An answer ``held`` went on with (the assistant's message
    last) may come back longer: the client's next turn carries it whole, begun and then the model's words."""
    if len(messages) < len(held.messages):
        return False
    *before, (role, content) = held.messages
    last = messages[len(before)]
    return (all((m["role"], m["content"]) == past for m, past in zip(messages, before))
            and last["role"] == role and (last["content"] == content
                                          or role == "assistant" and last["content"].startswith(content)))


def _still_wanted(index: RepoIndex, held: HeldExcerpts, fresh: Sequence[Chunk], scores, follows_on: bool) -> bool:
    """Whether the held excerpts stay: every chunk they show is indexed still as it was, and either the question
    finds no code nor file (``follows_on``: "Why?", "Explain it with an example." are about what the last answer
    was given) or the ``fresh`` choice is worth no HOLD_MARGIN more than they are, by the ranking's ``scores`` for
    this question (over each side's best). A question finding no code ranks on its prose words and the earlier
    questions' at less weight: as older turns were cut, "ok" went from a quarter to an eighth of a weight and a fresh
    choice of the same two files came out a fifth ahead, and the REPL read its whole prompt again (round 9)."""
    if not held.chunks:     # (nothing held: held again at every turn, the conversation would never get any)
        return not fresh
    for chunk in held.chunks:
        number = chunk_number(index, chunk.path, chunk.start_line)
        if number is None or index.chunks[number] != chunk:
            return False
    if follows_on:
        return True
    # Each side by its HOLD_HEAD best chunks (fewer where either has fewer): whether the question brings other code
    # is in the ranking's head; over all of them, the fresh choice, the ranking's own, is ahead by its tail alone.
    best = min(HOLD_HEAD, len(fresh), len(held.chunks))
    return _best_worth(index, fresh, scores, best) <= _best_worth(index, held.chunks, scores, best) * (1 + HOLD_MARGIN)


def _follows_on(index: RepoIndex, question: str, query: Query) -> bool:
    """Whether ``question`` is about what the last answer was given: it names no file nor code, and either finds no
    code ("Why?") or points back at it in prose ("And what calls it?", "What could go wrong there?"), whatever its
    other words find ("calls", "wrong": a comment somewhere)."""
    if query.mentioned or _names_code(question, index.definers.__contains__) or spelled_names(index, question):
        return False
    return not _finds_code(index, question) or _points_back(question)


def _points_back(question: str) -> bool:
    """Whether a word of the question's prose refers to something said before ("it", "that", "there")."""
    return any(name.lower() in _BACK_REFERENCES and not as_code for name, as_code in _identifiers_as_written(question))


def _finds_code(index: RepoIndex, question: str) -> bool:
    """Whether the question's own words rank any chunk: "Why?" and "Explain it with an example." find none, and
    are about what the last answer was given; "How are passwords hashed and checked?" finds login.py, a new topic
    in prose (whether it names code as code, `_names_code`, does not tell them apart)."""
    _, own = score_both(index, Query(weights=text_weights(question)))
    return bool((own > 0).any())


def _best_worth(index: RepoIndex, chunks: Sequence[Chunk], scores, count: int) -> float:
    """The worth (holding.worth) of the ``count`` best of ``chunks``."""
    return sum(sorted((worth(index, [chunk], scores) for chunk in chunks), reverse=True)[:count])


def _held_turns(render: Renderer, system: str, turns: list[Message], dropped: int, fitting: list[Message],
                limit: int) -> list[Message]:
    """The turns a held prompt carries: those from where the last prompt's began (``dropped`` of ``turns`` before
    it), while they fit beside ``system`` (its held excerpts); then the cached prompt goes on past its turns, where
    ``fitting`` (the latest turns that fit) would begin a message later each turn once the conversation filled the
    room, and every turn would read its whole conversation again. Where they no longer fit, the older ones give way
    until GROWTH_SHARE of the budget below ``limit`` is free, so that the turns after this one begin where it does (as
    llama.cpp's context shift drops half its context at once); never below ``fitting``'s question."""
    if 0 < len(turns) - dropped <= len(fitting) and len(render(system, turns[dropped:])) <= limit:
        return turns[dropped:]          # (fewer than fitting's where the last cut left room to grow into)
    return _turns_beside(render, system, fitting, limit - int(limit * GROWTH_SHARE)) or fitting


def _turns_beside(render: Renderer, system: str, conversation: list[Message], limit: int) -> list[Message]:
    """The latest turns that fit ``limit`` beside ``system`` (_latest_turns_that_fit), or none where the question
    alone does not."""
    try:
        return _latest_turns_that_fit(render, system, conversation, limit)
    except BudgetError:
        return []


def _latest_turns_that_fit(render: Renderer, system: str, conversation: list[Message], limit: int,
                           clients_system: bool = False) -> list[Message]:
    """The conversation from its earliest turn that still fits `limit` with the system message: older exchanges
    (a user message and its answer) give way first, the question never (``clients_system``: the system message is
    the client's, to be named where it alone leaves the question no room). Found by a binary search over where to
    start: dropping one turn at a time rendered the whole conversation once per turn, and 20,000 short messages
    (700 KB) kept the engine busy for minutes."""
    asked = max((k for k, m in enumerate(conversation) if m["role"] == "user"), default=len(conversation) - 1)
    starts = [0]                                    # where the kept conversation may begin, oldest first
    while starts[-1] < len(conversation) - 1:
        first = starts[-1]
        following = first + 2 if conversation[first + 1]["role"] == "assistant" else first + 1
        if following > asked:       # (never past the question: the answer begun after it, or two, go with it)
            break
        starts.append(following)
    # Every message renders to a token at least: a start leaving more messages than `limit` cannot fit (none may:
    # a question and the answer begun after it in a budget of one token, the question's error below).
    high = len(starts) - 1
    low = next((i for i, start in enumerate(starts) if len(conversation) - start <= max(limit, 1)), high)
    question = conversation[starts[high]:]
    size = len(render(system, question))
    if size > limit:
        alone = len(render("", question)) if clients_system else size
        if alone <= limit:      # the client's own system message (rules, a pasted file) is what leaves no room
            raise BudgetError(f"the system message ({size - alone} tokens) leaves no room for the question in a "
                              f"prompt budget of {limit} tokens")
        if question[-1]["role"] == "assistant" and len(render(system, question[:-1])) <= limit:
            raise BudgetError(f"the answer begun after the question (the assistant's last message) does not fit "
                              f"into a prompt budget of {limit} tokens with it")
        raise BudgetError(f"the question does not fit into a prompt budget of {limit} tokens")
    while low < high:                               # the earliest start that fits (fewer turns, fewer tokens)
        middle = (low + high) // 2
        if len(render(system, conversation[starts[middle]:])) <= limit:
            high = middle
        else:
            low = middle + 1
    return conversation[starts[low]:]


def pinnable(index: RepoIndex, path: str) -> str:
    """`path` relative to the root, if it can be pinned: a file the index holds. The scan has judged it (a regular
    file, inside the repository once links are resolved, not ignored, not binary or huge), so a pin cannot read a
    file the index would not (a link to /etc/passwd, a FIFO, /dev/zero, an ignored .env). Else PromptError says why:
    the one check, and message, for /add and for every prompt after it."""
    relative = index.relative_path(path)
    if relative not in index.files:
        full = index.root / relative
        try:
            os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            raise PromptError(f"no such file: {path}") from None
        except OSError as exc:          # a folder on its way that cannot be searched: the file is there
            raise PromptError(f"cannot read {path}: {exc.strerror or exc}") from None
        if os.path.exists(full) and not os.access(full, os.R_OK):    # (not a broken link; the index skipped it)
            raise PromptError(f"cannot read {path}: Permission denied")
        raise PromptError(f"{path} is not among the indexed files (ignored, binary, too large, not a regular file, "
                          "or a link out of the repository)")
    return relative


def _pinned_chunks(index: RepoIndex, path: str) -> list[Chunk]:
    """The chunks of a pinned file, which must be pinnable()."""
    return [index.chunks[n] for n in index.chunk_numbers(pinnable(index, path))]


def _pinned_first(pinned: list[Chunk], ranked: Iterator[tuple[float, Chunk]]) -> Iterator[tuple[float, Chunk]]:
    for chunk in pinned:
        yield float("inf"), chunk
    shown = {(c.path, c.start_line) for c in pinned}
    for score, chunk in ranked:
        if (chunk.path, chunk.start_line) not in shown:
            yield score, chunk


def _mentioned_files(index: RepoIndex, question: str) -> set[str]:
    """Files the question names, by path, file name, or file name without extension where it names a module: written
    as code (`_compat`, `ranking`) or beside a word such as "module" ("the cookies module"). A word of prose that is
    only a file's stem ("the response", "a connection") names no file: docstring-like questions went to response.py
    whole."""
    found = set()
    as_code = {name for name, code in _identifiers_as_written(question) if code}
    words = _WORD.findall(question)
    # Each word once, a path by its last two parts: a pasted log naming `__init__.py` 20,000 times compared every
    # mention against every `__init__.py` of the repository (2,000 of them: 2.2 s).
    for word in dict.fromkeys(word.strip("./") for word in words):
        if len(word) < 3:
            continue
        found.update(index.paths.files(word, False, extension=True))
    module_words = _MODULE_WORDS if len(content_words(question)) <= DESCRIBING_WORDS else _MODULE_WORDS - _FILE_WORDS
    for k, word in enumerate(words):
        stem = word.strip("./")
        if len(stem) >= 3 and stem in index.paths.by_stem and (
                stem in as_code or any(w.lower().strip(".,:;?!") in module_words for w in words[max(0, k - 2):k + 3])):
            found.update(index.paths.by_stem[stem])
    return found


def _stems_in_prose(index: RepoIndex, question: str) -> set[str]:
    """Files whose stem is a word of the question's prose ("what does termui do?", "the response"): a file it may name,
    or a word it uses; the ranking weighs them less than the files it names (`_mentioned_files`)."""
    return {path for word in dict.fromkeys(_WORD.findall(question)) if len(word.strip("./")) >= 3
            for path in index.paths.by_stem.get(word.strip("./"), ())}


def _excerpt(chunk: Chunk) -> str:
    return f"lines {chunk.start_line}-{chunk.end_line}:\n```{chunk.language}\n{chunk.text}\n```\n"


def _renderer(tokenizer, encoder: Encoder) -> Renderer:
    """A function (system text, conversation) -> ids for this tokenizer."""
    if getattr(tokenizer, "chat_template", None):
        return lambda system, conversation: _render_template(tokenizer, encoder, system, conversation)
    return lambda system, conversation: _render_llama_instruct(tokenizer, encoder, system, conversation)


def _render_template(tokenizer, encoder: Encoder, system: str, conversation: list[Message]) -> list[int]:
    """The tokenizer's chat template over the conversation. Only the template's own special-token strings become
    control tokens: it is rendered around placeholders, and the system text (the repository's excerpts) and the
    messages are encoded in their place as text, so a file or a question that spells "<|im_end|>" cannot end a
    turn or open another."""
    from jinja2 import TemplateError

    # An answer begun (the last message the assistant's) goes on where it stops: its turn left open, no new one
    begun = _answer_begun(conversation)
    conversation = _before_the_answer(conversation)
    contents = [system, *(m["content"] for m in conversation)]
    slots = [_SLOT.format(i) for i in range(len(contents))]
    turns = [{**m, "content": slot} for m, slot in zip(conversation, slots[1:])]
    going_on = {"add_generation_prompt": not begun, "continue_final_message": begun}

    def apply(messages: list[Message]) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, **going_on)
        except ValueError:      # (transformers': continue_final_message, and the template rendered no such answer)
            if not begun:
                raise
            raise PromptError("the model's chat template leaves out the answer begun (the assistant's message "
                              "last): it cannot go on with it") from None

    try:
        text = apply([{"role": "system", "content": slots[0]}, *turns])
    except (TemplateError, TypeError):  # (TypeError: a template that is no text, `"chat_template": 5`)
        # A template without a system role: the context goes into the first user message (an answer before it,
        # a client's greeting, stays the assistant's).
        first = _first_question(turns)
        merged = [*turns[:first], {"role": "user", "content": f"{slots[0]}\n\n{slots[first + 1]}"}, *turns[first + 1:]]
        try:
            text = apply(merged)
        except (TemplateError, TypeError) as exc:
            said = f"{type(exc).__name__}: {exc}"
            if _renders_a_question(tokenizer):     # the template works: it refuses this conversation's roles
                raise PromptError(f"the model's chat template refuses this conversation ({said})") from None
            raise ChatTemplateError(f"the model's chat template cannot be used ({said})") from None
    ids: list[int] = []
    pieces = _SLOT_SPLIT.split(text)  # markup, slot number, markup, slot number, ...
    space = ""
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            # A space that ends the markup before a message ("[INST] " + content) goes with the message's first
            # word, as a tokenizer of the whole text puts it: "▁add" (SentencePiece) or "Ġadd", not a lone space.
            following = contents[int(pieces[k + 1])] if k + 1 < len(pieces) else ""
            if piece.endswith(" ") and following[:1].strip():
                piece, space = piece[:-1], " "
            ids += encoder.encode_markup(piece, lead=not ids)
        else:
            content = space + contents[int(piece)]
            space = ""
            ids += encoder.encode_lead(content) if not ids else encoder.encode(content)
    return ids


def _first_question(turns: list[Message]) -> int:
    """Where the first user message is (build_chat_prompt saw that there is one): the system text goes with it."""
    return next(k for k, m in enumerate(turns) if m["role"] == "user")


def _last_answer(conversation: list[Message]) -> str | None:
    """The text of the assistant's message that ends the conversation: an answer begun, or "", build_chat_prompt's
    mark for a fresh answer; None where the last message is no answer."""
    if conversation and conversation[-1]["role"] == "assistant":
        return conversation[-1]["content"] or ""
    return None


def _answer_begun(conversation: list[Message]) -> bool:
    """Whether the conversation ends with an answer begun, for the model to go on with."""
    return bool(_last_answer(conversation))


def _before_the_answer(conversation: list[Message]) -> list[Message]:
    """The conversation without the mark for a fresh answer, if it ends in one: an answer before the mark stays
    closed, as vLLM renders two answers last by default, and the model answers anew."""
    return conversation[:-1] if _last_answer(conversation) == "" else conversation


def _renders_a_question(tokenizer) -> bool:
    """Whether the chat template renders a lone question (with a system message or without): one that refuses only
    some conversations (CodeLlama-Instruct's and Llama 2's raise unless user and assistant alternate) is no broken
    model; the client's conversation is what it refuses (a 400, exit 2), where it was "cannot be used" (a 500)."""
    from jinja2 import TemplateError

    for messages in ([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                     [{"role": "user", "content": "q"}]):
        try:
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return True
        except (TemplateError, TypeError):
            pass
    return False


_SLOT = "\ue000{}\ue001"                  # private-use characters: no template or tokenizer gives them a meaning
_SLOT_SPLIT = re.compile("\ue000(\\d+)\ue001")


def _render_llama_instruct(tokenizer, encoder: Encoder, system: str, conversation: list[Message]) -> list[int]:
    """Llama 2 / CodeLlama-Instruct's reference format, turn by turn: each user message in its own [INST] block and
    each answer after it, whatever the order of roles, as CodeLlama-Instruct's own template renders them (two
    questions in a row, an answer that opens the conversation or follows another); the system text opens the first
    question. Paired by position, a second question in a row was rendered as the model's answer to the first."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    begun = _answer_begun(conversation)
    turns = [dict(m) for m in _before_the_answer(conversation)]
    first = _first_question(turns)
    turns[first]["content"] = B_SYS + system + E_SYS + turns[first]["content"]
    ids: list[int] = []
    for k, turn in enumerate(turns):
        answer = turns[k + 1]["content"] if k + 1 < len(turns) and turns[k + 1]["role"] == "assistant" else None
        if turn["role"] == "user" and answer is None:
            ids += [*bos, *encoder.encode_lead(f"{B_INST} {turn['content'].strip()} {E_INST}")]
        elif turn["role"] == "user" and begun and k + 2 == len(turns):     # an answer begun: goes on
            ids += [*bos, *encoder.encode_lead(f"{B_INST} {turn['content'].strip()} {E_INST} {answer.lstrip()}")]
        elif turn["role"] == "user":
            ids += [*bos, *encoder.encode_lead(f"{B_INST} {turn['content'].strip()} {E_INST} {answer.strip()} "), *eos]
        elif begun and k + 1 == len(turns) and turns[k - 1]["role"] != "user":     # begun after another answer
            ids += encoder.encode_lead(turn["content"].lstrip())
        elif k == 0 or turns[k - 1]["role"] != "user":      # an answer to no question: its own text
            ids += [*(bos if not ids else []), *encoder.encode_lead(f"{turn['content'].strip()} "), *eos]
    return ids
