"""End-to-end decode benchmark: our model per attention backend, Hugging Face transformers, the roofline.

    python -m models.bench [--models 7B,34B] [--contexts 4096,16384,32768,65536] [--batches 1,8]
                           [--layers-34b N] [--hf static,dynamic] [--kv-caches bf16,fp8] [--weights bf16,int8,int4]
                           [--out DIR]
    python -m models.bench --gpus N [--models 34B,70B] [--contexts 16384,65536]   # tensor parallel: models/tp_bench.py

Needs a CUDA GPU and only torch, triton and transformers (the GPU image has no gguf or tree-sitter).
Random weights of the presets' exact shapes: a decode step's time does not depend on the values.
Caches are filled with random K/V (never zeros) up to the context; prefill is excluded. --kv-caches adds
rows with 8-bit caches (fp8, int8: random 8-bit values and scales), read by every backend. --weights int8 adds
rows with the projections' weights in int8 (models/int8_weights.py: the bf16 model quantized after its rows), whose
roofline counts the bytes they read (int8 values and float32 scales); --weights int4 likewise with 4-bit weights
(models/int4_weights.py: packed nibbles, float16 scales and offsets per group of 32 columns; the head int8), whose
one-token batch-1 step is the fused one as for the others (each row names its `one_token_step`; `flash:unfused` times
the compiled general step beside it).
(models/decode_bench.py: issues 11 and 13's GPU run, the 8-bit caches' capacity and verification steps.)

Per (model, batch, context) it reports decode tokens/s for:
  ours   --attention flash | sdpa | eager: one CUDA-graph replay per token, the dense parts compiled;
  hf     transformers' LlamaForCausalLM on the same config, StaticCache and DynamicCache, plain eager
         decoding (what `model.generate` does without torch.compile), timed from the host;
and the roofline: (weight bytes + KV bytes read per step) / the copy bandwidth measured in this run.
Writes e2e.json, e2e.md and e2e.png into --out (default bench/scratch, ignored by git: never over the
committed results in bench/results/, which take an explicit --out).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

from kernels.bench import (OneLineParser, begin_run, comma_list, context_plot, folder, graph_replay_us, one_of,
                           whole)
from models.config import preset
from models.errors import ModelError
from models.llama import Decode, build_random_model

BACKENDS = ("flash", "sdpa", "eager")
WEIGHTS = ("bf16", "int8", "int4")     # --weights, in the order they are timed (quantizing is one way)
GiB = 2**30
PROFILE_TO: Path | None = None   # --profile: a folder for kernel profiles of one decode step


def weight_bytes_per_step(model) -> int:
    """Bytes of weights a decode step reads: every matrix once, int8 ones with their float32 scales, int4 ones with
    their float16 scales and offsets (`Transformer.quantize_weights`; each projection as it is stored: an int4
    model's head is int8); of the embedding, one row (unless it is the output layer's weight: tied and not
    quantized)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for name, b in model.named_buffers()
                 if name.endswith(("weight_scale", "weight_offset")))
    embedding = model.tok_embeddings.weight
    if embedding is not model.output.weight:
        total -= embedding.numel() * embedding.element_size()
    return total


def kv_bytes_per_step(config, batch: int, context: int, element_size: int = 2, quant: str | None = None) -> int:
    """Bytes of K and V (and of 8-bit caches' scales) a step reads at `context` tokens per row."""
    from models.kv_cache import kv_cache_bytes_per_token
    if quant:
        return batch * context * kv_cache_bytes_per_token(config, torch.bfloat16, quant)
    return batch * context * config.kv_bytes_per_token(element_size)


def fill_cache_randomly(model, context: int) -> None:
    """Random keys and values in the first `context` slots: normal values, or for an 8-bit cache random
    8-bit values spread over its range and positive scales (the time does not depend on them)."""
    for layer in model.layers:
        cache = layer.attention.kv_cache
        for values, scale in ((cache.k, cache.k_scale), (cache.v, cache.v_scale)):
            view = values[:, :, :context]
            if scale is None:
                view.normal_()
                continue
            top = 448.0 if view.dtype == torch.float8_e4m3fn else 127.0
            view.copy_(torch.randn(view.shape, device=view.device).mul_(top / 4).clamp_(-top, top).to(view.dtype))
            scale[:, :, :context].uniform_(0.005, 0.02)


def steady_decode(model, batch: int, context: int, backend: str, width: int = 1):
    """A zero-argument decode step with `context` tokens in every row's cache, through `backend`: the
    last `width` of them are the step's tokens (1, or 1 + drafts being verified)."""
    device = model.output.weight.device
    tokens = torch.randint(0, model.config.vocab_size, (batch, width), device=device)
    input_pos = torch.full((batch,), context - width, dtype=torch.long, device=device)
    step = Decode(input_pos, (input_pos + width).to(torch.int32), backend, kv_len=None, exact=width == 1)
    return lambda: model.decode(tokens, step)


def ours_step_us(model, batch: int, context: int, backend: str, replays: int, width: int = 1) -> float:
    """µs per decode step (graph replay) with `context` tokens in every row, through `backend`; a backend
    named "NAME:unfused" runs the compiled general step where the fused one would (models/fused_decode.py),
    "NAME:nopdl" launches no kernel as a programmatic dependent launch, "NAME:wideint8" loads int8 weights 16
    bytes a thread (`kernels.gemv.NARROW_INT8_LOADS` off: the A/B of that choice), "NAME:nodp4a" widens int8
    weights to fp32 where their configurations say DP4A (`kernels.fused_gemv.DP4A` off)."""
    import kernels.fused_gemv
    import kernels.gemv
    import kernels.interface
    backend, _, variant = backend.partition(":")
    fused, pdl, narrow = model.fused_decode, kernels.interface.PDL_SUPPORTED, kernels.gemv.NARROW_INT8_LOADS
    dp4a = kernels.fused_gemv.DP4A
    model.fused_decode = fused and variant != "unfused"
    kernels.interface.PDL_SUPPORTED = pdl and variant != "nopdl"
    kernels.gemv.NARROW_INT8_LOADS = narrow and variant != "wideint8"
    kernels.fused_gemv.DP4A = dp4a and variant != "nodp4a"
    try:
        return graph_replay_us(steady_decode(model, batch, context, backend, width), replays)
    finally:
        model.fused_decode, kernels.interface.PDL_SUPPORTED, kernels.gemv.NARROW_INT8_LOADS = fused, pdl, narrow
        kernels.fused_gemv.DP4A = dp4a


@torch.no_grad()
def check_backends_and_compile(model, log) -> dict:
    """Decode logits on the GPU against the eager backend run in float32 on a float32 copy of the model.

    In bf16, rounding differences grow through dozens of random layers, so the bf16 backends are
    compared with that float32 reference next to bf16 eager's own distance from it (the noise floor);
    in float32, flash must match eager to float32 precision. Then compiled against uncompiled.
    """
    import copy
    model.setup_caches(2, 1024)
    fill_cache_randomly(model, 1024)
    tokens = torch.randint(0, model.config.vocab_size, (2, 1), device="cuda")
    input_pos = torch.tensor([1000, 517], device="cuda")

    def logits(m, backend):
        return m.decode(tokens, Decode(input_pos, (input_pos + 1).to(torch.int32), backend)).float()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    if fits(4 * sum(p.numel() for p in model.parameters())):
        reference = copy.deepcopy(model).float()
        eager32 = logits(reference, "eager")
        result = {"fp32_flash_vs_eager": rel(logits(reference, "flash"), eager32),
                  "bf16_eager_vs_fp32_eager": rel(logits(model, "eager"), eager32),
                  "bf16_flash_vs_fp32_eager": rel(logits(model, "flash"), eager32),
                  "bf16_sdpa_vs_fp32_eager": rel(logits(model, "sdpa"), eager32)}
        del reference
        torch.cuda.empty_cache()
    else:  # a float32 copy does not fit next to the model (34B): compare the bf16 backends only
        eager = logits(model, "eager")
        result = {"bf16_flash_vs_bf16_eager": rel(logits(model, "flash"), eager),
                  "bf16_sdpa_vs_bf16_eager": rel(logits(model, "sdpa"), eager)}
    uncompiled = logits(model, "flash")
    model.compile_dense()
    result["bf16_compiled_vs_uncompiled"] = rel(logits(model, "flash"), uncompiled)
    if model.fused_decode:   # one sequence, one token: the fused step against the compiled general one
        one = Decode(input_pos[:1], (input_pos[:1] + 1).to(torch.int32), "flash")
        fused = model.decode(tokens[:1], one).float()
        model.fused_decode = False
        general = model.decode(tokens[:1], one).float()
        model.fused_decode = True
        result["bf16_fused_vs_compiled"] = rel(fused, general)
        result.update(check_fused_8bit(model, one, tokens[:1], rel))
    log(f"  logits check (relative L2): {result}")
    model.free_caches()
    return result


@torch.no_grad()
def check_fused_8bit(model, one: Decode, token: torch.Tensor, rel) -> dict:
    """8-bit caches in the fused step, where qkv_rope quantizes the new k and v itself: over 20 positions its
    bytes and scales must equal `kernels.append_kv`'s of the k and v it returns (exactly: the same arithmetic),
    and the fused step's logits must match the compiled general step's over the same cache."""
    from kernels.append import append_kv_triton
    from kernels.fused_gemv import qkv_rope
    c, layer, result = model.config, model.layers[0], {}
    H, Hkv, D = c.n_heads, c.n_kv_heads, c.head_dim
    for quant in ("fp8", "int8"):
        model.setup_caches(1, 1024, quant=quant)
        fill_cache_randomly(model, 1024)
        cache = layer.attention.kv_cache
        want = [t.clone() for t in (cache.k, cache.v, cache.k_scale, cache.v_scale)]
        device, dtype = cache.k.device, model.compute_dtype
        for pos in range(700, 720):
            x, position = torch.randn(c.dim, device=device, dtype=dtype), torch.tensor([pos], device=device)
            y = qkv_rope(x, layer.attention_norm.weight, layer.attention_norm.eps, layer.attention.wqkv.weight,
                         model.rope.cos, model.rope.sin, position, H, Hkv, cache=(cache.k, cache.v),
                         scales=(cache.k_scale, cache.v_scale),
                         weight_scale=getattr(layer.attention.wqkv, "weight_scale", None))
            k, v = (t.view(1, Hkv, 1, D) for t in y[H * D:].chunk(2))
            append_kv_triton(k, v, want[0], want[1], position, want[2], want[3])
        got = (cache.k, cache.v, cache.k_scale, cache.v_scale)
        result[f"{quant}_qkv_rope_equals_append"] = all(
            torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.element_size() == 1 else torch.equal(a, b)
            for a, b in zip(got, want))
        fill_cache_randomly(model, 1024)
        fused = model.decode(token, one).float()
        model.fused_decode = False
        general = model.decode(token, one).float()
        model.fused_decode = True
        result[f"{quant}_fused_vs_compiled"] = rel(fused, general)
    return result


@torch.no_grad()
def prefix_reuse_ttft(name: str, shared: int, new: int, log) -> dict:
    """Time to first token through the real Engine: a cold request of shared + new tokens, then a
    second request sharing the first `shared` tokens (what consecutive completions in one repository do)."""
    from models.engine import Engine
    from models.generation import GenerationConfig
    model = build_random_model(name, device="cuda", dtype=torch.bfloat16, max_len=shared + 2 * new + 64)
    engine = Engine(model, None, name=name, attention="flash", context_length=shared + 2 * new + 64)
    vocab = model.config.vocab_size
    prefix = torch.randint(3, vocab, (shared,)).tolist()
    config = GenerationConfig(max_new_tokens=4)
    engine.generate(torch.randint(3, vocab, (256,)).tolist(), config)   # warm-up: graph capture, kernels
    cold = engine.generate(prefix + torch.randint(3, vocab, (new,)).tolist(), config)
    warm = engine.generate(prefix + torch.randint(3, vocab, (new,)).tolist(), config)
    result = {"model": name, "shared_tokens": shared, "new_tokens": new, "cold_ttft_ms": cold.timings.ttft_ms,
              "reuse_ttft_ms": warm.timings.ttft_ms, "reused_prefix_tokens": warm.reused_prefix_tokens,
              "ratio": warm.timings.ttft_ms / cold.timings.ttft_ms}
    log(f"  prefix reuse: cold TTFT {cold.timings.ttft_ms:.1f} ms, with {warm.reused_prefix_tokens} tokens reused "
        f"{warm.timings.ttft_ms:.1f} ms ({result['ratio']:.3f} of cold)")
    del engine, model
    gc.collect()
    torch.cuda.empty_cache()
    return result


def profile_step(model, batch: int, context: int, backend: str, path: Path, quant: str | None = None) -> None:
    """Kernel-level profile of graph-replayed decode steps: where the time beyond the roofline goes (with PDL a
    dependent kernel's time includes its wait for the one before). quant: an 8-bit cache ("fp8", "int8")."""
    from torch.profiler import ProfilerActivity, profile
    model.setup_caches(batch, context, quant=quant)
    fill_cache_randomly(model, context)
    step = steady_decode(model, batch, context, backend)
    graph_replay_us(step, 3)                                          # warm-up and compile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph_replay_us(step, 5)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
    path.write_text(table, encoding="utf-8")
    model.free_caches()


def fits(n_bytes: int, headroom: int = 3 * GiB) -> bool:
    return n_bytes + headroom < torch.cuda.mem_get_info()[0]


@torch.no_grad()
def check_int8_weights(model, log) -> dict:
    """int8 weights: the fused one-token step (the int8 fused kernels) against the compiled general step (the int8
    GEMV op) over the same cache, as relative L2 of the logits (the kernels against float64: bench/gpu/
    int8_weights_check.py)."""
    model.setup_caches(1, 1024)
    fill_cache_randomly(model, 1024)
    tokens = torch.randint(0, model.config.vocab_size, (1, 1), device="cuda")
    input_pos = torch.tensor([1000], device="cuda")
    one = Decode(input_pos, (input_pos + 1).to(torch.int32), "flash")

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    fused, model.fused_decode = model.fused_decode, True
    result = {"int8_fused": model.decode(tokens, one).float()}
    model.fused_decode = False
    result["int8_compiled"] = model.decode(tokens, one).float()
    model.fused_decode = fused
    result = {"int8_fused_vs_compiled": rel(result["int8_fused"], result["int8_compiled"])}
    log(f"  int8 weights check (relative L2): {result}")
    model.free_caches()
    return result


@torch.no_grad()
def check_int4_weights(model, log) -> dict:
    """int4 weights: the one-token step as it runs (the fused step's int4 kernels at batch 1; at a batch of 4 the int4
    op, `torch.ops.codecomplete.gemv_int4` with M = 4, inside the compiled general step) against the uncompiled,
    unfused step on the weights dequantized to bf16 (`models.int4_weights.CUDA_OP` off), over the same cache, as
    relative L2 of the logits (bf16 rounding apart; the int8 head runs its int8 kernels in both). Also which one-token
    step ran at batch 1."""
    import models.int4_weights
    result = {"one_token_step": "fused" if model.fused_decode else "compiled general"}
    for batch in (1, 4):
        model.setup_caches(batch, 1024)
        fill_cache_randomly(model, 1024)
        tokens = torch.randint(0, model.config.vocab_size, (batch, 1), device="cuda")
        input_pos = torch.full((batch,), 1000, device="cuda")
        step = Decode(input_pos, (input_pos + 1).to(torch.int32), "flash")
        as_run = model.decode(tokens, step).float()
        kernels, model.decode_kernels = model.decode_kernels, model.dense
        fused, model.fused_decode = model.fused_decode, False
        models.int4_weights.CUDA_OP = False
        try:
            dequantized = model.decode(tokens, step).float()
        finally:
            models.int4_weights.CUDA_OP, model.decode_kernels, model.fused_decode = True, kernels, fused
        result[f"int4_step_vs_dequantized_B{batch}"] = ((as_run - dequantized).norm() / dequantized.norm()).item()
    log(f"  int4 weights check (relative L2): {result}")
    model.free_caches()
    return result


def bench_ours(name: str, n_layers: int | None, contexts, batches, bandwidth: float, replays: int, log,
               checks: dict, kv_caches=("bf16",), backends=BACKENDS, weights=("bf16",)) -> list[dict]:
    model = build_random_model(name, n_layers=n_layers, device="cuda", dtype=torch.bfloat16, max_len=max(contexts))
    checks[name] = check_backends_and_compile(model, log)   # also compiles the dense parts
    if PROFILE_TO is not None:
        for kind in kv_caches:
            quant = None if kind == "bf16" else kind
            for backend in backends if quant is None else ("flash",):    # 8-bit caches: flash reads them natively
                profile_step(model, 1, contexts[0], backend, PROFILE_TO / f"profile-{name}-S{contexts[0]}"
                             f"{f'-{kind}' if quant else ''}{'' if backend == 'flash' else f'-{backend}'}.txt", quant)
    rows = []
    for kind in weights:                    # bf16 first: quantizing is one way
        if kind != "bf16" and model.weights_quantized:      # int4 after int8: the same numbers drawn again
            del model
            gc.collect()
            torch.cuda.empty_cache()
            model = build_random_model(name, n_layers=n_layers, device="cuda", dtype=torch.bfloat16,
                                       max_len=max(contexts), weights=kind)
            model.compile_dense()
        elif kind != "bf16":
            model.quantize_weights(weights=kind)
        if kind == "int8":
            checks[f"{name} int8 weights"] = check_int8_weights(model, log)
        elif kind == "int4":
            checks[f"{name} int4 weights"] = check_int4_weights(model, log)
        rows += measure_steps(model, name, contexts, batches, bandwidth, replays, log, kv_caches, backends, kind)
    model.free_caches()
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def measure_steps(model, name: str, contexts, batches, bandwidth: float, replays: int, log,
                  kv_caches=("bf16",), backends=BACKENDS, weight_kind: str = "bf16") -> list[dict]:
    """One row per (batch, context, KV cache type): each backend's decode step as a graph replay; `weight_kind`
    names the model's weights ("bf16", or "int8" or "int4" once quantized); each row names the step a batch-1
    one-token decode ran (`one_token_step`: "fused" or "compiled general"; NAME:unfused backends the latter)."""
    rows = []
    config = model.config
    weights = weight_bytes_per_step(model)
    for batch in batches:
        for context in contexts:
            for kind in kv_caches:
                quant = None if kind == "bf16" else kind
                kv = kv_bytes_per_step(config, batch, context, quant=quant)
                row = {"impl": "ours", "model": name, "layers": config.n_layers, "batch": batch, "context": context,
                       "kv_cache": kind, "weights": weight_kind, "weight_gb": weights / 1e9, "kv_gb": kv / 1e9,
                       "roofline_tok_s": batch * bandwidth / (weights + kv), "tok_s": {}, "step_us": {},
                       "compiled": True,
                       "one_token_step": "fused" if model.fused_decode and batch == 1 else "compiled general"}
                model.free_caches()
                if not fits(kv):
                    row["skipped"] = (f"{kind} KV cache of {kv / GiB:.1f} GiB does not fit next to "
                                      f"{weights / GiB:.1f} GiB of weights")
                    log(f"  {name} B={batch} S={context}: {row['skipped']}")
                    rows.append(row)
                    continue
                model.setup_caches(batch, context, name, quant)
                fill_cache_randomly(model, context)
                for backend in backends:
                    try:
                        if not rows:   # a process's first timing ran 2.6% slow on an H200 (NOTES.md, Run 19)
                            ours_step_us(model, batch, context, backend, replays)
                        us = ours_step_us(model, batch, context, backend, replays)
                        row["step_us"][backend] = us
                        row["tok_s"][backend] = batch * 1e6 / us
                    except Exception as error:  # a backend that cannot run this size: record why, go on
                        row.setdefault("errors", {})[backend] = f"{type(error).__name__}: {str(error)[:200]}"
                    torch.cuda.synchronize()
                log(f"  ours {name} L={config.n_layers} B={batch} S={context} {kind}, {weight_kind} weights, "
                    f"{row['one_token_step']} step: "
                    + "  ".join(f"{b} {row['tok_s'].get(b, float('nan')):7.1f}" for b in backends)
                    + f"  roofline {row['roofline_tok_s']:7.1f} tok/s")
                rows.append(row)
    model.free_caches()
    return rows


def kernel_rows(quick: bool = True, log=None) -> tuple[float, list[dict]]:
    """The attention micro-benchmark of `kernels.bench` for the app's `--bench` (which may not import
    kernels itself): the copy bandwidth, then one row per shape with every contestant's graph-replay µs."""
    from kernels import bench as kernel_bench
    log = log or (lambda message: None)
    bandwidth = kernel_bench.copy_bandwidth()
    methods = kernel_bench.contestants(with_flex=False)
    return bandwidth, [kernel_bench.bench_shape(shape, methods, bandwidth, log) for shape in kernel_bench.shapes(quick)]


# --- Hugging Face transformers ---------------------------------------------------------------------

def build_hf_model(name: str, n_layers: int | None, max_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = preset(name)
    if n_layers:
        config = config.replace(n_layers=n_layers)
    hf_config = LlamaConfig(**{k: v for k, v in config.to_hf().items() if k not in ("architectures",)})
    hf_config.max_position_embeddings = max(max_len, config.max_positions)
    hf_config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(hf_config)   # random init on the GPU
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def wall_seconds(run) -> float:
    """Host wall-clock seconds of `run()` with the GPU idle before and drained after (HF's loops
    synchronise on their own, so their host overhead is part of what they cost)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def hf_decode_tok_s(model, cache_kind: str, batch: int, context: int, steps: int) -> float:
    """Tokens/s of HF's own decode loop after a `context`-token prefill (prefill not timed)."""
    from transformers import DynamicCache, StaticCache
    config = model.config
    if cache_kind == "static":
        cache = StaticCache(config=config, max_cache_len=context + steps + 1)
    else:
        cache = DynamicCache()
    ids = torch.randint(0, config.vocab_size, (batch, context), device="cuda")
    chunk = 4096
    for start in range(0, context, chunk):  # chunked prefill keeps the attention mask small
        end = min(start + chunk, context)
        out = model(input_ids=ids[:, start:end], past_key_values=cache,
                    cache_position=torch.arange(start, end, device="cuda"), use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)                     # (B, 1)

    def decode(n: int, first: int) -> None:
        nonlocal token
        for i in range(n):
            pos = torch.tensor([first + i], device="cuda")
            out = model(input_ids=token, past_key_values=cache, cache_position=pos, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)

    warm = 5
    decode(warm, context)
    elapsed = wall_seconds(lambda: decode(steps - warm, context + warm))
    return batch * (steps - warm) / elapsed


@torch.no_grad()
def hf_generate_tok_s(model, cache_kind: str, batch: int, context: int, steps: int) -> float:
    """Decode tokens/s of `model.generate` (what most users run): the time of generating `steps`
    tokens minus that of generating one (prefill and first token), over steps - 1 tokens."""
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device="cuda")
    kwargs = dict(do_sample=False, pad_token_id=0,
                  cache_implementation="static" if cache_kind == "static" else "dynamic")

    def timed(n: int) -> float:
        return wall_seconds(lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs))

    timed(steps)  # warm-up at this very shape: generate compiles its static-cache path per shape
    timed(1)
    return batch * (steps - 1) / (timed(steps) - timed(1))


def bench_hf(name: str, n_layers: int | None, contexts, batches, kinds, bandwidth: float, steps: int, log) -> list[dict]:
    rows = []
    model = build_hf_model(name, n_layers, max(contexts) + steps + 1)
    for batch in batches:
        for context in contexts:
            row = {"impl": "hf", "model": name, "layers": model.config.num_hidden_layers, "batch": batch,
                   "context": context, "tok_s": {}}
            for kind in kinds:
                for label, fn in ((kind, hf_decode_tok_s), (f"generate_{kind}", hf_generate_tok_s)):
                    try:
                        row["tok_s"][label] = fn(model, kind, batch, context, steps)
                    except Exception as error:
                        row.setdefault("errors", {})[label] = f"{type(error).__name__}: {str(error)[:200]}"
                    gc.collect()
                    torch.cuda.empty_cache()
            log(f"  hf {name} B={batch} S={context}: " + "  ".join(
                f"{k} {v:7.1f}" for k, v in row["tok_s"].items()) + f" tok/s {row.get('errors', '')}")
            rows.append(row)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return rows


# --- report --------------------------------------------------------------------------------------

def markdown(env: dict, bandwidth: float, rows: list[dict]) -> str:
    hf = {(r["model"], r["layers"], r["batch"], r["context"]): r for r in rows if r["impl"] == "hf"}
    lines = [f"# End-to-end decode: {env['card']}, {env['date']}", "",
             f"torch {env['torch']}, triton {env['triton']}, bf16, random weights of the real shapes, prefill excluded. "
             f"Copy bandwidth measured in this run: {bandwidth / 1e12:.2f} TB/s. Roofline = (weights + KV read per step) "
             "/ copy bandwidth. tok/s summed over the batch. HF = transformers' LlamaForCausalLM: 'loop' calls the model "
             "once per token with the cache (the leanest eager use), 'generate' is `model.generate`; "
             "'flash/HF best' divides by the fastest of the four.", "",
             "| model | layers | B | context | weights | KV cache | roofline | flash | % roofline | sdpa | eager "
             "| flash/sdpa | flash/eager | HF loop static | HF loop dynamic | HF generate static | HF generate dynamic "
             "| flash/HF best |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["impl"] != "ours":
            continue
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['layers']} | {r['batch']} | {r['context']} | {r.get('weights', 'bf16')} "
                         f"| {r.get('kv_cache', 'bf16')} | | {r['skipped']} | | | | | | | | | | |")
            continue
        t = r["tok_s"]
        nan = float("nan")
        flash, sdpa, eager = t.get("flash", nan), t.get("sdpa", nan), t.get("eager", nan)
        h = hf.get((r["model"], r["layers"], r["batch"], r["context"]), {"tok_s": {}})["tok_s"]
        best_hf = max(h.values()) if h else nan
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['batch']} | {r['context']} | {weights_cell(r)} | "
            f"{r.get('kv_cache', 'bf16')} | "
            f"{r['roofline_tok_s']:.1f} | {flash:.1f} | "
            f"{100 * flash / r['roofline_tok_s']:.0f}% | {sdpa:.1f} | {eager:.1f} | {flash / sdpa:.2f}x | "
            f"{flash / eager:.2f}x | {h.get('static', nan):.1f} | {h.get('dynamic', nan):.1f} | "
            f"{h.get('generate_static', nan):.1f} | {h.get('generate_dynamic', nan):.1f} | {flash / best_hf:.1f}x |")
    return "\n".join(lines) + "\n"


def weights_cell(row: dict) -> str:
    """A row's weights as its table says them: "int4 (compiled step)" where a batch-1 one-token step ran the compiled
    general step instead of the fused one (int4 weights)."""
    compiled = row.get("one_token_step") == "compiled general" and row["batch"] == 1
    return row.get("weights", "bf16") + (" (compiled step)" if compiled else "")


def plot(rows: list[dict], path: Path, card: str) -> None:
    series = [r for r in rows if r["impl"] == "ours" and r["model"] == "CodeLlama-7B" and r["batch"] == 1
              and "skipped" not in r and r.get("kv_cache", "bf16") == "bf16" and r.get("weights", "bf16") == "bf16"]
    hf = [r for r in rows if r["impl"] == "hf" and r["model"] == "CodeLlama-7B" and r["batch"] == 1]
    if not series:
        return
    xs = [r["context"] for r in series]

    def draw(ax):
        ax.plot(xs, [r["roofline_tok_s"] for r in series], "k--", label="roofline (copy bandwidth)")
        for backend in BACKENDS:
            ax.plot(xs, [r["tok_s"].get(backend, float("nan")) for r in series], marker="o",
                    label=f"ours, --attention {backend}", linewidth=2.5 if backend == "flash" else 1.2)
        for kind in ("static", "dynamic", "generate_static", "generate_dynamic"):
            ax.plot([r["context"] for r in hf], [r["tok_s"].get(kind, float("nan")) for r in hf], marker="x",
                    label=f"transformers, {kind.replace('_', ' ')} cache")
    context_plot(path, f"CodeLlama-7B shape, bf16, batch 1, {card}", "decode tokens/s", draw)


def full_name(name: str) -> str:
    """A --models name as a preset's: "7B" is CodeLlama-7B."""
    return f"CodeLlama-{name}" if not name.startswith(("CodeLlama", "SmolLM")) else name


def _model(name: str) -> str:
    try:
        preset(full_name(name))
    except ModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _backend(name: str) -> str:
    """NAME or NAME:unfused, NAME:nopdl, NAME:wideint8 or NAME:nodp4a (see ours_step_us)."""
    backend, _, variant = name.partition(":")
    one_of(*BACKENDS)(backend)
    if variant:
        one_of("unfused", "nopdl", "wideint8", "nodp4a")(variant)
    return name


def main(argv=None) -> int:
    # Every option is checked as it is parsed: a typo is one line at once, not a traceback after a model is built.
    counts = comma_list(whole(1))
    parser = OneLineParser(prog="python -m models.bench", description="End-to-end decode benchmark (needs a CUDA GPU)")
    parser.add_argument("--models", "--preset", type=comma_list(_model), default="7B,34B",
                        help="presets: 7B, 13B, 34B, 70B, SmolLM2-135M, or their full names (CodeLlama-34B) "
                             "(default: 7B,34B)")
    parser.add_argument("--contexts", type=counts, default="4096,16384,32768,65536",
                        help="context lengths in tokens (default: 4096,16384,32768,65536)")
    parser.add_argument("--batches", type=counts, default="1,8", help="batch sizes (default: 1,8)")
    parser.add_argument("--layers-34b", type=whole(0), default=0, help="cut CodeLlama-34B to N layers (0: all that fit)")
    parser.add_argument("--hf", type=comma_list(one_of("static", "dynamic"), empty=True), default="static,dynamic",
                        help="HF cache kinds to time: static, dynamic ('' to skip; default: both)")
    parser.add_argument("--hf-contexts", type=counts, default=None,
                        help="contexts of the HF rows, some of --contexts (default: all of them; another is "
                             "refused, as it would have no row of ours to compare with)")
    parser.add_argument("--hf-steps", type=whole(1), default=12, help="transformers' decode steps timed (default: 12)")
    parser.add_argument("--replays", type=whole(1), default=20, help="graph replays timed per row (default: 20)")
    parser.add_argument("--ttft", type=comma_list(whole(1), empty=True, length=2), default="16384,300",
                        help="shared,new tokens for the prefix-reuse TTFT ('' to skip; default: 16384,300)")
    parser.add_argument("--profile", action="store_true",
                        help="write a kernel profile of one step (per backend; 8-bit caches: flash)")
    parser.add_argument("--hf-batches", type=counts, default="1",
                        help="batch sizes transformers is timed at (default: 1)")
    parser.add_argument("--kv-caches", type=comma_list(one_of("bf16", "fp8", "int8")), default="bf16",
                        help="KV cache types to time: bf16, fp8, int8 (default: bf16)")
    parser.add_argument("--weights", type=comma_list(one_of(*WEIGHTS)), default="bf16",
                        help="the projections' weights to time: bf16, int8 (int8 values, a float32 scale per row), "
                             "int4 (4 bits, a float16 scale and offset per group of 32 columns, the head int8) "
                             "(default: bf16)")
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    parser.add_argument("--gpus", type=whole(0), default=0,
                        help="tensor parallelism: 1 and N GPUs in one run (models/tp_bench.py); "
                             "default models 34B,70B at 16k and 64k")
    parser.add_argument("--gemv-ab", type=comma_list(_model, empty=True), default="", metavar="MODELS",
                        help="--gpus: time these models' rows again with the GEMV dispatch before split-K (e.g. 34B,70B)")
    parser.add_argument("--methods", type=comma_list(one_of("one_shot", "nccl", "none")), default="one_shot,none",
                        help="--gpus: all-reduces to time (one_shot, nccl, none: no communication, the compute alone; "
                             "default: one_shot,none)")
    parser.add_argument("--sweep", action="store_true", help="--gpus: the collectives by message size too")
    parser.add_argument("--backends", type=comma_list(_backend), default=",".join(BACKENDS),
                        help="our attention backends to time (default: flash,sdpa,eager); A/B arms: NAME:unfused runs "
                             "the compiled general step where the fused one-token step would, NAME:nopdl launches "
                             "nothing as a dependent launch, NAME:wideint8 loads int8 weights 16 bytes a thread, "
                             "NAME:nodp4a widens int8 weights to fp32 where their configurations say DP4A")
    parser.add_argument("--out", type=folder, default=Path("bench/scratch"),
                        help="folder for e2e.json, e2e.md, e2e.png (default: bench/scratch)")
    args = parser.parse_args(argv)
    if not args.gpus and (args.sweep or args.gemv_ab or args.methods != parser.get_default("methods")):
        # ignored without it: the run was not the one asked for
        given = "--sweep" if args.sweep else "--gemv-ab" if args.gemv_ab else "--methods"
        parser.error(f"{given} goes with --gpus")
    if args.gpus and args.weights != "bf16":    # (tp_bench times the bf16 model only)
        parser.error("--weights goes without --gpus")
    contexts = [int(c) for c in args.contexts.split(",")]
    hf_contexts = [int(c) for c in args.hf_contexts.split(",")] if args.hf_contexts else contexts
    if not set(hf_contexts) <= set(contexts):       # their rows were dropped, silently
        parser.error(f"--hf-contexts {args.hf_contexts}: each one also in --contexts ({args.contexts})")
    if (started := begin_run("models.bench", args.out)) is None:
        return 2
    env, bandwidth, log = started
    if args.gpus:
        from models import tp_bench
        if args.models == parser.get_default("models"):
            args.models = "34B,70B"
        if args.contexts == parser.get_default("contexts"):
            args.contexts = "16384,65536"
        return tp_bench.run(args, env, bandwidth, log)
    global PROFILE_TO
    PROFILE_TO = args.out if args.profile else None
    batches = [int(b) for b in args.batches.split(",")]
    kinds = [k for k in args.hf.split(",") if k]
    rows: list[dict] = []
    checks: dict = {}
    ttft: list[dict] = []
    stem = f"e2e-{args.tag}" if args.tag else "e2e"

    def save():
        """The results so far and their table: a run cut short left its JSON next to no table, or an earlier run's
        (the run's end writes the table again, with the TTFT, and the plot; an earlier plot goes now)."""
        (args.out / f"{stem}.json").write_text(json.dumps(
            {"env": env, "bandwidth": bandwidth, "rows": rows, "checks": checks, "prefix_reuse": ttft}, indent=1), encoding="utf-8")
        measured = ", ".join(dict.fromkeys(r["model"] for r in rows))
        (args.out / f"{stem}.md").write_text(markdown(env, bandwidth, rows) + f"\nCut short: the rows so far (models "
                                             f"{measured or 'none'} of {args.models}).\n", encoding="utf-8")
        (args.out / f"{stem}.png").unlink(missing_ok=True)      # an earlier run's: drawn again at the end

    for name in args.models.split(","):
        name = full_name(name)
        n_layers = args.layers_34b or None if "34B" in name else None
        rows += bench_ours(name, n_layers, contexts, batches, bandwidth, args.replays, log, checks,
                           kv_caches=args.kv_caches.split(","), backends=args.backends.split(","),
                           weights=sorted(set(args.weights.split(",")), key=WEIGHTS.index))
        save()
        if kinds:
            hf_batches = [int(b) for b in args.hf_batches.split(",")]
            rows += bench_hf(name, n_layers, hf_contexts, hf_batches, kinds, bandwidth, args.hf_steps, log)
            save()
    if args.ttft:
        shared, new = (int(x) for x in args.ttft.split(","))
        ttft.append(prefix_reuse_ttft(full_name(args.models.split(",")[0]), shared, new, log))
        save()
    table = markdown(env, bandwidth, rows)
    for t in ttft:
        table += (f"\nPrefix reuse ({t['model']}, through the Engine): cold request of {t['shared_tokens'] + t['new_tokens']} "
                  f"tokens: TTFT {t['cold_ttft_ms']:.1f} ms; a second request sharing {t['reused_prefix_tokens']} "
                  f"tokens: {t['reuse_ttft_ms']:.1f} ms ({t['ratio']:.3f} of cold).\n")
    (args.out / f"{stem}.md").write_text(table, encoding="utf-8")
    plot(rows, args.out / f"{stem}.png", env["card"])
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
