"""GGUF files (llama.cpp): dequantized with the `gguf` package and converted once into a Hugging Face style
directory in the user cache (config.json, model.safetensors, the tokenizer saved by transformers).

Reading a GGUF and building its tokenizer takes ~10 s; loading the converted directory well under one.
The cache holds the weights in the dtype the engine runs (bf16 on CUDA, float32 on CPU), keyed by the
file's path, size and mtime. `gguf` is imported here only, lazily: the GPU image does not have it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from models.config import ModelConfig
from models.errors import ModelError, UnsupportedModelError
from models.loading import cache_root
from models.loading.gguf_header import check_header_bounds

CACHE_FORMAT = 2   # 2: a linear rope factor without a type, or under rope.scale_linear, is read (config.json)
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
TOP_LEVEL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}
BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}


def converted_dir(path: Path, dtype: torch.dtype) -> Path:
    st = path.stat()
    key = f"{CACHE_FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}"
    return cache_root() / "gguf" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def gguf_checkpoint(path: Path, dtype: torch.dtype, progress=None) -> Path:
    """The converted checkpoint directory for a GGUF file, converting it on first use.

    A cached copy that is incomplete or unreadable (a disk that filled up, a hand-deleted file) is converted
    again rather than refused forever; a cache folder that cannot be written is a one-line ModelError, and the
    half-written copy is removed whatever stops the conversion."""
    out = converted_dir(path, dtype)
    if is_complete(out):
        return out
    if out.exists():
        if progress:
            progress(f"The converted copy of {path.name} in {out} is damaged: converting it again")
        shutil.rmtree(out, ignore_errors=True)
    if progress:
        progress(f"Converting {path.name} (first start only; cached in {out.parent})")
    reader = open_gguf(path)
    config = read_gguf_config(reader, path)
    check_tensor_types(reader, path)
    check_tensor_layout(reader, path)
    check_tensor_shapes(reader, config, path)
    tokenizer = gguf_tokenizer(path)
    tensors = {hf_name(t.name, path): to_torch(t, config, dtype) for t in reader.tensors}

    from safetensors.torch import save_file
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, tmp / "model.safetensors")
        tokenizer.save_pretrained(str(tmp))
        (tmp / "config.json").write_text(json.dumps(config.to_hf(), indent=2))
        os.replace(tmp, out)            # atomic: a half-written conversion is never found
    except OSError as e:
        if is_complete(out):            # another process converted it first
            return out
        raise ModelError(f"cannot write the converted model into {out.parent}: {e.strerror or e} "
                         "(CODECOMPLETE_CACHE_DIR sets the cache folder)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def is_complete(directory: Path) -> bool:
    """Whether a converted copy has everything a load reads: a valid config, a readable safetensors header
    (which also checks the file is as long as the header says) and the tokenizer."""
    from models.loading.hf import read_config
    from safetensors import safe_open

    try:
        if not (directory / "tokenizer.json").is_file():
            return False
        read_config(directory)
        with safe_open(directory / "model.safetensors", framework="pt", device="cpu") as weights:
            return bool(list(weights.keys()))
    except Exception:  # ModelError, SafetensorError, OSError: not a usable copy
        return False


def open_gguf(path: Path):
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path}: not a GGUF file (no GGUF magic at the start)")
    check_header_bounds(path)
    from gguf import GGUFReader
    try:
        return GGUFReader(path)
    except Exception as e:  # a truncated file fails deep inside numpy with ValueError, IndexError, ...
        raise ModelError(
            f"{path}: truncated or corrupt GGUF file ({path.stat().st_size} bytes; {type(e).__name__}: {e})") from None


def read_gguf_config(reader, path: Path) -> ModelConfig:
    from gguf import GGUFValueType
    meta = {key: field.contents() for key, field in reader.fields.items() if field.types[0] != GGUFValueType.ARRAY}
    if "llama.vocab_size" not in meta and "tokenizer.ggml.tokens" in reader.fields:
        meta["llama.vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise UnsupportedModelError(
            f"{path}: per-frequency rope factors (rope_freqs, Llama 3.1 style) are not supported in GGUF; "
            "use the Hugging Face checkpoint")
    return ModelConfig.from_gguf(meta, str(path), tied="output.weight" not in names)


def check_tensor_types(reader, path: Path) -> None:
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise UnsupportedModelError(
                f"{path}: tensor {t.name} has quantization {t.tensor_type.name}, which is not supported "
                f"(supported: {', '.join(SUPPORTED_TYPES)})")


def check_tensor_layout(reader, path: Path) -> None:
    """Every tensor's bytes inside the file's data section, at the header's alignment, none overlapping another.
    The gguf reader takes offsets as they are written: one of 2**64 - 32 read the header's padding as a norm,
    tensors all at offset 0 alias each other (a 2 MB file then converts into a cache entry of any size)."""
    start, size = reader.data_offset, path.stat().st_size
    spans = sorted((int(t.data_offset), int(t.data_offset) + int(t.n_bytes), t.name) for t in reader.tensors)
    for begin, end, name in spans:
        if begin < start or end > size or (begin - start) % reader.alignment:
            raise ModelError(f"{path}: tensor {name} lies outside the file's data section or off its "
                             f"{reader.alignment}-byte alignment (corrupt file)")
    for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise ModelError(f"{path}: tensors {name} and {other} overlap (corrupt file)")


def check_tensor_shapes(reader, config: ModelConfig, path: Path) -> None:
    """The file's tensors against those its metadata implies, before any is dequantized: a GGUF whose metadata
    contradicts its tensors (a block count of 1,000 over 30 blocks) is refused at once, not converted and cached in
    full first. The loader's own checks (`hf.load_weights`: unexpected, misshapen and missing tensors) over a model
    and tensors on the meta device: shapes only, no memory."""
    from models.llama import Transformer
    from models.loading.hf import load_weights

    with torch.device("meta"):
        load_weights(Transformer(config), ((hf_name(t.name, path), torch.empty(tuple(reversed(t.shape.tolist()))))
                                           for t in reader.tensors), str(path))


def hf_name(name: str, path: Path) -> str:
    """llama.cpp's tensor name -> Hugging Face Llama's ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight")."""
    if name in TOP_LEVEL_NAMES:
        return TOP_LEVEL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in BLOCK_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.weight"
    raise UnsupportedModelError(f"{path}: unexpected tensor {name} (not a plain Llama GGUF)")


def to_torch(tensor, config: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    """One GGUF tensor dequantized to `dtype`, in HF's layout (q/k rows un-permuted)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    shape = tuple(reversed([int(n) for n in tensor.shape]))      # GGUF lists dims innermost first
    if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        array = tensor.data
    else:
        array = dequantize(tensor.data, tensor.tensor_type)        # float32
    weight = torch.from_numpy(np.array(array).reshape(shape)).to(dtype)   # np.array: a writable copy of the mmap
    if tensor.name.endswith("attn_q.weight"):
        weight = unpermute_rope_rows(weight, config.n_heads)
    elif tensor.name.endswith("attn_k.weight"):
        weight = unpermute_rope_rows(weight, config.n_kv_heads)
    return weight


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's converter, which interleaves each head's rotary halves for its rope kernel.

    Within a head, HF's rows are [x0 .. x(D/2-1), y0 .. y(D/2-1)]; GGUF stores them as [x0, y0, x1, y1, ...].
    """
    out_features, in_features = weight.shape
    return (weight.reshape(n_heads, out_features // n_heads // 2, 2, in_features)
            .transpose(1, 2).reshape(out_features, in_features))


def gguf_tokenizer(path: Path):
    """transformers builds a fast tokenizer from the file's tokenizer.ggml.* metadata (slow: seconds)."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
    except Exception as e:  # transformers raises anything from KeyError to ValueError here
        raise ModelError(f"{path}: cannot build the tokenizer from the GGUF metadata ({type(e).__name__}: {e})") from None
