"""The warm session: one loaded model and one repository index, shared by the command line, the REPL and the server.

Every operation builds a prompt and hands back a `Generation`: the packed prompt, ready to be looked at (its
tokens, the context it carried), and `run(on_text, should_stop)`, which generates from it, streaming text deltas
and polling `should_stop` between tokens (and between a long prefill's layers). The model's KV cache keeps
the last prompt between requests, so a request that shares its start with the one before prefills only the rest;
a completion keeps the repository context the last one in the same file chose, token for token, while the cursor
stays at its place and the ranking does not clearly prefer other chunks (`held`, prompts/holding.py; else what still
ranks near the top, `previous` in prompts.completion), and counts the file's blocks of lines from where the last
prompt's were (`anchor`: an editor's text that starts 256 lines above the cursor starts a line lower with each line
typed), so
that start survives moving to the next line; a chat turn holds the excerpts of the turn before it in the same
conversation while the ranking does not clearly prefer others (prompts.chat), so that a follow-up prefills only
itself; the index follows the repository's files as they change, a bounded
slice of work per request (prompts.freshness).

One caller at a time: the server runs every request on a single worker thread (`chat_prompt` alone, which changes
nothing, may run beside it).
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from . import engines
from .line_ends import LF, LineEnds

UNTITLED = "untitled"   # the current file of an infill request that does not name one
RECOGNIZED_CHARS = 48_000  # an unnamed text's characters before the cursor that name its file (a quarter as many after)
RECHECKS = 3            # prompts built again, at most, for context files that changed meanwhile
STICKY_FILES = 8        # files whose last sticky prompt is kept where the engine keeps earlier prompts' K/V too
STICKY_CHATS = 4        # conversations whose last chat prompt is kept there, likewise

T = TypeVar("T")


@dataclass(frozen=True)
class Sampling:
    """How to generate, as the command line's options or a request's fields ask."""

    max_tokens: int                  # 0: read the prompt into the cache, generate nothing
    temperature: float = 0.0         # 0 is greedy
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    sampler_order: tuple[str, ...] | None = None   # models.GenerationConfig's (None: its default, vLLM's order)
    top_k_ties: bool = True          # models.GenerationConfig's rules at ties and boundaries: vLLM's by default
    top_p_strict: bool = False
    min_keep: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()       # the caller's stop strings, besides those of the prompt's format
    format_stops: bool = True        # False: only the model's EOS and `stop` end generation (benchmarks)
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, bias) added to the logits first; -inf bans
    ignore_eos: bool = False         # llama.cpp's: every token that would end the generation (the engine's EOS ids,
                                     # llama.cpp's end-of-generation set; the format's end tokens) banned, so it runs
                                     # to max_tokens or a stop string
    repeat_penalty: float = 1.0      # penalties, as llama.cpp applies them (models/penalties.py): 1 and 0 are off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64         # over the last n tokens of prompt + answer (0: none, -1: the whole context)
    penalize_prompt: bool = True     # False: over the answer's tokens only (OpenAI's presence and frequency)
    repeat_window: int | None = None   # the repeat penalty's own window over prompt + answer (None: the same)
    dynatemp_range: float = 0.0      # llama.cpp's dynamic temperature (models.GenerationConfig's; 0: off)
    dynatemp_exponent: float = 1.0
    mirostat: int = 0                # llama.cpp's mirostat 1 or 2 in place of the chain (models.GenerationConfig's)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logprobs: int | None = None      # each token's logprob and the top-N alternatives' (None: not computed)
    logprobs_after_samplers: bool = False   # of the distribution the draw came from (llama.cpp's post_sampling_probs)
    speculate: int | None = None     # draft tokens verified per step; None: the engine's default, 0: off
    cache_reuse: int = 0             # llama.cpp's n_cache_reuse (models.GenerationConfig's): runs of the last prompt
                                     # of at least this many tokens moved into place past the shared prefix; 0: off


@dataclass(frozen=True)
class _HeldChat:
    """A chat prompt's excerpts as the next turn of its conversation may hold them, with its conversation's opening:
    chat clients that open alike (the same system message and first question) each continue that opening."""

    held: object                     # prompts.chat.HeldExcerpts
    opening: object                  # the HeldExcerpts of its conversation's first turn (`held` until it goes on)


def _within_room(build: Callable[[int], T], budget: int, room: int | None) -> T:
    """`build(budget)`; where the client's own messages do not fit the budget (a BudgetError: a long system message,
    a pasted file), `build(room)`, if `room` is more. The prompt budget (--context-tokens) sizes the repository
    context added to a conversation, so that editors' prompts keep one size; it is no limit on the client's own
    text, which a server takes up to its context less the answer's tokens (`room`), as /completion takes a prompt
    and as llama.cpp does with the n_ctx it tells clients (/props, /v1/models' meta), by which llama.vscode sizes
    its chat prompts. Past the room the error stands."""
    from prompts import BudgetError

    try:
        return build(budget)
    except BudgetError:
        if room is None or room <= budget:
            raise
    return build(room)


def _held_for(chats: Sequence[_HeldChat], messages: Sequence[dict]):
    """The held excerpts among `chats` that `messages` continue (prompts.chat.continued), or None; the openings that
    conversations went on from count as older than every held prompt (a retry of one is held from its own)."""
    from prompts.chat import continued

    return continued([chat.opening for chat in chats] + [chat.held for chat in chats], messages)


def _opening_of(chats: Sequence[_HeldChat], held):
    """The opening kept with `held`'s place, or `held` itself where it is one of the openings kept (_held_for's)."""
    return next((chat.opening for chat in chats if chat.held is held), held)


@dataclass
class Generation:
    """A prompt ready to run: `prompt` is the packed prompt, `engine` the model that will run it."""

    prompt: object                   # prompts.PackedPrompt
    engine: object
    run: Callable                    # run(on_text=None, should_stop=None) -> models.GenerationResult
    line_ends: object = None         # a line_ends.LineEnds where the client's text ends its lines with "\r\n" or
                                     # "\r": the text run streams and returns has them, and is cut at stop strings
                                     # as it has them; the engine's token offsets and token texts map to it
    progress: Callable | None = None  # progress() -> the running counters (a models.Timings: steps, drafts, healing)
                                     # or None, where the engine runs elsewhere (a server's: client.py); None here:
                                     # the engine's own `progress`


def timed_steps(session, built: Sequence[str]) -> list[str]:
    """What `Session.warm_up` built, each with the seconds it took where the session timed it ("the decode step
    (12.3 s)"): which step a first start waits for is a GPU's question (Run 47: 24-27 s in all on an H100)."""
    seconds = getattr(session, "warm_up_seconds", {})
    return [f"{what} ({seconds[what]:.1f} s)" if what in seconds else what for what in built]


def open_session(args, root=None, max_new_tokens: int = 0, headroom: int = 0, allow_empty: bool = False) -> Session:
    """The command line's in-process session: index the repository (if any), then load the model (the slow part
    comes last, so a bad path fails at once). `headroom`: engines.load's; `allow_empty`: a repository with nothing
    to index yet is no error (a server, a suggestion: prompts.index_repository's)."""
    from prompts.index import collector_paused

    from . import switches, workspace

    # The index lives as long as the process: frozen out of the collector's sight, where the switch leaves it on and
    # no model was loaded in this process before (a test's, a library user's): what is frozen then holds no torch or
    # Triton object (nanobind reports Triton's it finds alive at exit as leaked; a model's cycles would stay in memory)
    with collector_paused(freeze=switches.on(switches.GC_FREEZE) and not _torch_imported()):
        index = workspace.index(root, allow_empty=allow_empty) if root is not None else None
    return Session(engines.load(args, max_new_tokens, headroom=headroom), index, args.context_tokens,
                   suffix_first=getattr(args, "spm_infill", False))


def _torch_imported() -> bool:
    return "torch" in sys.modules


class Session:
    def __init__(self, engine, index=None, context_tokens: int | None = None, *, suffix_first: bool = False) -> None:
        from prompts.freshness import FreshIndex

        self.engine = engine
        self.context_tokens = context_tokens     # the prompt budget asked for (None: what fits the engine)
        self.suffix_first = suffix_first         # --spm-infill: completions' FIM prompts suffix first (prompts.formats)
        self._index = FreshIndex(index) if index is not None else None
        self._last: dict[str, object] = {}       # path -> its last sticky completion prompt (prompts.PackedPrompt),
                                                 # the most recent last
        self._tidy_until = 0                     # the index's walk that idle upkeep goes on to the end of
        self.warm_up_seconds: dict[str, float] = {}   # what the last warm_up built -> the seconds it took
        self.warm_up_skipped: list[str] = []          # ... and the steps a stop made it skip
        self._chats: list[_HeldChat] = []        # the last chat prompts' excerpts, one a place some conversation
                                                 # stands at, the most recent last: its next turn may hold them

    @property
    def index(self):
        return self._index.index if self._index is not None else None

    def use(self, engine) -> None:
        """Generate with `engine` from now on (the REPL's /model), forgetting the prompts held for the next
        request: their chunks were chosen and counted with the old model's tokenizer, and the new model's cache
        holds none of them."""
        self.engine = engine
        self._last.clear()
        self._chats = []

    # ---- operations ---------------------------------------------------------------------------

    def complete(self, path: str, *, text: str | None = None, line: int | None = None, col: int | None = None,
                 extra: Sequence[tuple[str, str]] = (), sampling: Sampling, budget: int | None = None,
                 sticky: bool = True, room: int | None = None) -> Generation:
        """A completion at a cursor of `path` (relative to the repository), in its buffer `text` or as on disk;
        `budget`: the prompt's tokens (None: `prompt_budget`); `room`: the KV cache's tokens for the prompt and the
        answer, as `_healing_overflow` counts them (None: the engine's). `sticky`: keep the repository context the last
        sticky completion in this file chose (held while the cursor stays at its place, else where it still ranks near
        the top), and the rows where its blocks of the file began (`anchor` in prompts.completion), and remember this
        one's; False
        for a prompt exactly as a session without history builds it (the command line's, through a server)."""
        from prompts import build_completion_prompt

        last = self._last.get(path) if sticky else None

        def build(index, heal: bool = True, tokens: int | None = None):
            return build_completion_prompt(
                index, self.engine.tokenizer, path=path, text=text, line=line, col=col,
                budget_tokens=tokens or budget or self.prompt_budget(sampling.max_tokens), extra=extra, heal=heal,
                previous=last.chosen if last else (), anchor=last.anchor if last else None,
                held=last.held if last else None, suffix_first=self.suffix_first)

        packed = self._current(build, path)
        if not self._heals(packed, sampling):
            packed = self._current(lambda index: build(index, heal=False), path)
        over = self._healing_overflow(packed, sampling.max_tokens, room)
        if 0 < over < len(packed.ids):
            from prompts import BudgetError
            try:
                packed = self._current(lambda index: build(index, tokens=len(packed.ids) - over), path)
            except BudgetError:     # a budget too small to give any way: the answer gets what room is left
                pass
        if sticky:
            self._remember(path, packed)
        return self._generation(packed, sampling)

    def _remember(self, path: str, packed) -> None:
        """Keep `packed` as `path`'s sticky prompt. Without an engine prompt cache only the last file's: its prompt
        is what the KV cache holds. With one (models/prompt_store.py) the last few files': a request back in one
        of them builds the prompt the cache saved for it (its chunks, its anchor), so the saved K/V serve it."""
        self._last.pop(path, None)
        self._last[path] = packed
        for old in list(self._last)[:-self._prompts_kept(STICKY_FILES)]:
            del self._last[old]

    def infill(self, prefix: str, suffix: str, *, path: str | None = None, extra: Sequence[tuple[str, str]] = (),
               sampling: Sampling, budget: int | None = None) -> Generation:
        """Fill the gap between `prefix` and `suffix` (an editor's text around its cursor), with the repository's
        context ranked for it, as a completion at the end of `prefix`; `path` None: the repository's file the text
        is a version of, where one is (`_recognized`), else an untitled buffer."""
        if prefix.endswith("\r") and suffix.startswith("\n"):
            # A cursor inside a CRLF: the prompt reads the pair as one line break, so the cursor ends the line.
            prefix, suffix = prefix[:-1], "\r" + suffix
        from prompts.scan import unix_newlines
        lines = unix_newlines(prefix)   # counted as the prompt reads the text: a lone "\r" (classic Mac) ends a line
        # (recognized by the text near the cursor: a 2 MB buffer is a request's to send, not every request's to read)
        return self.complete(path or self._recognized(prefix[-RECOGNIZED_CHARS:] + suffix[:RECOGNIZED_CHARS // 4]),
                             text=prefix + suffix,
                             line=lines.count("\n") + 1,
                             col=len(lines.rpartition("\n")[2]) + 1,
                             extra=extra, sampling=sampling, budget=budget)

    def _recognized(self, text: str) -> str:
        """The repository's file an unnamed editor text is a version of (prompts.recognize: llama.vim's and
        llama.vscode's /infill name none), else UNTITLED."""
        from prompts.recognize import recognize
        return (recognize(self._index.index, text) if self._index is not None else None) or UNTITLED

    def chat(self, messages: Sequence[dict], *, pinned: Sequence[str] = (), sampling: Sampling,
             budget: int | None = None, history_share: float = 1.0, sticky: bool = True,
             room: int | None = None) -> Generation:
        """An answer to the last (user) message, with repository context retrieved for it, or held from the last chat
        prompt of the conversation this continues (prompts.chat); `history_share`: build_chat_prompt's. `sticky`:
        hold from it, and be the one the conversation's next turn holds from (False: the prompt exactly as a session
        without history builds it, the command line's through a server). `room`: the tokens the prompt may take
        where the client's own messages do not fit `budget` (_within_room)."""
        from prompts import build_chat_prompt

        held = _held_for(self._chats, messages) if sticky else None
        packed = _within_room(lambda tokens: self._current(lambda index: build_chat_prompt(
            index, self.engine.tokenizer, messages=list(messages), budget_tokens=tokens, pinned_paths=tuple(pinned),
            history_share=history_share, held=held)), budget or self.prompt_budget(sampling.max_tokens), room)
        if sticky:
            self._remember_chat(held, packed.held)
        return self._generation(packed, sampling)

    def chat_prompt(self, messages: Sequence[dict], tokenizer, *, budget: int, room: int | None = None):
        """The prompt (prompts.PackedPrompt) `chat` builds for `messages`, held as it would hold it, but not
        remembered (a prompt only looked at: llama.cpp's /apply-template, which llama.vscode counts another chat's
        tokens with, must take no conversation's place); built with `tokenizer`, a copy of the engine's, from the
        index as the last request left it (not refreshed, not rechecked). So it may be built off the engine thread
        while that thread generates: it changes nothing, and what it reads stays as it was meanwhile (an index
        update makes a new RepoIndex; `_remember_chat` replaces the list of holds, never changes it)."""
        from prompts import build_chat_prompt

        index, chats = self.index, self._chats      # (each read once: the engine thread may replace them)
        if index is None:
            from .errors import UsageError
            raise UsageError("this session has no repository")
        return _within_room(lambda tokens: build_chat_prompt(index, tokenizer, messages=list(messages),
                                                             budget_tokens=tokens, held=_held_for(chats, messages)),
                            budget, room)

    def _remember_chat(self, held, now) -> None:
        """Keep `now` as its conversation's last chat prompt, in place of `held`, the one it continued, with that
        conversation's opening. Only openings are sent alike by several clients (past an answer they would need the
        same answer, then the same question), so `held`'s messages sent again are a retry (a timeout's, a
        "regenerate") and take the one place; clients that opened alike find the opening kept with each place as they
        go on. (Counting each opening sent as one more conversation kept a retried one's phantom place after its next
        turn.) Without an engine prompt cache only the last prompt is kept (the KV cache holds it alone); with one the
        last few, so that chat clients taking turns each find theirs (as `_remember` keeps the last few files')."""
        opening = now if held is None else _opening_of(self._chats, held)
        if opening.messages == now.messages:        # the opening again: the newer prompt holds it
            opening = now
        kept = [chat for chat in self._chats if chat.held is not held]
        self._chats = (kept + [_HeldChat(now, opening)])[-self._prompts_kept(STICKY_CHATS):]

    def _prompts_kept(self, many: int) -> int:
        """How many held prompts of one kind are worth keeping: `many` where the engine keeps earlier prompts' K/V
        (models/prompt_store.py), else 1, the one its KV cache holds."""
        return many if getattr(self.engine, "prompt_store", None) is not None else 1

    def raw(self, prompt: str | Sequence[int], *, sampling: Sampling, last_tokens: int | None = None) -> Generation:
        """The model continues `prompt` as it is: text (special-token text becomes those tokens; its last token
        healed, as a completion's is) or token ids (as they are). `last_tokens`: a text prompt keeps only its last
        so many tokens, not healed (Ollama's runner cuts a prompt longer than its context so); its answer is still
        written with the text's line ends."""
        from prompts import PackedPrompt, build_raw_prompt
        from prompts.tokens import surely_over

        engine = self.engine
        if isinstance(prompt, str) and last_tokens is None and surely_over(engine.tokenizer, prompt,
                                                                          engine.context_length):
            from models import ContextTooLongError      # (told from its start: a huge one was encoded whole first)
            raise ContextTooLongError(f"{engine.name}: a prompt of {len(prompt):,} characters does not fit the context "
                                      f"of {engine.context_length} tokens (the KV cache; the model was trained on "
                                      f"{engine.model_max_positions})")
        if isinstance(prompt, str) and last_tokens is not None:
            packed = build_raw_prompt(self.engine.tokenizer, prompt, heal=False)
            return self._generation(replace(packed, ids=packed.ids[-last_tokens:] if last_tokens > 0 else []), sampling)
        if isinstance(prompt, str):
            packed = build_raw_prompt(self.engine.tokenizer, prompt)
            if not self._heals(packed, sampling):
                packed = build_raw_prompt(self.engine.tokenizer, prompt, heal=False)
            return self._generation(packed, sampling)
        return self._generation(PackedPrompt(list(prompt), [], [], [], "raw"), sampling)

    def warm_up(self, should_stop: Callable[[], bool] = lambda: False, steps: list[str] | None = None) -> list[str]:
        """Build what a GPU engine would otherwise build inside a request, seconds each: the decode step (one short
        generation compiles and captures it), the step that verifies drafts and the one that feeds a longer edit
        (`Engine.warm_speculation`, `warm_wide_tail`; without them the first speculative step stalls its answer, and
        a prompt's tail takes the slower ways). The server runs it on the thread that runs the engine afterwards
        (some of it is kept per thread: cuDNN's plans), the REPL on a thread of its own while the first question is
        typed (repl._WarmUp). `should_stop()`: the rest is skipped, between steps. `steps`: only these (the names a
        stop skipped, `warm_up_skipped`, built after an answer; the decode step's generation would take the cache row
        that answer's conversation holds). Returns what it built; the seconds each took are `warm_up_seconds`
        (timed_steps says them), the steps a stop skipped `warm_up_skipped`."""
        self.warm_up_seconds = {}       # (in the order built)
        self.warm_up_skipped = []
        if steps is None or "the decode step" in steps:
            started = time.perf_counter()
            self.raw("def main():", sampling=Sampling(max_tokens=4)).run(should_stop=should_stop)
            self.warm_up_seconds["the decode step"] = time.perf_counter() - started
        for warm, what in ((self.engine.warm_speculation, "the step that verifies drafts"),
                           (self.engine.warm_wide_tail, "the step that feeds a longer edit")):
            if steps is not None and what not in steps:
                continue
            if should_stop():
                self.warm_up_skipped.append(what)
                continue
            started = time.perf_counter()
            if warm():
                self.warm_up_seconds[what] = time.perf_counter() - started
        return list(self.warm_up_seconds)

    def import_ahead(self) -> None:
        """Import what the first prompt after a cached prefix would (models.attention.import_prefix_mask: 1.0-1.6 s
        of that prefill on a 2-core CPU), for a long-lived process to pay it outside its answers: a server before it
        serves, the REPL on a CPU while the first question is typed. No warm-up generation reaches it (a first prompt
        has no prefix); on a GPU the warm-up's compilation has imported the bulk of it, torch._dynamo."""
        from models.attention import import_prefix_mask

        import_prefix_mask()

    def warm_prompt(self, path: str, *, line: int, budget: int) -> None:
        """Build, and throw away, the completion prompt at `line` of `path` as it is on disk: the pieces a first
        request there tokenizes and the outlines it parses are remembered afterwards (codecomplete/server/warming.py).
        """
        self.complete(path, line=line, sampling=Sampling(max_tokens=0), budget=budget, sticky=False)

    # ---- helpers ------------------------------------------------------------------------------

    def tidy(self, should_stop=None) -> bool:
        """Between requests (a server's idle moments): the next part of the index's rolling rescan, cut short once
        `should_stop()` (a request waits); whether more is left. There is until a walk through the repository begun
        after the last request has ended and what it found is parsed: files changed before a request are in the index
        after some quiet moments (a server called it only once after each request, and a `git checkout` of 600 files
        took 38 requests to be seen whole)."""
        if self._index is None:
            return False
        self._index.sweep(should_stop)
        return self._index.walked < self._tidy_until or self._index.parsing

    def catch_up(self) -> None:
        """At an interactive prompt, before a question or a command: the index catches up with the disk in one
        whole pass (files deleted, renamed, added or edited since), where a server uses its idle moments (`tidy`)."""
        if self._index is not None:
            self._index.rescan()

    def _current(self, build, path: str | None = None):
        """`build(index)`'s prompt, built again while a file its context came from changed since it was indexed (a
        stat of each): no prompt carries repository text the disk no longer holds, whatever the rolling rescan has
        reached. A few rounds at most: a file rewritten without end does not hold the request."""
        packed = build(self._fresh_index(path))
        for _ in range(RECHECKS):
            if not self._index.recheck(item.path for item in packed.context):
                break
            packed = build(self._index.index)
        return packed

    def _fresh_index(self, path: str | None = None):
        if self._index is None:
            from .errors import UsageError
            raise UsageError("this session has no repository")
        return self._index.refresh(path)

    def prompt_budget(self, max_tokens: int) -> int:
        """The prompt's tokens by default: what `context_tokens` asks for, within what the KV cache holds beside
        `max_tokens` new ones (the command line's rule)."""
        return engines.prompt_budget(self.engine, self.context_tokens, max_tokens)

    def _generation(self, packed, sampling: Sampling) -> Generation:
        from models.sampling import check_bans

        self.engine.check_prompt(packed.ids)     # a prompt that cannot run fails here, before anything streams
        bias = self._bias(packed, sampling)
        try:                                     # so does a request that bans every token
            if bias:
                check_bans(bias, self.engine.model.config.vocab_size)
        except ValueError as e:
            from .errors import UsageError
            raise UsageError(f"{e}{' (ignore_eos bans the end-of-generation tokens)' if sampling.ignore_eos else ''}")
        # The model reads and writes "\n"; the text goes back with the client's line ends, and the stop strings are
        # matched in it, where the client sees them (codecomplete/line_ends.py): the engine then matches none.
        ends = None if packed.line_end == LF else LineEnds(packed.line_end, self._stops(packed, sampling))

        def run(on_text=None, should_stop=None):
            if ends is None:
                return self._run(packed, sampling, bias, on_text, should_stop)
            return ends.run(lambda deltas, stop: self._run(packed, sampling, bias, deltas, stop, strings=False),
                            on_text, should_stop, lambda: getattr(self.engine, "live_tokens", None) or [])
        return Generation(packed, self.engine, run, ends)

    @staticmethod
    def _stops(packed, sampling: Sampling) -> tuple[str, ...]:
        """The stop strings: the prompt format's (unless `format_stops` is off), then the caller's."""
        return (tuple(packed.stop_strings) if sampling.format_stops else ()) + tuple(sampling.stop)

    def _healing_overflow(self, packed, max_tokens: int, room: int | None = None) -> int:
        """The tokens `packed` must give way for the healing: the model may write the healed text again one token a
        byte, where the prompt left out one token, and each is a place in the KV cache that the answer's
        `max_tokens` new ones would miss (a cache of the budget and the new tokens, the command line's, had none: a
        prompt that filled the budget got fewer tokens than asked, or none). 0 where the cache holds them all."""
        extra = len(packed.heal_text.encode()) - 1
        if extra <= 0 or max_tokens <= 0:     # (0: a prompt only read into the cache, or built to warm the index)
            return 0
        # (the engine's row takes at most context_length - len(ids) + 1 tokens: the last is never fed back)
        room = min(room or self.engine.context_length, self.engine.context_length)
        if len(packed.ids) + max_tokens > room:
            return 0        # an answer the cache cannot hold anyway runs until it is full: the prompt stays as it is
        return max(0, min(len(packed.ids) + extra + max_tokens - room, extra))

    def _heals(self, packed, sampling: Sampling) -> bool:
        """Whether the request's bans leave tokens that write the prompt's healed text (models/healing.py). A client
        that bans every token beginning with a newline, the prompt ending in one, left healing nothing to draw: such
        a prompt keeps its last token instead, as llama.cpp (which does not heal) reads it."""
        from models.sampling import banned

        bans = banned(self._bias(packed, sampling)) if packed.heal_text else set()
        if not bans:
            return True
        from models.healing import vocabulary_bytes
        return vocabulary_bytes(self.engine.tokenizer).can_write(packed.heal_text.encode(), bans)

    def _bias(self, packed, sampling: Sampling) -> tuple[tuple[int, float], ...]:
        """The request's logit bias, with ignore_eos a -inf on each end-of-generation token (llama.cpp's
        logit_bias_eog): the model's EOS ids and the prompt format's end tokens."""
        if not sampling.ignore_eos:
            return sampling.logit_bias
        ends = dict.fromkeys([*self.engine.eos_token_ids, *packed.stop_token_ids])
        return sampling.logit_bias + tuple((token, -math.inf) for token in ends)

    def _run(self, packed, sampling: Sampling, bias: tuple[tuple[int, float], ...], on_text, should_stop,
             strings: bool = True):
        """`bias`: the request's `_bias`, made once when its generation was built; `strings`: the engine matches the
        stop strings (False: LineEnds does, in the text as written)."""
        from models import GenerationConfig

        if self._index is not None:     # a request: idle upkeep walks on (the walk under way may be past a change)
            self._tidy_until = self._index.walks_begun + 1
        stops = sampling.format_stops
        config = GenerationConfig(
            max_new_tokens=max(sampling.max_tokens, 1), temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, min_p=sampling.min_p, seed=sampling.seed, top_k_ties=sampling.top_k_ties,
            top_p_strict=sampling.top_p_strict, min_keep=sampling.min_keep,
            **({"sampler_order": sampling.sampler_order} if sampling.sampler_order is not None else {}),
            speculate=sampling.speculate, cache_reuse=sampling.cache_reuse, logprobs=sampling.logprobs,
            logprobs_after_samplers=sampling.logprobs_after_samplers,
            repeat_penalty=sampling.repeat_penalty, presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty, penalty_last_n=sampling.penalty_last_n,
            penalize_prompt=sampling.penalize_prompt, repeat_window=sampling.repeat_window, logit_bias=bias,
            dynatemp_range=sampling.dynatemp_range, dynatemp_exponent=sampling.dynatemp_exponent,
            mirostat=sampling.mirostat, mirostat_tau=sampling.mirostat_tau, mirostat_eta=sampling.mirostat_eta,
            stop_token_ids=tuple(packed.stop_token_ids) if stops else (),
            stop_strings=self._stops(packed, sampling) if strings else (),
            required_prefix=packed.heal_text)   # token healing: the text prompts left out
        if sampling.max_tokens > 0:
            return self.engine.generate(packed.ids, config, on_text=on_text, should_stop=should_stop)
        # Only fill the cache (an editor warming it up): the engine prefills for one token, which is dropped. Its
        # prefill stops when asked too: a warm-up whose client left held the next request for all of it (1.3 s).
        result = self.engine.generate(packed.ids, config, should_stop=should_stop)
        finish = "cancelled" if result.finish_reason == "cancelled" else "length"
        return replace(result, text="", token_ids=[], healing_tokens=0, finish_reason=finish,
                       logprobs=None if result.logprobs is None else [],
                       timings=replace(result.timings, healing_tokens=0))
