"""`ModelConfig`: the shape of a Llama-architecture model, from a HF config.json, GGUF metadata or a preset.

No torch here: the app can read a config (and the errors) without paying for the torch import.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from models.errors import ModelError, UnsupportedModelError

ROPE_SCALING_KINDS = ("linear", "dynamic", "llama3")
# Llama's computation by other names: Mistral is Llama with a sliding window (ModelConfig.sliding_window).
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
LLAMA_MODEL_TYPES = ("llama", "mistral")     # (AutoModelForCausalLM's choice, where no architectures are named)
MISTRAL_DEFAULT_WINDOW = 4096      # MistralConfig's sliding_window where config.json has none

# The largest value each shape field may take: far beyond any real Llama, small enough that a typo
# (or a hostile file) fails here rather than in a loop that builds a billion layers or in the allocator.
LIMITS = {"dim": 1 << 17, "n_layers": 1024, "n_heads": 4096, "n_kv_heads": 4096, "ffn_dim": 1 << 20,
          "vocab_size": 1 << 24, "head_dim": 2048, "max_positions": 1 << 24}
_REQUIRED = object()


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
    # Mistral's: each query attends to the last `sliding_window` keys only (itself included); None: to all of them.
    # Within the window that is plain causal attention, so the context is capped there (models.options).
    sliding_window: int | None = None

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedModelError(
                f"{self.n_heads} attention heads are not a multiple of {self.n_kv_heads} key/value heads")

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def dynamic_rope(self) -> bool:
        """Dynamic NTK scaling: the rotary frequencies depend on the call's length (past max_positions)."""
        return bool(self.rope_scaling and self.rope_scaling.kind == "dynamic")

    @property
    def context_limit(self) -> int:
        """Positions the model can address: dynamic NTK scaling stretches max_positions by its factor."""
        s = self.rope_scaling
        if not self.dynamic_rope:
            return self.max_positions
        # (a factor of 1e308 would overflow int(); more positions than LIMITS allows mean nothing anyway)
        return max(1, int(min(self.max_positions * s.factor, LIMITS["max_positions"])))

    def kv_bytes_per_token(self, element_size: int) -> int:
        """Bytes of K and V that one token occupies in the cache, over all layers."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * element_size

    # ---- Hugging Face config.json -------------------------------------------------------------

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str) -> ModelConfig:
        """Read a Llama config.json (dict); `source` names the file (or model) in error messages."""
        if not isinstance(hf, dict):
            raise ModelError(f"{source}: not a config object (a JSON {type(hf).__name__})")
        architectures = hf.get("architectures")
        arch = architectures[0] if isinstance(architectures, list) and architectures else hf.get("model_type", "?")
        if hf.get("model_type") not in LLAMA_MODEL_TYPES and arch not in LLAMA_ARCHITECTURES:
            raise UnsupportedModelError(f"{source}: architecture {arch!r} is not supported (only Llama-architecture "
                                        "models, LlamaForCausalLM, and Mistral's)")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise UnsupportedModelError(f"{source}: {key}=true is not supported (plain Llama has no biases)")
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):     # transformers: swish is SiLU by another name
            raise UnsupportedModelError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                               "vocab_size") if k not in hf]
        if missing:
            raise UnsupportedModelError(f"{source}: config lacks {', '.join(missing)}")
        theta, scaling = _hf_rope(hf, source)
        n_heads = _whole(hf, "num_attention_heads", source, LIMITS["n_heads"])
        # MistralConfig's defaults where a Mistral's config.json lacks the key (LlamaConfig's otherwise).
        mistral = hf.get("model_type") == "mistral" and arch != "LlamaForCausalLM"
        kv_heads = 8 if mistral and "num_key_value_heads" not in hf else n_heads
        return cls.checked(
            source,
            dim=_whole(hf, "hidden_size", source, LIMITS["dim"]),
            n_layers=_whole(hf, "num_hidden_layers", source, LIMITS["n_layers"]),
            n_heads=n_heads,
            n_kv_heads=_whole(hf, "num_key_value_heads", source, LIMITS["n_kv_heads"], default=None) or kv_heads,
            ffn_dim=_whole(hf, "intermediate_size", source, LIMITS["ffn_dim"]),
            vocab_size=_whole(hf, "vocab_size", source, LIMITS["vocab_size"]),
            head_dim=_whole(hf, "head_dim", source, LIMITS["head_dim"], default=None) or 0,
            norm_eps=_positive(hf, "rms_norm_eps", source, default=1e-6), rope_theta=theta, rope_scaling=scaling,
            max_positions=_whole(hf, "max_position_embeddings", source, LIMITS["max_positions"],
                                 default=4096 * 32 if mistral else 2048),
            tie_embeddings=_flag(hf, "tie_word_embeddings", source),
            bos_token_id=_token_ids(hf, "bos_token_id", source, default=None, single=True),
            eos_token_ids=_token_ids(hf, "eos_token_id", source, default=2),
            sliding_window=_sliding_window(hf, source),
        )

    @classmethod
    def checked(cls, source: str, **fields) -> ModelConfig:
        """A config whose fields were read from `source`, with the checks that involve several of them."""
        n_heads, n_kv_heads, head_dim = fields["n_heads"], fields["n_kv_heads"], fields.get("head_dim") or 0
        if n_heads % n_kv_heads:
            raise UnsupportedModelError(
                f"{source}: {n_heads} attention heads are not a multiple of {n_kv_heads} key/value heads")
        if not head_dim and fields["dim"] % n_heads:
            raise ModelError(f"{source}: the hidden size {fields['dim']} is not a multiple of "
                             f"{n_heads} attention heads, and no head_dim is given")
        if (head_dim or fields["dim"] // n_heads) % 2:
            raise ModelError(f"{source}: head dimension {head_dim or fields['dim'] // n_heads} is odd "
                             "(rotary embeddings need an even one)")
        return cls(**fields)

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

        def whole(key: str, limit: int, default: Any = _REQUIRED) -> Any:
            return _whole(meta, f"llama.{key}", source, limit, default=default)

        scaling = None
        # As llama.cpp reads them: no type means linear, the factor is rope.scaling.factor or (older files)
        # rope.scale_linear, and an absent or 0 factor means none.
        kind = get("rope.scaling.type", "linear")
        factor_key = "llama.rope.scaling.factor" if "llama.rope.scaling.factor" in meta else "llama.rope.scale_linear"
        if kind == "linear" and meta.get(factor_key) not in (None, 0):
            scaling = RopeScaling("linear", _positive(meta, factor_key, source))
        elif kind not in ("linear", "none"):
            raise UnsupportedModelError(f"{source}: GGUF rope scaling {kind!r} is not supported (only linear)")
        dim, n_heads = whole("embedding_length", LIMITS["dim"]), whole("attention.head_count", LIMITS["n_heads"])
        head_dim = whole("attention.key_length", LIMITS["head_dim"], None) or 0
        rotary = get("rope.dimension_count")
        rotated = head_dim or dim // n_heads
        if rotary is not None and rotary != rotated:   # llama.cpp refuses it too ("invalid n_rot")
            raise UnsupportedModelError(f"{source}: llama.rope.dimension_count {rotary!r} is not the head dim "
                                        f"{rotated} (rotary embeddings over part of a head are not supported)")
        value_length = get("attention.value_length")
        if value_length is not None and value_length != rotated:    # llama.cpp sizes the V heads by it
            raise UnsupportedModelError(f"{source}: llama.attention.value_length {value_length!r} is not the key "
                                        f"length {rotated} (value heads of another size are not supported)")
        attn_factor = get("rope.scaling.attn_factor")
        if attn_factor is not None and attn_factor != 1:  # llama.cpp: yarn_attn_factor *= it, for every architecture
            raise UnsupportedModelError(f"{source}: llama.rope.scaling.attn_factor {attn_factor!r} is not supported "
                                        "(llama.cpp scales the rotary cos and sin by it)")
        vocab = get("vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
        return cls.checked(
            source,
            dim=dim, n_layers=whole("block_count", LIMITS["n_layers"]),
            n_heads=n_heads, n_kv_heads=whole("attention.head_count_kv", LIMITS["n_kv_heads"], None) or n_heads,
            ffn_dim=whole("feed_forward_length", LIMITS["ffn_dim"]),
            vocab_size=_whole({"llama.vocab_size": vocab}, "llama.vocab_size", source, LIMITS["vocab_size"]),
            head_dim=head_dim,
            norm_eps=_positive(meta, "llama.attention.layer_norm_rms_epsilon", source, default=1e-5),
            rope_theta=_positive(meta, "llama.rope.freq_base", source, default=10_000.0), rope_scaling=scaling,
            max_positions=whole("context_length", LIMITS["max_positions"], 2048), tie_embeddings=tied,
            bos_token_id=_token_ids(meta, "tokenizer.ggml.bos_token_id", source, default=None, single=True),
            eos_token_ids=_token_ids(meta, "tokenizer.ggml.eos_token_id", source, default=None),
        )


def _whole(fields: dict[str, Any], key: str, source: str, limit: int, default: Any = _REQUIRED) -> Any:
    """fields[key] as a whole number in 1..limit (default when absent or null)."""
    value = fields.get(key)
    if value is None:
        if default is _REQUIRED:
            raise UnsupportedModelError(f"{source}: config lacks {key}")
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ModelError(f"{source}: {key} must be a whole number from 1 to {limit:,}, not {value!r}")
    return value


def _positive(fields: dict[str, Any], key: str, source: str, default: Any = _REQUIRED) -> float:
    """fields[key] as a finite number > 0 (default when absent or null)."""
    value = fields.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ModelError(f"{source}: config lacks {key}")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ModelError(f"{source}: {key} must be a positive number, not {value!r}")
    return float(value)


def _flag(fields: dict[str, Any], key: str, source: str) -> bool:
    value = fields.get(key, False)
    if not isinstance(value, bool):
        raise ModelError(f"{source}: {key} must be true or false, not {value!r}")
    return value


def _token_ids(fields: dict[str, Any], key: str, source: str, default: Any, single: bool = False):
    """A token id (single) or a tuple of them from an id, a list of ids or null."""
    value = fields.get(key, default)
    values = value if isinstance(value, list) and not single else [] if value is None else [value]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ModelError(f"{source}: {key} must be {'a token id' if single else 'a token id or a list of them'}"
                         f", not {value!r}")
    return (values[0] if values else None) if single else tuple(values)


def _sliding_window(hf: dict[str, Any], source: str) -> int | None:
    """A Mistral config's window (model_type "mistral", whatever its architectures say: AutoModelForCausalLM builds a
    MistralForCausalLM from it, which reads the window; MistralConfig's default is 4096), else None: transformers'
    Llama attends to every key, whatever the config holds."""
    if hf.get("model_type") != "mistral":
        return None
    return _whole(hf, "sliding_window", source, LIMITS["max_positions"], default=None) if "sliding_window" in hf \
        else MISTRAL_DEFAULT_WINDOW


def _checkpoint_name(source: str) -> str:
    """The lower-cased name of the checkpoint whose config.json `source` is: the folder holding it, and a hub cache's
    models--ORG--NAME where that folder is a snapshot's hash (not every folder above it: a user's ~/codellama-work/
    may hold any model)."""
    folders = PurePath(source).parent.parts
    hub = next((part for part in reversed(folders) if part.startswith("models--")), "")
    return f"{folders[-1] if folders else ''} {hub}".lower()


def _hf_rope(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from transformers 5's `rope_parameters` or the older rope_theta + rope_scaling."""
    given = {}
    for key in ("rope_scaling", "rope_parameters"):
        value = given[key] = hf.get(key)
        if value is not None and not isinstance(value, dict):
            raise ModelError(f"{source}: {key} must be an object, not {value!r}")
    # As transformers 5 reads them: a non-empty rope_scaling replaces rope_parameters whole (an old recipe's
    # rope_scaling added to a config saved with rope_parameters is what takes effect there).
    params: dict[str, Any] = dict(given["rope_scaling"] or given["rope_parameters"] or {})
    if "rope_theta" not in params and "rope_theta" in hf:
        params["rope_theta"] = hf["rope_theta"]
    # Converted CodeLlama configs often omit it; CodeLlama's is 1e6, not Llama 2's 1e4.
    default_theta = 1e6 if hf.get("vocab_size") == 32016 or "codellama" in _checkpoint_name(source) else 1e4
    theta = _positive(params, "rope_theta", source, default=default_theta)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ROPE_SCALING_KINDS:
        raise UnsupportedModelError(
            f"{source}: rope scaling {kind!r} is not supported (only {', '.join(ROPE_SCALING_KINDS)})")
    scaling = RopeScaling(kind, _positive(params, "factor", source))
    if kind == "llama3":
        # Where transformers looks for the training length: a top-level key first (Phi-3 keeps it there), then the
        # rope dict's, then max_position_embeddings, whose default is 2048.
        key = "original_max_position_embeddings"
        where = hf if hf.get(key) is not None else params if params.get(key) is not None else None
        original = (_whole(where, key, source, LIMITS["max_positions"]) if where is not None
                    else _whole(hf, "max_position_embeddings", source, LIMITS["max_positions"], default=2048))
        scaling = dataclasses.replace(
            scaling, low_freq_factor=_positive(params, "low_freq_factor", source),
            high_freq_factor=_positive(params, "high_freq_factor", source), original_max_positions=original)
    return theta, scaling


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
