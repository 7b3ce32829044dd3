"""Hugging Face checkpoint directories: config.json, (sharded) safetensors or .bin weights, tokenizer files.

The model is built on the meta device and each checkpoint tensor is copied straight into its slot on
the target device, so loading never holds a second copy of the weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from models.config import ModelConfig
from models.errors import MismatchError, ModelError, ModelNotFoundError, UnsupportedModelError
from models.int8_loading import Int8Loader
from models.llama import Transformer, hf_tensor_slots
from models.loading import checkpoint_config
from models.loading.lfs import pointer_message
from models.weights_memory import weights_fit

IGNORED_TENSORS = ("rotary_emb.inv_freq",)   # recomputed, and stored only by old checkpoints
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")   # what a tokenizer can be built from
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
MAX_JSON_BYTES = 64 * 1024 * 1024     # configs and shard indexes are far smaller
# Tokens that llama.cpp ends every generation at when a vocabulary has them (llama_vocab_is_eog: its
# end-of-generation set, src/llama-vocab.cpp, found by their text), besides the EOS ids: CodeLlama's end of an infill
# (▁<EOT>, 32010, which its GGUFs name as EOT), chat models' ends of turn, <|endoftext|> (SmolLM2's 0), and the
# fill-in-the-middle pad, repository and file-separator tokens (SmolLM2's <reponame>, 4; Qwen2.5-Coder's
# <|fim_pad|>, <|repo_name|>, <|file_sep|>).
END_OF_TEXT_TOKENS = ("\u2581<EOT>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|eot_id|>", "<|eom_id|>", "<|im_end|>",
                      "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>",
                      "</s>", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                      "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[")
FIM_END_TOKENS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",                 # llama.cpp's FIM_PAD,
                  "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",     # FIM_REP,
                  "<|file_sep|>")                                                            # FIM_SEP


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: object             # a transformers PreTrainedTokenizerBase
    eos_token_ids: tuple[int, ...]


def read_json(path: Path) -> dict:
    """A JSON object from a checkpoint file; anything else (too large, not JSON, not an object) is a ModelError."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ModelError(f"{path}: {path.stat().st_size:,} bytes is too large for a JSON config")
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:    # ValueError: bad UTF-8 or JSON, a 5,000-digit integer
        raise ModelError(pointer_message(path) or f"{path}: unreadable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: not a JSON object (a {type(value).__name__})")
    return value


def read_config(directory: Path) -> ModelConfig:
    path = checkpoint_config(directory)
    return ModelConfig.from_hf(read_json(path), str(path))


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files, in transformers' order (`_get_resolved_checkpoint_files`): model.safetensors, its
    index's shards, pytorch_model.bin, its index's shards; the first found is read, whatever else lies beside it (a
    stale single file beside complete shards wins, as there). Shards without an index, last: by their names."""
    layouts = (("model.safetensors", "model.safetensors.index.json", "*.safetensors"),
               ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model*.bin"))
    for single, index_name, _ in layouts:
        if (directory / single).is_file():
            return [directory / single]
        index = directory / index_name
        if index.is_file():
            return _indexed_shards(index)
    for _, _, pattern in layouts:
        if files := sorted(directory.glob(pattern)):
            return files
    raise ModelNotFoundError(f"{directory}: no weights (model.safetensors or pytorch_model.bin)")


def _indexed_shards(index: Path) -> list[Path]:
    """The shard files an index's weight_map names, each a file of the index's folder and present."""
    weight_map = read_json(index).get("weight_map", {})
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ModelError(f"{index}: weight_map must map tensor names to file names")
    # Names inside the folder: an index is data and must not send the loader elsewhere (lexically: a hub
    # snapshot's weights are links into its blobs/ folder, which is fine).
    outside = next((f for f in weight_map.values() if Path(f).is_absolute() or ".." in Path(f).parts), None)
    if outside is not None:
        raise ModelError(f"{index}: shard {outside!r} is not a file of the checkpoint's folder")
    files = [index.parent / f for f in sorted(set(weight_map.values()))]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise ModelNotFoundError(f"{missing}: listed in {index.name} but missing")
    return files


def _unopenable(path: Path) -> str | None:
    """Why the system will not open `path` (None: it will): safetensors reports every failure to open, a file of mode
    000 included, as "No such file or directory". (Opened without blocking: a FIFO would wait for a writer.)"""
    try:
        os.close(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except OSError as e:
        return f"{path}: cannot read it ({e.strerror or e})"
    return None


def iter_tensors(files: list[Path], part=None, renamed: dict[str, str] | None = None
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, CPU tensor) for every tensor, one at a time (safetensors memory-mapped).

    part(name, shape) -> index or None: read only tensor[index] (a tensor-parallel rank's slice, models/tp.py).
    renamed: {stored name: name} for tensors read as another (`tie_as_stored`), before `part` sees them.
    """
    from safetensors import SafetensorError, safe_open

    renamed = renamed or {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(f, framework="pt", device="cpu") as st:
                    for stored in st.keys():
                        name = renamed.get(stored, stored)
                        index = None if part is None else part(name, st.get_slice(stored).get_shape())
                        yield name, st.get_tensor(stored) if index is None else st.get_slice(stored)[index]
            except (SafetensorError, OSError) as e:
                raise ModelError(pointer_message(f) or _unopenable(f)
                                 or f"{f}: unreadable safetensors file ({e})") from None
        else:
            try:
                state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # pickle and zip errors come in many types
                raise ModelError(pointer_message(f) or f"{f}: unreadable PyTorch weights ({e})") from None
            if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
                raise ModelError(f"{f}: not a state dict of tensors (a {type(state).__name__})")
            for stored, tensor in state.items():
                name = renamed.get(stored, stored)
                index = None if part is None else part(name, tensor.shape)
                yield name, tensor if index is None else tensor[index]


def load_weights(model: Transformer, tensors: Iterator[tuple[str, torch.Tensor]], source: str,
                 slots: dict[str, torch.Tensor] | None = None) -> None:
    """Copy HF-named tensors into the model (casting to its dtype and device); every slot must be filled.

    slots: where each tensor goes (default `hf_tensor_slots(model)`): a tensor, or anything with its `shape` and
    `copy_` (an int8 projection's rows: `models.int8_loading.Int8Slot`).
    """
    names = set(slots := dict(hf_tensor_slots(model) if slots is None else slots))
    for name, tensor in tensors:
        if name.endswith(IGNORED_TENSORS) or (name == "lm_head.weight" and model.config.tie_embeddings):
            continue
        slot = slots.pop(name, None)
        if slot is None and name in names:  # a folder holding two shardings of one checkpoint, with no index
            raise UnsupportedModelError(f"{source}: tensor {name} is stored twice (in two weight files?)")
        if slot is None:
            raise UnsupportedModelError(f"{source}: unexpected tensor {name} (not a plain Llama checkpoint)")
        if slot.shape != tensor.shape:
            raise UnsupportedModelError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the config implies {tuple(slot.shape)}")
        if tensor.dtype not in WEIGHT_DTYPES:   # an int8 or fp8 tensor would be copied as numbers, without its scales
            raise UnsupportedModelError(
                f"{source}: tensor {name} is {str(tensor.dtype).removeprefix('torch.')}; weights load from float16, "
                "bfloat16 or float32 checkpoints (a quantized one: its GGUF)")
        slot.copy_(tensor)
    if slots:
        missing = sorted(slots)
        raise UnsupportedModelError(
            f"{source}: checkpoint lacks {len(missing)} tensors, e.g. {', '.join(missing[:3])}")


HEAD, EMBEDDINGS = "lm_head.weight", "model.embed_tokens.weight"


def tie_as_stored(config: ModelConfig, files: list[Path]) -> tuple[ModelConfig, dict[str, str]]:
    """`config` as the checkpoint's tensors have it, and the tensors to read under another name ({stored: read as}).

    tie_word_embeddings with an lm_head.weight stored unlike the embeddings: transformers 5 keeps the two apart (tying
    would drop the stored head without a word), so the config comes back untied. With only the head stored (no
    embeddings): transformers fills the tied pair from it, so the head is read as the embeddings (a tied model's
    output is the embedding table)."""
    if not config.tie_embeddings:
        return config, {}
    # Tensors read as empty slices cost nothing: the names first, the two tables only where both are stored (a
    # tied checkpoint rarely stores a head).
    names = {name for name, _ in iter_tensors(files, lambda name, shape: slice(0, 0) if len(shape) else None)}
    if HEAD in names and EMBEDDINGS not in names:
        return config, {HEAD: EMBEDDINGS}
    if HEAD not in names or EMBEDDINGS not in names:
        return config, {}
    wanted = (HEAD, EMBEDDINGS)
    stored = {name: tensor for name, tensor in
              iter_tensors(files, lambda name, shape: None if name in wanted or not len(shape) else slice(0, 0))
              if name in wanted}
    head, embeddings = (stored[name] for name in wanted)
    same = head.shape == embeddings.shape and torch.equal(head, embeddings.to(head.dtype))
    return (config if same else config.replace(tie_embeddings=False)), {}


def load_tokenizer(directory: Path):
    try:
        found = any((directory / f).is_file() for f in TOKENIZER_FILES)
    except OSError as e:        # a typed folder (random:PRESET:DIR) too long to be a path, or one we may not search
        raise ModelNotFoundError(f"{directory}: {e.strerror or e}") from None
    if not found:       # a mistyped random:PRESET:DIR is no folder at all: say that, not that its files are missing
        raise ModelNotFoundError(f"{directory}: " + ("no tokenizer files (tokenizer.json or tokenizer.model)"
                                                     if directory.is_dir() else "no such folder"))
    config = directory / "tokenizer_config.json"
    settings = read_json(config) if config.is_file() else {}
    generic = settings.get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES
    if "auto_map" in settings:      # the tokenizer's own Python code, which codecomplete never runs
        if not (directory / "tokenizer.json").is_file():
            raise UnsupportedModelError(f"{directory}: the tokenizer is Python code of the checkpoint's own "
                                        "(auto_map in tokenizer_config.json), which codecomplete never runs")
        generic = True              # tokenizer.json holds the whole tokenizer: the generic class reads it
    try:
        # The generic class is what AutoTokenizer would build, minus its ~2 s detour through the model config.
        # Never the folder's own code (an `auto_map` in tokenizer_config.json): transformers would otherwise ask
        # on stdin whether to run it, behind the spinner, and run it on a "y".
        # (AutoTokenizer imported only where it is used: importing it is 0.9 s of transformers' lazy modules)
        if generic:
            from transformers import PreTrainedTokenizerFast as tokenizer_class
        else:
            from transformers import AutoTokenizer as tokenizer_class
        tokenizer = tokenizer_class.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as e:  # transformers raises anything from OSError to ValueError here
        for name in TOKENIZER_FILES:
            if pointer := pointer_message(directory / name):
                raise ModelError(pointer) from None
        if not any((directory / name).is_file() for name in VOCABULARY_FILES):   # a partial download, most likely
            raise ModelNotFoundError(f"{directory}: no tokenizer.json or tokenizer.model (tokenizer_config.json "
                                     "describes a tokenizer, it does not hold one)") from None
        # Without tokenizer.json, transformers reads a SentencePiece tokenizer.model with sentencepiece and protobuf;
        # lacking them it tries the file as tiktoken's and asks for tiktoken, which would not help.
        alone = (directory / "tokenizer.model").is_file() and not (directory / "tokenizer.json").is_file()
        hint = ("; a tokenizer.model without tokenizer.json needs the sentencepiece and protobuf packages"
                if alone else "")
        raise ModelError(f"{directory}: cannot load the tokenizer ({type(e).__name__}: {e}){hint}") from None
    if not generic and _spaced_as_sentencepiece(tokenizer, directory):
        sentencepiece_spaces(tokenizer, True)
    return tokenizer


def check_vocabulary_fits(tokenizer, config: ModelConfig, source: str) -> None:
    """Refuse a tokenizer that makes ids the embedding table lacks (they failed only at the first request that held
    one). A table larger than the tokenizer (a padded vocabulary) is fine.

    The ids it makes: its vocabulary's pieces (any text), added tokens that text matches (the non-special ones), and of
    the special ones those a prompt is built with (BOS, EOS, unknown) or its chat template names. Other special tokens
    past the table are left: transformers' CodeLlamaTokenizer appends the infill tokens to a vocabulary that lacks
    them (34B's, the Python variants'), a fine-tune may add a <pad> without growing the table; transformers loads
    those too. (Its size and its added tokens, not the whole vocabulary, whose reading takes a tenth of a second.)"""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pieces = backend.get_vocab_size(with_added_tokens=False) if backend is not None else tokenizer.vocab_size
    made = [pieces - 1]             # that many distinct ids reach pieces - 1 at least
    if backend is not None and backend.model.id_to_token(config.vocab_size) is not None:
        made.append(config.vocab_size)      # (a vocabulary with gaps in its ids, reaching past the table)
    built_with = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    template = str(tokenizer.chat_template or "")
    made += [i for i, token in tokenizer.added_tokens_decoder.items()
             if not token.special or i in built_with or token.content in template]
    highest = max(made)
    if highest >= config.vocab_size:
        raise MismatchError(f"{source}: the tokenizer makes ids up to {highest:,} and the embedding table has "
                            f"{config.vocab_size:,} rows (vocab_size in config.json): the tokenizer is not this "
                            "model's")


def _spaced_as_sentencepiece(tokenizer, directory: Path) -> bool:
    """Whether the class rebuilt a Metaspace over a tokenizer.json that spaces text as SentencePiece does (a
    Prepend("▁") normalizer: CodeLlama's and Llama 2's own files), which transformers 5's Llama classes ignore."""
    from tokenizers import pre_tokenizers
    backend = getattr(tokenizer, "backend_tokenizer", None)
    path = directory / "tokenizer.json"
    if backend is None or not isinstance(backend.pre_tokenizer, pre_tokenizers.Metaspace) or not path.is_file():
        return False
    normalizer = read_json(path).get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer]) if isinstance(normalizer, dict) else []
    # exactly SentencePiece's two steps: a normalizer that does more is left as the class builds it
    return steps == [{"type": "Prepend", "prepend": "\u2581"},
                     {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]


def sentencepiece_spaces(tokenizer, add_space_prefix: bool) -> None:
    """Space text as SentencePiece and llama.cpp do: a space in front of the text and after each special token
    (unless the vocabulary says not to), then every space written "▁", so "  x" is "▁▁▁x". transformers 5 builds a
    sentencepiece vocabulary (a GGUF's, CodeLlama's and Llama 2's classes) with a Metaspace that adds no space in
    front of a text that starts with one ("▁▁x"): the first line of a prompt that starts indented (a file window
    cut at a block, a raw prompt) lost one space of its indentation, and the ids were not llama.cpp's."""
    from tokenizers import decoders, normalizers
    backend = tokenizer.backend_tokenizer
    prepend = [normalizers.Prepend("\u2581")] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence(prepend + [normalizers.Replace(" ", "\u2581")])
    backend.pre_tokenizer = None
    if not add_space_prefix:            # no space was added, so decoding removes none
        backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])


def eos_ids(directory: Path, config: ModelConfig, tokenizer) -> tuple[int, ...]:
    """The config's EOS ids, plus generation_config.json's and the tokenizer's (instruct models add some)."""
    ids = set(config.eos_token_ids)
    generation = directory / "generation_config.json"
    if generation.is_file():
        eos = read_json(generation).get("eos_token_id")
        # type(...) is int: JSON's true is a Python int (1), which made token 1 (BOS, often) a stop token
        ids.update(i for i in (eos if isinstance(eos, list) else [eos])
                   if type(i) is int and 0 <= i < config.vocab_size)
    return tuple(sorted(ids | set(end_of_generation_ids(tokenizer, config.vocab_size))))


def end_of_generation_ids(tokenizer, vocab_size: int) -> tuple[int, ...]:
    """The tokenizer's EOS and every token of its vocabulary that llama.cpp ends a generation at (END_OF_TEXT_TOKENS,
    FIM_END_TOKENS). CodeLlama ends an infill with <EOT> (32010), not EOS, and its configs do not list it; SmolLM2
    ends a document with <|endoftext|>: llama.cpp stops there for every prompt, so raw text or ids (a FIM prompt) stop
    here too, and llama.cpp's ignore_eos bans them all."""
    ids = set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
    for token in END_OF_TEXT_TOKENS + FIM_END_TOKENS:
        number = tokenizer.convert_tokens_to_ids(token)
        known = isinstance(number, int) and 0 <= number < vocab_size
        if known and tokenizer.convert_ids_to_tokens(number) == token:
            ids.add(number)
    return tuple(sorted(ids))


def check_special_files(directory: Path) -> None:
    """Refuse a checkpoint folder holding a FIFO or device where a file is read: reading it would block or
    never end (transformers opens several optional files by name)."""
    try:
        entries = list(directory.iterdir())
    except OSError as e:
        raise ModelError(f"{directory}: cannot list the checkpoint folder ({e.strerror or e})") from None
    for entry in entries:
        try:
            if not (entry.is_file() or entry.is_dir()) and entry.exists():
                raise ModelError(f"{entry}: not a regular file (a FIFO or device in the checkpoint folder)")
        except OSError as e:
            raise ModelError(f"{entry}: unreadable ({e.strerror or e})") from None


@contextmanager
def quantization_said(directory: Path, source: str):
    """A tensor the loader refuses in a quantized checkpoint (a quantization_config in config.json: GPTQ, AWQ,
    bitsandbytes ...) is refused as that: its packed integers and scales are why it is no plain Llama."""
    try:
        yield
    except UnsupportedModelError:
        settings = read_json(checkpoint_config(directory)).get("quantization_config")
        if not isinstance(settings, dict):
            raise
        method = settings.get("quant_method") or "an unnamed method"
        raise UnsupportedModelError(f"{source}: quantized with {method} (quantization_config in config.json), which "
                                    "is not supported: load the unquantized checkpoint, or a GGUF of it") from None


def load_hf_model(directory: Path, device: torch.device, dtype: torch.dtype, max_len: int | None = None,
                  name: str | None = None, tp=None, matmul_dtype: torch.dtype | None = None,
                  weights: str | None = None) -> LoadedModel:
    """Build the model on `device` in `dtype` from a checkpoint directory; max_len sizes the rotary table;
    `matmul_dtype`: the projections' weights in that dtype instead (`Transformer.materialize`); weights="int8":
    int8 projections, each quantized as its tensors are read (models/int8_loading.py).

    tp: a `models.tp.TensorParallel`: build this rank's part only, reading only its slices of the tensors.
    """
    check_special_files(directory)
    config = read_config(directory)
    files = weight_files(directory)
    config, renamed = tie_as_stored(config, files)
    tokenizer = load_tokenizer(directory)
    check_vocabulary_fits(tokenizer, config, name or str(directory))
    with weights_fit(name or str(directory), config, device, dtype, weights, matmul_dtype, tp), \
            quantization_said(directory, name or str(directory)):
        if tp is None:
            with torch.device("meta"):
                model = Transformer(config, max_len=max_len)
            model.materialize(device, dtype, matmul_dtype, weights)
            loader = Int8Loader(model)
            load_weights(model, iter_tensors(files, renamed=renamed), name or str(directory),
                         hf_tensor_slots(model, loader.slot))
            loader.finish()
        else:
            from models.tp import load_shard
            model = load_shard(config, tp, lambda part: iter_tensors(files, part, renamed), device, dtype, max_len,
                               name or str(directory), weights)
    return LoadedModel(model.eval(), tokenizer, eos_ids(directory, config, tokenizer))
