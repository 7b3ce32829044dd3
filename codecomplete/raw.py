"""`codecomplete --prompt TEXT`: the model continues TEXT, no repository, no template."""
from __future__ import annotations

from . import engine as engines
from . import render
from .errors import UsageError
from .workspace import read_stdin

DEFAULT_MAX_TOKENS = 256


def run_prompt(args) -> None:
    text = read_stdin() if args.prompt == "-" else args.prompt
    if not text:
        raise UsageError("--prompt -: standard input is empty, nothing to continue from")
    max_new = args.max_tokens or DEFAULT_MAX_TOKENS
    engine = engines.load(args, max_new)
    ids = engine.tokenizer.encode(text)
    view = render.choose_view(args, render.text_body,
                              info=f"{len(ids):,} prompt tokens · {render.model_label(engine)}")
    result = engines.generate(engine, ids, engines.config(args, max_new), view)
    if args.json:
        render.emit_json(args.json, render.result_json("text", result, engine))
    engines.exit_if_cancelled(result)
