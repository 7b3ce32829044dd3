"""One request's sampler: the state its next-token choices carry from step to step, in one object.

The chain itself is models/sampling.py's (functions of the logits). What a request adds lives across its steps:
its random generator, the token-healing constraint on its first tokens (models/healing.py), its repetition
penalties' window (models/penalties.py), llama.cpp's infill sampler (models/infill.py) and its logit bias. The
engine builds one per request and its decode loops only ask it for tokens and tell it which were taken:

    sampler = engine._sampler(config, prompts, logits)
    tokens = sampler.pick(logits)              # (B,) on the device
    sampler.took(tokens.tolist())              # healing and the penalties follow the text
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.generation import GenerationConfig
from models.healing import HealingConstraint
from models.infill import InfillSampler
from models.penalties import Penalties
from models.sampling import sample
from models.speculative import accept


class RequestSampler:
    """Picks a request's tokens: healing's restriction, then the logit bias and the chain, then greedy or a draw."""

    def __init__(self, config: GenerationConfig, generator: torch.Generator | None = None,
                 healing: HealingConstraint | None = None, penalties: Penalties | None = None,
                 infill: InfillSampler | None = None, bias: torch.Tensor | None = None, end: int | None = None):
        self.config = config
        self.generator = generator      # None for greedy
        self.healing = healing          # the required prefix's constraint, or None
        self.penalties = penalties      # where the chain has "penalties" with a non-neutral value, else None
        self.infill = infill            # where the chain has "infill", else None
        self.bias = bias                # (V,) float32 on the device, or None
        self.end = end                  # the token of a row a step leaves nothing to draw (models.sampling.pick)

    @property
    def constrained(self) -> bool:
        """Token healing still restricts the next token."""
        return self.healing is not None and self.healing.active

    @property
    def waits_for_tokens(self) -> bool:
        """The next choice depends on the token just taken (healing, penalties): the decode loop cannot queue the
        next step before reading it."""
        return self.constrained or self.penalties is not None

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Float32 logits (B, V) -> token ids (B,) int64, on the device (no host sync but the infill sampler's on a
        CPU)."""
        if self.constrained:
            logits = self.healing.restrict(logits)
        penalize = self.penalties.apply if self.penalties is not None else None
        return sample(logits, self.config, self.generator, penalize, self.infill, self.bias, self.end)

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
        penalties = self.penalties
        penalize = (lambda rows: penalties.apply(rows, drafts)) if penalties is not None else None
        if self.constrained:
            if drafts:
                raise ValueError("no drafts while token healing constrains the next token")
            emitted = accept(self.healing.restrict(logits), [], self.config, self.generator, penalize, self.infill,
                             self.bias, self.end)
            self.healing.advance(emitted)
        else:
            emitted = accept(logits, drafts, self.config, self.generator, penalize, self.infill, self.bias, self.end)
        if penalties is not None:
            penalties.extend(emitted)
        return emitted
