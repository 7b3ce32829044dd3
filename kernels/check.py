"""The kernels' GPU correctness sweep (`python -m kernels.bench --check [quick]`): flash_decode against a float64
reference over every feature a plan can switch on, with each cache's entries past a row's length poisoned (NaN, or
0x7F bytes for 8-bit caches), and append_kv byte for byte against PyTorch. Each case is built first, all of them in
parallel (`kernels.bench.compile_in_parallel`), then run; a case that fails to build or launch is reported, and
the sweep goes on. The logic runs on the CPU too (interpreter), for the tests.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from kernels import bench, reference
from kernels.bench import compile_in_parallel
from kernels.interface import append_kv, as_sequence_major, flash_decode, launch, plan_for
from kernels.validation import FP8_DTYPE


@dataclass(frozen=True)
class CheckCase:
    dtype: torch.dtype
    D: int
    Hq: int
    Hkv: int
    S: int
    splits: int | None
    layout: str
    T: int = 1
    fp8: bool = False
    options: tuple = ()  # (LaunchPlan field, value) pairs replacing the planned ones
    int8: bool = False   # an int8 cache (fp8 must be False): the 8-bit path with int8 values

    @property
    def scaled(self) -> bool:
        return self.fp8 or self.int8

    def plan(self, q):
        plan = plan_for(q, 3, self.Hq, self.Hkv, self.S, self.D, self.T, self.scaled, self.splits, int8=self.int8)
        return dataclasses.replace(plan, **dict(self.options))

    def inputs(self, gen):
        """(q, k, v, lengths, scales): B=3 rows of lengths S, 0 (T with T tokens) and S/3 + T."""
        B = 3
        q = torch.randn(B, self.Hq, self.T, self.D, device=bench.DEVICE, generator=gen).to(self.dtype)
        if self.T == 1:
            q = q[:, :, 0]
        shape = (B, self.S, self.Hkv, self.D) if self.layout == "bshd" else (B, self.Hkv, self.S, self.D)
        k = torch.randn(shape, device=bench.DEVICE, generator=gen).to(self.dtype)
        v = torch.randn(shape, device=bench.DEVICE, generator=gen).to(self.dtype)
        if self.layout == "bshd":
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        lengths = torch.tensor([self.S, 0 if self.T == 1 else self.T, self.S // 3 + self.T], device=bench.DEVICE,
                               dtype=torch.int32)
        scales = {}
        if self.scaled:
            dtype = torch.int8 if self.int8 else FP8_DTYPE
            (k, ks), (v, vs) = reference.quantize(k, dtype), reference.quantize(v, dtype)
            scales = {"k_scale": ks, "v_scale": vs}
        if self.layout == "vseq":  # V sequence-major, as models store an 8-bit GQA cache
            v = as_sequence_major(v)
        return q, k, v, lengths, scales

    def compile(self, gen) -> None:
        q, k, v, lengths, scales = self.inputs(gen)
        launch(q, k, v, lengths, self.plan(q), compile_only=True, **scales)

    def run(self, gen) -> dict:
        q, k, v, lengths, scales = self.inputs(gen)
        kp, vp, sp = poisoned_tails(k, v, scales, lengths)
        if self.options:  # the plan options the tuner may choose, each checked once on the GPU
            out, lse = launch(q, kp, vp, lengths, self.plan(q), **sp)
        else:
            out, lse = flash_decode(q, kp, vp, lengths, num_splits=self.splits, return_lse=True, **sp)
        ref, ref_lse = reference.flash_decode(q.double(), k if self.scaled else k.double(),
                                              v if self.scaled else v.double(), lengths, return_lse=True, **scales)
        err = ((out.double() - ref).norm() / ref.norm()).item()
        has = lengths > 0
        lse_err = (lse[has].double() - ref_lse[has]).abs().max().item()
        if self.scaled and self.dtype != torch.bfloat16:     # (bf16's own rounding of the output is ~2e-3)
            tol = 2e-3
        else:
            tol = 1e-5 if self.dtype == torch.float32 else 1e-2
        ok = (not out.isnan().any().item()) and err < tol and lse_err < 1e-3
        if self.T == 1:
            ok = ok and (out[1] == 0).all().item() and bool((lse[1] == float("-inf")).all())
        return self.describe() | {"rel_err": err, "lse_err": lse_err, "ok": ok}

    def describe(self) -> dict:
        """The case, as its result records it."""
        return {"dtype": str(self.dtype), "D": self.D, "Hq": self.Hq, "Hkv": self.Hkv, "S": self.S, "T": self.T,
                "fp8": self.fp8, "int8": self.int8, "splits": self.splits, "layout": self.layout,
                "options": dict(self.options)}


def nan_filled(real=torch.empty):
    """A stand-in for torch.empty whose float tensors come filled with NaN, so an output element a kernel leaves
    unwritten (or a partial it should ignore and reads) shows as NaN (the kernel tests' `poisoned_empty` fixture)."""
    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t
    return empty


@contextmanager
def nan_poisoned_empty():
    """Within it, torch.empty is `nan_filled` (the GPU check scripts' outputs: bench/gpu/exact_window_check.py,
    prefill_exact_check.py; the few-rows int8 sweep, kernels/few_rows_int8_bench.py)."""
    real = torch.empty
    torch.empty = nan_filled(real)
    try:
        yield
    finally:
        torch.empty = real


def poisoned_tails(k, v, scales, lengths):
    """Copies of the caches (same strides) and scales whose every element past a row's length is NaN (an 8-bit
    cache: the byte 0x7F, e4m3's NaN and int8's largest value): a kernel must not let what a cache holds past the
    length into a row, whatever it loads there (a TMA tile, a pipelined load). (The check's tensors are dense views,
    whose strides a clone keeps.)"""
    k, v, scales = k.clone(), v.clone(), {name: t.clone() for name, t in scales.items()}
    for b, n in enumerate(lengths.tolist()):
        for t in (k, v):
            if t.dtype in (FP8_DTYPE, torch.int8):
                t.view(torch.uint8)[b, :, n:] = 0x7F
            else:
                t[b, :, n:] = float("nan")
        for t in scales.values():
            t[b, :, n:] = float("nan")
    return k, v, scales


def _run_case(case: CheckCase, gen) -> dict:
    """case.run, with a case that fails to build or launch reported as failed (the sweep goes on)."""
    try:
        return case.run(gen)
    except Exception as error:  # noqa: BLE001: every case is reported, then the sweep fails
        return case.describe() | {"ok": False,
                                  "error": f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"}


def append_differences(got: list[torch.Tensor], want: list[torch.Tensor]) -> dict:
    """What differs between two appends' results, [k, v] or [k, v, k_scale, v_scale] (fp8): how
    many bytes of the caches, by how many e4m3 steps and by how much once dequantized (absolute,
    and relative to the row's amax = 448 x its scale); how many scales, by how many fp32 ulps."""
    if got[0].dtype != FP8_DTYPE:
        diff = [(a.double() - b.double()).abs() for a, b in zip(got, want)]
        return {"differing_elements": sum(int((d > 0).sum()) for d in diff),
                "max_abs_diff": max(float(d.max()) for d in diff)}
    caches, scales = list(zip(got[:2], want[:2])), list(zip(got[2:], want[2:]))
    steps = [reference.e4m3_steps_apart(a, b) for a, b in caches]
    dequant = [((a.double() * sa.double()[..., None]) - (b.double() * sb.double()[..., None])).abs()
               for (a, b), (sa, sb) in zip(caches, scales)]
    row_amax = [sb.double()[..., None] * reference.FP8_MAX for _, sb in scales]
    ulps = [(sa.view(torch.int32).long() - sb.view(torch.int32).long()).abs() for sa, sb in scales]  # positive floats
    return {"differing_bytes": sum(int((a.view(torch.uint8) != b.view(torch.uint8)).sum()) for a, b in caches),
            "bytes": sum(a.numel() for a in got[:2]),
            "max_e4m3_steps": max(int(s.max()) for s in steps),
            "max_dequant_abs": max(float(d.max()) for d in dequant),
            "max_dequant_rel_amax": max(float((d / m).max()) for d, m in zip(dequant, row_amax)),
            "differing_scales": sum(int((u > 0).sum()) for u in ulps),
            "max_scale_ulps": max(int(u.max()) for u in ulps)}


def _check_append(dt, hkv, D, T, layout, cache, gen) -> dict:
    """The Triton append against the PyTorch reference, byte for byte: both divide with IEEE rounding
    and convert to e4m3 (or int8) rounding to nearest even (`kernels.reference.quant_scale` says why the
    scale is computed in float64). `cache`: "same" (the new values' dtype), "fp8" or "int8". A failure
    records what differs (`append_differences`)."""
    B, S = 3, 300
    shape = (B, S, hkv, D) if layout == "bshd" else (B, hkv, S, D)
    k = torch.randn(shape, device=bench.DEVICE, generator=gen).to(dt)
    v = torch.randn(shape, device=bench.DEVICE, generator=gen).to(dt)
    if layout == "bshd":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    scales = {}
    if cache != "same":
        dtype = torch.int8 if cache == "int8" else FP8_DTYPE
        (k, ks), (v, vs) = reference.quantize(k, dtype), reference.quantize(v, dtype)
        scales = {"k_scale": ks, "v_scale": vs}
    if layout == "vseq":
        v = as_sequence_major(v)
    k_new = torch.randn(B, hkv, T, D, device=bench.DEVICE, generator=gen).to(dt) * 30
    v_new = torch.randn(B, hkv, T, D, device=bench.DEVICE, generator=gen).to(dt)
    pos = torch.tensor([0, S - T, 77], device=bench.DEVICE, dtype=torch.int64)
    want = [t.clone() for t in (k, v, *scales.values())]
    append_kv(k_new, v_new, k, v, pos, **scales)
    reference.append_kv(k_new, v_new, *want[:2], pos, *want[2:])
    diff = append_differences([k, v, *scales.values()], want)
    same = diff.get("differing_bytes", diff.get("differing_elements")) == 0 and diff.get("differing_scales", 0) == 0
    return {"append": True, "dtype": str(dt), "Hkv": hkv, "D": D, "T": T, "layout": layout, "cache": cache,
            "ok": same} | diff


def gpu_correctness_sweep(log, quick: bool = False) -> list[dict]:
    """flash_decode on the GPU against a float64 reference: dtypes, head dims, GQA groups, ragged
    lengths (0 and S included), strided caches, forced and planned splits, then fp8 caches and
    query tokens T in {2, 5, 16}; and append_kv byte for byte against PyTorch. NaN-poisoned outputs
    are impossible to see from outside, so every output is also checked for NaN."""
    mixes = ((4099, None, "bhsd"), (777, 7, "bshd"), (65, 1, "bhsd"))
    heads = ((8, 8), (8, 2), (12, 4), (9, 3), (8, 1), (64, 8))
    head_dims, fp8_dims, tokens = (64, 80, 96, 128, 256), (64, 80, 128), (2, 5, 16)
    if quick:  # every feature, a third of the compilations: for runs with a time limit
        mixes, heads, head_dims, fp8_dims, tokens = mixes[:2], ((8, 2), (9, 3), (64, 8)), (80, 128), (128,), (2, 16)
    cases = [CheckCase(dt, D, hq, hkv, S, splits, layout)
             for dt in (torch.bfloat16, torch.float16, torch.float32) for D in head_dims
             for hq, hkv in heads for S, splits, layout in mixes]
    # fp8 caches, with q in bf16 and in fp32 (then fp16 dots); query tokens, with and without fp8
    cases += [CheckCase(dt, D, hq, hkv, S, splits, layout, fp8=True)
              for dt in (torch.bfloat16, torch.float32) for D in fp8_dims
              for hq, hkv in heads for S, splits, layout in mixes]
    cases += [CheckCase(torch.bfloat16, 128, hq, hkv, S, splits, layout, T=T, fp8=fp8)
              for T in tokens for fp8 in (False, True) for hq, hkv in heads for S, splits, layout in mixes]
    # every plan option the tuner may choose, with and without fp8 (GPU-only code: the inline-PTX
    # fp8 conversion, register caps, TMA)
    options = ((("fp8_early", True),), (("maxnreg", 128),), (("num_warps", 2), ("loop_stages", 3)),
               (("block_n", 128), ("num_warps", 8)), (("tma", True), ("num_stages", 3)),
               (("partials", "bfloat16"), ("eviction", "evict_first"), ("cache_modifier", ".cg")),
               (("pdl", False), ("block_n", 32)))
    cases += [CheckCase(torch.bfloat16, 128, hq, hkv, S, splits, layout, fp8=fp8, options=option)
              for option in options for fp8 in (False, True) for hq, hkv in ((32, 32), (64, 8))
              for S, splits, layout in mixes[:2] if fp8 or not any(name.startswith("fp8") for name, _ in option)]
    # the row kernel (one query row per KV head: MHA), every dtype, and with the options it may take
    row_options = ((), (("num_warps", 2), ("loop_stages", 3)), (("block_n", 32), ("tma", True)),
                   (("block_n", 128), ("num_warps", 8), ("partials", "bfloat16")))
    row_cases = [(torch.bfloat16, D, option) for D in (80, 128) for option in row_options]
    row_cases += [(dt, 128, ()) for dt in (torch.float16, torch.float32)]
    cases += [CheckCase(dt, D, 16, 16, S, splits, layout, fp8=fp8, options=(("row_kernel", True),) + option)
              for dt, D, option in row_cases for fp8 in (False, True) for S, splits, layout in mixes[:2]]
    # int8 caches: the row kernel (MHA), the dot kernel (GQA), several tokens, q in fp32 (planned options)
    i2f = (("row_kernel", True), ("int8_prmt", False))     # the row kernel converts by PRMT unless told
    int8_cases = ((torch.bfloat16, 128, 32, 32, 1, ()), (torch.bfloat16, 128, 64, 8, 1, ()),
                  (torch.float16, 80, 12, 4, 1, ()), (torch.float32, 64, 8, 8, 1, ()), (torch.bfloat16, 128, 64, 8, 5, ()),
                  (torch.bfloat16, 128, 32, 32, 1, i2f), (torch.float16, 80, 12, 12, 1, i2f))
    int8_dot = (("int8_dot", True),)                      # int8 tensor-core scores (the dot kernel)
    int8_cases += tuple((dt, D, hq, hkv, T, int8_dot + extra) for dt, D, hq, hkv, T, extra in (
        (torch.bfloat16, 128, 64, 8, 1, ()), (torch.float16, 80, 12, 4, 1, ()), (torch.float32, 64, 8, 2, 1, ()),
        (torch.bfloat16, 128, 64, 8, 5, ()), (torch.bfloat16, 128, 8, 8, 16, ()),
        (torch.bfloat16, 128, 64, 8, 1, (("maxnreg", 168), ("num_warps", 2), ("block_n", 32))),
        (torch.bfloat16, 128, 64, 8, 1, (("tma", True), ("num_stages", 3)))))
    cases += [CheckCase(dt, D, hq, hkv, S, splits, layout, T=T, int8=True, options=options)
              for dt, D, hq, hkv, T, options in int8_cases for S, splits, layout in mixes[:2]]
    # V sequence-major (models' 8-bit GQA caches): the dot kernel's options over both 8-bit kinds, and bf16
    vseq_options = ((), (("block_n", 128), ("num_warps", 4)), (("fp8_early", True),), (("int8_dot", True),),
                    (("int8_dot", True), ("block_n", 128), ("num_warps", 2), ("maxnreg", 255)),
                    (("transposed", True),), (("transposed", True), ("block_n", 128), ("num_stages", 3)),
                    (("transposed", True), ("maxnreg", 168), ("num_stages", 4)))
    cases += [CheckCase(dt, D, hq, hkv, S, splits, "vseq", T=T, fp8=kind == "fp8", int8=kind == "int8", options=opt)
              for kind in ("fp8", "int8") for opt in vseq_options
              if not any(name.startswith(("fp8" if kind == "int8" else "int8")) for name, _ in opt)
              for dt, D, hq, hkv, T in ((torch.bfloat16, 128, 64, 8, 1), (torch.float16, 80, 12, 4, 3))
              for S, splits, _ in mixes[:2]]
    # the transposed kernel through tensor descriptors: lengths whose strides are 16-byte aligned (else no TMA)
    cases += [CheckCase(dt, D, hq, hkv, S, splits, "vseq", T=T, fp8=kind == "fp8", int8=kind == "int8",
                        options=(("transposed", True), ("tma", True), ("block_n", block_n), ("num_stages", 3)))
              for kind in ("fp8", "int8") for dt, D, hq, hkv, T, block_n in (
                  (torch.bfloat16, 128, 64, 8, 1, 128), (torch.float16, 80, 12, 4, 3, 64))
              for S, splits in ((4112, None), (784, 7))]
    # one program over 16k keys, q in fp16 (whose rounding leaves the kernel's own error visible): e4m3 tensor-core
    # dots keep ~14 bits of their sums, so nothing may be carried through them across tiles (Run 21: 1.4% error)
    cases += [CheckCase(torch.float16, 128, 64, 8, 16384, 1, "vseq", fp8=kind == "fp8", int8=kind == "int8",
                        options=(("transposed", True), ("block_n", block_n), ("num_warps", 4), ("num_stages", 3),
                                 ("tma", True)))
              for kind in ("fp8", "int8") for block_n in (32, 128)]
    cases += [CheckCase(torch.bfloat16, 128, 64, 8, S, splits, "vseq") for S, splits, _ in mixes[:2]]
    seconds = compile_in_parallel([lambda c=c: c.compile(torch.Generator(device=bench.DEVICE).manual_seed(0)) for c in cases])
    log(f"GPU correctness sweep: {len(cases)} cases, kernels built in {seconds:.0f} s")
    gen = torch.Generator(device=bench.DEVICE).manual_seed(1234)
    results = [_run_case(c, gen) for c in cases]
    appends = ((torch.bfloat16, 8, 128, 1, "bhsd", "fp8"), (torch.bfloat16, 32, 128, 8, "bshd", "fp8"),
               (torch.float16, 3, 64, 16, "bhsd", "fp8"), (torch.float32, 4, 80, 1, "bshd", "fp8"),
               (torch.bfloat16, 8, 128, 1, "bshd", "same"),
               (torch.bfloat16, 32, 128, 1, "bhsd", "int8"), (torch.float32, 3, 80, 16, "bshd", "int8"),
               (torch.bfloat16, 8, 128, 1, "vseq", "int8"), (torch.bfloat16, 8, 128, 4, "vseq", "fp8"))
    for dt, hkv, D, T, layout, cache in appends:
        results.append(_check_append(dt, hkv, D, T, layout, cache, gen))
    for r in results:
        if not r["ok"]:
            log(f"  CHECK FAILED {r}")
    log(f"GPU correctness sweep: {sum(r['ok'] for r in results)}/{len(results)} cases within tolerance")
    return results


def check_summary(checks: list[dict]) -> str:
    """The correctness sweep in a few lines: cases within tolerance, then each failure with what differs."""
    failed = [c for c in checks if not c["ok"]]
    lines = [f"GPU correctness sweep: {len(checks) - len(failed)}/{len(checks)} cases within tolerance "
             f"({sum('append' in c for c in checks)} append_kv cases byte for byte)"]
    lines += [f"  FAILED {json.dumps(c)}" for c in failed[:12]]
    return "\n".join(lines)
