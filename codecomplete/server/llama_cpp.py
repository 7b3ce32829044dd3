"""llama.cpp's native API, as llama.vim, llama.vscode and Continue's llama.cpp provider use it.

    POST /infill       input_prefix + prompt | input_suffix, with input_extra chunks: a fill-in-the-middle completion
    POST /completion   prompt (text, special-token text becoming those tokens, or token ids) continued as it is
    POST /tokenize     content -> tokens (special-token text becoming those tokens, as /completion reads it, unless
                       parse_special is false); with_pieces: [{id, piece}] (a piece not whole UTF-8: its bytes);
                       add_special: the tokenizer's BOS as well
    POST /detokenize   tokens -> content
    GET  /health       {"status":"ok"}, without an API key (/v1/health too, which tabby.py answers with Tabby's fields)
    GET  /props        default_generation_settings.n_ctx and the like

/infill's prompt is the session's: the client's chunks, then the repository context ranked for the text around the
cursor, then that text, in the model's format (CodeLlama infill, StarCoder FIM, or left to right for models
without FIM tokens); it always fits, the far ends of the client's text and its oldest chunks giving way first
(`truncated` says so, as it does when the generation filled the context). Bodies are one line of compact JSON
(llama.vim matches `"content":"` byte for byte); streams are `data: {...}` events that simply end. Sampling:
temperature, top_k (exactly k), top_p, min_p (0.05), min_keep, seed (32 bits as llama.cpp reads it: an integer's low
32 bits, 4294967295 and so -1 a random one), stop, and the penalties (repeat_penalty,
presence_penalty, frequency_penalty over the last repeat_last_n tokens of prompt + answer, as llama.cpp's sampler
applies them: models/penalties.py), and llama.cpp's infill sampler, run as `samplers` lists them (samplers.py: one left out does
not run; without the field, llama.cpp's default chain, temperature last); the samplers llama.cpp has and this server
does not (dry, typ_p, xtc, top_n_sigma, adaptive_p) are accepted at their neutral values, a 400 otherwise;
mirostat 1 or 2 (mirostat_tau, mirostat_eta) replaces the chain with the temperature and mirostat, and
dynatemp_range > 0 (dynatemp_exponent) makes the temperature dynamic, as in llama.cpp (samplers.py): between
max(0, temperature - range) and temperature + range, so that it draws at a temperature of 0 too;
logit_bias (pairs or a map; a token an id or text, a bias a number or false: a ban) is added to the logits before
them (logit_bias.py; a bad one is a 400); ignore_eos bans every end-of-generation token (the engine's EOS ids, which
hold llama.cpp's end-of-generation set, and the prompt format's end tokens, as llama.cpp's logit_bias_eog: a -inf
bias, on /completion and /infill alike), so the answer runs to n_predict or a stop
string (llama.cpp's infill sampler, where `samplers` lists it, may still choose the end when no text is left, as it
does in llama.cpp); constrained decoding (grammar, json_schema) is refused (501), not ignored.
`n_probs` N (any number, as llama.cpp takes it: up to the vocabulary, whose every token it then lists for every
token; 0 or less, none; OpenAI's `logprobs` number where n_probs is not given, as llama.cpp reads it; a whole answer
lists at most MAX_ANSWER_PROBABILITIES, N x n_predict, a 400 past it, which llama.cpp has no bound for, a stream
any number) answers `completion_probabilities`, the chosen
token's logprob and the N likeliest (logprobs.py): in the answer, without the tokens of the stop word that ended it
(as many as the word tokenizes to, as llama.cpp counts them), or in each streamed chunk for its `tokens`; of the
model's own distribution, or with `post_sampling_probs` the probabilities the token was drawn from, after the chain.
"""
from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response
from pydantic import AliasChoices, Field, field_validator

from .. import line_ends
from . import logit_bias, samplers
from .bodies import Body, Seed, check_ids, read_json, stop_strings
from .errors import ApiError
from .logprobs import after_healing, llama_cpp_probabilities, token_text
from .streaming import compact, json_response, sse, stream

router = APIRouter()
public = APIRouter()
RANDOM_SEED = 2 ** 32 - 1   # LLAMA_DEFAULT_SEED: a seed drawn at random (llama-sampling.cpp's get_rng_seed)
# The probabilities a whole answer may list (n_probs x n_predict): they are all held until it ends, ~1.5 KB of the
# server's memory each (n_probs 1e6 on the embedded model's 49,152 tokens, n_predict 40: +3 GB, 187 MB of JSON), so
# n_predict's default 256 took ~19 GB and a context's worth more than the machine; now ~1.6 GB at most (n_probs 100
# over 10k tokens, the whole vocabulary over 21). A stream holds one token's at a time.
MAX_ANSWER_PROBABILITIES = 2 ** 20


class Options(samplers.UnimplementedSamplerFields, samplers.AdaptiveSamplerFields,   # (typical_p, dry_*, mirostat...)
              samplers.PromptCacheFields):
    """What /completion and /infill share (llama.cpp's defaults)."""

    n_predict: int = Field(-1, ge=-1, validation_alias=AliasChoices("n_predict", "max_tokens"))
    # Any number, as llama.cpp reads them (common/sampling.cpp): a temperature <= 0 is greedy, but with a dynamic
    # temperature, whose range starts from it as given (-0.2 with range 0.5: 0..0.3, llama.cpp's temp-ext); top_p >= 1
    # and min_p <= 0 are off, top_p <= 0 keeps the likeliest token; top_p and min_p are taken within 0..1.
    temperature: float = 0.8
    top_k: int = 40                            # <= 0: off
    top_p: float = 0.95
    min_p: float = 0.05                        # runs only where the chain has it (not llama.vim's: no min_p there)
    seed: Seed = -1
    repeat_penalty: float = Field(1.0, gt=0)    # (0 divides by zero)
    repeat_last_n: int = Field(64, ge=-1)       # -1: the context's size, 0: no penalties
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    samplers: list[str] | str | None = None   # which run, in order (samplers.py); None: llama.cpp's default chain
    stop: str | list[str] = []         # (one string: llama.cpp's native routes skip it; here it is one stop)
    ignore_eos: bool = False           # llama.cpp's: every end-of-generation token banned (a -inf bias), so the
                                       # answer runs to n_predict; the prompt format's stop strings are off too
    stream: bool = False
    t_max_predict_ms: int = Field(0, ge=0)
    n_indent: int = Field(0, ge=0)
    n_probs: int = 0                   # each token's probability and the N likeliest alternatives' (<= 0: none)
    post_sampling_probs: bool = False  # n_probs' numbers after the sampler chain (probabilities), not the model's
    logprobs: int | bool | None = None   # OpenAI's name for n_probs, read where n_probs is not given (a bool is not
                                         # a number: llama.cpp's json_value reads it as the default)
    return_tokens: bool = False        # the generated ids in `tokens` (a stream's chunks carry theirs always)
    response_fields: list[str] = []
    grammar: str = ""                  # constrained decoding (and json_schema): refused, not ignored
    json_schema: dict | bool | None = None
    logit_bias: list | dict | None = None     # [[token, bias], ...] or {token: bias} (logit_bias.py)


class ExtraChunk(Body):
    text: str
    filename: str = "tmp"


class InfillRequest(Options):
    input_prefix: str
    input_suffix: str
    input_extra: list[ExtraChunk] = []
    prompt: str = ""


class CompletionRequest(Options):
    prompt: str | list[int]

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value):
        """llama.cpp's `prompt` may also be an array of prompts (`["text"]`, `[[ids]]`: one each) or one prompt mixing
        text and ids (`["def f(", 87]`). An array of one prompt is that prompt; several are refused as the OpenAI route
        refuses them (llama.cpp answers each: one request, one answer here), and so is a mix, which was refused as
        `prompt[0]: Input should be a valid integer` (a `["text"]` too), blaming the text for not being a number."""
        if not isinstance(value, list) or not any(isinstance(item, (str, list)) for item in value):
            return value                                # (text, ids, or what the model's check words best)
        if any(type(item) is int for item in value) and all(type(item) in (int, str) for item in value):
            raise ApiError(400, "prompt: text and token ids in one array are not supported: send the text, or the ids")
        if not all(isinstance(item, (str, list)) for item in value):
            return value
        if len(value) != 1:
            raise ApiError(400, f"one prompt per request, got {len(value)}")
        return value[0]


class TokenizeRequest(Body):
    content: str
    add_special: bool = False
    parse_special: bool = True         # False: special-token text is text, as the prompt's own code is read
    with_pieces: bool = False


class DetokenizeRequest(Body):
    tokens: list[int]


@router.post("/tokenize")
async def tokenize(request: Request):
    body = await read_json(request, TokenizeRequest)

    def tokens(tokenizer) -> list:
        from prompts.errors import PromptError
        from prompts.raw import check_embedded
        ids = tokenizer.encode(body.content, add_special_tokens=body.add_special,
                               split_special_tokens=not body.parse_special)
        try:
            check_embedded(tokenizer, ids)          # what /completion would refuse of the same text
        except PromptError as exc:
            raise ApiError(400, str(exc)) from None
        return token_pieces(tokenizer, ids) if body.with_pieces else ids
    # Off the event loop: a body near the size limit takes 0.6-2.2 s, which every stream and request would wait for.
    return json_response({"tokens": await request.app.state.server.with_tokenizer(tokens)})


def token_pieces(tokenizer, ids: list[int]) -> list[dict]:
    """/tokenize's `with_pieces`, as llama.cpp's: each token's piece as it writes it mid-text (SentencePiece's "▁add"
    is " add"; a special token its text), a piece that is not whole UTF-8 (a byte token, part of a character) as the
    list of its bytes. Decoding each token alone made those U+FFFD and dropped a SentencePiece piece's leading space."""
    pieces = []
    for token in ids:
        _, piece = token_text(tokenizer, token)
        try:
            pieces.append({"id": token, "piece": piece.decode("utf-8")})
        except UnicodeDecodeError:
            pieces.append({"id": token, "piece": list(piece)})
    return pieces


@router.post("/detokenize")
async def detokenize(request: Request):
    server = request.app.state.server
    body = await read_json(request, DetokenizeRequest)
    if body.tokens:
        check_ids(server.engine, body.tokens)
    return json_response({"content": server.tokenizer.decode(body.tokens)})


@public.api_route("/health", methods=["GET", "HEAD"])
async def health():
    return json_response({"status": "ok"})


@router.api_route("/props", methods=["GET", "HEAD"])     # (HEAD too, as llama.cpp's cpp-httplib answers it)
async def props(request: Request):
    server = request.app.state.server
    engine = server.engine
    return json_response({
        "default_generation_settings": {"n_ctx": engine.context_length, "params": _settings(server, None)},
        "total_slots": 1, "model_alias": engine.name, "model_path": server.info.get("model_spec") or engine.name,
        "modalities": {"vision": False, "audio": False},
        "chat_template": getattr(engine.tokenizer, "chat_template", None) or "",
        "build_info": f"codecomplete {server.info.get('version', '')}".strip(),
    })


@router.post("/infill")
async def infill(request: Request):
    server = request.app.state.server
    body = await read_json(request, InfillRequest)
    sampling = _sampling(server, body)
    biased = _text_bias(server, body, sampling)
    root = server.session.index.root
    extra = [(_label(chunk.filename, root), chunk.text) for chunk in body.input_extra]
    limits = Limits(body.t_max_predict_ms, body.n_indent)
    prefix = body.input_prefix + body.prompt
    running = server.start(request, lambda: server.session.infill(
        prefix, body.input_suffix, extra=extra, sampling=biased(), budget=server.budget(sampling)), limits.feed,
        **_probability_work(server, body, sampling, limits))
    generation = await running.started()
    truncated = _truncated(generation.prompt, [label for label, text in extra if text.strip()])
    return await _answer(server, running, generation, body, sampling, limits, truncated)


@router.post("/completion")
@router.post("/completions")
async def completion(request: Request):
    server = request.app.state.server
    body = await read_json(request, CompletionRequest)
    sampling = _sampling(server, body)
    biased = _text_bias(server, body, sampling)
    check_ids(server.engine, body.prompt)
    limits = Limits(body.t_max_predict_ms, body.n_indent)
    running = server.start(request, lambda: server.session.raw(body.prompt, sampling=biased()), limits.feed,
                           **_probability_work(server, body, sampling, limits))
    generation = await running.started()
    return await _answer(server, running, generation, body, sampling, limits, truncated=False)


def _n_probs(server, body: Options) -> int:
    """The alternatives a request asks for per token: n_probs, else OpenAI's `logprobs` number (as llama.cpp reads a
    request), at most the vocabulary, none for 0 or less (llama.cpp's populate_token_probs and its `n_probs > 0`)."""
    asked = _asked_n_probs(body)
    return min(asked, server.engine.model.config.vocab_size) if asked > 0 else 0


def _asked_n_probs(body: Options) -> int:
    return body.n_probs or (body.logprobs if type(body.logprobs) is int else 0)


def _seed(seed: int) -> int:
    """A seed as llama.cpp reads it into its uint32_t: the integer's low 32 bits (-1 is RANDOM_SEED)."""
    return seed % 2 ** 32


def _probability_work(server, body: Options, sampling, limits: Limits) -> dict:
    """`completion_probabilities`, made on the engine thread with its tokenizer (the job's `describe` and `finish`):
    a token's text for each of n_probs alternatives (up to the vocabulary, 49,152 on the embedded model) per token
    took seconds of the event loop, during which no other request was answered and no stream sent a token. A
    stream's chunks carry their tokens' (`describe`), its end the tokens no text came with (`finish`); a whole
    answer's are made at its end (`finish`). None where the request asks for none."""
    if not sampling.logprobs:
        return {}
    tokenizer = server.session.engine.tokenizer       # (the engine thread's)

    def scorer(job):
        """The tokens' probabilities, their texts as the job's answer writes them (line_ends.py)."""
        return lambda ids, entries: llama_cpp_probabilities(tokenizer, ids, entries, sampling.logprobs_after_samplers,
                                                            job.generation.line_ends)
    if body.stream:
        return {"describe": lambda job, ids, entries: scorer(job)(ids, entries),
                "finish": lambda job, result: after_healing(scorer(job), result, job.carried) or []}

    def whole(job, result) -> tuple[list[dict], str]:
        stop_type, word = _stop(server, job.generation.prompt, result, limits)
        probabilities = _answer_probabilities(tokenizer, scorer(job), result, stop_type, word)
        return probabilities, _written(probabilities)
    return {"finish": whole}


def _sampling(server, body: Options):
    if body.grammar or body.json_schema is not None:
        # text that ignored them would pass for what was asked (JSON)
        raise ApiError(501, "grammar and json_schema are not supported")
    chain = samplers.chain(body.samplers)
    samplers.refuse_unsupported(chain, body)
    bias = logit_bias.llama_cpp(body.logit_bias, server.engine.model.config.vocab_size)[0] if body.logit_bias else ()
    n_probs = _n_probs(server, body)
    seed = _seed(body.seed)
    temperature = body.temperature          # not clamped: a dynamic temperature's range starts from it
    options = samplers.applied(chain, temperature, max(body.top_k, 0), samplers.unit(body.top_p),
                               samplers.unit(body.min_p), body.min_keep,
                               repeat_penalty=body.repeat_penalty, presence_penalty=body.presence_penalty,
                               frequency_penalty=body.frequency_penalty, penalty_last_n=body.repeat_last_n)
    sampling = server.sampling(body.n_predict, seed=None if seed == RANDOM_SEED else seed,
                               stop=stop_strings(body.stop), format_stops=not body.ignore_eos,
                               ignore_eos=body.ignore_eos, logit_bias=bias, logprobs=n_probs or None,
                               logprobs_after_samplers=body.post_sampling_probs,
                               **{**options, **samplers.adaptive(chain, body, temperature)}, **body.cache_reuse())
    if not body.stream and n_probs * sampling.max_tokens > MAX_ANSWER_PROBABILITIES:
        raise ApiError(400, f"n_probs {n_probs:,} for each of up to {sampling.max_tokens:,} tokens is more than one "
                            f"answer lists ({MAX_ANSWER_PROBABILITIES:,} probabilities): ask for fewer, or stream "
                            "the answer (each chunk lists its own tokens')")
    return sampling


def _text_bias(server, body: Options, sampling):
    """The request's sampling (`_sampling`'s: the logit bias of token ids) with the bias of tokens given as text,
    for the engine thread: tokenized there, with its tokenizer (logit_bias.py)."""
    texts = logit_bias.llama_cpp(body.logit_bias, server.engine.model.config.vocab_size)[1] if body.logit_bias else ()

    def biased():
        if not texts:
            return sampling
        return replace(sampling, logit_bias=sampling.logit_bias + logit_bias.tokenized(
            texts, server.session.engine.tokenizer))
    return biased


def _settings(server, body: Options | None) -> dict:
    """llama.cpp's generation settings of a request (/props: of one that sets nothing). A request without n_predict
    gets the server's --max-tokens (within the context), as llama.cpp's gets its `-n`, and is said to (not -1,
    "unlimited", beside an answer stopped at it)."""
    body = body or Options()
    n_predict = body.n_predict if "n_predict" in body.model_fields_set else server.sampling(None).max_tokens
    return {"n_predict": n_predict, "temperature": body.temperature, "top_k": body.top_k,
            "top_p": body.top_p, "min_p": body.min_p, "seed": _seed(body.seed), "stop": list(stop_strings(body.stop)),
            "repeat_penalty": body.repeat_penalty, "repeat_last_n": body.repeat_last_n,
            "presence_penalty": body.presence_penalty, "frequency_penalty": body.frequency_penalty,
            "dynatemp_range": body.dynatemp_range, "dynatemp_exponent": body.dynatemp_exponent,
            "mirostat": body.mirostat, "mirostat_tau": body.mirostat_tau, "mirostat_eta": body.mirostat_eta,
            "samplers": list(samplers.chain(body.samplers)), "n_probs": _asked_n_probs(body),
            "post_sampling_probs": body.post_sampling_probs, "n_ctx": server.engine.context_length}


async def _answer(server, running, generation, body: Options, sampling, limits: Limits, truncated: bool):
    prompt = generation.prompt

    def final(result) -> dict:
        content = limits.cut(result.text)
        stop_type, word = _stop(server, prompt, result, limits)
        evaluated, predicted = result.token_counts()
        # llama.cpp's n_past: the prompt, and the answer's tokens fed back (its last one sampled, never fed)
        cached = evaluated + max(predicted - 1, 0)
        return {
            # every sampled token, the end of text too, as llama.cpp's generated_tokens (healing's own: the prompt's)
            "index": 0, "content": content, "id_slot": 0, "stop": True,
            "tokens": result.token_ids[result.healing_tokens:] if body.return_tokens else [],
            "model": server.engine.name, "tokens_predicted": predicted,
            "tokens_evaluated": evaluated, "generation_settings": _settings(server, body),
            "has_new_line": "\n" in content or "\r" in content,      # ("\r": a classic Mac file's line end)
            "truncated": truncated or evaluated + predicted >= server.engine.context_length,   # (it filled)
            "stop_type": stop_type, "stopping_word": word, "tokens_cached": cached, "timings": timings(result),
        }

    if body.stream:
        # As llama.cpp's chunks: the ids behind each piece of text, and the tokens generated so far (n_decoded), every
        # token counted, those whose text is held back or never shown (a stop string, the end of text) too.
        predicted, pending, probabilities = 0, [], []     # (the last two: of the tokens the next chunk carries)

        def piece(content: str) -> str:
            nonlocal pending, probabilities
            # the prompt's tokens as the final event counts them (GenerationResult.token_counts): healing's too
            chunk = {"index": 0, "content": content, "tokens": pending, "stop": False, "id_slot": 0,
                     "tokens_predicted": predicted, "tokens_evaluated": len(prompt.ids) + running.job.healing_tokens}
            if probabilities:
                chunk["completion_probabilities"] = probabilities
            pending, probabilities = [], []
            return sse(chunk)

        def frames(event):
            nonlocal predicted, pending, probabilities
            if event.kind == "text":   # sent once it is sure to stay: nothing a limit cuts reaches the editor
                predicted, pending = predicted + len(event.tokens), pending + event.tokens
                probabilities += event.described       # (made on the engine thread)
                content = limits.release(event.value)
                return [piece(content)] if content else []
            if event.kind == "error":
                return [sse(event.value.body())]
            result = event.value
            answer = final(result)
            held = limits.held(answer["content"])        # held back, and in the answer after all
            pending += result.token_ids[result.healing_tokens + predicted:]     # the ids no text came with
            probabilities += event.described       # (of the tokens after the `predicted` ones)
            predicted = answer["tokens_predicted"]
            # (the text and its ids went out in the chunks, as llama.cpp's final event says)
            return [*([piece(held)] if held or pending else []), sse({**answer, "content": "", "tokens": []})]
        return stream(running, frames, "text/event-stream")
    result = await running.result()
    answer = final(result)
    probabilities, written = running.finished or ([], "")     # (made on the engine thread, and written as JSON)
    if "prompt" in body.response_fields or not body.response_fields:
        # A raw prompt's healed tail (token healing left it out; the generation begins with it and `content` does not
        # repeat it) belongs to the prompt as sent, and so do its line ends (the model read "\n"): prompt + content
        # is the whole text, as with llama.cpp.
        text = server.tokenizer.decode(prompt.ids)
        answer["prompt"] = (line_ends.written(text + prompt.heal_text, prompt.line_end) if prompt.format == "raw"
                            else text)
    if body.response_fields:
        if probabilities:
            answer["completion_probabilities"] = probabilities
        return json_response(project(answer, body.response_fields))
    text = compact(answer)
    if probabilities:                           # (none generated: none listed, as llama.cpp's)
        text = f'{text[:-1]},"completion_probabilities":{written}}}'
    return Response(text, media_type="application/json")


def _written(probabilities: list[dict]) -> str:
    """`completion_probabilities` as compact JSON, written an alternative at a time: json.dumps of the whole list
    (18 MB for 4 tokens of the embedded model's whole vocabulary) is one call that holds the GIL, and so the event
    loop, for a second; small calls on the engine thread let it run between them."""
    tokens = []
    for entry in probabilities:
        listed = "top_probs" if "top_probs" in entry else "top_logprobs"
        head = compact({key: value for key, value in entry.items() if key != listed})
        alternatives = ",".join(compact(alternative) for alternative in entry[listed])
        tokens.append(f'{head[:-1]},"{listed}":[{alternatives}]}}')
    return f"[{','.join(tokens)}]"


def _answer_probabilities(tokenizer, scores, result, stop_type: str, word: str) -> list[dict]:
    """A whole answer's `completion_probabilities`: its tokens' (healing's apart), less, where a stop word ended it, as
    many last tokens as the word tokenizes to (llama.cpp's send_final_response; a stream's chunks keep them)."""
    probabilities = after_healing(scores, result)
    if stop_type == "word":
        word_tokens = len(tokenizer.encode(word, add_special_tokens=False))
        probabilities = probabilities[:len(probabilities) - min(word_tokens, len(probabilities))]
    return probabilities


def timings(result) -> dict:
    """llama.cpp's timings: the prompt tokens evaluated (the cached ones apart) and the predicted ones, in ms, and
    their rates as llama.cpp's server computes them (server-task.cpp): per token, the milliseconds over the count; per
    second, the count over the seconds, so that each rate is 1000 over the other (llama.vim shows predicted_n,
    predicted_ms and predicted_per_second side by side). predicted_ms spans the decode steps after the first token,
    which came out of the prompt's evaluation (prompt_ms), as llama.cpp's does: a rate over n tokens of those n - 1
    steps, n / (n - 1) times the engine's decode_tokens_per_s (the command line's). One token (or none) had no step
    timed after it: no rate, rather than 1000 over the bookkeeping's fraction of a millisecond."""
    t = result.timings
    evaluated, predicted_n = result.token_counts()
    prompt_n = evaluated - result.reused_prefix_tokens
    prompt_ms, predicted_ms = 1000 * t.prefill_s, 1000 * t.decode_s
    timed = predicted_n > 1 and predicted_ms > 0
    return {
        "cache_n": result.reused_prefix_tokens, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": 1000 * prompt_n / prompt_ms if prompt_ms else 0.0,
        "predicted_n": predicted_n, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if timed else 0.0,
        "predicted_per_second": 1000 * predicted_n / predicted_ms if timed else 0.0,
    }


def project(answer: dict, fields: list[str]) -> dict:
    """llama.cpp's response_fields: "a/b" takes answer["a"]["b"] as the top-level key "a/b"; missing ones vanish."""
    picked = {}
    for name in fields:
        value, found = answer, True
        for key in name.split("/"):
            if isinstance(value, dict) and key in value:
                value = value[key]
            else:
                found = False
                break
        if found and name:
            picked[name] = value
    return picked


def _stop(server, prompt, result, limits: Limits) -> tuple[str, str]:
    """llama.cpp's stop_type ("eos", "word", "limit", "none") and the stop string that ended the text."""
    if limits.reached or result.finish_reason == "length":
        return "limit", ""
    if result.finish_reason != "stop":
        return "none", ""
    if result.token_ids and result.token_ids[-1] in {*server.engine.eos_token_ids, *prompt.stop_token_ids}:
        return "eos", ""
    return "word", result.stop_string


def _label(filename: str, root: Path) -> str:
    """A chunk's file as the prompt names it: relative to the repository when it lies inside (llama.vscode sends
    absolute paths). Only a label: the file is never read."""
    path = Path(filename)
    return path.relative_to(root).as_posix() if path.is_absolute() and path.is_relative_to(root) else filename


def _truncated(prompt, labels: list[str]) -> bool:
    """Whether some of the client's text (its far ends, lines or within the cursor's line) or some of its chunks
    (the oldest, or the first lines of the oldest kept) stayed out of the prompt."""
    paths = [item.path for item in prompt.context]
    # (no more of them kept than the prompt has items: trying every count copied thousands of labels thousands
    # of times, 20,000 chunks 0.2 s)
    kept = next(k for k in range(min(len(labels), len(paths)), -1, -1) if paths[:k] == labels[len(labels) - k:])
    return prompt.cut or kept < len(labels) or any(item.start_line > 1 for item in prompt.context[:kept])


class Limits:
    """llama.cpp's t_max_predict_ms and n_indent, applied to the text as it is generated (`feed`, on the engine
    thread, before the text goes to the request): past the time limit, the text ends with the next newline; a line
    after the first indented less than n_indent (with text on it) ends the completion, and is cut from it, its
    indentation kept. The engine stops at its next step, which may have made more text (a speculative step makes
    several tokens): `cut` removes it from the answer, and a stream sends only what is `settled` (`release`, on the
    event loop, as the text arrives there; `held`, the rest of the answer at the end)."""

    def __init__(self, max_predict_ms: int, n_indent: int) -> None:
        self.max_predict_ms, self.n_indent = max_predict_ms, n_indent
        self.text = ""
        self.lines = ""                     # `text` with each lone "\r" (a classic Mac line end) as "\n": its lines
        self.started: float | None = None
        self.cut_at: int | None = None      # where the answer ends, once a limit is reached
        self.streamed = ""                  # the text as a stream has received it (a prefix of `text`)
        self.sent = 0                       # how much of it the stream has sent
        self.undecided = 0                  # where the lines n_indent may still cut begin (0: after the first)

    @property
    def reached(self) -> bool:
        return self.cut_at is not None

    def feed(self, delta: str) -> bool:
        now = time.perf_counter()
        self.started = self.started or now
        start, self.text = len(self.text), self.text + delta
        # (a "\r" that ends the text may be a CRLF's, whose "\n" comes next: it is told with the next delta)
        told = len(self.lines) - 1 if self.lines.endswith("\r") else len(self.lines)
        self.lines = self.lines[:told] + _LONE_CR.sub("\n", self.text[told:])
        if self.cut_at is None and self.n_indent:
            self.cut_at = _dedent_at(self.lines, self.n_indent, self.undecided)
            self.undecided = self.lines.rfind("\n") + 1    # the lines before the last one are decided: kept
        if self.cut_at is None and self.max_predict_ms and 1000 * (now - self.started) > self.max_predict_ms:
            newline = self.lines.find("\n", start)
            if newline >= 0:
                self.cut_at = newline + 1
        return self.reached

    def cut(self, text: str) -> str:
        return text[:self.cut_at] if self.cut_at is not None else text

    def release(self, delta: str) -> str:
        """A stream's next delta in; what it may send now out ("" while all it has is held back)."""
        self.streamed += delta
        settled = self.settled(self.streamed)
        piece, self.sent = self.streamed[self.sent:settled], max(self.sent, settled)
        return piece

    def held(self, content: str) -> str:
        """At the end: the part of the answer's content the stream held back and has not sent."""
        return content[self.sent:]

    def settled(self, text: str) -> int:
        """How much of `text` (a prefix of what was fed) is sure to be in the answer: not past the cut, and, with
        n_indent, not a last line that has no text yet (whether it stays depends on the indentation to come)."""
        end = len(text) if self.cut_at is None else min(len(text), self.cut_at)
        text = self.lines[:len(text)] + text[len(self.lines):]      # (its line breaks, as far as they were fed)
        if self.n_indent and self.cut_at is None and "\n" in text:
            line_start = text.rfind("\n") + 1
            if not text[line_start:].strip():
                end = min(end, line_start)
        return end


_LONE_CR = re.compile(r"\r(?!\n|$)")     # a "\r" not before a "\n" (nor at the end, where one may follow)


def _dedent_at(text: str, n_indent: int, offset: int = 0) -> int | None:
    """Where the first line after the first that has text and is indented less than n_indent starts its text;
    looked for from the line starting at `offset` (a generation's text is fed a token at a time: looking again at
    every line on every token, each copying the rest of the text, took 6.7 s over 8,000 tokens)."""
    offset = offset or text.find("\n") + 1
    while 0 < offset < len(text):
        end = text.find("\n", offset)
        line = text[offset:end if end >= 0 else len(text)]
        indent = len(line) - len(line.lstrip(" \t"))
        if line.strip() and indent < n_indent:
            return offset + indent
        offset = text.find("\n", offset) + 1
    return None
