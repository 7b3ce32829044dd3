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
    def generate(on_text):
        for piece in ("if x:", "\n    y", "\r", "\n", "\r"):
            on_text(piece)
        return Result("if x:\n    y\r\n\r")
    out: list[str] = []
    result = LineEnds().run(generate, out.append)
    assert out == ["if x:", "\r\n    y", "\r\n", "\r"] and result.text == "".join(out) == "if x:\r\n    y\r\n\r"
    assert LineEnds().run(generate, None).text == result.text
