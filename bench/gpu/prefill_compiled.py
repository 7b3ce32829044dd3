"""The compiled prefill on the GPU (models/engine.py, Engine.compile_prefill, which the server turns on): as accurate
as the eager one, and faster.

    python bench/gpu/prefill_compiled.py [--tokens 7880] [--out DIR]

1. Accuracy: a 2-layer cut of the CodeLlama-7B shape with random weights in bf16, prefilled through the Engine's
   bucketed spans eager and compiled, against the same (bf16-rounded) weights in float32, eager, unbucketed: the
   relative L2 error of the last token's logits and of the last layer's keys and values over the prompt, for three
   prompt lengths with fresh random tokens each. The compiled path passes when each error is at most 1.25x the eager
   one's plus 1e-3 (bf16 rounding in a different order, not worse).
2. Speed: the whole 7B shape, one prompt of --tokens tokens, eager vs compiled (CUDA events, median of 5 after a
   first call, whose time, the compilation included, is reported too).
Prints a table; writes DIR/prefill-compiled.json; exits 0 when the compiled path passed, 3 when not.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=7880)
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/h200-cold"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from models.config import preset
    from models.engine import PREFILL_BUCKET, Engine
    from models.llama import build_random_model

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()          # without one, a dry run of the script on a small model
    device, attention, shape = ("cuda", "flash", "CodeLlama-7B") if cuda else ("cpu", "sdpa", "SmolLM2-135M")
    lengths, T = ((1000, 1777, 3001), args.tokens) if cuda else ((100, 177, 301), 300)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    report = {"gpu": torch.cuda.get_device_name(0) if cuda else "no GPU (a dry run)", "torch": torch.__version__,
              "shape": shape, "accuracy": [], "speed": {}}

    def cache_of(engine, length):
        cache = engine.model.layers[-1].attention.kv_cache
        return torch.cat([cache.k[:, :, :length].float(), cache.v[:, :, :length].float()])

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    # 1. Accuracy on a 2-layer cut.
    config = preset(shape).replace(n_layers=2)
    low = build_random_model(config, device=device, dtype=torch.bfloat16, max_len=4096, seed=1)
    high = build_random_model(config, device=device, dtype=torch.float32, max_len=4096, seed=1)
    with torch.no_grad():
        for p_high, p_low in zip(high.parameters(), low.parameters()):
            p_high.copy_(p_low.float())                    # the same numbers: only the arithmetic differs
    engine = Engine(low, None, name="2 layers", attention=attention, context_length=4096)
    engine.prefill_bucket = PREFILL_BUCKET["cuda"]
    reference = Engine(high, None, name="2 layers, fp32", attention=attention, context_length=4096)
    reference.compile_prefill, reference.prefill_bucket = False, 0
    passed = True
    with torch.no_grad():
        for length in lengths:
            ids = torch.randint(3, config.vocab_size, (length,)).tolist()
            want = reference._prefill(ids, 0, 0)
            want_cache = cache_of(reference, length)
            row = {"tokens": length, "span": engine.prefill_span(0, length)[1]}
            for compiled in (False, True):
                engine.compile_prefill = compiled
                for layer in low.layers:                   # poisoned: every slot read must have been written
                    layer.attention.kv_cache.k.fill_(float("nan"))
                    layer.attention.kv_cache.v.fill_(float("nan"))
                started = time.perf_counter()
                got = engine._prefill(ids, 0, 0)
                sync()
                name = "compiled" if compiled else "eager"
                row[f"{name}_s"] = round(time.perf_counter() - started, 2)
                row[f"{name}_logits_error"] = rel(got, want)
                row[f"{name}_cache_error"] = rel(cache_of(engine, length), want_cache)
                row[f"{name}_finite"] = bool(torch.isfinite(got).all())
            for what in ("logits", "cache"):
                eager, compiled = row[f"eager_{what}_error"], row[f"compiled_{what}_error"]
                passed &= compiled <= 1.25 * eager + 1e-3 and row["compiled_finite"]
            report["accuracy"].append(row)
            print(row, flush=True)
    del engine, reference, low, high
    if cuda:
        torch.cuda.empty_cache()

    # 2. Speed on the whole model.
    model = build_random_model(shape, device=device, dtype=torch.bfloat16, max_len=8224)
    engine = Engine(model, None, name=shape, attention=attention, context_length=8224)
    engine.prefill_bucket = PREFILL_BUCKET["cuda"]
    ids = torch.randint(3, model.config.vocab_size, (T,)).tolist()

    def timed(n: int) -> list[float]:
        times = []
        for _ in range(n):
            if not cuda:
                started = time.perf_counter()
                engine._prefill(ids, 0, 0)
                times.append(1000 * (time.perf_counter() - started))
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            engine._prefill(ids, 0, 0)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return times

    with torch.no_grad():
        for compiled in (False, True):
            engine.compile_prefill = compiled
            started = time.perf_counter()
            timed(1)
            first = time.perf_counter() - started
            times = timed(5)
            report["speed"]["compiled" if compiled else "eager"] = {
                "first_call_s": round(first, 2), "median_ms": round(statistics.median(times), 1),
                "min_ms": round(min(times), 1), "max_ms": round(max(times), 1)}
    report.update(tokens=T, span=engine.prefill_span(0, T)[1], passed=bool(passed))
    (args.out / "prefill-compiled.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{shape} shape, bf16, {report['gpu']}, torch {report['torch']}")
    print(f"{'tokens':>7} {'logits err eager':>17} {'compiled':>9} {'cache err eager':>16} {'compiled':>9}")
    for row in report["accuracy"]:
        print(f"{row['tokens']:>7} {row['eager_logits_error']:>17.2e} {row['compiled_logits_error']:>9.2e} "
              f"{row['eager_cache_error']:>16.2e} {row['compiled_cache_error']:>9.2e}")
    for name, s in report["speed"].items():
        print(f"prefill of {T} tokens (span {report['span']}), {name}: median {s['median_ms']} ms "
              f"({s['min_ms']}-{s['max_ms']}), first call {s['first_call_s']} s")
    print("compiled prefill:", "PASSED" if passed else "FAILED (errors above 1.25x eager's)")
    return 0 if passed else 3


if __name__ == "__main__":
    sys.exit(main())
