"""Repetition penalties: the repeat, presence and frequency penalties, as llama.cpp's penalties sampler applies them.

Followed: llama.cpp's `llama_sampler_penalties_apply` (src/llama-sampling.cpp), the first sampler of its chain, on
the raw logits, before top-k, top-p, min-p and temperature. For every token that occurs c > 0 times in the window,

    logit = logit * repeat  if logit <= 0  else  logit / repeat        (CTRL's penalty, signs kept apart)
    logit -= c * frequency + presence

The window is the last `penalty_last_n` tokens (0: no penalties, -1: the whole context). llama.cpp's server feeds
the prompt's tokens through the sampler before the first token is sampled, so its window holds the end of prompt +
generation (`penalize_prompt`). OpenAI defines presence and frequency over the tokens "sampled prior to the current
position": the OpenAI routes leave the prompt out and look back over the whole generation. A token healing makes
again (models/healing.py) is sampled like any other and counts as one.

With every penalty at its neutral value (1, 0, 0) nothing is built: the logits are the ones decoding used before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.generation import GenerationConfig


class Penalties:
    """Per sequence, the tokens the penalties look back over; `apply` penalizes logits, `advance` takes the tokens
    each sequence was given."""

    def __init__(self, config: GenerationConfig, prompts: Sequence[Sequence[int]], context_length: int):
        self.repeat, self.presence, self.frequency = (config.repeat_penalty, config.presence_penalty,
                                                      config.frequency_penalty)
        self.window = context_length if config.penalty_last_n < 0 else config.penalty_last_n
        self.history = [list(p[-self.window:]) if config.penalize_prompt else [] for p in prompts]

    @classmethod
    def of(cls, config: GenerationConfig, prompts, context_length: int) -> Penalties | None:
        """The request's penalties, or None when they change nothing (llama.cpp's early return)."""
        neutral = config.repeat_penalty == 1.0 and config.frequency_penalty == 0.0 and config.presence_penalty == 0.0
        if neutral or config.penalty_last_n == 0:
            return None
        return cls(config, prompts, context_length)

    def advance(self, tokens: Sequence[int]) -> None:
        """One token per sequence (plain decoding), in row order."""
        for history, token in zip(self.history, tokens):
            history.append(token)
            del history[:-self.window]

    def extend(self, tokens: Sequence[int]) -> None:
        """Several tokens of the one sequence (a speculative step's emitted tokens), in order."""
        self.history[0] += tokens
        del self.history[0][:-self.window]

    def apply(self, logits: torch.Tensor, drafts: Sequence[int] | None = None) -> torch.Tensor:
        """Logits (B, V) of each sequence's next token, penalized; with `drafts`, logits (T, V) of the one sequence
        at its pending token and each of T - 1 drafts: row i looks back over the history and drafts[:i], the window
        plain decoding would have had had the drafts before it been accepted (so verification stays exact)."""
        if drafts is None:
            windows = [history[-self.window:] for history in self.history]
        else:
            windows = [(self.history[0] + list(drafts[:i]))[-self.window:] for i in range(logits.shape[0])]
        rows = torch.tensor([r for r, window in enumerate(windows) for _ in window], dtype=torch.long,
                            device=logits.device)
        ids = torch.tensor([token for window in windows for token in window], dtype=torch.long,
                           device=logits.device)
        counts = torch.zeros_like(logits)                                                # (R, V)
        counts.index_put_((rows, ids), torch.ones(len(ids), dtype=logits.dtype, device=logits.device), accumulate=True)
        repeated = torch.where(logits <= 0, logits * self.repeat, logits / self.repeat)
        penalized = repeated - (counts * self.frequency + self.presence)
        # Kept finite: a penalty that overflows float32 (presence -1e300, repeat 1e-300) gave +inf logits, whose
        # softmax is NaN, and sampling drew token 0 (llama.cpp leaves it to its softmax); inf - inf sinks the token.
        finfo = torch.finfo(logits.dtype)
        penalized = torch.nan_to_num(penalized, nan=finfo.min, posinf=finfo.max, neginf=finfo.min)
        return torch.where(counts > 0, penalized, logits)
