"""The KV cache: one preallocated (B, Hkv, S_max, D) buffer pair per layer, written in place.

Static shapes are what let the decode step be captured once in a CUDA graph: the cache never moves
or grows, and each step writes T slots per sequence at its own position (T = 1, or 1 + the drafts
being verified). Rolling back rejected drafts is only a shorter length: their slots are overwritten later.

8-bit caches ("fp8": float8_e4m3fn, "int8"): K and V in 8 bits with one float32 scale per token and KV
head (B, Hkv, S_max), quantized on the way in by `kernels.append_kv` (one fused pass, no separate quantize
step; the fused one-token step's qkv_rope quantizes them itself, to the same bytes: kernels/fused_gemv.py).
Every reader sees the same quantized values: flash_decode, eager and the fp8 prefill kernel take the scales, sdpa
and the CPU's prefill dequantize.
About half the bytes of bf16: twice the context, and half the attention reads.
int8 (scale amax / 127) is the accurate one: on SmolLM2 over real code its top-1 next token agrees with an
unquantized cache's at 98.4% of positions (98.2% on 2026-11-30), e4m3's at 95.9%, and 98.6% with the exact sink
and window tokens below, which fp8 keeps (tests/models/test_kv_cache_accuracy.py; int8 with them 99.6%, but it
meets the bar without them and they cost a GPU's prefill and decode some, so int8 keeps none). The
kernels take both with the same scales and plans: the append quantizes either, and flash_decode converts
either in its key loop (bench/results/NOTES.md has their speeds side by side). On a GPU, where the model has
GQA, an 8-bit V is stored sequence-major, (B, Hkv, D, S_max) seen as (B, Hkv, S_max, D): the layout
flash_decode's dot kernel reads fastest (`kernels.interface.sequence_major_v_pays` says why and by how much).

Exact sink and window tokens: an fp8 cache (EXACT_WINDOW_CACHES) also keeps, per layer, a model-dtype copy of each
row's first EXACT_SINK tokens and, in a ring of EXACT_RING slots, its most recent ones (`ExactTokens`; every token
is still quantized on the way in, so a token leaving the window needs no move). Every reader takes, for the query at
position i, keys 0 .. EXACT_SINK-1 and i-EXACT_WINDOW+1 .. i from the copy and the others from the 8-bit cache
(kernels/exact_window.py, `kernels.reference.flash_decode_exact_window`, models/attention.py for prefill and sdpa).
A slot records the position it holds (-1: none), so a reader never takes a stale one for another position;
`exact_window_valid` says whether a row cut to some length still holds its window (prefix reuse). The ring keeps
the last EXACT_RING = 512 tokens' copies, far more than a step reads (EXACT_WINDOW + MAX_STEP_TOKENS = 48), so that
an edit cutting a prompt back by up to EXACT_RING - EXACT_WINDOW = 480 tokens keeps its window; readers gather the
slots of the positions they want (`exact_slot`), never scan the ring, so decoding costs the same whatever its size,
and a prefill is handed only the sink and the 48 positions before its start (`exact_before`: 64 slots). A cut
further back, or a cache-reuse move (which drops the copies past its target), is repaired by a prefill of the
`repair_span` tokens before the cut that writes only the exact copies (`models.llama.Transformer.prefill`), or
prefilled from 0 where that would reach into the sink. A cache of fewer than EXACT_SINK + EXACT_RING tokens keeps
a ring of only its own length past the sink (`exact_ring_size`): every position has its own slot there.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from models.config import ModelConfig
from models.errors import OutOfMemoryError

if TYPE_CHECKING:   # (imported lazily at run time: kernels must import after TRITON_INTERPRET is set)
    from kernels.validation import ExactTokens

HEADROOM_BYTES = 1 << 30  # left free for activations, logits and the CUDA-graph pool
QUANTIZED = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}   # 8-bit cache types, by user-facing name
SCALE_BYTES = 4           # one float32 scale per token, KV head and tensor (K and V)

# Exact tokens of an fp8 cache. e4m3 agreed with the unquantized cache's top-1 next token at 95.7% of 2,040
# positions of real code (SmolLM2; issue 11's bar: 98%); read exact, the first 4 (attention sinks) and last 32
# keys of every query took it to 98.6% (98.5% at 8,188 positions), int8 from 98.0% to 99.7%. Fewer missed:
# 4 + 16 gave 98.1%, 0 + 32 97.8%, 4 + 0 96.3%; more bought little (16 + 32: 98.6%, KL 7.0e-4 against 4 + 32's
# 7.7e-4; 4 + 64: 98.9%) (bench/kv_exact_window.py, bench/results/NOTES.md "Issue 11's accuracy bar").
# 16 sink tokens, not 4: through the product's own path 16 + 32 gave 98.63% (KL 6.9e-4) against 4 + 32's 98.53%
# (7.6e-4), for 12 slots more a row (24 KB a layer of CodeLlama-7B). (They were first chosen to keep a view of the
# cache from slot EXACT_SINK aligned; flash_decode now reads the whole cache and starts at the sink itself.)
EXACT_SINK = 16
EXACT_WINDOW = 32
# The ring holds at least the window plus the most tokens one step writes (1 + the drafts a verification carries:
# the exact-window kernels take up to 16 query tokens), so that drafts written and rolled back never overwrite a
# kept token.
MAX_STEP_TOKENS = 16
# And a surplus, for edits: a prefix cut back by more than EXACT_RING - EXACT_WINDOW tokens has lost its window's
# copies, and rebuilding them re-prefills `repair_span` tokens (993 for CodeLlama-7B: an edit of a 32k prompt's last
# 100 tokens took its first token from 78 to 408 ms on an H200 with the 48-slot ring, bench/results/NOTES.md Run 39).
# 512 keeps cuts of up to 480 tokens free (an edit near the end of a prompt; llama.cpp's /infill caps its suffix at
# n_batch / 4 = 512 tokens, so most cursor edits there too). Its price is memory only (readers gather the slots they
# need): a slot is K + V in bf16, 2 x D x 2 = 512 bytes per KV head and layer at D = 128, so 528 slots a row are
# 264 MiB for CodeLlama-7B (32 layers x 32 KV heads: 512 KiB a slot), 99 MiB for -34B (48 x 8: 192 KiB), 12 MiB for
# SmolLM2 in bf16, about 1,000 tokens of their fp8 caches (3% of a 32k one); 64 slots were 32 / 12 MiB. (The most:
# a shorter cache's ring is shorter, `exact_ring_size`.)
EXACT_RING = 512
assert EXACT_RING >= EXACT_WINDOW + MAX_STEP_TOKENS
EXACT_SLOTS = EXACT_SINK + EXACT_RING
# What a prefill is handed of the prefix (`exact_before`): the sink and a ring of the 48 positions before its start
# (it reads 31 of them), 64 slots as the cache's whole ring was before the surplus: the prefill's N, and the layout
# its readers know, stay as they were however long the cache's ring.
PRIOR_RING = EXACT_WINDOW + MAX_STEP_TOKENS
# The caches that keep them: e4m3 needs them for the 98% bar; int8 meets it alone (98.2%), and the exact tokens
# cost a GPU (CodeLlama-7B shape on an H200, bench/results/NOTES.md Run 40: a 32k prompt's prefill 1.64 s where a
# bf16 cache's takes 1.41, decode 3-5%), so int8, the fast one, stays without them.
EXACT_WINDOW_CACHES = ("fp8",)
POSITION_BYTES = 8        # an exact slot's int64 position


def cache_dtype_name(quant: str | None, dtype: torch.dtype) -> str:
    """The user-facing name of a cache's storage: "fp8", "int8" or the model dtype's name."""
    return quant or str(dtype).removeprefix("torch.")


def kv_cache_bytes_per_token(config: ModelConfig, dtype: torch.dtype, quant: str | None = None) -> int:
    """Bytes one token occupies in the cache over all layers: K and V, plus their scales when quantized (an 8-bit
    cache's exact tokens, fp8's, are a fixed cost per row: `exact_bytes_per_row`)."""
    if not quant:
        return config.kv_bytes_per_token(torch.tensor([], dtype=dtype).element_size())
    return config.kv_bytes_per_token(1) + 2 * config.n_layers * config.n_kv_heads * SCALE_BYTES


def exact_bytes_per_row(config: ModelConfig, dtype: torch.dtype, quant: str | None = None,
                        max_len: int | None = None) -> int:
    """Bytes of one row's exact sink and window tokens over all layers (EXACT_WINDOW_CACHES; 0 otherwise): K and V
    in the model dtype and each slot's position, EXACT_SINK + `exact_ring_size(max_len)` slots a layer (None: the
    most, EXACT_SLOTS)."""
    if quant not in EXACT_WINDOW_CACHES:
        return 0
    element = torch.tensor([], dtype=dtype).element_size()
    per_slot = config.kv_bytes_per_token(element) + config.n_layers * POSITION_BYTES
    return (EXACT_SLOTS if max_len is None else EXACT_SINK + exact_ring_size(max_len)) * per_slot


def exact_ring_size(max_len: int) -> int:
    """How many ring slots a cache of `max_len` tokens keeps: EXACT_RING, or max_len - EXACT_SINK where that is
    fewer (but at least a window and a step, as ExactTokens and the kernels assume a ring of at least the window). A
    cache holds no position past max_len - 1 (the engine clamps its steps there; the append and the fused step drop
    what lies past it), so such a ring never laps: each position keeps its own slot (slot p, as in the longest
    ring), and the longest ring's slots past max_len would never be written. (Were one written past it, it would
    take an earlier position's slot, recording its own: readers then miss that copy, never read a wrong one.)"""
    return min(EXACT_RING, max(max_len - EXACT_SINK, EXACT_WINDOW + MAX_STEP_TOKENS))


def exact_slot(positions: torch.Tensor, ring: int | None = None) -> torch.Tensor:
    """The exact slot of each position (any shape, int64): the position itself below EXACT_SINK, else its place
    in a ring of `ring` slots (the cache's `KVCache.exact_ring`; None: EXACT_RING) (`kernels.reference.ring_slot`
    with the cache's sizes: the layout every reader relies on)."""
    from kernels.reference import ring_slot      # (lazily, as `rows` imports ExactTokens)
    return ring_slot(positions, EXACT_SINK, EXACT_RING if ring is None else ring)


class CacheView(NamedTuple):
    """What attention reads: caches (B, Hkv, S, D) and, when quantized, their scales (B, Hkv, S) and exact sink
    and window tokens (`ExactTokens`, slots of their own: not cut by `prefix`)."""
    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    exact: ExactTokens | None = None

    def stored(self) -> tuple[torch.Tensor | None, ...]:
        """K, V and their scales (None for a 16/32-bit cache's)."""
        return self.k, self.v, self.k_scale, self.v_scale

    def prefix(self, length: int) -> CacheView:
        """The first `length` slots of every row."""
        return CacheView(*(t if t is None else t[:, :, :length] for t in self.stored()), self.exact)

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V in `dtype` (a copy when quantized, the cache itself otherwise)."""
        if self.k_scale is None:
            return self.k, self.v
        from kernels.reference import dequantize
        return dequantize(self.k, self.k_scale, dtype), dequantize(self.v, self.v_scale, dtype)

    def zeroed_past(self, cache_seqlens: torch.Tensor, dtype: torch.dtype) -> CacheView:
        """K and V in `dtype` with every slot at or past its row's length (cache_seqlens (B,)) zeroed: a copy."""
        past = torch.arange(self.k.shape[2], device=self.k.device) >= cache_seqlens[:, None]           # (B, S)
        return CacheView(*(t.masked_fill(past[:, None, :, None], 0.0) for t in self.dequantized(dtype)),
                         exact=self.exact)


class PrefillIndices(NamedTuple):
    """What every layer's cache writes and reads alike for one prefill chunk, computed once from the first layer's
    (`KVCache.prefill_indices`): every layer's exact slots record the same positions, so their slots, the prior's
    gather and the positions after the write are one set of small tensors, not ~40 tiny kernels a layer (an fp8
    edit's first token was host-bound: 3,044 launches against bf16's 1,238, bench/results/NOTES.md Run 42)."""
    start: torch.Tensor                         # (1,) int64: the chunk's first position, on the device
    prior_slots: torch.Tensor | None = None     # (1, EXACT_SINK + PRIOR_RING) slots `exact_before` gathers
    prior_pos: torch.Tensor | None = None       # (1, EXACT_SINK + PRIOR_RING) their positions, -1 for none
    span_index: torch.Tensor | None = None      # (n,) offsets in the span whose exact copies are written
    slots: torch.Tensor | None = None           # (1, n) their slots
    pos_after: torch.Tensor | None = None       # (1, slots) the row's slot positions once written


class KVCache(nn.Module):
    """One layer's keys and values for up to `batch` sequences of up to `max_len` tokens."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device,
                 quant: str | None = None, group: int = 1):
        """group: query heads per KV head (decides V's layout for an 8-bit cache)."""
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.dtype = dtype     # what attention computes in
        store = QUANTIZED[quant] if quant else dtype
        sequence_major = stores_v_sequence_major(group, store, torch.device(device))
        v_shape = (batch, n_kv_heads, head_dim, max_len) if sequence_major else shape
        # Zeros, not empty: slots past a sequence's length are masked, and 0 * NaN garbage would still be NaN.
        self.register_buffer("k", torch.zeros(shape, dtype=store, device=device), persistent=False)
        v = torch.zeros(v_shape, dtype=store, device=device)
        self.register_buffer("v", v.transpose(2, 3) if sequence_major else v, persistent=False)  # (B, Hkv, S, D)
        scales = (lambda: torch.ones(shape[:3], dtype=torch.float32, device=device)) if quant else (lambda: None)
        self.register_buffer("k_scale", scales(), persistent=False)
        self.register_buffer("v_scale", scales(), persistent=False)
        # fp8: the exact sink and ring slots (module docstring), each slot's position, -1 for none; a ring of no more
        # slots than the cache has tokens past the sink (`exact_ring_size`).
        windowed = quant in EXACT_WINDOW_CACHES
        self.exact_ring = exact_ring_size(max_len) if windowed else None
        slots = EXACT_SINK + (self.exact_ring or 0)
        exact = (batch, n_kv_heads, slots, head_dim)
        self.register_buffer("k_exact", torch.zeros(exact, dtype=dtype, device=device) if windowed else None,
                             persistent=False)                                                  # (B, Hkv, N, D)
        self.register_buffer("v_exact", torch.zeros(exact, dtype=dtype, device=device) if windowed else None,
                             persistent=False)
        self.register_buffer("exact_pos", torch.full((batch, slots), -1, dtype=torch.int64, device=device)
                             if windowed else None, persistent=False)                           # (B, N)

    def rows(self, first: int, end: int) -> CacheView:
        """Cache rows first..end-1, every slot."""
        view = CacheView(*(t if t is None else t[first:end] for t in (self.k, self.v, self.k_scale, self.v_scale)))
        if self.k_exact is None:
            return view
        from kernels.validation import ExactTokens
        return view._replace(exact=ExactTokens(self.k_exact[first:end], self.v_exact[first:end],
                                               self.exact_pos[first:end], EXACT_SINK, EXACT_WINDOW))

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> CacheView:
        """Decode: store each sequence's new k, v (B, Hkv, T, D) at positions input_pos[b] .. + T - 1.

        One fused append (quantizing an 8-bit cache; and an fp8 one's exact copies), no host sync: safe inside a
        captured CUDA graph. Returns the first B rows, (B, Hkv, S_max, D) and their scales.
        """
        view = self.rows(0, k.shape[0])
        append_kv(k, v, view.k, view.v, input_pos, view.k_scale, view.v_scale)
        self.write_exact(input_pos, k, v)
        return view

    def write_exact(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """An fp8 cache's exact copies of k, v (B, Hkv, T, D) at positions input_pos[b] .. + T - 1 (int64 (B,)),
        in their slots (`exact_slot`); nothing for another cache. Graph-safe (two scatters, no host sync). The
        quantized values are written elsewhere (`update`, or the fused step's qkv_rope)."""
        if self.k_exact is None:
            return
        T = k.shape[2]
        if T > MAX_STEP_TOKENS:     # (a shape: known while tracing, no sync)
            raise ValueError(f"a decode step of {T} tokens is more than the exact ring and the kernels are sized for "
                             f"(a window of {EXACT_WINDOW} + {MAX_STEP_TOKENS}); at most {MAX_STEP_TOKENS} a step")
        self._scatter_exact(0, input_pos[:, None] + torch.arange(T, device=k.device), k, v)    # positions (B, T)

    def fused_exact(self) -> tuple | None:
        """What the fused one-token step's qkv_rope needs to write row 0's exact copies itself
        (`kernels.fused_gemv.qkv_rope`'s `exact`): None without them."""
        if self.k_exact is None:
            return None
        return self.k_exact[:1], self.v_exact[:1], self.exact_pos[0], EXACT_SINK, self.exact_ring

    def prefill_indices(self, row: int, start: int, T: int, repair: bool = False, end: int | None = None
                        ) -> PrefillIndices:
        """`PrefillIndices` of a chunk of T tokens at start .. start + T - 1 of row `row` (`write` says what
        `repair` and `end` mean), from this cache's slots before the chunk is written: valid for every layer's."""
        first = torch.tensor([start], device=self.k.device)
        if self.k_exact is None:
            return PrefillIndices(first)
        from kernels.reference import exact_gather_slots
        pos = self.exact_pos[row:row + 1]                                                    # (1, slots)
        prior_slots, prior_pos = exact_gather_slots(pos, first, EXACT_SINK, PRIOR_RING)
        kept = T if end is None else end - start        # the span's tokens before `end`
        offsets = torch.arange(kept, device=self.k.device)                                   # in the span
        pos_after = pos.clone()
        if repair:
            index = offsets[-EXACT_WINDOW:]
        else:
            # Only these: a scatter with repeated slots (the ring's earlier laps) writes in no defined order.
            index = offsets[(start + offsets < EXACT_SINK) | (offsets >= kept - self.exact_ring)]
            pos_after.masked_fill_(pos_after >= start, -1)                                   # past the span
        positions = (start + index)[None]                                                    # (1, n)
        slots = exact_slot(positions, self.exact_ring)
        return PrefillIndices(first, prior_slots, prior_pos, index, slots, pos_after.scatter_(1, slots, positions))

    def write(self, row: int, start: int, k: torch.Tensor, v: torch.Tensor, repair: bool = False,
              end: int | None = None, indices: PrefillIndices | None = None) -> CacheView:
        """Prefill: store k, v (1, Hkv, T, D) at positions start..start+T of one sequence.

        Returns that sequence's keys and values so far as stored, (1, Hkv, start + T, D) views of the cache (and
        an 8-bit cache's (1, Hkv, start + T) scales): prefill reads what decoding will, the fp8 prefill kernel the
        bytes themselves, other readers `CacheView.dequantized`.
        An fp8 cache's exact copies of the span's sink tokens and last `exact_ring` (EXACT_RING) before `end`
        (default: the span's end; padding after it would push the prompt's last tokens out of the ring) are written
        too, so a later cut back by up to EXACT_RING - EXACT_WINDOW tokens keeps its window: read what the prefill
        needs of them first (`exact_before`).
        `repair` (fp8): the row already holds the span; only the exact copies of its last EXACT_WINDOW tokens are
        written (`models.llama.Transformer.prefill` says when they are right), the 8-bit cache is read as stored.
        `indices`: the chunk's `prefill_indices` (computed here without them), shared by the layers.
        """
        if repair and self.k_exact is None:
            raise ValueError("only an fp8 cache's exact window can be repaired")
        view = self.rows(row, row + 1)
        T = k.shape[2]
        indices = indices or self.prefill_indices(row, start, T, repair, end)
        if not repair:
            append_kv(k, v, view.k, view.v, indices.start, view.k_scale, view.v_scale)
        if self.k_exact is not None:
            self._scatter_copies(row, indices.slots, k[:, :, indices.span_index], v[:, :, indices.span_index])
            self.exact_pos[row:row + 1].copy_(indices.pos_after)
        return view.prefix(start + T)

    def _scatter_exact(self, first: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Exact copies of k, v (b, Hkv, n, D) at positions (b, n) (int64) of rows first .. first + b - 1, in their
        slots (`exact_slot`), each slot's position recorded."""
        slots = exact_slot(positions, self.exact_ring)                                       # (b, n)
        self._scatter_copies(first, slots, k, v)
        self.exact_pos[first:first + k.shape[0]].scatter_(1, slots, positions)

    def _scatter_copies(self, first: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (b, Hkv, n, D) into the exact slots (b, n) of rows first .. first + b - 1 (their positions are the
        caller's to record)."""
        b, Hkv, n, D = k.shape
        index = slots[:, None, :, None].expand(b, Hkv, n, D)
        rows = slice(first, first + b)
        self.k_exact[rows].scatter_(2, index, k.to(self.dtype))
        self.v_exact[rows].scatter_(2, index, v.to(self.dtype))

    def exact_before(self, row: int, start: int, indices: PrefillIndices | None = None) -> ExactTokens | None:
        """What a prefill from `start` reads of row `row`'s exact copies of the prefix, copied before its own write
        overwrites ring slots: positions 0 .. EXACT_SINK-1 and start-PRIOR_RING .. start-1 (a query at or past
        `start` reads none before start-EXACT_WINDOW+1 exact but the sink), those the row holds (pos -1 for the
        others); k, v (1, Hkv, EXACT_SINK + PRIOR_RING, D), pos (1, EXACT_SINK + PRIOR_RING), laid out as a cache
        with a ring of PRIOR_RING (`kernels.reference.gather_exact`): 64 slots however long the cache's ring.
        `indices`: the chunk's `prefill_indices` (their prior slots), computed before any layer wrote. None without
        exact tokens."""
        exact = self.rows(row, row + 1).exact
        if exact is None:
            return None
        from kernels.reference import gather_exact, take_exact
        if indices is not None:
            return take_exact(exact, indices.prior_slots, indices.prior_pos)
        return gather_exact(exact, torch.tensor([start], device=exact.pos.device), PRIOR_RING)

    def window_valid(self, row: int, length: int) -> bool:
        """Whether row `row`, cut to `length` tokens, still holds the exact copies its next queries read (True when
        without exact tokens; `exact_window_valid`)."""
        return exact_window_valid([self], row, length)

    def move(self, row: int, source: int, target: int, length: int, rotate) -> None:
        """Slots [source, source + length) of row `row` to [target, target + length) (target <= source; the ranges
        may overlap), the keys through `rotate` (float32 (1, Hkv, n, D) -> the same: models/cache_reuse.py turns them
        to their new positions). Values and their scales are copied as stored; 8-bit keys are dequantized, rotated
        and quantized again (new scales), as the append would store them. An fp8 cache's exact copies of
        positions from `target` on are dropped (marked empty): `window_valid` then says the row must be repaired."""
        old, new, rows = slice(source, source + length), slice(target, target + length), slice(row, row + 1)
        if self.k_scale is None:
            self.k[rows, :, new] = rotate(self.k[rows, :, old].float()).to(self.k.dtype)
        else:
            from kernels.reference import dequantize, quantize
            keys = rotate(dequantize(self.k[rows, :, old], self.k_scale[rows, :, old], torch.float32))
            self.k[rows, :, new], self.k_scale[rows, :, new] = quantize(keys, self.k.dtype)
            self.v_scale[rows, :, new] = self.v_scale[rows, :, old].clone()
            if self.exact_pos is not None:
                self.exact_pos[rows].masked_fill_(self.exact_pos[rows] >= target, -1)
        self.v[rows, :, new] = self.v[rows, :, old].clone()

    def saved(self, row: int, length: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Copies on `device` of row `row`'s first `length` slots as stored: K, V (1, Hkv, length, D) and, 8-bit,
        their scales (1, Hkv, length) and, fp8, the exact tokens' K, V (1, Hkv, n, D) and positions (1, n) (those
        at or past `length` marked empty), n = min(length, N) of the cache's N slots: positions below N sit in
        their own slots, so a short prompt's copies are its first slots, not the whole ring's (`exact_bytes`)."""
        view = self.rows(row, row + 1)
        copies = tuple(t.to(device, copy=True) for t in view.prefix(length).stored() if t is not None)
        if view.exact is None:
            return copies
        n = min(length, view.exact.pos.shape[1])
        pos = view.exact.pos[:, :n].masked_fill(view.exact.pos[:, :n] >= length, -1)
        return copies + tuple(t.to(device, copy=True) for t in (view.exact.k[:, :, :n], view.exact.v[:, :, :n], pos))

    def bytes_per_token(self) -> int:
        """What one slot of one row holds: K, V and their scales (an fp8 row's exact tokens: `exact_bytes`)."""
        return sum(t[0, :, 0].numel() * t.element_size() for t in self.rows(0, 1).stored() if t is not None)

    def exact_bytes(self, length: int | None = None) -> int:
        """What one row's exact tokens hold (0 without them): K, V and positions; of a row of `length` tokens as
        `saved` copies them (its first min(length, N) of N slots), default all."""
        exact = self.rows(0, 1).exact
        if exact is None:
            return 0
        n = exact.pos.shape[1] if length is None else min(length, exact.pos.shape[1])
        return sum(t[0, ..., :n, :].numel() * t.element_size() for t in (exact.k, exact.v)) + n * POSITION_BYTES

    def restore(self, row: int, saved: tuple[torch.Tensor, ...]) -> None:
        """Put `saved` (what `saved` returned, from a cache of this layout) back as row `row`'s first slots (and, fp8,
        its exact tokens)."""
        view = self.rows(row, row + 1)
        stored = [t for t in view.stored() if t is not None]
        if view.exact is not None:
            stored += [view.exact.k, view.exact.v, view.exact.pos]
        for place, copy in zip(stored, saved, strict=True):
            axis = 1 if place.dim() == 2 else 2  # the slots' (exact positions are (1, n))
            if (copy.dtype != place.dtype or copy.dim() != place.dim() or copy.shape[axis] > place.shape[axis]
                    or copy.shape[:axis] + copy.shape[axis + 1:] != place.shape[:axis] + place.shape[axis + 1:]):
                raise ValueError(f"a saved cache of {copy.dtype} {tuple(copy.shape)} does not fit this cache's "
                                 f"{place.dtype} {tuple(place.shape)}")
            if place.dim() == 2:                 # the exact slots past the saved ones hold no position
                place.fill_(-1)
            place[(slice(None),) * axis + (slice(0, copy.shape[axis]),)] = copy


def repair_span(n_layers: int) -> int:
    """How many tokens before a row's length a repair prefill (`models.llama.Transformer.prefill`) starts for its
    last EXACT_WINDOW exact copies to come out right: the copies before it are missing, which errs in the layer's
    output at the EXACT_WINDOW - 1 positions after them, hence in the next layer's keys there, and so on."""
    return EXACT_WINDOW + (n_layers - 1) * (EXACT_WINDOW - 1)


def repair_start(start: int, n_layers: int) -> int:
    """Where a repair prefill for a row cut to `start` begins (`repair_span` before it), or 0 where that would
    reach into the sink: then the row is prefilled from its start instead."""
    first = start - repair_span(n_layers)
    return first if first >= EXACT_SINK else 0


def exact_tokens_held(caches: list[KVCache], row: int, length: int) -> tuple[bool, bool]:
    """Whether row `row` of every cache, cut to `length` tokens, still holds the exact copies its next queries
    read: (the sink's, positions 0 .. min(EXACT_SINK, length) - 1; the sink's and the window's, length -
    EXACT_WINDOW .. length - 1 too). (True, True) for caches without exact tokens. One host sync of two bools,
    however many layers (the comparison runs where the caches are; reading every layer's slot positions to the host
    was 135 KB for CodeLlama-7B), for prefix reuse, between requests."""
    caches = [c for c in caches if c.exact_pos is not None]
    if not caches or length == 0:
        return True, True
    device = caches[0].exact_pos.device
    sink = min(EXACT_SINK, length)
    # The sink's positions, then the window's (those below the sink are in it twice: the same answer)
    needed = torch.cat((torch.arange(sink, device=device),
                        torch.arange(max(0, length - EXACT_WINDOW), length, device=device)))     # (n,) int64
    held = torch.stack([c.exact_pos[row] for c in caches])                                      # (layers, N)
    found = held[:, exact_slot(needed, caches[0].exact_ring)] == needed       # (layers, n) (one ring: one max_len)
    return tuple(torch.stack((found[:, :sink].all(), found.all())).tolist())


def exact_window_valid(caches: list[KVCache], row: int, length: int, sink_only: bool = False) -> bool:
    """Whether row `row` of every cache, cut to `length` tokens, still holds the exact copies its next queries
    read: positions 0 .. min(EXACT_SINK, length) - 1 and (unless `sink_only`) length - EXACT_WINDOW .. length - 1.
    True for caches without exact tokens. One host sync (`exact_tokens_held`)."""
    return exact_tokens_held(caches, row, length)[0 if sink_only else 1]


def stores_v_sequence_major(group: int, store: torch.dtype, device: torch.device) -> bool:
    """Whether a cache keeps V sequence-major: where flash_decode reads it faster so (CUDA, 8-bit, GQA). On a CPU no
    kernel reads it, and dequantizing it for SDPA is a strided copy (SmolLM2's 32k int8 V: 193 ms against 1.7)."""
    if device.type != "cuda":
        return False
    from kernels.interface import sequence_major_v_pays  # lazy, as append_kv below (and no Triton off CUDA)
    return sequence_major_v_pays(group, store)


def append_kv(k_new, v_new, k_cache, v_cache, input_pos, k_scale=None, v_scale=None) -> None:
    """`kernels.append_kv`: k_new, v_new (B, Hkv, T, D) at positions input_pos[b] .. + T - 1 of row b, an
    8-bit cache quantized in the same pass."""
    if k_cache.is_cuda:
        from kernels import append_kv as kernel  # lazy: kernels must import after TRITON_INTERPRET is set (CPU)
    else:   # (kernels.interface's own choice off CUDA, without importing Triton and every kernel: 0.15 s of a start)
        from kernels.reference import append_kv as kernel
    kernel(k_new, v_new, k_cache, v_cache, input_pos, k_scale, v_scale)


def check_kv_cache_fits(config: ModelConfig, batch: int, max_len: int, dtype: torch.dtype,
                        device: torch.device, name: str, quant: str | None = None, loading: int = 0) -> None:
    """Raise OutOfMemoryError, saying how many tokens would fit, when the cache cannot be allocated.

    loading: bytes of weights still to load beside it (a check made before the model is built)."""
    per_token = batch * kv_cache_bytes_per_token(config, dtype, quant)
    exact = batch * exact_bytes_per_row(config, dtype, quant, max_len)      # fp8: the exact sink and window tokens
    fit = capacity_tokens(config, batch, dtype, device, quant, loading)
    if max_len > fit:
        from models.weights_memory import size_text
        # (measured, not fit x per_token + exact: where not even the exact tokens fit, that overstated it)
        free = max(0, free_memory_bytes(device) - HEADROOM_BYTES - loading)
        weights = f" and the {size_text(loading)} of weights to load" if loading else ""
        if fit == 0 and exact:      # even the fewest exact slots a row keeps (a window and a step) do not fit
            least = batch * exact_bytes_per_row(config, dtype, quant, 1)
            advice = (f"its exact sink and window tokens alone take {least / 2**30:.2f} GiB (--kv-cache int8 keeps "
                      f"none)")
        else:
            advice = "ask for a smaller context" + ("" if quant else " (or an 8-bit cache, --kv-cache fp8 or int8: "
                                                                     "about half the bytes per token)")
        raise OutOfMemoryError(
            f"{name}: a {cache_dtype_name(quant, dtype)} KV cache of {max_len} tokens x batch {batch} needs "
            f"{(per_token * max_len + exact) / 2**30:.2f} GiB but only about {free / 2**30:.2f} GiB of {device.type} "
            f"memory is free (after 1 GiB headroom{weights}); about {fit} tokens would fit: {advice}")


def capacity_tokens(config: ModelConfig, batch: int, dtype: torch.dtype, device: torch.device,
                    quant: str | None = None, loading: int = 0) -> int:
    """The most tokens per sequence a cache of this kind could hold in the memory free now (less `loading` bytes
    of weights still to load)."""
    per_token = batch * kv_cache_bytes_per_token(config, dtype, quant)
    free = free_memory_bytes(device) - HEADROOM_BYTES - loading

    def fits(tokens: int) -> bool:      # (an fp8 row's exact slots grow with its length up to EXACT_SLOTS)
        return tokens * per_token + batch * exact_bytes_per_row(config, dtype, quant, tokens) <= free

    low, high = 0, max(0, free // per_token)        # fits(low) or low == 0; not fits(high + 1)
    while low < high:                               # (what fits only shrinks as the length grows)
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # No /proc off Linux: every size passed this check there, and a cache larger than the machine's memory was
    # allocated (macOS then swaps; Windows fails deep in the allocator).
    if sys.platform == "win32":
        return _available_memory_on_windows()
    for name in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):    # macOS has only the total: a bound still
        try:
            return os.sysconf(name) * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            continue
    return 1 << 62  # unknown: let the allocator decide


def _available_memory_on_windows() -> int:
    import ctypes

    class MemoryStatus(ctypes.Structure):       # MEMORYSTATUSEX
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    *[(name, ctypes.c_ulonglong) for name in ("ullTotalPhys", "ullAvailPhys", "ullTotalPageFile",
                                                              "ullAvailPageFile", "ullTotalVirtual", "ullAvailVirtual",
                                                              "ullAvailExtendedVirtual")]]
    status = MemoryStatus(dwLength=ctypes.sizeof(MemoryStatus))
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return 1 << 62
    return status.ullAvailPhys
