"""Reusing the last request's KV cache past the first difference: llama.cpp's `--cache-reuse N` (`n_cache_reuse`).

Exact reuse keeps the prompt's longest common prefix with the tokens the cache holds. Past it, llama.cpp's server
(tools/server, since its PR #9866) walks both sequences: where the prompt goes on with a run of at least N tokens
that the cache holds further on, that run is moved back to where the prompt has it (the slots in between dropped)
and its keys rotated to their new positions, instead of being prefilled again; where it does not, the walk
skips one cached token. An editor's prompt that lost some lines in its middle (llama.vim's ring of extra chunks
losing its oldest, a window whose top line left) keeps what follows them. The walk never moves a run to the right
and stops at the first prompt token the cache lacks after a kept run: what follows is prefilled.

Approximate, hence off unless asked for (as in llama.cpp): a moved token's keys and values beyond the first layer
were computed attending to the tokens that were dropped. Only RoPE's positions are made exact: each key is turned by
the difference between its new and its old angle in the model's own table.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

import torch

from models.llama import apply_rotary


class Move(NamedTuple):
    """Cache slots [source, source + length) of a row to [target, target + length), target <= source."""
    source: int
    target: int
    length: int


def common_run(a: list[int], i: int, b: list[int], j: int, limit: int) -> int:
    """How many tokens a[i:] and b[j:] share from their starts, at most `limit`: slices compared by doubling steps,
    then bisected (C loops, each element compared about twice), not a Python loop over 32k tokens a request."""
    limit = max(0, min(limit, len(a) - i, len(b) - j))
    n, step = 0, 64
    while n < limit:
        size = min(step, limit - n)
        if a[i + n:i + n + size] != b[j + n:j + n + size]:
            lo, hi = n, n + size          # a[i:i + lo] == b[j:j + lo]; they differ before hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if a[i + lo:i + mid] == b[j + lo:j + mid]:
                    lo = mid
                else:
                    hi = mid
            return lo
        n, step = n + size, step * 2
    return n


def reusable_runs(cached: list[int], prompt: list[int], start: int, min_run: int) -> list[Move]:
    """The runs of `cached` (the tokens a cache row holds) that `prompt` goes on with after its first `start`
    tokens, each at least `min_run` long, in llama.cpp's walk; every prompt token but the last at most (one is
    always prefilled, for its logits: a run that reaches it, a run of its full length for `min_run` as in
    llama.cpp, moves without it). After the moves the row holds prompt[:end] with end = the last target + length
    (or `start` without moves).

    llama.cpp steps through the cache one token at a time, comparing up to `min_run` tokens at each; the next run
    it keeps starts at the first cached place holding the prompt's next `min_run` tokens, so that is found by a
    substring search of their bytes (a cache of repeated tokens made the step-by-step walk take a second)."""
    if min_run <= 0:
        return []
    moves, head_c, head_p = [], start, start
    haystack = array("i", cached).tobytes()                    # int32: every vocabulary fits
    while head_p + min_run <= len(prompt):
        at = _find_run(haystack, array("i", prompt[head_p:head_p + min_run]).tobytes(), head_c)
        if at < 0:
            break
        n = min_run + common_run(cached, at + min_run, prompt, head_p + min_run, len(prompt))
        moves.append(Move(at, head_p, n))
        head_c, head_p = at + n, head_p + n
    if moves and head_p == len(prompt):      # the last run ends the prompt: its last token is prefilled
        last = moves.pop()
        moves += [last._replace(length=last.length - 1)] if last.length > 1 else []
    return moves


def _find_run(haystack: bytes, needle: bytes, start: int) -> int:
    """The first token index >= start where `needle`'s tokens lie in `haystack` (both int32 bytes), or -1."""
    at = haystack.find(needle, 4 * start)
    while at >= 0 and at % 4:                                  # a match across token boundaries
        at = haystack.find(needle, at + 1)
    return at // 4 if at >= 0 else -1


def reused_end(start: int, moves: list[Move]) -> int:
    """How many leading prompt tokens the row holds after `moves` (the prefix `start` and the runs placed after it)."""
    return moves[-1].target + moves[-1].length if moves else start


CHUNK = 2048     # tokens moved at a time: a layer's float32 keys of a long run (64k tokens of CodeLlama-7B: 1 GiB,
                 # times the rotation's temporaries) would not fit the headroom left beside the cache


def rotation(cos: torch.Tensor, sin: torch.Tensor, move: Move):
    """Keys (1, Hkv, n, D) float32 turned from their old positions to their new ones by the model's RoPE table
    (cos, sin (S_max, D) float32): by the difference of the two angles the table holds, its cos and sin from the
    table's by the angle-difference identities (the old rotation undone and the new one applied, in one pass)."""
    old = slice(move.source, move.source + move.length)
    new = slice(move.target, move.target + move.length)
    turn_cos = cos[new] * cos[old] + sin[new] * sin[old]                                 # (n, D) cos(new - old)
    turn_sin = sin[new] * cos[old] - cos[new] * sin[old]                                 # (n, D) sin(new - old)

    def rotate(keys: torch.Tensor) -> torch.Tensor:
        return apply_rotary(keys, turn_cos[None], turn_sin[None])                        # (1, Hkv, n, D)
    return rotate


def chunks(move: Move, size: int | None = None) -> list[Move]:
    """`move` in pieces of at most `size` (default CHUNK) tokens, first to last: a piece's target ends at or before
    the next piece's source begins (targets lie before sources), so no piece overwrites keys still to be moved."""
    size = size or CHUNK
    return [Move(move.source + at, move.target + at, min(size, move.length - at)) for at in range(0, move.length, size)]


@torch.no_grad()
def apply_moves(model, row: int, moves: list[Move]) -> None:
    """Carry out `moves` in cache row `row` of every layer of `model` (a models.llama.Transformer), in order: each
    target lies before its source and after the last move's run, so no move overwrites a run not yet moved."""
    if not moves:
        return
    if model.config.dynamic_rope:
        raise ValueError("cache reuse cannot move keys rotated with dynamic RoPE: their frequencies depend on the "
                         "length of the call that wrote them")
    cos, sin = model.rope.cos, model.rope.sin                                             # (S_max, D) float32
    for piece in (piece for move in moves for piece in chunks(move)):
        rotate = rotation(cos, sin, piece)
        for layer in model.layers:
            layer.attention.kv_cache.move(row, piece.source, piece.target, piece.length, rotate)
