"""How soon a stop takes effect during a long GPU prefill, and what the stoppable prefill costs (issue: Ctrl-C on a
GPU prefill waited for all of it). CodeLlama-7B shape, random weights, flash attention, one prompt per length:
- time to first token with no poll, and with a poll that never stops (the queue kept two layers deep);
- a poll that says stop 30% into the prefill: the time from that answer to generate's return.
Prints a table last. Usage: python bench/gpu/prefill_stop.py [--out DIR]"""

import argparse
import json
import statistics
import sys
from time import perf_counter

import torch

from models import GenerationConfig, load_model

parser = argparse.ArgumentParser(description=__doc__.split("\n-")[0])
parser.add_argument("--out", help="a folder for prefill_stop.json (default: none, the table only)")
parser.add_argument("--lengths", default="1024,4096,16000", help="prompt lengths in tokens (default: 1024,4096,16000)")
args = parser.parse_args()
if not torch.cuda.is_available():       # was an AssertionError's traceback from torch
    parser.exit(2, "prefill_stop needs a CUDA GPU: it times the GPU's stoppable prefill.\n")
try:
    lengths = [int(n) for n in args.lengths.split(",")]
except ValueError:
    parser.error(f"--lengths {args.lengths}: token counts expected, e.g. 1024,4096")
engine = load_model("random:CodeLlama-7B", device="cuda", max_context=16384)
one = GenerationConfig(max_new_tokens=1)
vocab = engine.model.config.vocab_size


def prompt(n, salt):
    return [(salt * 7919 + 13 * i) % (vocab - 3) + 3 for i in range(n)]


def first_token(n, salt, should_stop=None):
    engine.clear_prefix_cache()
    torch.cuda.synchronize()
    start = perf_counter()
    result = engine.generate(prompt(n, salt), one, should_stop=should_stop)
    torch.cuda.synchronize()
    return perf_counter() - start, result


rows = []
for n in lengths:
    first_token(n, 0)                                  # warm: compile, plans
    plain = [first_token(n, s)[0] for s in range(1, 6)]
    polled = [first_token(n, s, lambda: False)[0] for s in range(6, 11)]
    full = statistics.median(plain)
    latencies, cancelled = [], 0
    for s in range(11, 14):
        said, t0 = [], perf_counter()

        def stop_late():
            if not said and perf_counter() - t0 >= 0.3 * full:
                said.append(perf_counter())
            return bool(said)
        _, result = first_token(n, s, stop_late)
        end = perf_counter()
        latencies.append((end - said[0]) if said else float("nan"))
        cancelled += result.finish_reason == "cancelled"
    rows.append({"tokens": n, "ttft_ms_no_poll": 1e3 * full, "ttft_ms_polled": 1e3 * statistics.median(polled),
                 "stop_latency_ms": 1e3 * statistics.median(latencies),
                 "cancelled": f"{cancelled}/{len(latencies)}"})

device = torch.cuda.get_device_name()
if args.out:
    import os
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "prefill_stop.json"), "w") as f:
        json.dump({"device": device, "torch": torch.__version__, "rows": rows}, f, indent=1)
print(f"{device}, CodeLlama-7B shape (random weights), flash, prefill from an empty cache; medians of 5 (stops: 3)")
print(f"{'tokens':>7} {'ttft no poll ms':>16} {'ttft polled ms':>15} {'polled/plain':>13} "
      f"{'stop -> return ms':>18} {'cancelled':>9}")
for r in rows:
    print(f"{r['tokens']:>7} {r['ttft_ms_no_poll']:>16.1f} {r['ttft_ms_polled']:>15.1f} "
          f"{r['ttft_ms_polled'] / r['ttft_ms_no_poll']:>13.3f} {r['stop_latency_ms']:>18.1f} {r['cancelled']:>9}")
sys.exit(0)
