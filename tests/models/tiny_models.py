"""Tiny checkpoints, tokenizers and GGUF files for the model tests (a module of its own: every
test folder's conftest is importable as `conftest`, so tests import helpers from here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

CORPUS = """def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()
""" * 20


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=1000.0, bos_token_id=1, eos_token_id=2,
            # Large weights give well-separated logits, so greedy choices never hinge on rounding.
            initializer_range=0.2)


def make_llama_tokenizer():
    """A Llama-style tokenizer: SentencePiece spaces (▁), BPE with byte fallback (<0xE2> pieces), BOS added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizer
    trained.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # learn "▁word" pieces
    trained.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=200, show_progress=False))
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(trained.get_vocab(), key=trained.get_vocab().get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) for m in json.loads(trained.to_str())["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def save_tiny_llama(directory: Path, tokenizer, *, n_kv_heads=4, rope_scaling=None, tie=False, seed=0, **config):
    """A random transformers LlamaForCausalLM saved with save_pretrained (plus the tokenizer); returns the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**{**TINY, **config, "vocab_size": len(tokenizer), "num_key_value_heads": n_kv_heads,
                               "rope_scaling": rope_scaling, "tie_word_embeddings": tie})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def cut_embedding_table(directory: Path, rows: int) -> None:
    """A saved tiny checkpoint's embedding table (and head) cut to its first ``rows`` rows, config.json's vocab_size
    with it: a model whose table ends before its tokenizer's ids do."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(directory / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[key] = tensors[key][:rows].contiguous()
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "vocab_size": rows}))


def _byte_level_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 single-byte tokens of a byte-level BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = dict(zip(printable, printable)) | {b: 256 + i for i, b in enumerate(others)}
    return [chr(table[b]) for b in range(256)]


GGUF_TOKENS = ["<|endoftext|>", "<s>", "</s>", *_byte_level_chars(), "Ġt", "he", "Ġthe"]


GGUF_MERGES = ["Ġ t", "h e", "Ġt he"]


# A sentencepiece vocabulary (tokenizer.ggml.model "llama", as CodeLlama's): byte fallback, merges from the scores.
SPM_TOKENS = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "▁", "x", "▁▁", "▁x", "▁▁▁▁", "=",
              "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]     # CodeLlama's infill tokens, as its files spell them
SPM_TYPES = [2, 3, 3] + [6] * 256 + [1] * 6 + [3] * 4     # unknown, control, byte, normal, control


GGUF_BLOCK_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows (interleaving each head's rotary halves)."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# Where each K-quant block keeps its float16 scales (d, dmin): random bytes everywhere else are valid quants.
K_QUANT_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(shape: tuple[int, ...], matrix_type: str, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of a K-quant, which gguf cannot write, with small positive scales (finite weights)."""
    import gguf
    qtype = gguf.GGMLQuantizationType[matrix_type]
    stored = rng.integers(0, 256, size=gguf.quant_shape_to_byte_shape(shape, qtype), dtype=np.uint8)
    blocks = stored.reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])
    for offset in K_QUANT_SCALES[matrix_type]:
        scales = rng.uniform(0.001, 0.02, len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return stored


def write_tiny_gguf(path: Path, *, architecture="llama", matrix_type="Q8_0", seed=0, block_count=None,
                    vocabulary="gpt2", width=None, pre="gpt-2"):
    """A tiny Llama GGUF written the way llama.cpp's converter writes one; `vocabulary`: "gpt2" (GGUF_TOKENS) or
    "llama" (SPM_TOKENS); `width`: the hidden and FFN size (K-quants need rows of 256), else TINY's; `pre`: a
    gpt2 vocabulary's tokenizer.ggml.pre (None: left out, as old conversions did).

    Returns the transformers model holding exactly the weights the file stores (the quantization
    round trip applied), so a correct loader reproduces its logits to float32 precision.
    """
    import gguf
    from gguf import GGMLQuantizationType as Q
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = GGUF_TOKENS if vocabulary == "gpt2" else SPM_TOKENS
    sizes = {"hidden_size": width, "intermediate_size": width} if width else {}
    hf_config = LlamaConfig(**{**TINY, **sizes, "vocab_size": len(tokens), "num_key_value_heads": 2})
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LlamaForCausalLM(hf_config).eval()
    qtype = Q[matrix_type]
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(TINY["max_position_embeddings"])
    writer.add_embedding_length(hf_config.hidden_size)
    writer.add_block_count(block_count or TINY["num_hidden_layers"])
    writer.add_feed_forward_length(hf_config.intermediate_size)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(TINY["rope_theta"])
    writer.add_layer_norm_rms_eps(TINY["rms_norm_eps"])
    writer.add_tokenizer_model(vocabulary)
    writer.add_token_list(tokens)
    if vocabulary == "gpt2":
        writer.add_token_types([3, 3, 3] + [1] * (len(GGUF_TOKENS) - 3))
        writer.add_token_merges(GGUF_MERGES)
        if pre:
            writer.add_tokenizer_pre(pre)
    else:
        writer.add_token_types(SPM_TYPES)
        writer.add_token_scores([0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0] + [0.0] * 4)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    top_level = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if name in top_level:
                gguf_name = top_level[name]
            else:
                _, _, layer, *rest = name.split(".")
                gguf_name = f"blk.{layer}.{GGUF_BLOCK_NAMES['.'.join(rest[:-1])]}.weight"
            array = param.numpy()
            if array.ndim == 1:
                writer.add_tensor(gguf_name, array)
                continue
            if qtype in (Q.F16, Q.F32):
                stored = array.astype(np.float16 if qtype == Q.F16 else np.float32)
                param.copy_(torch.from_numpy(stored.astype(np.float32)))
            elif matrix_type in K_QUANT_SCALES:     # gguf cannot write them: random blocks, read back by gguf
                stored = random_blocks(array.shape, matrix_type, rng)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(stored, qtype)))
            else:
                try:
                    stored = gguf.quants.quantize(array, qtype)
                    param.copy_(torch.from_numpy(gguf.quants.dequantize(stored, qtype)))
                except NotImplementedError:   # types gguf cannot write: the bytes need only be the right size
                    stored = np.zeros(gguf.quant_shape_to_byte_shape(array.shape, qtype), dtype=np.uint8)
            if gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
                stored = llama_cpp_permute(stored, 4 if "attn_q" in gguf_name else 2)
            writer.add_tensor(gguf_name, stored, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def load_error(spec, error_type, match, **kwargs) -> str:
    """load_model(spec) on the CPU must raise error_type with a message matching `match`; returns the message."""
    from models import load_model
    with pytest.raises(error_type, match=match) as error:
        load_model(spec, device="cpu", **kwargs)
    return str(error.value)
