"""`codecomplete REPO`: the chat REPL (prompt-toolkit for input, rich for answers).

Keys: Enter sends, Esc Enter (or Meta Enter) starts a new line, pasted text keeps its lines;
Tab completes slash commands and file paths; a line that begins with a path is a question, one that
begins with // asks the rest (one slash less); Ctrl-C clears the line, or cancels the answer
being generated; Ctrl-D on an empty line leaves. History persists in the user state dir.
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from platformdirs import user_state_dir
from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.filters import emacs_insert_mode, vi_insert_mode
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.key_binding.bindings.named_commands import get_by_name
from prompt_toolkit.keys import Keys
from prompt_toolkit.output.plain_text import PlainTextOutput
from prompt_toolkit.utils import is_dumb_terminal
from rich.console import Console
from rich.table import Table
from rich.text import Text

from prompts.scan import lies_within

from . import chat, engines, render, workspace
from .cancel import CancelOnSigint
from .errors import AppError, UsageError, classify, one_line, printable
from .session import open_session

COMMANDS = {
    "/help": ("", "this help"),
    "/context": ("", "what the last prompt carried: retrieved chunks, pinned files, tokens"),
    "/add": ("PATH", "pin a file into every prompt"),
    "/drop": ("[PATH]", "unpin a file, or all of them"),
    "/reset": ("", "start a new conversation (pinned files stay)"),
    "/model": ("[SPEC]", "show the model, or load another (checkpoint folder, .gguf, hub id)"),
    "/exit": ("", "leave (Ctrl-D does too)"),
}
KEYS = "Enter sends · Esc Enter new line · Tab completes · Ctrl-C cancels · Ctrl-D leaves"
ESCAPE = "A question that begins with a path is asked as typed; //word asks one that begins with /word."
MAX_PATH_COMPLETIONS = 200
UNDO_CHARS = 4096          # typing keeps undo copies of the line while it is shorter than this
HISTORY_TAIL_BYTES = 1 << 20   # of the history file, read at start-up: its newest entries (thousands of lines)


def history_path(root: Path | None = None) -> Path | None:
    """The history file, or None (history kept in memory only) where no file can be: inside the repository
    (HOME being the repository), an unwritable state dir, or something other than a regular file there."""
    path = Path(user_state_dir("codecomplete")) / "history"
    try:
        if root is not None and lies_within(path.resolve(), root):
            return None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            return None
        # What is typed can be secret (a key pasted into a question): readable by its owner only, as shells keep it.
        # (Windows has no O_NOFOLLOW, and keeps a profile's files to their user by its access list, not by mode)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600))
        os.chmod(path, 0o600)
    except OSError:
        return None
    return path


class _FileHistory(FileHistory):
    """The history file, written while it can be: on a full disk, or a file replaced under us, prompt-toolkit
    printed a traceback and "Press ENTER to continue" at every line sent. The line stays in memory instead.
    Read from its last HISTORY_TAIL_BYTES only: prompt-toolkit read and kept the whole file, so one grown to
    hundreds of MB made every start slow, or ran out of memory."""

    def load_history_strings(self):
        try:
            with open(self.filename, "rb") as f:
                start = max(0, f.seek(0, os.SEEK_END) - HISTORY_TAIL_BYTES)
                f.seek(start)
                lines = f.read().split(b"\n")
        except OSError:
            return []
        if start:       # the first line is cut: it and the "+" lines after it are an entry begun before the tail
            lines[0] = b"+"
            lines = lines[next((i for i, line in enumerate(lines) if not line.startswith(b"+")), len(lines)):]
        entries, entry = [], []         # as FileHistory reads them: an entry is its "+" lines
        for line in [*lines, b""]:
            if line.startswith(b"+"):
                entry.append(line[1:].decode("utf-8", errors="replace"))
            elif entry:
                entries.append("\n".join(entry))
                entry = []
        return entries[::-1]            # newest first

    def store_string(self, string: str) -> None:
        try:
            super().store_string(string)
        except OSError:
            pass


class SlashCompleter(Completer):
    """Slash commands at the start of the line; after /add the indexed files, after /drop the pinned ones."""

    def __init__(self, conversation: chat.Conversation) -> None:
        self.conversation = conversation

    def get_completions(self, document, complete_event):
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        command, space, word = text.partition(" ")
        if not space:
            for name, (arg, help_text) in COMMANDS.items():
                if name.startswith(command):
                    # A command that takes an argument completes with its space, as a shell's do: `/ad` Tab `con`
                    # was `/addcon`, and the next Tab now offers the paths.
                    yield Completion(name + " " * bool(arg), start_position=-len(command), display=name,
                                     display_meta=help_text)
            return
        paths = {"/add": self.conversation.index.files, "/drop": self.conversation.pinned}.get(command, ())
        # Prefix matches first, then anywhere in the path: `/add llama` finds models/llama.py.
        starts = [p for p in paths if p.startswith(word)]
        inside = [p for p in paths if word in p and not p.startswith(word)]
        for path in (starts + inside)[:MAX_PATH_COMPLETIONS]:
            # prompt-toolkit shows control characters as ^[ but obeys bidirectional overrides in a file's name.
            yield Completion(path, start_position=-len(word), display=printable(path))


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("enter")
    def _send(event):
        event.current_buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    def _newline(event):
        event.current_buffer.insert_text("\n")

    # prompt-toolkit saves a copy of the whole line for undo before every key typed: n characters typed (or pasted by
    # a terminal without bracketed paste) cost n^2 / 2 bytes, 1.7 GB for 60k. Past UNDO_CHARS typing saves none.
    bindings.add(Keys.Any, filter=vi_insert_mode | emacs_insert_mode, save_before=_undo_copy)(
        get_by_name("self-insert").handler)
    return bindings


def _question(typed: str) -> str:
    """What was typed, less blank lines around it and trailing spaces: the first line keeps its indentation (a
    pasted method's body is code only as indented)."""
    return re.sub(r"\A(?:[ \t]*\n)+", "", typed.rstrip())


def _is_command(text: str) -> bool:
    """Whether a line is a slash command: its first word is a slash and a word (`/help`, `/add PATH`; `/contxt`, a
    mistyped one, is refused with the commands' list and how to ask instead). A line that begins with a path is a
    question (`/usr/lib holds what?`, `/etc/hosts: who reads it?`, `/tmp/x.py?`): it was an unknown command, and
    nothing typed could ask it."""
    return re.fullmatch(r"/(?:[^\W\d][\w-]*)?", text.split(maxsplit=1)[0]) is not None


def _undo_copy(event) -> bool:
    """Whether to save the line for undo before this key: as prompt-toolkit does (every key), below UNDO_CHARS."""
    return len(event.current_buffer.text) < UNDO_CHARS


class Repl:
    def __init__(self, conversation: chat.Conversation, console: Console, *,
                 input=None, output=None, history: Path | None = None) -> None:
        self.conversation = conversation
        self.console = console
        self.last_rate = 0.0
        history = history or history_path(conversation.index.root)
        # prompt-toolkit takes TERM=dumb's plain line editing only without an output of ours, yet its session still
        # resets a terminal output's cursor as it is made (`\x1b[?12l\x1b[?25h`): there the output is plain text.
        plain = output is None and is_dumb_terminal()
        with create_app_session(output=PlainTextOutput(sys.stdout)) if plain else nullcontext():
            self.session = PromptSession(
                history=_FileHistory(str(history)) if history else InMemoryHistory(),
                completer=SlashCompleter(conversation), complete_while_typing=False, multiline=True,
                key_bindings=_key_bindings(), bottom_toolbar=self._toolbar, prompt_continuation="… ",
                input=input, output=output)

    def run(self) -> None:
        self.console.print(self._welcome())
        self._warm_up()
        while True:
            try:
                typed = self.session.prompt("› ")
            except KeyboardInterrupt:       # Ctrl-C at the prompt: the line is cleared
                continue
            except EOFError:                # Ctrl-D
                return
            text = typed.strip()
            if not text:
                continue
            try:
                self.conversation.session.catch_up()     # the files may have changed while the user typed
                if text.startswith("//"):          # the escape: a question that begins with a slash
                    self.ask(re.sub(r"\A(\s*)/", r"\1", _question(typed), count=1))
                elif _is_command(text):
                    if not self.command(text):
                        return
                else:
                    self.ask(_question(typed))
            except KeyboardInterrupt:      # a second Ctrl-C (the first asks the generation to stop)
                self.console.print(Text("interrupted", style="yellow"))
            except Exception as exc:       # a bad path or a model error ends the line, not the REPL
                known = classify(exc)
                if known is None:
                    raise
                self.console.print(Text(f"error: {one_line(known[1])}", style="red"))

    def _warm_up(self) -> None:
        """On a GPU, build the decode steps now (Session.warm_up), as the server does before it serves, not inside
        the first answers: a process that warmed nothing captured its verification step inside a follow-up (11.7 s
        to the first token, CodeLlama-7B shape on an H100) or inside an answer's first speculative step. On this
        thread, which runs every answer. Ctrl-C skips the rest."""
        if not self._builds_ahead():
            return
        started = time.perf_counter()
        with render.status("warming up the model on the GPU (Ctrl-C skips it)"), CancelOnSigint() as cancel:
            done = self.conversation.session.warm_up(should_stop=cancel)
        self.console.print(Text(f"warmed up {', '.join(done)} in {time.perf_counter() - started:.1f} s"
                                + (" (skipped the rest)" if cancel() else ""), style="dim"))

    def _builds_ahead(self) -> bool:
        """Whether the model's steps are built ahead of use: with CUDA graphs (a CPU's steps cost no setup)."""
        return bool(getattr(self.conversation.engine, "use_cuda_graphs", False))

    def ask(self, question: str) -> None:
        for reason in self.conversation.unpin_gone():
            self.console.print(Text(f"{one_line(reason)}: unpinned", style="yellow"))
        generation = self.conversation.prompt_for(question)
        for cut in self.conversation.pinned_cut(generation.prompt):
            self.console.print(Text(f"pinned {one_line(cut)}: the prompt budget is full", style="yellow"))
        view = render.LiveView(self.console, render.markdown_body, info=render.model_label(generation.engine),
                               prompt_tokens=len(generation.prompt.ids), noun="context")
        result = self.conversation.answer(question, generation, view)
        self.last_rate = result.timings.decode_tokens_per_s

    def command(self, line: str) -> bool:
        """Run one slash command; False means leave."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        known = COMMANDS.get("/exit" if name == "/quit" else name)
        if argument and known is not None and not known[0]:
            # `/reset the model too` reset the conversation, and `/exit now?` left: the rest was thrown away.
            raise UsageError(f"{name} takes no argument (/help lists the commands)")
        if name in ("/exit", "/quit"):
            return False
        handlers = {"/help": self._help, "/context": self._context, "/add": self._add, "/drop": self._drop,
                    "/reset": self._reset, "/model": self._model}
        if name not in handlers:
            raise UsageError(f"unknown command {name} (/help lists them; /{name} asks a question that begins with "
                             f"{name})")
        handlers[name](argument)
        return True

    def _help(self, _argument: str) -> None:
        table = Table(box=None, show_header=False, pad_edge=False)
        for name, (arg, help_text) in COMMANDS.items():
            table.add_row(Text(f"{name} {arg}".strip(), style="bold"), help_text)
        self.console.print(table)
        self.console.print(Text(KEYS, style="dim"))
        self.console.print(Text(ESCAPE, style="dim"))

    def _context(self, _argument: str) -> None:
        conversation = self.conversation
        packed = conversation.last_prompt
        if packed is None:
            self.console.print(Text("No question asked yet: the context is retrieved for each question.", style="dim"))
        else:
            # What the prompt carried, not what the conversation holds: older exchanges give way to the budget.
            carried, earlier = packed.history // 2, conversation.last_earlier
            self.console.print(Text("Retrieved for the last question", style="bold"))
            self.console.print(render.context_table(packed.context))
            history = (f"{carried} of {earlier} earlier exchange{'s' if earlier != 1 else ''} carried" if earlier
                       else "no earlier exchange")
            self.console.print(Text(f"{len(packed.ids):,} prompt tokens ({packed.format}) · {history}", style="dim"))
        pinned = ", ".join(conversation.pinned) or "none (/add PATH)"
        self.console.print(Text(f"pinned: {one_line(pinned)}", style="dim"))

    def _add(self, argument: str) -> None:
        if not argument:
            raise UsageError("/add needs a file: /add PATH")
        self.console.print(Text(f"pinned {one_line(self.conversation.pin(argument))}", style="green"))

    def _drop(self, argument: str) -> None:
        dropped = self.conversation.unpin(argument or None)
        self.console.print(Text(f"unpinned {one_line(', '.join(dropped)) or 'nothing'}", style="green"))

    def _reset(self, _argument: str) -> None:
        self.conversation.reset()
        self.console.print(Text("new conversation", style="green"))

    def _model(self, argument: str) -> None:
        conversation = self.conversation
        if argument:
            args = argparse.Namespace(**{**vars(conversation.args), "model": argument})
            # The old model's KV cache and graphs leave the GPU first, or the new model's cache is sized (or
            # refused) as if they stayed; if the load fails, the old one allocates them again when next used.
            from models.distributed import RankFailed
            try:
                conversation.engine.release_memory()
            except RankFailed:
                # --gpus: its ranks stopped already (a second Ctrl-C, a rank that died). Nothing is left to free,
                # and a new model is the only way back, which this refusal closed for the rest of the session.
                pass
            try:
                engine = engines.load(args, conversation.max_new_tokens)
            except UsageError as exc:   # said of the command line's --model: here it was the /model command
                message = str(exc)
                raise UsageError(f"/model {message.removeprefix('--model ')}"
                                 if message.startswith("--model ") else message) from None
            except Exception as exc:    # whatever the checkpoint does, the REPL keeps its model and conversation
                if classify(exc) is None:
                    raise AppError(f"/model {argument}: cannot load it ({type(exc).__name__}: {exc})") from exc
                raise
            conversation.session.use(engine)
            conversation.args = args
            self.last_rate = 0.0        # the toolbar's tok/s was the old model's
            # The old model's weights go now, not at Python's next full collection: the last answer's live view
            # is a reference cycle that holds its generation, and so the old engine.
            gc.collect()
            self._warm_up()
        engine = conversation.engine
        self.console.print(Text(f"{render.model_label(engine)} · context {engine.context_length:,} tokens"
                                f" (trained on {engine.model_max_positions:,}) · loaded in {engine.load_s:.1f} s"))

    def _welcome(self) -> Text:
        index = self.conversation.index
        return Text.assemble(
            ("codecomplete", "bold"), f" · {one_line(index.root.name)} ({len(index.files):,} files) · ",
            render.model_label(self.conversation.engine), "\n",
            ("Ask about the code. /help lists the commands. " + KEYS, "dim"))

    def _toolbar(self) -> str:
        engine = self.conversation.engine
        packed = self.conversation.last_prompt
        context = f"{len(packed.ids):,} context tokens" if packed else "no context yet"
        rate = f" · {self.last_rate:.1f} tok/s" if self.last_rate else ""
        return f" {render.model_label(engine)} · {context}{rate} · {len(self.conversation.pinned)} pinned · /help"


def run_repl(args) -> None:
    if args.json:
        raise UsageError("--json goes with --file, --ask, --prompt or --bench, not the REPL")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the chat REPL needs a terminal; in scripts use --ask QUESTION")
    # In process: the REPL pins files from the index and can switch models, which a server cannot do for it.
    max_new = args.max_tokens or chat.DEFAULT_MAX_TOKENS
    session = open_session(args, workspace.repository(args.repo), max_new)
    Repl(chat.Conversation(session, args), render.stdout_console()).run()
