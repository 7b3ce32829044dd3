"""Where an edit's first token goes (CodeLlama-7B shape, random weights, flash attention, one H200): per KV cache, a
prompt of T tokens, then edits of its last EDIT tokens through `Engine.generate` (the prefix cache reuses the rest),
timed, and one more under torch.profiler: the ops with the most CUDA time and the most host time, and the
request's wall time against its GPU time (a gap is host work: launches, syncs, Python).

    python bench/gpu/edit_profile.py [T] [--caches bf16,fp8]     # from the repository root, on the GPU machine
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

EDIT = 100


@torch.no_grad()
def main(argv: list[str]) -> int:
    from models.engine import Engine
    from models.generation import GenerationConfig
    from models.llama import build_random_model
    caches = next((a.split("=", 1)[1] for a in argv if a.startswith("--caches=")), "bf16,fp8").split(",")
    T = next((int(a) for a in argv if a.isdigit()), 32768)
    model = build_random_model("CodeLlama-7B", device="cuda", dtype=torch.bfloat16, max_len=T + 256)
    engine = Engine(model, None, name="CodeLlama-7B", attention="flash", context_length=T + 256)
    config = GenerationConfig(max_new_tokens=1)
    ids = torch.randint(3, model.config.vocab_size, (T,), generator=torch.Generator().manual_seed(0)).tolist()
    for kind in caches:
        engine.set_kv_cache(None if kind == "bf16" else kind)
        engine.clear_prefix_cache()
        engine.generate(ids, config)
        walls, ttfts = [], []
        for i in range(6):
            edited = ids[:T - EDIT] + [(x + i + 1) % model.config.vocab_size or 3 for x in ids[T - EDIT:]]
            torch.cuda.synchronize()
            start = time.perf_counter()
            ttfts.append(engine.generate(edited, config).timings.ttft_ms)
            torch.cuda.synchronize()
            walls.append(1000 * (time.perf_counter() - start))
        print(f"\n## {kind} cache, {T} tokens, edits of the last {EDIT}: ttft ms {[round(t, 1) for t in ttfts]}, "
              f"median {statistics.median(ttfts):.1f}; wall median {statistics.median(walls):.1f}", flush=True)
        edited = ids[:T - EDIT] + [(x + 9) % model.config.vocab_size or 3 for x in ids[T - EDIT:]]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            engine.generate(edited, config)
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu = sum(e.self_device_time_total for e in events) / 1000
        print(f"profiled edit: GPU time {gpu:.1f} ms (sum of kernels)\n", flush=True)
        print(events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
        print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
