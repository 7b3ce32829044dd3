"""A differential fuzz of the warm server's caches: every greedy answer is what a cold engine gives for its prompt.

The warm server reuses work between requests: the KV cache's common prefix with the last prompt, llama.cpp's prompt
cache (`--cache-ram`: saved prompts restored), llama.cpp's cache reuse (approximate, only where a request asks),
prompt-lookup speculative decoding, bucketed prefill starts, sticky prompts in the session, and the cancellation of
a stream whose client left. Its promise: with greedy decoding and without cache reuse, the answer to a request is
what a fresh engine gives for the same prompt, whatever came before.

Here seeded sequences of editor requests (llama.cpp's /infill with input_extra and /completion, OpenAI completions
and chat, Ollama generate and chat, the command line's routes; edits within a line, lines deleted and llama.vim's
ring of chunks losing its oldest, moves, jumps between files far apart and back, long and short prompts and one that
fills the context, stop strings, penalties, bans, streams the client leaves after a few events or before the first,
requests it gives up waiting for, `cache_prompt: false`, requests that ask for `n_cache_reuse`) go over a loopback
socket to the real app under uvicorn, as `codecomplete serve` builds it (its warm-up, its prompt warmer, a small
`--cache-ram` that evicts). It runs in this process so that each call into its engine is seen: the prompt ids and
the generation config the server made of the request. Each call is then checked, before the next request runs,
against the oracle:

- the oracle is a second engine of the same model asked cold: no prompt cache, nothing reused (its cached prefix
  forgotten), every KV slot poisoned with NaN first (a slot it read without writing would turn its answer to NaN),
  decoding one token a step (no speculation), prefills unbucketed. Its answer is a function of the prompt and the
  config alone (`test_cache_fuzz.py` checks that it is the same, bit for bit, in any order);
- the warm answer's tokens, text and finish equal the oracle's (a stream cut short: a prefix of them); logprobs,
  where asked for, agree to a tolerance (the same numbers, summed in other orders: a prefix reused, a draft verified
  with the tokens around it, differ in their last bits);
- the KV slots the warm engine says are exact (those it would reuse for a request that asks for no cache reuse)
  hold what the oracle's prefill wrote for the same tokens, to a tolerance: a slot left from another prompt or moved
  by cache reuse differs by far more;
- what the client received (text, token ids, logprobs, per protocol) is the oracle's answer (a prefix, cut short);
- a prompt that has no history (a raw one; the command line's completions, which are not sticky) has the ids that a
  session without history makes of the same request.

A greedy choice between two tokens whose log-probabilities lie within `tie` of each other may go either way with the
order of a sum: such a divergence is counted as a tie, not as a failure (the tokens after it are not compared). The
tolerances are the noise of the engines' precision: float32 sums differ in their last bits (1e-5 in a logprob, 1e-5
in a slot's K/V). bfloat16 weights round products to 8 significant bits, and an 8-bit KV cache rounds a value the
other way for such a difference: there a logprob moves by up to a tenth of a nat and a deep layer's K/V by up to 10%,
and the checks are that much coarser (`--matmul-dtype`, `--kv-cache`: the script's only).
Requests that ask for cache reuse are approximate by design: only the KV check applies to them.

    python tests/app/cache_fuzz.py --seeds 0-19 --requests 30 [--vary] [--minimize] [--json FILE]

runs longer (the committed test runs two short sequences: tests/app/test_cache_fuzz.py); `--vary` draws each seed's
prompt budget, --cache-ram, bucket, server --cache-reuse and the GPU's decode order from a few.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

RECORD_WAIT_S = 120   # for the engine call of a stream the client left to end


@dataclass(frozen=True)
class Tolerances:
    tie: float        # nats between the oracle's choice and the warm one's: a tie the order of sums may break
    logprob: float    # a token's logprob, warm against cold
    kv: float         # a slot's cached keys or values, warm against a cold prefill's (kv_error)


FLOAT32 = Tolerances(tie=1e-3, logprob=1e-3, kv=1e-3)
BFLOAT16 = Tolerances(tie=0.5, logprob=0.5, kv=0.15)
EIGHT_BIT = Tolerances(tie=0.15, logprob=0.15, kv=0.15)     # a float32 model over an 8-bit KV cache


def tolerances(engine) -> Tolerances:
    if {engine.dtype, engine.matmul_dtype} != {"float32"}:
        return BFLOAT16
    return EIGHT_BIT if engine.kv_cache_dtype in ("int8", "fp8") else FLOAT32


# ---- the repository ---------------------------------------------------------------------------------------------

NOUNS = ["point", "segment", "polygon", "circle", "matrix", "vector", "record", "buffer", "reader", "writer",
         "parser", "token", "window", "layout", "cursor", "index", "span", "chunk", "budget", "score"]
VERBS = ["read", "write", "scale", "merge", "split", "count", "render", "check", "load", "store", "rank", "trim"]
FOLDERS = ["core/geometry", "core/units", "io/readers", "io/writers", "app/cli", "app/server", "tools/report"]


def _function(rng: random.Random) -> str:
    verb, noun, other = rng.choice(VERBS), rng.choice(NOUNS), rng.choice(NOUNS)
    args = ", ".join(rng.sample(NOUNS, rng.randint(1, 3)))
    body = rng.choice([
        f"    total = 0\n    for item in {other}s:\n        total += len(item)\n    return total\n",
        f"    if not {args.split(', ')[0]}:\n        raise ValueError(\"empty {noun}\")\n"
        f"    return [{other} for {other} in {args.split(', ')[0]} if {other}]\n",
        f"    result = {{}}\n    for key, value in {args.split(', ')[0]}.items():\n"
        f"        result[key] = value * 2\n    return result\n",
        f"    return {args.split(', ')[0]}.{verb}({rng.randint(0, 9)})\n",
    ])
    return f"def {verb}_{noun}({args}):\n    \"\"\"{verb.title()} the {noun} of each {other}.\"\"\"\n{body}"


def _class(rng: random.Random) -> str:
    noun = rng.choice(NOUNS)
    fields = rng.sample(NOUNS, rng.randint(2, 3))
    init = "".join(f"        self.{f} = {f}\n" for f in fields)
    methods = "".join(f"\n    def {rng.choice(VERBS)}_{f}(self):\n        return self.{f}\n" for f in fields)
    return f"class {noun.title()}:\n    def __init__(self, {', '.join(fields)}):\n{init}{methods}"


def repository_files(seed: int) -> dict[str, str]:
    """A small repository of Python modules in folders far apart (its text is a function of the seed)."""
    rng = random.Random(seed)
    files = {}
    for folder in FOLDERS:
        parts = [f'"""The {folder.rsplit("/", 1)[1]} module."""\nimport math\nimport os\n\n']
        if rng.random() < 0.4:      # special-token text in the code: text in a prompt, never the token
            parts.append(f'END = "<|endoftext|>"  # <file_sep>{folder}<|im_start|>\n\n\n')
        for _ in range(rng.randint(4, 9)):
            parts.append((_class if rng.random() < 0.3 else _function)(rng) + "\n\n")
        files[f"{folder}.py"] = "".join(parts).rstrip() + "\n"
    return files


def write_repository(root: Path, seed: int = 0) -> dict[str, str]:
    files = repository_files(seed)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return files


# ---- the requests -----------------------------------------------------------------------------------------------

TYPED = ["x", "_", "(", ")", " ", ".", "self", "return ", "0", ", ", "item", ":", "\n    ", "#", "é", "\"", "=="]
CONTEXT = 1024        # the engines' KV cache, in tokens
# A request's kind is a draw in [0, 1): below 0.4 llama.vim's /infill, then /completion, OpenAI's completions, Ollama's
# generate, the command line's routes, chat. These two pick one (the second: a raw prompt from the file's start).
INFILL, RAW_FROM_THE_START = 0.0, 0.5
NATIVE = "/codecomplete/v1/"
STOPS = [["\n"], ["\n\n"], ["("], [")", ":"], ["return"], [" "]]


@dataclass
class Spec:
    """One request as the client sends it."""
    path: str
    body: dict
    cut_after: int | None = None     # the client leaves after this many events of a stream (0: once the headers
                                     # came, the prompt built: mid-prefill), or after this many ms (not streamed)
    note: str = ""

    @property
    def streamed(self) -> bool:
        return bool(self.body.get("stream", self.path.startswith(("/api/", NATIVE))))

    @property
    def limited(self) -> bool:
        """A limit of llama.cpp's that the server applies to the text (n_indent, t_max_predict_ms) may cut it."""
        return bool(self.body.get("n_indent") or self.body.get("t_max_predict_ms"))

    @property
    def fills_only(self) -> bool:
        """n_predict 0: llama.cpp reads the prompt into the cache and answers no text."""
        return self.path == "/infill" and self.body.get("n_predict") == 0


class Editor:
    """Buffers as an editor holds them, a cursor in each, and the files visited (llama.vim's ring of chunks)."""

    def __init__(self, files: dict[str, str], rng: random.Random) -> None:
        self.rng, self.buffers = rng, dict(files)
        self.cursor = {path: rng.randrange(len(text)) for path, text in files.items()}
        self.path = rng.choice(sorted(files))
        self.visited = [self.path]
        self.ring: list[dict] = []

    def snapshot(self) -> Editor:
        """A copy that the edits to come leave as it is."""
        copy = Editor.__new__(Editor)
        copy.__dict__.update(self.__dict__, buffers=dict(self.buffers), cursor=dict(self.cursor),
                             visited=list(self.visited), ring=list(self.ring))
        return copy

    def act(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.5:
            return self.type()
        if roll < 0.62:
            text = self.buffers[self.path]
            self.cursor[self.path] = min(len(text), max(0, self.cursor[self.path] + rng.choice([-80, -30, 30, 80])))
            return "move"
        if roll < 0.75:
            return self.cut_lines()
        if roll < 0.87 and len(self.visited) > 1:
            return self.jump(rng.choice(self.visited[-4:-1]), "back")
        return self.jump(rng.choice(sorted(set(self.buffers) - {self.path})), "jump")

    def cut_lines(self) -> str:
        """A few lines above the cursor deleted (or llama.vim's ring dropping its oldest chunk): what follows them
        in the last prompt is what cache reuse moves back."""
        if self.ring and self.rng.random() < 0.4:
            self.ring = self.ring[1:]
            return "ring drop"
        text, at = self.buffers[self.path], self.cursor[self.path]
        starts = [0] + [i + 1 for i, c in enumerate(text[:at]) if c == "\n"]
        if len(starts) < 8:
            return self.type()
        first = self.rng.randrange(len(starts) - 7)
        count = self.rng.randint(1, 5)
        begin, end = starts[first], starts[first + count]
        self.buffers[self.path], self.cursor[self.path] = text[:begin] + text[end:], at - (end - begin)
        return f"cut {count} lines"

    def type(self) -> str:
        text, at = self.buffers[self.path], self.cursor[self.path]
        if self.rng.random() < 0.2 and at > 0 and text[at - 1] != "\n":
            self.buffers[self.path], self.cursor[self.path] = text[:at - 1] + text[at:], at - 1
            return "delete"
        piece = self.rng.choice(TYPED)
        self.buffers[self.path], self.cursor[self.path] = text[:at] + piece + text[at:], at + len(piece)
        return f"type {piece!r}"

    def jump(self, path: str, how: str) -> str:
        old = self.buffers[self.path]
        start = old.rfind("\n", 0, max(0, self.cursor[self.path] - 200)) + 1
        chunk = {"filename": self.path, "text": old[start:start + 240]}
        self.ring = [c for c in self.ring if c["filename"] != self.path][-2:] + [chunk]
        self.path = path
        self.visited = [p for p in self.visited if p != path] + [path]
        return f"{how} {path}"

    def around(self) -> tuple[str, str, str]:
        """The lines above the cursor, its line up to it, and the rest (llama.vim's input_prefix, prompt, suffix)."""
        text, at = self.buffers[self.path], self.cursor[self.path]
        line_start = text.rfind("\n", 0, at) + 1
        return text[:line_start], text[line_start:at], text[at:]


def sequence(seed: int, n: int, files: dict[str, str], tokenizer=None) -> list[Spec]:
    """`n` requests of a seeded editing session: a function of the seed and the files alone (not of any answer)."""
    rng = random.Random(seed)
    editor = Editor(files, rng)
    specs = []
    while len(specs) < n:
        before = editor.snapshot()
        action = editor.act()
        if action == "ring drop" or action.startswith("cut"):
            # What cache reuse is for: the prompt as it was, then the same request without a chunk or a few lines in
            # its middle (llama.vim's /infill, or a raw prompt from the file's start), often asking for cache reuse.
            kind = INFILL if action == "ring drop" or rng.random() < 0.4 else RAW_FROM_THE_START
            specs.append(_request(rng, before, f"before the {action}", tokenizer, kind=kind, plain=True))
            specs.append(_request(rng, editor, action, tokenizer, kind=kind))
        else:
            specs.append(_request(rng, editor, action, tokenizer))
    return specs[:n]


def _llama_cpp_sampling(rng: random.Random) -> dict:
    """Greedy choices through llama.cpp's chains: its default, llama.vim's with a temperature, penalties, a ban,
    mirostat (which stays greedy at temperature 0)."""
    roll = rng.random()
    if roll < 0.4:
        return {}
    if roll < 0.6:
        return {"samplers": ["top_k", "top_p", "infill", "temperature"]}
    if roll < 0.8:
        return {"samplers": ["penalties", "top_k", "temperature"], "repeat_penalty": rng.choice([1.0, 1.3]),
                "presence_penalty": rng.choice([0.0, 0.5]), "frequency_penalty": rng.choice([0.0, 0.5])}
    if roll < 0.9:
        return {"logit_bias": [[rng.choice(["(", "\n", " return", ":"]), False]]}
    return {"mirostat": 2}


def _request(rng: random.Random, editor: Editor, action: str, tokenizer, kind: float | None = None,
             plain: bool = False) -> Spec:
    """A request at the editor's cursor; `kind` picks the protocol (as the draw below does: INFILL...), `plain` asks
    for no cache fields and no cut."""
    above, line, below = editor.around()
    n = rng.randint(1, 6) if rng.random() < 0.9 else rng.randint(12, 24)    # longer: drafts accepted, or not
    stop = rng.choice(STOPS) if rng.random() < 0.2 else []
    stream = rng.random() < 0.45
    cut = rng.randint(0, 3) if stream and rng.random() < 0.45 else None
    if not stream and rng.random() < 0.06:
        cut = rng.choice([50, 300, 1000])        # ms: the client gives up waiting (queued, prefilling, decoding)
    cache = {}
    if rng.random() < 0.1:
        cache["cache_prompt"] = False
    if rng.random() < (0.7 if action.startswith(("cut", "ring")) else 0.08):
        cache["n_cache_reuse"] = rng.choice([4, 16, 0])     # (0: off, where the server's --cache-reuse is on)
    if plain:
        cut, cache = None, {}
    kind = rng.random() if kind is None else kind
    where = f"{editor.path}@{editor.cursor[editor.path]}"
    if tokenizer is not None and rng.random() < 0.03 and not plain:
        # The whole repository's last tokens as ids, up to a few short of the context: the answer ends where it fills
        ids = tokenizer.encode("".join(editor.buffers.values()), add_special_tokens=False)
        body = {"prompt": ids[-(CONTEXT - rng.randint(1, 12)):], "n_predict": 16, "temperature": 0.0,
                "stream": stream, "return_tokens": True}
        return Spec("/completion", body, cut, f"{action}; completion filling the context")
    if kind < 0.4:
        body = {"id_slot": 0, "input_prefix": above[-2400:], "prompt": line, "input_suffix": below[:800],
                "input_extra": list(editor.ring), "n_predict": 0 if rng.random() < 0.08 and not plain else n,
                "stop": stop, "n_indent": 0, "top_k": 40, "top_p": 0.9, "temperature": 0.0, "stream": stream,
                "t_max_predict_ms": 0, "ignore_eos": rng.random() < 0.2, "return_tokens": True, "response_fields": [],
                **cache}
        body.update(_llama_cpp_sampling(rng))
        if rng.random() < 0.15:
            body["n_probs"] = rng.randint(1, 3)
        if rng.random() < 0.1:
            body["n_indent"] = rng.choice([1, 4])
        elif rng.random() < 0.05:
            body["t_max_predict_ms"] = 1
        return Spec("/infill", body, cut if body["n_predict"] else None, f"{action}; infill {where}")
    if kind < 0.55:
        text = above + line
        prompt = text if kind == RAW_FROM_THE_START else text[-rng.choice([60, 200, 600, 3000]):]
        if tokenizer is not None and rng.random() < 0.15:
            prompt = tokenizer.encode(prompt, add_special_tokens=False)
        body = {"prompt": prompt, "n_predict": n, "temperature": 0.0, "stream": stream, "stop": stop,
                "return_tokens": True, **cache, **_llama_cpp_sampling(rng)}
        if rng.random() < 0.2:
            body["n_probs"] = rng.randint(1, 3)
        return Spec("/completion", body, cut, f"{action}; completion {where}")
    if kind < 0.68:
        body = {"model": "codecomplete", "prompt": (above + line)[-1500:], "max_tokens": n, "temperature": 0,
                "stream": stream, **({"stop": stop} if stop else {}), **cache}
        if rng.random() < 0.5:
            body["suffix"] = below[:400]
        if rng.random() < 0.25:
            body["logprobs"] = rng.randint(0, 3)
        return Spec("/v1/completions", body, cut, f"{action}; v1 completion {where}")
    if kind < 0.8:
        body = {"model": "codecomplete", "prompt": (above + line)[-1500:], "stream": stream,
                "options": {"temperature": 0, "num_predict": n, **({"stop": stop} if stop else {})}}
        if rng.random() < 0.5:
            body["suffix"] = below[:400]
        elif rng.random() < 0.3:
            body["raw"] = True
        if rng.random() < 0.2:
            body.update(logprobs=True, top_logprobs=rng.randint(0, 2))
        return Spec("/api/generate", body, cut, f"{action}; ollama generate {where}")
    if kind < 0.88:     # the command line's: no sticky context, so a session without history builds the same prompt
        text = editor.buffers[editor.path]
        options = {"max_tokens": n, "temperature": 0, "context_tokens": rng.choice([120, 200, 300])}
        if rng.random() < 0.25:
            return Spec("/codecomplete/v1/raw", {"prompt": (above + line)[-800:], **options}, cut,
                        f"{action}; command line raw {where}")
        body = {"path": editor.path, "text": text, "line": above.count("\n") + 1, "col": len(line) + 1, **options}
        return Spec("/codecomplete/v1/complete", body, cut, f"{action}; command line complete {where}")
    question = f"What does this code do?\n{(above + line)[-300:]}"
    messages = [{"role": "user", "content": question}]
    if rng.random() < 0.5:
        body = {"model": "codecomplete", "messages": messages, "max_tokens": n, "temperature": 0, "stream": stream,
                **cache}
        if rng.random() < 0.25:
            body.update(logprobs=True, top_logprobs=rng.randint(0, 2))
        return Spec("/v1/chat/completions", body, cut, f"{action}; chat {where}")
    body = {"model": "codecomplete", "messages": messages, "stream": stream,
            "options": {"temperature": 0, "num_predict": n}}
    return Spec("/api/chat", body, cut, f"{action}; ollama chat {where}")


# ---- what the client saw ----------------------------------------------------------------------------------------


@dataclass
class Seen:
    status: int
    text: str = ""
    ids: list[int] | None = None          # where the protocol gives the generated ids
    logprobs: list[float] | None = None   # where it gives them
    cut: bool = False                     # the client left before the end
    gave_up: bool = False                 # ... without an answer, not knowing whether its request began
    prompt_ids: list[int] | None = None   # the command line's routes say what they prompt with
    error: str = ""


def send(client, spec: Spec) -> Seen:
    """Send the request, read the answer (or the first `cut_after` events of its stream, then close)."""
    import httpx

    if not spec.streamed:
        try:
            timeout = spec.cut_after / 1000 if spec.cut_after is not None else 300
            response = client.post(spec.path, json=spec.body, timeout=timeout)
        except httpx.TimeoutException:
            return Seen(0, cut=True, gave_up=True)
        if response.status_code != 200:
            return Seen(response.status_code, error=response.text[:300])
        return _whole(spec, response.json())
    seen = Seen(200, ids=[] if spec.path in ("/infill", "/completion") else None)
    with client.stream("POST", spec.path, json=spec.body) as response:
        if response.status_code != 200:
            return Seen(response.status_code, error=response.read().decode()[:300])
        events = 0
        if spec.cut_after == 0:
            seen.cut = True
            return seen
        for line in response.iter_lines():
            event = _event(spec.path, line)
            if event is None:
                continue
            if "error" in event:
                seen.error = json.dumps(event)[:300]
                return seen
            if spec.path.startswith(NATIVE) and ("prompt" in event or "result" in event):
                seen.prompt_ids = event["prompt"]["ids"] if "prompt" in event else seen.prompt_ids
                if "result" in event:
                    seen.ids = event["result"]["token_ids"][event["result"]["healing_tokens"]:]
                continue
            text, ids, logprobs = _piece(spec.path, event)
            seen.text += text
            if ids is not None and seen.ids is not None:
                seen.ids += ids
            if logprobs:
                seen.logprobs = (seen.logprobs or []) + logprobs
            events += bool(text)
            if spec.cut_after is not None and events >= spec.cut_after:
                seen.cut = True
                return seen      # (leaving the block closes the connection: the server sees the client go)
    return seen


def _event(path: str, line: str) -> dict | None:
    if path.startswith(("/api/", NATIVE)):
        return json.loads(line) if line.strip() else None
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    return json.loads(line[6:])


def _piece(path: str, event: dict) -> tuple[str, list[int] | None, list[float]]:
    """A streamed event's text, ids and logprobs."""
    if path in ("/infill", "/completion"):
        return (event.get("content", ""), event.get("tokens", []),
                [p["logprob"] for p in event.get("completion_probabilities", [])])
    if path == "/v1/completions":
        choice = (event.get("choices") or [{}])[0]
        return choice.get("text", ""), None, list((choice.get("logprobs") or {}).get("token_logprobs") or [])
    if path == "/v1/chat/completions":
        choice = (event.get("choices") or [{}])[0]
        content = (choice.get("logprobs") or {}).get("content") or []
        return (choice.get("delta") or {}).get("content") or "", None, [x["logprob"] for x in content]
    if path.startswith(NATIVE):
        return event.get("text", ""), None, []
    text = event.get("response", "") if path == "/api/generate" else (event.get("message") or {}).get("content", "")
    return text, None, [x["logprob"] for x in event.get("logprobs") or []]


def _whole(spec: Spec, answer: dict) -> Seen:
    path = spec.path
    if path in ("/infill", "/completion"):
        return Seen(200, answer["content"], answer["tokens"] if spec.body.get("return_tokens") else None,
                    [p["logprob"] for p in answer.get("completion_probabilities", [])] or None)
    if path == "/v1/completions":
        choice = answer["choices"][0]
        return Seen(200, choice["text"], None, (choice.get("logprobs") or {}).get("token_logprobs"))
    if path == "/v1/chat/completions":
        choice = answer["choices"][0]
        content = (choice.get("logprobs") or {}).get("content")
        return Seen(200, choice["message"]["content"], None, [x["logprob"] for x in content] if content else None)
    text = answer["response"] if path == "/api/generate" else answer["message"]["content"]
    return Seen(200, text, None, [x["logprob"] for x in answer.get("logprobs") or []] or None)


# ---- the oracle and the checks ----------------------------------------------------------------------------------


class ColdOracle:
    """An engine asked cold every time: no prompt cache, nothing reused, every KV slot NaN before the call, one token a
    step, unbucketed prefills. Its answer depends on the prompt and the config only."""

    def __init__(self, engine) -> None:
        self.engine = engine
        engine.keep_prompts(0)
        engine.prefill_bucket = 0

    def answer(self, prompt: list[int], config):
        """The cold answer to `prompt` under `config` (decoded one token a step, whatever its speculation)."""
        import torch

        self._forget()
        with torch.no_grad():
            return self.engine.generate(prompt, replace(config, speculate=0, cache_reuse=0))

    def logprobs_after(self, ids: list[int]):
        """The model's log-probabilities (V,) of the token after `ids`, by a cold prefill: where two answers part, how
        far apart their choices lie, whatever healing or a ban allowed there."""
        import torch

        self._forget()
        with torch.no_grad():
            logits = self.engine._prefill(list(ids), 0, 0)                                   # (1, V)
        self.engine.clear_prefix_cache()
        return torch.log_softmax(logits[0].float(), dim=-1)

    def _forget(self) -> None:
        """Nothing cached, and NaN in every KV slot (an int8 cache: its scales, which every read takes)."""
        self.engine.clear_prefix_cache()
        for layer in self.engine.model.layers:
            cache = layer.attention.kv_cache
            for t in (cache.k, cache.v, cache.k_scale, cache.v_scale):
                if t is not None and t.is_floating_point():
                    t.fill_(math.nan)


@dataclass
class Record:
    """One call into the warm engine, and what the checks found."""
    prompt: list[int]
    config: object
    warm: object
    cold: object
    problems: list[str] = field(default_factory=list)
    tie: str = ""
    kv_error: float = 0.0        # kv_error's


class Recorder:
    """Wraps the warm engine's `generate`: each call is checked against the oracle on the engine thread, before the
    next request can change the cache."""

    def __init__(self, engine, oracle: ColdOracle, wrap: Callable | None = None) -> None:
        """`wrap(engine, generate)`: a stand-in for the engine's generate to check instead (a test's injected bug)."""
        self.engine, self.oracle = engine, oracle
        self.tol = tolerances(engine)
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self._real = wrap(engine, engine.generate) if wrap is not None else engine.generate

    def install(self) -> None:
        self.engine.generate = self.generate

    def remove(self) -> None:
        self.engine.__dict__.pop("generate", None)

    def generate(self, prompt_ids, config, on_text=None, should_stop=None):
        warm = self._real(prompt_ids, config, on_text=on_text, should_stop=should_stop)
        record = Record(list(prompt_ids), config, warm, None)
        try:
            record.cold = self.oracle.answer(record.prompt, config)
            record.kv_error, where = kv_error(self.engine, self.oracle.engine)
            if record.kv_error > self.tol.kv:
                record.problems.append(f"KV: {where} is {record.kv_error:.3g} from a cold prefill's")
            answer_problems, record.tie = compare(record, self.tol, self.oracle.logprobs_after)
            record.problems += answer_problems
        except Exception as exc:          # the check's own failure is a finding too
            record.problems.append(f"checking raised {type(exc).__name__}: {exc}")
        with self.lock:
            self.records.append(record)
        return warm


def kv_error(warm_engine, cold_engine) -> tuple[float, str]:
    """How far the warm engine's exact KV slots (its cached tokens, up to where cache reuse's approximate ones begin)
    lie from the oracle's prefill of the same tokens: the largest relative error of one slot's keys or values in one
    layer (the norm of the difference over the norm of the cold ones), and where it is. A slot that holds another
    token's K/V, or a moved one's, is off by tenths or more; the noise of a sum's order by 1e-6 in float32."""
    import torch

    from models.cache_reuse import common_run

    claimed, approximate = warm_engine._cached_ids, warm_engine._approximate_from
    exact = len(claimed) if approximate is None else min(approximate, len(claimed))
    cold_ids = cold_engine._cached_ids
    n = common_run(claimed, 0, cold_ids, 0, min(exact, len(cold_ids)))
    worst, where = 0.0, ""
    for i, (w, c) in enumerate(zip(warm_engine.model.layers, cold_engine.model.layers)):
        warm_view = w.attention.kv_cache.rows(0, 1).prefix(n)
        cold_view = c.attention.kv_cache.rows(0, 1).prefix(n)
        for name, a, b in zip("KV", warm_view.dequantized(torch.float32), cold_view.dequantized(torch.float32)):
            errors = ((a - b).norm(dim=(1, 3)) / (b.norm(dim=(1, 3)) + 1e-6))[0]            # (n,)
            errors = torch.where(errors.isnan(), torch.inf, errors)
            if n and errors.max().item() > worst:
                slot = int(errors.argmax())
                worst = errors.max().item()
                where = f"layer {i} {name} slot {slot} (of {n} exact, token {claimed[slot]})"
    return worst, where


def compare(record: Record, tol: Tolerances, logprobs_after: Callable) -> tuple[list[str], str]:
    """The warm answer against the cold one: (problems, a tie's description or ""). `logprobs_after(ids)`: the
    oracle's distribution of the next token."""
    warm, cold, config = record.warm, record.cold, record.config
    if config.cache_reuse:
        return [], ""
    w, c = warm.token_ids, cold.token_ids
    cut = warm.finish_reason == "cancelled"
    i = next((i for i, (a, b) in enumerate(zip(w, c)) if a != b), None)
    if i is not None:
        logprobs = logprobs_after(record.prompt + c[:i])
        gap = (logprobs[c[i]] - logprobs[w[i]]).item()
        parted = f"at token {i}: warm {w[i]}, cold {c[i]}, {gap:.2g} nats apart for a cold engine"
        if abs(gap) <= tol.tie:
            return [], parted
        return [f"tokens differ {parted}: warm {w} cold {c}"], ""
    problems = []
    if cut:
        if len(w) > len(c) or not (cold.text + (cold.stop_string or "")).startswith(warm.text):
            problems.append(f"cancelled answer {warm.text!r} {w} is no prefix of the cold {cold.text!r} {c}")
    elif w != c or warm.text != cold.text or warm.finish_reason != cold.finish_reason:
        problems.append(f"answer: warm {warm.text!r} {w} {warm.finish_reason}, cold {cold.text!r} {c} "
                        f"{cold.finish_reason}")
    if config.logprobs is not None and warm.logprobs is not None:
        for i, (a, b) in enumerate(zip(warm.logprobs, cold.logprobs)):
            if abs(a.logprob - b.logprob) > tol.logprob:
                problems.append(f"logprob of token {i}: warm {a.logprob:.6f} cold {b.logprob:.6f}")
                break
    return problems, ""


def client_problems(spec: Spec, seen: Seen, record: Record, tol: Tolerances) -> list[str]:
    """What the client received against the oracle's answer, as the protocol writes it."""
    if record.config.cache_reuse or record.tie or record.cold is None:
        return []
    cold = record.cold
    if seen.error:
        return [f"error event: {seen.error}"]
    expected = "" if spec.fills_only else cold.text
    partial = seen.cut or record.warm.finish_reason == "cancelled" or spec.limited
    if partial:
        if not expected.startswith(seen.text):
            return [f"client got {seen.text!r}, no prefix of the cold {expected!r}"]
    elif seen.text != expected:
        return [f"client got {seen.text!r}, the cold answer is {expected!r}"]
    problems = []
    ids = [] if spec.fills_only else cold.token_ids[cold.healing_tokens:]
    if seen.ids is not None and seen.ids != ids[:len(seen.ids)]:
        problems.append(f"client ids {seen.ids} against the cold {ids}")
    if seen.ids is not None and not partial and not spec.streamed and seen.ids != ids:
        problems.append(f"client ids {seen.ids} against the cold {ids}")
    if seen.logprobs:
        values = [entry.logprob for entry in cold.logprobs[cold.healing_tokens:]]
        for i, (a, b) in enumerate(zip(seen.logprobs, values)):
            if abs(a - b) > tol.logprob:
                problems.append(f"client logprob {i}: {a:.6f} against the cold {b:.6f}")
                break
    return problems


# ---- the warm server --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    context_tokens: int = 320     # the server's prompt budget
    max_tokens: int = 16          # a request's limit when it sets none
    cache_ram_mib: int = 24       # --cache-ram: a few saved prompts of the embedded model, then the oldest go
    bucket: int = 32              # prefill starts and ends snapped to this many tokens (a GPU's 128; 0: off)
    cache_reuse: int = 0          # --cache-reuse: then only requests that turn it off are compared
    lookahead: bool = False       # plain decoding queues step t + 1 before it reads token t, as on a GPU


@contextmanager
def warm_server(engine, oracle: ColdOracle, root: Path, settings: Settings, wrap: Callable | None = None):
    """The app as `codecomplete serve` builds it (its warm-up, its prompt warmer, --cache-ram) on a loopback port
    under uvicorn in a thread; yields (url, recorder, worker). The engine is left as it was found; `wrap`: the
    Recorder's, from the first request on."""
    import uvicorn

    from codecomplete.server import serve, warming
    from codecomplete.server.app import Server, create_app
    from codecomplete.session import Session
    from prompts import index_repository

    session = Session(engine, index_repository(root), settings.context_tokens)
    budget = session.prompt_budget(settings.max_tokens)
    warmer = warming.PromptWarmer(session, budget)
    bucket, lookahead = engine.prefill_bucket, engine._lookahead
    server = Server(session, max_tokens=settings.max_tokens, api_key=None, info={}, idle=warmer.step,
                    warm_up=lambda: serve._warm_up(session, budget, warmer, settings.cache_ram_mib),
                    cache_reuse=settings.cache_reuse)
    recorder = Recorder(engine, oracle, wrap)
    listener = serve._listen("127.0.0.1", 0)
    running = uvicorn.Server(uvicorn.Config(create_app(server), log_level="warning", access_log=False,
                                            lifespan="off", http=serve._Connection))
    thread = threading.Thread(target=running.run, kwargs={"sockets": [listener]}, daemon=True)
    try:
        server.worker.wait_ready()
        # (after the warm-up, which on a CPU prefills no spans: with buckets it prefills each, seconds a start here)
        engine.prefill_bucket, engine._lookahead = settings.bucket, settings.lookahead
        recorder.install()
        thread.start()
        while not running.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        host, port = listener.getsockname()[:2]
        yield f"http://{host}:{port}", recorder, server.worker
    finally:
        running.should_exit = True
        if thread.is_alive():
            thread.join(30)
        server.worker.shutdown()
        listener.close()
        recorder.remove()
        engine.prefill_bucket, engine._lookahead = bucket, lookahead
        engine.keep_prompts(0)
        engine.clear_prefix_cache()


@dataclass
class Finding:
    seed: int
    step: int
    spec: Spec
    problems: list[str]


@dataclass
class Outcome:
    requests: int = 0
    engine_calls: int = 0
    ties: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    restored: int = 0         # calls that took a saved prompt back
    moved: int = 0            # calls that moved runs (cache reuse)
    reused: int = 0           # calls that reused a prefix
    cancelled: int = 0        # calls a client left
    kv_error: float = 0.0     # the largest kv_error of a call
    prompts: int = 0          # calls whose prompt a session without history built again (prompt_problems)


def run_sequence(engine, oracle: ColdOracle, root: Path, specs: list[Spec], settings: Settings, seed: int = 0,
                 wrap: Callable | None = None) -> Outcome:
    """Send `specs` in order to a fresh warm server, each as soon as the last one's answer came (or its client left:
    the next request then waits behind the one winding down, as an editor's does); every engine call and every answer
    checked. Calls are matched to requests by their order: the engine runs requests in the order they came."""
    import httpx

    from codecomplete.session import Session
    from prompts import index_repository

    outcome = Outcome()
    with warm_server(engine, oracle, root, settings, wrap) as (url, recorder, worker):
        step_of: list[int] = []           # the request behind each engine call
        seen_at: dict[int, Seen] = {}
        with httpx.Client(base_url=url, timeout=300) as client:
            for step, spec in enumerate(specs):
                seen = send(client, spec)
                outcome.requests += 1
                if seen.gave_up:          # it may have run or not: known once the engine is idle
                    _wait_idle(worker)
                    step_of += [step] * (len(recorder.records) - len(step_of))
                    continue
                if seen.status != 200:
                    outcome.findings.append(Finding(seed, step, spec, [f"status {seen.status}: {seen.error}"]))
                    continue
                step_of.append(step)      # (its prompt was built: its job began)
                seen_at[step] = seen
        _wait_idle(worker)
        records = list(recorder.records)
    if len(records) != len(step_of):
        outcome.findings.append(Finding(seed, len(specs) - 1, specs[-1], [f"{len(records)} engine calls for "
                                                                         f"{len(step_of)} requests that began"]))
        return outcome
    fresh = Session(oracle.engine, index_repository(root))
    for record, step in zip(records, step_of):
        _count(outcome, record)
        prompt = prompt_problems(fresh, specs[step], seen_at.get(step), record)
        outcome.prompts += prompt is not None
        problems = record.problems + (prompt or [])
        if step in seen_at:
            problems = problems + client_problems(specs[step], seen_at[step], record, tolerances(engine))
        if problems:
            outcome.findings.append(Finding(seed, step, specs[step], problems))
    return outcome


def prompt_problems(fresh, spec: Spec, seen: Seen | None, record: Record) -> list[str] | None:
    """Where a request's prompt does not depend on what came before, its ids against those a session without history
    (`fresh`, over the same repository) makes of it: a raw prompt (/completion, /v1/completions without a suffix, the
    command line's raw), and the command line's completions, which are not sticky (it prints what it prints alone).
    The command line's routes also say which ids they prompt with. None: the request's prompt has a history."""
    from codecomplete import engines
    from codecomplete.session import Sampling

    body = spec.body
    sampling = Sampling(max_tokens=max(1, body.get("max_tokens", 1)))
    raw = ((spec.path == "/completion" and not body.get("logit_bias"))
           or (spec.path == "/v1/completions" and "suffix" not in body) or spec.path == NATIVE + "raw")
    if raw and isinstance(body["prompt"], str):
        ids = fresh.raw(body["prompt"], sampling=sampling).prompt.ids
    elif spec.path == NATIVE + "complete":
        budget = engines.prompt_budget(fresh.engine, body["context_tokens"], sampling.max_tokens)
        ids = fresh.complete(body["path"], text=body["text"], line=body["line"], col=body["col"], sampling=sampling,
                             budget=budget, sticky=False, room=budget + sampling.max_tokens).prompt.ids   # (native's)
    else:
        return None
    problems = [] if ids == record.prompt else [f"prompt ids {record.prompt} against a fresh session's {ids}"]
    if seen is not None and seen.prompt_ids is not None and seen.prompt_ids != record.prompt:
        problems.append(f"the server says it prompts with {seen.prompt_ids}, its engine got {record.prompt}")
    return problems


def _wait_idle(worker, timeout: float = RECORD_WAIT_S) -> None:
    """Until the engine thread has no job running or waiting (a request the client left may still wind down)."""
    deadline = time.monotonic() + timeout
    time.sleep(0.2)           # (a request whose client left at once may still be on its way to the queue)
    while worker._live and time.monotonic() < deadline:
        time.sleep(0.02)


def _count(outcome: Outcome, record: Record) -> None:
    timings = record.warm.timings
    outcome.engine_calls += 1
    outcome.restored += timings.restored_tokens > 0
    outcome.moved += timings.moved_tokens > 0
    outcome.reused += record.warm.reused_prefix_tokens > 0
    outcome.cancelled += record.warm.finish_reason == "cancelled"
    outcome.kv_error = max(outcome.kv_error, record.kv_error)
    if record.tie:
        outcome.ties.append(record.tie)


def minimize(fails: Callable[[list[Spec]], bool], specs: list[Spec]) -> list[Spec]:
    """The shortest sublist found (one request dropped at a time, from the end) that still fails."""
    specs = list(specs)
    changed = True
    while changed:
        changed = False
        for i in reversed(range(len(specs) - 1)):       # (the last one is where the failure shows)
            trial = specs[:i] + specs[i + 1:]
            if fails(trial):
                specs, changed = trial, True
    return specs


# ---- the long run -----------------------------------------------------------------------------------------------


def load_engines(**options):
    """The embedded model twice, with the same `options` (load_model's): the warm server's engine and the oracle's."""
    from models import load_model

    return tuple(load_model(device="cpu", max_context=CONTEXT, **options) for _ in range(2))


def _seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9", help="a seed or a range, e.g. 0-19")
    parser.add_argument("--requests", type=int, default=30, help="requests per sequence")
    parser.add_argument("--context-tokens", type=int, default=Settings.context_tokens)
    parser.add_argument("--cache-ram", type=int, default=Settings.cache_ram_mib)
    parser.add_argument("--bucket", type=int, default=Settings.bucket)
    parser.add_argument("--kv-cache", choices=["int8", "fp8"], help="8-bit KV caches in both engines")
    parser.add_argument("--matmul-dtype", choices=["bfloat16"], help="bfloat16 weights (a CPU server's default)")
    parser.add_argument("--vary", action="store_true",
                        help="each seed's budget, --cache-ram (small, none, no limit) and bucket drawn from a few")
    parser.add_argument("--minimize", action="store_true", help="shorten each failing sequence")
    parser.add_argument("--json", help="write the outcome here")
    args = parser.parse_args(argv)
    import tempfile

    settings = Settings(context_tokens=args.context_tokens, cache_ram_mib=args.cache_ram, bucket=args.bucket)
    warm, cold = load_engines(kv_cache=args.kv_cache, matmul_dtype=args.matmul_dtype)
    oracle = ColdOracle(cold)
    total, report = Outcome(), []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cache-fuzz-") as folder:
        root = Path(folder) / "repo"
        files = write_repository(root)
        for seed in _seeds(args.seeds):
            if args.vary:
                pick = random.Random(f"settings {seed}").choice
                settings = Settings(context_tokens=pick([200, 320, 480]), cache_ram_mib=pick([24, 1, 0, -1, 8]),
                                    bucket=pick([32, 0, 16, 128]), cache_reuse=pick([0, 0, 0, 16]),
                                    lookahead=pick([False, True]))
                print(f"seed {seed}: {settings}", flush=True)
            specs = sequence(seed, args.requests, files, warm.tokenizer)
            outcome = run_sequence(warm, oracle, root, specs, settings, seed)
            for name in ("requests", "engine_calls", "restored", "moved", "reused", "cancelled", "prompts"):
                setattr(total, name, getattr(total, name) + getattr(outcome, name))
            total.ties += outcome.ties
            total.kv_error = max(total.kv_error, outcome.kv_error)
            print(f"seed {seed}: {outcome.requests} requests, {len(outcome.findings)} failing, "
                  f"{len(outcome.ties)} ties, {outcome.restored} restored, {outcome.moved} moved, "
                  f"{outcome.cancelled} cancelled, KV error {outcome.kv_error:.2g} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            for tie in outcome.ties:
                print("    tie", tie, flush=True)
            for finding in outcome.findings:
                entry = {"seed": seed, "step": finding.step, "note": finding.spec.note, "problems": finding.problems}
                print("   ", json.dumps(entry)[:1500], flush=True)
                if args.minimize:
                    failing = specs[:finding.step + 1]
                    short = minimize(lambda trial: bool(run_sequence(warm, oracle, root, trial, settings,
                                                                     seed).findings), failing)
                    entry["minimal"] = [{"path": s.path, "body": s.body, "cut_after": s.cut_after, "note": s.note}
                                        for s in short]
                    print("    minimal:", json.dumps(entry["minimal"])[:4000], flush=True)
                report.append(entry)
                total.findings.append(finding)
    print(f"{total.requests} requests ({total.engine_calls} engine calls: {total.reused} reused a prefix, "
          f"{total.restored} restored a saved prompt, {total.moved} moved runs, {total.cancelled} cancelled; "
          f"{total.prompts} prompts built again without history), "
          f"{len(total.findings)} failing, {len(total.ties)} ties, largest KV error {total.kv_error:.2g}, "
          f"{time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "requests": total.requests,
                                               "engine_calls": total.engine_calls, "ties": total.ties,
                                               "findings": report}, indent=1))
    return 1 if total.findings else 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("CODECOMPLETE_CPU_BF16", "0")
    sys.path[:0] = [str(Path(__file__).resolve().parents[2])]
    sys.exit(main())
