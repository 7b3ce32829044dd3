"""L2 prefetch before a PDL wait: a dependent kernel starts streaming what does not depend on its predecessor.

A programmatic dependent launch makes a kernel's programs resident while the kernel before it drains; they
then sit in `gdc_wait` until it has finished. A batch-1 decode step is a chain of such kernels, each reading
a weight (or a KV cache range) that no earlier kernel writes, so the wait is time in which HBM could already
be streaming the next kernel's bytes. `prefetch_l2` has one thread of the program ask the TMA unit to bring a
contiguous, 16-byte aligned range into L2 (`cp.async.bulk.prefetch.L2`, sm_90+): no registers, no shared
memory, no completion to wait for; the program's own loads after the wait then hit L2 for what arrived.
flash_decode's split programs use it for their first K and V bytes (kernels/split_kv.py); the dense GEMVs
load their first tile of W into registers instead (kernels/fused_gemv.py, EARLY_TILE), since a bulk prefetch
of their rows made the step slower (bench/results/NOTES.md, Run 16).

GPU only (inline PTX): callers guard it with their PDL flag, which is off under the interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def prefetch_l2(ptr, nbytes):
    """Prefetch nbytes (rounded down to 16; nothing if < 16) at ptr (16-byte aligned) into L2, issued once
    per program (by thread 0)."""
    nbytes = (nbytes // 16 * 16).to(tl.int32)
    if nbytes > 0:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
            "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r", [ptr, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_rows(start, rows, K, stride, limit, ELEMENT_BYTES: tl.constexpr):
    """Prefetch the first `limit` bytes of `rows` rows of K elements, `stride` elements apart, from `start`
    (the span from the first row's start to the last row's end: padding between rows comes along)."""
    span = ((rows - 1).to(tl.int64) * stride + K) * ELEMENT_BYTES
    prefetch_l2(start, tl.minimum(span, limit))

