"""The terminal's live status line and summary show speculative decoding's acceptance."""
import io

from rich.console import Console

from codecomplete import render
from models import GenerationResult, Timings


def test_the_live_line_and_the_summary_show_the_acceptance_rate():
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    view = render.LiveView(console, render.text_body, info="model")
    running = Timings(drafted_tokens=40, accepted_tokens=26, decode_steps=20)
    view.progress = lambda: running
    view.on_text("def f")
    view.on_text("(x):")
    console.print(view._frame())
    line = console.file.getvalue()
    assert "65% of drafts accepted" in line and "2.3 tokens/step" in line
    result = GenerationResult("def f(x):", [1] * 47, 10, 0, "length", running)
    assert "65% of drafts accepted · 2.3 tokens/step" in render.summary_line(result)
    # Plain decoding says nothing about drafts.
    running.drafted_tokens = running.accepted_tokens = 0
    plain = Console(file=io.StringIO(), width=120, force_terminal=True)
    plain.print(view._frame())
    assert "drafts" not in plain.file.getvalue()
    assert "drafts" not in render.summary_line(GenerationResult("x", [1], 1, 0, "length", Timings()))
