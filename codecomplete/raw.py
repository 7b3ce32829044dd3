"""`codecomplete --prompt TEXT`: the model continues TEXT, no repository, no template."""
from __future__ import annotations

from . import client, engines, render
from .errors import UsageError
from .session import open_session
from .workspace import read_stdin

DEFAULT_MAX_TOKENS = 256


def run_prompt(args) -> None:
    text = read_stdin("a prompt (--prompt -)") if args.prompt == "-" else args.prompt
    if not text:
        raise UsageError("--prompt -: standard input is empty, nothing to continue from")
    max_new = args.max_tokens or DEFAULT_MAX_TOKENS
    session = client.connect(args, max_new_tokens=max_new) or open_session(args, max_new_tokens=max_new)
    generation = session.raw(text, sampling=engines.sampling(args, max_new))
    view = render.choose_view(args, render.text_body, info=render.model_label(generation.engine),
                              prompt_tokens=len(generation.prompt.ids))
    result = engines.generate(generation, view)
    if args.json:
        render.emit_json(args.json, render.result_json("text", result, generation.engine))
    engines.exit_if_cancelled(result)
