"""How a byte-level BPE GGUF ("gpt2" vocabulary) splits text before BPE, by its `tokenizer.ggml.pre` name.

llama.cpp's converter names the split the model's own tokenizer makes (it recognises the tokenizer by the ids it
gives a test text); llama.cpp then applies a list of regexes for that name, each one splitting every piece the
previous ones left: the matches and the text between them both become pieces (tokenizers' `Split(...,
"isolated")`), and BPE runs inside each piece on its UTF-8 bytes. transformers builds a GGUF's tokenizer with
GPT-2's split unless it knows the name itself (5.24 knows the llama3, qwen2, tekken and gpt-4o families), so
SmolLM2's and StarCoder's digits one by one, DeepSeek-Coder's newlines alone and " = " whole were lost: on this
repository's Python files the ids changed in 29 of 188 files for SmolLM2 and 166 of 188 for DeepSeek-Coder.
Llama 3's family is set here too (transformers >= 5.0 is allowed, and it leaves out llama.cpp's ignore_merges).

SPLITS holds llama.cpp's regexes as data, from ggml-org/llama.cpp src/llama-vocab.cpp (commit 00ad355e): the
names in `llama_vocab::impl::load` and the `regex_exprs` of each pre-type in `llm_tokenizer_bpe`'s constructor.
"""

from __future__ import annotations

# GPT-2's split (what transformers applies to a name it does not know). llama.cpp's list leaves off GPT-2's final
# `|\s+`, which changes nothing: the text between matches becomes a piece anyway.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

# Llama 3's, with llama.cpp's spelling of the case-insensitive contractions.
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Characters past ASCII as escapes: an editor or a copy that normalises Unicode (NFC) turns some of them (the Ohm and
# Kelvin signs, Greek with oxia) into others, silently moving these classes' bounds.
CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370"
    "-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-"
    "\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf"
    "\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50"
    "-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183"
    "\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f"
    "\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400"
    "-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0"
    "-\U000118df\U0001e900-\U0001e943]+")
DEEPSEEK_LLM_PUNCTUATION = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
VIKING = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"

STARCODER = (r"\p{N}", GPT2)        # digits one by one, then GPT-2's split

# The names llama.cpp gives Llama 3's pre-type (LLAMA_VOCAB_PRE_TYPE_LLAMA3), which alone sets ignore_merges.
LLAMA3_NAMES = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                "jina-v5-nano")

SPLITS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys((*LLAMA3_NAMES, "dbrx", "smaug-bpe"), (LLAMA3,)),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
                    STARCODER),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"),
    "deepseek-llm": ("[\r\n]", DEEPSEEK_LLM_LETTERS, DEEPSEEK_LLM_PUNCTUATION, r"\s+$", CJK, r"\p{N}+"),
    "seed-coder": (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}"
                   r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "viking": (VIKING, r"\p{N}"),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"),
    "default": (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
}

# For these llama.cpp takes a piece that is a whole token of the vocabulary as that token, merges or not (as
# tiktoken does, and Llama 3's tokenizer.json: "ignore_merges": true). Not for dbrx and smaug-bpe: llama.cpp splits
# them as Llama 3 but goes by their merges.
IGNORE_MERGES = set(LLAMA3_NAMES)

# Names llama.cpp splits with GPT-2's regex alone: transformers' default is right for them.
GPT2_NAMES = {"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
              "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4", "jina-v1-en",
              "jina-v2-code", "roberta-bpe"}


def split_as_llama_cpp(tokenizer, name: str | None) -> str | None:
    """Give `tokenizer` (transformers' fast tokenizer of a byte-level BPE GGUF) the split llama.cpp applies for the
    pre-tokenizer `name`. Returns a one-line warning where that split is not known here: the tokenizer then keeps
    transformers' own split."""
    from tokenizers import Regex, pre_tokenizers

    backend = tokenizer.backend_tokenizer
    if name in SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [*(pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in SPLITS[name]),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        if name in IGNORE_MERGES:
            backend.model.ignore_merges = True
        return None
    if not name:
        return ("the GGUF names no pre-tokenizer (tokenizer.ggml.pre: converted by an old llama.cpp?), so its text "
                "is split as GPT-2 splits it, maybe unlike the model's training; a fresh conversion names it")
    if name in GPT2_NAMES or not isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel):
        return None                     # GPT-2's split, or one transformers set for this name itself
    return (f"the GGUF's pre-tokenizer {name!r} is unknown here, so its text is split as GPT-2 splits it, maybe "
            "unlike the model's training")
