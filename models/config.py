"""`ModelConfig`: the shape of a Llama-architecture model, from a HF config.json, GGUF metadata or a preset.

No torch here: the app can read a config (and the errors) without paying for the torch import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from models.errors import UnsupportedModelError

ROPE_SCALING_KINDS = ("linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched beyond the training length (HF `rope_parameters`)."""
    kind: str                          # "linear" | "dynamic" | "llama3"
    factor: float
    low_freq_factor: float = 1.0       # llama3 only
    high_freq_factor: float = 4.0      # llama3 only
    original_max_positions: int = 0    # llama3 only: the pre-extension training length


@dataclass(frozen=True)
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    head_dim: int = 0                  # 0 -> dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    max_positions: int = 4096          # the model's own position limit (max_position_embeddings)
    tie_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedModelError(
                f"{self.n_heads} attention heads are not a multiple of {self.n_kv_heads} key/value heads")

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def context_limit(self) -> int:
        """Positions the model can address: dynamic NTK scaling stretches max_positions by its factor."""
        s = self.rope_scaling
        return int(self.max_positions * s.factor) if s and s.kind == "dynamic" else self.max_positions

    def kv_bytes_per_token(self, element_size: int) -> int:
        """Bytes of K and V that one token occupies in the cache, over all layers."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * element_size

    # ---- Hugging Face config.json -------------------------------------------------------------

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str) -> ModelConfig:
        """Read a Llama config.json (dict); `source` names the file (or model) in error messages."""
        arch = (hf.get("architectures") or [hf.get("model_type", "?")])[0]
        if hf.get("model_type") != "llama" and arch != "LlamaForCausalLM":
            raise UnsupportedModelError(
                f"{source}: architecture {arch!r} is not supported (only Llama-architecture models, LlamaForCausalLM)")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise UnsupportedModelError(f"{source}: {key}=true is not supported (plain Llama has no biases)")
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                               "vocab_size") if k not in hf]
        if missing:
            raise UnsupportedModelError(f"{source}: config lacks {', '.join(missing)}")
        theta, scaling = _hf_rope(hf, source)
        eos = hf.get("eos_token_id", 2)
        return cls(
            dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            ffn_dim=hf["intermediate_size"], vocab_size=hf["vocab_size"], head_dim=hf.get("head_dim") or 0,
            norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
            max_positions=hf.get("max_position_embeddings", 2048),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,)),
        )

    def to_hf(self) -> dict[str, Any]:
        """The config.json that transformers' LlamaForCausalLM (and `from_hf`) read back as this config."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if s := self.rope_scaling:
            rope.update(rope_type=s.kind, factor=s.factor)
            if s.kind == "llama3":
                rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                            original_max_position_embeddings=s.original_max_positions)
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.dim, "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim, "intermediate_size": self.ffn_dim, "vocab_size": self.vocab_size,
            "rms_norm_eps": self.norm_eps, "rope_parameters": rope, "max_position_embeddings": self.max_positions,
            "tie_word_embeddings": self.tie_embeddings, "hidden_act": "silu",
            "bos_token_id": self.bos_token_id, "eos_token_id": list(self.eos_token_ids),
        }

    # ---- GGUF metadata ------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, meta: dict[str, Any], source: str, *, tied: bool) -> ModelConfig:
        """Read llama.cpp's metadata keys; `tied` says whether the file lacks an output.weight tensor."""
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise UnsupportedModelError(
                f"{source}: GGUF architecture {arch!r} is not supported (only 'llama')")

        def get(key: str, default: Any = None) -> Any:
            return meta.get(f"llama.{key}", default)

        missing = [k for k in ("embedding_length", "block_count", "attention.head_count", "feed_forward_length")
                   if get(k) is None]
        if missing:
            raise UnsupportedModelError(f"{source}: GGUF metadata lacks llama.{', llama.'.join(missing)}")
        n_heads = get("attention.head_count")
        scaling = None
        kind = get("rope.scaling.type", "none")
        if kind == "linear":
            scaling = RopeScaling("linear", float(get("rope.scaling.factor")))
        elif kind != "none":
            raise UnsupportedModelError(f"{source}: GGUF rope scaling {kind!r} is not supported (only linear)")
        vocab = get("vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
        eos = meta.get("tokenizer.ggml.eos_token_id")
        return cls(
            dim=get("embedding_length"), n_layers=get("block_count"), n_heads=n_heads,
            n_kv_heads=get("attention.head_count_kv") or n_heads, ffn_dim=get("feed_forward_length"),
            vocab_size=vocab, head_dim=get("attention.key_length") or 0,
            norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10_000.0)), rope_scaling=scaling,
            max_positions=get("context_length", 2048), tie_embeddings=tied,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=() if eos is None else (eos,),
        )


def _hf_rope(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from transformers 5's `rope_parameters` or the older rope_theta + rope_scaling."""
    params = dict(hf.get("rope_scaling") or {})
    params.update(hf.get("rope_parameters") or {})
    theta = params.get("rope_theta", hf.get("rope_theta"))
    if theta is None:
        # Converted CodeLlama configs often omit it; CodeLlama's is 1e6, not Llama 2's 1e4.
        theta = 1e6 if hf.get("vocab_size") == 32016 or "codellama" in source.lower() else 1e4
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind not in ROPE_SCALING_KINDS:
        raise UnsupportedModelError(
            f"{source}: rope scaling {kind!r} is not supported (only {', '.join(ROPE_SCALING_KINDS)})")
    scaling = RopeScaling(kind, float(params["factor"]))
    if kind == "llama3":
        scaling = dataclasses.replace(
            scaling, low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_positions=int(params.get("original_max_position_embeddings",
                                                  hf.get("max_position_embeddings", 8192))))
    return float(theta), scaling


_CODELLAMA = dict(norm_eps=1e-5, rope_theta=1e6, max_positions=16384, bos_token_id=1, eos_token_ids=(2,))
PRESETS: dict[str, ModelConfig] = {
    "CodeLlama-7B": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
                                vocab_size=32016, **_CODELLAMA),
    "CodeLlama-13B": ModelConfig(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, ffn_dim=13824,
                                 vocab_size=32016, **_CODELLAMA),
    "CodeLlama-34B": ModelConfig(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, ffn_dim=22016,
                                 vocab_size=32000, **_CODELLAMA),
    # 138 GB of bf16 weights: split over GPUs (models/tp.py), e.g. `--gpus 2`.
    "CodeLlama-70B": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
                                 vocab_size=32016, **_CODELLAMA),
    "SmolLM2-135M": ModelConfig(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536, vocab_size=49152,
                                norm_eps=1e-5, rope_theta=1e5, max_positions=8192, tie_embeddings=True,
                                bos_token_id=1, eos_token_ids=(2,)),
}


def preset(name: str) -> ModelConfig:
    """A named preset, case-insensitively ("codellama-7b" works)."""
    for key, config in PRESETS.items():
        if key.lower() == name.lower():
            return config
    raise UnsupportedModelError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
