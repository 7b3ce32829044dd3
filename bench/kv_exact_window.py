"""A lead for issue 11's accuracy bar, simulated: an 8-bit KV cache whose first tokens (attention sinks) and most
recent tokens stay exact, as KIVI keeps a full-precision window.

    python bench/kv_exact_window.py [--schemes fp8:0:0,fp8:4:32,...] [--tokens 510] [--out FILE]

A scheme KIND:SINK:WINDOW quantizes keys and values as the product's caches do (`kernels.reference.quantize`: a
scale per token and KV head, e4m3 or int8) except, for the query at position i, keys 0 .. SINK-1 and
i-WINDOW+1 .. i, which it reads exact. Over the 2,040 positions of installed packages' source that
tests/models/test_kv_cache_accuracy.py reads (the embedded SmolLM2, teacher-forced), it reports each scheme's top-1
agreement with the unquantized cache and the mean KL divergence, as that test does.

This is a simulation at the level of scores, not a cache the product has: attention runs on the CPU over the exact
cache and picks, per (query, key), the exact or the quantized key and value (`attention`). It says how much such a
cache would recover; bench/results/NOTES.md (the section on this script) sketches how the kernels would carry it.
The product's 8-bit caches now carry 16 + 32 exact tokens (models/kv_cache.py; NOTES.md, "Issue 11's accuracy
bar, built"); this script stays the way to weigh other choices without rebuilding the cache.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "models")]

import models.llama as llama  # noqa: E402
import run_info  # noqa: E402  (bench/, next to this script)
import test_kv_cache_accuracy as accuracy  # noqa: E402
from codecomplete.cli import _Parser  # noqa: E402  (the product's one-line usage errors)
from kernels.reference import dequantize, quantize  # noqa: E402
from models import load_model  # noqa: E402

DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
DEFAULT_SCHEMES = "fp8:0:0,int8:0:0,fp8:4:0,fp8:0:32,fp8:1:32,fp8:4:16,fp8:4:32,fp8:4:64,fp8:4:128,int8:4:32"


def scheme(text: str) -> tuple[str, int, int]:
    kind, sink, window = (text.split(":") + ["", ""])[:3]
    if kind not in DTYPES or not sink.isdigit() or not window.isdigit():
        raise ValueError(f"{text!r}: a scheme is KIND:SINK:WINDOW, KIND fp8 or int8, SINK and WINDOW counts")
    return kind, int(sink), int(window)


def quantized(x: torch.Tensor, kind: str) -> torch.Tensor:
    """x (1, Hkv, S, D) through the cache's 8-bit storage and back (a scale per token and KV head)."""
    values, scale = quantize(x.float(), DTYPES[kind])
    return dequantize(values, scale, torch.float32)


def attention(q, k, v, start: int, kind: str, sink: int, window: int) -> torch.Tensor:
    """Causal attention of q (1, Hq, T, D) at positions start.. over k, v (1, Hkv, start+T, D): exact keys and
    values for each query's sink and window, quantized ones elsewhere. Returns (1, Hq, T, D), float32."""
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    group = q.shape[1] // k.shape[1]
    exact_k, exact_v = (t.float().repeat_interleave(group, 1) for t in (k, v))          # (1, Hq, S, D)
    rough_k, rough_v = (quantized(t, kind).repeat_interleave(group, 1) for t in (k, v))
    i = torch.arange(start, start + T)[:, None]                                          # (T, 1) query positions
    j = torch.arange(S)[None]                                                            # (1, S) key positions
    exact = (j < sink) | (j > i - window)                                                # (T, S)
    qf = q.float() / math.sqrt(D)
    scores = torch.where(exact, qf @ exact_k.transpose(-1, -2), qf @ rough_k.transpose(-1, -2))
    p = scores.masked_fill(j > i, float("-inf")).softmax(-1)                             # (1, Hq, T, S)
    return (p * exact) @ exact_v + (p * ~exact) @ rough_v


@contextmanager
def simulated(kind: str, sink: int, window: int):
    """The model's prefill attends through `attention` (its cache holds exact K and V) while inside."""
    attend = llama.Attention.attend

    def patched(self, q, k, v, step):
        if not isinstance(step, llama.Prefill):
            return attend(self, q, k, v, step)
        k_all, v_all = self.kv_cache.write(step.row, step.start, k, v).dequantized(q.dtype)
        out = attention(q, k_all, v_all, step.start, kind, sink, window).to(q.dtype)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
    llama.Attention.attend = patched
    try:
        yield
    finally:
        llama.Attention.attend = attend


def main(argv=None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=DEFAULT_SCHEMES,
                        help=f"comma-separated KIND:SINK:WINDOW (default: {DEFAULT_SCHEMES})")
    parser.add_argument("--tokens", type=int, default=accuracy.TOKENS_PER_FILE,
                        help=f"tokens predicted per source file (default: {accuracy.TOKENS_PER_FILE}, the test's)")
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/kv-exact-window-cpu.md"),
                        help="the results file (default: bench/scratch/kv-exact-window-cpu.md)")
    args = parser.parse_args(argv)
    try:
        schemes = [scheme(s) for s in args.schemes.split(",")]
    except ValueError as exc:
        parser.error(f"--schemes {exc}")
    if args.tokens < 1:
        parser.error(f"--tokens {args.tokens}: at least 1")
    if args.out.is_dir():
        parser.error(f"--out {args.out}: is a folder (name the report file)")
    load_before = os.getloadavg()
    engine = load_model()
    engine.set_kv_cache(None)
    accuracy.TOKENS_PER_FILE = args.tokens
    files = accuracy.code_ids(engine.tokenizer)

    def log_probs(ids: list[int]) -> torch.Tensor:                                     # (N, V), one prefill
        return engine.model.prefill(torch.tensor([ids[:-1]]), 0, all_logits=True)[0].log_softmax(-1)

    rows = []
    with torch.no_grad():
        exact = [log_probs(ids) for ids in files]
        for kind, sink, window in schemes:
            agree = positions = 0
            kl = 0.0
            with simulated(kind, sink, window):
                for ids, reference in zip(files, exact):
                    rough = log_probs(ids)
                    agree += (reference.argmax(-1) == rough.argmax(-1)).sum().item()
                    kl += (reference.exp() * (reference - rough)).sum(-1).sum().item()
                    positions += reference.shape[0]
            rows.append(f"| {kind} | {sink} | {window} | {100 * agree / positions:.1f}% | {kl / positions:.2e} |")
            print(rows[-1], flush=True)
    info = run_info.header(load_before, ["torch", "transformers"])
    report = "\n".join([
        f"# 8-bit KV cache with exact sink and window tokens, simulated: {info['date']}", "",
        run_info.describe(info) + f". The embedded SmolLM2, {positions} positions ({len(files)} files of "
        f"{args.tokens} predicted tokens, one prefill each), top-1 agreement and mean KL(unquantized || scheme) against the unquantized cache.", "",
        "| cache | sink tokens | window tokens | top-1 agreement | mean KL (nats) |", "|---|---|---|---|---|",
        *rows]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
