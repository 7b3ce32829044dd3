"""`flash_decode` and `append_kv`: the launch wrappers of the Triton kernels.

What flash_decode supports, and why not the rest:
- q in fp16, bf16, fp32 (fp32 dots in IEEE precision, not tf32, so fp32 callers get fp32 accuracy);
  not fp64, because Triton's dot has no fp64 path on the tensor cores; `kernels.reference` does fp64.
- caches in q's dtype, or 8-bit with float32 scales per token and KV head (below): float8_e4m3fn, or
  int8 (the same scales, plans and kernels). Not e5m2, because e4m3's extra mantissa bit is the
  accurate choice at the same bytes (vLLM measured e5m2 1.8 HumanEval points worse). int8 is the
  accurate one on real code (98.2% top-1 agreement with an unquantized cache against e4m3's 95.9%,
  models/kv_cache.py), and as fast: its bytes become floats by a byte permute and an exact add
  (`LaunchPlan.int8_prmt`), not by I2F, a quarter-rate instruction on sm_90 (within 0-5% of e4m3 on
  an H200; bench/results/NOTES.md, Run 14). Where several query rows share a KV head (GQA, several
  tokens) its scores can be int8 tensor-core dots of the keys as stored (`LaunchPlan.int8_dot`, chosen
  by int8's own tuned plans). With V sequence-major both 8-bit kinds run the 34B 128k call in 74-76 µs
  on an H200 (kernel alone, Run 18); inside the decode step they tie (50.5 and 50.7 tok/s). With V
  sequence-major a plan may also ask for the transposed kernel (`LaunchPlan.transposed`,
  kernels/split_kv_transposed.py): the cache itself is the first operand of sm_90's 8-bit warpgroup dots, q and
  the probabilities become 8-bit digits; the tuned plans take it for the batched 34B rows (Run 20).
- head dim 16..256, any value: tiles are padded to the next power of two and masked.
- Hq a multiple of Hkv (MHA, GQA, MQA): one program reads a KV head once for its whole group.
- 1..128 query tokens per sequence (decode, verification of speculative drafts, and a prompt's short tail
  fed through a graph-replayed step: models/engine.py, WIDE_TAIL): the tokens are packed with the group's
  heads into a program's rows, so up to 64 rows (a verification's tokens) read K/V once; more rows take more
  row blocks, each reading its KV head again (a 128-token tail: 2 for MHA, 16 for 34B's groups of 8), which
  at these lengths still beats an eager prefill's launches (bench/results/NOTES.md, Run 44). Not more: a
  longer span is prefill, which belongs to a prefill kernel. With an 8-bit cache's exact tokens, 1..16.
- any strides but the last dimension's, which must be 1 (rows are loaded as contiguous vectors); V may
  instead be sequence-major, a (B, Hkv, D, S) tensor seen as (B, Hkv, S, D) (`sequence_major`), which is
  how an 8-bit cache of a GQA model should store it (`sequence_major_v_pays`). The dot and row kernels load
  such a V through pointers (a descriptor's innermost dimension must be contiguous); the transposed kernel's
  descriptor spans V's (B, Hkv, D, S) storage.
- with an 8-bit cache, q must lie within fp16's range (|q| < 65504): the scores are fp16 dots.

Why one scale per token and KV head for fp8 (the contract's granularity), measured: on real keys,
values and queries (SmolLM2-135M over 2,048 tokens of real code, bench/fp8_scales.py,
bench/results/fp8-scales-cpu.txt) the attention output's relative error is 5.7% mean / 9.0% worst
layer with a scale per token and KV head, 6.9% / 11.2% with one per token shared by the heads,
8.8% / 15.4% per KV head and 8.4% / 15.1% per tensor (a bf16 cache: 0.5%). A token's keys can be
far larger than its neighbours' (the first token, outlier channels); a shared scale spends e4m3's
3 mantissa bits on the outlier and rounds the rest towards zero. The price is 8 bytes per token and
KV head read next to 2 x D bytes of e4m3 (3% at D = 128, 6% at D = 64), written by the same kernel
that quantizes, with no calibration pass; kernels.bench's fp8 rows report the read rate on cache
plus scales, so the speed side is measured where it matters, on the GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import torch
import triton
from triton.backends.nvidia.compiler import CUDAOptions
from triton.runtime.interpreter import InterpretedFunction

from kernels import reference
from kernels.append import append_kv_triton
from kernels.devices import on_first_tensors_device
from kernels.exact_combine import EXACT_WARPS, _combine_exact_kernel
from kernels.plan import LaunchPlan, device_plan, plan_launch, resident_programs, shape_key
from kernels.split_kv import _combine_kernel, _split_kv_kernel
from kernels.split_kv_row import _split_kv_row_kernel
from kernels.split_kv_transposed import _split_kv_transposed_kernel
from kernels.validation import FP8_DTYPE, SCALED_DTYPES, check_decode_inputs, sequence_major, softmax_scale_of

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2_E = 1.4426950408889634
# Programmatic dependent launch (Hopper+): the combine starts while the split kernel runs. Off
# with CODECOMPLETE_PDL=0, and where this Triton cannot launch that way.
PDL_SUPPORTED = os.environ.get("CODECOMPLETE_PDL", "1") != "0" and "launch_pdl" in getattr(
    CUDAOptions, "__dataclass_fields__", {})
# CODECOMPLETE_TUNED_PLANS=0 ignores kernels/plans/ (the heuristic plans every call).
USE_TUNED_PLANS = os.environ.get("CODECOMPLETE_TUNED_PLANS", "1") != "0"
PARTIAL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
COMBINE_TRIGGER = True   # A/B: the combine lets the next kernel launch as it starts (False: at its end)
# Bytes of each split's K and V that its program asks into L2 before its PDL wait (kernels/prefetch.py): the
# first tiles' latency then overlaps the kernel before. 4-16 KiB took 15-36 µs off CodeLlama-7B's step on an
# H200 at 4k-64k, bf16, fp8 and int8 alike; 256 KiB (most of a split) added up to 274 (NOTES.md, Run 16).
KV_PREFETCH = 8192
# TRITON_INTERPRET=1 was set before the kernels were defined: they run on CPU tensors, in Triton's interpreter
INTERPRETED = isinstance(_split_kv_kernel, InterpretedFunction)


def sequence_major_v_pays(group: int, cache_dtype: torch.dtype) -> bool:
    """Whether a cache of this dtype, read by `group` query heads per KV head, is faster with V sequence-major.

    The dot kernel (GQA) multiplies P by V with V as the tensor cores' second operand, reduced along the
    sequence. An 8-bit V stored head-dim-contiguous reaches that operand one byte at a time (128 `LDS.U8` a
    64-key tile at CodeLlama-34B's int8 plan, sm_90 SASS); stored sequence-major, through `LDSM`, and the
    key loop is 29% shorter (1,034 -> 737 instructions). On an H200 in one run: 34B B=1 128k int8 86.6 ->
    78.2 µs, e4m3 91.5 -> 78.8 (bench/results/NOTES.md, Run 18). 16-bit caches load V by `LDSM.T` either
    way. MHA's row kernel multiplies on the CUDA cores in the load's own layout and lost (7B 64k int8 134.7
    -> 144.5 µs at the best sequence-major plan): V stays head-dim-contiguous there."""
    return group > 1 and cache_dtype in SCALED_DTYPES


def as_sequence_major(cache: torch.Tensor) -> torch.Tensor:
    """The same (B, Hkv, S, D) values, stored (B, Hkv, D, S) (`sequence_major`)."""
    return cache.transpose(-1, -2).contiguous().transpose(-1, -2)


@functools.lru_cache(maxsize=16)
def device_facts(device_index: int) -> tuple[str, int]:
    """(name, SM count) of a CUDA device."""
    props = torch.cuda.get_device_properties(device_index)
    return props.name, props.multi_processor_count


# Plans forced for one shape each (`forced_plans`), keyed by `_forced_key`.
_FORCED_PLANS: dict[tuple, LaunchPlan] = {}


def _forced_key(key: dict) -> tuple:
    return tuple(sorted(key.items()))


@contextlib.contextmanager
def forced_plans(entries: list[tuple[dict, LaunchPlan]]):
    """Inside the block, calls whose `kernels.plan.shape_key` equals an entry's key run that entry's plan,
    whatever the table or the heuristic says; a forced `num_splits` argument still wins. For timing plans
    where they run: inside a captured decode step, next to the kernels that share the GPU with them there
    (`models.step_plans`), which a kernel timed alone does not see. entries: (shape key dict, plan) pairs."""
    before = dict(_FORCED_PLANS)
    _FORCED_PLANS.update({_forced_key(key): plan for key, plan in entries})
    try:
        yield
    finally:
        _FORCED_PLANS.clear()
        _FORCED_PLANS.update(before)


def plan_for(q: torch.Tensor, B: int, Hq: int, Hkv: int, S: int, D: int, T: int, scaled: bool,
             num_splits: int | None = None, *, int8: bool = False) -> LaunchPlan:
    """The plan a call runs with: a plan forced for this shape (`forced_plans`), else the device's tuned
    plan for it if there is one (16-bit q), else the heuristic; a forced `num_splits` overrides any of
    them's split count."""
    forced = _FORCED_PLANS.get(_forced_key(shape_key(B, Hq, Hkv, S, D, T, scaled, int8))) if _FORCED_PLANS else None
    if forced is not None:
        return _with_splits(forced, num_splits)
    if not q.is_cuda:
        return heuristic_plan(q, B, Hq, Hkv, S, D, T, scaled, num_splits)
    index = _device_index(q)
    name, num_sms = device_facts(index)
    return device_plan(name, num_sms, B, Hq, Hkv, S, D, T, scaled, int8=int8, num_splits=num_splits,
                       elem_bytes=q.element_size(), wgmma8=_has_8bit_wgmma(index),
                       tuned=USE_TUNED_PLANS and q.dtype != torch.float32)


def heuristic_plan(q: torch.Tensor, B: int, Hq: int, Hkv: int, S: int, D: int, T: int, scaled: bool,
                   num_splits: int | None = None) -> LaunchPlan:
    """`kernels.plan.plan_launch` for q's device (its SM count, and whether it has sm_90's 8-bit warpgroup MMAs):
    the plan a call runs where the device has no tuned plan for it."""
    elem_bytes = q.element_size()  # the caches' too, unless 8-bit
    if not q.is_cuda:
        return plan_launch(B, Hq, Hkv, S, D, T=T, scaled=scaled, num_splits=num_splits, elem_bytes=elem_bytes)
    index = _device_index(q)
    return plan_launch(B, Hq, Hkv, S, D, T=T, scaled=scaled, num_sms=device_facts(index)[1], num_splits=num_splits,
                       elem_bytes=elem_bytes, wgmma8=_has_8bit_wgmma(index))


def _device_index(q: torch.Tensor) -> int:
    """The index of q's CUDA device (a bare "cuda" device means the current one)."""
    return q.device.index if q.device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=16)
def _has_8bit_wgmma(device_index: int) -> bool:
    """Hopper (sm_90): 8-bit warpgroup MMAs, which Triton emits for the transposed kernel's dots."""
    return torch.cuda.get_device_capability(device_index)[0] == 9


def _with_splits(plan: LaunchPlan, num_splits: int | None) -> LaunchPlan:
    """`plan`, with a forced split count if one is given."""
    return plan if num_splits in (None, plan.num_splits) else dataclasses.replace(plan, num_splits=num_splits)


def flash_decode(q, k_cache, v_cache, cache_seqlens=None, *, softmax_scale=None, num_splits=None,
                 return_lse=False, k_scale=None, v_scale=None):
    """Attention of the newest query token(s) of each sequence over a KV cache, split along the sequence.
    On CUDA tensors; on CPU ones only where TRITON_INTERPRET=1 was set before kernels was imported (Triton's
    interpreter: slow; `kernels.reference.flash_decode` is the CPU path).

    Args:
        q: (B, Hq, D) the new token's queries; or (B, Hq, T, D), 1 <= T <= 16, the queries of the last
            T tokens of each sequence, whose keys/values are already in the cache at positions
            len-T .. len-1: query t attends keys 0 .. len-T+t (causal, aligned bottom-right).
        k_cache, v_cache: (B, Hkv, S, D) the cache; any strides but the last (so a (B, S, Hkv, D)
            buffer passed as `.transpose(1, 2)` works). Hq must be a multiple of Hkv. In q's dtype,
            or 8-bit (float8_e4m3fn or int8) with k_scale and v_scale.
        cache_seqlens: int32 (B,) valid lengths in 0..S (T..S with T query tokens; checked except
            while a CUDA graph is captured, where a length past S counts as S and a negative one as 0, so
            the kernels never read outside the cache), or None for S everywhere. Keys at positions >= length
            are ignored; a length-0 row returns zeros (lse -inf).
        softmax_scale: a finite real number (not a tensor), |scale| <= 2.36e38; defaults to D ** -0.5.
        num_splits: force the number of sequence splits (1 = no split); None lets the plan choose (`plan_for`:
            the device's tuned plan, else `plan_launch`'s heuristic).
        return_lse: also return the log-sum-exp of the scores.
        k_scale, v_scale: float32 (B, Hkv, S), only with 8-bit caches: key j of (b, h) is
            k_cache[b, h, j].float() * k_scale[b, h, j] (one scale per token and KV head).

    Returns:
        out with q's shape, in q.dtype, and with return_lse the lse (B, Hq) or (B, Hq, T) in float32.

    The launch grid depends only on shapes, so the call can be captured in a CUDA graph and replayed
    while `cache_seqlens` changes in place.
    """
    B, Hq, Hkv, S, D, T, scaled = check_decode_inputs(q, k_cache, v_cache, cache_seqlens, num_splits,
                                                      k_scale=k_scale, v_scale=v_scale, dtypes=KERNEL_DTYPES)
    check_launchable(q.device)
    plan = plan_for(q, B, Hq, Hkv, S, D, T, scaled, num_splits, int8=k_cache.dtype == torch.int8)
    out, lse = launch(q, k_cache, v_cache, cache_seqlens, plan, softmax_scale=softmax_scale,
                      k_scale=k_scale, v_scale=v_scale)
    return (out, lse) if return_lse else out


def check_launchable(device: torch.device) -> None:
    """The Triton kernels take CUDA tensors, or CPU tensors where they are interpreted; anything else (CPU
    tensors with compiled kernels, meta tensors) failed inside Triton ("0 active drivers", "Cannot copy out of
    meta tensor")."""
    if device.type == "cuda" or (device.type == "cpu" and INTERPRETED):
        return
    hint = ("; on the CPU use kernels.reference.flash_decode, or set TRITON_INTERPRET=1 before kernels is imported "
            "to run these kernels in Triton's interpreter (slow)") if device.type == "cpu" else ""
    raise ValueError(f"flash_decode runs Triton kernels on CUDA tensors, got tensors on {device}{hint}")


def resident_of(binary, num_warps: int) -> int:
    """Programs of a compiled split kernel one SM holds at once (0 where there is no binary: CPU)."""
    if not hasattr(binary, "metadata"):
        return 0
    binary._init_handles()  # loads it (as its first launch would): registers, as Triton's softmax tutorial reads them
    return resident_programs(binary.n_regs, binary.metadata.shared, num_warps)


def late_in_step(q, k_cache, v_cache, *, k_scale=None, v_scale=None, crowding_rule: bool = True) -> bool:
    """Whether the fused decode step's qkv_rope should let this call launch only as its own programs end
    (arguments as `flash_decode`'s, with every row at its full length): as the call's plan says where it says
    (`LaunchPlan.step_launch`, chosen inside the step by `models.step_plans`), else where its programs would
    crowd some SMs (`crowds_when_early`; never if not `crowding_rule`, an A/B switch).

    A plan says so where the rule measured wrong: CodeLlama-7B's bf16 step at 64k, whose 128 programs cannot
    crowd 132 SMs, ran 0.3% faster with attention launched late (11,080 against 11,114 µs, the kernel alone
    unchanged; H200, bench/results/NOTES.md, Run 25), which is what the step trailed cuDNN's by."""
    if not _launches_early(q):
        return False
    plan, programs = _full_length_plan(q, k_cache, v_cache, k_scale, v_scale)
    if plan.step_launch:
        return plan.step_launch == "late"
    return crowding_rule and _crowds(q, k_cache, v_cache, plan, programs, k_scale, v_scale)


def crowds_when_early(q, k_cache, v_cache, *, k_scale=None, v_scale=None) -> bool:
    """Whether this call's split programs could crowd some SMs and leave others idle if they became resident
    early, as a programmatic dependent launch's do while the kernel before still runs: an SM holds more of
    them than the grid has per SM (arguments as `flash_decode`'s, with every row at its full length).

    Resident early, programs go wherever the kernel before has left room, not evenly; a grid that needs every
    SM's slots (one full wave, or more) cannot pile up, one with room to spare can. The kernel before should
    then let attention launch only as its own programs end. Measured on an H200 inside CodeLlama-7B's and
    -34B's decode steps (bench/results/NOTES.md, Run 19): of 54 plans where an SM holds more programs than the
    grid needs, launching late was faster at 38, by up to 26% of the step (7B 64k int8, 64-key tiles: 10.5 ->
    7.7 ms, a plan 140 µs alone against the table's 132), and slower at 16, by at most 1.6% (5% with two plans
    already 4x slower alone); at the 21 plans that cannot crowd, launching late changed the step by -0.3% to
    +1.7%."""
    if not _launches_early(q):
        return False
    return _crowds(q, k_cache, v_cache, *_full_length_plan(q, k_cache, v_cache, k_scale, v_scale), k_scale, v_scale)


def _full_length_plan(q, k_cache, v_cache, k_scale, v_scale) -> tuple[LaunchPlan, int]:
    """The call's plan with every row at its full length, and the programs of its split kernel."""
    B, Hq, Hkv, S, D, T, scaled = check_decode_inputs(q, k_cache, v_cache, None, None, k_scale=k_scale,
                                                      v_scale=v_scale, dtypes=KERNEL_DTYPES)
    plan = plan_for(q, B, Hq, Hkv, S, D, T, scaled, int8=k_cache.dtype == torch.int8)
    return plan, plan.num_splits * B * Hkv * plan.row_blocks(Hq // Hkv, T)


def _crowds(q, k_cache, v_cache, plan: LaunchPlan, programs: int, k_scale, v_scale) -> bool:
    num_sms = device_facts(q.device.index or 0)[1]       # a CUDA tensor's device always has its index
    return resident_per_sm(q, k_cache, v_cache, plan, k_scale=k_scale, v_scale=v_scale) > -(-programs // num_sms)


def resident_per_sm(q, k_cache, v_cache, plan: LaunchPlan, *, k_scale=None, v_scale=None) -> int:
    """Programs of this call's split kernel under `plan` one SM holds at once (0 on a CPU; arguments as
    `flash_decode`'s). Looked up once per kind of call and plan: the binary comes from Triton's cache."""
    T = q.shape[2] if q.dim() == 4 else 1
    # What the binary depends on (lengths and the split count are runtime arguments): a bounded set of keys
    key = (dataclasses.replace(plan, num_splits=1, step_launch=""), q.dtype, q.device, q.shape[1] // k_cache.shape[1],
           T, q.shape[-1], k_cache.dtype, sequence_major(v_cache), k_scale is None)
    if key not in _RESIDENT:
        binary = launch(q, k_cache, v_cache, None, plan, k_scale=k_scale, v_scale=v_scale, compile_only=True)
        _RESIDENT[key] = resident_of(binary, plan.num_warps)
    return _RESIDENT[key]


_RESIDENT: dict[tuple, int] = {}   # resident_per_sm's answers, per kind of call and plan


def _launches_early(q: torch.Tensor) -> bool:
    """Whether calls with this q are programmatic dependent launches (CUDA with PDL)."""
    return q.is_cuda and PDL_SUPPORTED


def tma_capable(*caches: torch.Tensor) -> bool:
    """Tensor descriptors need a 16-byte aligned base and strides (the interpreter emulates them too)."""
    return all(c.data_ptr() % 16 == 0 and all(st * c.element_size() % 16 == 0 for st in c.stride()[:-1])
               for c in caches)


def _descriptor(cache: torch.Tensor, block: list[int]):
    from triton.tools.tensor_descriptor import TensorDescriptor
    return TensorDescriptor(cache, list(cache.shape), list(cache.stride()), block)


def _tma_sources(k_cache: torch.Tensor, v_cache: torch.Tensor, plan: LaunchPlan, transposed: bool):
    """(K, V) descriptors of tiles (1, 1, keys, head dim); for the transposed kernel V's over its (B, Hkv, D, S)
    storage, tiles (1, 1, head dim, keys). None where the caches' strides cannot take one."""
    v_stored = v_cache.transpose(2, 3) if transposed else v_cache     # innermost dimension contiguous
    if not tma_capable(k_cache, v_stored):
        return None
    v_block = [1, 1, plan.block_d, plan.block_n] if transposed else [1, 1, plan.block_n, plan.block_d]
    return _descriptor(k_cache, [1, 1, plan.block_n, plan.block_d]), _descriptor(v_stored, v_block)


def split_constexprs(plan: LaunchPlan, *, group: int, T: int, D: int, scaled: bool, e4m3: bool, has_seqlens: bool,
                     upcast: bool, ieee_dot: bool, use_pdl: bool, use_tma: bool, prefetch: int = 0,
                     element_bytes: int = 2, seqlen_shift: int = 0, key_start: int = 0) -> dict:
    """The compile-time arguments of `_split_kv_kernel` for a plan (launch and compile_check share them):
    `scaled`, an 8-bit cache with scales; `e4m3`, that cache is float8_e4m3fn (the options of fp8 dots and
    conversions apply to it only); `prefetch`, bytes of each split's K and V to prefetch before the PDL wait
    (with PDL only); `seqlen_shift` and `key_start`, each row's last and first keys the kernels leave out
    (kernels/exact_window.py).
    """
    return dict(GROUP=group, T=T, HAS_SEQLENS=has_seqlens, SPLIT=plan.num_splits > 1,
                BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_D=plan.block_d,
                SCALED=scaled, FP8_DOT=e4m3 and plan.fp8_dot, FP8_EARLY=e4m3 and plan.fp8_early,
                INT8_PRMT=scaled and not e4m3 and plan.int8_prmt and not upcast, UPCAST=upcast,
                INT8_DOT=scaled and not e4m3 and plan.int8_dot,
                IEEE_DOT=ieee_dot, USE_PDL=use_pdl, TMA=use_tma, LOOP_STAGES=plan.loop_stages or None,
                CACHE_MODIFIER=plan.cache_modifier, EVICTION=plan.eviction, EVEN_D=D == plan.block_d,
                PREFETCH=prefetch if use_pdl else 0, ELEMENT_BYTES=element_bytes,
                SEQLEN_SHIFT=seqlen_shift, KEY_START=key_start)


def split_kernel(plan: LaunchPlan, group: int, T: int, *, transposable: bool = False):
    """The split kernel a plan runs: the transposed kernel where it asks for it and the call can take it
    (`transposable`: an 8-bit cache with V sequence-major); else the row kernel where it asks for it, the shape has
    one row and no option of the dots is asked for (a plan forcing one, like the GPU check's, means the dot kernel)."""
    if plan.transposed and transposable:
        return _split_kv_transposed_kernel
    row = plan.row_kernel and group * T == 1 and not (plan.fp8_early or plan.fp8_dot)
    return _split_kv_row_kernel if row else _split_kv_kernel


def combine_constexprs(plan: LaunchPlan, *, has_seqlens: bool, use_pdl: bool, seqlen_shift: int = 0,
                       key_start: int = 0) -> dict:
    return dict(HAS_SEQLENS=has_seqlens, BLOCK_S=triton.next_power_of_2(plan.num_splits),
                BLOCK_N=plan.block_n, BLOCK_D=plan.block_d, USE_PDL=use_pdl, TRIGGER=COMBINE_TRIGGER,
                SEQLEN_SHIFT=seqlen_shift, KEY_START=key_start)


def combine_warps(plan: LaunchPlan) -> int:
    return 4 if plan.block_d * triton.next_power_of_2(plan.num_splits) >= 4096 else 1


def _run(kernel, grid, compile_only: bool, *args, **kwargs):
    if compile_only:  # build (or fetch) the binary without launching; under triton.AsyncCompileMode, queue it
        return kernel.warmup(*args, grid=grid, **kwargs)
    kernel[grid](*args, **kwargs)
    return None


@on_first_tensors_device
def launch(q, k_cache, v_cache, cache_seqlens, plan: LaunchPlan, *, softmax_scale=None, k_scale=None,
           v_scale=None, compile_only=False, exact=None, seqlen_shift=0,
           key_start=0):
    """Run the kernels with an explicit plan (inputs already validated). Returns (out, lse) with
    out of q's shape and lse (B, Hq) or (B, Hq, T). `compile_only` builds the kernels the call would
    launch and returns the split kernel's binary instead (benchmarks compile their candidate plans in
    parallel first, and read registers and shared memory from the binaries). `exact`
    (`kernels.exact_window.ExactLaunch`, split plans only): the combine merges an 8-bit cache's exact tokens too;
    `seqlen_shift`, `key_start` (with cache_seqlens only): each row's keys key_start .. len - seqlen_shift - 1 are
    read, its causal mask ending at len - seqlen_shift (a row of key_start keys or fewer reads none)."""
    B, Hq, D = q.shape[0], q.shape[1], q.shape[-1]
    T = q.shape[2] if q.dim() == 4 else 1
    q4 = q if q.dim() == 4 else q.unsqueeze(2)                                # (B, Hq, T, D)
    _, Hkv, S, _ = k_cache.shape
    group = Hq // Hkv
    scaled, e4m3 = k_cache.dtype in SCALED_DTYPES, k_cache.dtype == FP8_DTYPE
    scale = softmax_scale_of(softmax_scale, D)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    splits = plan.num_splits
    if splits > 1:
        part_out = torch.empty((B, Hq, T, splits, D), dtype=PARTIAL_DTYPES[plan.partials], device=q.device)
        part_lse = torch.empty((B, Hq, T, splits), dtype=torch.float32, device=q.device)
    else:  # the split kernel writes `out` and `lse` itself
        part_out, part_lse = out, lse
    has_seqlens = cache_seqlens is not None
    if (seqlen_shift or key_start) and not has_seqlens:
        raise ValueError("seqlen_shift and key_start shift cache_seqlens: pass them")
    seqlens = cache_seqlens if has_seqlens else lse  # any pointer; never read without HAS_SEQLENS
    upcast = not q.is_cuda  # the interpreter's 16-bit arithmetic is wrong; widen on load
    use_pdl = q.is_cuda and PDL_SUPPORTED and plan.pdl
    kernel = split_kernel(plan, group, T, transposable=scaled and sequence_major(v_cache))
    transposed = kernel is _split_kv_transposed_kernel
    # a descriptor's tile starts 16-byte aligned along its innermost dimension: the transposed kernel's V tiles
    # start at key_start (the first split's) in bytes of keys
    descriptors = (plan.tma and (not transposed or key_start * v_cache.element_size() % 16 == 0)
                   and _tma_sources(k_cache, v_cache, plan, transposed))
    use_tma = bool(descriptors)
    # the L2 prefetch needs 16-byte aligned rows; a sequence-major V is not prefetched (kernels.split_kv)
    aligned = tma_capable(k_cache) and (tma_capable(v_cache) or sequence_major(v_cache))
    k_arg, v_arg = descriptors if use_tma else (k_cache, v_cache)
    k_scale_arg, v_scale_arg = (k_scale, v_scale) if scaled else (lse, lse)  # never read without SCALED
    scale_strides = [st for t in (k_scale, v_scale) for st in t.stride()] if scaled else [0] * 6

    binary = _run(kernel, (splits, B * Hkv * plan.row_blocks(group, T)), compile_only,
        q4, k_arg, v_arg, k_scale_arg, v_scale_arg, seqlens, out, lse, part_out, part_lse, k_cache, v_cache,
        q4.stride(0), q4.stride(1), q4.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), v_cache.stride(3),
        *scale_strides,
        S, Hkv, D, scale * LOG2_E, splits,
        **split_constexprs(plan, group=group, T=T, D=D, scaled=scaled, e4m3=e4m3, has_seqlens=has_seqlens,
                           upcast=upcast, ieee_dot=q.dtype == torch.float32 and not scaled, use_pdl=use_pdl,
                           use_tma=use_tma, prefetch=KV_PREFETCH if aligned else 0,
                           element_bytes=k_cache.element_size(), seqlen_shift=seqlen_shift,
                           key_start=key_start),
        num_warps=plan.num_warps, num_stages=plan.num_stages, **({"maxnreg": plan.maxnreg} if plan.maxnreg else {}),
        **({"launch_pdl": True} if use_pdl else {}),
    )
    if exact is not None and splits == 1:
        raise ValueError("the exact tokens are merged by the combine of a split plan only")
    if splits > 1:
        _run(_combine_kernel if exact is None else _combine_exact_kernel, (B * Hq * T,), compile_only,
            seqlens, part_out, part_lse, out, lse,
            S, Hq * T, D, splits, *(exact.args if exact is not None else ()),
            **combine_constexprs(plan, has_seqlens=has_seqlens, use_pdl=use_pdl, seqlen_shift=seqlen_shift,
                                 key_start=key_start),
            **(exact.constexprs if exact is not None else {}),
            num_warps=combine_warps(plan) if exact is None else max(combine_warps(plan), EXACT_WARPS),
            **({"launch_pdl": True} if use_pdl else {}),
        )
    return binary if compile_only else (out, lse)


def append_kv(k_new, v_new, k_cache, v_cache, input_pos, k_scale=None, v_scale=None):
    """Write k_new, v_new (B, Hkv, T, D) into the caches (B, Hkv, S, D) at positions
    input_pos[b] .. input_pos[b] + T - 1 (input_pos int64 (B,)); an 8-bit cache is quantized in the same
    pass (scale = amax / 448 for e4m3, amax / 127 for int8, per token and KV head, 1 where amax is 0;
    `kernels.reference.quantize` has the arithmetic) and its scales written to
    k_scale, v_scale float32 (B, Hkv, S). One Triton kernel on CUDA, plain PyTorch elsewhere; both
    graph-safe (no host sync while a CUDA graph is captured). What is written must be memory of its own: an
    expanded (stride-0) cache or scale, or K and V (k_scale and v_scale) in shared memory, is a ValueError;
    new values read from the very rows being written are not checked (those rows are on the device)."""
    if k_cache.is_cuda:
        append_kv_triton(k_new, v_new, k_cache, v_cache, input_pos, k_scale, v_scale, use_pdl=PDL_SUPPORTED)
    else:
        reference.append_kv(k_new, v_new, k_cache, v_cache, input_pos, k_scale, v_scale)
