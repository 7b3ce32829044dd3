"""Chat over a repository: the conversation (messages, pinned files, what the last prompt
carried), shared by the REPL and by the one-shot `--ask`."""
from __future__ import annotations

from . import engine as engines
from . import render, workspace
from .errors import UsageError

DEFAULT_MAX_TOKENS = 512


class Conversation:
    def __init__(self, engine, index, args) -> None:
        self.engine = engine
        self.index = index
        self.args = args
        self.max_new_tokens = args.max_tokens or DEFAULT_MAX_TOKENS
        self.messages: list[dict] = []
        self.pinned: list[str] = []
        self.last_prompt = None     # the packed prompt of the last question, for /context

    def prompt_for(self, question: str):
        """The packed prompt: retrieved chunks, pinned files, the conversation, the question."""
        from prompts import build_chat_prompt

        return build_chat_prompt(self.index, self.engine.tokenizer,
                                 messages=[*self.messages, {"role": "user", "content": question}],
                                 budget_tokens=engines.prompt_budget(self.engine, self.args, self.max_new_tokens),
                                 pinned_paths=tuple(self.pinned))

    def answer(self, question: str, packed, view):
        """Generate the answer into view. A cancelled answer stays in the conversation as far
        as it got, so the next question can refer to it."""
        self.last_prompt = packed
        result = engines.generate(self.engine, packed.ids, engines.config(self.args, self.max_new_tokens, packed), view)
        self.messages += [{"role": "user", "content": question},
                          {"role": "assistant", "content": result.text}]
        return result

    def pin(self, path: str) -> str:
        relative = workspace.file_in(self.index.root, path)
        if relative not in self.index.files:
            raise UsageError(f"{relative} is not among the indexed files (ignored, binary or too large)")
        if relative not in self.pinned:
            self.pinned.append(relative)
        return relative

    def unpin(self, path: str | None = None) -> list[str]:
        """Unpin one file, or all of them; returns what was dropped."""
        if path is None:
            dropped, self.pinned = self.pinned, []
            return dropped
        relative = workspace.file_in(self.index.root, path, must_exist=False)
        if relative not in self.pinned:
            raise UsageError(f"{relative} is not pinned")
        self.pinned.remove(relative)
        return [relative]

    def reset(self) -> None:
        """A fresh conversation; pinned files stay pinned."""
        self.messages = []
        self.last_prompt = None


def open_conversation(args) -> Conversation:
    """Check and index the repository, then load the model (the slow part comes last)."""
    index = workspace.index(workspace.repository(args.repo))
    return Conversation(engines.load(args, args.max_tokens or DEFAULT_MAX_TOKENS), index, args)


def run_ask(args) -> None:
    conversation = open_conversation(args)
    engine = conversation.engine
    packed = conversation.prompt_for(args.ask)
    view = render.choose_view(args, render.markdown_body,
                              info=f"{len(packed.ids):,} context tokens · {render.model_label(engine)}")
    result = conversation.answer(args.ask, packed, view)
    if args.json:
        render.emit_json(args.json, render.result_json("answer", result, engine, packed.context))
    engines.exit_if_cancelled(result)
