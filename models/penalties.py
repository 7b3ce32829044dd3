"""Repetition penalties: the repeat, presence and frequency penalties, as llama.cpp's penalties sampler applies them.

Followed: llama.cpp's `llama_sampler_penalties_apply` (src/llama-sampling.cpp), the first sampler of its default
chain, on the raw logits, before top-k, top-p, min-p and temperature; where a request's `samplers` list puts it
elsewhere, on the logits as the samplers before it left them (models/sampling.py). For every token that occurs c > 0
times in the window,

    logit = logit * repeat  if logit <= 0  else  logit / repeat        (CTRL's penalty, signs kept apart)
    logit -= c * frequency + presence

The window is the last `penalty_last_n` tokens (0: no penalties, -1: the whole context). llama.cpp's server feeds
the prompt's tokens through the sampler before the first token is sampled, so its window holds the end of prompt +
generation (`penalize_prompt`). OpenAI defines presence and frequency over the tokens "sampled prior to the current
position": the OpenAI routes leave the prompt out and look back over the whole generation. A token healing makes
again (models/healing.py) is sampled like any other and counts as one.

vLLM's repetition_penalty (its OpenAI routes' extra field) is this repeat penalty over the whole prompt and answer
(vllm/_custom_ops.py apply_repetition_penalties: `prompt_mask | output_mask`), beside presence and frequency over the
answer: `repeat_window` gives the repeat penalty that window of its own.

With every penalty at its neutral value (1, 0, 0) nothing is built: the logits are the ones decoding used before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.generation import GenerationConfig


class Penalties:
    """Per sequence, the tokens the penalties look back over; `apply` penalizes logits, `advance` takes the tokens
    each sequence was given. The repeat penalty may look over a window of its own (`repeat_window`): vLLM's
    repetition_penalty counts the prompt, OpenAI's presence and frequency do not."""

    def __init__(self, config: GenerationConfig, prompts: Sequence[Sequence[int]], context_length: int):
        self.repeat, self.presence, self.frequency = (config.repeat_penalty, config.presence_penalty,
                                                      config.frequency_penalty)
        whole = lambda n: context_length if n < 0 else n  # noqa: E731
        self.counted = (whole(config.penalty_last_n), config.penalize_prompt)     # presence and frequency's window
        self.repeated = self.counted if config.repeat_window is None else (whole(config.repeat_window), True)
        self.keep = max(self.counted[0], self.repeated[0])
        with_prompt = self.counted[1] or self.repeated[1]
        self.history = [list(p[len(p) - self.keep:] if self.keep else []) if with_prompt else [] for p in prompts]
        self.answered = [0] * len(prompts)          # of each history, how many tokens were sampled

    @classmethod
    def of(cls, config: GenerationConfig, prompts, context_length: int) -> Penalties | None:
        """The request's penalties, or None when they change nothing (llama.cpp's early return)."""
        repeat_window = config.penalty_last_n if config.repeat_window is None else config.repeat_window
        repeats = config.repeat_penalty != 1.0 and repeat_window != 0
        counts = (config.frequency_penalty != 0.0 or config.presence_penalty != 0.0) and config.penalty_last_n != 0
        return cls(config, prompts, context_length) if repeats or counts else None

    def advance(self, tokens: Sequence[int]) -> None:
        """One token per sequence (plain decoding), in row order."""
        for row, token in enumerate(tokens):
            self.history[row].append(token)
            del self.history[row][:-self.keep]
            self.answered[row] += 1

    def extend(self, tokens: Sequence[int]) -> None:
        """Several tokens of the one sequence (a speculative step's emitted tokens), in order."""
        self.history[0] += tokens
        del self.history[0][:-self.keep]
        self.answered[0] += len(tokens)

    def apply(self, logits: torch.Tensor, drafts: Sequence[int] | None = None) -> torch.Tensor:
        """Logits (B, V) of each sequence's next token, penalized; with `drafts`, logits (T, V) of the one sequence
        at its pending token and each of T - 1 drafts: row i looks back over the history and drafts[:i], the window
        plain decoding would have had had the drafts before it been accepted (so verification stays exact)."""
        if drafts is None:
            seen = list(zip(self.history, self.answered))
        else:
            seen = [(self.history[0] + list(drafts[:i]), self.answered[0] + i) for i in range(logits.shape[0])]
        counts = self._counts(logits, [_window(tokens, answered, *self.counted) for tokens, answered in seen])
        repeats = counts if self.repeated == self.counted else self._counts(
            logits, [_window(tokens, answered, *self.repeated) for tokens, answered in seen])
        repeated = torch.where(logits <= 0, logits * self.repeat, logits / self.repeat)
        penalized = (torch.where(repeats > 0, repeated, logits)
                     - torch.where(counts > 0, counts * self.frequency + self.presence, 0.0))
        # Kept finite: a penalty that overflows float32 (presence -1e300, repeat 1e-300) gave +inf logits, whose
        # softmax is NaN, and sampling drew token 0 (llama.cpp leaves it to its softmax); inf - inf sinks the token.
        finfo = torch.finfo(logits.dtype)
        penalized = torch.nan_to_num(penalized, nan=finfo.min, posinf=finfo.max, neginf=finfo.min)
        # A token an earlier sampler of the chain dropped (-inf) stays dropped, not revived at float32's minimum.
        return torch.where(((counts > 0) | (repeats > 0)) & (logits > float("-inf")), penalized, logits)

    @staticmethod
    def _counts(logits: torch.Tensor, windows: list[list[int]]) -> torch.Tensor:
        """How often each token occurs in each row's window: (R, V) in the logits' dtype."""
        rows = torch.tensor([r for r, window in enumerate(windows) for _ in window], dtype=torch.long,
                            device=logits.device)
        ids = torch.tensor([token for window in windows for token in window], dtype=torch.long, device=logits.device)
        counts = torch.zeros_like(logits)                                                # (R, V)
        counts.index_put_((rows, ids), torch.ones(len(ids), dtype=logits.dtype, device=logits.device), accumulate=True)
        return counts


def _window(tokens: list[int], answered: int, last_n: int, with_prompt: bool) -> list[int]:
    """The last `last_n` of a sequence's tokens (prompt tail + answer), or of its answer's only."""
    n = min(last_n, len(tokens) if with_prompt else answered)
    return tokens[len(tokens) - n:] if n > 0 else []
