"""`flash_decode`: the launch wrapper of the split-KV kernels, and the plan that picks their blocks.

What is supported, and why not the rest:
- fp16, bf16, fp32 (fp32 dots in IEEE precision, not tf32, so fp32 callers get fp32 accuracy);
  not fp64, because Triton's dot has no fp64 path on the tensor cores; `kernels.reference` does fp64.
- head dim 16..256, any value: tiles are padded to the next power of two and masked.
- Hq a multiple of Hkv (MHA, GQA, MQA): one program reads a KV head once for its whole group.
- any strides but the last dimension's, which must be 1 (rows are loaded as contiguous vectors).
- one query token per sequence: this is the decode step; prefill belongs to a prefill kernel.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
from triton.backends.nvidia.compiler import CUDAOptions

from kernels import reference
from kernels.split_kv import _combine_kernel, _split_kv_kernel
from kernels.validation import check_decode_inputs

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2_E = 1.4426950408889634
# Programmatic dependent launch (Hopper+): the combine starts while the split kernel runs. Off
# with CODECOMPLETE_PDL=0, and where this Triton cannot launch that way.
PDL_SUPPORTED = os.environ.get("CODECOMPLETE_PDL", "1") != "0" and "launch_pdl" in getattr(
    CUDAOptions, "__dataclass_fields__", {})

# Planning constants, measured on an H100 (bench/results/NOTES.md records the sweeps).
PROGRAMS_PER_SM = 2          # two resident programs per SM beat one and four (34B, 7B, paper shapes)
MIN_BLOCKS_PER_SPLIT = 1     # even one tile per split paid off at short contexts (34B, S=1k)
MAX_SPLITS = 128             # bounds the combine's tile; more splits never paid off


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is cut up: the split count and the Triton tile sizes."""
    num_splits: int
    block_h: int      # query heads of one KV group, padded to the tensor cores' minimum of 16
    block_n: int      # keys per inner-loop tile
    block_d: int      # head dim padded to a power of two
    num_warps: int
    num_stages: int


@functools.lru_cache(maxsize=16)
def _multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=256)  # a pure function of shapes, asked on every launch
def plan_launch(B: int, Hq: int, Hkv: int, S: int, D: int, *, num_sms: int = 132,
                num_splits: int | None = None) -> LaunchPlan:
    """Pick splits and tiles from shapes alone (never from lengths, so the grid is graph-safe).

    The grid is num_splits x B x Hkv programs. Batch and heads alone fill an H100 only at large
    batch; at batch 1 the sequence is split until there are about PROGRAMS_PER_SM programs per SM,
    but never into splits shorter than MIN_BLOCKS_PER_SPLIT tiles of keys.
    """
    block_h = max(16, triton.next_power_of_2(Hq // Hkv))
    block_d = max(16, triton.next_power_of_2(D))
    block_n = 64 if block_d <= 128 else 32  # keeps K and V tiles plus pipelining in shared memory
    if num_splits is None and B * Hkv >= 1.5 * num_sms:
        # Batch x heads alone give most SMs two programs: a split only adds a combine. (Measured on
        # the paper's shape: 256 programs unsplit 27.5 µs vs 30.1 split in 2; 128 unsplit 33.3 vs 29.3 in 3.)
        num_splits = 1
    if num_splits is None:
        n_blocks = max(1, math.ceil(S / block_n))
        wanted = math.ceil(PROGRAMS_PER_SM * num_sms / (B * Hkv))
        num_splits = max(1, min(wanted, n_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))
    return LaunchPlan(num_splits=num_splits, block_h=block_h, block_n=block_n, block_d=block_d,
                      num_warps=4, num_stages=2)


def flash_decode(q, k_cache, v_cache, cache_seqlens=None, *, softmax_scale=None, num_splits=None,
                 return_lse=False, k_scale=None, v_scale=None):
    """Attention of the newest query token(s) of each sequence over a KV cache, split along the sequence.

    Args:
        q: (B, Hq, D) the new token's queries; or (B, Hq, T, D), 1 <= T <= 16, the queries of the last
            T tokens of each sequence, whose keys/values are already in the cache at positions
            len-T .. len-1: query t attends keys 0 .. len-T+t (causal, aligned bottom-right).
        k_cache, v_cache: (B, Hkv, S, D) the cache; any strides but the last (so a (B, S, Hkv, D)
            buffer passed as `.transpose(1, 2)` works). Hq must be a multiple of Hkv. In q's dtype,
            or float8_e4m3fn with k_scale and v_scale.
        cache_seqlens: int32 (B,) valid lengths in 0..S (T..S with T query tokens; checked except
            while a CUDA graph is captured), or None for S everywhere. Keys at positions >= length are
            ignored; a length-0 row returns zeros (lse -inf).
        softmax_scale: defaults to D ** -0.5.
        num_splits: force the number of sequence splits (1 = no split); None lets `plan_launch` choose.
        return_lse: also return the log-sum-exp of the scores.
        k_scale, v_scale: float32 (B, Hkv, S), only with fp8 caches: key j of (b, h) is
            k_cache[b, h, j].float() * k_scale[b, h, j] (one scale per token and KV head).

    Returns:
        out with q's shape, in q.dtype, and with return_lse the lse (B, Hq) or (B, Hq, T) in float32.

    The launch grid depends only on shapes, so the call can be captured in a CUDA graph and replayed
    while `cache_seqlens` changes in place.
    """
    B, Hq, Hkv, S, D, T, fp8 = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits,
                                                   k_scale=k_scale, v_scale=v_scale, dtypes=KERNEL_DTYPES)
    if T > 1 or fp8 or q.dim() == 4:  # Triton kernels for these come next; same contract meanwhile
        return reference.flash_decode(q, k_cache, v_cache, cache_seqlens, softmax_scale=softmax_scale,
                                      return_lse=return_lse, k_scale=k_scale, v_scale=v_scale)
    num_sms = _multiprocessor_count(q.device.index or 0) if q.is_cuda else 132
    plan = plan_launch(B, Hq, Hkv, S, D, num_sms=num_sms, num_splits=num_splits)
    out, lse = launch(q, k_cache, v_cache, cache_seqlens, plan, softmax_scale=softmax_scale)
    return (out, lse) if return_lse else out


def launch(q, k_cache, v_cache, cache_seqlens, plan: LaunchPlan, *, softmax_scale=None):
    """Run the kernels with an explicit plan (inputs already validated). Returns (out, lse)."""
    B, Hq, D = q.shape
    _, Hkv, S, _ = k_cache.shape
    scale = D ** -0.5 if softmax_scale is None else float(softmax_scale)
    out = torch.empty((B, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq), dtype=torch.float32, device=q.device)
    splits = plan.num_splits
    if splits > 1:
        part_out = torch.empty((B, Hq, splits, D), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((B, Hq, splits), dtype=torch.float32, device=q.device)
    else:  # the split kernel writes `out` and `lse` itself
        part_out, part_lse = out, lse
    has_seqlens = cache_seqlens is not None
    seqlens = cache_seqlens if has_seqlens else lse  # any pointer; never read without HAS_SEQLENS
    upcast = not q.is_cuda  # the interpreter's 16-bit arithmetic is wrong; widen on load
    use_pdl = q.is_cuda and PDL_SUPPORTED and splits > 1
    block_s = triton.next_power_of_2(splits)

    _split_kv_kernel[(splits, B * Hkv)](
        q, k_cache, v_cache, seqlens, out, lse, part_out, part_lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        S, Hkv, D, scale * LOG2_E,
        GROUP=Hq // Hkv, HAS_SEQLENS=has_seqlens, NUM_SPLITS=splits,
        BLOCK_H=plan.block_h, BLOCK_N=plan.block_n, BLOCK_D=plan.block_d,
        UPCAST=upcast, IEEE_DOT=q.dtype == torch.float32, USE_PDL=use_pdl,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    if splits > 1:
        _combine_kernel[(B * Hq,)](
            seqlens, part_out, part_lse, out, lse,
            S, Hq, D,
            HAS_SEQLENS=has_seqlens, NUM_SPLITS=splits,
            BLOCK_S=block_s, BLOCK_N=plan.block_n, BLOCK_D=plan.block_d, USE_PDL=use_pdl,
            num_warps=4 if plan.block_d * block_s >= 4096 else 1,
            **({"launch_pdl": True} if use_pdl else {}),
        )
    return out, lse


def append_kv(k_new, v_new, k_cache, v_cache, input_pos, k_scale=None, v_scale=None):
    """Write k_new, v_new (B, Hkv, T, D) into the caches (B, Hkv, S, D) at positions
    input_pos[b] .. input_pos[b] + T - 1 (input_pos int64 (B,)); an fp8 cache is quantized in the same
    pass (scale = amax / 448 per token and KV head, 1 where amax is 0) and its scales written to
    k_scale, v_scale float32 (B, Hkv, S). Graph-safe: no host sync while a CUDA graph is captured."""
    reference.append_kv(k_new, v_new, k_cache, v_cache, input_pos, k_scale, v_scale)
