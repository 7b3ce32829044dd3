"""`codecomplete serve [REPO]`: load the model and index the repository once, then answer editors over HTTP.

Binds loopback unless told otherwise; another host needs --api-key. Announces itself in the user runtime
directory while it runs, so `codecomplete REPO --file ...` finds it. Ctrl-C or SIGTERM cancel what is running,
close the socket and end with 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import functools
import gc
import http
import ipaddress
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

import h11
import uvicorn

try:
    import resource     # (imported now: out of descriptors, an import cannot open its file)
except ImportError:     # (Windows)
    resource = None
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import chat, client, switches, workspace
from ..cli import package_version
from ..errors import AppError, Stopped, UsageError, say, write_or_drop
from ..render import plural
from ..session import open_session, timed_steps
from . import native, warming
from .app import CUT, MAX_HEAD_BYTES, Server, create_app, head_error
from .bodies import MAX_BODY_BYTES
from .errors import ApiError, error_body
from .discovery import announce
from .streaming import DROP
from .worker import STALL_S
from .warming import PromptWarmer

DEFAULT_MAX_TOKENS = 256      # per request, when it sets no limit
GRACE_S = 5                   # for streams to end after a stop signal
REQUEST_S = 10                # for a request's headers and body to arrive, from its first byte (then a 408)
DROP_S = 1                    # after a stop signal, for a response whose client reads nothing to take its writes
HEAD_BYTES = 4096             # of a request's first bytes kept until its headers are in: its path, for an error's shape
LOADING_READ_S = 1            # for a request that arrives while the model loads to send itself (_LoadingAnswers)
# Prompts of an editor's request come to within this many tokens of the server's prompt budget (an 8k budget:
# 7,776-8,125 tokens seen): their prefill spans are warmed before serving (models/engine.py PREFILL_BUCKET).
WARM_PREFILL_BELOW = 1024
GC_FREEZE = switches.GC_FREEZE         # off: leave start-up's objects to the garbage collector


def run_serve(args) -> None:
    client.build()      # the code this process runs, taken before an upgrade could change it on disk meanwhile
    api_key = args.api_key or os.environ.get(client.API_KEY_ENV) or None
    if api_key is not None and not client.sendable_key(api_key):
        raise UsageError(f"the API key must be {client.KEY_RULE}")
    if not _is_loopback(args.host) and not api_key:
        raise UsageError(f"--host {args.host} is reachable from other machines: give an --api-key (or "
                         f"${client.API_KEY_ENV})")
    root = workspace.repository(args.repo or ".", serving=True)
    listener = _listen(args.host, args.port)       # a taken port fails now, not after the model loads
    loading = _LoadingAnswers(listener)              # ... and answers 503 "Loading model" until then
    try:
        _serve(args, root, listener, loading, api_key)
    finally:
        loading.stop()
        listener.close()


def _serve(args, root, listener: socket.socket, loading: _LoadingAnswers, api_key: str | None) -> None:
    max_tokens = args.max_tokens or DEFAULT_MAX_TOKENS
    # The default cache also has room for an --ask answer's default length where the model holds it, or `codecomplete
    # REPO --ask Q` never found a CPU server on its defaults fit (1,024 + 256 tokens held, 1,024 + 512 asked) and ran
    # alone. The prompt budget stays what max_tokens leaves; an explicit --context-tokens is sized as given.
    headroom = 0 if args.context_tokens else max(0, chat.DEFAULT_MAX_TOKENS - max_tokens)
    # A new project's folder may hold nothing to index yet: the files an editor adds are indexed as they come.
    session = open_session(args, root, max_tokens, headroom=headroom, allow_empty=True)
    budget = session.prompt_budget(max_tokens)      # (the Server's prompt_budget too)
    _check_budget(session, budget)
    warmer = PromptWarmer(session, budget) if warming.enabled() else None
    engine = session.engine
    host, port = listener.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    info = _description(url, root, args, engine)
    stopping = threading.Event()        # set: the warm-up ends at its next step
    server = Server(session, max_tokens=max_tokens, api_key=api_key, info=info, max_waiting=args.max_waiting,
                    idle=warmer.step if warmer is not None else None,
                    # on the engine thread (worker.py: why)
                    warm_up=lambda: _warm_up(session, budget, warmer, args.cache_ram, should_stop=stopping.is_set),
                    loopback=_is_loopback(args.host), cache_reuse=args.cache_reuse)
    try:
        _run(args, root, listener, loading, api_key, session, server, info, url)
    except BaseException:
        # Ctrl-C or SIGTERM before uvicorn took over (while the engine thread warms up, or just after): the engine
        # thread ends before the interpreter does. Left running, the interpreter's exit caught it inside torch's
        # native code, whose unwinding aborted the process ("terminate called without an active exception", 134).
        stopping.set()
        server.worker.shutdown()
        raise


def _run(args, root, listener: socket.socket, loading: _LoadingAnswers, api_key: str | None, session,
         server: Server, info: dict, url: str) -> None:
    """Wait for the warm-up, then serve until stopped."""
    engine = session.engine
    warmed = server.worker.wait_ready()
    frozen = switches.on(GC_FREEZE)
    if frozen:
        # What start-up built (the model's Python side, compiled code, the index, the tokenizer, the warmed caches:
        # ~0.5M objects) leaves the collector's sight. Else a full collection, which Python runs once enough new
        # objects survive, walks all of it: 200-480 ms on a 2-core CPU (bench/results/NOTES.md, Run 8), inside
        # whichever request triggers it.
        gc.collect()
        gc.freeze()
    info["prompt_budget"] = server.prompt_budget
    config = uvicorn.Config(create_app(server), log_level="warning", access_log=False, lifespan="off",
                            log_config=_log_config(),
                            timeout_graceful_shutdown=GRACE_S, http=_Connection,
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    # The log is best effort from its first line, as llama.cpp's and uvicorn's are: a standard error that cannot be
    # written (a full disk, a descriptor open for reading only) ended the server before it served, without a word,
    # and a pipe already full held it there for good.
    say(f"codecomplete: {warmed}")
    if args.spm_infill:
        say(f"codecomplete: {_infill_order(engine)}")
    if not session.index.chunks:
        from prompts.index import nothing_to_index
        say(f"codecomplete: {nothing_to_index(root)} yet: files added while it serves are indexed as they come")
    files = plural(len(session.index.files), "file")
    say(f"codecomplete: serving {root} ({files}) with {engine.name} ({engine.device}, "
        f"{engine.precision}, {engine.attention}) on {url} · prompts of {server.prompt_budget:,} tokens "
        f"· Ctrl-C stops")
    loading.stop()             # uvicorn takes the listener from here
    previous = signal.signal(signal.SIGTERM, _stop)
    running = _Uvicorn(config, server.worker)
    hung_up = _hang_up_as_a_stop(running)
    try:
        with announce({**info, "api_key": api_key}):     # the key only into the user's private runtime dir
            running.run(sockets=[listener])
    except (KeyboardInterrupt, _Stopped):
        pass                   # uvicorn shut down cleanly, then passed the signal on
    finally:
        signal.signal(signal.SIGTERM, previous)
        if hung_up is not None:
            signal.signal(signal.SIGHUP, hung_up[0])
        server.worker.shutdown()
        listener.close()
        if frozen:
            gc.unfreeze()      # the interpreter's exit frees them (else nanobind reports Triton objects as leaked)
    say("codecomplete: stopped")      # (its log may have no reader any more)
    if hung_up is not None and len(hung_up) > 1:
        raise Stopped(128 + signal.SIGHUP)      # stopped as for SIGTERM, and still ended with 129


class _LogHandler(logging.StreamHandler):
    """The server's log records (uvicorn's, "Invalid HTTP request received." for each malformed request; a request's
    internal error with its traceback) on standard error, written as far as it is taken at once (`write_or_drop`),
    the rest dropped: a pipe its reader never drains filled up after a few thousand, and the event loop, which
    writes them, waited for good."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_or_drop(self.stream, self.format(record) + self.terminator)     # (a traceback: pieces)
        except RecursionError:          # (as StreamHandler.emit)
            raise
        except Exception:
            self.handleError(record)


def _log_config() -> dict:
    """uvicorn's logging configuration, its handlers `_LogHandler`s, and one for codecomplete.server's records (a
    request's internal error), written as Python's last-resort handler wrote them."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    handler = f"{__name__}._LogHandler"
    for name in config["handlers"]:
        config["handlers"][name]["class"] = handler
    config["formatters"]["plain"] = {"format": "%(message)s"}
    config["handlers"]["plain"] = {"formatter": "plain", "class": handler, "stream": "ext://sys.stderr"}
    config["loggers"]["codecomplete.server"] = {"handlers": ["plain"], "level": "WARNING", "propagate": False}
    return config


def _check_budget(session, budget: int) -> None:
    """A prompt budget too small for the completion format's own tokens (with the repository's name and the name of
    an editor's untitled buffer) would answer every editor request 400: refused now, naming the smallest that works.
    Only the tokenizer counts, no model call."""
    from prompts.completion import smallest_budget
    from prompts.formats import completion_format
    from prompts.tokens import encoder_for

    from ..errors import BUDGET_OPTIONS
    from ..session import UNTITLED

    tokenizer = session.engine.tokenizer
    smallest = smallest_budget(tokenizer, session.index.name, UNTITLED, suffix_first=session.suffix_first)
    if budget < smallest:
        form = completion_format(encoder_for(tokenizer), session.suffix_first)
        raise UsageError(f"a prompt budget of {budget:,} tokens cannot hold the {form.name} format's own tokens, the "
                         f"repository's and a file's name and any code: editors' prompts take at least {smallest:,} "
                         f"(a longer file name more): {BUDGET_OPTIONS}")


def _infill_order(engine) -> str:
    """What --spm-infill does with this model: a left-to-right prompt (no FIM tokens) has no suffix to move."""
    from prompts.formats import completion_format
    from prompts.tokens import encoder_for

    if completion_format(encoder_for(engine.tokenizer)).fim is None:
        return (f"--spm-infill: {engine.name} has no fill-in-the-middle tokens; its prompts end at the cursor "
                "either way, the code after it left out")
    return "infill prompts suffix first (--spm-infill): the code after the cursor, then the code before it"


def _description(url: str, root, args, engine) -> dict:
    """What clients learn about this server (/codecomplete/v1/info, the runtime file): where it is, what it serves,
    and the options it was started with, for the command line to tell whether it answers as it would."""
    import torch

    return {"url": url, "repo": str(root), "version": package_version(), "build": client.build(),
            "default_device": "cuda" if torch.cuda.is_available() else "cpu",   # where a command line runs by default
            "model_spec": client.model_spec(args.model or os.environ.get("CODECOMPLETE_MODEL")),
            "device": args.device, "dtype": args.dtype, "attention": args.attention, "gpus": args.gpus,
            "kv_cache": args.kv_cache, "weights": getattr(args, "weights", None),
            "context_tokens": args.context_tokens, "spm_infill": args.spm_infill,
            "options": sorted(native.Options.model_fields),   # what a command line's request may set (client.py)
            "defaults": _defaults(args, engine),
            "engine": {"name": engine.name, "device": engine.device, "dtype": engine.dtype,
                       "matmul_dtype": engine.matmul_dtype,
                       "attention": engine.attention, "kv_cache": engine.kv_cache_dtype,
                       "context_length": engine.context_length,
                       "model_max_positions": engine.model_max_positions, "load_s": engine.load_s}}


def _defaults(args, engine) -> dict:
    """What the engine options a command line leaves out resolve to on this server's device, for its model: the
    command line (which imports no torch) compares its options against these, not a table of its own. An option
    this server was started with leaves its default unknown where only the engine decides it (attention: flash
    where the kernels take the model's head dim)."""
    import torch
    from models.options import parse_dtype

    from ..engines import default_matmul_dtype

    dtype = str(parse_dtype(None, torch.device(engine.device))).removeprefix("torch.")
    matmul_dtype = default_matmul_dtype(engine.device, args.gpus) or dtype
    return {"dtype": dtype, "matmul_dtype": matmul_dtype, "attention": engine.attention if args.attention is None else None}


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, whose stop signal also cancels the generation in flight (else a long answer would hold
    the shutdown until it ends)."""

    def __init__(self, config: uvicorn.Config, worker) -> None:
        super().__init__(config)
        self.worker = worker

    def handle_exit(self, sig, frame) -> None:
        self.worker.cancel_all()
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        for listener in sockets or ():
            if isinstance(listener, _Listener):
                asyncio.get_running_loop().set_exception_handler(listener.quiet_accept_failures)
        await super().startup(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's handlers, but a Ctrl-C ignored when serving began stays ignored: a shell script's background job
        (`codecomplete serve &`) has SIGINT ignored so that Ctrl-C ends the script, not the job, as the one-shot
        commands and the start-up leave it; uvicorn's handler took it back, and the script's Ctrl-C stopped the
        server."""
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with super().capture_signals():
            if ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            yield


class _Connection(H11Protocol):
    """uvicorn's HTTP connection (h11's: what follows reads its states), with bounds on what a client can hold:

    - closed when it sends nothing for `timeout_keep_alive` seconds (5) after it opens, as after each answer:
      uvicorn starts that clock only once it has answered, so a connection that never sent a request stayed open
      for good, each an open file; at the process's limit (1,024 by default on Linux, 256 on macOS) the server
      accepted no other client until they closed.
    - a request must be all in (headers and body) REQUEST_S after its first byte, else it is answered 408 and the
      connection closed: uvicorn has no such clock, so a client sending a header or a body byte a second (slowloris)
      held its connection and its coroutine for good. Headers not all in: this answers, in the shape of the protocol
      the request line's path speaks (the bytes of this request only: a kept-alive connection's earlier request may
      be another protocol's); a body not all in: the app answers (its read ends with the error, `CUT`), as it answers
      any error. A request answered before its body was in (a 401, a 413) has its connection closed then.
    - on a stop signal, a request whose headers or body are still arriving is answered 503 at once (uvicorn waited
      out its grace period, cancelled the app and answered a text/plain 500 with a traceback in the log); an answer
      whose client takes none of its bytes (its writes paused) after DROP_S more is dropped, not waited for.
    - a stream the engine stopped because its client read nothing (worker.STALL_S) is dropped if its client has
      still taken none of its bytes STALL_S later (`DROP`, `_stalled`).
    - a request h11 cannot parse is a JSON 400 (uvicorn's is text/plain); one whose head h11 stopped holding, past
      MAX_HEAD_BYTES without its end, a 414 where its request line is that long or its target over MAX_TARGET_BYTES,
      else a 431 (uvicorn answered both 400; a head that came in one read was parsed whole and served, however
      large: app.HeadLimits refuses those).
    """

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._head = bytearray()        # this request's first bytes
        self._request_timer: asyncio.TimerHandle | None = None
        self._resumed = 0               # times its writes resumed: its client took bytes

    def connection_lost(self, exc) -> None:
        self._stop_request_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._request_timer is None and self.conn.their_state is h11.IDLE:     # a request's first bytes
            self._head.clear()
            self._request_timer = self.loop.call_later(REQUEST_S, self._request_timed_out)
        if len(self._head) < HEAD_BYTES:
            self._head += data[:HEAD_BYTES - len(self._head)]
        cycle = self.cycle
        super().data_received(data)
        self._follow(cycle)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()      # (starts a request pipelined behind this one, whose bytes h11 held)
        if self.cycle is not cycle and self._request_timer is None and self.conn.their_state is h11.SEND_BODY:
            self._request_timer = self.loop.call_later(REQUEST_S, self._request_timed_out)    # its body is arriving
        self._follow(cycle)

    def _follow(self, cycle) -> None:
        """After h11 read on: a request whose headers are in (a cycle other than `cycle`) reads its body through a
        cut the clock can make (its app has not run yet); a request all in stops the clock."""
        if self.cycle is not cycle:
            self.cycle.scope[CUT] = self.loop.create_future()
            self.cycle.scope[DROP] = functools.partial(self._stalled, self.cycle)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):       # all in (or the connection is done)
            self._stop_request_clock()

    def _stop_request_clock(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._cut(ApiError(408, f"the request did not arrive in time (its headers and body within {REQUEST_S} s)"))
        self._request_timer = None

    def _cut(self, error: ApiError) -> bool:
        """End the request still arriving with `error`; whether there was one."""
        if self.transport.is_closing():
            return False
        state, cycle = self.conn.their_state, self.cycle
        if state is h11.IDLE and self._request_timer is not None:      # its headers are arriving
            self._answer(error)
            return True
        if state is not h11.SEND_BODY or cycle is None:
            return False
        if cycle.response_complete:        # answered without its body: the connection cannot take another request
            self.transport.close()
        elif not cycle.response_started and not cycle.scope[CUT].done():
            cycle.scope[CUT].set_result(error)      # the app's read of the body raises it: the app answers
        cycle.keep_alive = False
        return True

    def _answer(self, error: ApiError) -> None:
        """Answer `error` before any app has the request, and close."""
        line = bytes(self._head).split(b"\r\n", 1)[0].split(b" ")
        path = line[1].split(b"?")[0].decode("latin-1") if len(line) > 1 else ""
        body = error_body(path, error, line[0].decode("latin-1"))
        retry = b"retry-after: 1\r\n" if error.status == 503 else b""
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s"
                             b"connection: close\r\n\r\n%s" % (error.status, _phrase(error.status), len(body), retry,
                                                                body))
        self._stop_request_clock()
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """h11 could not parse the request: a JSON 400; a head over h11's bound (MAX_HEAD_BYTES) without its end, a
        414 or 431. (uvicorn calls this inside its `except h11.RemoteProtocolError`, whose hint says which.)"""
        error = sys.exc_info()[1]
        if isinstance(error, h11.RemoteProtocolError) and error.error_status_hint == 431:
            held = self.conn.trailing_data[0]          # the head so far, over MAX_HEAD_BYTES
            line, ended, _ = held.partition(b"\n")
            parts = line.split(b" ")
            target = len(parts[1]) if ended and len(parts) > 1 else len(held)   # a request line without its end: 414
            self._answer(head_error(target, len(held)))
            return
        self._answer(ApiError(400, "the request is not valid HTTP/1.1"))

    def shutdown(self) -> None:
        if self._cut(ApiError(503, "the server is shutting down")) and self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.loop.call_later(DROP_S, self._drop_if_unread, cycle)
        super().shutdown()

    def resume_writing(self) -> None:
        self._resumed += 1
        super().resume_writing()

    def _stalled(self, cycle) -> None:
        """The engine stopped this stream's generation: its client read none of it for STALL_S (worker.py). Reading
        nothing STALL_S more, it is dropped: else its socket, its coroutine and the events it left unread stayed
        for as long as it kept the connection open."""
        self.loop.call_later(STALL_S, self._drop_if_unread, cycle, self._resumed)

    def _drop_if_unread(self, cycle, resumed: int | None = None) -> None:
        """Abort the connection of an answer not complete whose client takes nothing now (its writes paused), and
        has taken nothing since its writes had resumed `resumed` times, where given."""
        if resumed is not None and self._resumed != resumed:
            return
        if not cycle.response_complete and self.flow.write_paused and not self.transport.is_closing():
            # Its client takes nothing: the answer's end (a 503 or 408 frame) cannot reach it. A reset, not a close:
            # a close would leave the bytes it never read in the kernel, behind them the FIN it would never get.
            connection = self.transport.get_extra_info("socket")
            if connection is not None:
                try:
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.transport.abort()


def _phrase(status: int) -> bytes:
    return http.HTTPStatus(status).phrase.encode()


class _Stopped(Exception):
    pass


def _hang_up_as_a_stop(running: _Uvicorn) -> list | None:
    """While serving, SIGHUP (the terminal closed) shuts uvicorn down as SIGTERM does: raised inside the event loop,
    it skipped the shutdown (streams cut without their 503) and left the model to the interpreter's exit, whose
    nanobind reported leaked Triton objects into the log. The list: the handler before, then each SIGHUP received;
    None where there is no SIGHUP (Windows) or it is ignored (`nohup`: it stays so)."""
    number = getattr(signal, "SIGHUP", None)
    if number is None or signal.getsignal(number) is signal.SIG_IGN:
        return None
    hung_up = [signal.getsignal(number)]

    def stop(signum, frame) -> None:
        hung_up.append(signum)
        running.worker.cancel_all()
        running.should_exit = True         # (not handle_exit: uvicorn would raise SIGHUP again once it stopped)
    signal.signal(number, stop)
    return hung_up


def _stop(signum, frame):
    raise _Stopped


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _LoadingAnswers:
    """Until the server serves, a thread answers each request on the listener 503 "Loading model" (in its route's
    shape, Ollama's on /api/) and closes it, as llama.cpp's server answers while its model loads: the port is taken
    before the load, so that a taken port fails at once, and a client polling /health meanwhile (tens of seconds with a
    7B model on a GPU) got no answer at all, its connection accepted by the kernel and left waiting. One connection at
    a time, each given at most LOADING_READ_S to send its request; `stop()` returns once the thread has let go of the
    listener."""

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        listener.setblocking(False)     # (a connection its client reset between select and accept: no wait)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="codecomplete-loading", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        if self._listener.fileno() >= 0:
            self._listener.setblocking(True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.05)
                if not ready:
                    continue
                connection, _ = self._listener.accept()
            except (OSError, ValueError):     # closed under it (a failed start), or a connection gone at once
                if self._listener.fileno() < 0:
                    return
                continue
            with connection:
                try:
                    self._answer(connection)
                except OSError:
                    pass

    @staticmethod
    def _answer(connection: socket.socket) -> None:
        connection.settimeout(LOADING_READ_S)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
            try:
                data = connection.recv(HEAD_BYTES)
            except OSError:         # (a timeout: answered all the same)
                break
            if not data:
                break
            head += data
        line = head.split(b"\r\n", 1)[0].split(b" ")
        path = line[1].split(b"?")[0].decode("latin-1") if len(line) > 1 else ""
        body = error_body(path, ApiError(503, client.LOADING), line[0].decode("latin-1"))
        connection.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
                           % (len(body), b"" if line[0] == b"HEAD" else body))
        # What is left of the request (a POST's body) is read before the close, which would otherwise reset the
        # connection and lose the answer on its way.
        connection.shutdown(socket.SHUT_WR)
        left, until = MAX_BODY_BYTES, time.monotonic() + LOADING_READ_S
        while left > 0 and time.monotonic() < until:
            try:
                data = connection.recv(65536)
            except OSError:
                break
            if not data:
                break
            left -= len(data)


class _Listener(socket.socket):
    """The listening socket. Out of descriptors (EMFILE: a client holding hundreds of connections, a leak, a low
    `ulimit -n`), asyncio's accept loop pauses the listener for a second but goes on through the rest of its tries
    (uvicorn's backlog, 2,048 a wakeup), logging a traceback and scheduling another retry at each
    (python/cpython#151615, 3.11-3.14): a core kept busy and 5 MB of log a second until connections closed. After the
    first failure the tries of that pass find no connection waiting (the loop ends, as the fixed versions end it);
    asyncio's traceback is dropped (`quiet_accept_failures`) for one line a minute here."""

    OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)    # (asyncio's own list)
    REST_S = 0.5        # under asyncio's pause (ACCEPT_RETRY_DELAY, 1 s): its retry tries for real
    SAY_EVERY_S = 60

    def accept(self):
        if time.monotonic() < getattr(self, "resting_until", 0.0):
            raise BlockingIOError(errno.EAGAIN, "no connection taken while out of descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in self.OUT_OF_RESOURCES:
                self.resting_until, self.failure = time.monotonic() + self.REST_S, exc
                if time.monotonic() >= getattr(self, "said_at", -self.SAY_EVERY_S) + self.SAY_EVERY_S:
                    self.said_at = time.monotonic()
                    say(f"codecomplete: cannot take a connection: {exc.strerror}{_open_files_limit()}; new "
                        f"connections wait until some close")
            raise

    def quiet_accept_failures(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """The event loop's exception handler: what this listener said already is not logged again."""
        if context.get("exception") is None or context["exception"] is not getattr(self, "failure", None):
            loop.default_exception_handler(context)


def _open_files_limit() -> str:
    if resource is None:        # (Windows)
        return ""
    return f" (this process may open {resource.getrlimit(resource.RLIMIT_NOFILE)[0]:,}: ulimit -n)"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = _Listener(family, socket.SOCK_STREAM)
    if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
        # Windows: there SO_REUSEADDR lets a second server bind a port one already listens on (each then gets some
        # of the requests, and neither says so); SO_EXCLUSIVEADDRUSE is what POSIX binds do by themselves.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
    else:       # a restart may take the port while the last run's connections linger (TIME_WAIT)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        # A host that names no address of this machine is a bad --host (exit 2); a port taken is the moment's (1).
        bad_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
        raise (UsageError if bad_host else AppError)(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listener.listen(128)
    return listener


def _warm_up(session, budget: int, warmer: PromptWarmer | None, cache_ram_mib: int,
             should_stop=lambda: False) -> str:
    """Before serving, so that first requests do not pay for one-time setup: the session's warm-up (the decode
    steps compiled and captured: `Session.warm_up`), one prefill of each span that prompts of about the server's
    size take (on CUDA: compiling prefill's dense parts where the engine can, and each span's kernels and attention
    plan), and the prompt caches for a few seconds at most (prompt building only: no model call). The KV prompt
    cache (--cache-ram) starts after the warm-up's generations, so that it saves none of their filler. Returns what
    it did, for the log. `should_stop()` (a stop signal came meanwhile): the rest is skipped, between its steps."""
    started = time.perf_counter()
    done = timed_steps(session, session.warm_up(should_stop))
    engine = session.engine
    if should_stop():
        return "stopped during the warm-up"
    # (an editor's request that reuses a prefix and prefills a few new tokens paid it, every start)
    imported = time.perf_counter()
    session.import_ahead()
    done.append(f"the attention after a cached prefix ({time.perf_counter() - imported:.1f} s)")
    engine.compile_prefill = engine.prefill_compilable      # worth its compilation in a long-lived process
    if engine.compile_prefill:
        done.append("the compiled prefill")
    if should_stop():
        return "stopped during the warm-up"
    spans = engine.warm_prefill(range(max(1, budget - WARM_PREFILL_BELOW), budget + 1))
    engine.clear_prefix_cache()
    engine.keep_prompts(cache_ram_mib)
    if spans:
        done.append(f"{len(spans)} prefill spans of {spans[0]:,}-{spans[-1]:,} tokens")
    if warmer is not None and not should_stop():
        done.append(f"the prompts of {plural(warmer.run(warming.STARTUP_S, should_stop), 'file')}")
    return f"warmed up {', '.join(done)} in {time.perf_counter() - started:.1f} s"
