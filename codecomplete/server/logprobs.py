"""Token log-probabilities in the shapes the OpenAI routes answer with, from the engine's models.TokenLogprobs (the
model's own distribution: the raw logits' log-softmax, before the logit bias and the samplers, as vLLM reports them
by default).

/v1/completions, `logprobs: N` (0..5): `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, each token's
text alone, its logprob, a map of the top N tokens' texts to their logprobs with the chosen token's added (so up to
N + 1 entries, as OpenAI documents), and where each token's text begins in the returned text (vLLM's offsets, from 0;
OpenAI's legacy API counted the prompt's characters too, and `echo`, which would return the prompt, is refused): the
characters the tokens before it made, so that a character written in several tokens (an emoji's bytes) leaves no gap,
and a token that completes the healed end of the prompt (its first characters are the prompt's) begins at 0.
/v1/chat/completions, `logprobs: true` with `top_logprobs` (0..20): `{"content": [{"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob", "bytes"}]}]}`. A stream's chunk carries its own tokens' logprobs.
"""
from __future__ import annotations

from collections.abc import Sequence


def completion_logprobs(tokenizer, ids: Sequence[int], entries: Sequence) -> dict:
    """The legacy completions shape, for the whole answer or a stream's chunk (the offsets are the answer's)."""
    texts = [tokenizer.decode([i]) for i in ids]
    top = []
    for text, entry in zip(texts, entries):
        alternatives = {tokenizer.decode([i]): value for i, value in entry.top}
        alternatives.setdefault(text, entry.logprob)
        top.append(alternatives)
    return {"tokens": texts, "token_logprobs": [entry.logprob for entry in entries], "top_logprobs": top,
            "text_offset": [entry.text_offset for entry in entries]}


def chat_logprobs(tokenizer, ids: Sequence[int], entries: Sequence, top_n: int) -> dict:
    """The chat shape: each token with its bytes (a token's own, a part of a character too; a special token's, its
    text's), and the top_n alternatives."""
    from models.healing import vocabulary_bytes

    pieces = vocabulary_bytes(tokenizer).pieces

    def token(i: int, value: float) -> dict:
        text = tokenizer.decode([i])
        piece = pieces[i] if i < len(pieces) and pieces[i] else text.encode()
        return {"token": text, "logprob": value, "bytes": list(piece)}
    return {"content": [{**token(i, entry.logprob), "top_logprobs": [token(j, v) for j, v in entry.top[:top_n]]}
                        for i, entry in zip(ids, entries)]}
