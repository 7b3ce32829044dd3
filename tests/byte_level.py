"""A byte-level BPE tokenizer built in memory, for tests in any folder: every byte a token (no merges), so text
round-trips exactly, with the given special tokens first (FIM, file separators)."""
from __future__ import annotations


def byte_level_tokenizer(specials: list[str], *, eos_token: str, bos_token: str | None = None):
    """A byte-level BPE tokenizer (no merges: exact round trips) whose ids start with `specials`; `bos_token`
    opens every encoding."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(specials)}
    for character in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[character] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if bos_token is not None:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos_token} $A",
                                                               special_tokens=[(bos_token, vocab[bos_token])])
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos_token, eos_token=eos_token)
