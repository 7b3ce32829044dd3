"""python -m models.bench's options, checked as they are parsed: one line and exit status 2 at once (on a CPU
too), not a traceback after a model is built on the GPU or a silently different run."""
import pytest

from models import bench


@pytest.mark.parametrize("argv, says", [
    (["--kv-caches", "bf16,q4"], "--kv-caches: 'q4' is not one of bf16, fp8, int8"),
    (["--backends", "flash,fast"], "--backends: 'fast' is not one of flash, sdpa, eager"),
    (["--backends", "flash:fused"], "--backends: 'fused' is not one of unfused, nopdl, wideint8, nodp4a"),
    (["--models", "7B,99B"], "--models/--preset: unknown preset 'CodeLlama-99B'"),
    (["--contexts", "4096,16k"], "--contexts: expected a whole number, got '16k'"),
    (["--contexts", "0"], "--contexts: expected a number from 1 up, got 0"),
    (["--contexts", ","], "--contexts: ',' lists nothing"),
    (["--batches", "-1"], "--batches: expected a number from 1 up, got -1"),
    (["--ttft", "16384"], "--ttft: expected 2 comma-separated values"),
    (["--hf", "statc"], "--hf: 'statc' is not one of static, dynamic"),    # ran as a DynamicCache before
    (["--weights", "bf16,int3"], "--weights: 'int3' is not one of bf16, int8, int4"),
    (["--weights", "int4", "--gpus", "2"], "--weights goes without --gpus"),
    (["--weights", "int8", "--gpus", "2"], "--weights goes without --gpus"),  # tp_bench times bf16 only
    (["--replays", "0"], "--replays: expected a number from 1 up, got 0"),
    (["--methods", "nvls"], "--methods: 'nvls' is not one of one_shot, nccl, none"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--sweep"], "--sweep goes with --gpus"),                              # a single-GPU run, silently
    (["--gemv-ab", "34B"], "--gemv-ab goes with --gpus"),
    (["--methods", "nccl"], "--methods goes with --gpus"),                   # a single-GPU run, silently
    (["--out", "{file}"], "is not a folder"),                              # its mkdir failed on the GPU
    (["--contexts", "4096", "--hf-contexts", "4096,16384"],                # the 16k HF rows dropped, silently
     "--hf-contexts 4096,16384: each one also in --contexts (4096)"),
])
def test_a_bad_option_is_one_line_and_status_2(argv, says, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench, "begin_run", lambda program, out: pytest.fail("a bad option reached the GPU run"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit:
        bench.main([arg.format(file=tmp_path / "a-file") for arg in argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and says in err, err
    assert err.startswith("python -m models.bench: error: ")


def test_good_options_reach_the_run(monkeypatch, tmp_path):
    """What the README and the GPU scripts pass still parses: the run begins (here: stands in, no GPU)."""
    started = []
    monkeypatch.setattr(bench, "begin_run", lambda program, out: started.append(program))
    for argv in (["--models", "7B,SmolLM2-135M", "--kv-caches", "bf16,fp8,int8", "--ttft", "", "--hf", ""],
                 ["--backends", "flash,flash:unfused,sdpa:nopdl", "--contexts", "4096, 16384", "--layers-34b", "0"],
                 ["--gpus", "2", "--methods", "one_shot,nccl,none", "--gemv-ab", "34B,70B"],
                 # issue 11's int4 run: the preset's full name, int4 weights, both caches at 128k
                 ["--preset", "CodeLlama-34B", "--weights", "int4", "--kv-caches", "bf16,fp8", "--contexts", "131072",
                  "--batches", "1", "--hf", "", "--ttft", "", "--backends", "flash"]):
        assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    assert started == ["models.bench"] * 4


def test_a_run_without_out_writes_under_the_scratch_folder_not_the_committed_results(monkeypatch):
    """`python -m models.bench` from the repository root wrote e2e.json/.md/.png into bench/results/."""
    from pathlib import Path
    outs = []
    monkeypatch.setattr(bench, "begin_run", lambda program, out: outs.append(out))
    assert bench.main(["--models", "7B"]) == 2
    assert outs == [Path("bench/scratch")]


def test_the_ttft_row_times_the_first_model_by_its_preset_name(monkeypatch, tmp_path):
    """`--models CodeLlama-7B` (or SmolLM2-135M) ran the whole benchmark, then failed on 'CodeLlama-CodeLlama-7B'."""
    env = {"card": "Test GPU"}
    monkeypatch.setattr(bench, "begin_run", lambda program, out: (env, 4e12, lambda message: None))
    monkeypatch.setattr(bench, "bench_ours", lambda *args, **kwargs: [])
    timed = []
    monkeypatch.setattr(bench, "prefix_reuse_ttft", lambda name, shared, new, log: timed.append(name) or {
        "model": name, "shared_tokens": shared, "new_tokens": new, "cold_ttft_ms": 2.0, "reuse_ttft_ms": 1.0,
        "reused_prefix_tokens": shared, "ratio": 0.5})
    monkeypatch.setattr(bench, "markdown", lambda env, bandwidth, rows: "")
    monkeypatch.setattr(bench, "plot", lambda rows, path, card: None)
    for models in ("CodeLlama-7B,34B", "7B", "SmolLM2-135M"):
        assert bench.main(["--models", models, "--hf", "", "--ttft", "1024,30", "--out", str(tmp_path)]) == 0
    assert timed == ["CodeLlama-7B", "CodeLlama-7B", "SmolLM2-135M"]


def test_the_hf_rows_are_timed_at_the_contexts_asked_for(monkeypatch, tmp_path):
    """--hf-contexts defaults to --contexts (a fixed list of four dropped a context of --contexts outside it), and
    the ones given are timed."""
    monkeypatch.setattr(bench, "begin_run", lambda program, out: ({"card": "Test GPU"}, 4e12, lambda message: None))
    monkeypatch.setattr(bench, "bench_ours", lambda *args, **kwargs: [])
    timed = []
    monkeypatch.setattr(bench, "bench_hf", lambda name, n_layers, contexts, *args: timed.append(contexts) or [])
    monkeypatch.setattr(bench, "markdown", lambda env, bandwidth, rows: "")
    monkeypatch.setattr(bench, "plot", lambda rows, path, card: None)
    for more in ([], ["--hf-contexts", "8192"]):
        argv = ["--models", "7B", "--contexts", "4096,8192", "--ttft", "", "--out", str(tmp_path), *more]
        assert bench.main(argv) == 0
    assert timed == [[4096, 8192], [8192]]


def test_int8_weights_are_timed_after_bf16_and_named_in_the_table(monkeypatch, tmp_path):
    """--weights int8,bf16: bench_ours takes bf16 first (it quantizes the model once its bf16 rows are timed), and the
    table names each row's weights."""
    env = {"card": "Test GPU", "date": "2026-12-02", "torch": "t", "triton": "tr"}
    monkeypatch.setattr(bench, "begin_run", lambda program, out: (env, 4e12, lambda message: None))
    asked = []

    def bench_ours(name, *args, weights, **kwargs):
        asked.append(weights)
        return [{"impl": "ours", "model": name, "layers": 32, "batch": 1, "context": 4096, "kv_cache": "bf16",
                 "weights": kind, "roofline_tok_s": 250.0 * (1 + (kind == "int8")), "tok_s": {"flash": 200.0}}
                for kind in weights]
    monkeypatch.setattr(bench, "bench_ours", bench_ours)
    monkeypatch.setattr(bench, "plot", lambda rows, path, card: None)
    argv = ["--models", "7B", "--weights", "int8,bf16", "--hf", "", "--ttft", "", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    assert asked == [["bf16", "int8"]]
    table = (tmp_path / "e2e.md").read_text()
    assert "| CodeLlama-7B | 32 | 1 | 4096 | bf16 | bf16 | 250.0 | 200.0 | 80% |" in table
    assert "| CodeLlama-7B | 32 | 1 | 4096 | int8 | bf16 | 500.0 | 200.0 | 40% |" in table


def test_int4_weights_are_timed_last_and_the_table_says_their_step_is_the_compiled_one(monkeypatch, tmp_path):
    """--weights int4,bf16,int8: bf16, then int8, then int4 (quantizing is one way); a batch-1 row whose one-token step
    ran the compiled general step (here the int4 one, as a `flash:unfused` row's would) says so in its weights cell."""
    env = {"card": "Test GPU", "date": "2026-12-06", "torch": "t", "triton": "tr"}
    monkeypatch.setattr(bench, "begin_run", lambda program, out: (env, 4e12, lambda message: None))
    asked = []

    def bench_ours(name, *args, weights, **kwargs):
        asked.append(weights)
        return [{"impl": "ours", "model": name, "layers": 48, "batch": 1, "context": 131072, "kv_cache": "fp8",
                 "weights": kind, "roofline_tok_s": 100.0, "tok_s": {"flash": 80.0},
                 "one_token_step": "compiled general" if kind == "int4" else "fused"} for kind in weights]
    monkeypatch.setattr(bench, "bench_ours", bench_ours)
    monkeypatch.setattr(bench, "plot", lambda rows, path, card: None)
    argv = ["--preset", "CodeLlama-34B", "--weights", "int4,bf16,int8", "--hf", "", "--ttft", "", "--out",
            str(tmp_path)]
    assert bench.main(argv) == 0
    assert asked == [["bf16", "int8", "int4"]]
    table = (tmp_path / "e2e.md").read_text()
    assert "| CodeLlama-34B | 48 | 1 | 131072 | int4 (compiled step) | fp8 | 100.0 | 80.0 | 80% |" in table
    assert "| CodeLlama-34B | 48 | 1 | 131072 | int8 | fp8 | 100.0 | 80.0 | 80% |" in table


def test_bench_ours_quantizes_each_kind_of_weights_and_keeps_the_fused_step(monkeypatch):
    """bench_ours on stand-ins for the GPU parts (a tiny CPU model): bf16 rows, then the model quantized to int8, then
    (int8 cannot become int4) a fresh model of the same numbers built as int4, compiled as on a GPU; every kind's
    one-token step is the fused one (int4's kernels read its nibbles), and each quantized kind's check runs."""
    import torch

    from models.config import ModelConfig
    from models.llama import Transformer, build_random_model
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=101, max_positions=64)
    built = []

    def build(name, n_layers=None, device=None, dtype=None, max_len=None, weights=None):
        built.append(weights)
        return build_random_model(config, max_len=64, weights=weights)

    def compiled(model, log):
        model.fused_decode = True          # as compile_dense sets it on a GPU
        return {}

    monkeypatch.setattr(bench, "build_random_model", build)
    monkeypatch.setattr(Transformer, "compile_dense", lambda model: setattr(model, "fused_decode", True))  # as on a GPU
    monkeypatch.setattr(bench, "check_backends_and_compile", compiled)
    monkeypatch.setattr(bench, "check_int8_weights", lambda model, log: {"int8": model.weights_kind})
    monkeypatch.setattr(bench, "check_int4_weights", lambda model, log: {"int4": model.weights_kind})
    monkeypatch.setattr(bench, "measure_steps", lambda model, name, *args, **kwargs: [
        (args[-1], model.weights_kind, model.fused_decode, model.matmul_dtype)])     # (an int4 model's head: int8)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    checks = {}
    rows = bench.bench_ours("CodeLlama-34B", None, [4096], [1], 4e12, 2, print, checks,
                            weights=("bf16", "int8", "int4"))
    assert rows == [("bf16", None, True, torch.float32), ("int8", "int8", True, torch.int8),
                    ("int4", "int4", True, torch.uint8)]
    assert built == [None, "int4"]
    assert checks["CodeLlama-34B int8 weights"] == {"int8": "int8"}
    assert checks["CodeLlama-34B int4 weights"] == {"int4": "int4"}
    # int4 alone (issue 11's run): the bf16 model checked and compiled, then quantized in place, fused step kept.
    built.clear()
    rows = bench.bench_ours("CodeLlama-34B", None, [4096], [1], 4e12, 2, print, {}, weights=("int4",))
    assert rows == [("int4", "int4", True, torch.uint8)] and built == [None]


def test_a_run_cut_short_leaves_its_table_next_to_its_json(monkeypatch, tmp_path):
    """e2e.json was written after every model, e2e.md only at the end: Ctrl-C during the second model left the
    first model's JSON next to no table, or next to an earlier run's table (and plot) in the same folder."""
    import json
    env = {"card": "Test GPU", "date": "2026-12-02", "torch": "t", "triton": "tr"}
    monkeypatch.setattr(bench, "begin_run", lambda program, out: (env, 4e12, lambda message: None))
    row = {"impl": "ours", "model": "CodeLlama-7B", "layers": 32, "batch": 1, "context": 4096, "kv_cache": "bf16",
           "roofline_tok_s": 250.0, "tok_s": {"flash": 200.0, "sdpa": 190.0, "eager": 80.0}}

    def bench_ours(name, *args, **kwargs):
        if name != "CodeLlama-7B":
            raise KeyboardInterrupt
        return [row]
    monkeypatch.setattr(bench, "bench_ours", bench_ours)
    (tmp_path / "e2e.md").write_text("# an earlier run's table\n")
    (tmp_path / "e2e.png").write_bytes(b"an earlier run's plot")
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--models", "7B,34B", "--hf", "", "--ttft", "", "--out", str(tmp_path)])
    assert not (tmp_path / "e2e.png").exists()      # it would have sat beside this run's rows
    assert json.loads((tmp_path / "e2e.json").read_text())["rows"] == [row]
    table = (tmp_path / "e2e.md").read_text()
    assert ("| CodeLlama-7B | 32 | 1 | 4096 | bf16 | bf16 | 250.0 | 200.0 | 80% | 190.0 | 80.0 | 1.05x | 2.50x |"
            in table)
    assert "Cut short: the rows so far (models CodeLlama-7B of 7B,34B)" in table
    assert bench.main(["--models", "7B", "--hf", "", "--ttft", "", "--out", str(tmp_path)]) == 0
    assert "Cut short" not in (tmp_path / "e2e.md").read_text()             # a whole run's table says nothing so


@pytest.mark.parametrize("argv, says", [
    (["--repeats", "0"], "--repeats, --threads"),                  # a median of nothing after a minute of loading
    (["--threads", "2", "0"], "--repeats, --threads"),
    (["--decode-tokens", "1"], "--decode-tokens 2 or more"),
    (["--prompt-tokens", "5000"], "--context 4096: too small"),   # a traceback after the loads
    (["--reuse-context", "4090"], "--context 4096: too small"),
    (["--out-dir", "{file}"], "is not a folder"),                  # its mkdir failed after the whole run
])
def test_cpu_bench_options_are_checked_before_the_model_loads(argv, says, monkeypatch, capsys, tmp_path):
    """python -m models.cpu_bench: a bad option is status 2 and says which, before any loading."""
    from models import cpu_bench
    monkeypatch.setattr(cpu_bench, "measure", lambda args: pytest.fail("a bad option reached the measurement"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit:
        cpu_bench.main([arg.replace("{file}", str(tmp_path / "a-file")) for arg in argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and says in err and err.count("\n") == 1, err       # not argparse's usage too


@pytest.mark.parametrize("module", ["decode_bench", "prefill_bench"])
def test_the_other_model_benchmarks_say_a_bad_option_in_one_line(module, monkeypatch, capsys):
    import importlib
    bench_module = importlib.import_module(f"models.{module}")
    monkeypatch.setattr(bench_module, "begin_run", lambda program, out: pytest.fail("reached the run"), raising=False)
    with pytest.raises(SystemExit) as exit:
        bench_module.main(["--bogus"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and err.startswith(f"python -m models.{module}: error: ")


# The tools the README shows, with options of their own.
TOOLS = ["models.bench", "kernels.bench", "codecomplete.serve_bench", "models.step_plans", "models.prefill_bench",
         "kernels.fused_gemv_bench", "kernels.few_rows_int8_bench", "kernels.gemv", "kernels.compile_check",
         "bench/context_eval.py", "bench/fp8_scales.py", "bench/speculative_bench.py", "bench/prompts_bench.py",
         "bench/gpu/step_parts.py", "bench/gpu/prefill_stop.py", "bench/gpu/graph_spans.py", "bench/gpu/soak.py"]


def run_tool(program: str, argv: list[str], monkeypatch) -> None:
    """`python -m program argv` or `python program argv`, in this process."""
    import importlib
    import runpy
    from pathlib import Path
    if program.endswith(".py"):
        script = Path(__file__).resolve().parents[2] / program
        monkeypatch.setattr("sys.argv", [program, *argv])
        monkeypatch.syspath_prepend(str(script.parent))        # as `python bench/x.py` puts bench/ first
        runpy.run_path(str(script), run_name="__main__")
    else:
        importlib.import_module(program).main(argv)


@pytest.mark.parametrize("program", TOOLS)
def test_help_says_every_options_default(program, monkeypatch, catch_parser):
    """An option with a default says it: serve_bench's --file, --function, --other-file, step_plans' --model and
    --margin, fused_gemv_bench's --model and --tp, few_rows_int8_bench's --budget-s, compile_check's --arch,
    context_eval's --sites, --model-sites and --runs, speculative_bench's and prompts_bench's --out and more said
    nothing of theirs."""
    import argparse
    parser = catch_parser(lambda: run_tool(program, [], monkeypatch))
    silent = [action.option_strings[0] for action in parser._actions
              if action.option_strings and action.default not in (None, False, "", (), [], argparse.SUPPRESS)
              and action.help != argparse.SUPPRESS and "default" not in (action.help or "")]
    assert silent == []


@pytest.mark.parametrize("program", TOOLS)
def test_help_says_what_every_option_does(program, capsys, monkeypatch):
    """--models, --contexts, --batches, --replays, --out and four more said nothing in `python -m models.bench --help`
    (kernels.bench's --out too; serve_bench's --device and --attention; the README's bench/*.py scripts' --budgets,
    --seed, --tokens and the like), though their siblings say what they do and their defaults."""
    import re
    with pytest.raises(SystemExit) as exit:
        run_tool(program, ["--help"], monkeypatch)
    assert exit.value.code == 0
    options = capsys.readouterr().out.split("\noptions:\n", 1)[1]
    # An option's entry: its line, then lines indented further; one with help text has words after the option.
    entries = re.findall(r"^  (-[^\n]*(?:\n {6,}[^\n]*)*)", options, re.M)
    silent = [entry.split()[0].rstrip(",") for entry in entries if len(entry.split("  ")) < 2 and "\n" not in entry]
    assert silent == []
