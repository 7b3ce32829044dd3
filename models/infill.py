"""llama.cpp's `infill` sampler (llama.vim and llama.vscode list it: `["top_k", "top_p", "infill"]`): in a
fill-in-the-middle completion, end the middle when ending is likely enough, and otherwise choose between candidate
texts rather than between tokens that spell the same start.

Followed: `llama_sampler_infill_apply` (llama.cpp, src/llama-sampling.cpp). On the candidates the samplers before it
left (the tokens whose logit is not -inf), with p their softmax and n the size of llama.cpp's candidate array there:
- if 3 * p(end of generation) * n > p(text), only the end-of-generation tokens stay;
- otherwise, by falling probability, a token whose text begins another's merges with it: the likelier of the two
  takes the other's probability, the other leaves (one after another: a merged probability counts in what follows);
- text tokens below 0.2 leave (end-of-generation tokens always stay); none left: the one end token (the format's end
  of text, else EOS) alone; otherwise, renormalized, text tokens below 1 / (text tokens left + 1) leave too.
What stays is drawn from the softmax of its own logits, as llama.cpp's dist sampler recomputes them: the merged
probabilities only decide what stays. End-of-generation tokens are the model's EOS ids and the prompt format's stop
ids (CodeLlama's <EOT>); a token's text is its bytes (models/healing.py: special tokens have none and never merge).
n is not the number of candidates: llama.cpp's array keeps a token banned by the logit bias (logit_bias -inf,
ignore_eos) at -inf, p 0, and only cutting samplers shrink it (top_k to k, banned tokens in it where fewer than k are
not). The chain (models.sampling) follows that size per row on the device (models.dynatemp's `array_size` and `cut`)
and passes it as `size` (B, 1); without one (a caller outside the chain), n is the tokens not at -inf.

On CUDA, when a top-k before it bounds the candidates (llama.vim's top_k 40), on the device without a host sync
(kernels/infill_keep.py: one Triton program per row over the K = top_k + slack likeliest, torch.topk's; the
vocabulary's bytes as a device table built once per tokenizer), so the decode loop's lookahead keeps the GPU busy.
A row with more finite logits than K (more ties at top-k's boundary than the slack) is decided on its K likeliest
(llama.cpp's chains, the only ones that list infill, keep exactly top_k: there it does not happen).
On a CPU chain's candidates (models/candidates.py: what a top-k before it left, as token ids and their logits;
`apply_to_candidates`) the host loop reads their W logits instead of the row's V, and the rows left with the end
token alone keep W columns.
Elsewhere (CPU tensors, where the embedded model runs; a chain with nothing bounding the candidates) on the host:
the candidates' logits come to the host once per sampled token (one sync). There merging looks only at a
candidate's own prefixes (a dictionary lookup per byte of each candidate, not llama.cpp's comparison per pair):
with llama.vim's chain about 0.5 ms a token; with the whole vocabulary about 1 s a token for SmolLM2's 49,152
tokens when the end is too unlikely to decide at once (llama.cpp's pairwise loop costs far more there).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from models.generation import GenerationConfig
from models.healing import VocabularyBytes

EOG_RATIO = 3           # 3 * p(eog) * n > p(text): end here
FIRST_THRESHOLD = 0.2   # text candidates below it leave (after merging)
TIE_SLACK = 8           # candidates beyond top_k that the device path reads at least (ties at top-k's boundary)
MAX_DEVICE_CANDIDATES = 128     # kernels.infill_keep.MAX_CANDIDATES (not imported: Triton may be missing on a CPU)
# CODECOMPLETE_INFILL_DEVICE=0: the host path on a GPU too (bench/infill_sampler_bench.py checks the two paths keep the
# same set and times them: on an H200, 0 of 600 random rows differ; sample() with llama.vim's chain 1.02 ms against
# 5.1 ms on the host and 0.65 ms without infill, Run 29).
ON_DEVICE = os.environ.get("CODECOMPLETE_INFILL_DEVICE", "1") != "0"


def device_candidates(config: GenerationConfig | None, vocab: int) -> int | None:
    """How many candidates the device path reads: the next power of two at or above top_k + TIE_SLACK, where a
    top-k runs before "infill" in the chain (what it leaves is top_k plus its ties); None where nothing bounds them
    or too many for one program."""
    if config is None or "infill" not in config.sampler_order:
        return None
    before = config.sampler_order[:config.sampler_order.index("infill")]
    if "top_k" not in before or not 0 < config.top_k < vocab:
        return None
    block = 1 << (config.top_k + TIE_SLACK - 1).bit_length()
    return min(block, vocab) if block <= MAX_DEVICE_CANDIDATES else None


_DEVICE_VOCABULARIES: dict[tuple[int, torch.device], tuple[object, torch.Tensor, torch.Tensor]] = {}


def device_vocabulary(table: VocabularyBytes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The vocabulary's texts on a device, built once per table (one per tokenizer: models.healing.vocabulary_bytes)
    and device: bytes (N, L) uint8, zero-padded, and lengths (N,) int32 (0: no text, as special tokens)."""
    key = (id(table), torch.device(device))
    if key not in _DEVICE_VOCABULARIES or _DEVICE_VOCABULARIES[key][0] is not table:
        pieces = [piece or b"" for piece in table.pieces]
        width = max([1] + [len(piece) for piece in pieces])
        flat = bytearray(len(pieces) * width)
        for number, piece in enumerate(pieces):
            flat[number * width:number * width + len(piece)] = piece
        data = torch.tensor(list(flat), dtype=torch.uint8).view(len(pieces), width)
        lengths = torch.tensor([len(piece) for piece in pieces], dtype=torch.int32)
        while len(_DEVICE_VOCABULARIES) >= 4:                 # (the table is kept alive, so its id stays its own)
            del _DEVICE_VOCABULARIES[next(iter(_DEVICE_VOCABULARIES))]
        _DEVICE_VOCABULARIES[key] = (table, data.to(device), lengths.to(device))
    return _DEVICE_VOCABULARIES[key][1:]


def _host_sizes(size: torch.Tensor | None, rows: int) -> list[int | None]:
    """The chain's array sizes (B, 1) as one int a row on the host (None: none given)."""
    return [None] * rows if size is None else size.reshape(-1).tolist()


class InfillSampler:
    """`apply(logits)` keeps what llama.cpp's infill sampler keeps, the other logits set to -inf."""

    def __init__(self, table: VocabularyBytes, end_ids: Sequence[int], end_token: int):
        self.table = table
        self.end_ids = frozenset(end_ids)
        self.end_token = end_token
        self._on_device: dict[tuple, torch.Tensor] = {}     # end flags and the "end alone" row, per device

    def apply(self, logits: torch.Tensor, config: GenerationConfig | None = None, size: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Logits (B, V) -> logits (B, V), each row on its own; `config`: the chain it runs in (what bounds the
        candidates); `size` (B, 1) int64 on logits' device: llama.cpp's array size, the n of the end test (None: the
        tokens not at -inf). On the device where logits are on CUDA and a top-k before it bounds them (unless
        CODECOMPLETE_INFILL_DEVICE=0), else on the host."""
        candidates = device_candidates(config, logits.shape[-1])
        if ON_DEVICE and logits.is_cuda and candidates is not None:
            return self.apply_on_device(logits, candidates, size)
        return self.apply_on_host(logits, size)

    def apply_on_device(self, logits: torch.Tensor, candidates: int, size: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """apply() on the `candidates` likeliest of each row, without a host sync (any device Triton runs on; on a
        CPU only under TRITON_INTERPRET, for tests)."""
        from kernels.infill_keep import infill_keep

        table, lengths = device_vocabulary(self.table, logits.device)
        values, ids = torch.topk(logits.float(), min(candidates, logits.shape[-1]), dim=-1)    # (B, K)
        ids, kept, alone = infill_keep(values, ids, table, lengths, self._end_flags(logits),
                                       sizes=None if size is None else size.reshape(-1))
        out = torch.full_like(logits, float("-inf")).scatter_(-1, ids, kept.to(logits.dtype))
        return torch.where(alone[:, None], self._end_alone(logits), out)

    def _end_flags(self, logits: torch.Tensor) -> torch.Tensor:
        """(V,) int8 on logits' device: 1 for the end-of-generation tokens (built once per device)."""
        key = ("ends", logits.device, logits.shape[-1])
        if key not in self._on_device:
            flags = torch.zeros(logits.shape[-1], dtype=torch.int8)
            flags[[token for token in self.end_ids if token < logits.shape[-1]]] = 1
            self._on_device[key] = flags.to(logits.device)
        return self._on_device[key]

    def _end_alone(self, logits: torch.Tensor) -> torch.Tensor:
        """(V,) of logits' dtype and device: the end token at 1, the rest -inf."""
        key = ("alone", logits.device, logits.dtype, logits.shape[-1])
        if key not in self._on_device:
            end = torch.full(logits.shape[-1:], float("-inf"), dtype=logits.dtype)
            end[self.end_token] = 1.0
            self._on_device[key] = end.to(logits.device)
        return self._on_device[key]

    def apply_on_host(self, logits: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """apply() with the candidates read on the host (one sync)."""
        rows = logits.detach().to("cpu", torch.float64)                 # the one sync
        sizes = _host_sizes(size, logits.shape[0])
        kept = torch.zeros(logits.shape, dtype=torch.bool)              # (B, V)
        alone = torch.zeros(logits.shape[0], dtype=torch.bool)         # (B,) rows left with the end token only
        for row, values in enumerate(rows):
            keep = self.keep(values, n=sizes[row])
            if keep is None:
                alone[row] = True
            else:
                kept[row, keep] = True
        out = logits.masked_fill(~kept.to(logits.device), float("-inf"))
        if alone.any():
            out = torch.where(alone.to(logits.device)[:, None], self._end_alone(logits), out)
        return out

    def apply_to_candidates(self, values: torch.Tensor, ids: torch.Tensor, config: GenerationConfig | None = None,
                            size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """apply() on a chain's candidates (models/candidates.py; CPU rows, the only ones compacted): logits (B, W) of
        token ids (B, W), rising along each row, every other token at -inf -> the same, what it drops at -inf (a row
        left with the end token alone: that token at logit 1, the rest -inf); the same tokens as apply() on the whole
        row, from W logits read instead of V; `size` as apply()'s."""
        rows = values.detach().to("cpu", torch.float64)
        row_ids = ids.cpu()
        sizes = _host_sizes(size, values.shape[0])
        kept = torch.zeros(values.shape, dtype=torch.bool)              # (B, W)
        alone = torch.zeros(values.shape[0], dtype=torch.bool)         # (B,)
        for row, (row_values, token_ids) in enumerate(zip(rows, row_ids)):
            keep = self.keep(row_values, token_ids, sizes[row])
            if keep is None:
                alone[row] = True
            else:
                kept[row] = torch.isin(token_ids, torch.tensor(keep, dtype=torch.int64))
        out = values.masked_fill(~kept.to(values.device), float("-inf"))
        return self._alone_where(alone.to(values.device), out, ids) if alone.any() else (out, ids)

    def _alone_where(self, alone: torch.Tensor, values: torch.Tensor, ids: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `alone` (B,) bool replaced by the end token alone, in W columns of distinct rising ids."""
        width = values.shape[-1]
        key = ("alone candidates", values.device, values.dtype, width)
        if key not in self._on_device:
            others = torch.arange(width, dtype=torch.int64)
            others = others + (others >= self.end_token).long()              # W ids, none the end token
            alone_ids, _ = torch.sort(torch.cat([others[:width - 1], torch.tensor([self.end_token])]))
            alone_values = torch.where(alone_ids == self.end_token, 1.0, float("-inf")).to(values.dtype)
            self._on_device[key] = (alone_values.to(values.device), alone_ids.to(values.device))
        alone_values, alone_ids = self._on_device[key]
        return (torch.where(alone[:, None], alone_values, values), torch.where(alone[:, None], alone_ids, ids))

    def keep(self, values: torch.Tensor, ids: torch.Tensor | None = None, n: int | None = None) -> list[int] | None:
        """Ids of the tokens to keep from one row of logits (V,) float64, or None for "the end token alone"; with
        `ids` (W,) rising, the logits are of those tokens (a chain's candidates), every other token at -inf; `n`:
        llama.cpp's array size (None: the tokens not at -inf)."""
        candidates = torch.nonzero(values > float("-inf")).flatten()
        if len(candidates) == 0:
            return []
        probs = values[candidates].softmax(dim=0)
        if ids is not None:
            candidates = ids[candidates]
        order = torch.argsort(probs, descending=True, stable=True)
        ids = candidates[order].tolist()                                # by falling probability
        p = probs[order].tolist()
        end = [token in self.end_ids for token in ids]
        p_end = sum(q for q, is_end in zip(p, end) if is_end)
        p_text = sum(q for q, is_end in zip(p, end) if not is_end)
        if EOG_RATIO * p_end * (len(ids) if n is None else n) > p_text:
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
