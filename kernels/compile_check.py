"""Build the kernels' cubins for a GPU target without a GPU: `python -m kernels.compile_check`.

The Triton interpreter accepts programs that the GPU compiler rejects (16-bit dots with K < 16,
layouts that do not lower, fp8 dots in the wrong operand order), so CI compiles the main
configurations, every kernel variant the plans can choose (`kernels.plan.LaunchPlan`'s options)
and the append kernel for the H100/H200 (sm_90) too. Must run without TRITON_INTERPRET, which
replaces the jitted functions with interpreted ones. One JSON line per configuration, with what
the binary costs: registers and shared memory per program, the programs an SM holds at once, and
the instructions of the key loop (`--sass` adds their opcode histogram): the numbers the
predictions in bench/results/NOTES.md come from.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import interface
from kernels.append import _append_kv_kernel, append_blocks
from kernels.exact_combine import EXACT_WARPS, _combine_exact_kernel, _exact_merge_kernel
from kernels.exact_window import exact_merge_constexprs
from kernels.fused_gemv import build_names
from kernels.infill_keep import _infill_keep_kernel
from kernels.interface import combine_constexprs, combine_warps, split_constexprs, split_kernel
from kernels.plan import plan_launch, resident_programs
from kernels.prefill_exact import TILE_CHOICES, PrefillTiles, _prefill_exact_kernel, default_tiles, prefill_constexprs
from kernels.split_kv import _combine_kernel
from kernels.split_kv_transposed import _split_kv_transposed_kernel

POINTER = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32", "fp8": "*fp8e4nv", "int8": "*i8"}


# The exact tokens an fp8 cache's decode step leaves to its exact copies: models/kv_cache.py's EXACT_SINK and
# EXACT_WINDOW (kernels/ imports nothing from models/; tests/kernels/test_compile_sm90.py checks they agree).
DECODE_SINK, DECODE_WINDOW = 16, 32


@dataclass(frozen=True)
class Config:
    name: str
    dtype: str          # q's dtype
    Hq: int
    Hkv: int
    S: int
    D: int
    B: int = 1
    T: int = 1
    kv: str = ""        # the caches' dtype: "" = q's, "fp8", "int8"
    plan: dict = field(default_factory=dict)  # LaunchPlan fields that differ from the heuristic's
    sequence_major_v: bool = False  # V a (B, Hkv, D, S) tensor seen as (B, Hkv, S, D), as 8-bit caches store it
    exact_tokens: bool = False      # the keys an fp8 cache's exact sink and window hold left out, as models/ reads it

    def __hash__(self):
        return hash(self.name)


# CodeLlama-34B, CodeLlama-7B, SmolLM2, odd head dims, D=256, fp32; then multi-token, fp8, and every
# plan option the tuner may pick.
MAIN_CONFIGS = [
    Config("34B-16k", "bf16", 64, 8, 16384, 128),
    Config("7B-4k", "bf16", 32, 32, 4096, 128),
    Config("smollm2-8k", "fp16", 9, 3, 8192, 64),
    Config("d80", "bf16", 12, 4, 1000, 80),
    Config("d256", "fp16", 8, 8, 2048, 256),
    Config("fp32", "fp32", 8, 2, 4096, 96),
    Config("34B-b64-unsplit", "bf16", 64, 8, 2048, 128, B=64),
    Config("34B-64k-T8", "bf16", 64, 8, 65536, 128, T=8),
    Config("7B-16k-T8", "bf16", 32, 32, 16384, 128, T=8),
    Config("smollm2-T16", "fp16", 9, 3, 8192, 64, T=16),
    Config("7B-64k-fp8", "bf16", 32, 32, 65536, 128, kv="fp8", plan={"row_kernel": False}),  # the dots
    Config("34B-128k-fp8", "bf16", 64, 8, 131072, 128, kv="fp8"),
    Config("d80-fp8", "fp16", 12, 4, 1000, 80, kv="fp8"),
    Config("fp32-fp8", "fp32", 8, 2, 4096, 96, kv="fp8"),
    Config("34B-64k-T8-fp8", "bf16", 64, 8, 65536, 128, T=8, kv="fp8"),
    Config("34B-16k-tma-stages3", "bf16", 64, 8, 16384, 128, plan={"tma": True, "num_stages": 3}),
    Config("7B-64k-fp8-tma", "bf16", 32, 32, 65536, 128, kv="fp8", plan={"tma": True, "row_kernel": False}),
    Config("34B-16k-loop3-bf16-partials", "bf16", 64, 8, 16384, 128, plan={"loop_stages": 3, "partials": "bfloat16"}),
    Config("34B-16k-evict-cg", "bf16", 64, 8, 16384, 128,
           plan={"eviction": "evict_first", "cache_modifier": ".cg", "num_stages": 4}),
    Config("34B-16k-n128-w8", "bf16", 64, 8, 16384, 128, plan={"block_n": 128, "num_warps": 8, "num_stages": 3}),
    Config("34B-128k-fp8-dot-loop3", "bf16", 64, 8, 131072, 128, kv="fp8", plan={"fp8_dot": True, "loop_stages": 3}),
    Config("7B-64k-fp8-early", "bf16", 32, 32, 65536, 128, kv="fp8", plan={"fp8_early": True}),
    Config("7B-64k-fp8-maxnreg128", "bf16", 32, 32, 65536, 128, kv="fp8", plan={"maxnreg": 128, "row_kernel": False}),
    Config("7B-64k-fp8-w2-loop3", "bf16", 32, 32, 65536, 128, kv="fp8",
           plan={"num_warps": 2, "loop_stages": 3, "row_kernel": False}),
    Config("7B-64k-row", "bf16", 32, 32, 65536, 128, plan={"row_kernel": True}),
    Config("7B-64k-fp8-row", "bf16", 32, 32, 65536, 128, kv="fp8", plan={"row_kernel": True}),
    Config("7B-64k-fp8-row-loop3-w2", "bf16", 32, 32, 65536, 128, kv="fp8",
           plan={"row_kernel": True, "loop_stages": 3, "num_warps": 2}),
    Config("7B-64k-int8", "bf16", 32, 32, 65536, 128, kv="int8"),  # the row kernel (the heuristic's), PRMT
    Config("7B-64k-int8-i2f", "bf16", 32, 32, 65536, 128, kv="int8", plan={"int8_prmt": False}),
    Config("7B-16k-int8-tma", "bf16", 32, 32, 16384, 128, kv="int8", plan={"tma": True}),
    Config("34B-128k-int8", "bf16", 64, 8, 131072, 128, kv="int8"),
    Config("34B-128k-int8-dot", "bf16", 64, 8, 131072, 128, kv="int8", plan={"int8_dot": True}),
    Config("34B-64k-T8-int8-dot-tma", "bf16", 64, 8, 65536, 128, T=8, kv="int8", plan={"int8_dot": True, "tma": True}),
    Config("d80-int8-T4", "fp16", 12, 4, 1000, 80, T=4, kv="int8"),
    Config("34B-128k-fp8-n128-w8", "bf16", 64, 8, 131072, 128, kv="fp8", plan={"block_n": 128, "num_warps": 8}),
    # V sequence-major, as models store 8-bit GQA caches (the last: the plan 34B 128k int8 runs with on an H200)
    Config("34B-128k-fp8-vseq", "bf16", 64, 8, 131072, 128, kv="fp8", sequence_major_v=True),
    Config("34B-128k-int8-dot-vseq", "bf16", 64, 8, 131072, 128, kv="int8", plan={"int8_dot": True},
           sequence_major_v=True),
    Config("34B-128k-int8-dot-vseq-n128-w4", "bf16", 64, 8, 131072, 128, kv="int8",
           plan={"int8_dot": True, "block_n": 128, "num_warps": 4, "num_splits": 32}, sequence_major_v=True),
    # the transposed kernel (the cache as the first operand of 8-bit warpgroup dots): 64 and 128 keys a tile,
    # several tokens, an odd head dim
    Config("34B-128k-fp8-transposed", "bf16", 64, 8, 131072, 128, kv="fp8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4}),
    Config("34B-128k-fp8-transposed-n128", "bf16", 64, 8, 131072, 128, kv="fp8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4, "block_n": 128, "num_stages": 3}),
    Config("34B-128k-fp8-transposed-n256", "bf16", 64, 8, 131072, 128, kv="fp8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4, "block_n": 256, "num_stages": 3, "num_splits": 16}),
    Config("34B-128k-int8-transposed", "bf16", 64, 8, 131072, 128, kv="int8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4}),
    Config("34B-128k-int8-transposed-n128", "bf16", 64, 8, 131072, 128, kv="int8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4, "block_n": 128, "num_stages": 3}),
    Config("34B-128k-fp8-transposed-n128-tma", "bf16", 64, 8, 131072, 128, kv="fp8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4, "block_n": 128, "num_stages": 3, "tma": True}),
    Config("34B-128k-int8-transposed-n128-tma", "bf16", 64, 8, 131072, 128, kv="int8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4, "block_n": 128, "num_stages": 3, "tma": True}),
    # as the decode step runs it over an fp8 cache: the keys of the exact sink (16) and window (32) left out, the
    # first split starting at the sink
    Config("34B-128k-fp8-transposed-n128-tma-exact", "bf16", 64, 8, 131072, 128, kv="fp8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4, "block_n": 128, "num_stages": 3, "tma": True}, exact_tokens=True),
    Config("34B-64k-T8-fp8-transposed", "bf16", 64, 8, 65536, 128, T=8, kv="fp8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4}),
    Config("d80-int8-T4-transposed", "fp16", 12, 4, 1000, 80, T=4, kv="int8", sequence_major_v=True,
           plan={"transposed": True, "num_warps": 4}),
    # the heuristic's plan on sm_90 for 8-bit GQA (kernels.plan.plan_launch's wgmma8): the transposed kernel where V
    # is sequence-major, the dot kernel in the same tiles where it is not (fp32 q included), through descriptors
    Config("smollm2-32k-fp8-heuristic-sm90", "fp16", 9, 3, 32768, 64, kv="fp8", sequence_major_v=True,
           plan={"transposed": True, "block_n": 128, "num_warps": 4, "num_stages": 3, "tma": True}),
    Config("fp32-fp8-heuristic-sm90-dmajor", "fp32", 8, 2, 4096, 96, kv="fp8",
           plan={"transposed": True, "block_n": 128, "num_warps": 4, "num_stages": 3, "tma": True}),
    Config("d80-int8-heuristic-sm90-dmajor", "bf16", 12, 4, 1000, 80, kv="int8",
           plan={"transposed": True, "block_n": 128, "num_warps": 4, "num_stages": 3, "tma": True}),
]
# (new values, cache, KV heads, head dim, tokens, V sequence-major)
APPEND_CONFIGS = [("bf16", "bf16", 32, 128, 1, False), ("bf16", "fp8", 8, 128, 8, False),
                  ("fp32", "fp8", 3, 80, 16, False), ("bf16", "int8", 32, 128, 1, False),
                  ("fp32", "int8", 3, 80, 16, False), ("bf16", "int8", 8, 128, 1, True)]


# the exact-window merge (kernels/exact_window.py): (q dtype, group, head dim, exact keys a query reads (sink +
# window: the ring's slots are gathered, N is a run-time argument), 8-bit keys read too)
EXACT_MERGE_CONFIGS = [("bf16", 8, 128, 48, True), ("bf16", 1, 128, 48, True), ("fp16", 3, 64, 36, False),
                       ("fp32", 4, 80, 48, True)]


def compile_exact_merge(dtype: str, group: int, D: int, read: int, has_quantized: bool, target: GPUTarget) -> dict:
    """The exact-window merge after an unsplit call and, with `has_quantized`, the combine that merges it into a
    split call's partials (8 splits, bfloat16 partials, PDL as flash_decode launches it)."""
    exact_pointers = dict(Q=POINTER[dtype], EXACT_K=POINTER[dtype], EXACT_V=POINTER[dtype], EXACT_POS="*i64",
                          LENGTHS="*i32")
    odd = ("stride_pb", "Hq", "T", "N", "D", "S", "sink", "window")
    binary = _compile(_exact_merge_kernel, dict(exact_pointers, OUT=POINTER[dtype], LSE="*fp32"),
                      exact_merge_constexprs(group, read, D, has_quantized), target, EXACT_WARPS, 1,
                      not_divisible=odd)
    usage = sass_facts(binary.asm["cubin"])
    facts = {"name": _exact_merge_name(dtype, group, D, read, has_quantized), "cubin_bytes": len(binary.asm["cubin"]),
             "registers": usage.get("registers"), "local_bytes": usage.get("local_bytes")}
    if has_quantized:
        plan = dataclasses.replace(plan_launch(1, 8 * group, 8, 4096, D, scaled=True, num_splits=8),
                                   partials="bfloat16")
        combine = _compile(_combine_exact_kernel,
                           dict(exact_pointers, SEQLENS="*i32", PART_OUT="*bf16", PART_LSE="*fp32",
                                OUT=POINTER[dtype], LSE="*fp32"),
                           {**combine_constexprs(plan, has_seqlens=True, use_pdl=True, seqlen_shift=DECODE_WINDOW,
                                               key_start=DECODE_SINK),
                            "GROUP": group, "EXACT_BLOCK": exact_merge_constexprs(group, read, D, True)["EXACT_BLOCK"]},
                           target, max(combine_warps(plan), EXACT_WARPS), 1, not_divisible=odd + ("num_splits", "S_cache"))
        combine_usage = sass_facts(combine.asm["cubin"])
        facts |= {"combine_cubin_bytes": len(combine.asm["cubin"]), "combine_local_bytes":
                  combine_usage.get("local_bytes"), "combine_pdl_wait": "griddepcontrol.wait" in combine.asm["ptx"]}
    return facts


def _exact_merge_name(dtype: str, group: int, D: int, read: int, has_quantized: bool) -> str:
    return f"exact-merge-{dtype}-g{group}-d{D}-r{read}" + ("" if has_quantized else "-exact-only")


# the prefill kernel over an fp8 cache's exact tokens (kernels/prefill_exact.py): (q dtype, cache dtype, group, head
# dim, tiles or None for the default, split or not): CodeLlama-7B (and split, as an edit's span runs), SmolLM2, an odd
# head dim, D = 256, -34B's group of 8 (each ~8 s
# on one core; a group > 1 reads an 8-bit V sequence-major, as models/kv_cache.py stores it on a GPU); with
# `--prefill-tiles` also int8 bytes, a cache already in q's dtype, fp32 (no model takes the kernel in fp32: 25 s to
# build its CUDA-core dots) and the GPU sweep's other candidates (TILE_CHOICES), ~2 min on one core
PREFILL_CONFIGS = [("bf16", "fp8", 1, 128, None, False), ("bf16", "fp8", 1, 128, None, True),
                   ("fp16", "fp8", 3, 64, None, False), ("bf16", "fp8", 4, 80, None, False),
                   ("bf16", "fp8", 1, 256, None, False), ("bf16", "fp8", 8, 128, None, False)]
PREFILL_SWEEP_CONFIGS = [("bf16", "int8", 8, 128, None, False), ("bf16", "bf16", 1, 128, None, False),
                         ("fp32", "fp8", 4, 80, None, False)] \
    + [("bf16", "fp8", 1, 128, tuple(t), False) for t in TILE_CHOICES]


def compile_prefill(dtype: str, cache: str, group: int, D: int, tiles: tuple | None, split: bool, target: GPUTarget,
                    with_opcodes: bool = False) -> dict:
    """The prefill kernel as `prefill_attention_exact` launches it (16 sink and 64 exact slots, as models/kv_cache.py
    keeps; an 8-bit cache's bytes and scales, its V sequence-major where the group is > 1; the unit strides a launch
    specialises as constants)."""
    name = _prefill_name(dtype, cache, group, D, tiles, split)
    tiles = PrefillTiles(*tiles) if tiles else default_tiles(D, {"fp32": torch.float32}.get(dtype, torch.bfloat16))
    elem = POINTER[dtype]
    scaled = cache in ("fp8", "int8")
    pointers = dict(Q=elem, K=POINTER[cache], V=POINTER[cache], K_SCALE="*fp32", V_SCALE="*fp32", K_NEW=elem,
                    V_NEW=elem, PRIOR_K=elem, PRIOR_V=elem, PRIOR_POS="*i64", OUT=elem, PART_ACC="*fp32",
                    PART_M="*fp32", PART_L="*fp32")
    unit = dict(stride_kd=1, stride_kss=1, stride_vss=1,
                **({"stride_vn": 1} if scaled and group > 1 else {"stride_vd": 1}))
    binary = _compile(_prefill_exact_kernel, pointers,
                      prefill_constexprs(tiles, group=group, D=D, N=64, sink=16, scaled=scaled, upcast=False,
                                         ieee_dot=dtype == "fp32", split=split) | unit,
                      target, tiles.num_warps, tiles.num_stages,
                      not_divisible=("T", "start", "N", "sink", "window", "Hq", "splits"))
    facts = {"name": name, "tiles": list(tiles), "cubin_bytes": len(binary.asm["cubin"]),
             "shared_bytes": binary.metadata.shared, "tensor_cores": "mma" in binary.asm["ptx"]}
    return facts | sass_facts(binary.asm["cubin"], with_opcodes=with_opcodes)


def _prefill_name(dtype: str, cache: str, group: int, D: int, tiles: tuple | None, split: bool = False) -> str:
    name = f"prefill-exact-{dtype}-{cache}-cache-g{group}-d{D}" + ("-split" if split else "")
    return name if tiles is None else f"{name}-m{tiles[0]}-n{tiles[1]}-w{tiles[2]}-s{tiles[3]}"


# infill_keep's candidates a row (BLOCK): llama.vim's top_k 40 with slack (64), a small top_k, the largest allowed
INFILL_CONFIGS = [16, 64, 128]


def before_pdl_wait(ptx: str) -> list[str]:
    """The PTX lines before a kernel's first `griddepcontrol.wait` (all of them if it has none): what a
    programmatic dependent launch does while the kernel before it may still run."""
    lines = ptx.splitlines()
    return lines[:next((i for i, line in enumerate(lines) if "griddepcontrol.wait" in line), len(lines))]


def _compile(fn, pointer_types: dict, constexprs: dict, target: GPUTarget, num_warps: int, num_stages: int,
             floats=("qk_scale",), not_divisible=("num_splits",), maxnreg: int = 0):
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = pointer_types.get(name, "fp32" if name in floats else "i32")
    # A launch specialises pointers and integers divisible by 16 (head dims, strides, lengths of the
    # main configurations); without that the compiler cannot vectorise loads, and the binary built
    # here would not be the one that runs.
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]]
             for name, kind in signature.items()
             if kind != "constexpr" and name not in floats and name not in not_divisible
             and not kind.startswith("tensordesc")}
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options={"num_warps": num_warps, "num_stages": num_stages,
                                   **({"maxnreg": maxnreg} if maxnreg else {})})


def _nvidia_tool(name: str) -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def sass_facts(cubin: bytes, with_opcodes: bool = False) -> dict:
    """Registers and local-memory (spill) bytes per thread, and the instructions of each loop in
    address order, read with the cuobjdump and nvdisasm that ship with Triton. Kept beside Triton's own cache,
    keyed by the cubin's bytes (`_facts_path`): with Triton's cache warm, running the two tools was ~85% of a
    compile check's time (0.7 s of the 0.8 a configuration takes on a 2-core CPU)."""
    path = _facts_path(cubin, with_opcodes)
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text(encoding="utf-8"))
    facts = _disassembled_facts(cubin, with_opcodes)
    with contextlib.suppress(OSError):      # (a read-only cache: the facts are only not kept)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(facts, f)
        os.replace(f.name, path)            # whole or not at all, whichever process writes it
    return facts


def _facts_path(cubin: bytes, with_opcodes: bool) -> Path:
    """Where `sass_facts` keeps a cubin's facts: a name from the cubin's bytes, the tools' Triton (they ship with it)
    and this module's text (a change to how facts are read discards the old ones)."""
    key = hashlib.sha256(cubin)
    key.update(f"{with_opcodes}{_facts_version()}".encode())
    return Path(triton.knobs.cache.dir) / "codecomplete-sass-facts" / f"{key.hexdigest()}.json"


@functools.cache
def _facts_version() -> str:
    """What else names a cubin's facts, read once a process: the tools' Triton, the tools' bytes and this module's
    text. The tools by their bytes, not their path: CI makes a fresh virtual environment a run, so a path kept no
    facts from one run to the next (each run disassembled every kernel again, ~50 CPU-s on 2 cores)."""
    tools = hashlib.sha256()
    for name in ("cuobjdump", "nvdisasm"):
        with contextlib.suppress(OSError):  # (a missing tool: sass_facts fails on it as before)
            tools.update(_nvidia_tool(name).read_bytes())
    return triton.__version__ + tools.hexdigest() + Path(__file__).read_text(encoding="utf-8")


def _disassembled_facts(cubin: bytes, with_opcodes: bool) -> dict:
    """`sass_facts`, read from the tools' output."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_nvidia_tool("cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True).stdout
        sass = subprocess.run([_nvidia_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    facts = {}
    if found := re.search(r"REG:(\d+).*LOCAL:(\d+)", usage):
        facts["registers"], facts["local_bytes"] = int(found[1]), int(found[2])
    code, labels, pending = [], {}, []  # code: (address, opcode, branch target label)
    body_end = None                     # the last unconditional EXIT: past it, only out-of-line stubs
    for line in sass.splitlines():  # ".L_x_3:" lines, and "/*01a0*/   @P0 BRA `(.L_x_3) ;" lines
        if label := re.match(r"\s*(\.L_x_\d+):", line):
            pending.append(label[1])
        elif ins := re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line):
            address, text = int(ins[1], 16), re.sub(r"^@!?U?P[T0-9]+\s+", "", ins[2])
            labels.update((name, address) for name in pending)
            pending = []
            target = re.search(r"(\.L_x_\d+)", text)
            code.append((address, text.split()[0], target and target[1]))
            if ins[2] == "EXIT":
                body_end = address
    # A loop: a branch back within the kernel's body. The stubs after its last EXIT (an mbarrier wait's retry, spun
    # there and branching back to where the wait was) are not loops: a wait before the key loop would pass for one.
    loops = [(labels[target], address) for address, op, target in code
             if op == "BRA" and target in labels and labels[target] < address
             and (body_end is None or address < body_end)]
    bodies = [[op for address, op, _ in code if start <= address <= end] for start, end in sorted(loops)]
    if bodies:  # the first loop is the key loop over whole tiles (the second, the partial tile's)
        facts["loop_instructions"] = [len(body) for body in bodies]
        if with_opcodes:
            facts["loop_opcodes"] = dict(collections.Counter(bodies[0]).most_common())
    return facts


def opcode_count(loop_opcodes: dict, prefixes: str | tuple[str, ...]) -> int:
    """Instructions in a loop (`sass_facts`' loop_opcodes) whose opcode begins with `prefixes`: opcodes carry their
    modifiers (`BAR.SYNC.DEFER_BLOCKING`, `HMMA.16816.F32.BF16`)."""
    return sum(n for op, n in loop_opcodes.items() if op.startswith(prefixes))


def compile_config(config: Config, target: GPUTarget = GPUTarget("cuda", 90, 32), with_opcodes: bool = False) -> dict:
    """Compile both kernels as `flash_decode` would launch them on a GPU; returns facts about the binaries."""
    scaled = config.kv in ("fp8", "int8")
    plan = plan_launch(config.B, config.Hq, config.Hkv, config.S, config.D, T=config.T, scaled=scaled,
                       elem_bytes=4 if config.dtype == "fp32" else 2)
    plan = dataclasses.replace(plan, **config.plan)
    elem = POINTER[config.dtype]
    cache = POINTER[config.kv] if scaled else elem
    facts = {"name": config.name, "config": dataclasses.asdict(config), "num_splits": plan.num_splits}
    use_pdl = plan.pdl  # as flash_decode launches on a GPU
    kernel = split_kernel(plan, config.Hq // config.Hkv, config.T, transposable=scaled and config.sequence_major_v)
    if plan.tma:  # the transposed kernel's V descriptor spans its (B, Hkv, D, S) storage (interface._tma_sources)
        block = f"[1, 1, {plan.block_n}, {plan.block_d}]"
        v_block = f"[1, 1, {plan.block_d}, {plan.block_n}]" if kernel is _split_kv_transposed_kernel else block
        kv_types = dict(K=f"tensordesc<{cache[1:]}{block}>", V=f"tensordesc<{cache[1:]}{v_block}>")
    else:
        kv_types = dict(K=cache, V=cache)
    part = "*bf16" if plan.partials == "bfloat16" else "*fp32"
    exact = dict(seqlen_shift=DECODE_WINDOW, key_start=DECODE_SINK) if config.exact_tokens else {}
    constexprs = split_constexprs(plan, group=config.Hq // config.Hkv, T=config.T, D=config.D, scaled=scaled,
                                  e4m3=config.kv == "fp8", has_seqlens=True, upcast=False,
                                  ieee_dot=config.dtype == "fp32" and not scaled, use_pdl=use_pdl, use_tma=plan.tma,
                                  prefetch=interface.KV_PREFETCH,
                                  element_bytes=1 if scaled else 4 if config.dtype == "fp32" else 2, **exact)
    if scaled:  # contiguous scales: a launch specialises their unit stride to the constant 1
        constexprs |= {"stride_ksn": 1, "stride_vsn": 1}
    constexprs |= {"stride_vn": 1} if config.sequence_major_v else {"stride_vd": 1}
    facts["kernel"] = kernel.fn.__name__
    split = _compile(
        kernel,
        dict(Q=elem, **kv_types, K_SCALE="*fp32", V_SCALE="*fp32", SEQLENS="*i32", OUT=elem, LSE="*fp32",
             PART_OUT=part, PART_LSE="*fp32", K_BASE=cache, V_BASE=cache),
        constexprs, target, plan.num_warps, plan.num_stages, maxnreg=plan.maxnreg)
    facts["split_cubin_bytes"] = len(split.asm["cubin"])
    facts["split_shared_bytes"] = split.metadata.shared
    facts |= sass_facts(split.asm["cubin"], with_opcodes=with_opcodes)
    if "registers" in facts:
        facts["resident_programs"] = resident_programs(facts["registers"], split.metadata.shared, plan.num_warps)
    facts["tensor_cores"] = "mma" in split.asm["ptx"]
    facts["tma"] = "cp.async.bulk.tensor" in split.asm["ptx"]
    facts["pdl_wait"] = "griddepcontrol.wait" in split.asm["ptx"]
    facts["prefetches_before_wait"] = sum("cp.async.bulk.prefetch.L2" in line
                                          for line in before_pdl_wait(split.asm["ptx"]))
    if plan.num_splits > 1:
        combine = _compile(
            _combine_kernel,
            dict(SEQLENS="*i32", PART_OUT=part, PART_LSE="*fp32", OUT=elem, LSE="*fp32"),
            combine_constexprs(plan, has_seqlens=True, use_pdl=use_pdl), target, combine_warps(plan), 2)
        facts["combine_cubin_bytes"] = len(combine.asm["cubin"])
    return facts


def compile_append(new: str, cache: str, Hkv: int, D: int, T: int, target: GPUTarget,
                   sequence_major_v: bool = False) -> dict:
    block_h, block_d = append_blocks(Hkv, D)
    binary = _compile(
        _append_kv_kernel,
        dict(K_NEW=POINTER[new], V_NEW=POINTER[new], K=POINTER[cache], V=POINTER[cache], K_SCALE="*fp32",
             V_SCALE="*fp32", POS="*i64"),
        # (the token count is a runtime argument: a launch specialises it as a constant when 1, as divisible when
        # a multiple of 16)
        dict(BLOCK_H=block_h, BLOCK_D=block_d, SCALED=cache in ("fp8", "int8"), USE_PDL=True,
             **({"T": 1} if T == 1 else {}), **({"stride_vs": 1} if sequence_major_v else {"stride_vd": 1})),
        target, 4, 2, floats=(), not_divisible=() if T % 16 == 0 else ("T",))
    ptx = binary.asm["ptx"]
    # The quantization must be PyTorch's arithmetic: IEEE divisions (Triton's `/` on fp32 is the
    # 2-ulp div.full), no contraction into fma, one round-to-nearest-even saturating conversion.
    return {"name": _append_name(new, cache, Hkv, D, T, sequence_major_v),
            "append_cubin_bytes": len(binary.asm["cubin"]),
            "fp8_convert": "cvt.rn.satfinite.e4m3x2.f32" in ptx,
            "ieee_divisions": "div.rn.f32" in ptx and not re.search(r"div\.(full|approx)|rcp\.approx", ptx),
            "float_fma": bool(re.search(r"fma\.\w+\.f32", ptx))}


def compile_infill(block: int, target: GPUTarget) -> dict:
    binary = _compile(_infill_keep_kernel,
                      dict(VALUES="*fp32", IDS="*i64", TABLE="*u8", LENGTHS="*i32", ENDS="*i8", SIZES="*i64",
                           OUT_IDS="*i64", OUT_VALUES="*fp32", ALONE="*i8"),
                      dict(BLOCK=block, HAS_SIZES=True), target, 4, 1, floats=(),    # (the chain passes its sizes)
                      not_divisible=("n_cols", "n_table", "n_ends", "stride_table"))
    usage = sass_facts(binary.asm["cubin"])
    return {"name": _infill_name(block), "infill_cubin_bytes": len(binary.asm["cubin"]),
            "registers": usage.get("registers"), "local_bytes": usage.get("local_bytes"),
            "approx_exp": "ex2.approx" in binary.asm["ptx"]}  # (False: the softmax is float64's exp)


def _infill_name(block: int) -> str:
    return f"infill-keep-k{block}"


def _append_name(new: str, cache: str, Hkv: int, D: int, T: int, sequence_major_v: bool) -> str:
    return f"append-{new}-{cache}-h{Hkv}-d{D}-t{T}" + ("-vseq" if sequence_major_v else "")


def _run_job(job: tuple) -> dict:
    """One configuration's facts, or its error (every configuration is reported, then the run fails)."""
    name, kind, what, arch, with_opcodes = job
    target = GPUTarget("cuda", arch, 32)
    try:
        if kind == "main":
            return compile_config(what, target, with_opcodes)
        if kind == "infill":
            return compile_infill(what, target)
        if kind == "exact_merge":
            return compile_exact_merge(*what, target)
        if kind == "prefill":
            return compile_prefill(*what, target, with_opcodes)
        if kind == "fused":
            from kernels.fused_gemv import compile_facts as fused_facts
            return {"name": name, **fused_facts(arch, names={what})[what]}
        if kind == "gemv":
            from kernels.gemv import compile_facts as gemv_facts
            return {"name": name, "variants": gemv_facts(arch)}
        if kind == "few_rows":
            from kernels.few_rows_int8 import compile_facts as few_rows_facts
            return {"name": name, "variants": few_rows_facts(arch)}
        if kind == "gemv_int4":
            from kernels.gemv_int4 import compile_facts as gemv_int4_facts
            return {"name": name, "variants": gemv_int4_facts(arch)}
        return compile_append(*what[:5], target, what[5])
    except Exception as error:
        return {"name": name, "error": f"{type(error).__name__}: {str(error)[-2000:]}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200 (default: 90)")
    parser.add_argument("--only", default="", help="comma-separated substrings of configuration names")
    parser.add_argument("--sass", action="store_true", help="add the key loop's SASS opcode histogram")
    parser.add_argument("--prefill-tiles", action="store_true",
                        help="also every tiling the GPU sweep of the prefill kernel tries (kernels.prefill_exact)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="configurations compiled at once, in as many processes (default 1); the output "
                             "keeps the configurations' order")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1")
    wanted = [w for w in args.only.split(",") if w]
    jobs = [(config.name, "main", config, args.arch, args.sass) for config in MAIN_CONFIGS]
    jobs += [(_append_name(*append), "append", append, args.arch, args.sass) for append in APPEND_CONFIGS]
    jobs += [(_infill_name(block), "infill", block, args.arch, args.sass) for block in INFILL_CONFIGS]
    jobs += [(_exact_merge_name(*c), "exact_merge", c, args.arch, args.sass) for c in EXACT_MERGE_CONFIGS]
    prefill = PREFILL_CONFIGS + [c for c in PREFILL_SWEEP_CONFIGS if args.prefill_tiles and c not in PREFILL_CONFIGS]
    jobs += [(_prefill_name(*c), "prefill", c, args.arch, args.sass) for c in prefill]
    # the decode step's dense kernels (kernels/fused_gemv.py, kernels/gemv.py), bf16 and int8 weights
    jobs += [(f"fused-gemv {name}", "fused", name, args.arch, args.sass) for name in build_names()]
    jobs += [("gemv bf16 and int8 weights, unsplit and split-K", "gemv", None, args.arch, args.sass)]
    jobs += [("few_rows_int8 unsplit and split-K", "few_rows", None, args.arch, args.sass)]   # 2..16 rows, int8 W
    jobs += [("gemv_int4 one row and several, unsplit and split-K", "gemv_int4", None, args.arch, args.sass)]  # int4 W
    if wanted:
        jobs = [job for job in jobs if any(w in job[0] for w in wanted)]
        if not jobs:        # a typo checked nothing and passed (exit 0)
            parser.error(f"--only {args.only}: no configuration's name holds it")
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:   # compiling is CPU-bound Python and ptxas: processes, started fresh (no forked Triton state)
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                min(args.jobs, len(jobs)), mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(_run_job, jobs)
        else:
            results = map(_run_job, jobs)
        failures = 0
        for facts in results:
            failures += "error" in facts
            print(json.dumps(facts), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
