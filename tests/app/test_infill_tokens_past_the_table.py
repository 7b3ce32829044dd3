"""A tokenizer that knows CodeLlama's infill tokens over a model that cannot embed them (CodeLlama-34B and the Python
variants: a table of 32,000 rows, where transformers' CodeLlamaTokenizer appends <PRE> <SUF> <MID> <EOT> at 32,007..):
the model completes left to right, as one whose tokenizer has no FIM tokens, from the command line and from `serve`.
A 7B-like table that holds them still infills."""

import json
import sys
from pathlib import Path

import httpx
import pytest

sys.path.append(str(Path(__file__).parent.parent / "models"))     # tiny_models, the models tests' own
from tiny_models import cut_embedding_table, make_llama_tokenizer, save_tiny_llama  # noqa: E402

INFILL = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]


def infill_checkpoint(folder: Path, embeds_infill: bool) -> Path:
    """A tiny checkpoint whose tokenizer has the infill tokens as added special tokens past its pieces; its table
    holds them (7B's 32,016 rows) or ends before them (34B's 32,000)."""
    base = make_llama_tokenizer()
    tokenizer = base.__class__(tokenizer_object=base.backend_tokenizer.__class__.from_str(
        base.backend_tokenizer.to_str()), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    pieces = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": INFILL})
    save_tiny_llama(folder, tokenizer, n_kv_heads=2, max_position_embeddings=512)
    if not embeds_infill:
        cut_embedding_table(folder, pieces)
    return folder


@pytest.fixture(scope="module")
def like_34b(tmp_path_factory) -> Path:
    return infill_checkpoint(tmp_path_factory.mktemp("models") / "like-34b", embeds_infill=False)


@pytest.fixture(scope="module")
def like_7b(tmp_path_factory) -> Path:
    return infill_checkpoint(tmp_path_factory.mktemp("models") / "like-7b", embeds_infill=True)


def info_rows(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


def session_format(folder: Path, repo: Path) -> str:
    """The completion format the app's session builds its prompts in, the model loaded as the command line loads it."""
    from codecomplete.cli import build_parser
    from codecomplete.session import Sampling, open_session
    args = build_parser().parse_args([str(repo), "--file", "shapes/geometry.py", "--model", str(folder),
                                      "--device", "cpu", "--no-server"])
    session = open_session(args, repo, max_new_tokens=4)
    return session.complete("shapes/geometry.py", line=7, col=12, sampling=Sampling(max_tokens=4)).prompt.format


def test_a_model_without_rows_for_its_tokenizers_infill_tokens_completes_left_to_right(codecomplete, repo, like_34b):
    """Was exit 1 at the first suggestion: 'token id 393 is outside the vocabulary (0..390)'."""
    run = codecomplete(repo, "--file", "shapes/geometry.py", "--line", "7", "--col", "12", "--no-server", "--model",
                       like_34b, "--device", "cpu", "--max-tokens", "4", "--json", timeout=150)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    result = json.loads(run.stdout)
    assert result["completion_tokens"] >= 1
    assert session_format(like_34b, repo) == "left-to-right"


def test_a_table_that_holds_the_infill_tokens_still_infills(repo, like_7b):
    assert session_format(like_7b, repo) == "codellama-infill"


def test_serve_answers_infill_for_such_a_model_as_for_one_without_fim_tokens(script, cli_env, served_repo, like_34b,
                                                                            tmp_path):
    """Was 500 with the same message; --spm-infill was said to put the suffix first, which the prompt then did."""
    from server_process import ServerProcess
    process = ServerProcess(script, served_repo, cli_env, tmp_path, "--model", str(like_34b), "--device", "cpu",
                            "--max-tokens", "4", "--spm-infill")
    try:
        response = httpx.post(process.url + "/infill", json={"input_prefix": "def area(r):\n    ret",
                                                              "input_suffix": "\n\nprint(area(2))\n"}, timeout=300)
        assert response.status_code == 200, response.text
        assert response.json()["tokens_predicted"] >= 1
        for path, body in [("/completion", {"prompt": "def f():\n▁<PRE>"}), ("/tokenize", {"content": "▁<PRE>"})]:
            # a client's text naming such a token: one clear 400 (was a 500, and /tokenize gave the id)
            response = httpx.post(process.url + path, json=body, timeout=300)
            assert response.status_code == 400, response.text
            assert "'▁<PRE>', a special token past the model's embedding table" in response.json()["error"]["message"]
        response = httpx.post(process.url + "/tokenize", json={"content": "▁<PRE>", "parse_special": False})
        assert response.status_code == 200 and max(response.json()["tokens"]) < info_rows(like_34b), response.text
    finally:
        assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log()
    assert "has no fill-in-the-middle tokens; its prompts end at the cursor" in process.log(), process.log()


def test_a_raw_prompt_naming_such_a_token_is_a_usage_error(codecomplete, like_34b):
    """Was exit 1, 'token id 391 is outside the vocabulary (0..390)': the text is the user's, not a runtime failure."""
    run = codecomplete("--prompt", "def f():\n▁<PRE>", "--model", like_34b, "--device", "cpu", "--max-tokens", "2",
                       timeout=150)
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "'▁<PRE>', a special token past the model's embedding table (id 391; the table has 391 rows)" in line
