"""Chat over a repository: the conversation (messages, pinned files, what the last prompt
carried), shared by the REPL and by the one-shot `--ask`."""
from __future__ import annotations

from prompts import PromptError
from prompts.packing import WHOLE
from prompts.chat import pinnable

from . import client, engines, render, workspace
from .errors import UsageError
from .session import open_session
from .workspace import read_stdin

DEFAULT_MAX_TOKENS = 512
HISTORY_SHARE = 0.5     # of the prompt budget, for the earlier turns: the rest stays for the repository's code


class Conversation:
    def __init__(self, session, args) -> None:
        self.session = session
        self.args = args
        self.max_new_tokens = args.max_tokens or DEFAULT_MAX_TOKENS
        self.messages: list[dict] = []
        self.pinned: list[str] = []
        self.last_prompt = None     # the packed prompt of the last question, for /context
        self.last_earlier = 0       # the exchanges before the last question, which its prompt may not all carry

    @property
    def engine(self):
        return self.session.engine

    @property
    def index(self):
        return self.session.index

    def prompt_for(self, question: str):
        """The generation for a question: retrieved chunks, pinned files, the conversation, the question."""
        return self.session.chat([*self.messages, {"role": "user", "content": question}], pinned=self.pinned,
                                 sampling=engines.sampling(self.args, self.max_new_tokens),
                                 history_share=HISTORY_SHARE)

    def answer(self, question: str, generation, view):
        """Generate the answer into view. A cancelled answer stays in the conversation as far
        as it got, so the next question can refer to it. A line written a third time running ends it, as it ends a
        suggestion (codecomplete/repeats.py): small models loop in prose too, and the copies would fill the answer."""
        self.last_prompt, self.last_earlier = generation.prompt, len(self.messages) // 2
        try:
            result = engines.generate(generation, view, stop_repeats=True)
        except KeyboardInterrupt:
            # A second Ctrl-C mid-answer raises instead of cancelling: what streamed stays all the same.
            if getattr(view, "text", ""):
                self._record(question, view.text)
            raise
        if result.text or result.finish_reason != "cancelled":
            # Cancelled while reading the prompt: no answer came, so the question is not kept either; an empty
            # assistant turn would show the model a question left unanswered (and count as an exchange).
            self._record(question, result.text)
        return result

    def pinned_cut(self, prompt) -> list[str]:
        """The pinned files whose lines did not all fit whole into `prompt` (its budget), each as "PATH: 7% of it
        fits" (of its chunks' lines): /add promised the file in every prompt."""
        cut = []
        for path in self.pinned:
            chunks = [self.index.chunks[n] for n in self.index.chunk_numbers(path)]
            shown = {line for item in prompt.context if item.path == path and item.form == WHOLE
                     for line in range(item.start_line, item.end_line + 1)}
            lines = {line for chunk in chunks for line in range(chunk.start_line, chunk.end_line + 1)}
            if lines - shown:
                share = len(lines & shown) * 100 // len(lines)
                cut.append(f"{path}: {share}% of it fits" if share else f"{path}: none of it fits")
        return cut

    def _record(self, question: str, answer: str) -> None:
        self.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    def pin(self, path: str) -> str:
        relative = pinnable(self.index, workspace.file_in(self.index.root, path))
        if relative not in self.pinned:
            self.pinned.append(relative)
        return relative

    def unpin_gone(self) -> list[str]:
        """Unpin the files that can no longer be pinned (deleted since, or now ignored, binary or too large): each
        question failed on them until /drop. Returns why, a message a file."""
        gone = []
        for path in list(self.pinned):
            try:
                pinnable(self.index, path)
            except PromptError as exc:
                self.pinned.remove(path)
                gone.append(str(exc))
        return gone

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
        self.last_prompt, self.last_earlier = None, 0


def open_conversation(args) -> Conversation:
    """A running server for the repository, or one in this process."""
    root = workspace.repository(args.repo)
    max_new = args.max_tokens or DEFAULT_MAX_TOKENS
    return Conversation(client.connect(args, root, max_new) or open_session(args, root, max_new), args)


def run_ask(args) -> None:
    question = args.ask
    if question == "-":         # (as --prompt - reads its text: a question piped in, or a file of one)
        question = read_stdin("a question (--ask -)").rstrip().lstrip("\r\n")
        if not question.strip():
            raise UsageError("--ask -: standard input is empty, no question to answer")
    conversation = open_conversation(args)
    generation = conversation.prompt_for(question)
    packed = generation.prompt
    view = render.choose_view(args, render.markdown_body,
                              info=render.model_label(generation.engine), prompt_tokens=len(packed.ids),
                              noun="context")
    result = conversation.answer(question, generation, view)
    if args.json:
        render.emit_json(args.json, render.result_json("answer", result, generation.engine, packed.context))
    engines.exit_if_cancelled(result)
