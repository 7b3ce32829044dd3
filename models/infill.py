"""llama.cpp's `infill` sampler (llama.vim and llama.vscode list it: `["top_k", "top_p", "infill"]`): in a
fill-in-the-middle completion, end the middle when ending is likely enough, and otherwise choose between candidate
texts rather than between tokens that spell the same start.

Followed: `llama_sampler_infill_apply` (llama.cpp, src/llama-sampling.cpp). On the candidates the samplers before it
left (the tokens whose logit is not -inf), with p their softmax and n their number:
- if 3 * p(end of generation) * n > p(text), only the end-of-generation tokens stay;
- otherwise, by falling probability, a token whose text begins another's merges with it: the likelier of the two
  takes the other's probability, the other leaves (one after another: a merged probability counts in what follows);
- text tokens below 0.2 leave (end-of-generation tokens always stay); none left: the one end token (the format's end
  of text, else EOS) alone; otherwise, renormalized, text tokens below 1 / (text tokens left + 1) leave too.
What stays is drawn from the softmax of its own logits, as llama.cpp's dist sampler recomputes them: the merged
probabilities only decide what stays. End-of-generation tokens are the model's EOS ids and the prompt format's stop
ids (CodeLlama's <EOT>); a token's text is its bytes (models/healing.py: special tokens have none and never merge).

On the host, not the device: the merge is sequential (each merge changes the probabilities the next comparison
reads) and compares token texts, so the candidates' logits come to the host once per sampled token (one sync, a few
hundred kB at most), which also turns off the decode loop's lookahead for such requests, as the penalties do. With
llama.vim's chain (top-k 40 first) that is 40 candidates, about 0.5 ms a token on the host. Merging looks only at a
candidate's own prefixes (a dictionary lookup per byte of each candidate, not llama.cpp's comparison per pair), but
a chain with nothing before infill hands it the whole vocabulary: about 1 s a token for SmolLM2's 49,152 tokens when
the end is too unlikely to decide at once (llama.cpp's pairwise loop costs far more there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.healing import VocabularyBytes

EOG_RATIO = 3           # 3 * p(eog) * n > p(text): end here
FIRST_THRESHOLD = 0.2   # text candidates below it leave (after merging)


class InfillSampler:
    """`apply(logits)` keeps what llama.cpp's infill sampler keeps, the other logits set to -inf."""

    def __init__(self, table: VocabularyBytes, end_ids: Sequence[int], end_token: int):
        self.table = table
        self.end_ids = frozenset(end_ids)
        self.end_token = end_token

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) -> logits (B, V), each row on its own."""
        rows = logits.detach().to("cpu", torch.float64)                 # the one sync
        kept = torch.zeros(logits.shape, dtype=torch.bool)              # (B, V)
        alone = torch.zeros(logits.shape[0], dtype=torch.bool)         # (B,) rows left with the end token only
        for row, values in enumerate(rows):
            keep = self.keep(values)
            if keep is None:
                alone[row] = True
            else:
                kept[row, keep] = True
        out = logits.masked_fill(~kept.to(logits.device), float("-inf"))
        if alone.any():
            end = torch.full_like(logits[0], float("-inf"))
            end[self.end_token] = 1.0
            out = torch.where(alone.to(logits.device)[:, None], end, out)
        return out

    def keep(self, values: torch.Tensor) -> list[int] | None:
        """Ids of the tokens to keep from one row of logits (V,) float64, or None for "the end token alone"."""
        candidates = torch.nonzero(values > float("-inf")).flatten()
        if len(candidates) == 0:
            return []
        probs = values[candidates].softmax(dim=0)
        order = torch.argsort(probs, descending=True, stable=True)
        ids = candidates[order].tolist()                                # by falling probability
        p = probs[order].tolist()
        end = [token in self.end_ids for token in ids]
        p_end = sum(q for q, is_end in zip(p, end) if is_end)
        p_text = sum(q for q, is_end in zip(p, end) if not is_end)
        if EOG_RATIO * p_end * len(ids) > p_text:
            return [token for token, is_end in zip(ids, end) if is_end]

        alive = self._merge(ids, p)
        # (an end token merged away is -inf in llama.cpp: kept, but never drawn)
        kept = [i for i in range(len(ids)) if alive[i] and (end[i] or p[i] >= FIRST_THRESHOLD)]
        texts = sum(not end[i] for i in kept)
        if texts == 0:
            return None
        total = sum(p[i] for i in kept)
        threshold = 1.0 / (texts + 1)
        return [ids[i] for i in kept if end[i] or p[i] / total >= threshold]

    def _merge(self, ids: list[int], p: list[float]) -> list[bool]:
        """llama.cpp's pass over pairs (i0, i1), i0's text a prefix of i1's, in rank order; p changes in place.
        Returns which ranks are still there."""
        rank = {token: i for i, token in enumerate(ids)}
        pieces = self.table.pieces
        extensions: list[list[int]] = [[] for _ in ids]            # by rank: the ranks whose text begins with it
        for i1, token in enumerate(ids):
            piece = pieces[token] if token < len(pieces) else None
            for length in range(1, len(piece) + 1 if piece else 0):
                for prefix in self.table.by_bytes.get(piece[:length], ()):
                    i0 = rank.get(prefix)
                    if i0 is not None and i0 != i1:
                        extensions[i0].append(i1)
        alive = [True] * len(ids)
        for i0, longer in enumerate(extensions):
            for i1 in sorted(longer):
                if not alive[i0]:
                    break
                if not alive[i1]:
                    continue
                dst, src = (i1, i0) if p[i1] > p[i0] else (i0, i1)
                p[dst] += p[src]
                p[src], alive[src] = 0.0, False
        return alive
