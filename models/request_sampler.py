"""One request's sampler: the state its next-token choices carry from step to step, in one object.

The chain itself is models/sampling.py's (functions of the logits). What a request adds lives across its steps:
its random generator, the token-healing constraint on its first tokens (models/healing.py), its repetition
penalties' window (models/penalties.py), llama.cpp's infill sampler (models/infill.py), its logit bias and, where
asked for, llama.cpp's mirostat in place of the chain (models/mirostat.py: its mu, updated on the device). The
engine builds one per request and its decode loops only ask it for tokens and tell it which were taken:

    sampler = engine._sampler(config, prompts, logits)
    tokens, scores = sampler.choose(logits)    # (B,) on the device, and their logprob table where asked for
    sampler.took(tokens.tolist())              # healing and the penalties follow the text
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.generation import GenerationConfig
from models.healing import HealingConstraint
from models.infill import InfillSampler
from models.mirostat import Mirostat
from models.penalties import Penalties
from models.sampling import chained, logprob_table, sample
from models.speculative import accept


class RequestSampler:
    """Picks a request's tokens: healing's restriction, then the logit bias and the chain, then greedy or a draw."""

    def __init__(self, config: GenerationConfig, generator: torch.Generator | None = None,
                 healing: HealingConstraint | None = None, penalties: Penalties | None = None,
                 infill: InfillSampler | None = None, bias: torch.Tensor | None = None, end: int | None = None,
                 mirostat: Mirostat | None = None):
        self.config = config
        self.generator = generator      # None for greedy
        self.healing = healing          # the required prefix's constraint, or None
        self.penalties = penalties      # where the chain has "penalties" with a non-neutral value, else None
        self.infill = infill            # where the chain has "infill", else None
        self.bias = bias                # (V,) float32 on the device, or None
        self.end = end                  # the token of a row a step leaves nothing to draw (models.sampling.pick)
        self.mirostat = mirostat        # where the request asks for it: in place of the chain (models/mirostat.py)

    @property
    def constrained(self) -> bool:
        """Token healing still restricts the next token."""
        return self.healing is not None and self.healing.active

    @property
    def waits_for_tokens(self) -> bool:
        """The next choice depends on the token just taken (healing, penalties): the decode loop cannot queue the
        next step before reading it."""
        return self.constrained or self.penalties is not None

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 logits (B, V) -> token ids (B,) int64, on the device (no host sync but the infill sampler's on a
        CPU), and where the request asks for logprobs their `logprob_table` (else None)."""
        allowed = self.healing.restrict(logits) if self.constrained else logits
        if self.mirostat is not None:
            tokens, drawn_from = self.mirostat.choose(allowed, self.generator, self.bias, self.end)
            return tokens, self._scores(logits, allowed, tokens, drawn_from)
        tokens = sample(allowed, self.config, self.generator, self._penalize(), self.infill, self.bias, self.end)
        return tokens, self._scores(logits, allowed, tokens)

    def _penalize(self, drafts: list[int] | None = None):
        penalties = self.penalties
        return None if penalties is None else lambda rows: penalties.apply(rows, drafts)

    def _scores(self, logits: torch.Tensor, allowed: torch.Tensor, tokens: torch.Tensor,
                drawn_from: torch.Tensor | None = None) -> torch.Tensor | None:
        """The `logprob_table` of the tokens (B,) a step chose, where the request asks for logprobs (else None): of the
        raw logits (B, V), or with `logprobs_after_samplers` of what the draw saw, the `allowed` logits after the bias
        and the chain (the chain run again: only such requests pay for it); greedy drew from the chosen token alone,
        as llama.cpp's temperature 0 leaves one candidate."""
        config = self.config
        if config.logprobs is None:
            return None
        if config.logprobs_after_samplers:
            if config.greedy:
                logits = torch.full_like(logits, float("-inf")).scatter_(-1, tokens[:, None], 0.0)    # (B, V)
            elif drawn_from is not None:        # (mirostat's cut: it moves with each token, so it is not run again)
                logits = drawn_from
            else:
                logits = chained(allowed, config, self._penalize(), self.infill, self.bias)
        return logprob_table(logits, tokens, config.logprobs)

    def took(self, tokens: Sequence[int]) -> None:
        """The tokens chosen, one per sequence in row order (plain decoding)."""
        if self.healing is not None:
            self.healing.advance(list(tokens))
        if self.penalties is not None:
            self.penalties.advance(tokens)

    def verify(self, logits: torch.Tensor, drafts: list[int]) -> list[int]:
        """One speculative step of the one sequence: logits (1 + len(drafts), V) at its pending token and each
        draft -> the accepted drafts and one token of the model's own (models/speculative.py), taken. While healing
        constrains the next token there are no drafts (a draft's verification would sample unconstrained); the
        penalties see, at each position, the window plain decoding would have had there."""
        if self.mirostat is not None:       # (the engine does not speculate for it: mu moves with each token)
            raise ValueError("no speculative steps with mirostat")
        penalize = self._penalize(drafts)
        if self.constrained:
            if drafts:
                raise ValueError("no drafts while token healing constrains the next token")
            emitted = accept(self.healing.restrict(logits), [], self.config, self.generator, penalize, self.infill,
                             self.bias, self.end)
            self.healing.advance(emitted)
        else:
            emitted = accept(logits, drafts, self.config, self.generator, penalize, self.infill, self.bias, self.end)
        if self.penalties is not None:
            self.penalties.extend(emitted)
        return emitted
