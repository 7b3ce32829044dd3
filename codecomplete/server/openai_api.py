"""The OpenAI API, as the openai client, Continue (provider "openai") and most tools speak it.

    POST /v1/completions        `prompt` continued as it is: special-token text becomes those tokens (Continue
                                writes FIM templates itself); with `suffix`, a fill-in-the-middle completion with the
                                repository's context, in the model's own format (a body with Tabby's `segments`
                                is Tabby's: tabby.py; app.py routes the path by the body)
    POST /v1/chat/completions   chat over the repository: context retrieved for the last user message
    POST /apply-template        llama.cpp's: the prompt the chat route would feed for `messages`, as text, nothing generated
    GET  /v1/models             the one model (GET /v1/models/{id}: it, or a 404 for another id)

Streams are `data: {...}` events ending with `data: [DONE]`, usage in a last chunk when
`stream_options.include_usage` asks (and always in a non-streamed answer; `stream_options` without `stream: true` is
vLLM's 400). A chat's `max_tokens` or `max_completion_tokens` of 0 is OpenAI's 400; llama.cpp's `n_predict: 0` (llama.vim's
warm-up) reads the prompt into the cache and answers no text. One choice per request: `n`, `best_of`
and `echo` are refused with 400. Token log-probabilities (logprobs.py: the model's own distribution, before the
logit bias and the samplers, as vLLM reports it): completions' `logprobs: N` (0..5), chat's `logprobs: true` with
`top_logprobs` (0..20), in each streamed chunk for its tokens; a request that asks decodes one token a step
(no speculation), and the top N come to the host with each token; one that does not pays nothing. `presence_penalty` and `frequency_penalty` (-2..2) apply as OpenAI defines
them, over the tokens generated so far (models/penalties.py). The other servers' extras the openai client sends
through `extra_body`: `top_k`; `min_p` (0..1, after temperature as vLLM applies it; default 0, or llama.cpp's 0.05
with `samplers`); vLLM's `repetition_penalty`, over the whole prompt and answer as vLLM applies it; llama.cpp's
`repeat_penalty` over the last `repeat_last_n` tokens of them (64), and its `samplers` chain (its samplers this
server lacks, typical_p and the like, are refused with 400 unless neutral: samplers.py). `logit_bias` ({"token
id": -100..100}) is added to the logits before every sampler (logit_bias.py; a bad one is a 400).
llama.cpp's `n_cache_reuse` and `cache_prompt` are read as on its own routes (samplers.PromptCacheFields).
A conversation ending with the assistant's message goes on with that answer (llama.cpp's assistant prefill).
Text only: tools (`functions` too) unless `tool_choice` is "none", tool messages and an assistant's
`tool_calls` in the history, a `response_format` other than text,
llama.cpp's `grammar` and `json_schema`, an audio answer and content parts other than text are refused with 400, as
prose back would pass for what was asked.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import AliasChoices, Field
from starlette.responses import StreamingResponse

from ..session import Sampling
from . import logit_bias, samplers
from .logprobs import after_healing, chat_logprobs, completion_logprobs
from .errors import ApiError, api_error
from .bodies import Body, Seed, check_ids, parse, read_object, stop_strings
from .streaming import json_response, sse, stream

router = APIRouter()
# Why a chat with tools is refused: llama.cpp (with --jinja, its default now) writes tools into the prompt and constrains
# the answer to its JSON by a grammar, which this server lacks; without it llama.cpp refuses tools too ("tools param
# requires --jinja flag"). A text answer in place of tool calls would end an agent's loop (llama.vscode's askAgent
# takes an answer without tool_calls as its last) as if the task were done.
NO_TOOLS = "this server answers in text and makes no tool calls (README: codecomplete serve)"
FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}
MAX_LOGPROBS, MAX_TOP_LOGPROBS = 5, 20       # OpenAI's limits: completions' logprobs, chat's top_logprobs


class StreamOptions(Body):
    include_usage: bool = False


class Options(samplers.UnimplementedSamplerFields, samplers.AdaptiveSamplerFields,   # (llama.cpp's extras:
              samplers.PromptCacheFields):                                         # typical_p, n_cache_reuse, ...)
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)       # vLLM's (0, 1]: 0 is a 400 there, not greedy
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict | None = None              # {"token id": -100..100} (logit_bias.py)
    top_k: int = Field(0, ge=-1)                # vLLM's and llama.cpp's extra (0 or -1: every token; below: vLLM's 400)
    min_p: float | None = Field(None, ge=0, le=1)   # vLLM's and llama.cpp's extra; None: vLLM's 0, or llama.cpp's
                                                    # 0.05 where the request gives llama.cpp's `samplers`
    repetition_penalty: float | None = Field(None, gt=0)   # vLLM's: over the whole prompt and answer
    repeat_penalty: float | None = Field(None, gt=0)       # llama.cpp's: over the last repeat_last_n of them
    repeat_last_n: int = Field(64, ge=-1)
    samplers: list[str] | str | None = None     # llama.cpp's chain (samplers.py)
    grammar: str = ""                           # llama.cpp's extras on its OpenAI routes
    json_schema: dict | bool | None = None


class CompletionRequest(Options):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    best_of: int | None = None
    logprobs: int | None = None


class TextPart(Body):
    type: Literal["text"]
    text: str


class Message(Body):
    # "developer": newer clients' name for system; "tool" and "function" (the older API's) carry a tool's result, and
    # an assistant's `tool_calls` (`function_call`) its calls: read only to be refused by name (NO_TOOLS)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    tool_calls: list | None = None
    function_call: dict | None = None


class ChatRequest(Options):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0, validation_alias=AliasChoices(
        "max_completion_tokens", "max_tokens", "n_predict"))
    tools: list | None = None
    functions: list | None = None                 # the older API's tools
    tool_choice: str | dict | None = None
    function_call: str | dict | None = None       # the older API's tool_choice
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: dict | None = None
    modalities: list[str] | None = None
    audio: dict | None = None                       # a spoken answer's voice and format


# (HEAD too: llama.cpp's HTTP library answers HEAD with each GET route, a body left out)
@router.api_route("/v1/models", methods=["GET", "HEAD"])
@router.api_route("/models", methods=["GET", "HEAD"])
async def models(request: Request):
    return json_response({"object": "list", "data": [_model(request.app.state.server.engine)]})


@router.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"])
@router.api_route("/models/{model_id:path}", methods=["GET", "HEAD"])
async def model(request: Request, model_id: str):
    """The openai package's `models.retrieve`: the one model by its id (model ids may hold slashes)."""
    engine = request.app.state.server.engine
    if model_id != engine.name:
        raise ApiError(404, f"model {model_id!r} does not exist (this server runs {engine.name!r})")
    return json_response(_model(engine))


def _model(engine) -> dict:
    config = engine.model.config
    return {"id": engine.name, "object": "model", "created": 0, "owned_by": "codecomplete",
            "meta": {"n_vocab": config.vocab_size, "n_ctx_train": engine.model_max_positions, "n_embd": config.dim,
                     "n_ctx": engine.context_length}}


async def completions(request: Request, data: dict):
    """POST /v1/completions with a body that is not Tabby's (app.py's `completions` reads it and decides)."""
    server = request.app.state.server
    body = parse(data, CompletionRequest)
    if body.echo or (body.best_of or 1) > 1:
        raise ApiError(400, "echo and best_of are not supported")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
        raise ApiError(400, f"logprobs must lie in 0..{MAX_LOGPROBS}, got {body.logprobs}")
    prompt = _one_prompt(body.prompt)
    sampling = replace(_sampling(server, body), logprobs=body.logprobs)
    session = server.session
    if body.suffix is not None:
        if not isinstance(prompt, str):
            raise ApiError(400, "a suffix goes with a text prompt")
        start = lambda: session.infill(prompt, body.suffix, sampling=sampling, budget=server.budget(sampling))  # noqa: E731
    else:
        check_ids(server.engine, prompt)
        start = lambda: session.raw(prompt, sampling=sampling)  # noqa: E731
    running = server.start(request, start)
    generation = await running.started()        # (a failure to build the prompt is a plain HTTP error)
    # (texts and offsets as the text returned has them, whose line ends may not be the model's: line_ends.py)
    scores = ((lambda ids, entries: completion_logprobs(server.tokenizer, ids, entries, generation.line_ends))
              if body.logprobs is not None else None)
    reply = Reply(server, "cmpl", "text_completion", running.job.id)
    if body.stream:
        sent = 0        # tokens whose logprobs went out

        def frames(event):
            nonlocal sent
            if event.kind == "text":
                sent += len(event.tokens)
                logprobs = scores(event.tokens, event.logprobs) if scores else None
                return [sse(reply.chunk({"text": event.value, "index": 0, "logprobs": logprobs,
                                         "finish_reason": None}))]
            if event.kind == "error":
                return [sse(event.value.body())]
            result = event.value
            logprobs = after_healing(scores, result, sent)     # the tokens no text came with (the end of text)
            last = {"text": "", "index": 0, "logprobs": logprobs, "finish_reason": FINISH[result.finish_reason]}
            return reply.ending(last, result, body.stream_options)
        return stream(running, frames, "text/event-stream")
    result = await running.result()
    logprobs = after_healing(scores, result)
    choice = {"text": result.text, "index": 0, "logprobs": logprobs, "finish_reason": FINISH[result.finish_reason]}
    return json_response({**reply.head(), "choices": [choice], "usage": usage(result)})


@router.post("/v1/chat/completions")
@router.post("/chat/completions")
async def chat_completions(request: Request):
    server = request.app.state.server
    body, messages, sampling = _chat_request(server, await read_object(request))
    top_n = sampling.logprobs
    scores = (lambda ids, entries: chat_logprobs(server.tokenizer, ids, entries, top_n)) if body.logprobs else None
    reply = Reply(server, "chatcmpl", "chat.completion", "0")
    if messages[-1]["role"] != "user" and sampling.max_tokens == 0:    # a warm-up without a question (llama.vim)
        return _nothing_to_say(reply, body)
    budget, room = server.budget(sampling), server.room(sampling)
    running = server.start(request, lambda: server.session.chat(messages, sampling=sampling, budget=budget,
                                                                room=room))
    await running.started()
    reply.id = f"chatcmpl-{running.job.id}"
    if body.stream:
        reply.object = "chat.completion.chunk"
        opening = sse(reply.chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}))

        sent = 0        # tokens whose logprobs went out

        def frames(event):
            nonlocal sent
            if event.kind == "text":
                sent += len(event.tokens)
                logprobs = {"logprobs": scores(event.tokens, event.logprobs)} if scores else {}
                return [sse(reply.chunk({"index": 0, "delta": {"content": event.value}, **logprobs,
                                         "finish_reason": None}))]
            if event.kind == "error":
                return [sse(event.value.body())]
            result = event.value
            logprobs = {"logprobs": after_healing(scores, result, sent)} if scores else {}   # (the end of text)
            return reply.ending({"index": 0, "delta": {}, **logprobs, "finish_reason": FINISH[result.finish_reason]},
                                result, body.stream_options)
        return stream(running, frames, "text/event-stream", first=opening)
    result = await running.result()
    logprobs = after_healing(scores, result)
    choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": logprobs,
              "finish_reason": FINISH[result.finish_reason]}
    return json_response({**reply.head(), "choices": [choice], "usage": usage(result)})


def _chat_request(server, data: dict) -> tuple[ChatRequest, list[dict], Sampling]:
    """A chat body checked as the chat routes read it (/apply-template's too): the request, its messages as the
    prompt takes them, and its sampling."""
    if not isinstance(data.get("messages"), list):      # (llama.cpp's words, on its chat route and /apply-template)
        raise ApiError(400, "'messages' is required" if "messages" not in data else "Expected 'messages' to be an array")
    body = parse(data, ChatRequest)
    _at_least_one_token(data)
    # (tools a client forbids calling, `tool_choice: "none"`, ask for a text answer: llama.cpp answers so too)
    if (body.tools and body.tool_choice != "none") or (body.functions and body.function_call != "none"):
        raise ApiError(400, f"tools are not supported: {NO_TOOLS}")
    for name, choice in (("tool_choice", body.tool_choice), ("function_call", body.function_call)):
        if choice not in (None, "none", "auto"):     # it demands a call: prose back would pass for one
            raise ApiError(400, f"{name} {choice!r} is not supported (no tools: only 'none' or 'auto')")
    if body.response_format and body.response_format.get("type", "text") != "text":
        # no grammar-constrained decoding: prose back where a client asked for JSON would pass for an answer
        raise ApiError(400, f"response_format {body.response_format.get('type')!r} is not supported (only 'text')")
    if body.top_logprobs is not None and not (body.logprobs and 0 <= body.top_logprobs <= MAX_TOP_LOGPROBS):
        raise ApiError(400, f"top_logprobs must lie in 0..{MAX_TOP_LOGPROBS}, with logprobs: true")
    if body.audio or set(body.modalities or []) - {"text"}:      # a client that asked for audio reads message.audio
        raise ApiError(400, f"modalities {body.modalities or ['audio']} are not supported (only ['text'])")
    for i, m in enumerate(body.messages):
        if m.role in ("tool", "function"):
            raise ApiError(400, f"messages[{i}]: a {m.role} message (a tool's result) is not supported: {NO_TOOLS}")
        if m.tool_calls or m.function_call:     # (read as an empty turn, the calls were silently dropped)
            name = "tool_calls" if m.tool_calls else "function_call"
            raise ApiError(400, f"messages[{i}].{name}: an assistant's tool calls are not supported: {NO_TOOLS}")
        if m.content is None and m.role != "assistant":     # (an assistant's may be null: it made tool calls)
            raise ApiError(400, f"messages[{i}].content: a {m.role} message needs content")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
                for m in body.messages]
    top_n = (body.top_logprobs or 0) if body.logprobs else None
    return body, messages, replace(_sampling(server, body), logprobs=top_n)


@router.post("/apply-template")
async def apply_template(request: Request):
    """llama.cpp's: the prompt /v1/chat/completions would feed for these messages, the generation prompt appended, as
    text, and nothing generated (`{"prompt": ...}`; llama.vscode counts a chat's tokens with it and /tokenize). The
    chat route's code builds it (the repository's context for the last user message included: the model reads it),
    beside the engine thread rather than on it (`Session.chat_prompt`), as llama.cpp answers it on its HTTP thread:
    queued as a job, it waited for a generation under way to end."""
    server = request.app.state.server
    _, messages, sampling = _chat_request(server, await read_object(request))
    budget, room = server.budget(sampling), server.room(sampling)

    def prompt_text(tokenizer) -> str:
        return tokenizer.decode(server.session.chat_prompt(messages, tokenizer, budget=budget, room=room).ids)
    try:
        prompt = await server.with_tokenizer(prompt_text)
    except Exception as exc:        # (as a job's failure reaches its request: a conversation refused is a 400)
        raise api_error(exc) from None
    return json_response({"prompt": prompt})


def _at_least_one_token(data: dict) -> None:
    """OpenAI's limits, `max_tokens` and `max_completion_tokens`, are at least 1 there (and in vLLM): 0 is its 400, not
    an empty answer that a client whose budget was computed down to 0 would show as the model's. A prompt read into
    the cache with no answer is llama.cpp's `n_predict: 0`, which llama.vim's instruct warm-up sends."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = data.get(name)
        if type(value) in (int, float) and value == 0:      # (a negative one is already a 400: the field's bound)
            raise ApiError(400, f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got 0 "
                                f"instead (n_predict: 0 reads the prompt into the cache and answers no text)")


def _nothing_to_say(reply: Reply, body: ChatRequest):
    """The answer to a warm-up with no question: no text, ended by its limit of 0 tokens, in the shape the request
    asked for (a client that asked for a stream parses SSE: a JSON body gave the openai package no events)."""
    nothing = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not body.stream:
        choice = {"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": "length"}
        return json_response({**reply.head(), "choices": [choice], "usage": nothing})
    reply.object = "chat.completion.chunk"
    frames = [sse(reply.chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})),
              sse(reply.chunk({"index": 0, "delta": {}, "finish_reason": "length"}))]
    if body.stream_options is not None and body.stream_options.include_usage:
        frames.append(sse({**reply.head(), "choices": [], "usage": nothing}))
    return StreamingResponse(iter([*frames, "data: [DONE]\n\n"]), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


class Reply:
    """The fields every answer (or chunk) of one request repeats."""

    def __init__(self, server, prefix: str, object: str, job_id: str) -> None:
        self.id, self.object = f"{prefix}-{job_id}", object
        self.model, self.created = server.engine.name, int(time.time())

    def head(self) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model}

    def chunk(self, choice: dict) -> dict:
        return {**self.head(), "choices": [choice]}

    def ending(self, last: dict, result, options: StreamOptions | None) -> list[str]:
        frames = [sse(self.chunk(last))]
        if options is not None and options.include_usage:
            frames.append(sse({**self.head(), "choices": [], "usage": usage(result)}))
        return frames + ["data: [DONE]\n\n"]


def usage(result) -> dict:
    prompt, completion = result.token_counts()
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": result.reused_prefix_tokens}}


def _one_prompt(prompt):
    """One prompt: a string or token ids; a list of them must hold exactly one."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise ApiError(400, f"one prompt per request, got {len(prompt)}")
        return prompt[0]
    return prompt


def _text(content) -> str:
    """A message's text: its text parts one per line, as llama.cpp joins them (common/chat.cpp). Run together, a
    part's last line ran into the next part's first (an excerpt of code into the question after it)."""
    if content is None:
        return ""
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


def _sampling(server, body: Options):
    if body.n > 1:
        raise ApiError(400, "n > 1 is not supported: one choice per request")
    if body.stream_options is not None and not body.stream:   # (its usage goes in a stream's last chunk: vLLM's 400)
        raise ApiError(400, "stream_options can only be given with stream: true")
    if body.grammar or body.json_schema is not None:
        # text that ignored them would pass for what was asked (JSON)
        raise ApiError(400, "grammar and json_schema are not supported")
    bias = logit_bias.openai(body.logit_bias, server.engine.model.config.vocab_size) if body.logit_bias else ()
    if body.repetition_penalty is not None and body.repeat_penalty is not None:
        raise ApiError(400, "repetition_penalty (vLLM's) and repeat_penalty (llama.cpp's) are one penalty: give one")
    repeat, window = ((body.repetition_penalty, -1) if body.repetition_penalty is not None
                      else (body.repeat_penalty or 1.0, body.repeat_last_n))
    # OpenAI counts "how often the token was sampled prior to the current position": the answer's tokens, all of them
    penalties = dict(presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                     penalty_last_n=-1, penalize_prompt=False, repeat_penalty=repeat, repeat_window=window)
    top_k = max(body.top_k, 0)
    # llama.cpp's extras are its chain's: without `samplers` its default chain would run them
    chain = samplers.chain(body.samplers)
    samplers.refuse_unsupported(chain, body)
    if body.samplers is None:       # vLLM's chain: penalties, temperature, min_p, top_k, top_p (its ties kept)
        options = {"temperature": body.temperature, "top_k": top_k, "top_p": body.top_p,
                   "min_p": body.min_p or 0.0, "min_keep": body.min_keep, **penalties}
    else:
        min_p = samplers.LLAMA_CPP_MIN_P if body.min_p is None else body.min_p
        options = samplers.applied(chain, body.temperature, top_k, body.top_p, min_p, body.min_keep, **penalties)
    options.update(samplers.adaptive(chain, body, body.temperature))     # (llama.cpp's mirostat, dynatemp)
    return server.sampling(body.max_tokens, seed=body.seed, stop=stop_strings(body.stop), logit_bias=bias, **options,
                           **body.cache_reuse())
