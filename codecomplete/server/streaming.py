"""Running a job for a request: waiting for it, or streaming it, and cancelling it when the client goes away.

A client that closes its connection (Continue aborts a superseded completion) gets its generation cancelled at the
next token: a task listens for the ASGI `http.disconnect` message the whole time the request lives, as vLLM's
`listen_for_disconnect` does, whether the job is still waiting, prefilling or streaming. Streams are plain
`data: ...` lines (SSE) or JSON lines: no keep-alive comments, which Continue's reader takes for the end.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .errors import api_error, compact
from .worker import Event, Job

# The scope's function, from the server's connection (serve._Connection), that drops the connection if its client
# goes on reading nothing: called when the engine stopped a generation whose stream it did not read (worker.STALL_S).
DROP = "codecomplete.drop"


def json_response(obj, status: int = 200) -> Response:
    return Response(compact(obj), status_code=status, media_type="application/json")


def sse(obj) -> str:
    return f"data: {compact(obj)}\n\n"


def ndjson(obj) -> str:
    return compact(obj) + "\n"


class Running:
    """A submitted job seen from its request: the prompt once it is built, then the text and the result."""

    def __init__(self, job: Job, request: Request) -> None:
        self.job = job
        self.finished: list = []         # the "done" event's `described` (what the job's `finish` made), once `result`
        self._events = job.events()
        job.on_stall = request.scope.get(DROP)
        self._watcher = asyncio.ensure_future(_cancel_on_disconnect(request, job))

    async def started(self):
        """The Generation once its prompt is built; a failure before that (a bad path, a prompt that cannot fit)
        raises ApiError, so that it is a plain HTTP error and not a broken stream."""
        event = await self._next()
        if event.kind == "error":
            self.close()
            raise api_error(event.value)
        return event.value

    async def rest(self) -> AsyncIterator[Event]:
        """The text events, then the last event ("done" with the result, or "error")."""
        try:
            while True:
                event = await self._next()
                if event.kind == "text" and self.job.first_sent is None:
                    self.job.first_sent = time.perf_counter()     # (for the log's summary line)
                yield event
                if event.kind in ("done", "error"):
                    return
        finally:
            self.close()

    async def result(self, on_text: Callable[[Event], None] | None = None):
        """Wait for the end: the result, or ApiError; `on_text`, where given, sees each text event on the way."""
        async for event in self.rest():
            if event.kind == "text" and on_text is not None:
                on_text(event)
            if event.kind == "error":
                raise api_error(event.value)
            if event.kind == "done":
                self.finished = event.described
                return event.value

    def close(self) -> None:
        """The request is over (answered, or its client gone): stop listening; cancel the job if it still runs."""
        self._watcher.cancel()
        self.job.cancel()

    async def _next(self) -> Event:
        try:
            return await self._events.__anext__()
        except asyncio.CancelledError:       # the response task was cancelled: the client went away
            self.close()
            raise


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


def stream(running: Running, frames: Callable[[Event], list[str]], media_type: str, first: str = "") -> StreamingResponse:
    """A streaming response: `first`, then each event of the job as the frames `frames` makes of it. An error in
    the middle of the stream comes as an "error" event whose value is the ApiError, for the protocol to write as
    it writes errors (llama.cpp and OpenAI: a `data: {"error": ...}` frame)."""
    async def body() -> AsyncIterator[str]:
        if first:
            yield first
        async for event in running.rest():
            if event.kind == "error":
                event = Event("error", api_error(event.value))
            for frame in frames(event):
                yield frame
    return StreamingResponse(body(), media_type=media_type, headers={"Cache-Control": "no-cache"})
