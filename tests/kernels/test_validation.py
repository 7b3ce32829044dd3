"""Bad input to flash_decode (and the reference) is a ValueError naming the problem."""

import os
import re
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import flash_decode, reference
from kernels.append import append_kv_triton


FP8 = dict(k_cache=torch.randn(2, 2, 32, 64).to(torch.float8_e4m3fn),
           v_cache=torch.randn(2, 2, 32, 64).to(torch.float8_e4m3fn))


def good():
    return dict(q=torch.randn(2, 8, 64), k_cache=torch.randn(2, 2, 32, 64), v_cache=torch.randn(2, 2, 32, 64))


def call(fn, q, k_cache, v_cache, **kwargs):
    return fn(q, k_cache, v_cache, **kwargs)


BAD = [
    ("q must have 3 or 4 dimensions", dict(q=torch.randn(2, 8, 1, 1, 64))),
    ("129 query tokens per sequence; supported: 1..128", dict(q=torch.randn(2, 8, 129, 64), k_cache=torch.randn(2, 2, 256, 64),
                                                             v_cache=torch.randn(2, 2, 256, 64))),
    ("5 query tokens but the cache holds only 4", dict(q=torch.randn(2, 8, 5, 64), k_cache=torch.randn(2, 2, 4, 64),
                                                      v_cache=torch.randn(2, 2, 4, 64))),
    ("must be at least 3 (the query tokens", dict(q=torch.randn(2, 8, 3, 64),
                                                  cache_seqlens=torch.tensor([3, 2], dtype=torch.int32))),
    ("k_scale is only for 8-bit (float8_e4m3fn, int8) caches", dict(k_scale=torch.ones(2, 2, 32))),
    ("needs k_scale and v_scale; v_scale is None", dict(**FP8, k_scale=torch.ones(2, 2, 32))),
    ("k_scale must be a float32 tensor", dict(**FP8, k_scale=torch.ones(2, 2, 32, dtype=torch.float16),
                                              v_scale=torch.ones(2, 2, 32))),
    ("v_scale must have shape (B, Hkv, S) = (2, 2, 32)", dict(**FP8, k_scale=torch.ones(2, 2, 32),
                                                               v_scale=torch.ones(2, 32, 2))),
    ("k_cache and v_cache must share a dtype", dict(k_cache=FP8["k_cache"], k_scale=torch.ones(2, 2, 32))),
    ("differ in shape", dict(v_cache=torch.randn(2, 2, 31, 64))),
    ("does not match the cache", dict(q=torch.randn(3, 8, 64))),
    ("multiple of key/value heads", dict(q=torch.randn(2, 9, 64))),
    ("head dim 8 not supported", dict(q=torch.randn(2, 8, 8), k_cache=torch.randn(2, 2, 32, 8),
                                      v_cache=torch.randn(2, 2, 32, 8))),
    ("head dim 320 not supported", dict(q=torch.randn(2, 8, 320), k_cache=torch.randn(2, 2, 4, 320),
                                        v_cache=torch.randn(2, 2, 4, 320))),
    ("must share a dtype", dict(q=torch.randn(2, 8, 64, dtype=torch.float16))),
    ("has dtype torch.int64", dict(q=torch.ones(2, 8, 64, dtype=torch.int64))),
    ("k_cache must have a contiguous last dimension", dict(k_cache=torch.randn(2, 2, 64, 32).transpose(2, 3))),
    ("v_cache must have a contiguous last dimension or, sequence-major, a contiguous position dimension",
     dict(v_cache=torch.randn(2, 2, 64, 128)[:, :, ::2, ::2])),
    ("cache_seqlens must be an int32", dict(cache_seqlens=torch.tensor([3, 4]))),
    ("cache_seqlens must have shape (2,)", dict(cache_seqlens=torch.tensor([3], dtype=torch.int32))),
    ("must lie in 0..32", dict(cache_seqlens=torch.tensor([3, 33], dtype=torch.int32))),
    ("must lie in 0..32", dict(cache_seqlens=torch.tensor([-1, 3], dtype=torch.int32))),
    ("num_splits must be an int in 1..128", dict(num_splits=0)),
    ("num_splits must be an int in 1..128", dict(num_splits=True)),
    ("num_splits must be an int in 1..128", dict(num_splits=10 ** 5)),       # it ran 138 s, then failed
    ("is empty: no sequence or no head", dict(q=torch.randn(0, 8, 64), k_cache=torch.randn(0, 2, 32, 64),
                                              v_cache=torch.randn(0, 2, 32, 64))),
    # Read as if contiguous, [5, 1000, 40, 7][::2] gave row 1 a length of 1000 over 32 positions (NaN; out of bounds)
    ("cache_seqlens must be contiguous", dict(cache_seqlens=torch.tensor([5, 1000, 20, 7], dtype=torch.int32)[::2])),
]


@pytest.mark.parametrize("fn", [flash_decode, reference.flash_decode], ids=["triton", "reference"])
@pytest.mark.parametrize("message, change", BAD, ids=[m for m, _ in BAD])
def test_bad_input_is_a_clear_value_error(fn, message, change):
    args = good() | change
    with pytest.raises(ValueError, match=re.escape(message)):
        call(fn, **args)


def test_float64_is_reference_only():
    args = {name: t.double() for name, t in good().items()}
    with pytest.raises(ValueError, match="supported: float16, bfloat16, float32"):
        flash_decode(**args)
    assert reference.flash_decode(**args).dtype == torch.float64


SHARED_CACHE = torch.randn(2, 2, 32, 64)
SHARED_SCALE = torch.ones(2, 2, 32)
SHARED_BUFFER = torch.randn(3 * 4096)


def append_args():
    return dict(k_new=torch.randn(2, 2, 3, 64), v_new=torch.randn(2, 2, 3, 64), k_cache=torch.randn(2, 2, 32, 64),
                v_cache=torch.randn(2, 2, 32, 64), input_pos=torch.tensor([0, 29]))


BAD_APPEND = [
    ("and v_new (2, 2, 4, 64) differ in shape", dict(v_new=torch.randn(2, 2, 4, 64))),
    ("does not match the cache", dict(k_new=torch.randn(2, 3, 3, 64), v_new=torch.randn(2, 3, 3, 64))),
    ("must have the new values' dtype", dict(k_new=torch.randn(2, 2, 3, 64, dtype=torch.float16),
                                             v_new=torch.randn(2, 2, 3, 64, dtype=torch.float16))),
    ("input_pos must be an int64 tensor", dict(input_pos=torch.tensor([0, 1], dtype=torch.int32))),
    ("input_pos must have shape (2,)", dict(input_pos=torch.tensor([0]))),
    ("input_pos must lie in 0..29", dict(input_pos=torch.tensor([0, 30]))),
    ("input_pos must lie in 0..29", dict(input_pos=torch.tensor([-1, 3]))),
    ("needs k_scale and v_scale", dict(**FP8)),
    ("v_scale is only for 8-bit (float8_e4m3fn, int8) caches", dict(v_scale=torch.ones(2, 2, 32))),
    ("k_cache must have a contiguous last dimension", dict(k_cache=torch.randn(2, 2, 64, 32).transpose(2, 3))),
    ("v_cache must have a contiguous last dimension or, sequence-major, a contiguous position dimension",
     dict(v_cache=torch.randn(2, 2, 64, 128)[:, :, ::2, ::2])),
    ("input_pos must be contiguous", dict(input_pos=torch.tensor([3, 50, 10, 60])[::2])),   # row 1 went to 50
    ("k_new and v_new must have a contiguous last dimension", dict(k_new=torch.randn(2, 2, 3, 128)[..., ::2])),
    ("k_cache has stride 0 along its batch dimension", dict(k_cache=torch.randn(1, 2, 32, 64).expand(2, -1, -1, -1))),
    # Writes through aliased memory were silent: head 1's keys overwrote head 0's, V's overwrote K's
    ("v_cache has stride 0 along its KV head dimension", dict(v_cache=torch.randn(2, 1, 32, 64).expand(-1, 2, -1, -1))),
    ("k_cache has stride 0 along its position dimension", dict(k_cache=torch.randn(2, 2, 1, 64).expand(-1, -1, 32, -1))),
    ("k_scale has stride 0 along its batch dimension", dict(**FP8, k_scale=torch.ones(1, 2, 32).expand(2, -1, -1),
                                                            v_scale=torch.ones(2, 2, 32))),
    ("k_cache and v_cache share memory", dict(k_cache=SHARED_CACHE, v_cache=SHARED_CACHE)),
    ("k_cache and v_cache share memory", dict(k_cache=SHARED_BUFFER[:8192].view(2, 2, 32, 64),    # half of V's
                                              v_cache=SHARED_BUFFER[4096:].view(2, 2, 32, 64))),
    ("k_scale and v_scale share memory", dict(**FP8, k_scale=SHARED_SCALE, v_scale=SHARED_SCALE)),
    ("is empty: no sequence to append to", dict(k_new=torch.randn(0, 2, 3, 64), v_new=torch.randn(0, 2, 3, 64),
                                                k_cache=torch.randn(0, 2, 32, 64), v_cache=torch.randn(0, 2, 32, 64),
                                                input_pos=torch.zeros(0, dtype=torch.int64))),
    # the Triton path divided by zero planning its grid; the reference failed in amax (8-bit) or did nothing
    ("has 0 KV heads of 64 values", dict(k_new=torch.randn(2, 0, 3, 64), v_new=torch.randn(2, 0, 3, 64),
                                         k_cache=torch.randn(2, 0, 32, 64), v_cache=torch.randn(2, 0, 32, 64))),
    ("has 2 KV heads of 0 values", dict(k_new=torch.randn(2, 2, 3, 0), v_new=torch.randn(2, 2, 3, 0),
                                        k_cache=torch.zeros(2, 2, 32, 0, dtype=torch.int8),
                                        v_cache=torch.zeros(2, 2, 32, 0, dtype=torch.int8),
                                        k_scale=torch.ones(2, 2, 32), v_scale=torch.ones(2, 2, 32))),
]


DECODERS = [flash_decode, reference.flash_decode, reference.eager_decode, reference.split_kv_decode]


# The reference returned NaN for a NaN scale; the kernels ran "0.5" and read a tensor's value (a sync); a scale
# whose product with log2(e) overflows float32 made the kernels' output NaN.
@pytest.mark.parametrize("fn", DECODERS, ids=["triton", "reference", "eager", "split_kv"])
@pytest.mark.parametrize("scale, message", [(float("nan"), "a finite number"), (float("inf"), "a finite number"),
                                            (-float("inf"), "a finite number"), (3e38, "a finite number"),
                                            # float() of it overflows (an OverflowError, not a ValueError)
                                            pytest.param(10**400, "a finite number", id="10**400"),
                                            ("0.5", "a number (a float), got str"),
                                            (torch.tensor(0.5), "a number (a float), got Tensor"),
                                            (True, "a number (a float), got bool")])
def test_a_softmax_scale_that_is_not_a_finite_number_is_refused(fn, scale, message):
    with pytest.raises(ValueError, match=re.escape(f"softmax_scale must be {message}")):
        fn(**good(), softmax_scale=scale)


@pytest.mark.parametrize("fn", DECODERS, ids=["triton", "reference", "eager", "split_kv"])
def test_any_finite_softmax_scale_is_taken(fn):
    import numpy as np
    args = good()
    expected = reference.flash_decode(**args, softmax_scale=0.25)
    for scale in (0.25, np.float32(0.25)):
        torch.testing.assert_close(fn(**args, softmax_scale=scale), expected, rtol=1e-5, atol=1e-5)
    uniform = args["v_cache"].mean(2).repeat_interleave(4, dim=1)        # scale 0: every key weighs the same
    torch.testing.assert_close(fn(**args, softmax_scale=0), uniform, rtol=1e-5, atol=1e-5)


# kernels.append_kv is the reference on the CPU; append_kv_triton, its CUDA path, runs here in the interpreter
@pytest.mark.parametrize("fn", [kernels.append_kv, reference.append_kv, append_kv_triton],
                         ids=["kernels", "reference", "triton"])
@pytest.mark.parametrize("message, change", BAD_APPEND, ids=[m for m, _ in BAD_APPEND])
def test_bad_append_is_a_clear_value_error(fn, message, change):
    args = append_args() | change
    with pytest.raises(ValueError, match=re.escape(message)):
        fn(**args)


def interleaved_caches(B, Hkv, S, D):
    """K and V as the two halves of one (B, S, 2, Hkv, D) buffer, seen as (B, Hkv, S, D): views that interleave
    in memory without sharing an element."""
    buffer = torch.zeros(B, S, 2, Hkv, D)
    return buffer, buffer[:, :, 0].transpose(1, 2), buffer[:, :, 1].transpose(1, 2)


@pytest.mark.parametrize("fn", [reference.append_kv, append_kv_triton], ids=["reference", "triton"])
def test_views_that_interleave_without_sharing_memory_are_appended_to(fn):
    """The aliasing checks refuse only memory certainly shared: K and V interleaved in one buffer, and new
    values staged in that buffer past the cache, append as separate tensors would."""
    B, Hkv, S, T, D = 2, 2, 16, 3, 32
    buffer, k_cache, v_cache = interleaved_caches(B, Hkv, S + T, D)
    buffer[:, S:] = torch.randn(B, T, 2, Hkv, D)                   # the new rows, staged past the cache
    k_new, v_new = k_cache[:, :, S:].clone(), v_cache[:, :, S:].clone()
    pos = torch.tensor([0, S - T])
    fn(k_cache[:, :, S:], v_cache[:, :, S:], k_cache[:, :, :S], v_cache[:, :, :S], pos)
    for b in range(B):
        torch.testing.assert_close(k_cache[b, :, pos[b]:pos[b] + T], k_new[b], rtol=0, atol=0)
        torch.testing.assert_close(v_cache[b, :, pos[b]:pos[b] + T], v_new[b], rtol=0, atol=0)


def test_tensors_the_kernels_cannot_take_are_a_clear_value_error():
    """Meta tensors failed inside the launch ("Cannot copy out of meta tensor"); the reference takes them."""
    meta = {name: t.to("meta") for name, t in good().items()}
    with pytest.raises(ValueError, match="flash_decode runs Triton kernels on CUDA tensors, got tensors on meta"):
        flash_decode(**meta)
    assert reference.flash_decode(**meta).shape == (2, 8, 64)


def test_cpu_tensors_without_the_interpreter_are_a_clear_value_error():
    """Without TRITON_INTERPRET the kernels are compiled: CPU tensors failed in Triton's driver lookup ("0 active
    drivers" here, a pointer error on a GPU machine). A fresh interpreter, as the variable is read at import."""
    code = ("import torch; from kernels import flash_decode\n"
            "try:\n    flash_decode(torch.randn(1, 2, 64), torch.randn(1, 1, 8, 64), torch.randn(1, 1, 8, 64))\n"
            "except ValueError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("flash_decode runs Triton kernels on CUDA tensors, got tensors on cpu; on the CPU "
                                 "use kernels.reference.flash_decode, or set TRITON_INTERPRET=1"), run.stdout


# kernels.plan_launch is public: a ZeroDivisionError for no KV head, no sequence or no token, and plans of 0 or a
# million splits for shapes no call can have
BAD_PLANS = [("Hkv must be a positive int, got 0", dict(Hkv=0)), ("B must be a positive int, got 0", dict(B=0)),
             ("T must be a positive int, got 0", dict(T=0)), ("S must be a positive int, got 1024.5", dict(S=1024.5)),
             ("query heads (9) must be a multiple of key/value heads (2)", dict(Hq=9)),
             ("num_splits must be an int in 1..128 or None, got 0", dict(num_splits=0)),
             ("num_splits must be an int in 1..128 or None, got 1000000", dict(num_splits=10 ** 6)),
             ("num_sms must be a positive int, got 0", dict(num_sms=0)), ("elem_bytes must be", dict(elem_bytes=0))]


@pytest.mark.parametrize("message, change", BAD_PLANS, ids=[m for m, _ in BAD_PLANS])
def test_a_plan_for_a_shape_no_call_can_have_is_a_value_error(message, change):
    args = dict(B=1, Hq=8, Hkv=2, S=1024, D=128) | change
    with pytest.raises(ValueError, match=re.escape(f"plan_launch: {message}")):
        kernels.plan_launch(**args)
