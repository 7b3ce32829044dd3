"""Round 12 of the adversarial sweep, end to end: a model folder a user points --model at, its refusal one line with
README's exit code, from the one-shot command and from `serve`, and nothing written into the folder."""

import sys
from pathlib import Path

import pytest
from conftest import snapshot

sys.path.append(str(Path(__file__).parent.parent / "models"))     # tiny_models, the models tests' own
from tiny_models import make_llama_tokenizer, save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def without_tokenizer_json(tmp_path_factory):
    """A partial download: the checkpoint's tokenizer_config.json came, its tokenizer.json did not."""
    folder = tmp_path_factory.mktemp("partial") / "tiny"
    save_tiny_llama(folder, make_llama_tokenizer(), n_kv_heads=2)
    (folder / "tokenizer.json").unlink()
    return folder


@pytest.mark.parametrize("command", [["--file", "shapes/geometry.py", "--no-server"], ["serve", "--port", "0"]],
                         ids=["one-shot", "serve"])
def test_a_tokenizer_config_without_its_tokenizer_exits_2_in_one_line(codecomplete, repo, without_tokenizer_json,
                                                                        command):
    """Was exit 1 with transformers' four-line ValueError folded onto one line by `\\n`s."""
    before = snapshot(without_tokenizer_json)
    args = ["serve", repo, *command[1:]] if command[0] == "serve" else [repo, *command]
    run = codecomplete(*args, "--model", without_tokenizer_json, "--device", "cpu", timeout=120)
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert run.stdout == "" and "Traceback" not in run.stderr and "\\n" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "no tokenizer.json or tokenizer.model" in line and str(without_tokenizer_json) in line
    assert snapshot(without_tokenizer_json) == before


def test_bench_on_a_model_whose_head_dim_the_kernels_do_not_take_times_what_can_run(codecomplete, tmp_path):
    """Head dim 8 (transformers runs it; our flash and eager kernels take 16..256): `--bench` loaded the model, then
    failed with exit 1 at the first eager run, 'eager attention takes head dims 16..256 ...: use sdpa', even with
    --attention sdpa. The backends it can time are timed, and a note says which was left out and why."""
    import json
    folder = tmp_path / "head-dim-8"
    save_tiny_llama(folder, make_llama_tokenizer(), n_kv_heads=2, head_dim=8)
    out = tmp_path / "bench.json"
    run = codecomplete("--bench", "--device", "cpu", "--model", folder, "--contexts", "32", "--max-tokens", "2",
                       "--json", out, timeout=200)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["backends"] == ["sdpa"]
    assert {row["attention"] for row in result["end_to_end"]} == {"sdpa"}
    assert any("eager" in note and "head dims 16..256" in note for note in result["notes"])
