"""`load_model`: a checkpoint (a directory, a GGUF file, a hub id) or random weights of a preset's shapes, loaded into
a ready Engine, on this process or split over several (models/lockstep.py).

    engine = load_model()                                   # the embedded SmolLM2 unless told otherwise
"""

from __future__ import annotations

import os
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import torch

from models.engine import Engine
from models.kv_cache import check_kv_cache_fits
from models.options import (SPLIT_INT4, context_capacity, parse_device, parse_dtype, parse_kv_cache,
                            parse_matmul_dtype, parse_weights)
from models.weights_memory import weight_bytes, weights_fit

if TYPE_CHECKING:
    from models.loading import ModelSource


def load_model(spec=None, device=None, dtype=None, attention=None, max_context=None, progress=None,
               cuda_graphs=None, gpus=None, tp=None, kv_cache=None, past_training=False, matmul_dtype=None,
               weights=None) -> Engine:
    """Load a model (None: $CODECOMPLETE_MODEL or the embedded SmolLM2) into a ready Engine.

    spec: a HF checkpoint directory, a .gguf file, a hub id, or "random:PRESET[:TOKENIZER_DIR]" (random
    weights of a preset's exact shapes, for benchmarking where no checkpoint is at hand; without a tokenizer
    directory it has no tokenizer).
    device: "cuda" if available else "cpu".
    dtype: bf16 on CUDA, float32 on CPU. attention: "flash" on CUDA (where the kernels take the model's head
    dim), else "sdpa".
    max_context: KV-cache capacity in tokens, default min(the model's training length, 16384).
    past_training: allow a max_context beyond the training length (rotary positions extrapolate; CodeLlama is
    documented to 100k tokens); without it that is a ContextTooLongError.
    cuda_graphs: capture the decode step in a CUDA graph (default: on CUDA).
    gpus: N > 1 splits the model over N GPUs (tensor parallelism, models/tp.py; with device "cpu", N gloo
    processes): this process becomes rank 0 and starts the others; the engine returned runs every call on
    all of them (models/lockstep.py). Under torchrun the ranks exist already and N is its world size.
    tp: this process's `models.tp.TensorParallel` rank (the launcher passes it): load only its part.
    kv_cache: None (the model dtype), "fp8" (e4m3) or "int8": 8 bits with per-token scales, about half the bytes.
    matmul_dtype: "bfloat16" under a float32 model on a CPU: the projections' weights in bfloat16, the rest in
    float32 (half the weights' bytes; twice the speed where the CPU has bfloat16 dot products,
    `models.options.cpu_has_bf16_dots`). Not with gpus > 1.
    weights: None (the projections in the model's dtype, or matmul_dtype), "int8": int8 with a float32 scale per
    output row (models/int8_weights.py), or "int4": 4 bits with a float16 scale and offset per group of 32 columns
    (models/int4_weights.py; the vocabulary head int8: `models.options.head_weights`), each projection quantized as
    it is read (models/int8_loading.py), so a model that fits only quantized loads: a decode step streams half (int8)
    or ~0.31 (int4) of bf16's bytes. Not with matmul_dtype;
    int4 not with gpus > 1 (`models.options.SPLIT_INT4`).
    """
    from models.loading.hf import load_hf_model, read_config

    weights = parse_weights(weights)
    if spec is None and (os.environ.get("CODECOMPLETE_MODEL") or "").startswith(RANDOM_PREFIX):
        spec = os.environ["CODECOMPLETE_MODEL"]     # the default model as --model would name it (no file to resolve)
    if weights is not None and matmul_dtype is not None:
        raise ValueError(f"{weights} weights replace matmul_dtype {matmul_dtype}: ask for one of them")
    if tp is None and ((gpus or 1) > 1 or "TORCHELASTIC_RUN_ID" in os.environ):
        if weights == "int4":
            raise ValueError(SPLIT_INT4)
        if matmul_dtype is not None:
            raise ValueError("matmul_dtype is for one process: a split model keeps its dtype")
        from models.lockstep import load_on_ranks
        return load_on_ranks(gpus, spec, device=device, dtype=dtype, attention=attention, max_context=max_context,
                             progress=progress, cuda_graphs=cuda_graphs, kv_cache=kv_cache,
                             past_training=past_training, weights=weights)
    start = perf_counter()
    device = tp.device if tp is not None else parse_device(device)
    dtype = parse_dtype(dtype, device)
    quant = parse_kv_cache(kv_cache, dtype)
    matmul_dtype = parse_matmul_dtype(matmul_dtype, dtype, device)
    if isinstance(spec, str) and spec.startswith(RANDOM_PREFIX):
        return _random_engine(spec, device, dtype, attention, max_context, cuda_graphs, start, tp, quant, past_training,
                              matmul_dtype, weights)
    source, directory = checkpoint_directory(spec, dtype, progress)
    name = source.name
    config = read_config(directory)
    context = _capacity(config, max_context, name, past_training, device, dtype, quant, tp, weights, matmul_dtype)
    if progress:
        progress(f"Loading {name} on {device.type}")
    loaded = load_hf_model(directory, device, dtype, max_len=context, name=name, tp=tp, matmul_dtype=matmul_dtype,
                           weights=weights)
    engine = Engine(loaded.model, loaded.tokenizer, name=name, attention=attention,
                    context_length=context, eos_token_ids=loaded.eos_token_ids, cuda_graphs=cuda_graphs,
                    kv_cache=quant)
    engine.load_s = perf_counter() - start
    engine.checkpoint_format = checkpoint_format(source, directory)
    from models.loading.gguf import conversion_warnings
    engine.load_warnings = conversion_warnings(directory)     # said again at each start, not only the first
    return engine


RANDOM_PREFIX = "random:"


def _capacity(config, max_context, name: str, past_training: bool, device, dtype, quant, tp, weights=None,
              matmul_dtype=None) -> int:
    """context_capacity, and past the training length a check that the KV cache fits beside the weights about to load
    (`weight_bytes`, as loaded: int8 and int4 ones as such), before the model is built: there no position limit bounds
    its rotary tables (1 KiB a token at head dim 128), only memory does. (A rank of a split model checks its own part
    later, in setup_caches, in the memory its weights left free.)"""
    context = context_capacity(config, max_context, name, past_training)
    if context > config.context_limit and tp is None:
        check_kv_cache_fits(config, 1, context, dtype, device, name, quant,
                            loading=weight_bytes(config, dtype, weights, matmul_dtype))
    return context


def checkpoint_directory(spec, dtype: torch.dtype, progress=None) -> tuple[ModelSource, Path]:
    """(the model's source: its name, path and kind, its Hugging Face style directory): a hub id downloaded, a GGUF
    converted once."""
    from models.loading import resolve

    source = resolve(spec, progress)
    if source.kind != "gguf":
        return source, source.path
    from models.loading.gguf import gguf_checkpoint
    return source, gguf_checkpoint(source.path, dtype, progress)


def checkpoint_format(source: ModelSource, directory: Path) -> str:
    """The format the user's weights came in (as Ollama's `details.format` names its own: "gguf"), not the
    directory a GGUF was converted into: "gguf", "safetensors" or "pytorch" (.bin)."""
    from models.loading.hf import weight_files

    if source.kind == "gguf":
        return "gguf"
    return "safetensors" if weight_files(directory)[0].suffix == ".safetensors" else "pytorch"


def _random_engine(spec: str, device, dtype, attention, max_context, cuda_graphs, start: float, tp=None,
                   quant: str | None = None, past_training: bool = False, matmul_dtype=None, weights=None) -> Engine:
    """An Engine over random weights of a preset's shapes: times exactly like the real checkpoint.

    With a tokenizer directory (`random:CodeLlama-7B:DIR`, e.g. the embedded model's tokenizer files) the whole
    app runs on it; the vocabulary is then sized to the tokenizer's, so every id it makes is a valid input."""
    from models.config import preset
    from models.llama import build_random_model

    name, _, tokenizer_dir = spec[len(RANDOM_PREFIX):].partition(":")
    config = preset(name)
    tokenizer, label = None, f"{name} (random weights)"
    if tokenizer_dir:
        from models.loading.hf import end_of_generation_ids, load_tokenizer

        tokenizer = load_tokenizer(Path(tokenizer_dir).expanduser())
        config = config.replace(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                eos_token_ids=end_of_generation_ids(tokenizer, len(tokenizer)))
        label = f"{name} (random weights, vocabulary {len(tokenizer)})"
    context = _capacity(config, max_context, name, past_training, device, dtype, quant, tp, weights, matmul_dtype)
    with weights_fit(label, config, device, dtype, weights, matmul_dtype, tp):
        if tp is None:
            model = build_random_model(config, device=device, dtype=dtype, max_len=context, matmul_dtype=matmul_dtype,
                                       weights=weights)
        else:
            from models.tp import random_shard
            model = random_shard(config, tp, device, dtype, max_len=context, weights=weights)
    engine = Engine(model, tokenizer, name=label, attention=attention, context_length=context,
                    eos_token_ids=(), cuda_graphs=cuda_graphs, kv_cache=quant)
    engine.load_s = perf_counter() - start
    return engine
