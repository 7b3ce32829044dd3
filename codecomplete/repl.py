"""`codecomplete REPO`: the chat REPL (prompt-toolkit for input, rich for answers).

Keys: Enter sends, Esc Enter (or Meta Enter) starts a new line, pasted text keeps its lines;
Tab completes slash commands and file paths; a line that begins with a path is a question, one that
begins with // asks the rest (one slash less); Ctrl-C clears the line, or cancels the answer
being generated; Ctrl-D on an empty line leaves. Keys typed while an answer prints wait for the next prompt.
History persists in the user state dir.
On a GPU the model's steps are built (the warm-up) in the background from the start, while the first question is
typed; the first line waits for what is left of it (Ctrl-C skips that), a question only for the step under way: the
steps after it are built after its answer.
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from platformdirs import user_state_dir
from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session, get_app_or_none
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
from .cancel import CancelOnSigint, InterruptsDeferred, InterruptsDropped
from .errors import AppError, UsageError, classify, one_line, printable
from .session import open_session, timed_steps

COMMANDS = {
    "/help": ("", "this help"),
    "/context": ("", "what the last prompt carried: retrieved chunks, pinned files, tokens"),
    "/add": ("PATH", "pin a file into every prompt"),
    "/drop": ("[PATH]", "unpin a file, or all of them"),
    "/reset": ("", "start a new conversation (pinned files stay)"),
    "/model": ("[SPEC]", "show the model, or load another (checkpoint folder, .gguf, hub id)"),
    "/exit": ("", "leave (/quit and Ctrl-D do too)"),
}
KEYS = "Enter sends · Esc Enter new line · Tab completes · Ctrl-C cancels · Ctrl-D leaves"
HISTORY_KEYS = "Up/Down history"     # in /help only: the banner stays one line
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

    # prompt-toolkit reads `ESC [ digits m` (and `ESC [ M` with any 3 characters) as a terminal's mouse report; its
    # handler raised on one it could not parse, a colour code (`\x1b[31m`) in text pasted where the terminal does not
    # bracket pastes, and the REPL printed "Unhandled exception in event loop", a traceback and "Press ENTER to
    # continue...", which took the next key. The REPL asks for no mouse reports (mouse_support is off): all dropped.
    @bindings.add(Keys.Vt100MouseEvent)
    def _no_mouse(event):
        pass

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


class _WarmUp:
    """Session.warm_up on a thread of its own, while the prompt waits for the first question. Its steps are CUDA
    graphs, replayed from any thread; cuDNN's prefill plans are kept per thread, so the answering thread's first
    prefill still builds its own (~70 ms once on an H200, Run 12), a small price for the seconds the user no longer
    watches a spinner for. Nothing else may use the session meanwhile (it is one caller's at a time, and a capture
    must not meet other GPU work): the REPL waits for it (`finish`) before a line does anything."""

    def __init__(self, session, on_end, steps: list[str] | None = None) -> None:
        self.built: list[str] = []
        self.skipped: list[str] = []        # the steps a stop made it skip (Session.warm_up_skipped)
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(session, on_end, steps), name="warm-up",
                                        daemon=True)
        self._thread.start()

    def _run(self, session, on_end, steps) -> None:
        try:
            self.built = timed_steps(session, session.warm_up(should_stop=self._stop.is_set, steps=steps))
            self.skipped = list(session.warm_up_skipped)
        except BaseException as exc:        # (given to the REPL's thread by `finish`)
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - self._started
            self._ended.set()               # (before `on_end`: the toolbar it redraws asks `running`)
            try:
                on_end()
            except Exception:               # a redraw of a prompt that is gone
                pass

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def running(self) -> bool:
        return not self._ended.is_set()

    def stop(self) -> None:
        """Skip the steps after the one under way."""
        self._stop.set()

    def finish(self, should_stop) -> None:
        """Wait for the warm-up to end; once `should_stop()`, it skips its steps after the one under way. Waited for
        by its end, not by the thread's: Python 3.11's Thread.join, interrupted by Ctrl-C, marks a thread that still
        runs as ended (gh-90882), and the line after a second Ctrl-C ran beside the warm-up."""
        while not self._ended.is_set():
            if should_stop():
                self.stop()
            self._ended.wait(timeout=0.05)
        self._thread.join()             # (what is left of it: the redraw, at once)


class Repl:
    def __init__(self, conversation: chat.Conversation, console: Console, *,
                 input=None, output=None, history: Path | None = None,
                 after_each_prompt: Callable[[], None] = lambda: None) -> None:
        self.conversation = conversation
        self._after_each_prompt = after_each_prompt     # (run_repl's: the terminal's mode between prompts, again)
        self.console = console
        self.last_rate = 0.0
        self._warming: _WarmUp | None = None
        # The warm-up to start again at the next prompt: a /model that failed to load (the old model's steps went with
        # its memory), a question answered before the warm-up's later steps (_finish_warm_up), which are then the
        # only ones built (`_warm_steps`; None: all of them).
        self._warm_again = False
        self._warm_steps: list[str] | None = None
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
        self._start_warm_up()
        try:
            self._read_lines()
        finally:
            warming, self._warming = self._warming, None
            if warming is not None:             # leaving while it runs: it stops after the step under way
                # A Ctrl-C meanwhile waits for that step too (then leaves as an interrupt): an exit with the thread
                # inside a capture could leave the GPU's context broken on the way out.
                with InterruptsDeferred():
                    warming.finish(should_stop=lambda: True)
                    if warming.error is not None:
                        # No line will raise it now: said in one line on the way out (a bug's too, which a line
                        # raises; the user asked to leave, so the exit stays theirs), not dropped unheard.
                        self.console.print(self._warm_up_failure(warming.error))

    def _read_lines(self) -> None:
        while True:
            try:
                # A Ctrl-C as the prompt comes up or goes (pressed as an answer ended) is dropped, the prompt empty
                # as after one at the prompt: raised inside prompt-toolkit's making of its event loop, it printed
                # a traceback (the half-made loop's) and a warning; raised while the old model was set to warm up
                # again, outside any line, it ended the REPL, or left the warm-up's thread unwaited for.
                with InterruptsDropped():
                    if self._warm_again:
                        self._warm_again = False
                        gc.collect()        # (what the failed load left on the GPU goes first)
                        self._start_warm_up(self._warm_steps)
                        self._warm_steps = None
                    typed = self.session.prompt("› ")
                    self._after_each_prompt()
            except KeyboardInterrupt:       # Ctrl-C at the prompt: the line is cleared
                continue
            except EOFError:                # Ctrl-D
                return
            text = typed.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return                      # (`run` stops the warm-up; `/exit now?` goes on to be refused)
            try:
                # (`/model SPEC` loads another model: the one warmed goes; `/model` alone only shows it)
                self._finish_warm_up(skip_rest=text.split(maxsplit=1)[0] == "/model" and text != "/model",
                                     answer_first=text.startswith("//") or not _is_command(text))
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

    def _start_warm_up(self, steps: list[str] | None = None) -> None:
        """On a GPU, build the decode steps now (Session.warm_up), as the server does before it serves, not inside
        the first answers: a process that warmed nothing captured its verification step inside a follow-up (11.7 s
        to the first token, CodeLlama-7B shape on an H100; Run 45). In the background, while the user types the
        first question (17.0 s on a fresh H100, 6.7 s once Triton's kernel cache holds the kernels; Run 46): what
        the line typed does waits for it to end (`_finish_warm_up`). `steps`: only these (Session.warm_up).
        On a CPU, whose steps cost no setup, only the import a first follow-up would pay (Session.import_ahead; a
        session through a server has none to pay), on a thread nothing waits for."""
        self._warming = _WarmUp(self.conversation.session, self._redraw, steps) if self._builds_ahead() else None
        import_ahead = getattr(self.conversation.session, "import_ahead", None)
        if self._warming is None and import_ahead is not None:
            threading.Thread(target=import_ahead, name="import-ahead", daemon=True).start()

    def _finish_warm_up(self, skip_rest: bool = False, answer_first: bool = False) -> None:
        """Wait for the warm-up under way, with a spinner (Ctrl-C skips the rest of it), and say what it built.
        `skip_rest`: stop it after the step under way (/model SPEC: the model it warms goes). `answer_first` (a
        question): stop it after the step under way too, and build the steps it skipped after the answer, at the
        next prompt. An answer needs the decode step alone (speculation and the wide tail wait for their steps'
        capture), and the verifying and wide steps took 16.4 of a fresh H200's 23.2 s of warm-up (Run 48): a first
        question sent at once waited 24.6 s for its answer. Only the skipped steps are built later, past the
        conversation's slots (`Engine._warm_step`), so the follow-ups reuse its cache; one sent while a step is
        built waits for that step. Interrupted (a second Ctrl-C, the step under way going on), the line ends and
        the warm-up, told to stop, stays the next line's to wait for: nothing may use the session beside it."""
        warming = self._warming
        if warming is None:
            return
        try:
            if skip_rest:
                warming.finish(should_stop=lambda: True)
            elif warming.running():
                if answer_first:
                    warming.stop()
                with render.status("finishing the model's warm-up on the GPU (Ctrl-C skips the rest)"), \
                        CancelOnSigint() as cancel:
                    warming.finish(should_stop=cancel)
            else:
                warming.finish(should_stop=lambda: False)
        except BaseException:
            warming.stop()
            raise
        self._warming = None
        if warming.error is not None:
            if classify(warming.error) is None:
                raise warming.error
            self.console.print(self._warm_up_failure(warming.error))
            return
        later = answer_first and bool(warming.skipped)
        if later and not self._warm_again:          # (a full warm-up asked already builds these too)
            self._warm_steps = list(warming.skipped)
        self._warm_again = self._warm_again or later
        skipped = " (the rest after this answer)" if later else " (skipped the rest)" if warming.stopped else ""
        self.console.print(Text(f"warmed up {', '.join(warming.built)} in {warming.seconds:.1f} s{skipped}",
                                style="dim"))

    @staticmethod
    def _warm_up_failure(error: BaseException) -> Text:
        """The line that says the warm-up failed: a known failure's message, or a bug's type and message (as the
        command line's "internal error" says it), on one line."""
        known = classify(error)
        if known is not None:
            return Text(f"warm-up: {one_line(known[1])}", style="yellow")
        return Text(f"warm-up failed: internal error: {type(error).__name__}: {one_line(str(error))}", style="red")

    def _redraw(self) -> None:
        """The toolbar says whether the warm-up runs: redrawn when it ends (from its thread: prompt-toolkit's
        invalidate is safe there, and does nothing while no prompt shows)."""
        self.session.app.invalidate()

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
        # (split at any whitespace, as `_is_command` finds the command: `/add` Esc Enter `PATH` was "unknown command")
        name, argument = (line.split(maxsplit=1) + [""])[:2]
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
        self.console.print(Text(KEYS + " · " + HISTORY_KEYS, style="dim"))
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
                self._warm_again, self._warm_steps = True, None
                engine = engines.load(args, conversation.max_new_tokens)
                self._warm_again = False
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
            self._start_warm_up()
        engine = conversation.engine
        self.console.print(Text(f"{render.model_label(engine)} · context {engine.context_length:,} tokens"
                                f" (trained on {engine.model_max_positions:,}) · loaded in {engine.load_s:.1f} s"))

    def _welcome(self) -> Text:
        index = self.conversation.index
        return Text.assemble(
            ("codecomplete", "bold"),
            f" · {one_line(index.root.name)} ({render.plural(len(index.files), 'file')}) · ",
            render.model_label(self.conversation.engine), "\n",
            ("Ask about the code. /help lists the commands. " + KEYS, "dim"))

    def _toolbar(self) -> str:
        engine = self.conversation.engine
        packed = self.conversation.last_prompt
        context = f"{len(packed.ids):,} context tokens" if packed else "no context yet"
        rate = f" · {self.last_rate:.1f} tok/s" if self.last_rate else ""
        warming = " · warming up the GPU" if self._warming is not None and self._warming.running() else ""
        return (f" {render.model_label(engine)} · {context}{rate} · {len(self.conversation.pinned)} pinned"
                f"{warming} · /help")


def run_repl(args) -> None:
    if args.json:
        raise UsageError("--json goes with --file, --ask, --prompt or --bench, not the REPL")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the chat REPL needs a terminal; in scripts use --ask QUESTION")
    # In process: the REPL pins files from the index and can switch models, which a server cannot do for it.
    max_new = args.max_tokens or chat.DEFAULT_MAX_TOKENS
    with _keys_kept_between_prompts(sys.stdin) as keys_kept_again:  # (from the load on: typed meanwhile waits too)
        session = open_session(args, workspace.repository(args.repo), max_new)
        Repl(chat.Conversation(session, args), render.stdout_console(), after_each_prompt=keys_kept_again).run()


@contextmanager
def _keys_kept_between_prompts(stdin) -> Iterator[Callable[[], None]]:
    """The terminal keeps keys as typed while the REPL runs, as terminal programs keep theirs: between prompts (an
    answer, a command's output, a wait for the warm-up) its cooked mode took a Ctrl-D for its end-of-file mark, not a
    key, so the next prompt never saw it, and echoed text typed ahead, which the next prompt then showed again. Now
    keys wait unedited and unechoed for the next prompt, as it reads them; signals stay on (Ctrl-C cancels an answer).
    prompt-toolkit puts back after each prompt the mode it found, this one; the user's own comes back on every way
    out. A stopped REPL (Ctrl-Z) that the shell resumes (`fg`) gets the terminal back in the shell's mode (bash keeps
    none of a stopped job's), which each prompt would then keep: it is set again on the resume. One resumed in the
    background (`bg`) and brought to the foreground later gets no signal at `fg` (bash 5.2 sends SIGCONT only to a
    stopped job; probed), so the mode is also set again as each prompt ends: what this yields, for the REPL to call."""
    if sys.platform == "win32":         # (its console input is no termios terminal)
        yield lambda: None
        return
    import termios
    import tty

    descriptor = stdin.fileno()
    users_mode, between_prompts = termios.tcgetattr(descriptor), termios.tcgetattr(descriptor)
    between_prompts[tty.LFLAG] &= ~(termios.ICANON | termios.ECHO)
    between_prompts[tty.IFLAG] &= ~termios.ICRNL    # Enter stays \r: Esc Enter typed ahead is a new line, as typed
    # (TCSANOW, no flush: what was typed during the start waits for the first prompt too)
    termios.tcsetattr(descriptor, termios.TCSANOW, between_prompts)

    def set_mode(mode) -> None:
        try:
            termios.tcsetattr(descriptor, termios.TCSANOW, mode)
        except termios.error:       # the terminal is gone (a SIGHUP's, or while stopped): no mode left to set
            pass

    def kept_again() -> None:
        if _in_the_foreground(descriptor):
            set_mode(between_prompts)

    def resumed(_signal, _frame) -> None:
        if get_app_or_none() is None:       # (a prompt owns its own raw mode)
            kept_again()
    on_resume = signal.signal(signal.SIGCONT, resumed)
    try:
        yield kept_again
    finally:
        signal.signal(signal.SIGCONT, on_resume)
        set_mode(users_mode)


def _in_the_foreground(descriptor: int) -> bool:
    """Whether this process's group has the terminal; resumed in the background (`bg`) the terminal's mode is the
    shell's, and setting it from there would stop the REPL again (SIGTTOU)."""
    try:
        return os.tcgetpgrp(descriptor) == os.getpgrp()
    except OSError:             # not this process's controlling terminal: no shell's job control over it
        return False
