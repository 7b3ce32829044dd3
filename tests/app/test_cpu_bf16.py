"""The command line's and the server's CPU default on a CPU with bfloat16 dot products: float32 with the
projections' weights in bfloat16 (codecomplete.engines.cpu_matmul_dtype), and a command line that finds a server
runs its request there only if the server's weights are what it would load itself (codecomplete.client.mismatch).
The suite keeps float32 weights everywhere (tests/conftest.py sets CODECOMPLETE_CPU_BF16=0); here it is turned on."""

from types import SimpleNamespace

import pytest

import models.options
from models import GenerationConfig
from codecomplete import cli, engines
from codecomplete.client import engine_info, mismatch
from codecomplete.render import model_label


def parse(*argv):
    return cli.build_parser().parse_args(["--prompt", "x", *argv])


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setenv("CODECOMPLETE_CPU_BF16", "1")
    monkeypatch.setattr(models.options, "cpu_has_bf16_dots", lambda: True)


def test_a_cpu_with_bfloat16_dots_gets_bfloat16_weights_unless_asked_otherwise(bf16_cpu, monkeypatch):
    assert engines.cpu_matmul_dtype(parse(), "cpu") == "bfloat16"
    assert engines.cpu_matmul_dtype(parse("--dtype", "float32"), "cpu") is None      # float32 throughout
    assert engines.cpu_matmul_dtype(parse("--dtype", "bfloat16"), "cpu") is None     # bfloat16 throughout
    assert engines.cpu_matmul_dtype(parse(), "cuda") is None
    assert engines.cpu_matmul_dtype(parse("--gpus", "2"), "cpu") is None             # a split model keeps its dtype
    monkeypatch.setenv("CODECOMPLETE_CPU_BF16", "0")
    assert engines.cpu_matmul_dtype(parse(), "cpu") is None
    monkeypatch.setenv("CODECOMPLETE_CPU_BF16", "1")
    monkeypatch.setattr(models.options, "cpu_has_bf16_dots", lambda: False)         # emulated: slower, so not
    assert engines.cpu_matmul_dtype(parse(), "cpu") is None


def test_the_command_line_loads_it_and_says_so(bf16_cpu):
    engine = engines.load(parse("--max-tokens", "4"), 4)
    assert (engine.dtype, engine.matmul_dtype) == ("float32", "bfloat16")
    assert "float32, bfloat16 weights" in model_label(engine)
    # (the 4 tokens it was loaded for, not generate's default of 128: no claim here is about the answer's length)
    assert engine.generate(engine.tokenizer("def add(a, b):")["input_ids"],
                           GenerationConfig(max_new_tokens=4)).token_ids


def info(matmul_dtype=None, defaults_matmul=None):
    engine = {"name": "m", "device": "cpu", "dtype": "float32", "attention": "sdpa", "kv_cache": "float32",
              "context_length": 4096, "model_max_positions": 8192, "load_s": 1.0}
    defaults = {"dtype": "float32", "attention": "sdpa"}
    if matmul_dtype:
        engine["matmul_dtype"] = matmul_dtype
    if defaults_matmul:
        defaults["matmul_dtype"] = defaults_matmul
    return {"repo": None, "model_spec": None, "default_device": "cpu", "device": None, "dtype": None,
            "attention": None, "defaults": defaults, "engine": engine}


def test_a_command_line_uses_a_server_only_with_the_weights_it_would_load():
    narrow = info("bfloat16", "bfloat16")            # a server started without --dtype on a bfloat16 CPU
    assert mismatch(narrow, parse(), None, 4) is None
    assert mismatch(narrow, parse("--dtype", "float32"), None, 4) == \
        "runs float32 with bfloat16 weights, not --dtype float32"
    wide = info("float32", "bfloat16")               # started with --dtype float32 there
    assert mismatch(wide, parse("--dtype", "float32"), None, 4) is None
    assert "not bfloat16 weights (the default here)" in mismatch(wide, parse(), None, 4)
    older = info()                                   # a server from before: float32 throughout
    assert mismatch(older, parse(), None, 4) is None and mismatch(older, parse("--dtype", "float32"), None, 4) is None
    assert engine_info(older["engine"]).matmul_dtype == "" and "bfloat16" not in model_label(
        engine_info(older["engine"]))
    assert model_label(engine_info(narrow["engine"])) == "m (cpu, float32, bfloat16 weights, sdpa)"


def test_the_server_announces_its_weights_and_its_default(bf16_cpu):
    from codecomplete.server.serve import _defaults

    engine = SimpleNamespace(device="cpu", attention="sdpa")
    assert _defaults(parse(), engine)["matmul_dtype"] == "bfloat16"
    assert _defaults(parse("--gpus", "2"), engine)["matmul_dtype"] == "float32"
