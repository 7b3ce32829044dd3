"""Token healing in the engine: the generation begins with the required prefix, matched token by token under a
constraint, and the prefix never shows in the returned or streamed text; stop strings apply after it."""

import dataclasses

import pytest

from models import GenerationConfig, load_model
from models.healing import HealingConstraint, token_bytes, vocabulary_bytes
from models.tokenizer import IncrementalDetokenizer

TEXTS = ["def area(r):\n    return 3.14 * r ** 2\n", "x = 'héllo 🙂'  # ünïcode ✓\n", "\tindent  two  spaces\n"]
PREFIXES = [" ", "ret", "\n    ", "é", "x = 1", "🙂"]


@pytest.fixture(scope="module")
def tiny_engine(tiny_checkpoint):
    return load_model(tiny_checkpoint[0], device="cpu", max_context=48)


def test_token_bytes_spell_exactly_what_the_tokenizers_encode(llama_tokenizer, smollm_engine):
    for tokenizer, lead in ((llama_tokenizer, b" "), (smollm_engine.tokenizer, b"")):  # SentencePiece adds "▁"
        pieces = token_bytes(tokenizer)
        for text in TEXTS:
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert b"".join(pieces[i] for i in ids) == lead + text.encode("utf-8")
        assert all(pieces[i] is None for i in tokenizer.all_special_ids)


def test_a_byte_level_token_has_bytes_only_where_each_character_is_of_the_byte_alphabet():
    """GPT-2's alphabet: printable Latin-1 stands for itself, the other bytes for U+0100 on; a token holding any other
    character (a raw space or control character, a CJK character: an added token's) never heals."""
    from models.healing import _byte_level_bytes

    assert _byte_level_bytes("\u0120hi") == b" hi" and _byte_level_bytes("\u010a") == b"\n"
    assert _byte_level_bytes("\u00e9\u0100\u0143") == b"\xe9\x00\xad"
    assert [_byte_level_bytes(token) for token in ("a b", "\t", "\x7f", "\u00ad", "\u4e2d", "\u0144")] == [None] * 6


@pytest.mark.parametrize("remaining", [b" ", b"\n    ", b"ar", b"return", "é".encode()[:1], b"\xff\xff"])
def test_allowed_tokens_are_exactly_those_inside_the_prefix_or_covering_it(smollm_engine, llama_tokenizer, remaining):
    for tokenizer in (smollm_engine.tokenizer, llama_tokenizer):
        table = vocabulary_bytes(tokenizer)
        expected = {i for i, p in enumerate(table.pieces) if p and (remaining.startswith(p) or p.startswith(remaining))}
        assert sorted(table.allowed(remaining)) == sorted(expected)


def test_the_constraint_masks_each_row_until_its_prefix_is_written(llama_tokenizer):
    import torch

    table = vocabulary_bytes(llama_tokenizer)
    constraint = HealingConstraint(table, "ab", batch=2)
    logits = torch.zeros(2, len(table.pieces))
    allowed = torch.isfinite(constraint.restrict(logits))
    assert {i for i in allowed[0].nonzero().flatten().tolist()} == set(table.allowed(b"ab"))
    a = llama_tokenizer.convert_tokens_to_ids("a")
    constraint.advance([a, a])
    assert constraint.remaining == [b"b", b"b"] and constraint.active
    b_token = llama_tokenizer.convert_tokens_to_ids("b")
    constraint.advance([b_token, a])  # row 1 took a token the mask forbade: it gives up rather than loop
    assert not constraint.active
    assert torch.equal(constraint.restrict(logits), logits)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_weights_still_write_the_prefix_first_and_never_show_it(tiny_engine, temperature):
    """Whatever the model prefers, the first tokens spell the prefix (byte pieces included), and the returned
    and streamed text are exactly the generation after it."""
    tokenizer = tiny_engine.tokenizer
    pieces = token_bytes(tokenizer)
    prompt = tokenizer.encode("class Stack:\n    def push(self, item):\n")
    for prefix in PREFIXES:
        deltas = []
        config = GenerationConfig(max_new_tokens=10, temperature=temperature, seed=3, required_prefix=prefix)
        result = tiny_engine.generate(prompt, config, on_text=deltas.append)
        ids = [i for i in result.token_ids if i not in tiny_engine.eos_token_ids]
        assert b"".join(pieces[i] for i in ids).startswith(prefix.encode("utf-8")), prefix
        detokenizer = IncrementalDetokenizer(tokenizer, prompt)  # the text as the engine reads it
        generated = "".join(detokenizer.push(i) for i in ids) + detokenizer.flush()
        assert generated.startswith(prefix)
        assert result.text == generated[len(prefix):] == "".join(deltas)


AREA = """import math

def polygon_area(poly):
    return 0.5 * abs(sum(x0*y1 - x1*y0 for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1])))

def report(poly):
    area ="""

def test_a_cursor_after_a_space_is_healed_into_the_call_the_model_means(smollm_engine):
    """The issue's example: after `area = ` the model sees a lone space token and writes a number; healed, the
    prompt ends at `area =` and the first token must begin with a space: ` polygon`."""
    tokenizer = smollm_engine.tokenizer
    lone_space = smollm_engine.generate(tokenizer.encode(AREA + " "), GenerationConfig(max_new_tokens=8,
                                                                                        stop_strings=("\n",)))
    assert not lone_space.text.startswith("polygon_area")
    deltas = []
    healed = smollm_engine.generate(tokenizer.encode(AREA), GenerationConfig(
        max_new_tokens=12, stop_strings=("\n",), required_prefix=" "), on_text=deltas.append)
    assert healed.text == "polygon_area(poly)" == "".join(deltas)
    assert healed.finish_reason == "stop"
    assert tokenizer.decode(healed.token_ids).startswith(" polygon_area(poly)")


def test_a_healed_newline_does_not_trip_the_newline_stop_string(smollm_engine):
    """A cursor after indentation: the removed text is a newline and four spaces; the stop string at the end of
    the line applies to what follows it, and the line comes out without extra indentation."""
    prompt = smollm_engine.tokenizer.encode(AREA.rsplit("\n", 1)[0])  # up to `def report(poly):`
    deltas = []
    result = smollm_engine.generate(prompt, GenerationConfig(
        max_new_tokens=16, stop_strings=("\n",), required_prefix="\n    "), on_text=deltas.append)
    assert result.finish_reason == "stop" and result.text.strip()
    assert not result.text[0].isspace() and "\n" not in result.text
    assert "".join(deltas) == result.text


@pytest.mark.parametrize("speculate", [0, 4])
def test_max_new_tokens_counts_tokens_of_new_text_not_the_healed_ones(smollm_engine, speculate):
    """The tokens that only make the healed text again (here the newline and indentation healing took off the
    prompt) are not counted: `max_tokens: 1` after a healed cursor gives one token of new text, not nothing."""
    prompt = smollm_engine.tokenizer.encode(AREA.rsplit("\n", 1)[0])  # up to `def report(poly):`
    config = GenerationConfig(max_new_tokens=16, required_prefix="\n    ", speculate=speculate)
    whole = smollm_engine.generate(prompt, config)
    for n in (1, 3):
        short = smollm_engine.generate(prompt, dataclasses.replace(config, max_new_tokens=n))
        assert short.finish_reason == "length" and short.text and whole.text.startswith(short.text)
        healing = len(short.token_ids) - n
        assert healing >= 1 and smollm_engine.tokenizer.decode(short.token_ids[:healing]) in "\n    "


@pytest.mark.parametrize("speculate", [0, 3])
def test_a_token_that_ends_the_healed_text_and_begins_a_character_is_new_text(tmp_path, speculate):
    """Byte-level vocabularies have tokens of a space and a character's first byte (GPT-2's "Ġæ", before CJK text).
    After a healed space such a token shows no text yet (half a character), but it is not one that only makes the
    healed text again: it counts as a generated token, and its id stays among those returned."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tiny_models import save_tiny_llama

    alphabet = [c for c in sorted(pre_tokenizers.ByteLevel.alphabet()) if c != "Ġ"]   # no lone space token:
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", *alphabet, "Ġæ"])}   # " " + 0xE6 is the only way
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    save_tiny_llama(tmp_path, tokenizer, n_kv_heads=2)
    engine = load_model(tmp_path, device="cpu", max_context=48)
    space_lead = vocab["Ġæ"]
    for limit in (1, 4):
        result = engine.generate(tokenizer.encode("x=1"), GenerationConfig(
            max_new_tokens=limit, required_prefix=" ", speculate=speculate))
        assert result.token_ids[0] == space_lead
        assert result.healing_tokens == 0 and result.token_counts()[1] == len(result.token_ids) == limit


def _word_tokenizer(words: list[str]):
    """A vocabulary of whole words and no byte pieces (no byte fallback): some texts it cannot spell at all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_without_byte_pieces_only_tokens_that_can_still_finish_the_prefix_are_allowed():
    """"a" begins "abc", but nothing spells the "bc" after it: taking it left no allowed token at all, and the
    masked logits (all -inf) sampled token 0, <unk>, into the text."""
    tokenizer = _word_tokenizer(["a", "ab", "c", "x"])
    table = vocabulary_bytes(tokenizer)
    assert table.allowed(b"abc") == [tokenizer.convert_tokens_to_ids("ab")]
    assert table.allowed(b"c") == [tokenizer.convert_tokens_to_ids("c")]
    assert table.allowed(b"q") == []


def test_a_prefix_the_vocabulary_cannot_spell_is_a_clear_error_not_garbage(tmp_path):
    from models.errors import ModelError
    from tiny_models import save_tiny_llama

    tokenizer = _word_tokenizer(["a", "ab", "c", "x", "def", "push"])
    save_tiny_llama(tmp_path, tokenizer, n_kv_heads=2)
    engine = load_model(tmp_path, device="cpu", max_context=48)
    prompt = tokenizer.encode("def push")
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=3, required_prefix="abc")).token_ids[:2] == [
        tokenizer.convert_tokens_to_ids("ab"), tokenizer.convert_tokens_to_ids("c")]
    with pytest.raises(ModelError, match="cannot be written"):
        engine.generate(prompt, GenerationConfig(max_new_tokens=3, required_prefix="🙂"))
