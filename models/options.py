"""What the options of loading a model mean: the device, dtype names, the KV cache's kind, the context's capacity.

Shared by `models.load` (which reads them for `load_model`) and the Engine (whose KV cache can be switched later).
"""

from __future__ import annotations

import platform

import torch

from models.config import LIMITS, ModelConfig
from models.errors import ContextTooLongError
from models.kv_cache import QUANTIZED

DEFAULT_MAX_CONTEXT = 16384
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def parse_device(device) -> torch.device:
    """The device a model loads on: `device` when given, else CUDA where a GPU is visible, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def parse_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[str(dtype).lower()]


def parse_matmul_dtype(matmul_dtype, dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
    """The projections' weights' dtype where it differs from the model's (`Transformer.materialize`), else None.
    Only bfloat16 under a float32 model on a CPU: on a GPU the model's dtype is bfloat16 already."""
    if matmul_dtype is None:
        return None
    narrow = parse_dtype(matmul_dtype, device)
    if narrow == dtype:
        return None
    if (narrow, dtype, device.type) != (torch.bfloat16, torch.float32, "cpu"):
        raise ValueError(f"matmul weights in {str(narrow).removeprefix('torch.')} are for a float32 model on a CPU "
                         f"(this one: {str(dtype).removeprefix('torch.')} on {device.type})")
    return narrow


def cpu_has_bf16_dots() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX, through oneDNN): there bfloat16
    projections run about twice as fast as float32 ones (they read half the bytes); elsewhere they are emulated
    and slower, so float32 stays."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))
    except (AttributeError, RuntimeError):         # (private torch functions: gone in some version)
        return False


def cpu_name() -> str:
    """This CPU's model name as /proc/cpuinfo gives it ("AMD EPYC 7R13 Processor"), else what `platform` knows:
    `platform.processor()` is "" on Linux, so it alone named no CPU there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


WEIGHTS = ("int8", "int4")
SPLIT_INT4 = ("int4 weights are not supported on a model split over several processes because the tensor-parallel "
              "loader and rank steps (models/tp.py) take 16-bit and int8 weights only: use int8 weights there")


def head_weights(weights: str | None) -> str | None:
    """How `weights` stores the vocabulary head: int8 (a float32 scale per row) under int4 too, as llama.cpp keeps
    output.weight at Q6_K in its 4-bit files. On the embedded SmolLM2 an int4 head was all of int4's loss: top-1
    agreement with float32 88.2% with it, 97.1% with an int8 one, 100% with the head left in float32 (the layers int4;
    tests/models/test_int4_weights_accuracy.py). In 8 bits the head is 1.2% of CodeLlama-34B's int4 model (7B: 3%): it
    adds 0.5% to a decode step's weight bytes over an int4 head (7B: 1.2%; `models.weights_memory.weight_bytes`)."""
    return "int8" if weights in WEIGHTS else weights


def parse_weights(weights) -> str | None:
    """How the projections' weights are stored: None (the model's dtype, or `parse_matmul_dtype`'s), "int8" (int8
    with a float32 scale per output row, models/int8_weights.py) or "int4" (4 bits with a float16 scale and offset
    per group of 32 columns, models/int4_weights.py; the vocabulary head int8: `head_weights`)."""
    if weights is None:
        return None
    name = str(weights).lower()
    if name not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r} (choose {' or '.join(WEIGHTS)}, or leave them in the model's "
                         "dtype)")
    return name


def parse_kv_cache(kv_cache, dtype: torch.dtype) -> str | None:
    """The 8-bit cache type ("fp8", "int8"), or None for the model's own dtype (None or its name)."""
    if kv_cache is None:
        return None
    name = str(kv_cache).lower()
    if name in QUANTIZED:
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown KV cache type {kv_cache!r} (choose from {', '.join(QUANTIZED)} or the model dtype)")
    if DTYPES[name] != dtype:
        raise ValueError(f"a {name} KV cache needs a {name} model (an unquantized cache holds the model's dtype, "
                         f"{str(dtype).removeprefix('torch.')} here): choose that dtype, or an 8-bit cache")
    return None


def context_capacity(config: ModelConfig, max_context: int | None, name: str, past_training: bool = False) -> int:
    """KV-cache capacity in tokens: `max_context`, by default the model's training length up to DEFAULT_MAX_CONTEXT.

    Past the training length (`config.context_limit`) rotary positions extrapolate: CodeLlama (rope_theta 1e6,
    trained on 16k) is documented to stay usable toward 100k tokens, a model with a small rope base degrades.
    As llama.cpp allows an n_ctx beyond n_ctx_train with a warning, `past_training=True` allows it (the command
    line passes it for an explicit --context-tokens and warns); otherwise it is an error, so a default budget
    never extrapolates unasked. A Mistral's sliding window caps both (a ContextTooLongError past it)."""
    limit = config.context_limit
    window = config.sliding_window
    if max_context is None:
        return min(limit, DEFAULT_MAX_CONTEXT, window or limit)
    if max_context < 1:
        raise ValueError(f"max_context must be positive, got {max_context}")
    if window is not None and max_context > window:
        # Past the window transformers' Mistral drops the oldest keys from each query's attention, which the decode
        # kernels do not; within it the two are one computation.
        raise ContextTooLongError(
            f"{name}: a context of {max_context} tokens exceeds the sliding window of {window} tokens that the model "
            f"attends over (sliding_window in config.json), which codecomplete does not slide: at most {window}")
    if max_context > (LIMITS["max_positions"] if past_training else limit):
        raise ContextTooLongError(
            f"{name}: a context of {max_context} tokens exceeds the {limit} positions the model was trained on"
            + (f" and the {LIMITS['max_positions']} any model here addresses" if past_training else ""))
    return max_context
