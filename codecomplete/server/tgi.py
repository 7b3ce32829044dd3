"""Hugging Face text-generation-inference's generate API (TGI), as llm-ls (the server behind llm.nvim, llm-vscode and
llm-intellij: its `tgi` backend, and its `huggingface` backend pointed at this server's URL), huggingface_hub's
`InferenceClient.text_generation` and TGI's own `text_generation` client speak it.

    POST /generate          `inputs` continued as it is, with `parameters`: `{"generated_text", "details"?}`
    POST /generate_stream   the same as SSE: one `data:` event per generated token, `{"index", "token": {"id", "text",
                            "logprob", "special"}, "generated_text": null, "details": null}`, the last with the whole
                            `generated_text` (and `details` where asked)
    POST /                  TGI's compat route: a stream where the body says `"stream": true`, else the answer in a
                            list of one (`[{"generated_text"}]`); `return_full_text` true by default there, as TGI has
                            it for a text-generation model (InferenceClient(base_url=URL) posts here)
    POST /models/{id}       the Inference API's path, which llm-ls's `huggingface` backend posts to (`{url}/models/
                            {model}`): the compat route, any model name (the one model answers)
    GET  /info              `model_id`, `max_input_tokens`, `max_total_tokens` (the server's context), `version`...
(GET /health is llama.cpp's route, 200 as TGI's; GET / stays Ollama's "Ollama is running".)

Followed: huggingface/text-generation-inference at db931fc (router/src/lib.rs: GenerateRequest, CompatGenerateRequest,
GenerateParameters and default_parameters, Token, Details, StreamResponse, ErrorResponse, Info; server.rs: generate,
generate_stream, compat_generate and the InferError -> status map; validation.rs: Validation::validate and its
ValidationError messages; server/text_generation_server/utils/tokens.py: NextTokenChooser, StoppingCriteria);
huggingface/llm-ls at 1c52b94 (crates/llm-ls/src/backend.rs build_body, parse_tgi_text, parse_api_text; main.rs
build_url); huggingface_hub 2.4's InferenceClient.text_generation.

`inputs` is a raw prompt, read as llama.cpp's /completion reads one (Session.raw: special-token text becomes those
tokens, so llm-ls's FIM template's `<fim_prefix>` is the model's token where it has one; token healing; CRLF text
answered in CRLF; no repository context: the client built the prompt). `parameters` (all optional, null the default):
- sampling as TGI's NextTokenChooser: greedy unless `do_sample` or a warper is set (`temperature` != 1, `top_k`,
  `top_p` < 1), then temperature, top_k, top_p in that order (vLLM's and transformers' order, ties kept);
  `temperature` must be > 0, `top_p` in (0, 1), `top_k` > 0 (TGI's 422s). A body without `parameters` samples, as
  TGI's default_parameters has `do_sample: true`; `"parameters": {}` is greedy. `seed` (0..2**64 - 1; a sampled
  answer without one gets one drawn, reported in `details.seed` as TGI reports it).
- `repetition_penalty` (> 0) over the whole prompt and answer, as transformers' processor applies it (vLLM's, as on
  the OpenAI routes); `frequency_penalty` (-2..2) as OpenAI defines it, over the answer's tokens (TGI's docs cite
  OpenAI's definition; its own processor divides the count by the length of prompt and answer).
- `max_new_tokens` (>= 1; none: the server's --max-tokens, as on every route, where TGI takes what the context
  leaves; more than the context holds ends where it fills, `finish_reason: length`, where TGI answers 422).
- `stop`: a list of strings (any number: TGI's default limit of 4 is its server option); the text ends at the first,
  which `generated_text` keeps at its end (`finish_reason: stop_sequence`), as TGI's does. The engine matches a stop
  anywhere in the text (the rest of the token that wrote it is dropped) where TGI matches it only at a token's end.
- `return_full_text`: `inputs` as sent, then the answer (false on /generate, true on / and /models/{id}).
- `details` (and `decoder_input_details`): `finish_reason` ("length", "eos_token", "stop_sequence"),
  `generated_tokens` (every token sampled, the end of text too), `seed`, `prefill` (always [], as TGI 3 answers it:
  no prompt log-probabilities), `tokens` (each generated token's id, text, log-probability of the model's own
  distribution, `special`), with `top_n_tokens` (0..5, TGI's default bound) the likeliest alternatives per token
  (`top_tokens`). Asking for them decodes a token a step (logprobs.py); a stream without them sends
  `"logprob": null` (serde's rendering of TGI's own NaN) and pays nothing.
- `truncate` (1..the context less one): only the last so many tokens of `inputs` (not healed), as TGI truncates.
- refused with TGI's 422 where this engine cannot do what was asked (text that ignored it would pass for it):
  `typical_p` (any value TGI accepts changes the draw), `watermark: true`, `grammar`, `best_of` other than 1 (TGI with
  --max-best-of 1 answers so), an `adapter_id` other than none or "" (no LoRA adapters); in a stream
  `decoder_input_details` and `best_of`, as TGI refuses them there.
Fields TGI does not define are ignored (serde does too).

A stream's events are one per token: a step that made several tokens (speculation) gives its text to its last token,
the others "". The last event carries the last token, so each token's event goes out when the next token (or the end)
comes; a stop string's tokens and the end of text (its text, e.g. "<|endoftext|>", `special: true`, as TGI sends it)
come last. `generated_text` never holds special tokens' text.

Errors are TGI's `{"error": message, "error_type"}` (errors.py's tgi_body): 422 "validation" for a body that is no
request (not JSON, `inputs` missing, a wrong type) and for every parameter refused, TGI's own messages where it has
them ("Input validation error: `temperature` must be strictly positive"), the prompt too long for the context too;
429 "overloaded" when the queue is full (TGI's status for it; here --max-waiting); a failure while generating 500
"generation" (in a stream, an error event after the tokens sent, "incomplete_generation" where the server stopped mid-
answer); a missing or wrong key with --api-key 401, and the other HTTP errors, without a type, as TGI answers them
untyped. TGI sends a stream's validation errors as an event of a 200 stream; here they are the HTTP error before it
(huggingface_hub and TGI's client raise the same ValidationError from either). /info needs the key where the server
has one, as every route but the liveness checks does (TGI leaves it open).
"""
from __future__ import annotations

import random
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import Field

from .. import line_ends
from .bodies import Body, parse, read_object
from .errors import ApiError, tgi_body
from .logprobs import OpenAITokenTexts, token_text, writer
from .streaming import json_response, sse, stream

router = APIRouter()
MAX_TOP_N_TOKENS = 5            # TGI's --max-top-n-tokens default
U32 = 2**32 - 1
FINISH = {"length": "length", "cancelled": "length"}   # "stop": eos_token or stop_sequence (`_finish`)


class Parameters(Body):
    """TGI's GenerateParameters (router/src/lib.rs), null the default as serde's Option reads it."""
    best_of: int | None = Field(None, ge=0)
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = Field(None, ge=-(2**31), le=2**31 - 1)       # (an i32)
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = Field(None, ge=0, le=U32)
    return_full_text: bool | None = None
    stop: list[str] = []
    truncate: int | None = Field(None, ge=0)
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: Annotated[int, Field(ge=0, le=2**64 - 1)] | None = None
    top_n_tokens: int | None = Field(None, ge=0, le=U32)
    grammar: dict | None = None
    adapter_id: str | None = None


def _default_parameters() -> Parameters:
    return Parameters(do_sample=True)       # TGI's default_parameters(): a body without `parameters` samples


class GenerateRequest(Body):
    inputs: str
    parameters: Parameters = Field(default_factory=_default_parameters)


class CompatRequest(GenerateRequest):
    stream: bool = False


@router.post("/generate")
async def generate(request: Request):
    body = await _read(request, GenerateRequest)
    return await _generate(request, body, stream=False, full_text=False, listed=False)


@router.post("/generate_stream")
async def generate_stream(request: Request):
    body = await _read(request, GenerateRequest)
    return await _generate(request, body, stream=True, full_text=False, listed=False)


@router.post("/")
async def compat_generate(request: Request):
    body = await _read(request, CompatRequest)
    return await _generate(request, body, stream=body.stream, full_text=True, listed=True)


@router.post("/models/{model_id:path}")
async def inference_api(request: Request, model_id: str):
    """The Inference API's text-generation path (llm-ls's `huggingface` backend: `{url}/models/{model}`), answered as
    the compat route answers: any model name, the one model."""
    return await compat_generate(request)


@router.api_route("/info", methods=["GET", "HEAD"])
async def info(request: Request):
    server = request.app.state.server
    context = server.engine.context_length
    return json_response({
        "model_id": server.engine.name, "model_sha": None, "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": 1 + server.worker.max_waiting, "max_best_of": 1,
        "max_input_tokens": context - 1, "max_total_tokens": context, "max_client_batch_size": 1,
        "router": "codecomplete", "version": server.info.get("version", ""), "sha": None, "docker_label": None,
    })


async def _read(request: Request, model: type[GenerateRequest]) -> GenerateRequest:
    """The body, checked; one that is no request is TGI's 422 (the size and encoding keep their 413 and 415)."""
    try:
        return parse(await read_object(request), model)
    except ApiError as exc:
        if exc.status != 400:
            raise
        raise _invalid(exc.message) from None


def _invalid(message: str) -> ApiError:
    return ApiError(422, f"Input validation error: {message}")


def _sampling(server, p: Parameters, stream: bool):
    """TGI's checks (Validation::validate, in its order, its messages), this engine's refusals, then the Sampling."""
    if p.best_of not in (None, 1):
        raise _invalid("`best_of` != 1 is not supported when streaming tokens" if stream
                       else "`best_of` != 1 is not allowed for this endpoint")
    if stream and p.decoder_input_details:
        raise _invalid("`decoder_input_details` == true is not supported when streaming tokens")
    if p.temperature is not None and p.temperature <= 0:
        raise _invalid("`temperature` must be strictly positive")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise _invalid("`repetition_penalty` must be strictly positive")
    if p.frequency_penalty is not None and not -2 <= p.frequency_penalty <= 2:
        raise _invalid("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.top_p is not None and not 0 < p.top_p < 1:
        raise _invalid("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0 < p.typical_p < 1:
        raise _invalid("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise _invalid("`top_k` must be strictly positive")
    if p.max_new_tokens == 0:
        raise _invalid("`max_new_tokens` must be strictly positive")
    if p.top_n_tokens is not None and p.top_n_tokens > MAX_TOP_N_TOKENS:
        raise _invalid(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {p.top_n_tokens}")
    max_input = server.engine.context_length - 1
    if p.truncate is not None and not 0 < p.truncate <= max_input:
        raise _invalid(f"`truncate` must be strictly positive and less than {max_input}. Given: {p.truncate}")
    # What this engine cannot do: refused, as text that ignored it would pass for what was asked.
    if p.typical_p is not None:
        raise _invalid("`typical_p` is not supported (typical decoding is not implemented here)")
    if p.watermark:
        raise _invalid("`watermark` is not supported")
    if p.grammar is not None:
        raise _invalid("grammar is not supported")
    if p.adapter_id:
        raise _invalid(f"adapter_id {p.adapter_id!r}: no LoRA adapters are loaded (this server runs one model)")
    sampled = (p.do_sample or (p.temperature is not None and p.temperature != 1.0) or p.top_k is not None
               or (p.top_p is not None and p.top_p < 1.0))
    seed = (p.seed if p.seed is not None else random.getrandbits(64)) if sampled else None
    listed = p.details or p.decoder_input_details or bool(p.top_n_tokens)
    options = {"temperature": (p.temperature or 1.0) if sampled else 0.0, "top_k": p.top_k or 0,
               "top_p": p.top_p or 1.0, "min_p": 0.0}
    penalties = {"presence_penalty": 0.0, "frequency_penalty": p.frequency_penalty or 0.0, "penalty_last_n": -1,
                 "penalize_prompt": False, "repeat_penalty": p.repetition_penalty or 1.0, "repeat_window": -1}
    return server.sampling(p.max_new_tokens, seed=seed, stop=tuple(s for s in p.stop if s),
                           logprobs=(p.top_n_tokens or 0) if listed else None, **options, **penalties)


async def _generate(request: Request, body: GenerateRequest, *, stream: bool, full_text: bool, listed: bool):
    server = request.app.state.server
    p = body.parameters
    if not body.inputs:
        raise _invalid("`inputs` cannot be empty")
    sampling = _sampling(server, p, stream)
    full_text = full_text if p.return_full_text is None else p.return_full_text
    prefix = body.inputs if full_text else ""
    try:
        running = server.start(request, lambda: server.session.raw(body.inputs, sampling=sampling,
                                                                    last_tokens=p.truncate))
    except ApiError as exc:
        if exc.status == 503:               # the queue is full (--max-waiting): TGI's 429
            raise ApiError(429, f"Model is overloaded: {exc.message}") from None
        raise
    try:
        generation = await running.started()
    except ApiError as exc:                 # the prompt: too long for the context, a token the model lacks
        raise _invalid(exc.message) if exc.status == 400 else exc from None
    answer = _Answer(server, generation, p, sampling)
    if not stream:
        result = await running.result()
        response = {"generated_text": prefix + answer.text(result)}
        if p.details or p.decoder_input_details:
            response["details"] = answer.details(result)
        return json_response([response] if listed else response)
    return _stream(running, answer, prefix, p.details)


class _Answer:
    """What a request's answer reports of its result: the text as TGI writes it, its tokens, its details."""

    def __init__(self, server, generation, p: Parameters, sampling) -> None:
        self.tokenizer = server.session.engine.tokenizer
        self.specials = {*getattr(self.tokenizer, "all_special_ids", ()), *server.engine.eos_token_ids}
        self.generation, self.p, self.seed = generation, p, sampling.seed
        self.top_n = p.top_n_tokens or 0

    def finish(self, result) -> str:
        if result.finish_reason == "stop":
            return "stop_sequence" if result.stop_string else "eos_token"
        return FINISH[result.finish_reason]

    def stop_text(self, result) -> str:
        """The stop string that ended the text, as the text writes it (a "\\n" is a CRLF text's "\\r\\n")."""
        if not result.stop_string:
            return ""
        return line_ends.written(result.stop_string, self.generation.prompt.line_end)

    def text(self, result) -> str:
        """The answer as TGI writes `generated_text`: the text, then the stop string that ended it."""
        return result.text + self.stop_text(result)

    def token(self, token: int, text: str, logprob: float | None = None) -> dict:
        return {"id": token, "text": text, "logprob": logprob, "special": token in self.specials}

    def alternatives(self, texts: OpenAITokenTexts, entry, write) -> list[dict]:
        return [self.token(j, write(texts.alternative(j)[0]), v) for j, v in entry.top[:self.top_n]]

    def details(self, result) -> dict:
        """TGI's Details: every generated token (healing's apart: the prompt's) with its text as the answer writes it
        and its log-probability, the alternatives where `top_n_tokens` asks."""
        start = result.healing_tokens
        ids, entries = result.token_ids[start:], (result.logprobs or [])[start:]
        texts, tokens, top = OpenAITokenTexts(self.tokenizer), [], []
        for token, entry in zip(ids, entries):
            write = writer(self.generation.line_ends, entry)
            if self.top_n:
                top.append(self.alternatives(texts, entry, write))
            text = write(texts.take(token)[0]) if token not in self.specials else token_text(self.tokenizer, token)[0]
            tokens.append(self.token(token, text, entry.logprob))
        details = {"finish_reason": self.finish(result), "generated_tokens": result.token_counts()[1],
                   "seed": self.seed, "prefill": [], "tokens": tokens}
        if top:
            details["top_tokens"] = top
        return details


def _stream(running, answer: _Answer, prefix: str, details: bool):
    """TGI's stream: one event per token, the last one (held until the end comes) with `generated_text`."""
    held: dict | None = None        # the last token's event, not yet sent
    index = 0
    sent = 0                        # the tokens the text events carried
    texts = OpenAITokenTexts(answer.tokenizer)

    def event(token: dict, top: list[dict] | None) -> dict:
        nonlocal index
        index += 1
        return {"index": index, "token": token, **({"top_tokens": top} if top else {}),
                "generated_text": None, "details": None}

    def take(token: int, text: str, entry) -> list[str]:
        """The next token's event; out goes the one held before it."""
        nonlocal held
        top = None
        if entry is not None and answer.top_n:
            top = answer.alternatives(texts, entry, writer(answer.generation.line_ends, entry))
            texts.take(token)
        out = [sse(held)] if held is not None else []
        held = event(answer.token(token, text, entry.logprob if entry is not None else None), top)
        return out

    def frames(ev) -> list[str]:
        nonlocal held, sent
        if ev.kind == "text":
            if not ev.tokens:               # text held back until now (a stop string's start that was none): the
                if held is not None:        # token before it wrote it
                    held["token"]["text"] += ev.value
                    return []
                held = event({"id": 0, "text": ev.value, "logprob": None, "special": False}, None)
                return []
            out = []
            for k, token in enumerate(ev.tokens):
                entry = ev.logprobs[k] if k < len(ev.logprobs) else None
                out += take(token, ev.value if k == len(ev.tokens) - 1 else "", entry)
            sent += len(ev.tokens)
            return out
        if ev.kind == "error":
            error = ev.value
            kind = "incomplete_generation" if error.status == 503 else None
            return ([sse(held)] if held is not None else []) + [sse(tgi_body(error, kind))]
        result = ev.value
        start = result.healing_tokens + sent
        leftover = result.token_ids[start:]
        entries = (result.logprobs or [])[start:]
        stop_text = answer.stop_text(result)
        out = []
        for k, token in enumerate(leftover):     # a stop string's tokens, the end of text: no text came with them
            if token in answer.specials:
                text = token_text(answer.tokenizer, token)[0]
            else:
                text, stop_text = stop_text, ""
            out += take(token, text, entries[k] if k < len(entries) else None)
        if held is None:                    # (nothing generated: the end still names a token)
            held = event(answer.token(result.token_ids[-1] if result.token_ids else 0, ""), None)
        if stop_text:                       # the stop string ended inside a token whose text went out
            held["token"]["text"] += stop_text
        held["generated_text"] = prefix + answer.text(result)
        if details:
            held["details"] = {"finish_reason": answer.finish(result), "generated_tokens": result.token_counts()[1],
                               "seed": answer.seed, "input_length": result.token_counts()[0]}
        last, held = held, None
        return out + [sse(last)]
    return stream(running, frames, "text/event-stream")
