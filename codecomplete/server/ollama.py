"""The part of Ollama's API that editor plugins use.

    POST /api/generate   `prompt` continued (with `suffix`: a fill-in-the-middle completion with the repository's
                         context, in the model's own format; with "raw": true the prompt as it is, suffix ignored,
                         as Ollama applies no template then, and a template, system text or context refused as
                         Ollama refuses them); streamed as JSON lines unless "stream": false. A
                         prompt (with a suffix too) comes after the text of `context` (an earlier answer's), and its
                         answer ends with its own `context` (the tokens of both), as Ollama keeps a conversation on
                         this route; a request's `template` made only of {{ .Prompt }}, {{ .Suffix }} and
                         {{ .System }} is the prompt, as it is (any other is a 400); a prompt longer than the
                         context keeps its end, as Ollama's runner cuts it ("truncate": false: a 400)
    POST /api/chat       chat over the repository, as /v1/chat/completions; without messages, Ollama's preload
    GET  /api/tags       the one model (HEAD too, as /api/version and /, as Ollama's router answers them)
    POST /api/show       its details; the template mentions .Suffix, which is how Continue decides that a model
                         can fill in the middle
    GET  /api/ps         the one model, loaded for good (as Ollama lists one whose keep_alive is forever): its
                         memory and context (`ollama ps`, the client's ps())
    GET  /api/version    {"version": ...}, which clients ask to tell that an Ollama server answers
    GET  /               "Ollama is running" (HEAD too), without an API key, as Ollama's own liveness check

The one model answers to any name, and under the name the request gave, as Ollama answers (`model: req.Model`).
Errors come as Ollama writes them, `{"error": "message"}`, since its clients read that shape. What this server
cannot do is a 400, not ignored: images, `format` (no constrained decoding), tools, `think` (in Ollama's words for a
model without reasoning).
Durations are in nanoseconds, as Ollama's are. `logprobs: true` (with `top_logprobs` 0..20, else Ollama's 400) answers
each token's log-probability under the model and the top_logprobs likeliest alternatives' (logprobs.py), in each
streamed line for the tokens behind its text, and in the whole answer for all of those.
"""
from __future__ import annotations

import datetime
import re
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import AfterValidator, Field

from .bodies import Body, Seed, check_ids, read_json, stop_strings
from .errors import OLLAMA_PREFIX, ApiError
from .logprobs import ollama_logprobs
from .samplers import unit
from .streaming import json_response, ndjson, stream

PREFIX = OLLAMA_PREFIX
router = APIRouter(prefix="/api")
public = APIRouter()
OLLAMA_ORDER = ("penalties", "top_k", "temperature", "top_p", "min_p")    # Ollama's sampler (sample/samplers.go)
MAX_TOP_LOGPROBS = 20        # Ollama's bound (server/routes.go)
FOREVER_NS = 2 ** 63 - 1     # a negative keep_alive's duration for Ollama (api.Duration): its model never expires
TEMPLATE = "{{- if .Suffix }}<prefix>{{ .Prompt }}<suffix>{{ .Suffix }}<middle>{{- else }}{{ .Prompt }}{{- end }}"


# Go's time.ParseDuration, which Ollama's api.Duration applies to a string keep_alive ("5m", "1h30m", "-1s", "0"); a
# number in a string is taken as seconds, as a JSON number is
_GO_DURATION = re.compile(r"[+-]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)")


def _duration(value: float | str | None) -> float | str | None:
    """A keep_alive as Ollama reads it: a duration string that does not parse is its 400 (Go's own words)."""
    if isinstance(value, str) and not _GO_DURATION.fullmatch(value):
        try:
            float(value)
        except ValueError:
            raise ValueError(f'time: invalid duration "{value}"') from None
    return value


KeepAlive = Annotated[float | str | None, AfterValidator(_duration)]


class Options(Body):
    temperature: float = 0.8                  # any number, clamped as Ollama's NewSampler does: < 0 is 0 (greedy),
    top_p: float = 0.9                        # top_p and min_p within 0..1
    top_k: int = 40
    min_p: float = 0.0                        # after top_p, as Ollama's sampler (sample/samplers.go)
    typical_p: float = 1.0                    # not implemented: refused unless 1 (Ollama's llama.cpp runner applied it)
    num_predict: int = Field(-1, ge=-2)       # -1: the server's limit (-2, "fill the context", and 0 too)
    # Penalties over the last repeat_last_n tokens of prompt + answer, as Ollama's llama.cpp runner applies them.
    # Ollama's own default repeat_penalty is 1.1; here 1.0 (off), so a request that sets none keeps the plain output.
    repeat_penalty: float = Field(1.0, gt=0)
    repeat_last_n: int = Field(64, ge=-1)     # -1: the context's size, 0: no penalties
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: str | list[str] | None = None
    seed: Seed | None = None
    # llama.cpp's mirostat in place of the chain, as Ollama's llama.cpp runner ran it through 0.6.8 (samplers.py)
    mirostat: int = Field(0, ge=0, le=2)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1


class GenerateRequest(Body):
    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""                          # the request's own prompt template, in place of the model's
    stream: bool = True
    keep_alive: KeepAlive = None                # seconds, or a duration ("5m"); 0: unload after the request
    raw: bool = False
    truncate: bool = True                       # a prompt longer than the context keeps its end (false: a 400)
    context: list[int] | None = None            # an earlier answer's `context`: its text goes before the prompt
    images: list[str] | None = None
    format: str | dict | None = None
    think: bool | str | None = None             # true, or a level ("high"): the model's reasoning apart
    logprobs: bool = False                      # each token's log-probability, and the top_logprobs likeliest
    top_logprobs: int = 0
    options: Options = Options()


class Message(Body):
    # "developer": OpenAI's newer name for system, which clients send here too (avante.nvim's Ollama provider for a
    # model named as a reasoning one): the system message, as /v1/chat/completions reads it (Ollama passes any role
    # to the model's template, where one it does not name is dropped: the instructions lost, no error)
    role: Literal["system", "developer", "user", "assistant", "tool"]   # "tool": a tool's result, read to be refused
    content: str = ""                           # (Go's decoder reads a missing string as "")
    images: list[str] | None = None
    tool_calls: list | None = None              # an assistant's calls: read only to be refused (dropped, the turn
                                                # read as text only, a client's agent loop would go on as if done)


class ChatRequest(Body):
    model: str = ""
    messages: list[Message] = []                # none: only load the model (Ollama's documented preload)
    stream: bool = True
    keep_alive: KeepAlive = None
    format: str | dict | None = None
    tools: list | None = None
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    options: Options = Options()


class ShowRequest(Body):
    model: str = ""
    name: str = ""


@public.api_route("/", methods=["GET", "HEAD"])
async def running():
    return PlainTextResponse("Ollama is running")


@router.api_route("/tags", methods=["GET", "HEAD"])     # (HEAD too, as Ollama's router answers it)
async def tags(request: Request):
    return json_response({"models": [_model(request.app.state.server)]})


@router.get("/ps")
async def ps(request: Request):
    server = request.app.state.server
    engine = server.engine
    # bytes of every tensor the model holds, weights and KV cache (its buffers), as Ollama counts a loaded model's
    size = sum(t.numel() * t.element_size() for t in (*engine.model.parameters(), *engine.model.buffers()))
    never = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(microseconds=FOREVER_NS // 1000)
    listed = {key: value for key, value in _model(server).items() if key != "modified_at"}
    return json_response({"models": [{
        **listed, "expires_at": never.isoformat(), "size": size,
        "size_vram": size if engine.device == "cuda" else 0, "context_length": engine.context_length}]})


@router.api_route("/version", methods=["GET", "HEAD"])
async def version(request: Request):
    number = request.app.state.server.info.get("version", "")
    # clients compare it as a version number: an uninstalled checkout's "(not installed)" would break them
    return json_response({"version": number if re.fullmatch(r"\d+(\.\d+)*\S*", number) else "0.0.0"})


@router.post("/show")
async def show(request: Request):
    server = request.app.state.server
    await read_json(request, ShowRequest)         # any name: there is one model
    context = server.engine.context_length
    return json_response({
        "modelfile": "", "parameters": f"num_ctx {context}", "template": TEMPLATE,
        "details": _model(server)["details"], "capabilities": ["completion", "insert"],
        "model_info": {"general.architecture": "llama", "llama.context_length": context}})


@router.post("/generate")
async def generate(request: Request):
    server = request.app.state.server
    body = await read_json(request, GenerateRequest)
    if body.images:
        raise ApiError(400, "images are not supported")
    _check_format(body.format)
    _check_extras(server, body)
    if body.raw and (body.template or body.system or body.context):   # Ollama's 400: a raw prompt is the whole prompt
        raise ApiError(400, "raw mode does not support template, system, or context")
    sampling = _sampling(server, body.options, _logprobs(body))
    session = server.session
    # The answer's `context`: a completion's has nothing to go on from, a raw prompt's is left out (as Ollama does)
    context = lambda generation, result: []  # noqa: E731
    # As Ollama: the text of an earlier answer's `context` goes before the templated prompt (a fill-in-the-middle one
    # too); a raw prompt is the whole prompt, the suffix left out (a template, system text or context refused above).
    if body.context:
        check_ids(server.engine, body.context)
    earlier = body.context or []                        # (decoded on the engine thread, whose tokenizer it is)
    before = lambda: session.engine.tokenizer.decode(earlier) if earlier else ""  # noqa: E731
    own = _template(body.template) if body.template not in ("", TEMPLATE) else None
    if own is not None and (body.prompt or body.suffix or body.system):
        text = own(prompt=body.prompt, suffix=body.suffix, system=body.system)
        if not text and not earlier:
            raise ApiError(400, "the template made an empty prompt")
        start = lambda: _raw(session, before() + text, sampling, body.truncate)  # noqa: E731
        context = lambda generation, result: _context(server.tokenizer, generation, result,  # noqa: E731
                                                      server.engine.eos_token_ids)
    elif body.suffix and not body.raw:
        start = lambda: session.infill(before() + body.prompt, body.suffix, sampling=sampling,  # noqa: E731
                                       budget=server.budget(sampling))
    elif body.prompt and body.raw:
        start = lambda: _raw(session, body.prompt, sampling, body.truncate)  # noqa: E731
        context = None
    elif body.prompt:
        start = lambda: _raw(session, before() + body.prompt, sampling, body.truncate)  # noqa: E731
        context = lambda generation, result: _context(server.tokenizer, generation, result,  # noqa: E731
                                                      server.engine.eos_token_ids)
    else:     # Ollama loads the model and answers at once
        return _loaded(server, body, {"response": ""})
    return await _answer(server, server.start(request, start), body, lambda text: {"response": text}, context)


@router.post("/chat")
async def chat(request: Request):
    server = request.app.state.server
    body = await read_json(request, ChatRequest)
    if any(m.images for m in body.messages):
        raise ApiError(400, "images are not supported")
    if body.tools:
        raise ApiError(400, "tools are not supported")
    for i, m in enumerate(body.messages):
        if m.role == "tool" or m.tool_calls:
            what = "a tool message (a tool's result)" if m.role == "tool" else "an assistant's tool_calls"
            raise ApiError(400, f"messages[{i}]: {what} is not supported: tools are not supported")
    _check_format(body.format)
    _check_extras(server, body)
    if not body.messages:
        return _loaded(server, body, {"message": {"role": "assistant", "content": ""}})
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages]
    sampling = _sampling(server, body.options, _logprobs(body))
    budget, room = server.budget(sampling), server.room(sampling)
    running = server.start(request, lambda: server.session.chat(messages, sampling=sampling, budget=budget,
                                                                room=room))
    return await _answer(server, running, body, lambda text: {"message": {"role": "assistant", "content": text}})


def _raw(session, text: str, sampling, truncate: bool):
    """session.raw, on the engine thread; a prompt longer than the context keeps its last tokens when `truncate`, as
    Ollama's runner cuts an input longer than its context (unless "truncate": false, its 400), leaving room for the
    answer here: a 400 for what Ollama answers stopped its editor's completion."""
    from models import ContextTooLongError

    try:
        return session.raw(text, sampling=sampling)
    except ContextTooLongError:
        if not truncate:
            raise
    engine = session.engine
    room = max(engine.context_length - sampling.max_tokens, engine.context_length // 2)
    return session.raw(text, sampling=sampling, last_tokens=room)      # (answered with the text's line ends)


def _loaded(server, body: GenerateRequest | ChatRequest, piece: dict):
    """The answer to a request with nothing to generate: the model is loaded (it always is), or with keep_alive 0
    "unloaded", as Ollama says (it stays loaded here)."""
    unload = body.keep_alive == 0 or (isinstance(body.keep_alive, str)
                                      and re.fullmatch(r"[+-]?0+(\.0*)?(ns|us|µs|ms|s|m|h)?", body.keep_alive))
    return json_response({**_head(server, body), **piece, "done": True, "done_reason": "unload" if unload else "load"})


async def _answer(server, running, body: GenerateRequest | ChatRequest, piece, context=None):
    """The answer, streamed or whole; `context(generation, result)`: its final `context` (/api/generate's only)."""
    generation = await running.started()

    def done(result) -> dict:
        fields = _done(result, time.perf_counter() - running.job.submitted)
        return {**fields, **({"context": context(generation, result)} if context is not None else {})}

    def logprobs(events) -> dict:
        """The `logprobs` of the tokens behind these text events' text, where asked for (none: left out)."""
        listed = [entry for event in events for entry in ollama_logprobs(
            server.tokenizer, event.tokens, event.logprobs, body.top_logprobs, generation.line_ends)
            ] if body.logprobs else []
        return {"logprobs": listed} if listed else {}
    if body.stream:
        def frames(event):
            if event.kind == "text":
                return [ndjson({**_head(server, body), **piece(event.value), "done": False, **logprobs([event])})]
            if event.kind == "error":
                return [ndjson({"error": event.value.message})]
            return [ndjson({**_head(server, body), **piece(""), **done(event.value)})]
        return stream(running, frames, "application/x-ndjson")
    texts = []
    result = await running.result(on_text=texts.append)
    return json_response({**_head(server, body), **piece(result.text), **done(result), **logprobs(texts)})


def _context(tokenizer, generation, result, eos_ids=()) -> list[int]:
    """The prompt's tokens and the answer's, which a client sends back as `context` to go on (Ollama's older way to
    hold a conversation, which some editor plugins use): the tokens of the prompt and the answer's text, as Ollama's
    are. The BOS the tokenizer adds is left out, as the next prompt has its own, and the end of text that stopped the
    answer too (a base model's EOS in the middle of the next prompt begins another document). `tokenizer`: the event
    loop's (app.Server's), not the engine thread's; `eos_ids`: the engine's, every id that ends a generation."""
    ids = [*generation.prompt.ids, *result.token_ids]
    if result.token_ids and result.token_ids[-1] in {tokenizer.eos_token_id, *eos_ids,
                                                     *generation.prompt.stop_token_ids}:
        ids.pop()
    added = tokenizer.encode("")            # what the tokenizer puts before any text: [BOS] for Llama, [] for SmolLM2
    return ids[len(added):] if ids[:len(added)] == added else ids


def _done(result, total_s: float) -> dict:
    """The final counters; `total_s`: since the request was queued, as Ollama's total_duration counts from the
    request's arrival (the wait behind other requests and building the prompt too, not the model's time alone)."""
    t = result.timings
    prompt, generated = result.token_counts()
    nanoseconds = lambda seconds: int(seconds * 1e9)  # noqa: E731
    return {"done": True, "done_reason": "length" if result.finish_reason == "length" else "stop",
            "total_duration": nanoseconds(total_s), "load_duration": 0,
            # the whole prompt, what the cache held too (Ollama's llm/llama_server.go: cache_n + prompt_n)
            "prompt_eval_count": prompt, "prompt_eval_cached_count": result.reused_prefix_tokens,
            "prompt_eval_duration": nanoseconds(t.prefill_s),
            "eval_count": generated, "eval_duration": nanoseconds(t.decode_s)}


def _head(server, body: GenerateRequest | ChatRequest) -> dict:
    """What every answer (and streamed line) begins with: the model under the name the request gave it, as Ollama
    answers (`model: req.Model`), so that a client's own name for it comes back (the one model answers to any)."""
    return {"model": _asked(server, body), "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}


def _asked(server, body: GenerateRequest | ChatRequest) -> str:
    return body.model or _name(server)


def _name(server) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", server.engine.name.lower()).strip("-") + ":latest"


def _model(server) -> dict:
    engine = server.engine
    parameters = sum(p.numel() for p in engine.model.parameters())
    return {"name": _name(server), "model": _name(server), "modified_at": "1970-01-01T00:00:00Z", "size": 0,
            "digest": "", "details": {"format": engine.checkpoint_format, "family": "llama", "families": ["llama"],
                                      "parameter_size": f"{parameters / 1e6:.0f}M",
                                      # the weights' type, as Ollama's is (not the activations': float32 beside
                                      # bfloat16, int8 or int4 projections)
                                      "quantization_level": engine.matmul_dtype}}


ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
FIELDS = {".Prompt": "prompt", ".Suffix": "suffix", ".System": "system"}


def _template(template: str):
    """A request's template as a function of the prompt, suffix and system text: Go template text whose actions are
    only {{ .Prompt }}, {{ .Suffix }} and {{ .System }} (with "-" trimming the white space beside them, as Go's
    does), the shape of a fill-in-the-middle template a client sends. Anything else is a 400, not the model's own
    template in its place, which made another prompt than the one asked for."""
    parts, fields = [], []
    for i, piece in enumerate(ACTION.split(template)):
        kind = i % 4                                   # text, left trim, action, right trim
        if kind == 0:
            if "{{" in piece:                          # an action left open, as Go's parser refuses it
                raise ApiError(400, f"template: unclosed action in {template!r}")
            parts.append(piece.lstrip() if fields and fields[-1][1] else piece)
        elif kind == 1 and piece:
            parts[-1] = parts[-1].rstrip()
        elif kind == 2:
            if piece not in FIELDS:
                raise ApiError(400, f"template action {{{{ {piece} }}}} is not supported (only {{{{ .Prompt }}}}, "
                                    f"{{{{ .Suffix }}}} and {{{{ .System }}}})")
            fields.append([FIELDS[piece], False])
        elif kind == 3:
            fields[-1][1] = bool(piece)

    def render(**values: str) -> str:
        return parts[0] + "".join(values[name] + text for (name, _), text in zip(fields, parts[1:]))
    return render


def _check_format(format: str | dict | None) -> None:
    """No grammar-constrained decoding: prose back where a client asked for JSON would pass for an answer (as the
    OpenAI routes refuse response_format). `{}` is a schema too (any JSON value, for Ollama); null and "" are no
    format, as Ollama reads them."""
    if format not in (None, ""):
        name = repr(format) if isinstance(format, str) else "with a JSON schema"
        raise ApiError(400, f"format {name} is not supported (only plain text)")


def _check_extras(server, body: GenerateRequest | ChatRequest) -> None:
    """What a model without it is refused, as Ollama refuses it: reasoning (Ollama's words, which clients look for to
    ask again without `think`); and top_logprobs out of Ollama's range, in its words (whether logprobs asks or not)."""
    if body.think:
        raise ApiError(400, f'"{_asked(server, body)}" does not support thinking')
    if not 0 <= body.top_logprobs <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")


def _logprobs(body: GenerateRequest | ChatRequest) -> int | None:
    """The alternatives to report per token (None: no logprobs at all)."""
    return body.top_logprobs if body.logprobs else None


def _sampling(server, options: Options, logprobs: int | None = None):
    if options.typical_p < 1.0 and not options.mirostat:      # (mirostat's chain does not run it)
        raise ApiError(400, "typical_p is not supported (locally typical sampling is not implemented): leave it at 1")
    seed = None if options.seed == -1 else options.seed      # -1: a random seed, Ollama's default (sample/samplers.go)
    # 0 is no limit for Ollama's runner (`numPredict > 0 &&` guards its check), not llama.cpp's "prompt only"
    return server.sampling(options.num_predict or None, temperature=max(options.temperature, 0.0),
                           top_p=unit(options.top_p), top_k=max(options.top_k, 0), min_p=unit(options.min_p),
                           sampler_order=OLLAMA_ORDER, seed=seed,
                           top_k_ties=False, top_p_strict=True,     # its heap keeps k; its top_p stops past p
                           stop=stop_strings(options.stop),
                           repeat_penalty=options.repeat_penalty, presence_penalty=options.presence_penalty,
                           frequency_penalty=options.frequency_penalty, penalty_last_n=options.repeat_last_n,
                           mirostat=options.mirostat, mirostat_tau=options.mirostat_tau,
                           mirostat_eta=options.mirostat_eta, logprobs=logprobs)
