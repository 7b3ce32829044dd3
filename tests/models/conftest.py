"""Fixtures for the models tests: an isolated cache dir, tiny random Llama checkpoints saved by transformers
(with a SentencePiece-style byte-fallback tokenizer), tiny GGUF files, the embedded SmolLM2 engine, and its float32
log-probabilities over the accuracy tests' real code."""

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


@pytest.fixture(scope="session")
def float32_teacher_forced(smollm_engine, tmp_path_factory):
    """`teacher_forced(smollm_engine.model, ids)` for each file of test_kv_cache_accuracy's `code_ids`: the embedded
    model's float32 log-probabilities (N, V), its cache unquantized, over the 2,040 positions of real code that the
    accuracy tests (8-bit KV caches, int8 and int4 weights, bfloat16 projections) each measure their variant against.

    Each of the four files computed the same reference again (~10 CPU-s a pass on this CPU). It is computed once a
    run: the first worker that needs it writes it into a folder every pytest-xdist worker of the run shares (under a
    file lock, so another waits for it rather than computing it too), and each reads the same tensors back."""
    import fcntl

    import torch
    from embedded_conversion import run_folder
    from test_kv_cache_accuracy import code_ids, teacher_forced

    path = run_folder(tmp_path_factory) / "float32-teacher-forced.pt"
    with open(path.with_suffix(".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            engine = smollm_engine
            try:
                engine.set_kv_cache(None)           # (as test_kv_cache_accuracy's own reference was)
                reference = [teacher_forced(engine.model, ids) for ids in code_ids(engine.tokenizer)]
            finally:
                engine.clear_prefix_cache()         # (the shared engine's cache rows were prefilled here)
            partial = path.with_suffix(".partial")
            torch.save(reference, partial)
            os.replace(partial, path)
    return torch.load(path, mmap=True)
