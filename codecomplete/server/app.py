"""The ASGI app: the protocol routers over one engine worker, API-key checks, a loopback server's Host and Origin
checks (DNS rebinding), and errors as JSON."""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from ..errors import AppError
from ..session import Generation, Sampling, Session
from . import llama_cpp, mistral, native, ollama, openai_api, tabby, tgi
from .bodies import read_object
from .errors import TYPES, ApiError, api_error, error_body
from .memory import release_freed
from .streaming import Running
from .worker import MAX_WAITING, Busy, EngineWorker

# The scope's future through which the server's connection (serve._Connection) ends a request whose body is still
# arriving: its result, an ApiError (408: not in time; 503: the server stops), is raised by the app's next read of
# the body, so that the app answers it in the route's protocol's shape.
CUT = "codecomplete.cut"
# A request's head: its request line's target (path and query) may take MAX_TARGET_BYTES (cpp-httplib's limit, that
# of llama.cpp's server: a 414 past it), the request line and header fields together MAX_HEAD_BYTES (h11's default
# bound on what it holds unparsed, Node's limit too: a 431 past it). Editors send a few hundred bytes of each.
# cpp-httplib (httplib.h, 0.53) answers a header line over 8 KiB or more than 100 headers with a plain 400, and
# drops a connection whose line passes 32 KiB without an answer; 431 is HTTP's status for it (RFC 6585).
MAX_TARGET_BYTES = 8 * 1024
MAX_HEAD_BYTES = 16 * 1024
T = TypeVar("T")


class Server:
    """What every route needs: the session, the worker that runs it, and the server's own settings."""

    def __init__(self, session: Session, *, max_tokens: int, api_key: str | None, info: dict,
                 max_waiting: int | None = None, idle: Callable[[], bool] | None = None,
                 warm_up: Callable[[], object] | None = None, loopback: bool = True, cache_reuse: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        self.session = session
        # The event loop's own tokenizer (/tokenize, /detokenize, a prompt echoed back), copied before the engine
        # thread starts: a fast tokenizer keeps `encode_special_tokens` as state that each call sets, and the engine
        # thread's prompts set it their way meanwhile (ids of the other kind back, or "Already borrowed").
        # (Each told the rows the model embeds, as the engine's is: prompts.tokens.tokenizer_copy.)
        from prompts.tokens import tokenizer_copy
        self.tokenizer = tokenizer_copy(session.engine.tokenizer)
        # The thread pool's (/tokenize, off the event loop), one call at a time: its threads shared the event loop's,
        # and two requests reading special-token text differently (parse_special) got each other's ids.
        self._pool_tokenizer = tokenizer_copy(session.engine.tokenizer)
        self._pool_tokenizer_lock = threading.Lock()
        self.loopback = loopback                # bound to this machine only: requests must name it (LocalNamesOnly)
        # `idle`: one slice of work for quiet moments (warming the prompt caches); `warm_up`: what to prepare before
        # the first request (worker.wait_ready() returns its result); both on the engine thread.
        self.worker = EngineWorker(max_waiting or MAX_WAITING, between=session.tidy, idle=idle, first=warm_up,
                                   release=release_freed, log=log)
        self.max_tokens = max_tokens            # what a request that sets no limit (or -1) gets
        self.cache_reuse = cache_reuse          # --cache-reuse: every request's, unless llama.cpp's n_cache_reuse says
        # Editors' prompts keep one size whatever their n_predict, so consecutive requests share their start.
        self.prompt_budget = session.prompt_budget(max_tokens)
        self.api_key = api_key
        self.info = info                        # what /codecomplete/v1/info and the runtime file tell clients

    async def with_tokenizer(self, work: Callable[[object], T]) -> T:
        """`work(tokenizer)` in a thread off the event loop, with the thread pool's tokenizer (one at a time)."""
        def locked() -> T:
            with self._pool_tokenizer_lock:
                return work(self._pool_tokenizer)
        return await run_in_threadpool(locked)

    @property
    def engine(self):
        return self.session.engine

    def sampling(self, max_tokens: int | None, **options) -> Sampling:
        """Sampling for a request; None or -1 new tokens: the server's default. More than the context holds: as
        many as it holds, the answer ending where the context fills (`length`, llama.cpp's `truncated`), as
        llama.cpp and Ollama do: an editor's chat default (4,096) on a small CPU context is no error there."""
        if max_tokens is None or max_tokens < 0:
            max_tokens = self.max_tokens
        return Sampling(max_tokens=min(max_tokens, self.engine.context_length - 1),
                        **{"cache_reuse": self.cache_reuse, **options})

    def budget(self, sampling: Sampling) -> int:
        """The prompt tokens of a request: the server's fixed size, less if many new tokens need room, but never
        under half of it (a request for more new tokens than the rest leaves gets them until the context fills)."""
        room = self.session.prompt_budget(sampling.max_tokens)
        return min(self.prompt_budget, max(room, self.prompt_budget // 2))

    def room(self, sampling: Sampling) -> int:
        """The most tokens a client's own conversation may take where it does not fit `budget`: the context (the
        n_ctx /props and /v1/models tell clients) less the answer's tokens, as /completion's prompts may
        (Session.chat's `room`)."""
        return max(1, self.engine.context_length - sampling.max_tokens)

    def start(self, request: Request, start: Callable[[], Generation],
              stop_when: Callable[[str], bool] | None = None, failures_in_result: bool = False,
              describe: Callable[[object, list[int], list], list] | None = None,
              finish: Callable[[object, object], list] | None = None) -> Running:
        """Queue the work (503 when the queue is full) and follow it for this request (`failures_in_result`,
        `describe`, `finish`: as `EngineWorker.submit`)."""
        try:
            job = self.worker.submit(start, f"{request.method} {request.url.path}", stop_when, failures_in_result,
                                     describe, finish)
        except Busy as exc:
            raise ApiError(503, str(exc)) from None
        return Running(job, request)


def check_api_key(request: Request) -> None:
    """With --api-key, `Authorization: Bearer KEY`; without one, anything (llama.vim sends `Bearer `, Continue
    `Bearer undefined`)."""
    key = request.app.state.server.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)")


def local_name(authority: str) -> bool:
    """Whether a Host header's (or an Origin's) host[:port] can only mean this machine: localhost, *.localhost (either
    with DNS's trailing dot: `localhost.` is the same name, made absolute), a loopback or the unspecified address."""
    authority = authority.strip()
    if authority.count(":") > 1 and not authority.startswith("["):   # a bare IPv6 address, no port
        authority = f"[{authority}]"
    try:
        parts = urlsplit(f"//{authority}")
        name, _ = parts.hostname or "", parts.port                  # lower case, brackets and port taken off
    except ValueError:                                              # "[::1", a port that is no number or past 65535
        return False
    absolute = name.removesuffix(".")                               # one dot only: "localhost.." names nothing
    if absolute == "localhost" or absolute.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    # The unspecified address too (0.0.0.0, [::]): a connection to it reaches this machine, twinny's settings name
    # it for localhost (its default Ollama host and FIM provider), and Ollama answers it (allowedHostsMiddleware).
    # A web page can name it only as it can name 127.0.0.1, its Origin then refused below.
    return address.is_loopback or address.is_unspecified


class LocalNamesOnly:
    """On a server bound to loopback: refuse a request that names another host (Host) or comes from a web page of
    another site (Origin). A page the user visits can resolve its own domain to 127.0.0.1 (DNS rebinding) and so
    reach this port as "its" server; its requests still say its name. Editors, curl and the openai package send
    Host 127.0.0.1 or localhost and no Origin. Ollama closed CVE-2024-28224 the same way."""

    def __init__(self, app, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.server.loopback:
            # Every Origin field, not one of them: a check that read the last let a request whose first (the one
            # Starlette's request.headers gives) named another site through. (h11 answers two Host fields 400 itself;
            # ASGI servers give header names in lower case)
            hosts = [value.decode("latin-1") for name, value in scope["headers"] if name == b"host"] or [""]
            origins = [value.decode("latin-1") for name, value in scope["headers"] if name == b"origin"]
            host = next((host for host in hosts if not local_name(host)), None)
            origin = next((origin for origin in origins if not _local_origin(origin)), None)
            problem = (f"Host {host!r} does not name this machine" if host is not None else
                       f"requests from web pages ({origin}) are refused" if origin is not None else None)
            if problem is not None:
                response = _error_response(Request(scope), ApiError(403, f"{problem}: this server answers its own "
                                                                         "machine only"))
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _local_origin(origin: str) -> bool:
    try:
        return local_name(urlsplit(origin).netloc)
    except ValueError:                                              # "http://[::1"
        return False


def head_error(target_bytes: int, head_bytes: int) -> ApiError | None:
    """The error for a request head of these sizes (its request line's target; its request line and header fields
    together), or None where it is within the limits."""
    if target_bytes > MAX_TARGET_BYTES:
        return ApiError(414, f"the request's URL is longer than {MAX_TARGET_BYTES:,} bytes")
    if head_bytes > MAX_HEAD_BYTES:
        return ApiError(431, f"the request's header fields are larger than {MAX_HEAD_BYTES:,} bytes "
                             "(with its request line)")
    return None


class HeadLimits:
    """A request whose head is over the limits (`head_error`) is answered 414 or 431 in its route's shape, and its
    connection closed, before any other check. A head that arrives bit by bit is held by h11 up to MAX_HEAD_BYTES,
    then refused by the connection (serve._Connection); one that arrives in a single read of the socket (up to
    256 KiB) is parsed whole, and refused here."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            target = len(scope["raw_path"]) + (len(scope["query_string"]) + 1 if scope["query_string"] else 0)
            # as sent: "METHOD TARGET HTTP/1.1\r\n", each "name: value\r\n", the blank line
            head = (len(scope["method"]) + target + 11 + sum(len(name) + len(value) + 4
                                                             for name, value in scope["headers"]) + 2)
            error = head_error(target, head)
            if error is not None:
                response = _error_response(Request(scope), error)
                response.headers["Connection"] = "close"     # its body, if any, is not read
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyCuts:
    """Reads of a request's body that end with the connection's cut (`CUT`) when it comes first."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        cut = scope.get(CUT) if scope["type"] == "http" else None
        if cut is None:
            return await self.app(scope, receive, send)
        body_in = False

        async def receive_or_cut():
            nonlocal body_in
            if body_in:
                return await receive()
            if cut.done():
                raise cut.result()
            message = asyncio.ensure_future(receive())
            await asyncio.wait((message, cut), return_when=asyncio.FIRST_COMPLETED)
            if not message.done():
                message.cancel()
                raise cut.result()
            body_in = message.result()["type"] != "http.request" or not message.result().get("more_body", False)
            return message.result()
        return await self.app(scope, receive_or_cut, send)


def create_app(server: Server) -> FastAPI:
    # No redirect from `/infill/` to `/infill` (Starlette's default, a 307 with no body): an unknown path is a 404 in
    # the route's error shape, as llama.cpp answers it.
    app = FastAPI(title="codecomplete", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.server = server          # every route finds it as request.app.state.server
    public = [module.public for module in (llama_cpp, ollama, tabby)]
    keyed = [module.router for module in (llama_cpp, openai_api, ollama, native, tabby, mistral, tgi)]
    for router in public:
        app.include_router(router)
    for router in keyed:                # (tgi's POST /: GET / is Ollama's)
        app.include_router(router, dependencies=[Depends(check_api_key)])

    @app.post("/v1/completions", dependencies=[Depends(check_api_key)])
    async def completions(request: Request):
        """Tabby's completion (a `segments` object) and OpenAI's (a `prompt`) share the path: the body decides."""
        body = await read_object(request)
        return await (tabby.completions if tabby.speaks(body) else openai_api.completions)(request, body)

    @app.exception_handler(ApiError)
    @app.exception_handler(AppError)          # a check the command line shares (a path outside the repository)
    async def known_error(request: Request, exc: Exception):
        return _error_response(request, api_error(exc))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect):     # before it sent its whole body
        return Response(status_code=400)                                 # nobody reads it

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):      # no such route, or not with this method
        if exc.status_code == 404:
            return _error_response(request, ApiError(404, f"no route {request.method} {request.url.path}"))
        if exc.status_code == 405:   # (no CORS: a web page the user visits must not read their code through here)
            allowed = _allowed_methods(request, [*public, *keyed, app.router]) or (exc.headers or {}).get("Allow", "")
            response = _error_response(request, ApiError(
                405, f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})"))
            response.headers["Allow"] = allowed
            return response
        return _error_response(request, ApiError(exc.status_code if exc.status_code in TYPES else 400,
                                                 str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):   # a bug: logged with its traceback, a JSON 500 out
        logging.getLogger("codecomplete.server").error("%s %s failed", request.method, request.url.path,
                                                       exc_info=exc)
        return _error_response(request, api_error(exc))

    app.add_middleware(LocalNamesOnly, server=server)
    app.add_middleware(BodyCuts)
    app.add_middleware(HeadLimits)         # (the last added runs first)
    return app


def _allowed_methods(request: Request, routers: list) -> str:
    """The methods some route of `routers` serves at the request's path, for a 405's Allow: two protocols share paths
    (`/` is Ollama's GET and TGI's POST, `/models/{id}` OpenAI's GET and the Inference API's POST), where Starlette's
    names only the first route that matched it. (The routers' own routes: FastAPI's app holds an included router as
    one route of its own.)"""
    methods = {method for router in routers for route in router.routes if isinstance(route, BaseRoute)
               and route.matches(request.scope)[0] is not Match.NONE for method in getattr(route, "methods", None) or ()}
    return ", ".join(sorted(methods))


def _error_response(request: Request, error: ApiError):
    response = Response(error_body(request.url.path, error, request.method), status_code=error.status,
                        media_type="application/json")
    if error.status == 503:
        response.headers["Retry-After"] = "1"       # busy with other requests: a generation takes about a second
    cut = request.scope.get(CUT)
    if cut is not None and cut.done():              # its body never came whole: the connection takes no other request
        response.headers["Connection"] = "close"
    return response
