"""Incremental detokenization and stop strings, token by token, with real tokenizers of both kinds:
SentencePiece-style (▁ spaces, byte-fallback pieces) and byte-level BPE (the embedded SmolLM2's)."""

import pytest

from models.tokenizer import IncrementalDetokenizer, StopStringMatcher

TEXTS = ["def foo(x):\n    return x + 1\n", 'print("héllo 🙂 wörld")  # ünïcode ✓\n', "  two  spaces\tand tab 中文字符\n"]


def stream(tokenizer, prompt_ids, new_ids):
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas = [detokenizer.push(i) for i in new_ids]
    return deltas, detokenizer.flush()


def expected_continuation(tokenizer, prompt_ids, new_ids):
    full = tokenizer.decode(prompt_ids + new_ids)
    prompt = tokenizer.decode(prompt_ids)
    assert full.startswith(prompt)
    return full[len(prompt):]


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_byte_fallback_streams_exactly_the_decoded_text(llama_tokenizer, text):
    prompt_ids = llama_tokenizer.encode("class Stack:\n")
    new_ids = llama_tokenizer.encode(text, add_special_tokens=False)
    deltas, rest = stream(llama_tokenizer, prompt_ids, new_ids)
    assert "".join(deltas) + rest == expected_continuation(llama_tokenizer, prompt_ids, new_ids)
    assert rest == "" and not any("\ufffd" in d for d in deltas)


def test_sentencepiece_keeps_the_leading_space_of_the_first_token(llama_tokenizer):
    prompt_ids = llama_tokenizer.encode("def")
    new_ids = llama_tokenizer.encode(" fibonacci(n)", add_special_tokens=False)[1:]  # drop the prepended ▁
    assert llama_tokenizer.convert_ids_to_tokens(new_ids[0]).startswith("▁")
    deltas, _ = stream(llama_tokenizer, prompt_ids, new_ids)
    assert "".join(deltas).startswith(" ")


def test_multibyte_characters_are_held_back_until_complete(llama_tokenizer):
    ids = llama_tokenizer.encode("🙂", add_special_tokens=False)
    assert llama_tokenizer.convert_ids_to_tokens(ids) == ["▁", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    detokenizer = IncrementalDetokenizer(llama_tokenizer, llama_tokenizer.encode("x ="))
    assert [detokenizer.push(i) for i in ids] == [" ", "", "", "", "🙂"]
    cut = IncrementalDetokenizer(llama_tokenizer, llama_tokenizer.encode("x ="))
    assert [cut.push(i) for i in ids[-3:-1]] == ["", ""]   # two continuation bytes alone: nothing yet
    assert cut.flush() == ""                                # and never: half a character is no text to insert
    cut_after_text = IncrementalDetokenizer(llama_tokenizer, llama_tokenizer.encode("x ="))
    assert [cut_after_text.push(i) for i in ids[:3]] == [" ", "", ""]
    assert cut_after_text.flush() == ""


@pytest.mark.parametrize("prompt", ["x = '中文", "# 😀😀", "s = '🙂中\r"])
def test_a_prompt_ending_in_byte_pieces_of_several_characters_streams_the_text_after_it(llama_tokenizer, prompt):
    """The window's first prompt tokens must not start inside a character: byte-fallback decoding turns a run of
    byte pieces that is not valid UTF-8 into one U+FFFD per byte, so a window from a character's middle made
    every byte piece after it, the new ones too, into U+FFFD (held back as incomplete, or shown as garbage)."""
    prompt_ids = llama_tokenizer.encode(prompt)
    assert llama_tokenizer.convert_ids_to_tokens(prompt_ids[-5])[:4] in ("<0x8", "<0x9", "<0xA", "<0xB")
    for text in ("文", "😀x", "\xa0\r pop"):
        new_ids = llama_tokenizer.encode(text, add_special_tokens=False)
        new_ids = new_ids[1:] if llama_tokenizer.convert_ids_to_tokens(new_ids[0]) == "▁" else new_ids
        deltas, rest = stream(llama_tokenizer, prompt_ids, new_ids)
        assert "".join(deltas) + rest == expected_continuation(llama_tokenizer, prompt_ids, new_ids) == text


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_bpe_streams_exactly_the_decoded_text(smollm_engine, text):
    tokenizer = smollm_engine.tokenizer
    prompt_ids = tokenizer.encode("# a comment\n")
    new_ids = tokenizer.encode(text)
    deltas, rest = stream(tokenizer, prompt_ids, new_ids)
    assert "".join(deltas) + rest == expected_continuation(tokenizer, prompt_ids, new_ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d == "") > 0 or text.isascii()   # some non-ASCII text spans tokens



@pytest.mark.parametrize("text", ["caf\ufffd", "s = '\ufffd\ufffd\ufffd", "x\ufffd\ufffd"])
def test_a_replacement_character_the_model_writes_is_text_at_the_end_too(smollm_engine, llama_tokenizer, text):
    """U+FFFD written whole (the bytes EF BF BD: a file read with replacements holds it, and the model copies it) is
    text like any other: only bytes of a character still to come are held back, and dropped at a length limit. It was
    held as if incomplete and dropped by flush: "caf\ufffd" streamed as "caf", three of them as nothing."""
    for tokenizer in (smollm_engine.tokenizer, llama_tokenizer):
        prompt_ids = tokenizer.encode("# a comment\n")
        new_ids = tokenizer.encode(text, add_special_tokens=False)
        deltas, rest = stream(tokenizer, prompt_ids, new_ids)
        assert "".join(deltas) + rest == expected_continuation(tokenizer, prompt_ids, new_ids), (deltas, rest)
        cut = tokenizer.encode(text + "🙂", add_special_tokens=False)[:-1]   # a length limit inside the emoji
        deltas, rest = stream(tokenizer, prompt_ids, cut)
        assert ("".join(deltas) + rest).endswith(text.strip()), (deltas, rest)

def feed_all(stops, pieces):
    matcher = StopStringMatcher(stops)
    out, hit = [], False
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            break
    return out, hit, matcher


def test_stop_string_across_pieces_is_never_emitted():
    out, hit, matcher = feed_all(["\n\n"], ["ab", "c\n", "\nd"])
    assert hit and "".join(out) == "abc" == matcher.text
    assert out == ["ab", "c", ""]           # "\n" was held back until the next piece settled it


def test_held_back_text_is_released_when_the_match_fails():
    out, hit, matcher = feed_all(["END"], ["xxE", "N", "ope"])
    assert not hit and out == ["xx", "", "ENope"]
    assert matcher.flush() == ""


def test_earliest_stop_string_wins_and_flush_releases_partial_prefixes():
    out, hit, matcher = feed_all(["</code>", "\n#"], ["a\n", "#b</code>"])
    assert hit and matcher.text == "a" and matcher.hit == "\n#"
    _, hit, matcher = feed_all(["\n", "\n\n"], ["a\n\nb"])     # two start at once: the longest is the one named
    assert hit and matcher.text == "a" and matcher.hit == "\n\n"
    matcher = StopStringMatcher(["<file_sep>"])
    assert matcher.feed("x = 1<file") == ("x = 1", False)
    assert matcher.flush() == "<file"       # generation ended: a partial stop string is just text


def _reference(stops, deltas):
    """What the matcher must stream: all text up to the first stop string (the longest of those starting there),
    each delta's part that no stop string could still begin."""
    out, text = [], ""
    for delta in deltas:
        text += delta
        hits = [(text.find(s), -len(s)) for s in stops if s in text]
        if hits:
            return out + [text[sum(map(len, out)):min(hits)[0]]], True
        held = max((n for n in range(1, len(text) + 1) for s in stops if len(s) > n and s.startswith(text[-n:])),
                   default=0)
        out.append(text[sum(map(len, out)):len(text) - held])
    return out, False


def test_many_and_long_stop_strings_cost_each_token_little_and_stream_the_same():
    """A request's stop strings are the client's: a stop string of 100,000 characters made every token try every
    suffix of the text against it (2,000 tokens: over 10 s on the engine thread), 40,000 short ones every token
    search for each of them. Only stop strings and suffixes that begin with a character the text has are tried."""
    import random

    class Counted(str):
        def startswith(self, *args):
            tried.append(1)
            return str.startswith(self, *args)

    tried = []
    matcher = StopStringMatcher([Counted("Q" * 100_000), *(Counted(f"Z{i}") for i in range(1000))])
    for _ in range(400):
        assert matcher.feed("ab cd ") == ("ab cd ", False)
    assert tried == []                          # (every suffix against every stop: about 500,000 calls)
    rng = random.Random(5)
    for _ in range(300):
        stops = ["".join(rng.choice("ab\n") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4))]
        deltas = ["".join(rng.choice("abc\n") for _ in range(rng.randint(0, 3))) for _ in range(8)]
        out, hit, _ = feed_all(stops, deltas)
        assert (out, hit) == _reference(stops, deltas), (stops, deltas)
