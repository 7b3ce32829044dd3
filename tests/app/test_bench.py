"""--bench on the CPU: the honest subset, a table, JSON and a PNG."""
import io
import json

import pytest

from codecomplete import bench, serve_bench


def test_bench_on_cpu(codecomplete, repo, tmp_path, table_model):
    """What `--bench` runs and reports on a CPU: the backends, the contexts, the 8-bit caches' and speculation's rows,
    the machine and the versions. (Whatever the weights: conftest's table model, the embedded model's tokenizer and
    context, times its runs in a fraction of the embedded model's time; test_int8_weights_app's benchmarks run the
    embedded model's.)"""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    run = codecomplete(repo, "--bench", "--model", table_model, "--contexts", "64,32,64", "--max-tokens", "2",
                       "--json", out, "--plot", png)                                    # (64 twice: timed once)
    assert run.returncode == 0, run.stderr
    assert "Flash-Decoding needs a CUDA GPU" in run.stdout
    assert "sdpa / eager" in run.stdout
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["backends"] == ["sdpa", "eager"]
    # What ran it: the CPU, a date with its zone, and the versions of this program, torch and the kernels' Triton.
    import datetime
    import importlib.metadata
    import torch
    assert "CPU" in result["card"] and datetime.datetime.fromisoformat(result["date"]).tzinfo is not None
    assert result["versions"]["torch"] == torch.__version__
    assert result["versions"]["triton"] == importlib.metadata.version("triton")
    assert set(result["versions"]) == {"codecomplete", "torch", "triton", "python"}
    contexts = {row["context"] for row in result["end_to_end"]}
    assert {32, 64, result["repo_context"]} == contexts
    assert [row["context"] for row in result["end_to_end"]] == [c for c in sorted(contexts) for _ in range(2)]
    assert all(row["decode_tokens_per_s"] > 0 for row in result["end_to_end"])
    assert {(s["context"], s["over"]) for s in result["speedups"]} == {(c, "eager") for c in contexts}
    # The first backend again with each 8-bit KV cache and with speculative decoding, plain rows unspeculated.
    assert "8-bit KV caches and speculative decoding" in run.stdout
    variants = {(row["context"], row["variant"]) for row in result["variants"]}
    assert variants == {(c, v) for c in contexts for v in ("fp8", "int8", "speculate 8")}
    assert all(row["attention"] == "sdpa" and row["decode_tokens_per_s"] > 0 for row in result["variants"])
    assert all(row["drafted"] == 0 for row in result["end_to_end"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("attention, backends", [("flash", ["flash", "sdpa", "eager"]), ("sdpa", ["sdpa", "eager"])])
def test_the_cpus_backends_come_with_one_note_that_says_what_is_timed(attention, backends):
    import argparse
    chosen, notes = bench.backends_for(argparse.Namespace(attention=attention), "cpu")
    assert chosen == backends and len(notes) == 1
    assert ("Timing it as asked" in notes[0]) == (attention == "flash")
    assert ("sdpa and eager on the CPU instead" in notes[0]) == (attention != "flash")   # both, before
    assert bench.backends_for(argparse.Namespace(attention=attention), "cuda:0") == (["flash", "sdpa", "eager"], [])


def test_speculate_0_leaves_out_the_speculation_column(table_engine):
    """`--bench --speculate 0` timed the plain run a second time, under the label "speculate 0". (The rows' labels,
    whatever the weights: conftest's table engine, the embedded model's tokenizer and context.)"""
    engine = table_engine
    ids = engine.tokenizer.encode("def add(a, b):\n    return a + b\n" * 4)[:24]
    labels = lambda depth: [row["variant"] for row in bench.measure_variants(
        engine, "sdpa", [24], ids, 3, lambda *_: None, depth)]
    assert labels(0) == ["fp8", "int8"]
    assert labels(2) == ["fp8", "int8", "speculate 2"]
    assert engine.kv_cache_dtype not in ("fp8", "int8")        # the engine's own cache again


def test_a_rows_counts_are_one_runs_as_its_decode_tokens_are(engine):
    """--bench --json: drafted, accepted and decode_steps were summed over the three runs beside decode_tokens of
    one, so steps + accepted read as three times the tokens decoded. One run's: 1 + steps + accepted = its tokens."""
    ids = engine.tokenizer.encode("def add(a, b):\n    return a + b\n" * 8)[:48]
    engine.set_attention("sdpa")
    [row] = bench.measure(engine, ["sdpa"], [48], ids, 8, lambda *_: None, speculate=4)
    assert row["decode_steps"] > 0 and row["drafted"] >= row["accepted"]
    assert 1 + row["decode_steps"] + row["accepted"] == row["decode_tokens"]


def test_roofline_falls_as_the_context_grows(engine):
    # On a GPU the bandwidth is measured; here any figure checks the arithmetic.
    ceilings = bench.roofline(engine, [256, 1024, 4096], bandwidth=1e11)
    assert ceilings[256] > ceilings[1024] > ceilings[4096] > 0
    # SmolLM2 in float32 reads ~0.5 GB of weights a step: some 200 tok/s at 100 GB/s.
    assert 100 < ceilings[256] < 400


def test_default_contexts_beyond_the_model_run_at_its_longest(codecomplete, tmp_path, table_model):
    """The default contexts (256 and 1,024 on a CPU) with room for 512: the longest context that fits stands in
    for 1,024 instead of the benchmark silently shrinking to one context (on an H200, CodeLlama-7B's 16k limit
    left the GPU defaults at 4k alone). Contexts asked for by name are left out as before. (The choice is the
    contexts', whatever the weights: conftest's table model, the embedded model's context and tokenizer, times
    its runs in a fraction of the embedded model's time.)"""
    out = tmp_path / "bench.json"
    model = ("--model", table_model)
    run = codecomplete("--bench", *model, "--context-tokens", "512", "--max-tokens", "2", "--json", out)
    assert run.returncode == 0, run.stderr
    assert {row["context"] for row in json.loads(out.read_text())["end_to_end"]} == {256, 512}
    assert "1024 tokens do not fit here: the longest context, 512, instead" in run.stdout
    run = codecomplete("--bench", *model, "--contexts", "256,1024", "--context-tokens", "512", "--max-tokens", "2",
                       "--json", out)
    assert run.returncode == 0, run.stderr
    assert {row["context"] for row in json.loads(out.read_text())["end_to_end"]} == {256}


def test_max_tokens_1_is_a_usage_error(codecomplete):
    # One token comes from the prefill alone: every decode rate would be 0 and the table had no ratio to show.
    run = codecomplete("--bench", "--contexts", "16", "--max-tokens", "1")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "--max-tokens 1 times no decoding" in run.stderr


def test_tables_show_a_backend_that_decoded_nothing():
    """A model whose first token is its EOS decodes nothing: a rate of 0, no ratio; the tables show a dash
    where they crashed on a KeyError (and a division by zero) after the whole run."""
    rows = [{"context": 64, "attention": "sdpa", "decode_tokens_per_s": 0.0},
            {"context": 64, "attention": "eager", "decode_tokens_per_s": 0.0},
            {"context": 128, "attention": "sdpa", "decode_tokens_per_s": 6.0},
            {"context": 128, "attention": "eager", "decode_tokens_per_s": 3.0}]
    variants = [{"context": c, "variant": "int8", "decode_tokens_per_s": r, "drafted": 0, "accepted": 0}
                for c, r in ((64, 0.0), (128, 4.5))]
    result = {"backends": ["sdpa", "eager"], "end_to_end": rows, "speedups": bench.speedups(rows, ["sdpa", "eager"]),
              "roofline": None, "repo_context": None, "kv_cache": "float32", "variants": variants}
    from rich.console import Console

    def rows_of(table) -> dict[str, list[str]]:
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(table)
        cells = [line.strip("│ ").split("│") for line in console.export_text().splitlines() if line.startswith("│")]
        return {row[0].strip(): [cell.strip() for cell in row[1:]] for row in cells if row[0].strip()[:1].isdigit()}

    assert rows_of(bench.table(result)) == {"64": ["0.0", "0.0", "-"], "128": ["6.0", "3.0", "2.00x"]}
    assert rows_of(bench.variant_table(result)) == {"64": ["0.0", "0.0", "-"], "128": ["6.0", "4.5", "0.75x"]}


def test_the_kernel_table_shows_a_contestant_that_failed_on_a_shape():
    """On a GPU, kernels.bench records a contestant that cannot run a shape (out of memory) as an error with no
    time: the kernel table's KeyError then lost the whole --bench run's result. Its cells are a dash instead."""
    from rich.console import Console
    shape = {"label": "34B B=64 S=2k"}
    rows = [{"shape": shape, "kv_mb": 537.0, "floor_us": 126.0,
             "graph_us": {"flash_decode": 140.0, "sdpa_cudnn": 175.0, "sdpa_flash": 210.0, "eager": 700.0}},
            {"shape": {"label": "7B B=1 S=64k"}, "kv_mb": 1074.0, "floor_us": 252.0,
             "graph_us": {"sdpa_math": 900.0}, "errors": {"flash_decode": "OutOfMemoryError", "eager": "x"}}]
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(bench.kernel_table(4.26e12, rows))
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in console.export_text().splitlines() if line.startswith("│")}
    assert lines["34B B=64 S=2k"] == ["537", "140.0", "90%", "175.0", "700.0", "1.25x", "5.0x"]
    assert lines["7B B=1 S=64k"] == ["1074", "-", "-", "900.0", "-", "-", "-"]


def test_a_plot_that_cannot_be_written_is_an_error_not_a_bug(tmp_path, monkeypatch):
    """A disk that filled during the run: savefig's OSError was an internal error asking for --debug."""
    import errno

    from matplotlib.figure import Figure

    from codecomplete.errors import AppError, classify

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    result = {"backends": ["sdpa"], "end_to_end": [{"context": 64, "attention": "sdpa", "decode_tokens_per_s": 1.0}],
              "model": "m", "card": "c", "date": "d"}
    with pytest.raises(AppError) as error:
        bench.plot(result, str(tmp_path / "p.png"))
    assert classify(error.value) == (1, f"cannot write the plot {tmp_path / 'p.png'}: No space left on device")


@pytest.mark.parametrize("argv, says", [
    (["--chars", "0"], "argument --chars: expected a number from 1 up, got 0"),       # was a ZeroDivisionError
    (["--chars", "400"], "--chars 400: the body of typed is too short"),              # was an IndexError
    (["--requests", "0"], "argument --requests: expected a number from 1 up"),
    (["--max-tokens", "0"], "argument --max-tokens: expected a number from 1"),       # the server's own refusal
    (["--file", "nope.py"], "--file nope.py: no such file in"),                       # was a traceback
    (["--other-file", "pkg"], "--other-file pkg: no such file in"),
    (["--more-cold", "a.py", "gone.py"], "--more-cold gone.py: no such file in"),
    (["--function", "absent"], "--file a.py: no function absent in it"),              # exit status 1 before
    (["--file", "notes.md"], "--file notes.md: unterminated string literal"),
    (["--bogus"], "unrecognized arguments: --bogus"),                                 # a usage block before
    (["--attention", "flahs"], "argument --attention: invalid choice: 'flahs'"),   # a server that would not start
    (["--samplers", "top_k,top_q"], "argument --samplers: top_q: not a llama.cpp sampler"),   # would time another chain
    (["--out", "{tmp}/no-folder/serve"], "--out {tmp}/no-folder/serve.json: cannot write it"),  # after the run
    (["--out", "{tmp}/pkg"], "--out {tmp}/pkg.json: is a folder"),        # a folder pkg.json, made below
])
def test_serve_bench_options_are_checked_before_the_server_starts(argv, says, tmp_path, capsys):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "a.py").write_text("def typed(x):\n    return [x * 2 for _ in range(3)]\n")
    (tmp_path / "notes.md").write_text("it's\n")
    (tmp_path / "pkg.json").mkdir()
    base = ["--repo", str(tmp_path), "--file", "a.py", "--function", "typed", "--other-file", "a.py"]
    with pytest.raises(SystemExit) as exit:
        serve_bench.parse_args([*base, *(arg.replace("{tmp}", str(tmp_path)) for arg in argv)])
    err = capsys.readouterr().err
    says = says.replace("{tmp}", str(tmp_path))
    assert exit.value.code == 2 and err.count("\n") == 1 and says in err, err
    # The same files with good options: the cursors it will type, 5 characters of the body at a time.
    args = serve_bench.parse_args([*base, "--chars", "5", "--requests", "3", "--samplers", "top_k, temperature"])
    assert [c.offset for c in args.cursors] == [19, 24, 29, 34]
    assert args.cursors[0].llama_vim_body(8, args.samplers)["samplers"] == ["top_k", "temperature"]
    assert args.cursors[0].llama_vim_body(8)["samplers"] == ["top_k", "top_p", "infill", "temperature"]


def test_a_reader_gone_from_the_bench_tables_is_141(monkeypatch):
    """`codecomplete --bench | head -c 1`: rich's consoles met the closed pipe with SystemExit(1), which passed the
    command line's BrokenPipeError handler, so the run ended 1 with nothing said; now it is 141, like any filter."""
    import contextlib
    import os

    from codecomplete import cli, render

    read, write = os.pipe()
    os.close(read)
    pipe = os.fdopen(write, "w")
    monkeypatch.setattr("sys.stdout", pipe)
    monkeypatch.setattr(cli, "_quiet_stdout", lambda: None)     # it points fd 1 at /dev/null: not pytest's
    monkeypatch.setattr(cli, "check", lambda args, closed: None)
    monkeypatch.setattr(cli, "_command", lambda args: lambda args: render.stdout_console().print(bench.table(
        {"backends": ["sdpa"], "end_to_end": [{"context": 64, "attention": "sdpa", "decode_tokens_per_s": 1.0}],
         "speedups": [], "roofline": None, "repo_context": None})))
    try:
        assert cli.main(["--bench"]) == 141
    finally:
        with contextlib.suppress(BrokenPipeError):      # what the table left in the pipe's buffer
            pipe.close()


def test_serve_bench_says_in_one_line_why_the_server_did_not_start(tmp_path, monkeypatch, capsys):
    """A --device or --model the server refuses: its own error and exit status, not a RuntimeError traceback
    carrying the server's log."""
    monkeypatch.setenv("CODECOMPLETE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "a.py").write_text("def typed(x):\n    return [x * 2 for _ in range(3)]\n")
    code = serve_bench.main(["--repo", str(tmp_path / "repo"), "--file", "a.py", "--function", "typed",
                             "--other-file", "a.py", "--device", "tpu", "--one-shot", "0"])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("python -m codecomplete.serve_bench: the server did not start: "
                                                        "codecomplete: error: --device tpu: not a device (cpu, cuda, "
                                                        "cuda:1 ...)")


def test_no_benchmark_writes_into_the_committed_results_by_default():
    """Every benchmark command's default output (bench/*.py, bench/gpu/*, the *_bench modules, serve_bench) was a
    place under bench/results/, so a casual run from the repository root wrote over committed results. Defaults
    now lie under bench/scratch/ (ignored by git); bench/results/ takes an explicit --out or OUT=. A default spelled
    `ROOT / "bench" / "results" / ...` (spm_infill_prefill.py, example_hold_prefill.py) passed the check before."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    default = re.compile(r'(OUT:-|default=(Path\()?f?"|else f?"|or (Path\()?f?")bench/results'
                         r'|default=\w+ / "bench" / "results"')     # ROOT / "bench" / "results" / ... too
    files = [*root.glob("bench/*.py"), *root.glob("bench/gpu/*"), *root.glob("kernels/*.py"),
             *root.glob("models/*.py"), root / "codecomplete" / "serve_bench.py"]
    found = [f"{f.relative_to(root)}: {line.strip()}" for f in files if f.is_file()
             for line in f.read_text(encoding="utf-8").splitlines() if default.search(line)]
    assert len(files) > 40 and found == []
    assert "/bench/scratch/" in (root / ".gitignore").read_text().splitlines()
