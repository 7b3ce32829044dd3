"""codecomplete's own protocol, for its command line (client.py): the same three operations the command runs in
process, with its options, streamed as JSON lines, so that it can print exactly what it would print alone.

    {"id": ..., "prompt": {"ids", "context", "stop_token_ids", "stop_strings", "format", "line_end"}}   the prompt,
                                                                                    first (line_end: the answer's)
    {"text": ..., "progress": {"decode_steps", "accepted_tokens", "drafted_tokens", "healing_tokens"}}  text deltas,
                                    with the engine's counters as each went out (the command line's live tokens/s)
    {"result": {"text", "token_ids", "prompt_tokens", "reused_prefix_tokens", "finish_reason", "stop_string",
                "healing_tokens", "timings"}}
    {"error": {"code", "message", "type"}}                                                   instead, at any point

The prompt budget follows the command line's rule for its --context-tokens, not the editors' fixed size.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from prompts.scan import MAX_BUFFER_BYTES

from .. import engines, workspace
from .bodies import MAX_BODY_BYTES, Body, Seed, check_ids, read_json
from .errors import COMMAND_LINE
from .streaming import json_response, ndjson, stream

async def _from_the_command_line() -> None:
    COMMAND_LINE.set(True)      # (async: it runs in the request's own task, whose context the stream inherits)


# The command line sends a whole buffer (--stdin reads up to MAX_BUFFER_BYTES) as UTF-8 JSON, in which an escape (a
# newline, a quote) doubles a character: far more than the 1 MiB an editor's request may carry.
MAX_COMMAND_BODY_BYTES = 2 * MAX_BUFFER_BYTES + MAX_BODY_BYTES

router = APIRouter(prefix="/codecomplete/v1", dependencies=[Depends(_from_the_command_line)])


class Options(Body):
    max_tokens: int = Field(ge=0)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: Seed | None = None
    context_tokens: int | None = Field(None, ge=1)
    speculate: int | None = Field(None, ge=0, le=15)     # --speculate: a sampled answer's draws depend on it


class CompleteRequest(Options):
    path: str = Field(min_length=1)     # (an empty one is the repository itself: " is a folder, not a file")
    text: str | None = None
    line: int | None = Field(None, ge=1)
    col: int | None = Field(None, ge=1)


class ChatMessage(Body):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Options):
    messages: list[ChatMessage] = Field(min_length=1)
    pinned: list[str] = []


class RawRequest(Options):
    prompt: str


class CancelRequest(Body):
    id: str


@router.get("/info")
async def info(request: Request):
    return json_response(request.app.state.server.info)


@router.post("/complete")
async def complete(request: Request):
    body = await read_json(request, CompleteRequest, MAX_COMMAND_BODY_BYTES)
    # As the command line checks it: inside the repository once links are resolved, so that no request makes
    # the server read a file elsewhere (a link in the repository to /etc/passwd included).
    path = workspace.file_in(request.app.state.server.session.index.root, body.path, must_exist=body.text is None)
    # Not sticky: the command line prints what it would print alone, whatever an editor typed before; and its prompt
    # gives way to a healing as much as its own KV cache (the budget and the new tokens) would make it.
    return await _run(request, body, lambda session, sampling, budget: _caught_up(session).complete(
        path, text=body.text, line=body.line, col=body.col, sampling=sampling, budget=budget, sticky=False,
        room=budget + sampling.max_tokens))


@router.post("/chat")
async def chat(request: Request):
    body = await read_json(request, ChatRequest, MAX_COMMAND_BODY_BYTES)
    messages = [message.model_dump() for message in body.messages]
    # Not sticky: --ask prints what it would print alone, whatever chat came before (complete's rule).
    return await _run(request, body, lambda session, sampling, budget: _caught_up(session).chat(
        messages, pinned=body.pinned, sampling=sampling, budget=budget, sticky=False))


@router.post("/raw")
async def raw(request: Request):
    body = await read_json(request, RawRequest, MAX_COMMAND_BODY_BYTES)
    # an empty prompt is the client's error: 400, not the engine's 500
    check_ids(request.app.state.server.engine, body.prompt)
    return await _run(request, body, lambda session, sampling, budget: session.raw(body.prompt, sampling=sampling))


@router.post("/cancel")
async def cancel(request: Request):
    body = await read_json(request, CancelRequest)
    return json_response({"cancelled": request.app.state.server.worker.cancel(body.id)})


def _caught_up(session):
    """The session with its index as the disk is now, every file (on the engine thread, where the operation runs): the
    command line alone reads the repository as it is, and an editor's requests catch up only a slice at a time. A
    pass over the whole tree (a stat of every folder and file; a folder listed again only where its stamps moved since
    the last pass): with nothing changed ~9 µs a file on a 2-core CPU, 0.08 s for 8.4k indexed files and 0.33 s for
    37k (round 22; listing every folder, as the first pass does, 0.37 s and 1.7 s), where a one-shot `--no-server`
    run there takes 7-20 s."""
    session.catch_up()
    return session


async def _run(request: Request, body: Options, operation):
    server = request.app.state.server
    # cache_reuse 0 whatever the server's --cache-reuse: moved runs are approximate, and the command line has none
    sampling = server.sampling(body.max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                               speculate=body.speculate, cache_reuse=0)
    session = server.session
    budget = engines.prompt_budget(session.engine, body.context_tokens, sampling.max_tokens)
    # an answer the model ended with NaN logits comes as the result that says so: the command warns, as in process
    running = server.start(request, lambda: operation(session, sampling, budget), failures_in_result=True)
    prompt = (await running.started()).prompt
    first = {"id": running.job.id, "prompt": {
        "ids": list(prompt.ids), "context": [asdict(item) for item in prompt.context],
        "stop_token_ids": list(prompt.stop_token_ids), "stop_strings": list(prompt.stop_strings),
        "format": prompt.format, "line_end": prompt.line_end}}

    def frames(event):
        if event.kind == "text":
            return [ndjson({"text": event.value, **_progress(event.progress)})]
        if event.kind == "error":
            return [ndjson(event.value.body())]
        job = running.job       # (the wait for the engine thread: the command line says it beside the first token)
        return [ndjson({"result": result_object(event.value, queued_s=job.began - job.submitted)})]
    return stream(running, frames, "application/x-ndjson", first=ndjson(first))


LIVE_COUNTERS = ("decode_steps", "accepted_tokens", "drafted_tokens", "healing_tokens")


def _progress(running) -> dict:
    """A text event's `progress`: the counters the command line's live line counts tokens with (render.LiveView: one
    token, then one a decode step and one an accepted draft; healing's are the prompt's). Counted from the text alone
    it read one token a piece of text: a character of several byte tokens or a step's accepted drafts counted once,
    `6.5 tok/s · 17 tokens` live through a server where the answer was 40 tokens at 15.8 tok/s."""
    return {"progress": {name: getattr(running, name) for name in LIVE_COUNTERS}} if running is not None else {}


def result_object(result, queued_s: float = 0.0) -> dict:
    """A GenerationResult as the command line's client reads it back (codecomplete.client); `queued_s`: how long the
    request waited for the engine thread (Timings.queued_s)."""
    return {"text": result.text, "token_ids": list(result.token_ids), "prompt_tokens": result.prompt_tokens,
            "reused_prefix_tokens": result.reused_prefix_tokens, "finish_reason": result.finish_reason,
            "stop_string": result.stop_string, "healing_tokens": result.healing_tokens,
            "timings": {**asdict(result.timings), "queued_s": queued_s}, "not_a_number": result.not_a_number}
