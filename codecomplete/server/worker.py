"""The engine thread: requests run one at a time, in order; at most `max_waiting` wait behind the running one.

The model, its KV cache and the index are one session's state, used by one thread only; the event loop never
waits on them. A request becomes a `Job`: a function that starts a `Generation` on the engine thread, and the
events it sends back to the request's coroutine (the prompt, text deltas, the result or the error), each handed
over with `call_soon_threadsafe`. Cancelling a job (the client went away, the server stops) sets a flag that the
engine polls between tokens; a job cancelled while it waits never starts. When no request has come for `idle_s`
seconds, the thread does one slice of idle work (the index catching up with the disk after a request, then warming
the prompt caches), then waits again: a request that arrives meanwhile waits for that slice at most. The first slice
after a request comes sooner, after `upkeep_after_s` of quiet (UPKEEP_AFTER_S). Once that upkeep is done, the next
slice hands what the requests freed back to the system (`release`, memory.py), once after each run of requests.

A stream's client may read slower than the engine writes, or stop reading and keep its connection open: uvicorn's
`send` then waits for the socket (its flow control), and the events the engine thread made piled up behind it without
bound (a client reading none of a 150-token stream with n_probs 20,000 held 1.5 GB, and the engine ran on to its last
token). Each job now holds at most MAX_UNREAD text events its request has not taken: the engine thread waits for room,
and when none comes for STALL_S it stops that generation, which ends with a 408 error event, as a stop signal's 503
ends one; a client that still reads nothing STALL_S later has its connection reset (serve._Connection), which would
otherwise hold its socket, its coroutine and those events for as long as the client kept it open.
Why stop rather than pause: the engine thread is shared, and a paused generation would hold it (and the KV cache) for
everyone. So it waits a little only: a client that reads nothing delays the requests behind it by STALL_S once, the
price of not cutting a reader that is slow for a moment; bounded memory is what the bound buys. Before the engine
waits, the socket's buffers (the kernel's, and the 64 KiB uvicorn's transport holds) must be full: an ordinary
stream, a few hundred small events, never waits.

The server's warm-up runs on this thread too (`first`), before any request: some of what it prepares is kept per
thread. PyTorch keeps cuDNN's attention plans in a thread-local cache (aten/src/ATen/native/cudnn/MHA.cpp), so
prefill spans warmed on the main thread left the engine thread to build its own plan at its first cold prefill:
272-290 ms against 205-212 ms for the next ones on an H200 (bench/results/NOTES.md, Run 12).
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from copy import copy
from dataclasses import dataclass, field

from ..errors import not_a_number, say
from ..session import Generation
from .errors import ApiError

MAX_WAITING = 8          # requests queued behind the running one; more get 503
# The upkeep after a request waits this long for quiet: the thread's Python work holds the GIL, and the event loop
# needs it to send the answer's end (a completion that ended at its first token reached the client 15-20 ms late
# on an H200's host, Run 29), and a keystroke that follows at once runs before it.
UPKEEP_AFTER_S = 0.05
MAX_UNREAD = 8           # a job's text events its request has not taken (a stream whose client reads nothing)
STALL_S = 2.0            # the engine thread waits this long for room among them, then stops the generation


class Busy(Exception):
    """The queue is full."""


@dataclass
class Event:
    kind: str            # "prompt" (value: the Generation) | "text" (a delta) | "done" (the result) | "error"
    value: object
    tokens: list[int] = field(default_factory=list)   # "text": the ids generated since the last text (healing's
                                                      # apart), as llama.cpp's stream chunks carry them
    logprobs: list = field(default_factory=list)      # "text": their models.TokenLogprobs, where the request asked
    described: list = field(default_factory=list)     # "text": the job's `describe` of its tokens (one item each);
                                                      # "done": what the job's `finish` made of the result
    progress: object = None                           # "text": the engine's running counters as the text went out
                                                      # (a copy of its models.Timings: steps, drafts, healing), for
                                                      # the command line's live line (native.py); None: it keeps none


class Job:
    """One request's work for the engine thread, and the events it sends back."""

    def __init__(self, start: Callable[[], Generation], label: str, loop: asyncio.AbstractEventLoop,
                 stop_when: Callable[[str], bool] | None = None, failures_in_result: bool = False,
                 describe: Callable[[object, list[int], list], list] | None = None,
                 finish: Callable[[Job, object], list] | None = None) -> None:
        # The id clients see (OpenAI's `chatcmpl-<id>`, the command line's), cancel by, and find in the log: random, as
        # OpenAI's, vLLM's and llama.cpp's are, so that no client can name another's job (a counter let any cancel an
        # editor's), and unique across restarts.
        self.id = uuid.uuid4().hex
        self.start, self.label, self.stop_when = start, label, stop_when
        self.failures_in_result = failures_in_result    # (EngineWorker.submit)
        # Work on what the generation makes that would hold the event loop (a tokenizer's, per token), done on the
        # engine thread: `describe` of the job and each text event's tokens and logprobs, `finish` of the job and its
        # result (the job's generation, and the tokens its text events carried, are known then).
        self.describe, self.finish = describe, finish
        self.generation: Generation | None = None
        self.carried = 0                 # the tokens the text events carried, healing's apart
        self.cancelled = threading.Event()
        self.limited = False             # stopped by its own `stop_when` (a limit of the request), not by a cancel
        self.error: ApiError | None = None   # what it ends with instead of its result (the server stops)
        self.started = False             # taken from the queue by the engine thread
        # Where its time to the first token went (perf_counter seconds), for the log's summary line: submitted,
        # taken by the engine thread, prompt built, first text handed over (engine thread), first text written
        # to the client (event loop; set by streaming.Running, streams only).
        self.submitted, self.began, self.built = time.perf_counter(), None, None
        self.first_text: float | None = None
        self.first_sent: float | None = None
        # The tokens that only made the healed text again (GenerationResult.healing_tokens), set by the first text:
        # all of them come before it. A stream's events count them as the prompt's, as its result does.
        self.healing_tokens = 0
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._unread = 0                 # text events sent and not yet taken by the request's coroutine
        self._room = threading.Condition()
        self.stalled = False             # stopped because its client took none of its text for STALL_S
        # Called on the event loop when it stalled: the request's connection drops a client that goes on reading
        # nothing (streaming.Running sets it, from serve._Connection), so that it holds no socket and no events.
        self.on_stall: Callable[[], None] | None = None

    def cancel(self, error: ApiError | None = None) -> None:
        """Stop at the next token; with `error`, end with it rather than with the text so far, which would pass for
        a whole answer (a stream's normal end, a 200)."""
        self.error = self.error or error
        self.cancelled.set()
        with self._room:                 # (a reentrant lock: a signal handler may call this on the event loop's thread)
            self._room.notify_all()      # the engine thread waiting for room goes on, to stop

    def _wait_for_room(self) -> None:
        """On the engine thread, before a text event: wait while MAX_UNREAD wait to be taken; none taken for STALL_S,
        stop the job (the event still goes: no text is lost, should it be the generation's last)."""
        with self._room:
            if not self._room.wait_for(lambda: self._unread < MAX_UNREAD or self.cancelled.is_set(), STALL_S):
                self.stalled = True
                self.cancel(ApiError(408, f"the client read none of the stream for {STALL_S:g} s: its generation "
                                          "was stopped"))
                if self.on_stall is not None:
                    try:
                        self._loop.call_soon_threadsafe(self.on_stall)
                    except RuntimeError:     # the event loop is closed: the server has stopped
                        pass
            self._unread += 1

    def _taken(self) -> None:
        with self._room:
            self._unread -= 1
            self._room.notify_all()

    def send(self, kind: str, value: object = None, tokens: list[int] | None = None, logprobs: list | None = None,
             described: list | None = None, progress: object = None) -> None:
        """From the engine thread: hand an event to the request's coroutine."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, Event(kind, value, tokens or [], logprobs or [],
                                                                           described or [], progress))
        except RuntimeError:     # the event loop is closed: the server has stopped, nobody listens
            pass

    async def events(self) -> AsyncIterator[Event]:
        """Every event up to and including the last ("done" or "error")."""
        while True:
            event = await self._events.get()
            if event.kind == "text":
                self._taken()
            yield event
            if event.kind in ("done", "error"):
                return

    def run(self):
        """On the engine thread: start the generation, stream it, return the result."""
        self.began = time.perf_counter()
        generation = self.start()
        self.built = time.perf_counter()
        self.send("prompt", generation)
        self.generation = generation
        stop_when = self.stop_when
        sent = 0            # of the engine's live_tokens, how many went out with a text

        def on_text(delta: str) -> None:
            nonlocal sent
            if self.first_text is None:
                self.first_text = time.perf_counter()
                self.healing_tokens = getattr(getattr(generation.engine, "progress", None), "healing_tokens", 0)
            ids = getattr(generation.engine, "live_tokens", [])
            scores = getattr(generation.engine, "live_logprobs", None) or []
            start = max(sent, self.healing_tokens)
            tokens, logprobs, sent = ids[start:], scores[start:len(ids)], len(ids)
            stop = stop_when is not None and stop_when(delta)   # first: what it decides is known when the text is
            described = self.describe(self, tokens, logprobs) if self.describe is not None and tokens else []
            self.carried += len(tokens)
            running = getattr(generation.engine, "progress", None)      # (mutated as the engine goes on: a copy)
            self._wait_for_room()
            self.send("text", delta, tokens, logprobs, described, copy(running) if running is not None else None)
            if stop:
                self.limited = True
                self.cancelled.set()
        return generation.run(on_text=on_text, should_stop=self.cancelled.is_set)


class EngineWorker:
    """Runs jobs one at a time on its own thread; `submit` refuses a job when `max_waiting` already wait."""

    def __init__(self, max_waiting: int = MAX_WAITING, between: Callable[[Callable[[], bool]], None] | None = None,
                 log: Callable[[str], None] | None = None, idle: Callable[[], bool] | None = None,
                 idle_s: float = 0.5, first: Callable[[], object] | None = None,
                 upkeep_after_s: float = UPKEEP_AFTER_S, release: Callable[[], None] | None = None) -> None:
        self.max_waiting = max_waiting
        # Run after a job when none waits (the session's upkeep), with a function that says when one does.
        self._between = between
        self._upkeep = False                    # the upkeep has more to do: it goes on in quiet moments
        self._idle = idle                       # one slice of idle work; returns whether more is left
        self._release = release                 # hands freed memory back, once quiet after requests
        self._release_due = False               # requests ran since it last did
        self.idle_s = idle_s
        self.upkeep_after_s = upkeep_after_s
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._live: dict[str, Job] = {}         # submitted and not finished, by id
        self._lock = threading.Lock()
        self._log = log or say      # (a log nobody reads any more drops its lines: the thread serves on)
        self._first = first                     # run on the thread before any job (the server's warm-up)
        self._ready = threading.Event()
        self._first_result: tuple[object, BaseException | None] = (None, None)
        self._thread = threading.Thread(target=self._serve, name="codecomplete-engine", daemon=True)
        self._thread.start()

    def wait_ready(self):
        """Wait for `first` to end on the engine thread; its result, or its exception raised here."""
        self._ready.wait()
        result, error = self._first_result
        if error is not None:
            raise error
        return result

    def submit(self, start: Callable[[], Generation], label: str,
               stop_when: Callable[[str], bool] | None = None, failures_in_result: bool = False,
               describe: Callable[[object, list[int], list], list] | None = None,
               finish: Callable[[Job, object], list] | None = None) -> Job:
        """Queue a job. An answer the model ended with NaN or inf logits (GenerationResult.not_a_number) ends it with
        a 500 that says so, as vLLM ends a generation that failed (a stream: after the text already sent), or with
        `failures_in_result` (the command line's routes) with the result, which says so itself. `describe` and
        `finish`: as Job's."""
        job = Job(start, label, asyncio.get_running_loop(), stop_when, failures_in_result, describe, finish)
        with self._lock:
            # A cancelled job still in the queue is skipped at once: it does not count.
            waiting = sum(1 for j in self._live.values() if not j.started and not j.cancelled.is_set())
            if waiting >= self.max_waiting:
                raise Busy(f"the server is busy: {waiting} requests are waiting; try again")
            self._live[job.id] = job
        self._queue.put(job)
        return job

    def cancel(self, job_id: str) -> bool:
        """Cancel a job by its id (the command line's Ctrl-C); False if it is not running or waiting."""
        job = self._live.get(job_id)
        if job is not None:
            job.cancel()
        return job is not None

    def cancel_all(self) -> None:
        """The server stops: every job ends with a 503."""
        for job in list(self._live.values()):
            job.cancel(ApiError(503, "the server is shutting down"))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel what is running and waiting, and stop the thread (after the running job's next token)."""
        self.cancel_all()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.send("error", ApiError(503, "the server is shutting down"))
        self._queue.put(None)
        self._thread.join(timeout)

    def _serve(self) -> None:
        if self._first is not None:
            try:
                self._first_result = (self._first(), None)
            except BaseException as exc:    # for wait_ready to raise; the thread serves nothing then
                self._first_result = (None, exc)
                self._ready.set()
                return
        self._ready.set()
        idle_work = self._idle is not None
        after_job = False                   # a job just ended: its upkeep's first slice comes after upkeep_after_s
        while True:
            wait = self.upkeep_after_s if after_job else self.idle_s if idle_work else None
            try:
                job = self._queue.get(timeout=wait)
            except queue.Empty:             # quiet for a while: one slice of idle work
                after_job = False
                idle_work = self._run_idle()
                continue
            after_job = False
            if job is None:
                return
            idle_work = self._idle is not None      # a request may have changed what there is to do
            job.started = True
            if job.cancelled.is_set():      # the client left while it waited
                self._finished(job)
                job.send("error", job.error or ApiError(503, "cancelled before it started"))
                continue
            started = time.perf_counter()
            try:
                result = job.run()
                finished = (job.finish(job, result) if job.finish is not None
                            and not (job.error is not None and result.finish_reason == "cancelled") else [])
            except Exception as exc:        # reported to the request as an error; the thread serves on
                job.send("error", exc)
                self._log(f"{job.label} · error: {type(exc).__name__}: {exc}")
            else:
                if job.error is not None and result.finish_reason == "cancelled":
                    job.send("error", job.error)        # cut short by the server's stop: not an answer
                elif result.not_a_number and not job.failures_in_result:
                    job.send("error", ApiError(500, not_a_number(result)))   # a "stop" would pass for a whole answer
                else:
                    job.send("done", result, described=finished)
                self._log(_summary(job, result, time.perf_counter() - started))
                if job.stalled:
                    self._log(f"{job.label} · request {job.id} · stopped: its client read none of the stream for "
                              f"{STALL_S:g} s")
                if result.not_a_number:
                    self._log(f"{job.label} · request {job.id} · warning: {not_a_number(result)}")
            finally:
                self._finished(job)
            self._upkeep = after_job = self._between is not None    # a request ran: the upkeep has work to do
            self._release_due = self._release is not None
            idle_work = idle_work or self._upkeep or self._release_due

    def _waiting(self) -> bool:
        """Whether a job waits in the queue (upkeep between jobs stops early for it)."""
        return not self._queue.empty()

    def _run_idle(self) -> bool:
        """One slice of the upkeep while it has more (the index catching up with the disk), then the release of
        what the requests freed, else of the idle work; whether any is left."""
        try:
            if self._upkeep:
                self._upkeep = bool(self._between(self._waiting))
                return True
            if self._release_due:
                self._release_due = False
                self._release()
                return True
            return self._idle is not None and bool(self._idle())
        except Exception as exc:            # tried again after the next job
            self._upkeep = False
            self._log(f"idle work · error: {type(exc).__name__}: {exc}")
            return False

    def _finished(self, job: Job) -> None:
        with self._lock:
            self._live.pop(job.id, None)


def _summary(job: Job, result, seconds: float) -> str:
    """`POST /infill · prompt 1,034 (1,001 reused) · 16 tokens · first 112 ms (queued 0, prompt 15, engine 90, text
    5, sent 2) · 0.61 s · length`: the first token's time from the job's submission, split into the wait for the
    engine thread, building the prompt, the engine's own time to its first token, the rest until the first text
    (token healing's first tokens may write none) and handing it to the client (a stream's event loop; said when that
    happened before the job ended)."""
    first = f"first {result.timings.ttft_ms:.0f} ms"
    if job.began is not None and job.built is not None:
        ms = lambda a, b: f"{1000 * (b - a):.1f}"  # noqa: E731
        end = job.first_sent or job.first_text
        parts = [f"queued {ms(job.submitted, job.began)}", f"prompt {ms(job.began, job.built)}",
                 f"engine {result.timings.ttft_ms:.1f}"]
        if job.first_text is not None:
            parts.append(f"text {1000 * (job.first_text - job.built) - result.timings.ttft_ms:.1f}")
        if job.first_sent is not None:
            parts.append(f"sent {ms(job.first_text, job.first_sent)}")
        first = (f"first {ms(job.submitted, end)} ms" if end is not None else first) + f" ({', '.join(parts)})"
    prompt, generated = result.token_counts()
    t = result.timings
    reuse = (f", {t.moved_tokens:,} of them moved" if t.moved_tokens else "") + (
        f", a saved prompt of {t.restored_tokens:,} restored" if t.restored_tokens else "")
    # (a limit stops the engine as a client that left does: the log tells them apart, as llama.cpp's stop_type does)
    reason = "limit" if job.limited and result.finish_reason == "cancelled" else result.finish_reason
    return (f"{job.label} · prompt {prompt:,} ({result.reused_prefix_tokens:,} reused{reuse}) · "
            f"{generated} tokens · {first} · {seconds:.2f} s · {reason}")
