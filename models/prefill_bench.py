"""Where a cold prefill's time goes (issue 9's cold first token): CodeLlama-7B shape, one prompt, one GPU.

    python -m models.prefill_bench [--tokens 7800] [--out DIR]

Times `Transformer.prefill` of a fresh prompt (CUDA events, median of 5) at its exact length, the same with
SDPA held to one backend each (flash, efficient, cuDNN), the Engine's whole first token (tokens in, first token
out: since bench/results/h200-cold/ over a span snapped to 128 tokens, eager unless a server turns on its compiled
prefill; bench/gpu/prefill_compiled.py times that), and the FLOP bound at the matmul rate measured in this run;
then writes a kernel profile of one prefill (prefill-profile.txt) and prints the table last.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def _ms(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats + 1 if repeats else 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    kept = times[1:] if repeats else times      # repeats=0: the one first call, shape-specific setup included
    return sorted(kept)[len(kept) // 2]


@torch.no_grad()
def main(argv=None) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    from kernels.bench import OneLineParser
    from models.engine import Engine
    from models.generation import GenerationConfig
    from models.llama import build_random_model
    parser = OneLineParser(prog="python -m models.prefill_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="CodeLlama-7B", help="a preset (default: CodeLlama-7B)")
    parser.add_argument("--tokens", type=int, default=7800, help="prompt tokens (default: 7800)")
    parser.add_argument("--out", type=Path, default=Path("bench/scratch"),
                        help="results folder (default: bench/scratch)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("models.prefill_bench needs a CUDA GPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    T = args.tokens
    model = build_random_model(args.model, device="cuda", dtype=torch.bfloat16, max_len=T + 256)
    engine = Engine(model, None, name=args.model, attention="flash", context_length=T + 256)
    tokens = torch.randint(3, model.config.vocab_size, (1, T), device="cuda")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    tflops = 2 * 8192**3 / _ms(lambda: a @ a) / 1e9
    params = sum(p.numel() for n, p in model.named_parameters() if "tok_embeddings" not in n)
    c = model.config
    flops = 2 * params * T + 2 * 2 * c.n_layers * c.n_heads * c.head_dim * T * T / 2   # matmuls + causal attention
    rows = {"FLOP bound (matmul rate of this run)": flops / tflops / 1e9}
    rows["prefill, Transformer.prefill (exact length)"] = _ms(lambda: model.prefill(tokens))
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cuDNN", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                rows[f"prefill, SDPA held to {name}"] = _ms(lambda: model.prefill(tokens))
        except RuntimeError as error:
            rows[f"prefill, SDPA held to {name}"] = float("nan")
            print(f"{name}: {str(error)[:160]}")
    # Every prompt has a new length: the first prefill at each, per SDPA backend (cuDNN plans per shape).
    for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        firsts = []
        for extra in (1, 3, 5):
            fresh = tokens[:, :T - extra - (10 if name == "flash" else 0)]
            with sdpa_kernel([backend]):
                firsts.append(_ms(lambda: model.prefill(fresh), repeats=0))
        rows[f"first prefill at a new length, {name} (median of 3)"] = sorted(firsts)[1]
    config = GenerationConfig(max_new_tokens=1)
    ids = tokens[0].tolist()
    engine.generate(ids[:256], config)                       # warm-up: graphs, kernels
    ttft = []
    for i in range(3):
        engine.clear_prefix_cache()
        ttft.append(engine.generate([3 + i] + ids[1:], config).timings.ttft_ms)
    rows["Engine first token (cold, 3 runs, median)"] = sorted(ttft)[1]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.prefill(tokens)
        torch.cuda.synchronize()
    (args.out / "prefill-profile.txt").write_text(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90), encoding="utf-8")
    # The host's side of a first prefill at a new length: what it does that a repeated length does not.
    fresh = tokens[:, :T - 17]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model.prefill(fresh)
        torch.cuda.synchronize()
    (args.out / "prefill-new-length-profile.txt").write_text(
        prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=90), encoding="utf-8")
    print(f"{args.model}, {T}-token prompt, bf16, {torch.cuda.get_device_name()}; matmul rate {tflops:.0f} TFLOP/s")
    for name, ms in rows.items():
        print(f"  {name:45s} {ms:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
