"""Token log-probabilities in the shapes each API answers with, from the engine's models.TokenLogprobs (the model's
own distribution: the raw logits' log-softmax, before the logit bias and the samplers, as vLLM, llama.cpp and Ollama
report them by default).

/v1/completions, `logprobs: N` (0..5): `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, each token's
text, its logprob, a map of the top N tokens' texts to their logprobs with the chosen token's added (so up to
N + 1 entries, as OpenAI documents), and where each token's text begins in the returned text (vLLM's offsets, from 0;
OpenAI's legacy API counted the prompt's characters too, and `echo`, which would return the prompt, is refused): the
characters the tokens before it made, so that a character written in several tokens (an emoji's bytes) leaves no gap,
and a token that completes the healed end of the prompt (its first characters are the prompt's) begins at 0. The
tokens a stop string cut are listed too, as vLLM lists them (its token ids and logprobs keep them; only the text is
cut), so their offsets go on counting the characters they wrote, past the end of the returned text.
/v1/chat/completions, `logprobs: true` with `top_logprobs` (0..20): `{"content": [{"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob", "bytes"}]}]}`. A stream's chunk carries its own tokens' logprobs.

llama.cpp's /completion and /infill, `n_probs` N (ggml-org/llama.cpp's tools/server, the current stored snapshot:
server-task.cpp at 00efb3e, completion_token_output::probs_vector_to_json; server-context.cpp at 001d906,
populate_token_probs and send_final_response):
`completion_probabilities`, one `{"id", "token", "bytes", "logprob", "top_logprobs": [{"id", "token", "bytes",
"logprob"}]}` per token (N alternatives; llama.cpp takes no more than the vocabulary has), in the answer, or in each
streamed chunk for the tokens it carries (`tokens`); with `post_sampling_probs`, `prob` and `top_probs`: the
probabilities of the distribution the token was drawn from, after the sampler chain, the tokens it left out (0) not
listed, so there may be fewer than N (greedy: the chosen token alone, at 1).

Ollama's /api/generate and /api/chat, `logprobs: true` with `top_logprobs` (0..20) (ollama/ollama at fb30760,
v0.33.0-rc2: api/types.go's Logprob and TokenLogprob, server/routes.go, llm/llama_server.go's convertLogprobs):
`logprobs`, one `{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}` per token, empty
fields left out (Go's omitempty: no `top_logprobs` with top_logprobs 0), in each streamed line for the tokens behind
its text and in the whole answer for all those; the tokens that made no text (the end of text, a stop string) are
not listed, as Ollama drops llama-server's chunks without content and the numbers they carry.

A token's text is its piece of the vocabulary as it writes it mid-text (`token_text`), not the token decoded alone:
SentencePiece's decoder (CodeLlama's) strips the space a text begins with, so "▁x" alone decoded to "x" and "▁" to "".
On the OpenAI routes a character written in several byte tokens (SentencePiece's <0xC3> <0xA9>, byte-level BPE's
partial pieces) is the text of the token that completes it, and the tokens before it "", as vLLM writes them
(`OpenAITokenTexts`); their `bytes` are each token's own, which joined spell the text (OpenAI's definition).
Legacy `top_logprobs` is a map keyed by text, where such texts would collide (<0xE2> and <0xF0> both "" there) and
alternatives overwrite one another: an alternative whose text is not its own ("", U+FFFD) is named by its bytes, as
OpenAI's legacy API names such tokens ("bytes:\\xe2\\x9c"), so the N asked for come back (`_named_alternatives`).
The tokens that only wrote a healed prompt's end again are the prompt's, as their text is: no shape lists them
(`after_healing`, and the stream's events, which leave them out).
Where the answer is written with the client's line ends ("\\r\\n" or "\\r": codecomplete/line_ends.py), so are the
tokens' texts, their alternatives' and their bytes (`ends`, the generation's LineEnds: a "\\n" token is "\\r\\n" there),
and the offsets count the text as written: the texts joined spell the answer, but for the prompt's end that a healed
prompt's first token writes again.
"""
from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Sequence


def token_text(tokenizer, token: int) -> tuple[str, bytes]:
    """A token's text and bytes as it writes them mid-text: its piece (a character's byte alone shows as U+FFFD), or
    for a special token, which has none, its text."""
    from models.healing import vocabulary_bytes

    pieces = vocabulary_bytes(tokenizer).pieces       # (built once per tokenizer)
    piece = pieces[token] if token < len(pieces) else None
    if not piece:
        text = tokenizer.decode([token])
        return text, text.encode()
    return piece.decode("utf-8", errors="replace"), piece


class OpenAITokenTexts:
    """The texts of an answer's tokens, in order, as vLLM gives them (v1/engine/logprobs.py, _correct_decoded_token):
    a token's piece as `token_text` writes it, but a piece that is not whole UTF-8 (a byte token, part of a character)
    the characters it completes with the byte tokens before it, "" while its character is incomplete: "é" in
    <0xC3> <0xA9> is "", "é", where each token alone was U+FFFD and the tokens did not spell the answer. A stream's
    chunk holds a character's tokens together (a byte that completes none sends no text, so no chunk)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._pending = codecs.getincrementaldecoder("utf-8")(errors="replace")   # an unfinished character's bytes

    def take(self, token: int) -> tuple[str, bytes]:
        """The text and the bytes of the answer's next token."""
        text, piece = token_text(self.tokenizer, token)
        if _whole_utf8(piece):
            self._pending.reset()         # (bytes left unfinished before it are never completed)
            return text, piece
        return self._pending.decode(piece), piece

    def alternative(self, token: int) -> tuple[str, bytes]:
        """What `token` would have written in place of the answer's next token."""
        state = self._pending.getstate()
        try:
            return self.take(token)
        finally:
            self._pending.setstate(state)


def _whole_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def completion_logprobs(tokenizer, ids: Sequence[int], entries: Sequence, ends=None) -> dict:
    """The legacy completions shape, for the whole answer or a stream's chunk. The texts and offsets are the answer's:
    where it has other line ends than the model wrote, `ends` (the generation's line_ends.LineEnds) writes each
    token's text (and its alternatives') with them and maps the engine's offsets into it."""
    texts, tokens, top = OpenAITokenTexts(tokenizer), [], []
    for i, entry in zip(ids, entries):
        write = writer(ends, entry)
        top.append(_named_alternatives(texts, i, entry, write))     # (before `take`: what each would write there)
        tokens.append(write(texts.take(i)[0]))
    offsets = [entry.text_offset for entry in entries]
    return {"tokens": tokens, "token_logprobs": [entry.logprob for entry in entries], "top_logprobs": top,
            "text_offset": [ends.position(offset) for offset in offsets] if ends is not None else offsets}


def writer(ends, entry) -> Callable[[str], str]:
    """How a text at `entry`'s place in the answer is written (`ends`: a LineEnds or None, the model's text)."""
    return (lambda text: text) if ends is None else (lambda text: ends.token_text(text, entry.text_offset))


def _bytes_writer(ends, entry) -> Callable[[bytes], bytes]:
    return (lambda piece: piece) if ends is None else (lambda piece: ends.token_bytes(piece, entry.text_offset))


def _named_alternatives(texts: OpenAITokenTexts, chosen: int, entry,
                        write: Callable[[str], str] = lambda text: text) -> dict[str, float]:
    """One token's legacy `top_logprobs`: a map from names to logprobs, each alternative under a name of its own, so
    that none overwrites another (byte tokens' texts collide: <0xE2> and <0xF0> both write "" there). The chosen
    token is under its name in `tokens`; an alternative under the text it would write there where that text is its
    own (whole UTF-8, or the character it completes), else (a byte of a character left unfinished writes "", one that
    breaks the character before it U+FFFD) under its bytes, as OpenAI's legacy API names such tokens
    ("bytes:\\xe2\\x9c"); a name another entry has (a whole "é" beside the byte completing one) falls back to the
    bytes, then to vLLM's "token_id:N". The chosen token is added where it is not among the top (N + 1 entries)."""
    chosen_name = write(texts.alternative(chosen)[0])     # (what `take` gives it next)
    named: dict[str, float] = {}
    for token, value in entry.top:
        if token == chosen:
            named[chosen_name] = value
            continue
        text, piece = texts.alternative(token)
        own = _whole_utf8(piece) or (text and "\ufffd" not in text)
        for name in (write(text) if own else _bytes_name(piece), _bytes_name(piece), f"token_id:{token}"):
            if name and name != chosen_name and name not in named:
                break
        named[name] = value
    named.setdefault(chosen_name, entry.logprob)
    return named


def _bytes_name(piece: bytes) -> str:
    """OpenAI's name for a token that is not text of its own: its bytes, "bytes:\\xe2\\x9c" ("" for none)."""
    return "bytes:" + "".join(f"\\x{b:02x}" for b in piece) if piece else ""


def llama_cpp_probabilities(tokenizer, ids: Sequence[int], entries: Sequence, post_sampling: bool,
                            ends=None) -> list[dict]:
    """llama.cpp's `completion_probabilities` for these tokens; `ends` as `completion_logprobs`'s (the texts and bytes
    written with the answer's line ends)."""
    value, alternatives = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")

    def probabilities(i: int, entry) -> dict:
        write, write_bytes = writer(ends, entry), _bytes_writer(ends, entry)

        def token(j: int, logprob: float) -> dict:
            text, piece = token_text(tokenizer, j)
            return {"id": j, "token": write(text), "bytes": list(write_bytes(piece)),
                    value: math.exp(logprob) if post_sampling else logprob}
        return {**token(i, entry.logprob),
                alternatives: [token(j, v) for j, v in entry.top if not (post_sampling and v == -math.inf)]}
    return [probabilities(i, entry) for i, entry in zip(ids, entries)]


def ollama_logprobs(tokenizer, ids: Sequence[int], entries: Sequence, top_n: int, ends=None) -> list[dict]:
    """Ollama's `logprobs` for these tokens, with the top_n alternatives; `ends` as `completion_logprobs`'s."""
    def listed(i: int, entry) -> dict:
        write, write_bytes = writer(ends, entry), _bytes_writer(ends, entry)

        def token(j: int, value: float) -> dict:
            text, piece = token_text(tokenizer, j)
            piece = write_bytes(piece)
            return {"token": write(text), "logprob": value, **({"bytes": list(piece)} if piece else {})}
        return {**token(i, entry.logprob), **({"top_logprobs": [token(j, v) for j, v in entry.top[:top_n]]} if top_n
                                              else {})}
    return [listed(i, entry) for i, entry in zip(ids, entries)]


def after_healing(scores, result, sent: int = 0):
    """`scores` of the answer's tokens after healing's (their text is the prompt's) and the `sent` ones a stream's
    chunks carried, or None without `scores` (the request asked for no logprobs)."""
    if scores is None:
        return None
    start = result.healing_tokens + sent
    return scores(result.token_ids[start:], result.logprobs[start:])


def chat_logprobs(tokenizer, ids: Sequence[int], entries: Sequence, top_n: int) -> dict:
    """The chat shape: each token with its bytes (a token's own, a part of a character too; a special token's, its
    text's), and the top_n alternatives."""
    texts, content = OpenAITokenTexts(tokenizer), []

    def token(text_and_bytes: tuple[str, bytes], value: float) -> dict:
        text, piece = text_and_bytes
        return {"token": text, "logprob": value, "bytes": list(piece)}
    for i, entry in zip(ids, entries):
        top = [token(texts.alternative(j), v) for j, v in entry.top[:top_n]]
        content.append({**token(texts.take(i), entry.logprob), "top_logprobs": top})
    return {"content": content}
