"""Mistral's fill-in-the-middle API (Codestral's), as Continue's `mistral` provider, Zed's Codestral edit
predictions, minuet-ai.nvim's `codestral` provider, Tabby's `mistral/completion` model kind and the official
`mistralai` client speak it.

    POST /v1/fim/completions   `prompt` (the text before the cursor) and `suffix` (after it): a fill-in-the-middle
                               completion with the repository's context, built as OpenAI's `/v1/completions` with a
                               `suffix` builds it (Session.infill: token healing, CRLF text, the prompt budget); no
                               `suffix`, or null, is a cursor at the end of the text (Zed leaves it out there, Tabby
                               sends null). `/fim/completions` too: Continue joins "fim/completions" to its apiBase,
                               which may lack the /v1.

The request (the `mistralai` SDK's FIMCompletionRequest, mistral-common's FIMRequest and BaseCompletionRequest):
`model` (any name: the one model answers, under its own name, as on the OpenAI routes), `prompt` (required),
`suffix`, `temperature` (0..2; Mistral's default 0.7), `top_p` (0..1, 1), `max_tokens` (0 or more; none: the
server's --max-tokens, as on every route), `stream`, `stop` (a string or a list of them), `random_seed` (0 up to
2**64 - 1: Tabby sends a u64), `min_tokens` (0 or null only: the engine has no minimum length, and text that ended
sooner would pass for what was asked: a 400, as the other routes refuse the samplers they lack), `metadata` and
`prompt_cache_key` (accepted and ignored: they change no answer). Continue's body also carries `presence_penalty`
and `frequency_penalty` where its config sets them (-2..2), which apply as on the OpenAI routes, over the answer's
tokens. Fields Mistral does not define are ignored, as on every route here, where Mistral's API refuses them (422
"Extra inputs are not permitted").

The answer: {"id": hex, "object": "chat.completion", "created", "model", "choices": [{"index": 0, "message":
{"role": "assistant", "content": text, "tool_calls": null}, "finish_reason": "stop" | "length"}], "usage":
{"prompt_tokens", "completion_tokens", "total_tokens"}}; Zed and minuet read `choices[0].message.content`, Zed's
serde every one of these fields. A stream is `data: {...}` chunks of "chat.completion.chunk": the first with
`delta: {"role": "assistant", "content": ""}`, then `delta: {"content": text}`, the last with `delta: {"content":
""}`, its `finish_reason` and `usage`, then `data: [DONE]`. Every chunk has one choice whose delta has a string
`content`: Continue reads `chunk.choices[0].delta.content` of every chunk (a chunk without choices throws there),
Tabby's serde needs `content` in each and stops at the first `finish_reason` (it would fail to parse [DONE]).

Errors are Mistral's shape, `{"object": "error", "message", "type", "param": null, "code": null}` (errors.py):
422 for a body that is not a valid request (not JSON, a field missing, of the wrong type or out of range), as
Mistral's API answers it (the SDK raises HTTPValidationError for a 422), 400 for one this server cannot serve, 401
for a missing or wrong key with --api-key (the clients send `Authorization: Bearer KEY`), 503 when busy; an error
in the middle of a stream is one such `data:` event.
"""
from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import Field

from .bodies import Body, parse, read_object, stop_strings
from .errors import ApiError, mistral_body
from .openai_api import FINISH, usage
from .streaming import json_response, sse, stream

router = APIRouter()
DEFAULT_TEMPERATURE = 0.7           # mistral-common's BaseCompletionRequest (the SDK leaves it to the model's default)


class FimRequest(Body):
    model: str | None = None
    prompt: str
    suffix: str | None = None
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, le=2)
    top_p: float = Field(1.0, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=0)
    min_tokens: int | None = Field(None, ge=0)
    stream: bool = False
    stop: str | list[str] | None = None
    random_seed: Annotated[int, Field(ge=0, le=2**64 - 1)] | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)       # Continue's, where its config sets them
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    metadata: dict | None = None
    prompt_cache_key: str | None = None


@router.post("/v1/fim/completions")
@router.post("/fim/completions")
async def fim_completions(request: Request):
    server = request.app.state.server
    body = await _read(request)
    if body.min_tokens:
        raise ApiError(400, f"min_tokens {body.min_tokens} is not supported (only 0): this server has no minimum "
                            "length, and a shorter text would pass for what was asked")
    sampling = server.sampling(body.max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.random_seed,
                               stop=stop_strings(body.stop), presence_penalty=body.presence_penalty,
                               frequency_penalty=body.frequency_penalty, penalty_last_n=-1, penalize_prompt=False)
    suffix = body.suffix or ""
    running = server.start(request, lambda: server.session.infill(body.prompt, suffix, sampling=sampling,
                                                                  budget=server.budget(sampling)))
    await running.started()         # (a failure to build the prompt is a plain HTTP error, not a broken stream)
    head = {"id": uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
            "model": server.engine.name}
    if not body.stream:
        result = await running.result()
        message = {"role": "assistant", "content": result.text, "tool_calls": None}
        choice = {"index": 0, "message": message, "finish_reason": FINISH[result.finish_reason]}
        return json_response({**head, "choices": [choice], "usage": usage(result)})

    head["object"] = "chat.completion.chunk"

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        return sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra})

    def frames(event) -> list[str]:
        if event.kind == "text":
            return [chunk({"content": event.value})]
        if event.kind == "error":
            return [sse(mistral_body(event.value))]
        result = event.value
        return [chunk({"content": ""}, FINISH[result.finish_reason], usage=usage(result)), "data: [DONE]\n\n"]
    return stream(running, frames, "text/event-stream", first=chunk({"role": "assistant", "content": ""}))


async def _read(request: Request) -> FimRequest:
    """The body as a FimRequest; a body that is none (not JSON, a field missing or wrong) is Mistral's 422."""
    try:
        return parse(await read_object(request), FimRequest)
    except ApiError as exc:
        if exc.status != 400:           # (413, 415: the body's size and encoding keep their statuses)
            raise
        raise ApiError(422, exc.message) from None
