"""Cache reuse (llama.cpp's --cache-reuse, models/cache_reuse.py) on a GPU: correct, and what it saves.

1. `KVCache.move` on the device for each cache kind (bf16; fp8 and int8, whose V is sequence-major where the model
   has GQA): the moved keys against the float64 rotation of the same pre-RoPE keys at their new positions (error in
   units of the storage's rounding), values and scales byte for byte.
2. A one-layer CodeLlama-7B-shaped model (random weights; a key depends on its token and position alone there): the
   top-8 logprobs after a moved run against a fresh prefill's, per cache kind.
3. The first token of a CodeLlama-7B-shaped prompt (32 layers, bf16, flash) that lost a chunk near its start
   (llama.vim's ring of extra chunks dropping its oldest): exact prefix reuse prefills everything after it, cache
   reuse moves it. Interleaved rounds, median time to the first token, prompt tokens prefilled.

    PYTHONPATH=. python bench/gpu/cache_reuse_check.py [--tokenizer .gpu/tokenizer] [--out FILE.json]

Prints one table per part; exits 1 if a check of part 1 or 2 fails.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models import GenerationConfig  # noqa: E402
from models.cache_reuse import Move, rotation  # noqa: E402
from models.engine import Engine  # noqa: E402
from models.kv_cache import KVCache  # noqa: E402
from models.llama import build_random_model, rope_inv_freq  # noqa: E402
from models.config import preset  # noqa: E402


def rotated64(pre: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    x1, x2 = pre.chunk(2, dim=-1)
    return pre * angles.cos() + torch.cat((-x2, x1), dim=-1) * angles.sin()


def check_move(kind: str, device: str) -> dict:
    """One run of 1,000 keys moved back by 700 slots in a (2, 8, 4096, 128) cache (CodeLlama-34B's KV heads, GQA 8).
    The error in units of the storage's rounding at the largest key: bf16's eps, int8's scale step, e4m3's 2^-4
    (two roundings, the first turned with its rotate-half partner: at most ~1.2 units for bf16 and int8, ~2.4 for
    e4m3)."""
    from kernels.reference import dequantize
    torch.manual_seed(0)
    B, H, S, D = 2, 8, 4096, 128
    quant = kind if kind in ("fp8", "int8") else None
    dtype = torch.bfloat16
    cache = KVCache(B, H, S, D, dtype, device, quant=quant, group=8)
    config = preset("CodeLlama-34B")
    inv = rope_inv_freq(config).double()
    angles = torch.outer(torch.arange(S, dtype=torch.float64), inv)
    angles = torch.cat((angles, angles), dim=-1)                                           # (S, D)
    pre = torch.randn(B, H, S, D, dtype=torch.float64) * 2
    keys = rotated64(pre, angles).to(device)
    values = torch.randn(B, H, S, D, device=device)
    for row in range(B):
        cache.write(row, 0, keys[row:row + 1].to(dtype), values[row:row + 1].to(dtype))
    before_v = cache.v.clone()
    before_vs = None if cache.v_scale is None else cache.v_scale.clone()
    cos, sin = angles.cos().float().to(device), angles.sin().float().to(device)
    move = Move(1500, 800, 1000)
    cache.move(1, move.source, move.target, move.length, rotation(cos, sin, move))
    if device == "cuda":
        torch.cuda.synchronize()
    old, new = slice(move.source, move.source + move.length), slice(move.target, move.target + move.length)
    expected = rotated64(pre[1:, :, old], angles[new])                                      # (1, H, n, D) float64
    got = dequantize(cache.k[1:, :, new], None if quant is None else cache.k_scale[1:, :, new], torch.float64).cpu()
    if quant is None:
        unit = torch.finfo(dtype).eps * expected.abs().amax()
    elif quant == "int8":
        unit = cache.k_scale[1:, :, new].double().cpu().amax()
    else:
        unit = 2 ** -4 * expected.abs().amax()
    error = float((got - expected).abs().max())
    values_same = torch.equal(cache.v[1:, :, new].cpu(), before_v[1:, :, old].cpu())
    scales_same = before_vs is None or torch.equal(cache.v_scale[1:, :, new].cpu(), before_vs[1:, :, old].cpu())
    row0_same = torch.equal(cache.v[0].cpu(), before_v[0].cpu())
    return {"kind": kind, "v_sequence_major": cache.v.stride(-1) != 1, "max_error": error,
            "error_in_units": error / float(unit), "values_same": values_same, "scales_same": scales_same,
            "other_row_same": row0_same,
            "ok": error <= {"bf16": 1.5, "int8": 1.5, "fp8": 2.5}[kind] * float(unit) and values_same and scales_same
            and row0_same}


def sequences(vocab: int, seed: int, lengths):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    new_end = [t + 1 if t + 1 < vocab else 3 for t in parts[3][:8]]
    return (*parts, new_end)


def largest_logprob_gap(a, b) -> float:
    """The largest difference of the k-th largest logprob (k = 1..8) at the positions both answers reached by the
    same tokens (after a token that differs they are distributions over different texts)."""
    same = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), len(a.token_ids))
    pairs = list(zip(a.logprobs, b.logprobs))[:same + 1]
    return max(abs(x - y) for p, q in pairs for (_, x), (_, y) in zip(p.top, q.top))


def check_one_layer(kind: str, tokenizer, device: str, lengths, shape: str = "CodeLlama-7B") -> dict:
    """The top-8 logprobs of 4 greedy tokens after a moved run, against a fresh prefill's; the noise floor: the same
    against a run that reused only the exact prefix (another span of the prefill, the same numbers otherwise)."""
    dtype = torch.float32 if kind == "float32" else torch.bfloat16
    model = build_random_model(shape, n_layers=1, device=device, dtype=dtype, max_len=4096)
    engine = Engine(model, tokenizer, name=f"{shape} 1 layer", context_length=4096, cuda_graphs=False,
                    kv_cache=kind if kind in ("fp8", "int8") else None)
    kept, dropped, run, end, new_end = sequences(model.config.vocab_size, 1, lengths)
    probe = GenerationConfig(max_new_tokens=4, logprobs=8)
    prompt = kept + run + new_end
    engine.clear_prefix_cache()
    cold = engine.generate(prompt, probe)
    engine.generate(kept + dropped, GenerationConfig(max_new_tokens=1))
    prefix_only = engine.generate(prompt, probe)
    engine.generate(kept + dropped + run + end, GenerationConfig(max_new_tokens=1))
    moved = engine.generate(prompt, GenerationConfig(max_new_tokens=4, logprobs=8, cache_reuse=64))
    floor, gap = largest_logprob_gap(prefix_only, cold), largest_logprob_gap(moved, cold)
    same_top = all([t for t, _ in a.top] == [t for t, _ in b.top] for a, b in zip(moved.logprobs, cold.logprobs))
    result = {"shape": shape, "kind": kind, "prompt": len(prompt), "reused": moved.reused_prefix_tokens,
              "moved": moved.timings.moved_tokens, "same_tokens": moved.token_ids == cold.token_ids,
              "same_top8": same_top, "logprob_gap": gap, "noise_floor": floor}
    # float32: exact but for rounding; bf16 keys are rounded a second time when moved, 8-bit ones a step's worth
    # (e4m3 rounds to 2^-4 of each key, twice: on the CPU 0.25 nats at the prompt's tokens, bf16 0.03, int8 0.06)
    limit = max(3 * floor, {"float32": 1e-3, "bf16": 0.1, "int8": 0.25, "fp8": 0.5}[kind])
    result["ok"] = moved.timings.moved_tokens >= len(run) - engine.prefill_bucket and gap <= limit
    del engine, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def time_dropped_chunk(tokenizer, rounds: int) -> list[dict]:
    """An 8,192-token prompt whose first 512-token chunk goes (after a 16-token start): the next request as exact
    prefix reuse and as cache reuse (256, llama.vim's), interleaved."""
    model = build_random_model("CodeLlama-7B", device="cuda", dtype=torch.bfloat16, max_len=16384)
    engine = Engine(model, tokenizer, name="CodeLlama-7B (random)", context_length=16384, cuda_graphs=False)
    engine.compile_prefill = engine.prefill_compilable
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(2)
    start = torch.randint(3, vocab, (16,), generator=g).tolist()
    ring = [torch.randint(3, vocab, (512,), generator=g).tolist() for _ in range(17)]
    cursor = torch.randint(3, vocab, (64,), generator=g).tolist()
    rows = {0: [], 256: []}
    for round_ in range(rounds + 1):              # the first round warms the compiled spans
        for reuse in (0, 256):
            first = start + sum(ring[round_ % 2:round_ % 2 + 15], []) + cursor
            second = start + sum(ring[round_ % 2 + 1:round_ % 2 + 16], []) + cursor
            engine.clear_prefix_cache()
            engine.generate(first, GenerationConfig(max_new_tokens=1))
            torch.cuda.synchronize()
            began = time.perf_counter()
            result = engine.generate(second, GenerationConfig(max_new_tokens=1, cache_reuse=reuse))
            torch.cuda.synchronize()
            if round_:
                rows[reuse].append({"ttft_ms": result.timings.ttft_ms, "wall_ms": 1000 * (time.perf_counter() - began),
                                    "prompt": len(second), "reused": result.reused_prefix_tokens,
                                    "moved": result.timings.moved_tokens})
    return [{"cache_reuse": reuse, "ttft_ms_median": statistics.median(r["ttft_ms"] for r in runs),
             "ttft_ms_all": [round(r["ttft_ms"], 2) for r in runs], "prompt": runs[0]["prompt"],
             "reused": runs[0]["reused"], "moved": runs[0]["moved"]} for reuse, runs in rows.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, default=Path(".gpu/tokenizer"))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of part 3 (0: skip it)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a smoke run of parts 1-2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from models.loading.hf import load_tokenizer
    tokenizer = load_tokenizer(args.tokenizer)
    lengths = (300, 200, 1500, 40) if args.device == "cuda" else (30, 20, 100, 10)
    report = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "moves": [check_move(kind, args.device) for kind in ("bf16", "fp8", "int8")],
              "one_layer": [check_one_layer(kind, tokenizer, args.device, lengths, shape)
                            for shape, kind in (("CodeLlama-7B", "float32"), ("CodeLlama-7B", "bf16"),
                                                ("CodeLlama-7B", "fp8"), ("CodeLlama-7B", "int8"),
                                                ("CodeLlama-34B", "bf16"), ("CodeLlama-34B", "int8"))],
              "dropped_chunk": time_dropped_chunk(tokenizer, args.rounds) if args.rounds else []}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['gpu']}, torch {report['torch']}")
    print("\nKVCache.move, 1,000 keys back by 700 slots (34B heads):")
    print(f"{'cache':6} {'V seq-major':>11} {'max error':>10} {'in units':>9} {'V/scales same':>14} {'ok':>4}")
    for m in report["moves"]:
        print(f"{m['kind']:6} {str(m['v_sequence_major']):>11} {m['max_error']:10.2e} {m['error_in_units']:9.2f} "
              f"{str(m['values_same'] and m['scales_same']):>14} {str(m['ok']):>4}")
    print("\none layer of a shape, moved run against a fresh prefill (34B: GQA, 8-bit V sequence-major):")
    print(f"{'shape':13} {'cache':7} {'reused':>7} {'moved':>6} {'same tokens':>12} {'same top-8':>11} "
          f"{'logprob gap':>12} "
          f"{'floor':>7} {'ok':>4}")
    for r in report["one_layer"]:
        print(f"{r['shape']:13} {r['kind']:7} {r['reused']:7} {r['moved']:6} {str(r['same_tokens']):>12} "
              f"{str(r['same_top8']):>11} "
              f"{r['logprob_gap']:12.4f} {r['noise_floor']:7.4f} {str(r['ok']):>4}")
    print("\nCodeLlama-7B shape, 8k prompt after its first 512-token chunk went (ms to the first token):")
    print(f"{'cache_reuse':>11} {'prompt':>7} {'reused':>7} {'moved':>6} {'median':>8}  all")
    for r in report["dropped_chunk"]:
        print(f"{r['cache_reuse']:11} {r['prompt']:7} {r['reused']:7} {r['moved']:6} {r['ttft_ms_median']:8.1f}  "
              f"{r['ttft_ms_all']}")
    return 0 if all(m["ok"] for m in report["moves"] + report["one_layer"]) else 1


if __name__ == "__main__":
    sys.exit(main())
