"""`infill_keep`: llama.cpp's infill sampler (`llama_sampler_infill_apply`) on a row's K likeliest candidates, one
Triton program per row, so that the decode loop never waits on the host for it (models/infill.py calls it on CUDA).

Each program reads K candidates (logits and token ids, in any order; -inf or NaN logits are no candidates), ranks
them by falling logit, ties by rising id (the host path's order), and runs llama.cpp's sequential pass in float64:
- 3 * p(end) * n > p(text): only the end-of-generation candidates stay (n: the caller's size of llama.cpp's candidate
  array per row, `sizes`, which counts the tokens a logit bias banned (-inf, p 0) and the candidates beyond K; without
  it the candidates not at -inf);
- else, in rank order, each candidate i0 with a text meets the candidates whose text begins with it (rank order):
  the likelier takes the other's probability (a tie: i0), the other leaves; i0's successive absorptions are one
  prefix sum (`tl.cumsum`), the first candidate likelier than what i0 holds by then takes it all;
- text candidates below 0.2 leave; none left: "the end token alone"; else text below 1 / (texts + 1) of the
  renormalized rest leaves too (end-of-generation candidates always stay).
A token's text is its row of a byte table (bytes, length; length 0 for special tokens and ids past the table);
whether it ends generation is a flag vector. Output per row: the candidates' ids in rank order, their logits where
kept and -inf elsewhere, and whether the row is left with the end token alone.

`infill_keep_reference` is the same in plain PyTorch and Python loops (pair by pair, as llama.cpp reads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.devices import on_first_tensors_device

EOG_RATIO = 3.0          # 3 * p(end) * n > p(text): end here
FIRST_THRESHOLD = 0.2    # text candidates below it leave (after merging)
_EOG_RATIO = tl.constexpr(EOG_RATIO)
_FIRST_THRESHOLD = tl.constexpr(FIRST_THRESHOLD)
MAX_CANDIDATES = 128     # O(K^2) vector work in one program: beyond this the host is the better place


# (A vector & a scalar bool is int32 in Triton 3.6's interpreter, which then refuses it as a mask: tl.where instead.)


@triton.jit
def _pick(x, lanes, at):
    """x[at] of a (K,) vector, as a scalar."""
    return tl.sum(tl.where(lanes == at, x, tl.zeros_like(x)), axis=0)


@triton.jit
def _infill_keep_kernel(VALUES, IDS, TABLE, LENGTHS, ENDS, SIZES, OUT_IDS, OUT_VALUES, ALONE,
                        n_cols, n_table, n_ends, stride_table,
                        BLOCK: tl.constexpr, HAS_SIZES: tl.constexpr):
    """VALUES (B, n_cols) fp32, IDS (B, n_cols) int64; TABLE (n_table, stride_table) uint8, LENGTHS (n_table,) int32,
    ENDS (n_ends,) int8, SIZES (B,) int64 (read where HAS_SIZES) -> OUT_IDS (B, n_cols) int64, OUT_VALUES (B, n_cols)
    fp32, ALONE (B,) int8."""
    row = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)                                                     # (K,)
    inside = lanes < n_cols
    v = tl.load(VALUES + row * n_cols + lanes, mask=inside, other=float("-inf"))
    ids = tl.load(IDS + row * n_cols + lanes, mask=inside, other=0)
    ids = tl.where(inside, ids, (1 << 62) + lanes.to(tl.int64))                    # padding: distinct, ranked last
    cand = v > float("-inf")                                                        # (NaN is no candidate)
    v = tl.where(cand, v, float("-inf"))
    n = tl.sum(cand.to(tl.int32), axis=0)                                           # candidates here
    if HAS_SIZES:
        size = tl.load(SIZES + row).to(tl.float64)                                  # llama.cpp's cur_p->size
    else:
        size = n.to(tl.float64)

    # Rank by falling logit, ties by rising id (padding after everything): a permutation of the lanes.
    before = (v[None, :] > v[:, None]) | ((v[None, :] == v[:, None]) & (ids[None, :] < ids[:, None]))
    rank = tl.sum(before.to(tl.int32), axis=1)                                     # (K,) rank of lane i
    one_hot = rank[None, :] == lanes[:, None]                                       # [r, i]: lane i has rank r
    sv = tl.sum(tl.where(one_hot, v[None, :], 0.0), axis=1)                         # (K,) by rank
    sid = tl.sum(tl.where(one_hot, ids[None, :], 0), axis=1)
    scand = lanes < n

    has_text = scand & (sid < n_table)
    lengths = tl.load(LENGTHS + sid, mask=has_text, other=0)                        # (K,) 0: no text
    end = tl.load(ENDS + sid, mask=scand & (sid < n_ends), other=0) != 0

    top = tl.max(tl.where(scand, sv, -3.0e38), axis=0)                            # (finite, for a row without any)
    e = tl.where(scand, tl.exp(sv.to(tl.float64) - top.to(tl.float64)), 0.0)
    p = e / tl.maximum(tl.sum(e, axis=0), 1e-300)                                   # (K,) float64
    p_end = tl.sum(tl.where(end, p, 0.0), axis=0)
    p_text = tl.sum(tl.where(scand & ~end, p, 0.0), axis=0)
    ends_now = _EOG_RATIO * p_end * size > p_text

    alive = scand
    if not ends_now:
        for r in range(0, n):
            p_r = _pick(p, lanes, r)
            alive_r = _pick(alive.to(tl.int32), lanes, r) > 0
            len_r = _pick(lengths, lanes, r)
            id_r = _pick(sid, lanes, r)
            # m: the live candidates whose text begins with r's (r's text not empty)
            m = tl.where((len_r > 0) & alive_r, alive & (lanes != r) & (lengths >= len_r), False)
            for at in range(0, len_r):
                byte = tl.load(TABLE + id_r * stride_table + at)
                col = tl.load(TABLE + sid * stride_table + at, mask=m, other=0)
                m = m & (col == byte)
            q = tl.where(m, p, 0.0)
            held = p_r + (tl.cumsum(q, axis=0) - q)                                  # (K,) what r holds on meeting each
            taker = tl.min(tl.where(m & (p > held), lanes, BLOCK), axis=0)         # the first likelier one, or BLOCK
            absorbed = m & (lanes < taker)
            gained = tl.sum(tl.where(absorbed, p, 0.0), axis=0)
            taken = taker < BLOCK
            p = tl.where(lanes == taker, p + _pick(held, lanes, taker), p)
            p = tl.where(lanes == r, tl.where(taken, 0.0, p_r + gained), p)
            p = tl.where(absorbed, 0.0, p)
            alive = alive & ~absorbed & ~tl.where(taken, lanes == r, False)

        kept = alive & (end | (p >= _FIRST_THRESHOLD))
        texts = tl.sum((kept & ~end).to(tl.int32), axis=0)
        total = tl.sum(tl.where(kept, p, 0.0), axis=0)
        threshold = 1.0 / (texts + 1).to(tl.float64)
        alone = (texts == 0) & (n > 0)                                               # (no candidates: nothing kept)
        keep = tl.where(alone, False, kept & (end | (p / total >= threshold)))
    else:
        keep = scand & end
        alone = n < 0                                                               # (False)

    tl.store(OUT_IDS + row * n_cols + lanes, sid, mask=inside)
    tl.store(OUT_VALUES + row * n_cols + lanes, tl.where(keep, sv, float("-inf")), mask=inside)
    tl.store(ALONE + row, alone.to(tl.int8))


def check_infill_inputs(values: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, lengths: torch.Tensor,
                        ends: torch.Tensor, sizes: torch.Tensor | None = None) -> None:
    """ValueError naming what is wrong, before anything reaches Triton."""
    if values.dim() != 2 or values.dtype != torch.float32:
        raise ValueError(f"infill_keep: values must be (B, K) float32, got {tuple(values.shape)} {values.dtype}")
    if ids.shape != values.shape or ids.dtype != torch.int64:
        raise ValueError(f"infill_keep: ids must be int64 of values' shape {tuple(values.shape)}, "
                         f"got {tuple(ids.shape)} {ids.dtype}")
    if not 1 <= values.shape[1] <= MAX_CANDIDATES:
        raise ValueError(f"infill_keep: 1 to {MAX_CANDIDATES} candidates a row, got {values.shape[1]}")
    if table.dim() != 2 or table.dtype != torch.uint8 or table.stride(1) != 1:
        raise ValueError(f"infill_keep: table must be (N, L) uint8 with unit last stride, got "
                         f"{tuple(table.shape)} {table.dtype}")
    if lengths.shape != table.shape[:1] or lengths.dtype != torch.int32:
        raise ValueError(f"infill_keep: lengths must be ({table.shape[0]},) int32, got {tuple(lengths.shape)} "
                         f"{lengths.dtype}")
    if ends.dim() != 1 or ends.dtype != torch.int8:
        raise ValueError(f"infill_keep: ends must be (V,) int8, got {tuple(ends.shape)} {ends.dtype}")
    if sizes is not None and (sizes.shape != values.shape[:1] or sizes.dtype != torch.int64):
        raise ValueError(f"infill_keep: sizes must be ({values.shape[0]},) int64, got {tuple(sizes.shape)} "
                         f"{sizes.dtype}")
    devices = {t.device for t in (values, ids, table, lengths, ends) + (() if sizes is None else (sizes,))}
    if len(devices) != 1:
        raise ValueError(f"infill_keep: all inputs on one device, got {sorted(map(str, devices))}")


@on_first_tensors_device
def infill_keep(values: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, lengths: torch.Tensor,
                ends: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """values (B, K) float32 logits of token ids (B, K) int64 (any order; -inf: no candidate), the vocabulary's
    byte table (N, L) uint8 and lengths (N,) int32, end-of-generation flags (V,) int8, `sizes` (B,) int64: each row's
    n of the end test (llama.cpp's array size; None: its candidates not at -inf) ->
    (ids (B, K) int64 by rank, values (B, K) float32: the logit where kept, else -inf, alone (B,) bool: the row is
    left with the end token alone). No host synchronization. `out`: the three outputs to write (tests poison them)."""
    check_infill_inputs(values, ids, table, lengths, ends, sizes)
    values, ids = values.contiguous(), ids.contiguous()
    B, K = values.shape
    if out is None:
        out = (torch.empty_like(ids), torch.empty_like(values), torch.empty(B, dtype=torch.int8, device=values.device))
    out_ids, out_values, alone = out
    if B:
        _infill_keep_kernel[(B,)](values, ids, table, lengths, ends, values if sizes is None else sizes.contiguous(),
                                  out_ids, out_values, alone, K, table.shape[0], ends.shape[0], table.stride(0),
                                  BLOCK=triton.next_power_of_2(K), HAS_SIZES=sizes is not None, num_warps=4)
    return out_ids, out_values, alone.bool()


def infill_keep_reference(values: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, lengths: torch.Tensor,
                          ends: torch.Tensor, sizes: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`infill_keep` in plain PyTorch and Python, llama.cpp's loop over pairs, in float64."""
    check_infill_inputs(values, ids, table, lengths, ends, sizes)
    B, K = values.shape
    out_ids = torch.empty(B, K, dtype=torch.int64)
    out_values = torch.full((B, K), float("-inf"))
    alone = torch.zeros(B, dtype=torch.bool)
    for row in range(B):
        lanes = [(v, i) for v, i in zip(values[row].tolist(), ids[row].tolist())]
        order = sorted(lanes, key=lambda lane: (not lane[0] > float("-inf"), -lane[0] if lane[0] > float("-inf")
                                                else 0.0, lane[1]))
        out_ids[row] = torch.tensor([i for _, i in order])
        data = [[i, v, 0.0, True] for v, i in order if v > float("-inf")]            # id, logit, p, alive
        if not data:
            continue
        p = torch.tensor([v for _, v, _, _ in data], dtype=torch.float64).softmax(0).tolist()
        for d, q in zip(data, p):
            d[2] = q

        def text(token):
            if token >= table.shape[0]:
                return b""
            return bytes(table[token, :int(lengths[token])].tolist())

        def is_end(token):
            return token < ends.shape[0] and bool(ends[token])
        p_end = sum(d[2] for d in data if is_end(d[0]))
        p_text = sum(d[2] for d in data if not is_end(d[0]))
        n = len(data) if sizes is None else int(sizes[row])
        if EOG_RATIO * p_end * n > p_text:
            keep = {d[0] for d in data if is_end(d[0])}
        else:
            for i0 in range(len(data)):
                for i1 in range(len(data)):
                    if not data[i0][3]:
                        break
                    if i0 == i1 or not data[i1][3]:
                        continue
                    a, b = text(data[i0][0]), text(data[i1][0])
                    if a and len(a) <= len(b) and b.startswith(a):
                        dst, src = (i1, i0) if data[i1][2] > data[i0][2] else (i0, i1)
                        data[dst][2] += data[src][2]
                        data[src][2], data[src][3] = 0.0, False
            kept = [d for d in data if d[3] and (is_end(d[0]) or d[2] >= FIRST_THRESHOLD)]
            texts = sum(not is_end(d[0]) for d in kept)
            alone[row] = texts == 0
            total = sum(d[2] for d in kept)
            keep = set() if texts == 0 else {d[0] for d in kept if is_end(d[0]) or d[2] / total >= 1 / (texts + 1)}
        for lane, token in enumerate(out_ids[row].tolist()):
            if token in keep:
                out_values[row, lane] = values[row][ids[row] == token][0]
    return out_ids, out_values, alone
