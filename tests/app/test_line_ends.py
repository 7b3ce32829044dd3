"""A completion in a CRLF file is written with CRLF line ends (codecomplete/line_ends.py): streamed pieces say what
the whole text says, a "\\r\\n" never goes out in halves, and the engine's offsets map into the text written. The
routes and the command line: test_server_protocols, test_tabby, test_commands."""
import random
from dataclasses import dataclass

import pytest

from codecomplete.line_ends import CRLF, LineEnds, written
from prompts.scan import line_end

TEXTS = ["x = 1\ny = 2\n", "\n\n\nz", "a\r\nb\nc\r\n", "lone\rcr\r", "\r", "\n", "", "end\r\n\r\n\n\r\r\n"]


def test_the_model_s_line_ends_become_the_text_s():
    assert written("a\nb\r\nc\rd\n", CRLF) == "a\r\nb\r\nc\rd\r\n"      # a "\r\n" of its own stays one
    assert written("a\nb\r\n", "\n") == "a\nb\r\n"                     # a LF text's: as the model wrote it
    assert line_end("def f():\r\n    pass\n") == CRLF and line_end("a\nb\rc") == "\n"
    assert line_end("a\rb\r") == "\r" and line_end("a\rb\r", lone_cr=False) == "\n"     # classic Mac; a raw prompt's
    assert written("a\nb\r\nc\rd\n", "\r") == "a\rb\rc\rd\r"


def pieces(text: str, seed: int) -> list[str]:
    """`text` cut at random places, as tokens come."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(0, len(text) - 1))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("text", TEXTS)
def test_a_stream_is_the_whole_text_and_never_sends_half_a_crlf(text, seed):
    ends = LineEnds()
    sent = [ends.feed(piece) for piece in pieces(text, seed)]
    whole = written(text, CRLF)
    assert "".join(sent) + ends.flush() == whole and ends.flush() == ""
    cuts = [sum(map(len, sent[:i])) for i in range(1, len(sent))]
    assert not any(whole[cut - 1:cut + 1] == CRLF for cut in cuts), (sent, whole)    # no piece ends inside one


@pytest.mark.parametrize("text", TEXTS)
def test_an_offset_in_the_model_s_text_maps_to_where_it_went(text):
    ends = LineEnds()
    for piece in pieces(text, 1):
        ends.feed(piece)
    for offset in range(len(text) + 1):
        assert written(text, CRLF)[:ends.position(offset)] == written(text[:offset], CRLF), offset


@dataclass
class Result:
    text: str


def test_a_generation_streams_and_returns_the_text_written_so():
    """The session's run: deltas to on_text as written, a "\\r" that ended the last one sent at the end, the result's
    text the same."""
    def generate(on_text, should_stop):
        for piece in ("if x:", "\n    y", "\r", "\n", "\r"):
            on_text(piece)
        return Result("if x:\n    y\r\n\r")
    out: list[str] = []
    result = LineEnds().run(generate, out.append)
    assert out == ["if x:", "\r\n    y", "\r\n", "\r"] and result.text == "".join(out) == "if x:\r\n    y\r\n\r"
    assert LineEnds().run(generate, None).text == result.text


# ---- stop strings, lone CRs and token texts (the routes: test_crlf_answers) ----------------------------------------

from codecomplete.line_ends import CR  # noqa: E402

STOPS = ["\r\n", "\r\n\r\n", "\n", "\n\n", "\r", "b\r\n", "\nc", "z"]


def seen(text: str, line_end: str, stops) -> tuple[str, str]:
    """The written text cut before the first stop (as written) that it holds, and that stop as given."""
    whole, hits = written(text, line_end), []
    for stop in stops:
        at = whole.find(written(stop, line_end))
        if at >= 0:
            hits.append((at, -len(written(stop, line_end)), stop))
    if not hits:
        return whole, ""
    at, _, stop = min(hits)
    return whole[:at], stop


@pytest.mark.parametrize("line_end", [CRLF, CR])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("text", TEXTS + ["a\nb\nc\n\nd", "a\r\nb\r\n\r\nc"])
@pytest.mark.parametrize("stop", STOPS)
def test_a_stop_is_matched_in_the_text_as_written_across_pieces(text, seed, stop, line_end):
    """A stop matches where the written text has it (its own "\\n" the text's line end), whatever the pieces: what is
    sent and what is returned is the written text cut before it; never half a CRLF sent."""
    ends = LineEnds(line_end, [stop])
    sent = [ends.feed(piece) for piece in pieces(text, seed)]
    sent.append(ends.flush())
    cut, hit = seen(text, line_end, [stop])
    assert ("".join(sent), ends.text, ends.hit) == (cut, cut, hit), (sent, cut)
    ends_at = [sum(map(len, sent[:i])) for i in range(1, len(sent))]
    assert not any(cut[at - 1:at + 1] == CRLF for at in ends_at), sent      # no piece ends inside a CRLF


def test_stops_as_written_and_named_as_given():
    assert seen("x\ny", CRLF, ["\n"]) == ("x", "\n") and seen("x\ny", CRLF, ["\r\n"]) == ("x", "\r\n")
    ends = LineEnds(CRLF, ["\n", "\r\n"])        # the same stop written: the later given names it
    ends.feed("x\ny")
    assert (ends.text, ends.hit) == ("x", "\r\n")


@pytest.mark.parametrize("text", TEXTS)
def test_a_classic_mac_text_is_written_with_lone_crs_and_its_offsets_map(text):
    ends = LineEnds(CR)
    sent = [ends.feed(piece) for piece in pieces(text, 3)] + [ends.flush()]
    assert "".join(sent) == written(text, CR) and "\n" not in written(text, CR)
    for offset in range(len(text) + 1):
        assert written(text, CR)[:ends.position(offset)] == written(text[:offset], CR), offset


@pytest.mark.parametrize("line_end", [CRLF, CR])
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("text", TEXTS)
def test_the_tokens_texts_spell_the_text_written(text, seed, line_end):
    ends = LineEnds(line_end)
    tokens = pieces(text, seed)
    offsets = [sum(map(len, tokens[:i])) for i in range(len(tokens))]
    for piece in tokens:
        ends.feed(piece)
    texts = [ends.token_text(piece, offset) for piece, offset in zip(tokens, offsets)]
    assert "".join(texts) == written(text, line_end), texts
    assert [ends.token_bytes(piece.encode(), offset) for piece, offset in zip(tokens, offsets)] == \
        [t.encode() for t in texts]
    assert [ends.position(offset) for offset in offsets] == [len("".join(texts[:i])) for i in range(len(texts))]


@dataclass
class Generated:
    text: str
    token_ids: list
    finish_reason: str = "length"
    stop_string: str = ""
    logprobs: list | None = None
    not_a_number: bool = False


def test_a_stop_stops_the_generation_and_cuts_its_tokens_back_to_the_one_that_completed_it():
    """The engine matches no stop then: the hit asks it to stop (should_stop), and the result says "stop", with the
    tokens up to the one whose text completed the stop, as the engine's own stop would."""
    tokens = ["x = 1", "\n", "y", " = 2", "\n", "z"]
    ids: list[int] = []

    def generate(on_text, should_stop):
        for i, piece in enumerate(tokens):
            ids.append(i)
            on_text(piece)
            if should_stop():
                break
        return Generated("".join(tokens[:len(ids)]), list(ids), "cancelled", logprobs=list(ids))
    out: list[str] = []
    result = LineEnds(CRLF, ["\r\ny"]).run(generate, out.append, None, lambda: ids)
    assert (result.text, "".join(out), result.finish_reason, result.stop_string) == ("x = 1", "x = 1", "stop", "\r\ny")
    assert result.token_ids == result.logprobs == [0, 1, 2] and ids == [0, 1, 2]
    # an engine that shows no tokens (none when asked): the result keeps them all rather than none
    ids.clear()
    assert LineEnds(CRLF, ["\r\ny"]).run(generate, None, None, lambda: []).token_ids == [0, 1, 2]
