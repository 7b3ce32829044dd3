"""The ASGI app: the protocol routers over one engine worker, API-key checks, and errors as JSON."""
from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Depends, FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ..errors import AppError
from ..session import Generation, Sampling, Session
from . import llama_cpp, native, ollama, openai_api
from .errors import TYPES, ApiError, api_error
from .streaming import Running, json_response
from .worker import MAX_WAITING, Busy, EngineWorker


class Server:
    """What every route needs: the session, the worker that runs it, and the server's own settings."""

    def __init__(self, session: Session, *, max_tokens: int, api_key: str | None, info: dict,
                 max_waiting: int | None = None, idle: Callable[[], bool] | None = None,
                 warm_up: Callable[[], object] | None = None) -> None:
        self.session = session
        # `idle`: one slice of work for quiet moments (warming the prompt caches); `warm_up`: what to prepare before
        # the first request (worker.wait_ready() returns its result); both on the engine thread.
        self.worker = EngineWorker(max_waiting or MAX_WAITING, between=session.tidy, idle=idle, first=warm_up)
        self.max_tokens = max_tokens            # what a request that sets no limit (or -1) gets
        # Editors' prompts keep one size whatever their n_predict, so consecutive requests share their start.
        self.prompt_budget = session.prompt_budget(max_tokens)
        self.api_key = api_key
        self.info = info                        # what /codecomplete/v1/info and the runtime file tell clients

    @property
    def engine(self):
        return self.session.engine

    def sampling(self, max_tokens: int | None, **options) -> Sampling:
        """Sampling for a request; None or -1 new tokens: the server's default. More than the context holds: 400."""
        if max_tokens is None or max_tokens < 0:
            max_tokens = self.max_tokens
        limit = self.engine.context_length - 1
        if max_tokens > limit:
            raise ApiError(400, f"{max_tokens:,} new tokens do not fit the context of {limit + 1:,} tokens")
        return Sampling(max_tokens=max_tokens, **options)

    def budget(self, sampling: Sampling) -> int:
        """The prompt tokens of an editor's request: the server's fixed size, less if many new tokens need room."""
        return min(self.prompt_budget, self.session.prompt_budget(sampling.max_tokens))

    def start(self, request: Request, start: Callable[[], Generation],
              stop_when: Callable[[str], bool] | None = None) -> Running:
        """Queue the work (503 when the queue is full) and follow it for this request."""
        try:
            job = self.worker.submit(start, f"{request.method} {request.url.path}", stop_when)
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


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="codecomplete", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server          # every route finds it as request.app.state.server
    app.include_router(llama_cpp.public)
    for module in (llama_cpp, openai_api, ollama, native):
        app.include_router(module.router, dependencies=[Depends(check_api_key)])

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
            allowed = (exc.headers or {}).get("Allow", "")
            response = _error_response(request, ApiError(
                405, f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})"))
            response.headers["Allow"] = allowed
            return response
        return _error_response(request, ApiError(exc.status_code if exc.status_code in TYPES else 400,
                                                 str(exc.detail)))
    return app


def _error_response(request: Request, error: ApiError):
    if request.url.path.startswith(ollama.PREFIX):
        return json_response({"error": error.message}, error.status)     # Ollama's shape, which its clients read
    return json_response(error.body(), error.status)
