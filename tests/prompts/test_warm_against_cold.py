"""Warm against cold: what a keystroke's prompt is built from is what a process that remembers nothing builds.

A warm session builds each keystroke's prompt from what the last ones found: recognize's memos (lines, rare names,
candidates, files' lines), each grammar's last buffer and tree (chunking._reparse), recent files' disk rows
(alignment), the encoder's pieces, the functools caches (outlines, open strings, ...), and an index kept fresh by
updates (prompts.freshness) rather than built anew. These are caches: none may change a result. What the last prompt
at a file chose (its `held` context, `previous` chunks and `anchor`) is state by design, "held still while typing":
both sides are handed the same, so the two prompts must be equal, token for token.

Seeded editor sequences (typing, deleting, pasting a block, undo, moves, switching files and back, an unnamed buffer
that is then named, saves, files renamed and other files changed on disk, CRLF text, multi-byte characters typed and
typed over) run over a copy of real packages' sources: Python (h11, and a vendored copy of it), JavaScript
(matplotlib's web backend), C (numpy's f2py). Each keystroke's warm prompt comes from the index the warm one became by
updates, the cold one from an index built anew; the trees the reparse keeps are checked against a fresh parse. A
failure names its seed and step; `CODECOMPLETE_FUZZ_SEQUENCES=200` runs many more sequences than CI's few.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import pkgutil
import random
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_chunking import _nodes

import prompts
from prompts import build_completion_prompt, chunking, index_repository
from prompts.freshness import FreshIndex
from prompts.recognize import recognize
from prompts.scan import unix_newlines

SEQUENCES = int(os.environ.get("CODECOMPLETE_FUZZ_SEQUENCES", "3"))
STEPS = 30


def _package(name: str) -> Path:
    """An installed package's folder (h11 comes with uvicorn, numpy with the project, matplotlib with its tests)."""
    return Path(importlib.util.find_spec(name).origin).parent


SOURCES = {            # (a real repository's variety: three languages the index reads, files of 0.3-46 KB)
    "h11": _package("h11"),
    "vendor/h11": _package("h11"),       # (a vendored copy: texts two files hold alike)
    "web/js": _package("matplotlib") / "backends" / "web_backend" / "js",
    "f2py/src": _package("numpy") / "f2py" / "src",
}
TYPED = ["a", "e", "_", "x", " ", " ", "(", ")", ".", ":", "=", "\n", "\n    ", "é", "è", "→", "日本", "😀", "self",
         "{", "}", ";", '"', "#"]

# Caches of results that the prompt layer keeps between calls (module, attribute, an empty one). The functools
# caches of prompts/ are found by themselves (`_functools_caches`), but for the grammars' (`load_grammar`): a new
# process compiles each once as well, and what a parser keeps from one parse to the next is `_last_trees`.
MEMOS = [
    ("prompts.recognize", "_memo", lambda: None),
    ("prompts.recognize", "_lines", dict),
    ("prompts.alignment", "_disk_memo", list),
    ("prompts.chunking", "_last_trees", dict),
    ("prompts.tokens", "_ENCODERS", weakref.WeakKeyDictionary),
]
KEPT_WARM = {("prompts.languages", "load_grammar")}


def _functools_caches() -> list[tuple[str, str, object]]:
    """Every functools cache of a prompts module: (module, name, what makes an empty copy of it)."""
    found = []
    for info in pkgutil.iter_modules(prompts.__path__):
        module = importlib.import_module(f"prompts.{info.name}")
        for name, value in vars(module).items():
            if hasattr(value, "cache_clear") and getattr(value, "__module__", None) == module.__name__ \
                    and (module.__name__, name) not in KEPT_WARM:
                maxsize = value.cache_parameters()["maxsize"]
                found.append((module.__name__, name, lambda value=value, maxsize=maxsize:
                              functools.lru_cache(maxsize=maxsize)(value.__wrapped__)))
    return found


@contextlib.contextmanager
def nothing_remembered():
    """Inside: the prompt layer as a new process has it, every cache empty; after: the warm caches as they were."""
    swapped = [(importlib.import_module(module), name, empty) for module, name, empty in MEMOS] + [
        (importlib.import_module(module), name, empty) for module, name, empty in _functools_caches()]
    warm = [getattr(module, name) for module, name, _ in swapped]
    for module, name, empty in swapped:
        setattr(module, name, empty())
    try:
        yield
    finally:
        for (module, name, _), value in zip(swapped, warm):
            setattr(module, name, value)


@pytest.fixture
def repository(tmp_path) -> Path:
    """A repository of the SOURCES' copies, which the sequences edit, save and rename."""
    root = tmp_path / "repo"
    for folder, source in SOURCES.items():
        shutil.copytree(source, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@dataclass
class Buffer:
    """An editor's text of one file, its cursor (a character offset) and its earlier texts (undo)."""

    path: str
    text: str
    cursor: int
    named: bool = True                   # False: sent without its name (llama.vim's /infill)
    undo: list[tuple[str, int]] = field(default_factory=list)

    def edit(self, text: str, cursor: int) -> None:
        self.undo.append((self.text, self.cursor))
        self.text, self.cursor = text, max(0, min(cursor, len(text)))


class Editor:
    """Seeded editor actions over a repository's files; `request()` is what the next keystroke asks for."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        self.buffers: dict[str, Buffer] = {}
        self.current = self.open(self.any_file())

    def any_file(self) -> str:
        """A file of one of the folders, each as likely (C and JavaScript as often as Python)."""
        folder = self.root / self.rng.choice(sorted(SOURCES))
        return self.rng.choice(sorted(p.relative_to(self.root).as_posix() for p in folder.iterdir()))

    def open(self, path: str) -> Buffer:
        if path not in self.buffers:
            text = (self.root / path).read_text(encoding="utf-8")
            if self.rng.random() < 0.3:
                text = text.replace("\n", "\r\n")            # (a Windows checkout's file)
            self.buffers[path] = Buffer(path, text, self.rng.randrange(len(text) + 1), named=self.rng.random() < 0.7)
        return self.buffers[path]

    def act(self) -> str:
        """One editor action, by weight; its name."""
        actions = [(self.type, 30), (self.delete, 10), (self.retype, 4), (self.paste, 4), (self.undo, 4),
                   (self.move, 5), (self.switch, 5), (self.name, 2), (self.save, 3), (self.change_another, 2),
                   (self.rename, 1)]
        action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
        action()
        return action.__name__

    def type(self) -> None:
        b, typed = self.current, self.rng.choice(TYPED)
        b.edit(b.text[:b.cursor] + typed + b.text[b.cursor:], b.cursor + len(typed))

    def delete(self) -> None:
        b, count = self.current, self.rng.choice([1, 1, 2, 5, 40])
        b.edit(b.text[:max(0, b.cursor - count)] + b.text[b.cursor:], b.cursor - count)

    def retype(self) -> None:
        """The characters before the cursor typed over (é over è: their UTF-8 share a first byte)."""
        b, typed = self.current, self.rng.choice(TYPED)
        start = max(0, b.cursor - self.rng.choice([1, 1, 3, 12]))
        b.edit(b.text[:start] + typed + b.text[b.cursor:], start + len(typed))

    def paste(self) -> None:
        """A block of lines of some file (a copy within the file, or from another)."""
        lines = self.open_text(self.any_file()).split("\n")
        start = self.rng.randrange(len(lines))
        block = "\n".join(lines[start:start + self.rng.randrange(1, 30)]) + "\n"
        b = self.current
        b.edit(b.text[:b.cursor] + block + b.text[b.cursor:], b.cursor + len(block))

    def open_text(self, path: str) -> str:
        return (self.root / path).read_text(encoding="utf-8")

    def undo(self) -> None:
        b = self.current
        if b.undo:
            back = self.rng.randrange(1, min(len(b.undo), 6) + 1)
            (b.text, b.cursor), b.undo[-back:] = b.undo[-back], []

    def move(self) -> None:
        b = self.current
        near = b.cursor + self.rng.randint(-400, 400)
        b.cursor = max(0, min(len(b.text), near if self.rng.random() < 0.7 else self.rng.randrange(len(b.text) + 1)))

    def switch(self) -> None:
        """To another file, often one open before (back and forth)."""
        opened = [p for p in self.buffers if p != self.current.path]
        path = self.rng.choice(opened) if opened and self.rng.random() < 0.6 else self.any_file()
        self.current = self.open(path)

    def name(self) -> None:
        """The editor now sends the buffer's name (or stops sending it)."""
        self.current.named = not self.current.named

    def save(self) -> None:
        (self.root / self.current.path).write_bytes(self.current.text.encode("utf-8"))

    def change_another(self) -> None:
        """Another file changed on disk (a git checkout, another editor): a line appended to it."""
        path = self.any_file()
        with open(self.root / path, "a", encoding="utf-8") as file:
            file.write(f"\n{'#' if path.endswith('.py') else '//'} changed {self.rng.random()}\n")

    def rename(self) -> None:
        """The file moved on disk (git mv), its buffer with it."""
        b = self.current
        stem, dot, extension = b.path.rpartition(".")
        moved = f"{stem}_{self.rng.randrange(100)}{dot}{extension}"
        if not (self.root / moved).exists():
            (self.root / b.path).rename(self.root / moved)
            self.buffers[moved] = self.buffers.pop(b.path)
            b.path = moved

    def request(self) -> tuple[Buffer, int, int]:
        """The current buffer and its cursor's 1-based line and column, as the prompt reads the text."""
        b = self.current
        before = b.text[:b.cursor]
        if before.endswith("\r") and b.text[b.cursor:].startswith("\n"):    # (inside a CRLF: as Session.infill)
            before = before[:-1]
        before = unix_newlines(before)
        return b, before.count("\n") + 1, len(before.rpartition("\n")[2]) + 1


def _prompt(index, tokenizer, buffer: Buffer, line: int, col: int, last: dict, budget: int):
    """The session's completion prompt: the file the text is (named, recognized, or untitled), built with what the
    last prompt at that file held."""
    path = buffer.path if buffer.named else recognize(index, buffer.text) or "untitled"
    held = last.get(path)
    return path, build_completion_prompt(
        index, tokenizer, path=path, text=buffer.text, line=line, col=col, budget_tokens=budget,
        previous=held.chosen if held else (), anchor=held.anchor if held else None,
        held=held.held if held else None)


def _assert_reparsed_as_parsed_whole(before: dict, where: str) -> None:
    """The trees a prompt's reparse kept (each grammar's last buffer's, built from the one before it, `before`) are a
    fresh parse's."""
    for grammar, kept in chunking._last_trees.items():
        if kept is not before.get(grammar):
            source, tree = kept
            assert _nodes(tree.root_node) == _nodes(grammar.parse(source).root_node), where


def _run_sequence(seed: int, root: Path, tokenizer, cache_dir: Path) -> None:
    """The seed's editor sequence, each keystroke's warm prompt checked against a cold one."""
    rng = random.Random(seed)
    editor = Editor(root, rng)
    budget = rng.choice([512, 1024, 2048])
    fresh = FreshIndex(index_repository(root, cache_dir=cache_dir / "warm"))
    last: dict[str, object] = {}
    cold_index, disk_version = None, None
    for step in range(STEPS):
        action = editor.act()
        buffer, line, col = editor.request()
        fresh.rescan()                   # (the index as the disk is: an interactive prompt's catch_up)
        warm_index = fresh.refresh(buffer.path)
        version = sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file())
        if version != disk_version:     # (a new process's: from the index cache a last run left, or from none)
            cached = cache_dir / ("cold" if rng.random() < 0.5 else f"none{step}")
            cold_index, disk_version = index_repository(root, cache_dir=cached), version
        trees = dict(chunking._last_trees)
        warm = _prompt(warm_index, tokenizer, buffer, line, col, last, budget)
        where = f"seed {seed}, step {step} ({action}): {warm[0]} at {line}:{col}"
        _assert_reparsed_as_parsed_whole(trees, where)
        with nothing_remembered():
            cold = _prompt(cold_index, tokenizer, buffer, line, col, last, budget)
        assert warm == cold, where
        last[warm[0]] = warm[1]


@pytest.mark.parametrize("seed", range(SEQUENCES))
def test_a_keystroke_s_prompt_is_what_a_process_remembering_nothing_builds(seed, repository, smollm2_tokenizer,
                                                                           tmp_path):
    """(Seen failing with recognize's memo kept across indexes, with the reparse told an edit a byte short, and with
    the reparse from a tree that held a syntax error: 7 of 200 sequences, test_chunking's recovering buffer.)"""
    with nothing_remembered():      # (the warm side starts as a new process: whatever tests ran before in this one)
        _run_sequence(seed, repository, smollm2_tokenizer, tmp_path / "caches")
