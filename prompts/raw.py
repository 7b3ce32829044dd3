"""A raw text prompt (the model continues it as it is), with its last token healed like a completion's.

A client's prompt ends wherever its user stopped typing: after a space, inside a name. As in a completion
(``completion._partial_token``), the prompt ends one token earlier and the generation must begin with that
token's text (``PackedPrompt.heal_text``), which is not repeated in the output. Special-token text in the prompt
becomes those tokens, as ``tokenizer.encode`` makes it; a prompt that ends with a special token, or is one token
long, is not healed; one holding the text of a special token the model cannot embed (CodeLlama-34B's tokenizer
appends the infill tokens past its table) is refused (``check_embedded``). A prompt with "\\r\\n" line ends (a
Windows file's text, as Continue sends it) is read with "\\n", as a completion's file is (``PackedPrompt.line_end``
keeps which); other text, a lone "\\r" too, as it is.
"""

from __future__ import annotations

from .errors import PromptError
from .packing import PackedPrompt
from .scan import line_end
from .tokens import embedded_rows


def build_raw_prompt(tokenizer, text: str, *, heal: bool = True) -> PackedPrompt:
    ends = line_end(text, lone_cr=False)        # (a lone "\r" is read as it is: the answer is the model's too)
    text = text.replace("\r\n", "\n")
    ids = tokenizer.encode(text)
    check_embedded(tokenizer, ids)
    heal_text = _partial_token(tokenizer, text, ids) if heal else ""
    if heal_text:
        ids = tokenizer.encode(text[: len(text) - len(heal_text)])
    return PackedPrompt(ids, [], [], [], "raw", heal_text=heal_text, line_end=ends)


def check_embedded(tokenizer, ids: list[int]) -> None:
    """Refuse ids the model cannot embed (the rows ``encoder_for`` was told for ``tokenizer``; never told: any) that a
    client's text made of special-token text, in one line naming the token (the model failed on them, where a
    transformers model fails too; llama.cpp's vocabulary of such a model has no such token at all)."""
    rows = embedded_rows(tokenizer)
    past = next((i for i in ids if rows is not None and i >= rows), None)
    if past is not None:
        raise PromptError(f"the text holds {tokenizer.convert_ids_to_tokens(past)!r}, a special token past the "
                          f"model's embedding table (id {past:,}; the table has {rows:,} rows): this model cannot "
                          "read it")


def _partial_token(tokenizer, text: str, ids: list[int]) -> str:
    """The text of the prompt's last token when it is ordinary text ending the prompt, else ""."""
    if len(ids) < 2 or not text:
        return ""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if ids[-1] in special:
        return ""
    try:
        encoded = tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):   # a slow tokenizer has no offsets: no healing
        return ""
    offsets = encoded["offset_mapping"]
    if list(encoded["input_ids"]) != list(ids) or not offsets:
        return ""
    start, end = offsets[-1]
    if end != len(text) or not 0 < start < end:
        return ""
    return text[start:]
