"""Input checks shared by the Triton kernels and the PyTorch reference.

Every malformed call fails here with a ValueError that names the problem, before anything
reaches Triton (whose own errors on bad shapes are crashes or silent garbage).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from kernels.plan import MAX_SPLITS

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FP8_DTYPE = torch.float8_e4m3fn
SCALED_DTYPES = (FP8_DTYPE, torch.int8)  # 8-bit caches with a float32 scale per token and KV head
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
# Query tokens a decode call takes: a verification step's 1 + drafts, or a prompt's tail of up to 128 new tokens fed
# through a graph-replayed step (models/engine.py, WIDE_TAIL); rows past the tile's 64 are more row blocks.
MAX_QUERY_TOKENS = 128
# With exact sink and window tokens (an 8-bit cache's): its ring and gathers are sized for a window plus at most
# this many (models/kv_cache.py, MAX_STEP_TOKENS).
MAX_EXACT_QUERY_TOKENS = 16
# The kernels multiply scores by softmax_scale * log2(e) in float32 (their softmax is in base 2)
MAX_SOFTMAX_SCALE = torch.finfo(torch.float32).max / math.log2(math.e)


class AppendShape(NamedTuple):
    B: int
    Hkv: int
    T: int         # new tokens per sequence
    S: int
    D: int
    scaled: bool   # an 8-bit cache (e4m3 or int8) with per-token scales


class DecodeShape(NamedTuple):
    B: int
    Hq: int
    Hkv: int
    S: int
    D: int
    T: int         # query tokens per sequence (1 for a 3-D q)
    scaled: bool   # 8-bit caches (e4m3 or int8) with per-token scales


class ExactTokens(NamedTuple):
    """A quantized cache's exact copies of some tokens per row, in the model's dtype: for the query at position
    i, keys 0 .. sink-1 and i-window+1 .. i are read from here, the others from the 8-bit cache.
    k, v (B, Hkv, N, D); pos int64 (B, N): the position each slot holds, -1 for none. Laid out as
    `models.kv_cache` keeps them: position p < sink in slot p, a later one in slot sink + (p - sink) % (N - sink)
    (a ring of N - sink >= window slots), so a reader finds a position's slot without scanning (the decode
    kernels do); it reads a slot only where pos records the position it wants."""
    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    sink: int
    window: int


def check_exact_tokens(exact, B: int, Hkv: int, D: int, device, scaled: bool, query_tokens: int | None = None) -> None:
    """Validate the exact tokens of an 8-bit cache (`ExactTokens`) against a call's shapes (a decode call's
    `query_tokens`: T, which they limit; a prefill's span is not)."""
    if query_tokens is not None and query_tokens > MAX_EXACT_QUERY_TOKENS:
        raise ValueError(f"q has {query_tokens} query tokens per sequence; with exact tokens supported: "
                         f"1..{MAX_EXACT_QUERY_TOKENS}")
    if not scaled:
        raise ValueError("exact sink and window tokens are for 8-bit (float8_e4m3fn, int8) caches only")
    if not isinstance(exact, ExactTokens):
        raise ValueError(f"exact must be an ExactTokens, got {type(exact).__name__}")
    if exact.k.shape != exact.v.shape or exact.k.dim() != 4 or exact.k.shape[:2] != (B, Hkv) or exact.k.shape[3] != D:
        raise ValueError(f"exact k, v must have shape (B, Hkv, N, D) = ({B}, {Hkv}, N, {D}), got "
                         f"{tuple(exact.k.shape)} and {tuple(exact.v.shape)}")
    if exact.pos.dtype != torch.int64 or exact.pos.shape != exact.k.shape[:1] + exact.k.shape[2:3]:
        raise ValueError(f"exact pos must be int64 (B, N) = {tuple(exact.k.shape[:1] + exact.k.shape[2:3])}, "
                         f"got {exact.pos.dtype} {tuple(exact.pos.shape)}")
    if not exact.k.device == exact.v.device == exact.pos.device == device:
        raise ValueError(f"exact tokens must be on the cache's device ({device})")
    if exact.k.dtype != exact.v.dtype or exact.k.dtype in SCALED_DTYPES:
        raise ValueError(f"exact k, v must share a 16- or 32-bit dtype, got {exact.k.dtype} and {exact.v.dtype}")
    if not (isinstance(exact.sink, int) and isinstance(exact.window, int) and exact.sink >= 0 and exact.window >= 1):
        raise ValueError(f"exact sink >= 0 and window >= 1 must be ints, got {exact.sink!r} and {exact.window!r}")
    if exact.k.shape[2] < exact.sink + exact.window:
        raise ValueError(f"exact tokens of {exact.k.shape[2]} slots cannot hold a sink of {exact.sink} and a ring "
                         f"of at least the window's {exact.window} slots")
    # The kernels index a slot's head dim and a row's positions by offsets from their pointers (strides of the
    # other dimensions are taken): a strided last dimension would read other slots' values or positions.
    if exact.k.stride(-1) != 1 or exact.v.stride(-1) != 1 or exact.pos.stride(-1) != 1:
        raise ValueError(f"exact k, v and pos must have a contiguous last dimension (stride 1), got strides "
                         f"{exact.k.stride()}, {exact.v.stride()} and {exact.pos.stride()}")


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def _check_tensor(name: str, t, ndims: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ndims:
        wanted = " or ".join(map(str, ndims))
        raise ValueError(f"{name} must have {wanted} dimensions, got shape {tuple(t.shape)}")


def _check_scales(k_cache, k_scale, v_scale, B: int, Hkv: int, S: int) -> None:
    """8-bit caches need float32 (B, Hkv, S) scales; other caches take none."""
    scaled = k_cache.dtype in SCALED_DTYPES
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not scaled:
            if scale is not None:
                raise ValueError(f"{name} is only for 8-bit (float8_e4m3fn, int8) caches; this cache is {k_cache.dtype}")
            continue
        if scale is None:
            raise ValueError(f"a {k_cache.dtype} cache needs k_scale and v_scale; {name} is None")
        if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32:
            got = scale.dtype if isinstance(scale, torch.Tensor) else type(scale).__name__
            raise ValueError(f"{name} must be a float32 tensor, got {got}")
        if scale.shape != (B, Hkv, S):
            raise ValueError(f"{name} must have shape (B, Hkv, S) = {(B, Hkv, S)}, got {tuple(scale.shape)}")
        if scale.device != k_cache.device:
            raise ValueError(f"{name} is on {scale.device}, the cache on {k_cache.device}")


def sequence_major(cache: torch.Tensor) -> bool:
    """A (B, Hkv, S, D) cache whose positions, not its head dim, are contiguous: a view of (B, Hkv, D, S)."""
    return cache.stride(-1) != 1 and cache.stride(-2) == 1


def _check_caches(k_cache, v_cache, dtypes) -> None:
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in shape")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache and v_cache must share a dtype, got {k_cache.dtype} and {v_cache.dtype}")
    if k_cache.dtype not in dtypes + SCALED_DTYPES:
        raise ValueError(f"k_cache has dtype {k_cache.dtype}; supported: {_dtype_names(dtypes + SCALED_DTYPES)}")
    if k_cache.device != v_cache.device:
        raise ValueError(f"k_cache and v_cache must be on one device, got {k_cache.device}, {v_cache.device}")
    if k_cache.stride(-1) != 1:
        raise ValueError(f"k_cache must have a contiguous last dimension (stride 1), got strides {k_cache.stride()}")
    if v_cache.stride(-1) != 1 and not sequence_major(v_cache):
        raise ValueError(f"v_cache must have a contiguous last dimension or, sequence-major, a contiguous "
                         f"position dimension (stride 1), got strides {v_cache.stride()}")


def check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits, *, k_scale=None, v_scale=None,
                        dtypes=SUPPORTED_DTYPES) -> DecodeShape:
    """Validate a decode-attention call (one or T query tokens, 16/32-bit or 8-bit caches)."""
    _check_tensor("q", q, (3, 4))
    _check_tensor("k_cache", k_cache, (4,))
    _check_tensor("v_cache", v_cache, (4,))
    if q.dtype not in dtypes:
        raise ValueError(f"q has dtype {q.dtype}; supported: {_dtype_names(dtypes)}")
    _check_caches(k_cache, v_cache, dtypes)
    B, Hq, D = q.shape[0], q.shape[1], q.shape[-1]
    T = q.shape[2] if q.dim() == 4 else 1
    _, Hkv, S, _ = k_cache.shape
    if B == 0 or Hq == 0:
        raise ValueError(f"q {tuple(q.shape)} is empty: no sequence or no head to attend for")
    if k_cache.shape[0] != B or k_cache.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} does not match the cache (B, Hkv, S, D) = {tuple(k_cache.shape)}")
    scaled = k_cache.dtype in SCALED_DTYPES
    if not scaled and q.dtype != k_cache.dtype:
        raise ValueError(f"q, k_cache, v_cache must share a dtype (or the caches be float8_e4m3fn or int8), "
                         f"got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if q.device != k_cache.device:
        raise ValueError(f"q, k_cache, v_cache must be on one device, got {q.device}, {k_cache.device}, {v_cache.device}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} not supported: must be in {MIN_HEAD_DIM}..{MAX_HEAD_DIM}")
    if not 1 <= T <= MAX_QUERY_TOKENS:
        raise ValueError(f"q has {T} query tokens per sequence; supported: 1..{MAX_QUERY_TOKENS}")
    if T > S:
        raise ValueError(f"q has {T} query tokens but the cache holds only {S} positions")
    if q.stride(-1) != 1:
        raise ValueError(f"q must have a contiguous last dimension (stride 1), got strides {q.stride()}")
    _check_scales(k_cache, k_scale, v_scale, B, Hkv, S)
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or not 1 <= num_splits <= MAX_SPLITS):
        # (the combine's tile holds every split: 10**5 of them compiled for minutes, 2**40 asked for a petabyte)
        raise ValueError(f"num_splits must be an int in 1..{MAX_SPLITS} or None, got {num_splits!r}")
    if cache_seqlens is not None:
        _check_seqlens(cache_seqlens, B, S, q.device, min_len=T if T > 1 else 0)
    return DecodeShape(B, Hq, Hkv, S, D, T, scaled)


def softmax_scale_of(softmax_scale, D: int) -> float:
    """The scale a decode call applies to its scores: D ** -0.5 by default, else `softmax_scale`, a finite real
    number (Python's or NumPy's; not a tensor, whose value a CUDA call could read only by a sync)."""
    if softmax_scale is None:
        return D ** -0.5
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise ValueError(f"softmax_scale must be a number (a float), got {type(softmax_scale).__name__}")
    try:
        scale = float(softmax_scale)
    except OverflowError:                   # an int (or Fraction) past float's range: 10**400
        scale = float("inf")
    if not abs(scale) <= MAX_SOFTMAX_SCALE:  # NaN fails this too
        raise ValueError(f"softmax_scale must be a finite number of magnitude at most {MAX_SOFTMAX_SCALE:.3g} "
                         f"(float32's largest / log2(e)), got {softmax_scale!r}")
    return scale


def check_append_inputs(k_new, v_new, k_cache, v_cache, input_pos, k_scale=None, v_scale=None,
                        *, dtypes=SUPPORTED_DTYPES) -> AppendShape:
    """Validate an append_kv call: k_new, v_new (B, Hkv, T, D) into (B, Hkv, S, D) caches."""
    for name, t in (("k_new", k_new), ("v_new", v_new), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_tensor(name, t, (4,))
    if k_new.shape != v_new.shape:
        raise ValueError(f"k_new {tuple(k_new.shape)} and v_new {tuple(v_new.shape)} differ in shape")
    if not k_new.dtype == v_new.dtype or k_new.dtype not in dtypes:
        raise ValueError(f"k_new and v_new must share a dtype among {_dtype_names(dtypes)}, "
                         f"got {k_new.dtype}, {v_new.dtype}")
    _check_caches(k_cache, v_cache, dtypes)
    B, Hkv, T, D = k_new.shape
    _, _, S, _ = k_cache.shape
    if B == 0:
        raise ValueError(f"k_new {tuple(k_new.shape)} is empty: no sequence to append to")
    if Hkv == 0 or D == 0:
        raise ValueError(f"k_new {tuple(k_new.shape)} has {Hkv} KV heads of {D} values: (B, Hkv, T, D) needs "
                         f"at least one of each")
    if k_new.stride(-1) != 1 or v_new.stride(-1) != 1:    # the kernel reads a row's D values as one contiguous run
        raise ValueError(f"k_new and v_new must have a contiguous last dimension (stride 1), got strides "
                         f"{k_new.stride()} and {v_new.stride()}")
    if k_cache.shape[0] != B or k_cache.shape[1] != Hkv or k_cache.shape[3] != D:
        raise ValueError(f"k_new {tuple(k_new.shape)} does not match the cache (B, Hkv, S, D) = {tuple(k_cache.shape)}")
    scaled = k_cache.dtype in SCALED_DTYPES
    if not scaled and k_cache.dtype != k_new.dtype:
        raise ValueError(f"the cache ({k_cache.dtype}) must have the new values' dtype ({k_new.dtype}) "
                         f"or be float8_e4m3fn or int8")
    if not k_new.device == v_new.device == k_cache.device:
        raise ValueError(f"k_new, v_new and the caches must be on one device, got {k_new.device}, {v_new.device}, {k_cache.device}")
    if T > S:
        raise ValueError(f"{T} new tokens do not fit a cache of {S} positions")
    _check_scales(k_cache, k_scale, v_scale, B, Hkv, S)
    _check_writable(k_cache, v_cache, k_scale, v_scale)
    if not isinstance(input_pos, torch.Tensor) or input_pos.dtype != torch.int64:
        got = input_pos.dtype if isinstance(input_pos, torch.Tensor) else type(input_pos).__name__
        raise ValueError(f"input_pos must be an int64 tensor, got {got}")
    if input_pos.shape != (B,):
        raise ValueError(f"input_pos must have shape ({B},), got {tuple(input_pos.shape)}")
    if input_pos.device != k_cache.device:
        raise ValueError(f"input_pos is on {input_pos.device}, the cache on {k_cache.device}")
    if not input_pos.is_contiguous():       # the kernel reads position b at input_pos + b
        raise ValueError(f"input_pos must be contiguous, got stride {input_pos.stride()}")
    if not _capturing(k_cache.device):
        lo, hi = int(input_pos.min()), int(input_pos.max())
        if lo < 0 or hi + T > S:
            raise ValueError(f"input_pos must lie in 0..{S - T} so that {T} tokens fit the cache of {S}, "
                             f"got values in {lo}..{hi}")
    return AppendShape(B, Hkv, T, S, D, scaled)


_CACHE_DIMS = ("batch", "KV head", "position", "head dim")


def _check_writable(k_cache, v_cache, k_scale, v_scale) -> None:
    """Every value append_kv writes must land in memory of its own: an expanded (stride-0) cache or scale
    would write each row into its neighbours, and K and V (or their scales) in shared memory would overwrite
    each other; on a GPU, as a race between programs. (New values read from the rows being written are not
    checked: which rows are written is on the device, and copying rows elsewhere in the cache is valid.)"""
    written = {"k_cache": k_cache, "v_cache": v_cache}
    if k_scale is not None:
        written |= {"k_scale": k_scale, "v_scale": v_scale}
    for name, t in written.items():
        for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
            if size > 1 and stride == 0:
                raise ValueError(f"{name} has stride 0 along its {_CACHE_DIMS[dim]} dimension ({dim}; an expanded "
                                 f"tensor): appending to one {_CACHE_DIMS[dim]} would write them all")
    for a, b in (("k_cache", "v_cache"), ("k_scale", "v_scale"))[:len(written) // 2]:
        if _share_memory(written[a], written[b]):
            raise ValueError(f"{a} and {b} share memory: appending to one would overwrite the other; "
                             f"pass separate tensors")


def _share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b certainly share an element: they lie in one storage and start at one address, or both
    cover their byte ranges densely and those ranges meet. Never true for views that only interleave (K and V
    as halves of one buffer's rows, or of a (B, S, 2, Hkv, D) buffer), so it cannot refuse a valid layout."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    if a.data_ptr() == b.data_ptr():
        return True
    if not (_dense(a) and _dense(b)):
        return False
    return (a.data_ptr() < b.data_ptr() + b.numel() * b.element_size()
            and b.data_ptr() < a.data_ptr() + a.numel() * a.element_size())


def _dense(t: torch.Tensor) -> bool:
    """t's elements fill its memory without gaps or repeats (any order of dimensions)."""
    expected = 1
    for size, stride in sorted(((n, st) for n, st in zip(t.shape, t.stride()) if n > 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def _capturing(device) -> bool:
    # Reading values needs a host sync, which a CUDA graph capture forbids: the decode loop captures
    # calls whose lengths and positions it maintains itself, so value checks are skipped only there.
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _check_seqlens(cache_seqlens, B: int, S: int, device, min_len: int = 0) -> None:
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype != torch.int32:
        got = cache_seqlens.dtype if isinstance(cache_seqlens, torch.Tensor) else type(cache_seqlens).__name__
        raise ValueError(f"cache_seqlens must be an int32 tensor, got {got}")
    if cache_seqlens.shape != (B,):
        raise ValueError(f"cache_seqlens must have shape ({B},), got {tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device}, the cache on {device}")
    if not cache_seqlens.is_contiguous():   # the kernels read row b's length at cache_seqlens + b
        raise ValueError(f"cache_seqlens must be contiguous, got stride {cache_seqlens.stride()}")
    if _capturing(device):
        return
    lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
    if lo < 0 or hi > S:
        raise ValueError(f"cache_seqlens must lie in 0..{S} (the cache length), got values in {lo}..{hi}")
    if lo < min_len:
        raise ValueError(f"cache_seqlens must be at least {min_len} (the query tokens, already in the cache), "
                         f"got {lo}")
