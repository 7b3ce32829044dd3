"""The kernels compile for the H100/H200 (sm_90) on this GPU-less machine, as `flash_decode` and
`append_kv` launch them: the main configurations, multi-token and fp8 variants, every plan option.

Runs `python -m kernels.compile_check` in a subprocess: the test session has TRITON_INTERPRET=1,
under which Triton hands out interpreted functions that cannot be compiled.
"""

import json
import os
import subprocess
import sys

import pytest

from kernels import interface
from kernels.compile_check import APPEND_CONFIGS, MAIN_CONFIGS, opcode_count


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = min(4, os.cpu_count() or 1)       # the session waits meanwhile: every core compiles (~90 s on one)
    run = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--arch", "90", "--sass", "--jobs", str(jobs)],
                         capture_output=True, text=True, env=env, timeout=600)
    facts = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert facts, f"compile_check printed nothing; stderr:\n{run.stderr[-3000:]}"
    return {f["name"]: f for f in facts}


@pytest.mark.parametrize("config", MAIN_CONFIGS, ids=lambda c: c.name)
def test_kernels_compile_for_sm90(compiled, config):
    facts = compiled[config.name]
    assert "error" not in facts, facts.get("error")
    assert facts["split_cubin_bytes"] > 0
    if facts["num_splits"] > 1:
        assert facts["combine_cubin_bytes"] > 0
    if facts["kernel"] == "_split_kv_row_kernel":  # the CUDA-core kernel has no dots at all
        assert not facts["tensor_cores"]
    elif config.dtype != "fp32" or config.kv == "fp8":  # 16-bit (and fp8) dots must run on the tensor cores
        assert facts["tensor_cores"]
    assert facts["tma"] == bool(config.plan.get("tma"))  # descriptors lower to TMA copies, nothing else does
    assert facts["split_shared_bytes"] <= 227 * 1024  # Hopper's shared memory per block
    assert facts["pdl_wait"] == config.plan.get("pdl", True)  # a dependent launch waits for the kernel before
    # and asks for its split's first K and V bytes before that wait (one bulk prefetch each)
    assert facts["prefetches_before_wait"] == (2 if facts["pdl_wait"] and interface.KV_PREFETCH else 0)


def test_whole_tiles_load_without_masks(compiled):
    """The key loop over whole tiles has no per-element predicates (selects) on its loads."""
    assert "SEL" not in compiled["34B-16k"]["loop_opcodes"]


def test_fp8_tiles_become_fp16_before_the_dots_layout_change(compiled):
    """Converted early, V is not gathered from shared memory byte by byte (LDS.U8) as in Triton's
    own placement of the conversion, the key loop is at least a quarter shorter, and the kernel
    leaves room for three programs per SM (bench/results/NOTES.md has the counts)."""
    early, late = compiled["7B-64k-fp8-early"], compiled["7B-64k-fp8"]
    assert "LDS.U8" not in early["loop_opcodes"] and late["loop_opcodes"].get("LDS.U8", 0) >= 32
    assert early["loop_instructions"][0] <= 0.75 * late["loop_instructions"][0]
    assert early["resident_programs"] >= 3 and early["local_bytes"] == 0


def test_row_kernel_converts_fp8_where_it_loaded_it(compiled):
    """The row kernel's fp8 key loop: every byte converted once (two values a `cvt`), no byte
    gathers from shared memory and no tensor-core instruction; it fits three programs per SM."""
    row = compiled["7B-64k-fp8-row"]
    ops = row["loop_opcodes"]
    assert "LDS.U8" not in ops and not any(op.startswith("HMMA") for op in ops)
    assert ops["F2FP.F16.E4M3.UNPACK_B"] == 64 * 128 * 2 // 128 // 2  # (64 keys x 128) x K, V / 128 threads / 2
    assert row["resident_programs"] >= 3 and row["local_bytes"] == 0


def test_int8_prmt_conversion_has_no_i2f(compiled):
    """Both split kernels convert int8 by PRMT and an exact add (the default `int8_prmt`): no quarter-rate I2F
    left in the key loop, where Triton's own conversion (the option off) spends one a value."""
    prmt, i2f = compiled["7B-64k-int8"]["loop_opcodes"], compiled["7B-64k-int8-i2f"]["loop_opcodes"]
    assert sum(n for op, n in i2f.items() if op.startswith("I2F")) >= 128
    assert not any(op.startswith("I2F") for op in prmt) and prmt["PRMT"] == 128
    dots = compiled["34B-128k-int8"]["loop_opcodes"]     # the dot kernel (GQA): PRMT + HSUB2 into fp16
    assert not any(op.startswith("I2F") for op in dots) and dots["PRMT"] >= 64


def test_int8_dots_score_bytes_as_they_are(compiled):
    """`int8_dot`: the scores are IMMA dots of q's two int8 digits and the int8 keys, so only V is converted
    (PRMT + HSUB2 into fp16 for the PV dot, half the conversions) and the key loop is shorter than with the
    keys converted too, in the same tiling; with several query tokens (warpgroup MMAs) and TMA loads too."""
    converted, dots = compiled["34B-128k-int8"], compiled["34B-128k-int8-dot"]
    def count(facts, prefix):
        return sum(n for op, n in facts["loop_opcodes"].items() if op.startswith(prefix))
    assert count(dots, "IMMA") > 0 and count(converted, "IMMA") == 0
    assert count(dots, "HMMA") == count(converted, "HMMA") // 2   # PV alone on fp16 tensor cores
    assert count(dots, "HADD2") <= count(converted, "HADD2") // 2  # V converted, K not
    assert dots["loop_instructions"][0] <= 0.9 * converted["loop_instructions"][0] and dots["local_bytes"] == 0
    verify = compiled["34B-64k-T8-int8-dot-tma"]
    assert verify["tma"] and count(verify, "IGMMA") > 0   # 64 query rows: warpgroup int8 MMAs


def test_sequence_major_v_reaches_the_pv_dot_without_byte_gathers(compiled):
    """An 8-bit V stored sequence-major (models' GQA caches): the bytes of one PV operand register lie side by side,
    so the tile reaches the dot through LDSM instead of LDS.U8 gathers, and the key loop is over an eighth shorter
    in the same tiling (e4m3 624 -> 494 instructions, int8 dots 623 -> 527; bench/results/NOTES.md, Run 18)."""
    for seq, rows in (("34B-128k-fp8-vseq", "34B-128k-fp8"), ("34B-128k-int8-dot-vseq", "34B-128k-int8-dot")):
        s, r = compiled[seq], compiled[rows]
        assert "LDS.U8" not in s["loop_opcodes"] and r["loop_opcodes"].get("LDS.U8", 0) >= 64
        assert any(op.startswith("LDSM") for op in s["loop_opcodes"])
        assert s["loop_instructions"][0] <= 0.87 * r["loop_instructions"][0] and s["local_bytes"] == 0


def test_register_cap_is_applied(compiled):
    assert compiled["7B-64k-fp8-maxnreg128"]["registers"] <= 128


def test_append_kernels_compile_for_sm90(compiled):
    names = [n for n in compiled if n.startswith("append-")]
    assert len(names) == len(APPEND_CONFIGS)
    for name in names:
        facts = compiled[name]
        assert "error" not in facts, facts.get("error")
        assert facts["fp8_convert"] == ("-fp8-" in name)  # one saturating round-to-nearest cvt
        scaled = "-fp8-" in name or "-int8-" in name
        assert facts["ieee_divisions"] == scaled and not facts["float_fma"]  # PyTorch's arithmetic


def test_transposed_kernel_feeds_the_cache_to_8bit_warpgroup_dots(compiled):
    """`transposed`: the keys are the 64-row operand, so the dots are sm_90's 8-bit warpgroup MMAs (e4m3 QGMMA, int8
    IGMMA) reading K and V from shared memory as stored: no cached byte converted, no 16-bit MMA, no byte gathers, no
    spills; with 128-key tiles the key loop is shorter per key than the dot kernel's over the same sequence-major V,
    by a fifth at least for e4m3 and a tenth for int8 (681 against 988 instructions per 128 keys, 627 against 766;
    NOTES.md, Runs 20-21)."""
    def count(facts, prefix):
        return sum(n for op, n in facts["loop_opcodes"].items() if op.startswith(prefix))
    for name, mma in (("34B-128k-fp8-transposed", "QGMMA"), ("34B-128k-int8-transposed", "IGMMA"),
                      ("34B-64k-T8-fp8-transposed", "QGMMA"), ("d80-int8-T4-transposed", "IGMMA"),
                      ("34B-128k-fp8-transposed-n256", "QGMMA")):
        facts = compiled[name]
        assert facts["kernel"] == "_split_kv_transposed_kernel" and count(facts, mma) > 0, name
        assert count(facts, "HMMA") == count(facts, "IMMA") == 0 and "LDS.U8" not in facts["loop_opcodes"], name
        assert count(facts, "F2FP.F16.E4M3.UNPACK") == count(facts, "I2F.F16") == 0, name  # the cache's bytes as-is
    assert all(compiled[name]["local_bytes"] == 0 for name in (
        "34B-128k-fp8-transposed", "34B-128k-int8-transposed", "34B-128k-fp8-transposed-n256"))
    per_key = {name: compiled[name]["loop_instructions"][0] / block_n for name, block_n in (
        ("34B-128k-fp8-transposed-n128", 128), ("34B-128k-fp8-vseq", 64), ("34B-128k-fp8-transposed-n256", 256),
        ("34B-128k-int8-transposed-n128", 128), ("34B-128k-int8-dot-vseq-n128-w4", 128))}
    assert per_key["34B-128k-fp8-transposed-n128"] <= 0.8 * per_key["34B-128k-fp8-vseq"]
    # 256 keys a tile (the tuner's candidate since Run 53): one program a SM, no more instructions a key than 128
    assert per_key["34B-128k-fp8-transposed-n256"] <= per_key["34B-128k-fp8-transposed-n128"]
    assert per_key["34B-128k-int8-transposed-n128"] <= 0.9 * per_key["34B-128k-int8-dot-vseq-n128-w4"]


def test_transposed_kernel_loads_its_tiles_by_tma(compiled):
    """`tma` with the transposed kernel: K and V^T come by tensor-memory copies (V's descriptor over its (B, Hkv, D,
    S) storage) into the shared memory the 8-bit warpgroup dots read; no cp.async of the cache is left in the key
    loop (the scales still come that way), nothing spills. The heuristic's sm_90 plans ask for it."""
    for name, mma in (("34B-128k-fp8-transposed-n128-tma", "QGMMA"), ("34B-128k-int8-transposed-n128-tma", "IGMMA"),
                      ("smollm2-32k-fp8-heuristic-sm90", "QGMMA")):
        facts = compiled[name]
        assert facts["kernel"] == "_split_kv_transposed_kernel" and facts["tma"], name
        ops = facts["loop_opcodes"]
        assert any(op.startswith(mma) for op in ops) and any(op.startswith("UTMALDG") for op in ops), name
        assert "LDGSTS.E.BYPASS.128" not in ops and facts["local_bytes"] == 0, name


def test_the_decode_steps_exact_tokens_leave_the_transposed_key_loop_as_it_is(compiled):
    """As the decode step runs it over an fp8 cache, the transposed kernel leaves out the exact sink's and window's
    keys (models/kv_cache.py's, which compile_check mirrors) by its split bounds alone: the key loop keeps the
    instructions, dots and loads of the loop without exact tokens (NOTES.md: masking the sink in every tile cost
    that loop 7% in Run 41; in Run 60 a first tile read whole in a branch of its own lost 2% end to end)."""
    from kernels.compile_check import DECODE_SINK, DECODE_WINDOW
    from models.kv_cache import EXACT_SINK, EXACT_WINDOW
    assert (DECODE_SINK, DECODE_WINDOW) == (EXACT_SINK, EXACT_WINDOW)
    exact, plain = compiled["34B-128k-fp8-transposed-n128-tma-exact"], compiled["34B-128k-fp8-transposed-n128-tma"]
    assert exact["kernel"] == "_split_kv_transposed_kernel" and exact["local_bytes"] == 0
    assert abs(exact["loop_instructions"][0] - plain["loop_instructions"][0]) <= 8, (exact, plain)
    for op in ("QGMMA", "UTMALDG", "LDL", "STL"):
        assert opcode_count(exact["loop_opcodes"], op) == opcode_count(plain["loop_opcodes"], op), op


def test_an_only_that_matches_no_configuration_is_an_error(capsys):
    """`--only spilt` (a typo) compiled nothing, printed nothing and exited 0: a check that passed without checking."""
    from kernels import compile_check
    with pytest.raises(SystemExit) as exit:
        compile_check.main(["--only", "no-such-configuration"])
    assert exit.value.code == 2 and "--only no-such-configuration: no configuration's name holds it" in (
        capsys.readouterr().err)


def test_jobs_below_one_is_an_error(capsys):
    """--jobs 0 would start no process and compile nothing: said in one line, status 2, before any compile."""
    from kernels import compile_check
    with pytest.raises(SystemExit) as exit:
        compile_check.main(["--jobs", "0"])
    assert exit.value.code == 2 and "--jobs 0: at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("block", __import__("kernels.compile_check", fromlist=["INFILL_CONFIGS"]).INFILL_CONFIGS)
def test_the_infill_kernel_compiles_for_sm90_without_spills(compiled, block):
    facts = compiled[f"infill-keep-k{block}"]
    assert "error" not in facts, facts["error"]
    assert facts["local_bytes"] == 0 and not facts["approx_exp"]


@pytest.mark.parametrize("config", __import__("kernels.compile_check", fromlist=["x"]).EXACT_MERGE_CONFIGS)
def test_the_exact_window_merge_and_combine_compile_for_sm90_without_spills(compiled, config):
    from kernels.compile_check import _exact_merge_name
    facts = compiled[_exact_merge_name(*config)]
    assert "error" not in facts, facts["error"]
    assert facts["cubin_bytes"] > 0 and facts["local_bytes"] == 0
    if config[-1]:      # 8-bit keys too: the split call's combine that merges the exact partial
        assert facts["combine_cubin_bytes"] > 0 and facts["combine_local_bytes"] == 0 and facts["combine_pdl_wait"]


def test_the_dense_kernels_compile_for_sm90_with_bf16_int8_and_int4_weights(compiled):
    """The decode step's GEMVs (kernels/fused_gemv.py's every build, kernels/gemv.py's four) and the few-row int8
    kernel's five are part of the check: `--only "int8 weights"` builds the int8-weight GEMVs, which convert their
    weights by PRMT, with no I2F beyond the one the bf16 build has (K's, in the RMSNorm's mean). The int4-weight
    builds run the one-row int4 GEMV's step (denormal nibbles): no barrier and no spill in their key loop, no I2F
    beyond that one, and wo's, w2's and wqkv's first step of W loaded before the PDL wait."""
    from kernels.fused_gemv import build_names
    int4 = [name for name in build_names() if " int4 weights" in name]
    assert sum(name.endswith(" int4 weights") for name in int4) == 6, int4   # every kind, qkv_rope writing fp8
    assert len(int4) > 6, int4                                               # and INT4_CONFIGS' shape entries
    for name in build_names():
        facts = compiled[f"fused-gemv {name}"]
        assert "error" not in facts and facts["cubin_bytes"] > 0, facts
        if name.endswith(" int8 weights"):
            assert facts["prmt"] > 0 and facts["i2f"] == compiled[f"fused-gemv {name[:-len(' int8 weights')]}"]["i2f"]
        if name in int4:
            assert facts["loop_barriers"] == 0 and facts["local_bytes"] == 0, (name, facts)
            assert facts["i2f"] == compiled[f"fused-gemv {name[:name.index(' int4 weights')]}"]["i2f"], (name, facts)
            assert (facts["loads_before_wait"] > 0) == (not name.startswith(("logits", "w13"))), (name, facts)
    variants = compiled["gemv bf16 and int8 weights, unsplit and split-K"]
    assert "error" not in variants and [v["int8_weights"] for v in variants["variants"]] == [False, False, True, True]
    few_rows = compiled["few_rows_int8 unsplit and split-K"]       # (2..16 rows: tests/kernels/test_few_rows_int8.py)
    assert "error" not in few_rows and any(v["split_k"] > 1 for v in few_rows["variants"]), few_rows


def test_both_gemv_variants_compile_for_sm90(compiled):
    """Both kernels build for the H100/H200 (kernels.gemv.compile_facts, as compile_check reports it): the weight
    loads vectorised (16-byte loads), and the split one takes an acq_rel ticket, reads the partials from
    L2 (every split's) and resets its counter."""
    facts = compiled["gemv bf16 and int8 weights, unsplit and split-K"]
    assert "error" not in facts, facts["error"]
    unsplit, split, unsplit_int8, split_int8 = facts["variants"]
    assert unsplit["cubin_bytes"] > 0 and unsplit["vector_loads"] >= 4 and not unsplit["ticket"]
    assert split["cubin_bytes"] > 0 and split["vector_loads"] >= 4
    assert split["ticket"] and split["reset"] and split["partials_from_l2"] == 3
    # int8 weights: 8-byte loads (as many bytes a thread as of x: no exchange of x's tile through shared memory, so
    # no barrier in the loop, as with bf16 weights), converted by PRMT and an exact add, no I2F
    for facts, ticket in ((unsplit_int8, False), (split_int8, True)):
        assert facts["int8_weights"] and facts["cubin_bytes"] > 0 and facts["loads_8_bytes"] >= 2, facts
        assert facts["i2f"] == 0 and facts["prmt"] > 0 and facts["ticket"] == ticket, facts
        assert facts["loop_barriers"] == 0 == unsplit["loop_barriers"], facts
    assert split_int8["partials_from_l2"] == 3


def test_the_few_row_int8_kernel_compiles_for_sm90_without_i2f(compiled):
    """Built for the H100/H200 (kernels.few_rows_int8.compile_facts, as compile_check reports it): the main loop
    streams W by async copies into tensor-core dots (fp32 FMAs for float32 activations), converting the int8 tiles
    without one I2F, for bf16, fp16 and float32 activations, with no spills. Triton's own fp16 conversion (the arm
    PRMT replaces) does spend I2Fs, so the count can tell them apart. Split-K builds (7B's wo) take a ticket, read the
    partials from L2 and reset the counter; the unsplit build (the output layer) has none of that."""
    facts = compiled["few_rows_int8 unsplit and split-K"]
    assert "error" not in facts, facts["error"]
    *prmt_arms, i2f_arm = facts["variants"]
    for facts in prmt_arms:
        assert facts["cubin_bytes"] > 0 and facts["local_bytes"] == 0 and facts["async_copies"] > 0, facts
        assert facts["i2f"] == 0 and facts["prmt"] > 0, facts
        assert (facts["fma_dots"] if facts["dtype"] == "fp32" else facts["tensor_core_dots"]) > 0, facts
    assert not i2f_arm["prmt_arm"] and i2f_arm["i2f"] > 0, i2f_arm
    assert [facts["split_k"] > 1 for facts in prmt_arms] == [False, True, True, True], prmt_arms
    for facts in prmt_arms + [i2f_arm]:
        split = facts["split_k"] > 1
        assert facts["ticket"] == facts["reset"] == split and (facts["partials_from_l2"] > 0) == split, facts


def test_the_int4_gemv_compiles_for_sm90(compiled):
    """kernels/gemv_int4.py's builds as launched at CodeLlama's shapes (kernels.gemv_int4.compile_facts): no spills.
    The one-row kernel's key loop loads W and x 16 bytes at a time with no barrier and no shuffle (x's tile and the
    scales load in the words' layout, not through shared memory) and converts nibbles without I2F, in under 7
    instructions a byte of W (bf16 x: 6.8 at BLOCK_N 8 in Triton 3.9, 6.9 in the GPU image's 3.6), where Triton's
    conversion (denormal off) spends 256 I2Fs a step; no flush-to-zero (the denormal nibbles need their denormals).
    The several-row kernel converts nibbles without I2F for every x dtype, and for 16-bit x dequantizes a wide tile
    into one tensor-core dot a step in under 9 instructions a byte of W (8.95 at its plan's 64 x 256 and G = 32 in
    Triton 3.9, where one group a step with two 16-deep dots counted 20.8); split-K builds take a ticket and reset it."""
    facts = compiled["gemv_int4 one row and several, unsplit and split-K"]
    assert "error" not in facts, facts["error"]
    for v in facts["variants"]:
        assert v["cubin_bytes"] > 0 and v["local_bytes"] == 0 and not v["ftz"], v
        assert v["ticket"] == v["reset"] == (v["split_k"] > 1), v
        if v["kernel"] == "row":
            assert v["loop_barriers"] == 0 and v["shuffles"] == 0 and v["loads_16_bytes"] >= 8, v
            if v["denormal"]:
                assert v["i2f"] == 0 and v["instructions_per_byte"] < 7, v
            else:
                assert v["i2f"] >= 256, v
        else:
            assert v["i2f"] == 0, v
            if v["dtype"] != "fp32":
                assert v["tensor_core_dots"] > 0 and v["instructions_per_byte"] < 9, v
    assert {(v["kernel"], v["split_k"] > 1) for v in facts["variants"]} == {
        ("row", False), ("row", True), ("rows", False), ("rows", True)}


@pytest.mark.parametrize("config", __import__("kernels.compile_check", fromlist=["x"]).PREFILL_CONFIGS,
                         ids=lambda c: "-".join(map(str, c)))
def test_the_prefill_kernel_compiles_for_sm90(compiled, config):
    """kernels/prefill_exact.py as it launches on the GPU: fits Hopper's shared memory (the mixed tiles' six loads
    are not staged: 3 stages of them took 288 KB), 16-bit dots on the tensor cores."""
    from kernels.compile_check import _prefill_name
    facts = compiled[_prefill_name(*config)]
    assert "error" not in facts, facts["error"]
    assert facts["cubin_bytes"] > 0 and facts["shared_bytes"] <= 227 * 1024
    assert facts["tensor_cores"]


def test_every_epilogue_compiles_for_sm90(compiled):
    """Each fused kernel builds for the H100/H200 in every configuration the step launches it with (each kind's
    default and each per-shape entry, and qkv_rope quantizing into an fp8 or int8 cache), with 16-byte loads of bf16
    weights (8-byte ones of int8 weights) and the programmatic-dependent-launch wait before it reads x. The facts are
    kernels.fused_gemv.compile_facts's, build by build, as the module's compile_check reports them (this test built
    them all a second time in a subprocess of its own in tests/kernels/test_fused_gemv.py)."""
    from kernels.fused_gemv import build_names
    facts = {name: compiled[f"fused-gemv {name}"] for name in build_names()}
    for name, f in facts.items():
        assert "error" not in f, (name, f["error"])          # (compile_check reports a build's error as a fact)
    kinds = {"wo+residual", "w2+residual", "logits", "w13 swiglu", "wqkv rope cache"}
    assert kinds | {"wqkv rope fp8 cache", "wqkv rope int8 cache"} | {f"{k} int8 weights" for k in kinds} <= set(facts)
    assert any(" int8 weights dp4a" in name for name in facts)        # INT8_CONFIGS' DP4A entries, as launched
    for name, f in facts.items():
        assert f["cubin_bytes"] > 0 and f["pdl_wait"], (name, f)
        if " int8 weights dp4a" in name:
            # words of four weights times x's words by DP4A (kernels/dp4a.py), in 16-byte loads
            assert f["dp4a"] > 0 and f["vector_loads"] >= 2, (name, f)
        elif " int8 weights" in name:
            bf16 = facts[name.partition(" int8 weights")[0]]
            # int8 weights become fp32 by PRMT, not by I2F (the one I2F left is K's, in the RMSNorm's mean, as in bf16)
            assert f["prmt"] > 0 and f["i2f"] == bf16["i2f"] <= 1 and f["dp4a"] == 0, (name, f)
            # W in 8-byte loads, as many bytes a thread as of bf16 x: x's tile is then used where it was loaded, no
            # more barriers a loop step than with bf16 weights (16-byte loads of W took 2-6 more: NARROW_INT8_LOADS)
            assert f["loads_8_bytes"] >= 1 and f["loop_barriers"] <= bf16["loop_barriers"], (name, f, bf16)
        else:
            assert f["vector_loads"] >= 2, (name, f)
        assert f["tickets"] == ("8 cache" in name), (name, f)     # only the 8-bit caches' qkv_rope takes tickets
        # wo, w2 and wqkv load their first tile of W before waiting on the kernel before (EARLY_TILE); the
        # others wait first
        early = name.startswith(("wo", "w2", "wqkv"))
        assert (f["loads_before_wait"] > 0) == early, (name, f)
