"""Build the kernels' cubins for a GPU target without a GPU: `python -m kernels.compile_check`.

The Triton interpreter accepts programs that the GPU compiler rejects (16-bit dots with K < 16,
layouts that do not lower), so CI compiles the main configurations for the H100 (sm_90) too.
Must run without TRITON_INTERPRET, which replaces the jitted functions with interpreted ones.
"""

from __future__ import annotations

import argparse
import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.interface import plan_launch
from kernels.split_kv import _combine_kernel, _split_kv_kernel

POINTER = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}

# (dtype, Hq, Hkv, S, D): CodeLlama-34B, CodeLlama-7B, SmolLM2, odd head dims, D=256, fp32.
MAIN_CONFIGS = [
    ("bf16", 64, 8, 16384, 128),
    ("bf16", 32, 32, 4096, 128),
    ("fp16", 9, 3, 8192, 64),
    ("bf16", 12, 4, 1000, 80),
    ("fp16", 8, 8, 2048, 256),
    ("fp32", 8, 2, 4096, 96),
    ("bf16", 64, 8, 2048, 128),  # large batch below: a single split writing the output directly
]


def _compile(fn, pointer_types: dict, constexprs: dict, target: GPUTarget, num_warps: int, num_stages: int):
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = pointer_types.get(name, "fp32" if name == "qk_scale" else "i32")
    # A launch specialises pointers and integers divisible by 16 (head dims, strides, lengths of the
    # main configurations); without that the compiler cannot vectorise loads, and the binary built
    # here would not be the one that runs.
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]]
             for name, kind in signature.items() if kind != "constexpr" and name != "qk_scale"}
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options={"num_warps": num_warps, "num_stages": num_stages})


def compile_config(dtype: str, Hq: int, Hkv: int, S: int, D: int, B: int = 1,
                   target: GPUTarget = GPUTarget("cuda", 90, 32)) -> dict:
    """Compile both kernels as `flash_decode` would launch them; returns facts about the binaries."""
    plan = plan_launch(B, Hq, Hkv, S, D)
    elem = POINTER[dtype]
    block_s = triton.next_power_of_2(plan.num_splits)
    facts = {"config": [dtype, Hq, Hkv, S, D, B], "num_splits": plan.num_splits}
    use_pdl = plan.num_splits > 1  # as flash_decode launches on a GPU
    split = _compile(
        _split_kv_kernel,
        dict(Q=elem, K=elem, V=elem, SEQLENS="*i32", OUT=elem, LSE="*fp32", PART_OUT="*fp32", PART_LSE="*fp32"),
        dict(GROUP=Hq // Hkv, HAS_SEQLENS=True, NUM_SPLITS=plan.num_splits, BLOCK_H=plan.block_h,
             BLOCK_N=plan.block_n, BLOCK_D=plan.block_d, UPCAST=False, IEEE_DOT=dtype == "fp32", USE_PDL=use_pdl),
        target, plan.num_warps, plan.num_stages)
    facts["split_cubin_bytes"] = len(split.asm["cubin"])
    facts["split_shared_bytes"] = split.metadata.shared
    facts["tensor_cores"] = "mma" in split.asm["ptx"]
    if plan.num_splits > 1:
        combine = _compile(
            _combine_kernel,
            dict(SEQLENS="*i32", PART_OUT="*fp32", PART_LSE="*fp32", OUT=elem, LSE="*fp32"),
            dict(HAS_SEQLENS=True, NUM_SPLITS=plan.num_splits, BLOCK_S=block_s,
                 BLOCK_N=plan.block_n, BLOCK_D=plan.block_d, USE_PDL=use_pdl),
            target, 4, 2)
        facts["combine_cubin_bytes"] = len(combine.asm["cubin"])
    return facts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100")
    args = parser.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    for config in MAIN_CONFIGS:
        batch = 64 if config == MAIN_CONFIGS[-1] else 1
        try:
            facts = compile_config(*config, B=batch, target=target)
        except Exception as error:  # report every configuration, then fail
            failures += 1
            facts = {"config": list(config) + [batch], "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(facts))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
