"""Fixtures for the models tests: an isolated cache dir, tiny random Llama checkpoints saved by transformers
(with a SentencePiece-style byte-fallback tokenizer), tiny GGUF files, and the embedded SmolLM2 engine."""

from __future__ import annotations

import os

import pytest
from tiny_models import make_llama_tokenizer, save_tiny_llama


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Converted models go to a fresh cache dir (the embedded model's conversion in it, made once a run:
    embedded_conversion); no user model choice leaks in."""
    from embedded_conversion import copy_into

    saved = {k: os.environ.get(k) for k in ("CODECOMPLETE_CACHE_DIR", "CODECOMPLETE_MODEL")}
    cache = tmp_path_factory.mktemp("codecomplete-cache")
    copy_into(cache, tmp_path_factory)
    os.environ["CODECOMPLETE_CACHE_DIR"] = str(cache)
    os.environ.pop("CODECOMPLETE_MODEL", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def llama_tokenizer():
    return make_llama_tokenizer()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, llama_tokenizer):
    """A tiny GQA checkpoint directory and its transformers model."""
    directory = tmp_path_factory.mktemp("tiny-gqa")
    return directory, save_tiny_llama(directory, llama_tokenizer, n_kv_heads=2)


@pytest.fixture(scope="session")
def smollm_engine():
    """The embedded SmolLM2-135M-Instruct (Q4_1 GGUF), converted into the session's cache dir."""
    from models import load_model
    return load_model()
