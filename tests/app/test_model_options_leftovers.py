"""Round 12's leftovers end to end: an option or a model folder that do not fit each other is a usage error (exit 2, one
line, no traceback) from every entry that loads a model, and nothing is written into the folder."""

import json
import sys
from pathlib import Path

import pytest
from conftest import Run, snapshot

sys.path.append(str(Path(__file__).parent.parent / "models"))     # tiny_models, the models tests' own
from tiny_models import cut_embedding_table, make_llama_tokenizer, save_tiny_llama  # noqa: E402

ENTRIES = {"one-shot": ["--file", "shapes/geometry.py", "--no-server", "--max-tokens", "4"],
           "serve": ["serve", "--port", "0", "--max-tokens", "4"], "repl": []}


def run_entry(codecomplete, repo, folder, entry, *options, script=None, cli_env=None):
    command = ENTRIES[entry]
    if entry == "repl":
        return repl_start(script, cli_env, repo, folder, *options)
    args = ["serve", repo, *command[1:]] if entry == "serve" else [repo, *command]
    return codecomplete(*args, "--model", folder, "--device", "cpu", *options, timeout=150)


def repl_start(script, cli_env, repo, folder, *options):
    """The chat REPL's start, on a terminal (a pty: it refuses pipes before loading anything); stderr piped."""
    import os
    import pty
    import subprocess
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([str(script), str(repo), "--model", str(folder), "--device", "cpu", *options],
                              stdin=follower, stdout=follower, stderr=subprocess.PIPE, text=True, env=cli_env,
                              timeout=150, cwd=repo.parent)
    finally:
        os.close(follower)
        os.close(leader)
    return Run(proc.returncode, "", proc.stderr)


def assert_usage_error(run, *words):
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert all(word in line for word in words), line


@pytest.fixture(scope="module")
def head_dim_8(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "head-dim-8"
    save_tiny_llama(folder, make_llama_tokenizer(), n_kv_heads=2, head_dim=8)
    return folder


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("backend", ["flash", "eager"])
def test_an_attention_backend_the_head_dim_does_not_fit_is_a_usage_error(codecomplete, script, cli_env, repo,
                                                                         head_dim_8, entry, backend):
    """Was exit 1 ('eager attention takes head dims 16..256, and head-dim-8's is 8: use sdpa'), where the other options
    that do not fit the model (--kv-cache fp16 on float32, --weights bf16 on float16) exit 2."""
    before = snapshot(head_dim_8)
    run = run_entry(codecomplete, repo, head_dim_8, entry, "--attention", backend, script=script, cli_env=cli_env)
    assert_usage_error(run, f"{backend} attention takes head dims 16..256", "use sdpa")
    assert snapshot(head_dim_8) == before


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """A tokenizer of 280 ids over an embedding table of 260 rows (the tokenizer of another model)."""
    folder = tmp_path_factory.mktemp("models") / "small-table"
    save_tiny_llama(folder, make_llama_tokenizer(), n_kv_heads=2)
    rows = json.loads((folder / "config.json").read_text())["vocab_size"] - 20
    cut_embedding_table(folder, rows)
    return folder


@pytest.mark.parametrize("entry", ["one-shot", "serve"])
def test_a_tokenizer_larger_than_the_embedding_table_is_refused_at_load(codecomplete, repo, small_table, entry):
    """Was found at the first request: 'token id 356 is outside the vocabulary (0..279)', exit 1 (serve: started,
    then failed each request that held such an id)."""
    run = run_entry(codecomplete, repo, small_table, entry)
    assert_usage_error(run, "the tokenizer makes ids up to", "the embedding table has")


@pytest.fixture(scope="module")
def mistral_window_128(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "mistral-window-128"
    save_tiny_llama(folder, make_llama_tokenizer(), n_kv_heads=2, max_position_embeddings=256)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "mistral", "sliding_window": 128}))
    return folder


def test_a_context_past_a_mistral_window_is_refused_and_the_default_fits_it(codecomplete, repo, mistral_window_128):
    """model_type mistral with a sliding window of 128 (training length 256): a context past the window ran full
    attention where transformers' Mistral slides. Asked for, it is refused; by default the context fits the window."""
    one_shot = [repo, "--file", "shapes/geometry.py", "--no-server", "--model", mistral_window_128, "--device", "cpu",
                "--max-tokens", "4"]
    assert_usage_error(codecomplete(*one_shot, "--context-tokens", "150", timeout=150), "sliding window of 128 tokens")
    run = codecomplete(*one_shot, "--json", timeout=150)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["prompt_tokens"] + result["completion_tokens"] <= 128
