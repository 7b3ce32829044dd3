"""--weights on the command line and the server: int8 weights (a float32 scale per output row), int4 ones (a float16
scale and offset per group of columns) or bf16 ones, checked before the model loads, said in the model's label,
announced by a server, and a server of other weights not used."""

import httpx
import pytest

from codecomplete import cli, engines
from codecomplete.client import mismatch
from codecomplete.errors import UsageError
from models import GenerationConfig

FOUR_TOKENS = GenerationConfig(max_new_tokens=4)        # as --max-tokens 4 asks


def parse(*argv):
    return cli.build_parser().parse_args(["--prompt", "x", *argv])


def test_weights_choose_the_projections_storage_on_a_cpu():
    assert engines.cpu_matmul_dtype(parse("--weights", "int8"), "cpu") is None           # int8 instead of bfloat16
    assert engines.cpu_matmul_dtype(parse("--weights", "int4"), "cpu") is None           # int4 likewise
    assert [engines.quantized_weights(parse(*argv)) for argv in ([], ["--weights", "bf16"], ["--weights", "int8"],
                                                                 ["--weights", "int4"])] == [None, None, "int8", "int4"]
    assert engines.cpu_matmul_dtype(parse("--weights", "bf16"), "cpu") == "bfloat16"     # under float32 activations
    assert engines.cpu_matmul_dtype(parse("--weights", "bf16", "--dtype", "bfloat16"), "cpu") is None   # already so
    assert engines.cpu_matmul_dtype(parse("--weights", "bf16"), "cuda") is None          # the GPU's dtype already


@pytest.mark.parametrize("argv, device, says", [
    (["--weights", "bf16", "--dtype", "float16"], "cuda", "--weights bf16: matmul weights in bfloat16 are for a "
                                                          "float32 model on a CPU (this one: float16 on cuda)"),
    (["--weights", "bf16", "--gpus", "2"], "cpu", "--weights bf16: a model split over several processes keeps its"),
    (["--weights", "int4", "--gpus", "2"], "cuda", "--weights int4 --gpus 2: int4 weights are not supported on a "
                                                   "model split over several processes because"),
])
def test_weights_that_cannot_be_are_a_usage_error_before_the_load(argv, device, says):
    with pytest.raises(UsageError) as error:
        engines.check_weights(parse(*argv), device)
    assert str(error.value).startswith(says)


def test_an_unknown_kind_of_weights_is_one_line_and_status_2_and_lists_the_kinds(capsys):
    with pytest.raises(SystemExit) as exit:
        parse("--weights", "int3")
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--weights: invalid choice: 'int3' (choose from 'bf16', 'int8', 'int4')" in err
    assert len(err.strip().splitlines()) == 1, err


def info(matmul_dtype):
    engine = {"name": "m", "device": "cpu", "dtype": "float32", "attention": "sdpa", "kv_cache": "float32",
              "context_length": 4096, "model_max_positions": 8192, "load_s": 1.0, "matmul_dtype": matmul_dtype}
    return {"repo": None, "model_spec": None, "default_device": "cpu", "device": None, "dtype": None,
            "attention": None, "defaults": {"dtype": "float32", "attention": "sdpa", "matmul_dtype": "float32"},
            "engine": engine}


def test_a_command_line_uses_a_server_only_with_the_weights_it_would_load():
    int8 = info("int8")
    assert mismatch(int8, parse("--weights", "int8"), None, 4) is None
    assert mismatch(int8, parse(), None, 4) == "runs float32 with int8 weights, not float32 weights (the default here)"
    assert mismatch(info("float32"), parse("--weights", "int8"), None, 4) == \
        "runs float32 with float32 weights, not --weights int8"
    assert mismatch(info("bfloat16"), parse("--weights", "bf16"), None, 4) is None
    assert mismatch(info("int4"), parse("--weights", "int4"), None, 4) is None
    assert mismatch(info("int8"), parse("--weights", "int4"), None, 4) == \
        "runs float32 with int8 weights, not --weights int4"
    assert mismatch(info("int4"), parse(), None, 4) == "runs float32 with int4 weights, not float32 weights (the " \
                                                       "default here)"


def test_the_command_line_loads_int8_weights_and_says_so():
    from codecomplete.render import model_label
    engine = engines.load(parse("--weights", "int8", "--max-tokens", "4"), 4)
    assert (engine.dtype, engine.matmul_dtype) == ("float32", "int8") and engine.model.weights_quantized
    assert "float32, int8 weights" in model_label(engine)
    # (the 4 tokens it was loaded for: generate's default of 128 ran ~90 to EOS, ~10 CPU-s, for no claim here)
    assert engine.generate(engine.tokenizer("def add(a, b):")["input_ids"], FOUR_TOKENS).token_ids


def test_the_command_line_loads_int4_weights_and_says_so():
    from codecomplete.render import model_label
    engine = engines.load(parse("--weights", "int4", "--max-tokens", "4"), 4)
    assert (engine.dtype, engine.matmul_dtype, engine.model.weights_kind) == ("float32", "int4", "int4")
    assert "float32, int4 weights" in model_label(engine)
    # (the 4 tokens it was loaded for: generate's default of 128 ran ~90 to EOS, ~10 CPU-s, for no claim here)
    assert engine.generate(engine.tokenizer("def add(a, b):")["input_ids"], FOUR_TOKENS).token_ids


def test_a_server_with_int8_weights_warms_up_serves_and_announces_them(script, cli_env, served_repo,
                                                                       tmp_path_factory, codecomplete):
    """`codecomplete serve --weights int8`: its warm-up (a generation, the verification step, prefill spans) and a
    request run on int8 weights; it announces them, and a command line takes it only when it asks for them."""
    from server_process import ServerProcess

    process = ServerProcess(script, served_repo, cli_env, tmp_path_factory.mktemp("int8-server"),
                            "--context-tokens", "256", "--max-tokens", "8", "--weights", "int8")
    try:
        assert process.info["weights"] == "int8" and process.info["engine"]["matmul_dtype"] == "int8"
        reply = httpx.post(process.url + "/completion", json={"prompt": "def add(a, b):", "n_predict": 6},
                           timeout=300).json()
        assert reply["tokens_predicted"] > 0 and reply["content"], reply
        asked = codecomplete("--server", process.url, "--weights", "int8", "--prompt", "def add(a, b):",
                             "--max-tokens", "3", "--json")
        assert asked.returncode == 0, asked.stderr
        plain = codecomplete("--server", process.url, "--prompt", "def add(a, b):", "--max-tokens", "3")
        assert plain.returncode == 2 and "runs float32 with int8 weights, not float32 weights" in plain.stderr, \
            plain.stderr
    finally:
        code = process.stop()
    assert code == 0 and "warmed up the decode step" in process.log() and "Traceback" not in process.log(), \
        process.log()


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_the_benchmarks_json_names_the_weights_it_timed(weights, codecomplete, tmp_path):
    """`--bench --weights int8 --json` (int4): a result file says the weights were int8 (the table's title did; the
    JSON said only float32, as a run of float32 weights does)."""
    import json

    out = tmp_path / "bench.json"
    run = codecomplete("--bench", "--weights", weights, "--contexts", "32", "--max-tokens", "2", "--speculate", "0",
                       "--json", out)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert (result["dtype"], result["matmul_dtype"]) == ("float32", weights), result
    assert f"float32, {weights} weights" in run.stdout
