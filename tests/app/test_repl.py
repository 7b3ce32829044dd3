"""The chat REPL, in process, typed into through prompt-toolkit's pipe input (or, for the terminal's modes, a pty)."""
import dataclasses
import fcntl
import importlib.util
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_input, create_pipe_input
from prompt_toolkit.input.typeahead import clear_typeahead
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from codecomplete import chat, cli, repl, workspace
from codecomplete.cancel import CancelOnSigint
from codecomplete.errors import Stopped
from codecomplete.session import Session, timed_steps
from prompts import chat as prompts_chat

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("repl_pty", ROOT / "bench" / "repl_pty.py")
repl_pty = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repl_pty)

CTRL_C, CTRL_D, ESC_ENTER = "\x03", "\x04", "\x1b\r"     # Esc Enter: a new line, not send


@pytest.fixture(scope="module")
def conversation(repo, engine):
    args = cli.build_parser().parse_args([str(repo), "--max-tokens", "12"])
    return chat.Conversation(Session(engine, workspace.index(repo)), args)


def drive(conversation, keystrokes, history):
    """Run the REPL on scripted input, one entry per prompt; returns what it printed."""
    out = io.StringIO()
    with create_pipe_input() as pipe:
        session = repl.Repl(conversation, Console(file=out, width=100), input=pipe, output=DummyOutput(),
                            history=history)
        prompt = session.session.prompt

        def typed(*args, **kwargs):         # each prompt gets its line just before it reads
            pipe.send_text(keystrokes.pop(0))
            return prompt(*args, **kwargs)
        session.session.prompt = typed
        session.run()
    assert not keystrokes, "the REPL left before reading all the input"
    return out.getvalue()


def interrupt_answer(engine, monkeypatch, after_pieces=3, presses=1):
    """Press Ctrl-C (a real SIGINT) once the next answer has streamed a few pieces (twice: a double tap)."""
    generate = engine.generate

    def generate_then_interrupt(ids, config, on_text=None, should_stop=None):
        seen = []

        def on_piece(text):
            seen.append(text)
            on_text(text)
            if len(seen) == after_pieces:
                for _ in range(presses):
                    signal.raise_signal(signal.SIGINT)
        return generate(ids, config, on_text=on_piece, should_stop=should_stop)
    monkeypatch.setattr(engine, "generate", generate_then_interrupt)


def test_a_session(conversation, tmp_path, monkeypatch):
    conversation.reset()
    history = tmp_path / "history"
    printed = drive(conversation, ["What does area_of_circle compute?" + ESC_ENTER + "Answer briefly.\r",
                                   "/context\r", "/add shapes/geometry.py\r",
                                   "/add nowhere.py\r", "/drop shapes/geometry.py\r", "/model\r", "/bogus\r",
                                   "half typed" + CTRL_C, "/exit\r"], history)
    question, answer = conversation.messages
    assert question == {"role": "user", "content": "What does area_of_circle compute?\nAnswer briefly."}
    assert answer["role"] == "assistant" and answer["content"].strip()
    assert "Retrieved for the last question" in printed and "shapes/geometry.py" in printed
    assert "pinned shapes/geometry.py" in printed and "unpinned shapes/geometry.py" in printed
    assert conversation.pinned == []
    assert "SmolLM2" in printed and "trained on" in printed             # /model
    assert "error: file not found: nowhere.py" in printed
    assert "error: unknown command /bogus" in printed
    assert "Answer briefly." in history.read_text()
    assert "half typed" not in history.read_text()        # Ctrl-C threw the line away


def test_a_pasted_block_keeps_its_first_lines_indentation(conversation, tmp_path):
    conversation.reset()
    pasted = ESC_ENTER + "        return self.width * self.height  " + ESC_ENTER + "Why this?  \r"
    drive(conversation, [pasted, "/exit\r"], tmp_path / "history")
    question, _ = conversation.messages
    assert question["content"] == "        return self.width * self.height  \nWhy this?"   # only its ends trimmed


def test_help_lists_every_command_the_repl_takes(conversation, tmp_path):
    """/quit leaves as /exit does, but neither /help nor the README said so."""
    printed = drive(conversation, ["/help\r", "/quit\r"], tmp_path / "history")
    for name in ("/help", "/context", "/add PATH", "/drop [PATH]", "/reset", "/model [SPEC]", "/exit", "/quit"):
        assert name in printed, (name, printed)
    # and every key of the README's table: Up/Down (the history, kept across sessions) was said nowhere in it
    for key in ("Enter", "Esc Enter", "Tab", "Ctrl-C", "Ctrl-D", "Up/Down"):
        assert key in printed, (key, printed)


def test_a_command_that_takes_no_argument_refuses_one(conversation, tmp_path):
    """`/reset the model too` reset the conversation and `/exit now?` left the REPL, the rest of the line thrown
    away. Each says it takes no argument and does nothing; a command that takes one still gets it."""
    conversation.reset()
    conversation.messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    printed = drive(conversation, ["/reset the model too\r", "/exit now?\r", "/quit please\r", "/help me\r",
                                   "/drop nothing.py\r", "/exit\r"], tmp_path / "history")
    for name in ("/reset", "/exit", "/quit", "/help"):
        assert f"error: {name} takes no argument" in printed
    assert "error: nothing.py is not pinned" in printed
    assert [m["content"] for m in conversation.messages] == ["hi", "hello"]
    conversation.reset()


def test_a_command_and_its_argument_may_be_parted_by_any_space(conversation, tmp_path):
    """A line is a command by its first word as any whitespace ends it (`_is_command`), but the command was read up
    to the first plain space: `/add` Esc Enter `PATH` (or a pasted `/add` newline `PATH`) said "unknown command
    /add\nPATH", and `/reset` Esc Enter `more` "unknown command", not that /reset takes no argument."""
    conversation.reset()
    conversation.unpin(None)
    printed = drive(conversation, ["/add" + ESC_ENTER + "shapes/geometry.py\r",
                                   "/drop" + ESC_ENTER + " shapes/geometry.py\r",
                                   "/reset" + ESC_ENTER + "more\r", "/exit\r"], tmp_path / "history")
    assert "pinned shapes/geometry.py" in printed and "unpinned shapes/geometry.py" in printed, printed
    assert "error: /reset takes no argument" in printed and "unknown command" not in printed, printed
    assert conversation.pinned == []


def test_a_question_that_begins_with_a_path_is_asked(conversation, tmp_path):
    """A line that begins with a path (`/usr/lib holds what?`) is a question, not an unknown command; a bare unknown
    /word (`/etc`, or a mistyped command) is refused with how to ask it: `//` at the start asks the rest, one slash
    less (WeeChat's escape). Commands are still commands."""
    conversation.reset()
    printed = drive(conversation, ["/usr/lib holds what?\r", "/etc holds what?\r", "//etc holds what?\r",
                                   "/contxt\r", "/context\r", "/exit\r"], tmp_path / "history")
    asked = [m["content"] for m in conversation.messages if m["role"] == "user"]
    assert asked == ["/usr/lib holds what?", "/etc holds what?"]
    assert "error: unknown command /etc (/help lists them; //etc asks a question that begins with /etc)" in printed
    assert "error: unknown command /contxt" in printed
    assert "Retrieved for the last question" in printed                 # /context ran
    conversation.reset()


def conversation_over(engine, root, files: dict[str, str], max_tokens: int):
    """A REPL conversation over a new repository of these files, as `codecomplete ROOT --max-tokens N` opens it."""
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    args = cli.build_parser().parse_args([str(root), "--max-tokens", str(max_tokens)])
    return chat.Conversation(Session(engine, workspace.index(root)), args)


def test_the_repl_sees_files_change_between_questions(engine, tmp_path):
    """Files added, deleted or edited while the REPL waits are what its next command or question sees."""
    root = tmp_path / "repo"
    conversation = conversation_over(engine, root, {"old.py": "def old_helper():\n    return 1\n",
                                                    "kept.py": "def kept():\n    return 2\n"}, max_tokens=4)
    (root / "new.py").write_text("def zebra_unique_fn():\n    return 3\n")
    (root / "old.py").unlink()
    (root / "kept.py").write_text("def kept_renamed():\n    return 2\n")
    printed = drive(conversation, ["/add new.py\r", "/add kept.py\r", "What does zebra_unique_fn return?\r",
                                   "/exit\r"], tmp_path / "history")
    assert "pinned new.py" in printed and "not among the indexed files" not in printed
    text = engine.tokenizer.decode(conversation.last_prompt.ids)
    assert "zebra_unique_fn" in text and "kept_renamed" in text and "old_helper" not in text


def test_typing_a_long_line_keeps_memory_linear(conversation, tmp_path):
    """prompt-toolkit copies the line for undo before every key: 20k characters typed (a paste without bracketed
    paste) held ~200 MB of copies; with copies only below repl.UNDO_CHARS, a few MB. The line still arrives whole.
    12k characters here (n^2 / 2 bytes: 81 MB traced without the cut, 18 MB with it), for the suite's time.
    tracemalloc counts every thread's allocations, and on a CPU each REPL starts `Session.import_ahead` on a thread
    (torch._dynamo's import, tens of MB; an earlier test's REPL may still be running it under load): it is made first,
    so that what is traced is the line's."""
    import tracemalloc
    line = ("word " * 4000)[:12_000]
    conversation.session.import_ahead()     # (waits for another thread's import of it under way: the import lock)
    tracemalloc.start()
    try:
        printed = drive(conversation, ["/add " + line + "\r", "/exit\r"], tmp_path / "history")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "file not found" in printed or "error" in printed       # the whole line reached /add
    assert peak < 40e6, peak


def test_ctrl_c_cancels_the_answer_and_keeps_the_conversation(conversation, tmp_path, monkeypatch):
    conversation.reset()
    interrupt_answer(conversation.engine, monkeypatch)
    printed = drive(conversation, ["Explain Rectangle.\r", CTRL_D], tmp_path / "history")
    assert "cancelled" in printed
    assert [m["role"] for m in conversation.messages] == ["user", "assistant"]
    assert conversation.messages[1]["content"]                # the part that streamed stays
    # The flag is gone: the handler is restored and the next answer runs to its end.
    monkeypatch.undo()
    printed = drive(conversation, ["And its area method?\r", "/reset\r", "/exit\r"], tmp_path / "history")
    assert "cancelled" not in printed
    assert conversation.messages == []


def test_a_second_ctrl_c_mid_answer_keeps_what_streamed(conversation, tmp_path, monkeypatch):
    """A double tap raises KeyboardInterrupt in the middle of the answer instead of cancelling it: the answer so far
    vanished with the transient live view, and the conversation forgot it. It stays on screen and in the
    conversation, as a cancelled answer does, and the REPL goes on."""
    conversation.reset()
    interrupt_answer(conversation.engine, monkeypatch, presses=2)
    printed = drive(conversation, ["Explain Rectangle.\r", "/exit\r"], tmp_path / "history")
    question, answer = conversation.messages
    assert question["content"] == "Explain Rectangle." and answer["content"].strip()
    lines = printed.splitlines()
    shown = lines[lines.index("interrupted") - 1]
    assert shown.split() and shown.split()[0] in answer["content"]        # the line before is the answer so far


def test_ctrl_c_while_the_prompt_is_read_leaves_no_half_turn(conversation, tmp_path, monkeypatch):
    """Ctrl-C before the first token (a long prefill) kept the question with an empty answer: the next prompt showed
    the model a question answered with nothing, /context counted it as an exchange, and the summary claimed a first
    token in 0 ms. The conversation stays as it was, and the next question is answered as if the first never came."""
    conversation.reset()
    engine = conversation.engine
    generate = engine.generate

    def interrupted_at_once(ids, config, on_text=None, should_stop=None):
        signal.raise_signal(signal.SIGINT)          # pressed before the prefill's first layer
        return generate(ids, config, on_text=on_text, should_stop=should_stop)
    monkeypatch.setattr(engine, "generate", interrupted_at_once)
    printed = drive(conversation, ["Explain Rectangle.\r", "/exit\r"], tmp_path / "history")
    assert "cancelled" in printed and "(nothing generated)" in printed and "first token" not in printed
    assert conversation.messages == []
    monkeypatch.undo()
    printed = drive(conversation, ["What does area_of_circle compute?\r", "/context\r", "/exit\r"],
                    tmp_path / "history")
    assert "no earlier exchange" in printed                # not the question cancelled before
    assert [m["content"] for m in conversation.messages[::2]] == ["What does area_of_circle compute?"]
    assert "Explain Rectangle." not in engine.tokenizer.decode(conversation.last_prompt.ids)
    conversation.reset()


def test_a_long_conversation_leaves_room_for_the_pinned_file_and_the_code(conversation, tmp_path):
    """The earlier turns took all of the prompt they could: a few long exchanges in, the prompt carried no code at
    all, not even the file /add pinned "into every prompt", and the model answered about nothing. The earlier turns
    now take half the budget at most (the latest ones kept), and the pinned file and the excerpts the rest."""
    conversation.reset()
    for i in range(12):
        conversation.messages += [{"role": "user", "content": f"Question {i}: what about the circle, in detail?"},
                                  {"role": "assistant", "content": f"Answer {i}: " + "it computes an area. " * 20}]
    printed = drive(conversation, ["/add shapes/geometry.py\r", "What does area_of_circle return?\r", "/context\r",
                                   "/exit\r"], tmp_path / "history")
    packed = conversation.last_prompt
    budget = conversation.session.prompt_budget(conversation.max_new_tokens)
    text = conversation.engine.tokenizer.decode(packed.ids)
    assert "shapes/geometry.py" in {item.path for item in packed.context}
    assert "return math.pi * radius ** 2" in text
    assert "Answer 11:" in text and "Question 0:" not in text          # the latest exchange, not the oldest
    # /context says what the prompt carried (it said "13 exchanges so far": what the conversation holds)
    carried = sum(f"Answer {i}:" in text for i in range(12))
    assert 1 <= carried < 12 and f"{carried} of 12 earlier exchanges carried" in printed
    assert text.endswith("What does area_of_circle return?<|im_end|>\n<|im_start|>assistant\n")
    assert len(packed.ids) <= budget
    conversation.unpin()
    conversation.reset()


def test_a_pinned_file_too_large_for_the_budget_is_said_to_be_cut(table_engine, tmp_path):
    """/add promises the file in every prompt; one larger than the budget went in cut (or not at all) silently. (What
    the prompts carry, whatever the answers: conftest's table engine, the embedded model's tokenizer, chat template
    and context, answers its two questions in a fraction of the embedded model's time.)"""
    engine = table_engine
    root = tmp_path / "repo"
    root.mkdir()
    (root / "small.py").write_text("def small_helper():\n    return 2\n")
    (root / "big.py").write_text("".join(f"def helper_{i}(x):\n    return x * {i} + {i * 7}\n\n\n" for i in range(400)))
    args = cli.build_parser().parse_args([str(root), "--max-tokens", "4"])
    conversation = chat.Conversation(Session(engine, workspace.index(root)), args)
    printed = drive(conversation, ["/add small.py\r", "What does small_helper return?\r", "/add big.py\r",
                                   "What does helper_3 return?\r", "/exit\r"], tmp_path / "history")
    cut, = conversation.pinned_cut(conversation.last_prompt)        # small.py fits whole: not named
    shown = [item for item in conversation.last_prompt.context if item.path == "big.py"]
    share = sum(item.end_line - item.start_line + 1 for item in shown) * 100 // 800   # 400 two-line functions
    assert cut == f"big.py: {share}% of it fits" and 0 < share < 100
    assert printed.count("the prompt budget is full") == 1           # said for the question after /add big.py only
    assert f"pinned {cut}: the prompt budget is full" in printed


def test_completion_of_commands_and_paths(conversation, monkeypatch):
    completer = repl.SlashCompleter(conversation)

    def complete(text):
        return [c.text for c in completer.get_completions(Document(text), None)]
    assert complete("/co") == ["/context"]
    assert complete("/ad") == ["/add "]          # its argument follows: typing goes on after the space
    assert complete("/m") == ["/model "]
    assert complete("/add shapes/g") == ["shapes/geometry.py"]
    assert complete("/add geometry") == ["shapes/geometry.py"]
    assert complete("plain question") == []
    # A file named to reorder the menu (U+202E) is inserted as named and listed with the override shown.
    monkeypatch.setattr(conversation, "pinned", ["txt.\u202egnp.py"])
    [named] = completer.get_completions(Document("/drop txt"), None)
    assert named.text == "txt.\u202egnp.py" and named.display_text == "txt.\\u202egnp.py"


def test_a_model_that_fails_to_load_keeps_the_repls_model_and_conversation(conversation, tmp_path):
    conversation.reset()
    conversation.messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    engine = conversation.engine
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, '
                                     '"num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 300, '
                                     '"rope_scaling": {"type": "linear"}}')
    printed = drive(conversation, [f"/model {bad}\r", "/model random:SmolLM2-135M\r", "/model\r", "/exit\r"],
                    tmp_path / "history")
    assert f"error: {bad}/config.json: config lacks factor" in " ".join(printed.split())
    assert "/model random:SmolLM2-135M: random weights have no tokenizer" in printed
    assert "--model" not in printed                                     # the REPL has no options to name
    assert conversation.engine is engine and conversation.args.model is None
    assert [m["content"] for m in conversation.messages] == ["hi", "hello"]


def test_switching_models_frees_the_old_cache_first_and_a_failed_switch_leaves_it_working(conversation, tmp_path,
                                                                                           monkeypatch):
    """The new model's cache is sized from free memory: the old model's cache must be gone when it loads. When
    the load fails, the old model allocates its cache again and generates as before."""
    from models import GenerationConfig
    engine = conversation.engine
    ids = engine.tokenizer.encode("def add(a, b):\n")
    greedy = GenerationConfig(max_new_tokens=6, temperature=0.0)
    before = engine.generate(ids, greedy).token_ids
    seen = []

    def load(args, max_new_tokens):
        seen.extend(layer.attention.kv_cache for layer in engine.model.layers)
        raise repl.UsageError("--model elsewhere: not found")
    monkeypatch.setattr(repl.engines, "load", load)
    printed = drive(conversation, ["/model elsewhere\r", "/exit\r"], tmp_path / "history")
    assert "/model elsewhere: not found" in printed
    assert seen and all(cache is None for cache in seen)
    assert conversation.engine is engine and engine.generate(ids, greedy).token_ids == before


def test_a_model_whose_ranks_stopped_can_be_replaced(conversation, tmp_path, monkeypatch):
    """With --gpus, a second Ctrl-C mid-answer (or a rank that dies) stops the ranks, and every question says "load the
    model again". /model refused to: it first asks the old model to free its cache, which its stopped ranks refuse
    with the same message, so the REPL was left without a model until restarted."""
    from models.distributed import RankFailed
    engine = conversation.engine

    class Stopped:      # a tensor-parallel model whose ranks were stopped: what rank 0 holds reads, calls are refused
        def __getattr__(self, name):
            return getattr(engine, name)

        def release_memory(self, *args, **kwargs):
            raise RankFailed("the tensor-parallel ranks were stopped; load the model again")
        generate = release_memory
    monkeypatch.setattr(conversation.session, "engine", Stopped())
    monkeypatch.setattr(conversation, "args", conversation.args)     # /model replaces them; put back after
    monkeypatch.setattr(repl.engines, "load", lambda args, max_new_tokens: engine)
    conversation.reset()
    printed = drive(conversation, ["/model again\r", "What does area_of_circle compute?\r", "/exit\r"],
                    tmp_path / "history")
    conversation.reset()
    assert "error" not in printed and conversation.engine is engine
    assert "SmolLM2" in printed and "tok/s" in printed      # /model said the new model, which then answered


def test_the_model_switched_away_from_is_freed_at_once(conversation, tmp_path, monkeypatch):
    """The last answer's live view is a reference cycle that holds its generation, and so its engine: after /model
    the old model's weights stayed until Python's next full collection, which a REPL may not reach for many
    questions (on a GPU, beside the new model's). They go as soon as the new model is in."""
    import gc
    import weakref
    engine = conversation.engine

    class Previous:     # the model loaded before: the session's engine under another object, so that it can go
        def __getattr__(self, name):
            return getattr(engine, name)
    previous = Previous()
    gone = weakref.ref(previous)
    monkeypatch.setattr(conversation.session, "engine", previous)
    monkeypatch.setattr(conversation, "args", conversation.args)     # /model replaces them; put back after
    monkeypatch.setattr(repl.engines, "load", lambda args, max_new_tokens: engine)
    del previous
    conversation.reset()
    gc.disable()        # collections only when the REPL asks for one
    try:
        printed = drive(conversation, ["What does area_of_circle compute?\r", "/model other\r", "/exit\r"],
                        tmp_path / "history")
    finally:
        gc.enable()
        conversation.reset()
    assert "SmolLM2" in printed and conversation.engine is engine
    assert gone() is None


def test_history_is_never_kept_inside_the_repository_or_in_a_special_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "repo" / ".state"))     # HOME is the repository
    assert repl.history_path(tmp_path / "repo") is None and not (tmp_path / "repo").exists()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "state" / "codecomplete").mkdir(parents=True)
    os.mkfifo(tmp_path / "state" / "codecomplete" / "history")         # reading it would block the REPL
    assert repl.history_path(tmp_path / "repo") is None


def test_the_history_file_is_readable_by_its_owner_only(tmp_path, monkeypatch):
    """Questions can hold secrets (a pasted key); shells keep their history 0600 too."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = repl.history_path(tmp_path / "repo")
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o077 == 0
    path.chmod(0o644)                               # one written by an older version is tightened
    assert repl.history_path(tmp_path / "repo").stat().st_mode & 0o777 == 0o600


def test_the_history_file_is_kept_on_windows_too(tmp_path, monkeypatch):
    """Windows has no O_NOFOLLOW: the REPL ended in an AttributeError before its first prompt."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delattr(os, "O_NOFOLLOW")
    path = repl.history_path(tmp_path / "repo")
    assert path == tmp_path / "state" / "codecomplete" / "history" and path.is_file()


def test_only_the_history_files_tail_is_read_at_start_up(tmp_path, monkeypatch):
    """prompt-toolkit read (and kept) the whole history file as the REPL started: one of hundreds of MB made the
    start slow, or failed. Its last HISTORY_TAIL_BYTES are read (here a few KB of a 40 KB file): the newest entries,
    each whole, newest first, as prompt-toolkit's own reading gives them."""
    from prompt_toolkit.history import FileHistory
    history = tmp_path / "history"
    writer = FileHistory(str(history))
    for i in range(400):
        writer.store_string(f"question {i}" + "\n   and its second line" * (i % 3))
    monkeypatch.setattr(repl, "HISTORY_TAIL_BYTES", 3000)
    every = list(FileHistory(str(history)).load_history_strings())
    for cut in range(40):       # wherever the tail begins, within an entry or between two
        monkeypatch.setattr(repl, "HISTORY_TAIL_BYTES", 3000 + cut)
        tail = list(repl._FileHistory(str(history)).load_history_strings())
        assert 20 < len(tail) < 60 and tail == every[:len(tail)]          # whole entries, the newest
    monkeypatch.setattr(repl, "HISTORY_TAIL_BYTES", 1 << 20)
    assert list(repl._FileHistory(str(history)).load_history_strings()) == every
    assert list(repl._FileHistory(str(tmp_path / "none")).load_history_strings()) == []


def test_a_history_file_that_can_no_longer_be_written_never_interrupts_the_session(conversation, tmp_path):
    """A full disk, or the file replaced under the REPL: prompt-toolkit printed a traceback and "Press ENTER to
    continue" at every line sent. The line is kept in memory (Up still finds it), and the REPL goes on."""
    history = tmp_path / "history"
    history.write_text("")
    with create_pipe_input() as pipe:
        session = repl.Repl(conversation, Console(file=io.StringIO()), input=pipe, output=DummyOutput(),
                            history=history)
    history.unlink()
    history.mkdir()                                 # open(..., "ab") now fails, as on a full disk
    session.session.history.append_string("What does area_of_circle compute?")
    assert "What does area_of_circle compute?" in session.session.history.get_strings()


def test_the_toolbar_rate_is_the_loaded_models(conversation, tmp_path, monkeypatch):
    """After /model loads another model, the toolbar's tok/s was still the old model's last answer's."""
    out = io.StringIO()
    with create_pipe_input() as pipe:
        session = repl.Repl(conversation, Console(file=out, width=100), input=pipe, output=DummyOutput(),
                            history=tmp_path / "history")
    session.last_rate = 42.0
    assert "42.0 tok/s" in session._toolbar()
    monkeypatch.setattr(repl.engines, "load", lambda args, max_new_tokens: conversation.engine)
    monkeypatch.setattr(conversation, "args", conversation.args)     # /model replaces them; put back after
    session.command("/model other")
    assert "tok/s" not in session._toolbar() and conversation.args.model == "other"


def test_a_dumb_terminal_gets_no_escape_codes(conversation, tmp_path, monkeypatch):
    """TERM=dumb (Emacs' shell, a serial console) shows escape codes as text: prompt-toolkit's session wrote
    `\x1b[?12l\x1b[?25h` (show the cursor) to the terminal as the REPL started. It gets the prompt and what is
    typed, as text."""
    monkeypatch.setenv("TERM", "dumb")
    terminal, tty = os.openpty()
    with os.fdopen(tty, "w", encoding="utf-8") as stdout, create_pipe_input() as pipe:
        monkeypatch.setattr("sys.stdout", stdout)
        session = repl.Repl(conversation, Console(file=io.StringIO(), width=100), input=pipe,
                            history=tmp_path / "history")
        pipe.send_text("/reset\r")
        session.command(session.session.prompt("› ").strip())
        stdout.flush()
        # The terminal passes on what was written when the kernel gets to it: on a busy machine one read took
        # "› /r". Read until it has been quiet for a second.
        out = b""
        while select.select([terminal], [], [], 1 if b"/reset" in out else 10)[0]:
            out += os.read(terminal, 65536)
        out = out.decode()
    os.close(terminal)
    assert "› /reset" in out and "\x1b" not in out, repr(out)


def test_an_error_naming_a_long_path_with_a_newline_is_one_short_line(conversation, tmp_path):
    """`/add` of a path 3,000 characters long with a newline in it: the error said the path in full, on two lines."""
    conversation.reset()
    printed = drive(conversation, ["/add " + "sub/" * 750 + "new" + ESC_ENTER + "line.py\r", "/exit\r"],
                    tmp_path / "history")
    error = "".join(printed.split("error: ", 1)[1].splitlines())      # as one line, unwrapped from the width
    assert error.startswith("file not found: sub/sub/") and error.endswith("sub/new\\nline.py"), printed
    assert "…" in error and len(error) < 200, printed


def test_a_pinned_file_deleted_since_is_unpinned_with_a_notice(engine, tmp_path):
    """A pinned file deleted later made every question fail ("no such file: gone.py") until /drop. The question is
    answered, and the REPL says it unpinned the file. /add and the prompt refuse a file with one message."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "gone.py").write_text("def gone_helper():\n    return 1\n")
    (root / "kept.py").write_text("def kept_helper():\n    return 2\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    args = cli.build_parser().parse_args([str(root), "--max-tokens", "4"])
    conversation = chat.Conversation(Session(engine, workspace.index(root)), args)
    conversation.pin("gone.py")
    conversation.pin("kept.py")
    (root / "gone.py").unlink()
    printed = drive(conversation, ["What does kept_helper return?\r", "/add blob.bin\r", "/exit\r"],
                    tmp_path / "history")
    assert "no such file: gone.py: unpinned" in printed and "error: no such file" not in printed
    assert conversation.pinned == ["kept.py"] and len(conversation.messages) == 2
    assert "kept_helper" in engine.tokenizer.decode(conversation.last_prompt.ids)
    with pytest.raises(Exception) as refused:
        prompts_chat.pinnable(conversation.index, "blob.bin")
    assert f"error: {refused.value}" in " ".join(printed.split())


def test_a_pinned_file_named_with_a_newline_is_said_on_one_line(engine, tmp_path):
    """`/add` of a file named `new\\nline.py` said "pinned new" on one line and "line.py" on the next, as /context's
    pinned list did: the name is shown with its newline as `\\n`, as errors show it."""
    conversation = conversation_over(engine, tmp_path / "repo", {"new\nline.py": "def newline_helper():\n    return 1\n",
                                                                "kept.py": "def kept():\n    return 2\n"}, max_tokens=2)
    printed = drive(conversation, ["/add new" + ESC_ENTER + "line.py\r", "/context\r", "/drop new" + ESC_ENTER +
                                   "line.py\r", "/exit\r"], tmp_path / "history")
    lines = printed.splitlines()
    assert "pinned new\\nline.py" in lines and "pinned: new\\nline.py" in lines, printed
    assert "unpinned new\\nline.py" in lines and "line.py" not in lines, printed
    assert conversation.pinned == []


def test_a_follow_up_prefills_only_itself(table_engine, tmp_path):
    """A later question of the same conversation holds the excerpts the one before it carried (prompts/chat.py): the
    model's cache holds that prompt and its answer, and only the new question is read. (Whatever the answers say:
    conftest's table model, the embedded model's tokenizer and template, writes its 40 tokens in a fraction of the
    embedded model's time.)"""
    engine = table_engine
    def module(topic: str) -> str:
        return "\n\n".join(f"def {topic}_{k}(value, limit):\n    checked = value * {k} + limit\n"
                           f"    if checked > limit:\n        return {topic}_{(k + 1) % 40}(checked, limit)\n"
                           f"    return checked\n" for k in range(40))
    conversation = conversation_over(engine, tmp_path / "repo", {f"{topic}.py": module(topic) for topic in
                                                                 ("encode_floats", "decode_objects", "read_until")},
                                     max_tokens=40)
    turns, answer = [], conversation.answer

    def answered(question, generation, view):
        turns.append((generation.prompt, answer(question, generation, view)))
        return turns[-1][1]
    conversation.answer = answered
    drive(conversation, ["How does encode_floats_3 use its limit?\r", "Why that limit?\r", "Why?\r", "/exit\r"],
          tmp_path / "history")
    (first, _), (second, _), (third, result) = turns
    assert len(first.ids) > conversation.session.prompt_budget(40) - 50     # the first question's fill the budget
    assert third.context == second.context and "encode_floats.py" in {item.path for item in third.context}
    assert result.reused_prefix_tokens >= len(second.ids)
    assert result.prompt_tokens - result.reused_prefix_tokens < 30


def _asked_once(engine, root):
    """A session over two modules that answered one question about encode_floats_3, its sampling, and a follow-up
    to that question."""
    from codecomplete.session import Sampling

    conversation = conversation_over(engine, root, {f"{topic}.py": "\n\n".join(
        f"def {topic}_{k}(value, limit):\n    return value * {k} + limit\n" for k in range(40))
        for topic in ("encode_floats", "read_until")}, max_tokens=8)
    session, sampling = conversation.session, Sampling(max_tokens=8)
    first = [{"role": "user", "content": "How does encode_floats_3 use its limit?"}]
    session.chat(first, sampling=sampling)
    return session, sampling, [*first, {"role": "assistant", "content": "It adds it. " * 20},
                               {"role": "user", "content": "Why?"}]


def test_a_model_switch_forgets_the_prompts_held(engine, tmp_path):
    """After /model the session holds no prompt of the old model's: its excerpts were counted with the old tokenizer
    (/context showed those counts) and the new model's cache holds none of them. A follow-up is built afresh."""
    root = tmp_path / "repo"
    session, sampling, follow_up = _asked_once(engine, root)
    session.complete("encode_floats.py", line=3, sampling=sampling)
    alone = Session(engine, workspace.index(root)).chat(follow_up, sampling=sampling).prompt.ids
    session.use(engine)     # (the same model again: what is held goes all the same)
    assert session.engine is engine and session.chat(follow_up, sampling=sampling).prompt.ids == alone


def test_a_chat_that_is_not_sticky_is_built_as_by_a_session_without_history(engine, tmp_path):
    """The native route's chat (--ask through a server) prints what it would print alone: it neither holds from the
    chat before it nor is held from."""
    root = tmp_path / "repo"
    session, sampling, follow_up = _asked_once(engine, root)
    alone = Session(engine, workspace.index(root)).chat(follow_up, sampling=sampling).prompt.ids
    assert session.chat(follow_up, sampling=sampling, sticky=False).prompt.ids == alone
    assert session.chat(follow_up, sampling=sampling).prompt.ids != alone      # (the sticky one holds, or leaves room)


def test_on_a_gpu_the_repl_warms_the_model_up_before_the_first_question(conversation, tmp_path, monkeypatch):
    """A process that warmed nothing built its decode steps inside its answers: a chat follow-up's 22 new tokens
    waited 11.7 s for the verification step's capture (CodeLlama-7B shape, an H100; bench/results/NOTES.md, Run 45).
    The REPL now warms up as the server does (Session.warm_up) at its start, and again after /model; a CPU builds
    nothing ahead."""
    warmed = []

    def warm_up(session, should_stop=lambda: False, steps=None):
        warmed.append(session.engine)
        return ["the decode step", "the step that verifies drafts"]
    monkeypatch.setattr(Session, "warm_up", warm_up)
    assert "warmed up" not in drive(conversation, ["/exit\r"], tmp_path / "history") and warmed == []  # a CPU
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)    # (as on a GPU: CUDA graphs)
    engine = conversation.engine
    monkeypatch.setattr(repl.engines, "load", lambda args, max_new_tokens: engine)
    printed = drive(conversation, ["/model again\r", "/help\r", "/exit\r"], tmp_path / "history")
    assert warmed == [engine, engine]       # at the start, and after /model
    assert printed.count("warmed up the decode step, the step that verifies drafts in ") == 2, printed


def test_on_a_cpu_the_repl_imports_what_a_first_follow_up_would_while_the_question_is_typed(conversation, tmp_path,
                                                                                            monkeypatch):
    """A CPU builds no steps ahead, and the REPL's first follow-up (a prompt after a cached prefix) paid the import
    of the attention's bottom-right mask: first token 2.0 s for 24 new tokens (bench/repl_pty.py, 2-core CPU; round
    17). The REPL now starts Session.import_ahead on a thread of its own at its start (and after /model), which
    nothing waits for; on a GPU the warm-up's compilation pays it and no such thread runs."""
    imported = []
    monkeypatch.setattr(Session, "import_ahead", lambda session: imported.append(threading.current_thread().name))
    engine = conversation.engine
    monkeypatch.setattr(repl.engines, "load", lambda args, max_new_tokens: engine)
    drive(conversation, ["/model again\r", "/exit\r"], tmp_path / "history")
    for thread in threading.enumerate():
        if thread.name == "import-ahead":
            thread.join(timeout=30)
    assert imported == ["import-ahead", "import-ahead"], imported        # at the start, and after /model
    imported.clear()
    monkeypatch.setattr(Session, "warm_up", lambda session, should_stop=lambda: False, steps=None: [])
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)    # (as on a GPU: CUDA graphs)
    drive(conversation, ["/exit\r"], tmp_path / "history")
    assert imported == []


def test_the_warm_up_runs_while_the_first_question_is_typed(conversation, tmp_path, monkeypatch):
    """The REPL's warm-up held its prompt back: 17.0 s on a fresh H100 and 6.7 s with Triton's kernel cache filled
    (CodeLlama-7B shape; Run 46) before the user could type. The prompt now shows at once and the steps are built
    on a thread of their own meanwhile; a line typed before they are done waits for them (the session is one
    caller's at a time), then says what was built, then runs."""
    release, seen = threading.Event(), {}

    def warm_up(session, should_stop=lambda: False, steps=None):
        seen["thread"] = threading.current_thread()
        assert release.wait(timeout=60)
        return ["the decode step"]
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    out = io.StringIO()
    with create_pipe_input() as pipe:
        session = repl.Repl(conversation, Console(file=out, width=100), input=pipe, output=DummyOutput(),
                            history=tmp_path / "history")
        prompt, lines = session.session.prompt, ["/reset\r", "/exit\r"]

        def typed(*args, **kwargs):
            if len(lines) == 2:             # the first prompt shows while the warm-up still runs
                seen["at the first prompt"] = session._warming.running()
                seen["toolbar"] = session._toolbar()
                threading.Timer(0.3, release.set).start()
            pipe.send_text(lines.pop(0))
            return prompt(*args, **kwargs)
        session.session.prompt = typed
        session.run()
    printed = out.getvalue()
    assert seen["at the first prompt"] and "warming up the GPU" in seen["toolbar"]
    assert seen["thread"] is not threading.main_thread()
    assert printed.index("warmed up the decode step in ") < printed.index("new conversation"), printed


def test_leaving_during_the_warm_up_stops_it(conversation, tmp_path, monkeypatch):
    """/exit while the warm-up runs: it is told to stop after the step under way, and the REPL waits for its thread
    (a capture cut off by the interpreter's exit could leave the GPU's context in a bad state), without a word."""
    seen = {}

    def warm_up(session, should_stop=lambda: False, steps=None):
        deadline = time.monotonic() + 60
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["stopped"] = should_stop()
        return ["the decode step"]
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    started = time.monotonic()
    printed = drive(conversation, ["/exit\r"], tmp_path / "history")
    assert seen == {"stopped": True} and time.monotonic() - started < 30
    assert "warmed up" not in printed and not [t for t in threading.enumerate() if t.name == "warm-up"]


def test_the_sessions_warm_up_builds_each_step_once_and_stops_between_them(conversation, monkeypatch):
    """Session.warm_up, the server's and the REPL's: a short generation (the decode step), then the verifying and
    the wide steps where the engine builds them (a CPU's engine does not); a stop asked skips the rest."""
    session, engine = conversation.session, conversation.engine
    calls = []
    monkeypatch.setattr(session, "warm_up_seconds", {})    # (the module's session: as it was, afterwards)
    monkeypatch.setattr(session, "warm_up_skipped", [])
    monkeypatch.setattr(engine, "warm_speculation", lambda: calls.append("verify") or time.sleep(0.2) or True)
    monkeypatch.setattr(engine, "warm_wide_tail", lambda: calls.append("wide") or False)
    built = session.warm_up()
    assert built == ["the decode step", "the step that verifies drafts"] and calls == ["verify", "wide"]
    # each step built is timed, and said with its seconds (the REPL's line, the server's log)
    assert session.warm_up_seconds.keys() == set(built) and session.warm_up_seconds[built[1]] >= 0.2
    said = timed_steps(session, built)
    assert said[1] == f"the step that verifies drafts ({session.warm_up_seconds[built[1]]:.1f} s)", said
    assert said[0].startswith("the decode step (") and said[0].endswith(" s)"), said
    assert session.warm_up_skipped == []
    calls.clear()
    assert session.warm_up(should_stop=lambda: True) == ["the decode step"] and calls == []
    assert list(session.warm_up_seconds) == ["the decode step"]
    assert session.warm_up_skipped == ["the step that verifies drafts", "the step that feeds a longer edit"]
    # the steps a stop skipped, built alone after an answer: no generation (it would take the answer's cache row)
    calls.clear()
    generate = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append("generate") or generate(*a, **k))
    assert session.warm_up(steps=["the step that verifies drafts"]) == ["the step that verifies drafts"]
    assert calls == ["verify"] and session.warm_up_skipped == []


def test_the_pty_benchmark_reads_each_answer_as_the_repl_reports_it(cli_env, repo, tmp_path):
    """bench/repl_pty.py times the REPL a user meets (a pseudo-terminal, prompt-toolkit's cursor queries answered):
    it must find the first prompt, send each question, and read each answer's closing line, or a GPU call's
    warm-up measurement comes back empty."""
    out = tmp_path / "repl.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "repl_pty.py"), "--repo", str(repo), "--out", str(out),
                           "--timeout", "240", "--reading", "0.2", "--", "--max-tokens", "3"], env=cli_env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["failure"] is None and result["exit"] == 0 and result["ready_s"] > 0
    rows = result["rows"]
    assert [row["question"] for row in rows] == repl_pty.QUESTIONS
    for row in rows:
        assert 1 <= row["tokens"] <= 3 and row["prompt"] > 10 and row["first_token_ms"] > 0, row
        assert 0 < row["enter_to_answer_s"] < 240, row
    assert "| What does _make_iterencode do with floats? | " in out.read_text()
    assert "each follow-up 0.2 s after the answer before it" in out.read_text()


def test_a_question_waits_for_the_step_under_way_and_the_rest_is_built_after_its_answer(conversation, tmp_path,
                                                                                      monkeypatch):
    """A first question sent as the prompt showed waited for the whole warm-up: 24.6 s from Enter to the answer on a
    fresh H200, of which the verifying and wide steps, which no first answer needs, took 16.4 s (Run 48). A question
    now stops the warm-up after the step under way; the steps it skipped are built after the answer, before the next
    prompt reads. A command still waits for all of it."""
    runs, asked = [], []

    def warm_up(session, should_stop=lambda: False, steps=None):
        runs.append("warm-up")
        asked.append(steps)
        session.warm_up_skipped = []
        # the first time, the step that verifies drafts is under way when the line comes; after the answer it is short
        deadline = time.monotonic() + (20 if runs.count("warm-up") == 1 else 0.2)
        while time.monotonic() < deadline and not should_stop():
            time.sleep(0.01)
        if should_stop():
            session.warm_up_skipped = ["the step that verifies drafts"]
            return ["the decode step"]
        return ["the decode step", "the step that verifies drafts"]
    generate = conversation.engine.generate

    def answer(*args, **kwargs):
        runs.append("answer")
        return generate(*args, **kwargs)
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(conversation.engine, "generate", answer)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    started = time.monotonic()
    printed = drive(conversation, ["Explain Rectangle.\r", "/reset\r", "/exit\r"], tmp_path / "history")
    assert time.monotonic() - started < 15, printed      # (the first answer did not wait out the 20 s step)
    assert runs[:3] == ["warm-up", "answer", "warm-up"], runs
    # after the answer, only what it skipped: the decode step's generation would take the conversation's cache row
    assert asked[:2] == [None, ["the step that verifies drafts"]], asked
    assert "warmed up the decode step in " in printed and "(the rest after this answer)" in printed, printed
    # the rest, built after the answer, is waited for by the command that came next
    assert "warmed up the decode step, the step that verifies drafts in " in printed, printed
    assert printed.index("(the rest after this answer)") < printed.index("new conversation"), printed


def test_showing_the_model_lets_the_warm_up_finish(conversation, tmp_path, monkeypatch):
    """`/model` alone only shows the model: the warm-up under way goes on to its end. Only `/model SPEC` skips the
    rest (the model it warms goes); a bare `/model` skipped it too, and the next answers built the steps skipped."""
    seen = {}

    def warm_up(session, should_stop=lambda: False, steps=None):
        deadline = time.monotonic() + 0.5           # a step under way when the line is typed
        while time.monotonic() < deadline and not should_stop():
            time.sleep(0.01)
        seen["stopped"] = should_stop()
        return ["the decode step"]
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    printed = drive(conversation, ["/model\r", "/exit\r"], tmp_path / "history")
    assert seen == {"stopped": False}
    assert "warmed up the decode step in " in printed and "skipped the rest" not in printed, printed


def test_a_second_ctrl_c_while_a_line_waits_for_the_warm_up_does_not_let_the_next_line_beside_it(
        conversation, tmp_path, monkeypatch):
    """Ctrl-C twice while a line waits for the warm-up (the step under way, a capture of seconds, does not stop at
    once; a second Ctrl-C is KeyboardInterrupt): the line is interrupted, and the warm-up, still running, is still
    waited for by the next line. It was forgotten instead (and Python 3.11's Thread.join, interrupted, marks the
    thread ended though it runs, gh-90882): the next line ran beside it, its answer's GPU work beside a capture, the
    session two callers', and /exit did not wait for it either."""
    order = []

    def press_ctrl_c(pressed: int) -> None:
        """From the warm-up's thread, once the line waits for it."""
        until_a_line_waits_for_the_warm_up(cancelled=pressed > 0)
        os.kill(os.getpid(), signal.SIGINT)

    def warm_up(session, should_stop=lambda: False, steps=None):
        press_ctrl_c(0)
        press_ctrl_c(1)
        time.sleep(1.0)                             # the step under way goes on after the second press
        order.append("warm-up ended")
        return ["the decode step"]
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(Session, "catch_up", lambda session: order.append("line ran"))
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    printed = drive(conversation, ["/help\r", "/help\r", "/exit\r"], tmp_path / "history")
    assert "interrupted" in printed
    assert order == ["warm-up ended", "line ran"], (order, printed)
    assert "warmed up the decode step in " in printed and "(skipped the rest)" in printed, printed


def until_a_line_waits_for_the_warm_up(cancelled: bool = False) -> None:
    """From the warm-up's thread: return once a line waits for it (CancelOnSigint handles SIGINT, a Ctrl-C pressed
    meanwhile or not as `cancelled` says)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cancel = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
        if isinstance(cancel, CancelOnSigint) and cancel.cancelled == cancelled:
            return
        time.sleep(0.01)
    raise AssertionError("the line did not wait for the warm-up")


def test_a_dumb_terminal_is_told_what_a_line_waits_for(conversation, tmp_path, monkeypatch):
    """TERM=dumb draws no spinner: a line typed while the warm-up ran waited for the rest of it in silence (up to
    the warm-up's seconds on a GPU). It says what it waits for on one plain line."""
    def warm_up(session, should_stop=lambda: False, steps=None):
        until_a_line_waits_for_the_warm_up()
        return ["the decode step"]
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    monkeypatch.setenv("TERM", "dumb")
    terminal, tty = os.openpty()
    with open(tty, "w", encoding="utf-8") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        printed = drive(conversation, ["/help\r", "/exit\r"], tmp_path / "history")
    said = []
    _read_until_closed(terminal, said)
    os.close(terminal)
    assert b"".join(said).decode().splitlines() == ["finishing the model's warm-up on the GPU (Ctrl-C skips the rest)"]
    assert "warmed up the decode step in " in printed and "this help" in printed, printed


def test_the_toolbar_redrawn_as_the_warm_up_ends_says_it_ended(conversation):
    """The warm-up's thread asks for a redraw as it ends, so that the toolbar drops "warming up the GPU": a redraw
    run at once (the event loop's thread may run it before the warm-up's thread has ended) still said it ran, and
    nothing redrew the toolbar again until a key was pressed."""
    toolbars, go = [], threading.Event()

    class _Session:
        def warm_up(self, should_stop, steps=None):
            assert go.wait(timeout=30)
            return ["the decode step"]
    session = repl.Repl(conversation, Console(file=io.StringIO()), input=None, output=DummyOutput(),
                        history=None)
    session._warming = repl._WarmUp(_Session(), lambda: toolbars.append(session._toolbar()))
    go.set()
    session._warming.finish(should_stop=lambda: False)
    assert toolbars and "warming up" not in toolbars[0], toolbars


def test_a_model_that_fails_to_load_leaves_the_old_one_warmed_up_again(conversation, tmp_path, monkeypatch):
    """/model SPEC hands the old model's KV cache and graphs back before it loads the new one; where the load fails
    the old model stays, its steps gone: its next answers built them inside themselves (a capture of seconds in a
    follow-up, Run 45). It is warmed up again, in the background, from the next prompt on."""
    warmed = []

    def warm_up(session, should_stop=lambda: False, steps=None):
        warmed.append(session.engine)
        return ["the decode step"]

    def load(args, max_new_tokens):
        raise repl.UsageError("--model nowhere: not found")
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    monkeypatch.setattr(repl.engines, "load", load)
    printed = drive(conversation, ["/model nowhere\r", "/help\r", "/exit\r"], tmp_path / "history")
    assert "error: /model nowhere: not found" in printed
    assert warmed == [conversation.engine, conversation.engine], printed
    assert printed.count("warmed up the decode step in ") == 2, printed


def test_ctrl_c_while_leaving_waits_for_the_warm_up_step_under_way(conversation, tmp_path, monkeypatch):
    """/exit while the warm-up runs stops it after the step under way and waits; a Ctrl-C during that wait left at
    once, the warm-up's thread still inside its step (on a GPU a capture, cut off by the interpreter's exit). The
    Ctrl-C now waits for the step too, then leaves as an interrupt."""
    seen = {"ended": False}

    def warm_up(session, should_stop=lambda: False, steps=None):
        deadline = time.monotonic() + 60
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C while the REPL waits for the step under way
        time.sleep(0.5)                         # (the step's end)
        seen["ended"] = True
        return ["the decode step"]
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    with pytest.raises(KeyboardInterrupt):
        drive(conversation, ["/exit\r"], tmp_path / "history")
    assert seen["ended"]


@pytest.mark.parametrize("leave", ["/exit\r", CTRL_D])
@pytest.mark.parametrize("when", ["before", "while"])
def test_a_warm_up_error_is_said_on_the_way_out_where_no_line_came(conversation, tmp_path, monkeypatch, leave, when):
    """A warm-up that failed in a way the REPL does not know (a bug, a driver's odd error) was raised at the first
    line; where the user left first (/exit, Ctrl-D) it was never said, the exit as clean as a warm-up's success.
    It is now said on the way out in one line, no traceback, the exit still the user's (no exception), whether it
    came before the user left or during the wait for the step under way."""
    def warm_up(session, should_stop=lambda: False, steps=None):
        if when == "while":
            deadline = time.monotonic() + 60
            while not should_stop() and time.monotonic() < deadline:
                time.sleep(0.01)
        raise RuntimeError("the driver said no\nat line two")
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    if when == "before":                        # the warm-up has failed by the time the user leaves
        prompt = repl.PromptSession.prompt
        monkeypatch.setattr(repl.PromptSession, "prompt",
                            lambda self, *args, **kwargs: time.sleep(0.3) or prompt(self, *args, **kwargs))
    printed = drive(conversation, [leave], tmp_path / "history")
    lines = [line for line in printed.splitlines() if "warm-up" in line]
    assert lines == ["warm-up failed: internal error: RuntimeError: the driver said no\\nat line two"], printed
    assert "Traceback" not in printed


def test_a_known_warm_up_error_is_said_on_the_way_out_as_at_a_line(conversation, tmp_path, monkeypatch):
    """A warm-up error the REPL knows (out of memory, say) is said in yellow at the first line; the user who left
    first heard nothing of it either. It is said on the way out as a line would have said it."""
    def warm_up(session, should_stop=lambda: False, steps=None):
        raise MemoryError()
    monkeypatch.setattr(Session, "warm_up", warm_up)
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    printed = drive(conversation, ["/exit\r"], tmp_path / "history")
    assert [line for line in printed.splitlines() if "warm-up" in line] == [
        "warm-up: out of memory: try a smaller --context-tokens"], printed


def test_an_escape_sequence_typed_raw_is_no_traceback(conversation, tmp_path, capfd):
    """Text with a terminal's colour codes in it (`\\x1b[31m`, pasted where the terminal does not bracket pastes,
    or typed), or a malformed mouse report: prompt-toolkit reads `ESC [ digits m` as a mouse event, its handler
    failed to parse it, and the REPL printed "Unhandled exception in event loop", a traceback and "Press ENTER to
    continue...", which waited for a key. Such a sequence is now dropped, the rest of the line kept."""
    out = io.StringIO()
    with create_pipe_input() as pipe:
        session = repl.Repl(conversation, Console(file=out, width=100), input=pipe, output=DummyOutput(),
                            history=tmp_path / "history")
        pipe.send_text("/hel\x1b[31mp\x1b[0m\x1b[<1;2m\x1b[M!!!\r/exit\r")
        thread = threading.Thread(target=session.run, daemon=True)    # (the old code never returned here)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the REPL waited for a key after the escape sequence"
    printed, captured = out.getvalue(), capfd.readouterr()
    assert "Unhandled exception" not in captured.out + captured.err + printed
    assert "this help" in printed, printed


def test_a_ctrl_c_as_the_prompt_comes_up_is_no_traceback(conversation, tmp_path, monkeypatch):
    """Ctrl-C pressed as an answer ends (the user meant to stop it) can come while prompt-toolkit is still making the
    prompt's event loop, before it handles SIGINT itself: the KeyboardInterrupt raised there left a half-made loop,
    whose finalizer printed "Exception ignored in: <function BaseEventLoop.__del__ ...>", a traceback, and "coroutine
    'Application.run_async' was never awaited" (seen in a pty, about one Ctrl-C in 40 pressed as answers ended).
    Such a Ctrl-C is dropped: the prompt comes up as after a Ctrl-C at the prompt, empty, and reads on."""
    import asyncio.selector_events

    make_self_pipe, pressed, unraisable = asyncio.selector_events.BaseSelectorEventLoop._make_self_pipe, [], []

    def pressed_meanwhile(loop):
        if not pressed:
            pressed.append(1)
            signal.raise_signal(signal.SIGINT)      # (handled at once: inside the loop's making, before its pipe)
        make_self_pipe(loop)
    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "_make_self_pipe", pressed_meanwhile)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    out = io.StringIO()
    with create_pipe_input() as pipe:
        session = repl.Repl(conversation, Console(file=out, width=100), input=pipe, output=DummyOutput(),
                            history=tmp_path / "history")
        pipe.send_text("/help\r/exit\r")
        session.run()
    import gc as collector
    collector.collect()                             # (the half-made loop's finalizer)
    assert pressed and "this help" in out.getvalue()
    assert [f"{u.exc_type.__name__}: {u.exc_value}" for u in unraisable] == []


def test_a_ctrl_c_while_the_old_model_is_set_to_warm_up_again_leaves_no_repl_gone(conversation, tmp_path,
                                                                                  monkeypatch):
    """After a /model SPEC that failed to load, the next prompt first collects what the load left and starts the old
    model's warm-up again; a Ctrl-C there (pressed at the error) was raised outside any line, so the REPL ended
    ("interrupted", exit 130), and where it came as the warm-up's thread had started, it left without waiting for it.
    It is dropped, as one as the prompt comes up."""
    def load(args, max_new_tokens):
        raise repl.UsageError("--model nowhere: not found")
    collect, pressed = repl.gc.collect, []

    def collect_pressed(*args):
        if not pressed:
            pressed.append(1)
            signal.raise_signal(signal.SIGINT)
        return collect(*args)
    monkeypatch.setattr(Session, "warm_up", lambda session, should_stop=lambda: False, steps=None: ["the decode step"])
    monkeypatch.setattr(repl.Repl, "_builds_ahead", lambda self: True)
    monkeypatch.setattr(repl.engines, "load", load)
    monkeypatch.setattr(repl.gc, "collect", collect_pressed)
    try:
        printed = drive(conversation, ["/model nowhere\r", "/help\r", "/exit\r"], tmp_path / "history")
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C ended the REPL")
    assert pressed and "this help" in printed and printed.count("warmed up the decode step in ") == 2, printed


@dataclasses.dataclass
class TerminalRun:
    prompts: list           # what each prompt returned, or the type of what it raised
    shown: bytes            # all the terminal showed (its echo among it)
    between_prompts: list   # the terminal's attributes as the line `meanwhile` was typed during ran
    restored: bool          # whether its attributes at the end were those before
    raised: BaseException | None


def run_in_a_terminal(conversation, monkeypatch, tmp_path, lines, meanwhile="", resumed=None,
                      meanwhile_line=0) -> TerminalRun:
    """The REPL as `codecomplete REPO` runs it (run_repl), its stdin and stdout a pseudo-terminal: the keys in `lines`
    typed one as each prompt comes up, `meanwhile` as line number `meanwhile_line` (from 0) starts to run (the REPL
    between prompts). `resumed`: as the first line runs, the REPL brought back to the foreground by the shell, which
    hands the terminal back in its own mode: "stopped" (Ctrl-Z, `fg`: a SIGCONT with it) or "running" (Ctrl-Z, `bg`,
    `fg`: bash 5.2 sends a job already running none, probed)."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    before, shown, seen = termios.tcgetattr(follower), [], {"prompts": [], "between": None, "lines": 0}
    reader = threading.Thread(target=lambda: _read_until_closed(leader, shown), daemon=True)
    reader.start()
    prompt, catch_up = repl.PromptSession.prompt, conversation.session.catch_up

    def typed(self, *args, **kwargs):
        os.write(leader, lines.pop(0).encode())
        try:
            text = prompt(self, *args, **kwargs)
        except (EOFError, KeyboardInterrupt) as exc:
            seen["prompts"].append(type(exc))
            raise
        seen["prompts"].append(text)
        return text

    def typed_meanwhile():
        if seen["lines"] == 0 and resumed:  # bash gives a job it resumes the terminal in its own mode (5.2, probed)
            termios.tcsetattr(follower, termios.TCSANOW, before)
            if resumed == "stopped":
                os.kill(os.getpid(), signal.SIGCONT)
        if seen["lines"] == meanwhile_line:
            seen["between"] = termios.tcgetattr(follower)
            os.write(leader, meanwhile.encode())
        seen["lines"] += 1
        catch_up()
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(repl.PromptSession, "prompt", typed)
    monkeypatch.setattr(conversation.session, "catch_up", typed_meanwhile)
    monkeypatch.setattr(repl, "open_session", lambda args, root, max_new_tokens: conversation.session)
    monkeypatch.setattr(repl, "history_path", lambda root=None: tmp_path / "history")
    raised = None
    with open(follower, "r", closefd=False) as stdin, open(follower, "w", encoding="utf-8", closefd=False) as stdout:
        monkeypatch.setattr(sys, "stdin", stdin)
        monkeypatch.setattr(sys, "stdout", stdout)
        keys = create_input(stdin)
        try:
            with create_app_session(input=keys, output=DummyOutput()):
                repl.run_repl(cli.build_parser().parse_args([str(conversation.index.root), "--max-tokens", "12"]))
        except BaseException as exc:        # (a way out the test asks for)
            raised = exc
        restored = termios.tcgetattr(follower) == before
        # Keys read past the last prompt's end wait for a next prompt on this descriptor's number: another test's.
        clear_typeahead(keys)
    os.close(follower)
    reader.join(timeout=60)
    os.close(leader)
    return TerminalRun(seen["prompts"], b"".join(shown), seen["between"], restored, raised)


def _read_until_closed(leader: int, chunks: list) -> None:
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:         # (Linux: EIO once the terminal's last user closed it)
            return
        if not chunk:
            return
        chunks.append(chunk)


@pytest.mark.parametrize("line", ["/help\r", "Explain Rectangle.\r"])
def test_ctrl_d_typed_while_the_repl_prints_leaves_at_the_next_prompt(conversation, tmp_path, monkeypatch, line):
    """Ctrl-D pressed as the help or an answer printed: the terminal, in its cooked mode between prompts, took it for
    its end-of-file mark, not a key, and the next prompt never saw it (the REPL stayed; a second Ctrl-D left). Between
    prompts the terminal now keeps keys as they are typed (no line editing, no echo), signals still on: Ctrl-C still
    cancels an answer. The user's own settings come back as the REPL leaves."""
    run = run_in_a_terminal(conversation, monkeypatch, tmp_path, [line, "/exit\r"], meanwhile=CTRL_D)
    assert run.raised is None and run.prompts == [line.rstrip("\r"), EOFError], run.prompts    # not /exit's
    modes = run.between_prompts[3]
    assert not modes & (termios.ICANON | termios.ECHO) and modes & termios.ISIG
    assert run.restored


def test_text_typed_while_the_repl_prints_is_shown_once_by_the_next_prompt(conversation, tmp_path, monkeypatch):
    """Lines typed ahead while an answer printed: the terminal echoed them there, and the next prompt showed them
    again as it read them. Now only the prompt shows them, and reads them as it reads keys (Esc Enter a new line)."""
    run = run_in_a_terminal(conversation, monkeypatch, tmp_path, ["Explain Rectangle.\r", "", "/exit\r"],
                            meanwhile=f"/add{ESC_ENTER}app.py\r")
    assert run.raised is None and run.prompts == ["Explain Rectangle.", "/add\napp.py", "/exit"], run.prompts
    assert b"pinned app.py" in run.shown and b"/add" not in run.shown, run.shown
    assert run.restored


def test_keys_typed_after_a_stop_and_fg_still_wait_for_the_next_prompt(conversation, tmp_path, monkeypatch):
    """Ctrl-Z as an answer printed, then `fg`: the shell handed the terminal back in its cooked mode, which each
    prompt then put back as it ended, so a Ctrl-D typed between prompts was lost again until the exit. The REPL sets
    its mode between prompts again as it is resumed, in the terminal's foreground."""
    monkeypatch.setattr(repl.os, "tcgetpgrp", lambda descriptor: os.getpgrp())     # (the test's pty is no ctty)
    run = run_in_a_terminal(conversation, monkeypatch, tmp_path, ["Explain Rectangle.\r", "/exit\r"],
                            meanwhile=CTRL_D, resumed="stopped")
    assert run.raised is None and run.prompts == ["Explain Rectangle.", EOFError], run.prompts
    assert not run.between_prompts[3] & (termios.ICANON | termios.ECHO)
    assert run.restored


def test_keys_typed_after_a_stop_bg_and_fg_wait_for_the_next_prompt_from_the_next_line_on(
        conversation, tmp_path, monkeypatch):
    """Ctrl-Z as an answer printed, `bg`, then `fg` while it still ran: bash hands the terminal back in its cooked
    mode and sends no SIGCONT (the job was running), so the resume left that mode, which each prompt then put back,
    and a Ctrl-D typed between prompts was lost until the exit. The REPL sets its mode between prompts again as each
    prompt ends, in the terminal's foreground: from the next line on keys wait for the next prompt again."""
    monkeypatch.setattr(repl.os, "tcgetpgrp", lambda descriptor: os.getpgrp())     # (the test's pty is no ctty)
    run = run_in_a_terminal(conversation, monkeypatch, tmp_path, ["Explain Rectangle.\r", "/help\r", "/exit\r"],
                            meanwhile=CTRL_D, meanwhile_line=1, resumed="running")
    assert run.raised is None and run.prompts == ["Explain Rectangle.", "/help", EOFError], run.prompts
    assert not run.between_prompts[3] & (termios.ICANON | termios.ECHO)
    assert run.restored


def test_a_resume_in_the_background_leaves_the_terminal_to_the_shell(conversation, tmp_path, monkeypatch):
    """`bg` resumes the REPL too, the shell's prompt in the foreground: the terminal's mode is the shell's then (and
    setting it from the background would stop the REPL again, SIGTTOU)."""
    monkeypatch.setattr(repl.os, "tcgetpgrp", lambda descriptor: os.getpgrp() + 1)
    run = run_in_a_terminal(conversation, monkeypatch, tmp_path, ["/help\r", "/exit\r"], resumed="stopped")
    assert run.raised is None and run.between_prompts[3] & termios.ICANON and run.restored


def test_a_resume_while_a_prompt_reads_leaves_its_raw_mode(conversation, tmp_path, monkeypatch):
    """The REPL stopped from outside (`kill -STOP`) as a prompt reads and resumed: the prompt owns the terminal's
    mode (raw, signals off), which a resume must not change."""
    modes_resumed = []
    prompt = repl.PromptSession.prompt

    def resumed_while_reading(self, *args, **kwargs):
        stdin = sys.stdin.fileno()

        def resume_once_raw():
            deadline = time.monotonic() + 30
            while termios.tcgetattr(stdin)[3] & termios.ISIG and time.monotonic() < deadline:   # (the prompt's)
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGCONT)
            time.sleep(0.2)
            modes_resumed.append(termios.tcgetattr(stdin)[3])
            self.app.loop.call_soon_threadsafe(lambda: self.app.exit(exception=EOFError()))    # (Ctrl-D's way out)
        resumer = threading.Thread(target=resume_once_raw)
        resumer.start()
        try:
            return prompt(self, *args, **kwargs)
        finally:
            resumer.join()
    monkeypatch.setattr(repl.PromptSession, "prompt", resumed_while_reading)
    monkeypatch.setattr(repl.os, "tcgetpgrp", lambda descriptor: os.getpgrp())
    run = run_in_a_terminal(conversation, monkeypatch, tmp_path, [""])
    assert run.raised is None and run.prompts == [EOFError] and run.restored
    assert not modes_resumed[0] & termios.ISIG


@pytest.mark.parametrize("error", [RuntimeError("a bug"), Stopped(143)], ids=["a bug", "SIGTERM"])
def test_the_users_terminal_settings_come_back_however_the_repl_ends(conversation, tmp_path, monkeypatch, error):
    """The REPL ended by a bug, or by `kill` (SIGTERM and SIGHUP unwind as Stopped), as a line runs: the terminal
    keeps its settings between prompts no longer."""
    def catch_up():
        raise error
    monkeypatch.setattr(conversation.session, "catch_up", catch_up)
    run = run_in_a_terminal(conversation, monkeypatch, tmp_path, ["/help\r"])
    assert run.raised is error and run.restored
