"""Tensor parallelism on CPU ranks (gloo, spawned by the tests): two ranks must compute what one does."""

import contextlib
import faulthandler
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import tp_helpers
from process_state import exited
from tiny_models import save_tiny_llama, write_tiny_gguf

from models import GenerationConfig, ModelError, SettingError, load_model
from models.config import preset
from models.distributed import MULTICAST_OFF, RankFailed, Ranks, check_devices, run_on_ranks, under_torchrun
from models.llama import build_random_model
from models.loading.hf import load_hf_model
from models.int8_weights import quantize_rows
from models.tp import shard_config, vocab_rows

HANG_S = 300
ROOT = Path(__file__).resolve().parents[2]

# The user's program, as a user writes it: no close(); leaving the group at exit is load_model's business.
TWO_RANK_PROGRAM = """
import sys
from models import GenerationConfig, load_model

if __name__ == "__main__":
    engine = load_model(sys.argv[1], device="cpu", max_context=48, gpus=2)
    result = engine.generate([1, 17, 45, 3, 88], GenerationConfig(max_new_tokens=4))
    print(engine.ranks._context.processes[0].pid, len(result.token_ids))
"""
# Ctrl-C as the program ends, while rank 0 waits for rank 1 at the goodbye (here: the barrier interrupted).
INTERRUPTED_AT_EXIT_PROGRAM = """
import sys
import models.distributed
from models import GenerationConfig, load_model

def interrupted(tp):
    raise KeyboardInterrupt

if __name__ == "__main__":
    engine = load_model(sys.argv[1], device="cpu", max_context=48, gpus=2)
    engine.generate([1, 17, 45, 3, 88], GenerationConfig(max_new_tokens=2))
    models.distributed._leave = interrupted
    print(engine.ranks._context.processes[0].pid)
"""
THREE_RANK_KILLED_PROGRAM = """
import sys
import tp_helpers
from models.distributed import RankFailed, run_on_ranks

if __name__ == "__main__":
    try:
        run_on_ranks(3, "cpu", tp_helpers.killed_on_rank_2)
    except RankFailed as failed:
        sys.exit(f"error: {failed}")
"""
STUCK_TEARDOWN_PROGRAM = """
import sys
import tp_helpers
from models.distributed import run_on_ranks

if __name__ == "__main__":
    run_on_ranks(2, "cpu", tp_helpers.hang_in_teardown, 1.0, sys.argv[1])
    print("returned")
"""


@pytest.fixture
def no_hang():
    """Ends the whole run, with every thread's stack, if a test waits this long (ranks talk over sockets)."""
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def gqa_checkpoint(tmp_path_factory, llama_tokenizer):
    """8 query heads over 4 KV heads (head dim 16): each of two ranks takes 4 over 2."""
    directory = tmp_path_factory.mktemp("tp-gqa")
    save_tiny_llama(directory, llama_tokenizer, n_kv_heads=4, num_attention_heads=8, hidden_size=128,
                    intermediate_size=256)
    return directory


def test_a_split_that_does_not_divide_names_the_numbers():
    # The rank count is the user's choice: a SettingError (exit 2 from the command line) naming the counts that work.
    with pytest.raises(SettingError, match=r"8 key/value heads do not split over 3 ranks .*: use --gpus 1, 2, 4 or 8$"):
        shard_config(preset("CodeLlama-34B"), 3)
    with pytest.raises(SettingError, match=r"3 key/value heads do not split over 2 ranks .*: use --gpus 1 or 3$"):
        shard_config(preset("SmolLM2-135M"), 2)
    local = shard_config(preset("CodeLlama-70B"), 2)
    assert (local.n_heads, local.n_kv_heads, local.head_dim, local.ffn_dim, local.vocab_size) == (32, 4, 128, 14336, 32016)
    # random:PRESET:TOKENIZER_DIR names the preset before its colon (it was looked up whole: "unknown preset").
    with pytest.raises(SettingError, match=r"3 key/value heads do not split over 2 ranks"):
        load_model("random:SmolLM2-135M:/tokenizer/folder", device="cpu", gpus=2)


def test_more_gpus_than_there_are_is_one_clear_error():
    asked = torch.cuda.device_count() + 1
    with pytest.raises(ModelError, match=f"over {asked} GPUs: only {asked - 1} CUDA GPU"):
        check_devices(asked, "cuda")


def test_platforms_without_nccl_or_a_loopback_named_lo_are_said_or_served(monkeypatch):
    """PyTorch for Windows has no NCCL: --gpus 2 failed inside the ranks. macOS names its loopback "lo0" (gloo
    was told "lo", which it cannot find there), Windows neither: gloo is then left to find the address."""
    import socket

    import torch.distributed as dist

    from models.distributed import loopback_interface

    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    with pytest.raises(ModelError, match="^tensor parallelism over 2 GPUs needs NCCL, which this PyTorch build lacks"):
        check_devices(2, "cuda")
    for interfaces, loopback in [([(1, "lo"), (2, "eth0")], "lo"), ([(1, "lo0"), (4, "en0")], "lo0"),
                                 ([(1, "loopback_0"), (7, "ethernet_32768")], None)]:
        monkeypatch.setattr(socket, "if_nameindex", lambda interfaces=interfaces: interfaces)
        assert loopback_interface() == loopback


def test_odd_values_of_the_variables_torch_distributed_reads_are_one_line_each(monkeypatch):
    """Set by hand (or left over from another job), torchrun's variables failed as int()'s ValueError or a KeyError,
    and a GLOO_SOCKET_IFNAME this machine lacks as gloo's "enforce fail" after the ranks had started."""
    for key, value in MULTICAST_OFF.items():       # (set by every start: restored after the test)
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    for variables, message in [({"WORLD_SIZE": "two"}, "^WORLD_SIZE=two: expected a whole number"),
                               ({"WORLD_SIZE": "2"}, r"^\$RANK is not set, yet \$TORCHELASTIC_RUN_ID says torchrun"),
                               ({"RANK": "-1"}, "^RANK=-1: expected a whole number"),
                               ({"RANK": "²"}, "^RANK=²: expected a whole number"),
                               ({"RANK": "2"}, r"^RANK=2: expected 0 to 1 \(WORLD_SIZE=2\)$"),
                               ({"RANK": "0", "LOCAL_RANK": "x"}, "^LOCAL_RANK=x: expected a whole number"),
                               ({"LOCAL_RANK": "0"}, r"^\$MASTER_PORT is not set"),
                               ({"MASTER_PORT": "99999"}, "^MASTER_ADDR= MASTER_PORT=99999: expected the address")]:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SettingError, match=message):
            if under_torchrun():
                Ranks.from_torchrun()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo,nosuch0")
    with pytest.raises(SettingError, match="^GLOO_SOCKET_IFNAME=lo,nosuch0: this machine has no network interface "
                                           "'nosuch0' \\(it has .*lo"):
        Ranks.start(2, "cpu", tp_helpers.raise_on_rank_1)


def test_two_ranks_compute_what_one_does(no_hang, gqa_checkpoint, tmp_path):
    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf)
    expected = tp_helpers.all_logits(
        load_hf_model(gqa_checkpoint, torch.device("cpu"), torch.float32, max_len=64).model,
        load_model(str(gguf), device="cpu", max_context=64).model,          # converts the GGUF once, for all
        build_random_model(tp_helpers.TIED, max_len=64))
    got = run_on_ranks(2, "cpu", tp_helpers.rank_logits, str(gqa_checkpoint), str(gguf))
    assert (got.pop("rank 0 holds/wqkv rows").item(), got.pop("rank 0 holds/KV heads").item()) == ((4 + 2 * 2) * 16, 2)
    assert got.keys() == expected.keys()
    for key, reference in expected.items():
        assert reference.std() > 1e-2            # logits of substance, not a row of zeros
        # float32: sums split over ranks (and threads) round differently, ~1e-6 of the largest logit
        torch.testing.assert_close(got[key], reference, rtol=1e-5, atol=2e-5 * reference.abs().max().item(),
                                   msg=lambda message: f"{key}: {message}")


def test_two_ranks_with_int8_weights_hold_the_slices_of_one_quantization(no_hang, gqa_checkpoint, tmp_path):
    """int8 weights on ranks: each rank's bytes and scales are the slices of the whole model's quantization (wqkv,
    w13 and the output layer split by rows, with their scales; wo and w2 split by columns, keeping the whole rows'
    scales: the amax taken over the ranks), and two ranks compute what one does."""
    from models.llama import projection_weight

    single = load_hf_model(gqa_checkpoint, torch.device("cpu"), torch.float32, max_len=64).model
    single.quantize_weights()
    expected = tp_helpers.logits(single, "eager")
    got = run_on_ranks(2, "cpu", tp_helpers.rank_int8, str(gqa_checkpoint), str(tmp_path))
    layer, c = single.layers[0], single.config
    whole = {name: projection_weight(module) for name, module in (
        ("wqkv", layer.attention.wqkv), ("wo", layer.attention.wo), ("w13", layer.feed_forward.w13),
        ("w2", layer.feed_forward.w2), ("output", single.output))}
    q, kv, F, V = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.ffn_dim, c.vocab_size
    scales_differ = False
    for rank in range(2):
        held = torch.load(tmp_path / f"rank{rank}.pt")
        half = lambda n: slice(rank * n // 2, (rank + 1) * n // 2)                  # noqa: E731
        rows = {"wqkv": torch.cat([torch.arange(q)[half(q)], q + torch.arange(kv)[half(kv)],
                                   q + kv + torch.arange(kv)[half(kv)]]),
                "w13": torch.cat([torch.arange(F)[half(F)], F + torch.arange(F)[half(F)]]),
                "output": torch.arange(V)[rank * vocab_rows(V, 2):(rank + 1) * vocab_rows(V, 2)]}
        for name, (values, scale) in held.items():
            want_values, want_scale = whole[name]
            if name in ("wo", "w2"):                  # row-parallel: some columns of every row, the rows' scales whole
                K = want_values.shape[1]
                assert torch.equal(values, want_values[:, half(K)]) and torch.equal(scale, want_scale), (rank, name)
                # (their own columns' amax would have given other scales: the group's maximum mattered)
                scales_differ |= not torch.equal(quantize_rows(want_values[:, half(K)].float() * want_scale[:, None])
                                                 .scale, want_scale)
            else:                                     # (the output layer's padding rows past V: zeros, scale 1)
                n = len(rows[name])
                assert torch.equal(values[:n], want_values[rows[name]]), (rank, name)
                assert torch.equal(scale[:n], want_scale[rows[name]]), (rank, name)
                assert not values[n:].any() and (scale[n:] == 1).all(), (rank, name)
    assert scales_differ
    # Through load_model(gpus=2, weights="int8"): every rank loads its part quantized, in step with one rank.
    single_engine = load_model(str(gqa_checkpoint), device="cpu", max_context=48, weights="int8")
    engine = load_model(str(gqa_checkpoint), device="cpu", max_context=48, gpus=2, weights="int8")
    try:
        assert engine.matmul_dtype == "int8" and engine.model.weights_quantized
        assert (engine.name, engine.checkpoint_format) == (single_engine.name, "safetensors")
        greedy = GenerationConfig(max_new_tokens=8)
        assert engine.generate(tp_helpers.PROMPT_A, greedy).token_ids == \
            single_engine.generate(tp_helpers.PROMPT_A, greedy).token_ids
    finally:
        engine.close()
    for key, reference in expected.items():
        torch.testing.assert_close(got[key], reference, rtol=1e-5, atol=2e-5 * reference.abs().max().item(),
                                   msg=lambda message: f"{key}: {message}")


def test_ranks_quantizing_as_they_load_hold_the_bytes_of_load_then_quantize(no_hang, gqa_checkpoint, tmp_path):
    """load_hf_model(tp=..., weights="int8") and random_shard(weights="int8") on each of two ranks: each projection
    quantized as its slices are read, wo's and w2's rows with the amax over the ranks, a tied head from the
    embedding's rows, the padding rows zeros; the bytes and scales of loading the part and then quantize_shard."""
    run_on_ranks(2, "cpu", tp_helpers.rank_int8_as_loaded, str(gqa_checkpoint), str(tmp_path))
    for rank in range(2):
        for case, (streamed, after) in torch.load(tmp_path / f"rank{rank}.pt").items():
            assert list(streamed) == list(after) and any(t.dtype == torch.int8 for t in after.values())
            for name, tensor in after.items():
                assert streamed[name].dtype == tensor.dtype, (rank, case, name)
                assert torch.equal(streamed[name].view(torch.uint8), tensor.view(torch.uint8)), (rank, case, name)


def test_the_engine_on_two_ranks_generates_what_one_does(no_hang, gqa_checkpoint, llama_tokenizer):
    single = load_model(str(gqa_checkpoint), device="cpu", max_context=48)
    engine = load_model(str(gqa_checkpoint), device="cpu", max_context=48, gpus=2)
    try:
        assert engine.gpus == 2 and engine.model.layers[0].attention.kv_cache.k.shape[1] == 2
        ids = llama_tokenizer.encode(tp_helpers.__doc__ + "def fibonacci(n):\n    return n")
        first, second = ids[:20], ids[:14] + ids[30:36]
        greedy = GenerationConfig(max_new_tokens=10)

        def both(prompt, config, **kwargs):
            return single.generate(prompt, config, **kwargs), engine.generate(prompt, config, **kwargs)

        for prompt in (first, second):     # the second reuses the first's cached prefix
            a, b = both(prompt, greedy, should_stop=lambda: False)
            assert b.token_ids == a.token_ids and b.reused_prefix_tokens == a.reused_prefix_tokens
        assert b.reused_prefix_tokens == 14
        a, b = both(first, GenerationConfig(max_new_tokens=10, temperature=0.9, seed=7))
        assert b.token_ids == a.token_ids

        def after(n):                      # should_stop is asked before each of the 2 layers' prefill, then per step
            calls = iter(range(1000))
            return lambda: next(calls) >= n
        for n in (1, 4):                   # a cancel during the prefill (every rank stops there), then a decode step
            a, b = single.generate(second, greedy, should_stop=after(n)), engine.generate(second, greedy, should_stop=after(n))
            assert b.finish_reason == a.finish_reason == "cancelled" and b.token_ids == a.token_ids
            assert bool(a.token_ids) == (n > 2) and b.reused_prefix_tokens == a.reused_prefix_tokens == 14

        with pytest.raises(ModelError, match="empty prompt"):    # a bad request: every rank refuses, all go on
            engine.generate([], greedy)
        engine.generate(first, GenerationConfig(max_new_tokens=6, temperature=1.0))   # rank 0 picks one seed
        single.set_attention("eager")
        engine.set_attention("eager")
        a, b = both(second, greedy)        # ranks still in step: same tokens as one rank
        assert b.token_ids == a.token_ids

        engine.ranks._context.processes[0].kill()     # rank 1 dies: rank 0's next call fails, no hang
        with pytest.raises(RankFailed, match="^rank 1 was killed by SIGKILL$"):
            engine.generate(first, greedy)
        with pytest.raises(RankFailed):
            engine.generate(first, greedy)
    finally:
        engine.close()


def test_two_ranks_move_reused_runs_as_one_does(no_hang, gqa_checkpoint, llama_tokenizer):
    """Cache reuse on ranks: each moves the runs in its own KV heads, from its own record of the cached tokens, and
    a request without it then reuses only the exact prefix there too."""
    single = load_model(str(gqa_checkpoint), device="cpu", max_context=64)
    engine = load_model(str(gqa_checkpoint), device="cpu", max_context=64, gpus=2)
    try:
        ids = llama_tokenizer.encode(tp_helpers.__doc__ + "def fibonacci(n):\n    return n")
        kept, dropped, run = ids[:10], ids[10:18], ids[18:40]
        probe = GenerationConfig(max_new_tokens=3, logprobs=4)
        results = []
        for prompt, config in ((kept + dropped + run + ids[40:44], probe),
                               (kept + run + ids[44:46], GenerationConfig(max_new_tokens=3, logprobs=4, cache_reuse=8)),
                               (kept + run + ids[44:46], probe)):
            a, b = single.generate(prompt, config), engine.generate(prompt, config)
            assert b.token_ids == a.token_ids and b.reused_prefix_tokens == a.reused_prefix_tokens
            assert b.timings.moved_tokens == a.timings.moved_tokens
            for x, y in zip(a.logprobs, b.logprobs):
                assert max(abs(p - q) for (_, p), (_, q) in zip(x.top, y.top)) < 1e-4
            results.append(a)
        assert results[1].timings.moved_tokens == len(run)       # the run moved back over the dropped tokens
        assert results[2].reused_prefix_tokens == len(kept)       # which the next request may not build on
    finally:
        engine.close()


def test_two_ranks_save_and_restore_prompts_as_one_does(no_hang, gqa_checkpoint, llama_tokenizer):
    """The prompt cache on ranks: each saves and restores its own KV heads, deciding from its own record of the
    cached tokens (the same on every rank), so a restored prompt answers as on one rank."""
    single = load_model(str(gqa_checkpoint), device="cpu", max_context=64)
    engine = load_model(str(gqa_checkpoint), device="cpu", max_context=64, gpus=2)
    try:
        ids = llama_tokenizer.encode(tp_helpers.__doc__ + "def fibonacci(n):\n    return n")
        fim, chat = ids[:30], ids[30:50]
        probe = GenerationConfig(max_new_tokens=3, logprobs=4)
        for each in (single, engine):
            each.keep_prompts(16)
        for prompt in (fim, chat, fim + [5]):
            a, b = single.generate(prompt, probe), engine.generate(prompt, probe)
            assert b.token_ids == a.token_ids and b.reused_prefix_tokens == a.reused_prefix_tokens
            assert b.timings.restored_tokens == a.timings.restored_tokens
            for x, y in zip(a.logprobs, b.logprobs):
                assert max(abs(p - q) for (_, p), (_, q) in zip(x.top, y.top)) < 1e-4
        assert a.timings.restored_tokens == len(fim) + 2 and a.reused_prefix_tokens == len(fim)
    finally:
        engine.close()


def test_a_model_that_cannot_load_leaves_the_running_ranks_alone(no_hang, gqa_checkpoint, tmp_path):
    """One group per process: loading another model closed the running one first, so a spec that could never load (a
    typo in the REPL's /model) stopped the model in use, and every later request failed. The group goes only once
    the new checkpoint is found and splits; and once gone, nothing keeps rank 0's part of the old model."""
    import gc
    import weakref
    prompt, greedy = [1, 17, 45, 3, 88], GenerationConfig(max_new_tokens=4)
    engine = load_model(str(gqa_checkpoint), device="cpu", max_context=48, gpus=2)
    replacement = None
    try:
        before = engine.generate(prompt, greedy).token_ids
        with pytest.raises(ModelError, match="no such file"):
            load_model(str(tmp_path / "nowhere"), device="cpu", max_context=48, gpus=2)
        with pytest.raises(SettingError, match="do not split over 3 ranks"):
            load_model(str(gqa_checkpoint), device="cpu", max_context=48, gpus=3)
        assert engine.generate(prompt, greedy).token_ids == before
        old_part = weakref.ref(engine.engine)
        replacement = load_model(str(gqa_checkpoint), device="cpu", max_context=48, gpus=2)
        with pytest.raises(RankFailed):         # the old group is gone
            engine.generate(prompt, greedy)
        engine = None
        gc.collect()
        assert old_part() is None
        assert replacement.generate(prompt, greedy).token_ids == before
    finally:
        for leader in (engine, replacement):
            if leader is not None:
                leader.close()


@pytest.fixture
def temporary_folder(tmp_path, monkeypatch):
    """The folder tempfile writes in (torch.multiprocessing puts a failed rank's report there): a test's own."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 cannot leave the current folder off a child's "
                                                      "module path (PYTHONSAFEPATH is 3.11's)")
def test_spawned_ranks_import_nothing_from_the_current_folder(no_hang, tmp_path, monkeypatch):
    """A spawned rank starts as `python -c ...`, which puts the current folder first on its module path: run from
    inside a hostile repository, its `multiprocessing.py` ran in every rank as it started."""
    marker, folder = tmp_path / "ran", tmp_path / "repository"
    folder.mkdir()
    (folder / "multiprocessing.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(folder)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)      # (as a user's shell has it; conftest puts it back)
    with contextlib.suppress(RankFailed):                    # (the old code's rank 1 died at its start)
        run_on_ranks(2, "cpu", tp_helpers.rank_number)
    assert not marker.exists(), "a rank ran the current folder's multiprocessing.py"
    assert run_on_ranks(2, "cpu", tp_helpers.rank_number) == 0
    # for the ranks only: left set, every Python this process started later (a library user's `python tools/x.py`)
    # lost its script's folder from its module path too
    assert "PYTHONSAFEPATH" not in os.environ


def test_a_rank_that_raises_ends_the_launch_in_one_line(no_hang, temporary_folder):
    with pytest.raises(RankFailed) as failed:      # rank 0 was waiting in an all-reduce for rank 1
        run_on_ranks(2, "cpu", tp_helpers.raise_on_rank_1)
    assert str(failed.value) == "rank 1 failed: ValueError: boom on rank 1"
    assert list(temporary_folder.iterdir()) == []  # the rank's report file (pytorch-errorfile-*.pickle) was left


def test_a_rank_gone_before_its_report_is_written_ends_the_launch_in_one_line(no_hang, temporary_folder):
    with pytest.raises(RankFailed) as failed:      # torch.multiprocessing's join finds an empty report file
        run_on_ranks(2, "cpu", tp_helpers.die_while_reporting)
    assert str(failed.value) == "rank 1 exited with code 1"
    assert list(temporary_folder.iterdir()) == []


def test_a_hung_rank_fails_the_launch_after_the_set_timeout_in_one_line(no_hang, monkeypatch):
    """A rank alive but stuck held rank 0 in the collective for gloo's default 30 minutes (NCCL's: 10)."""
    monkeypatch.setenv("CODECOMPLETE_TP_TIMEOUT", "3")
    started = time.monotonic()
    with pytest.raises(RankFailed) as failed:
        run_on_ranks(2, "cpu", tp_helpers.hang_on_rank_1)
    assert str(failed.value) == ("rank 1 did not answer within 3 s (hung?); $CODECOMPLETE_TP_TIMEOUT sets how long "
                                 "ranks wait for each other")
    assert time.monotonic() - started < 30      # (starting two ranks takes a few seconds on a busy CPU)
    for bad in ("0", "-5", "soon", "nan"):
        monkeypatch.setenv("CODECOMPLETE_TP_TIMEOUT", bad)
        with pytest.raises(SettingError, match=f"CODECOMPLETE_TP_TIMEOUT='{bad}': a number of seconds above 0"):
            run_on_ranks(2, "cpu", tp_helpers.hang_on_rank_1)


def test_a_rank_hung_between_requests_fails_rank_0s_next_call_in_one_line(no_hang, gqa_checkpoint, monkeypatch):
    """Rank 0 sends each call to the others over the control group, whose gloo sends wait for the receiver: a rank
    stopped between two requests held rank 0's next call for that group's timeout (a year). (8 s, not 3: with the
    suite's workers on every core, the first request's collectives once waited over 3 s for a rank that was slow,
    not hung.)"""
    import signal
    monkeypatch.setenv("CODECOMPLETE_TP_TIMEOUT", "8")
    engine = load_model(str(gqa_checkpoint), device="cpu", max_context=48, gpus=2)
    try:
        engine.generate([1, 17, 45, 3, 88], GenerationConfig(max_new_tokens=4))
        os.kill(engine.ranks._context.processes[0].pid, signal.SIGSTOP)    # hung: alive, answering nothing
        started = time.monotonic()
        with pytest.raises(RankFailed, match=r"^rank 1 did not answer within 8 s \(hung\?\)"):
            engine.generate([1, 17, 45, 3, 88], GenerationConfig(max_new_tokens=4))
        assert time.monotonic() - started < 25      # (8 s, then the stopped rank is killed)
    finally:
        engine.close()


def test_ctrl_c_on_rank_0_stops_a_busy_rank_at_once(no_hang):
    """A rank 0 interrupted mid-load waited out CLOSE_TIMEOUT_S (30 s) for rank 1, which was never told to stop."""
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_on_ranks(2, "cpu", tp_helpers.interrupted_while_rank_1_works)
    assert time.monotonic() - started < 20       # (starting two ranks takes a few seconds on a busy CPU)


def _run_program(tmp_path, text: str, *args: str, timeout: float) -> tuple[Path, subprocess.CompletedProcess]:
    script = tmp_path / "program.py"
    script.write_text(text)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests" / "models"),
                                                        os.environ.get("PYTHONPATH", "")]))
    return script, subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                                  timeout=timeout, env=env, cwd=tmp_path)


def test_a_program_on_two_ranks_exits_cleanly_when_it_ends(gqa_checkpoint, tmp_path):
    """Rank 0 says goodbye at exit, rank 1 leaves the group with it (exit status 0: it did) and is gone."""
    _, run = _run_program(tmp_path, TWO_RANK_PROGRAM, str(gqa_checkpoint), timeout=120)
    assert (run.returncode, run.stderr) == (0, "")
    follower, generated = map(int, run.stdout.split())
    assert generated == 4 and exited(follower, within=0)


def test_ctrl_c_while_the_ranks_leave_stops_them_at_once_without_a_traceback(gqa_checkpoint, tmp_path):
    """Ctrl-C just as the program ends (the answer printed, the ranks leaving): the exit printed "Exception ignored in
    atexit callback" and a KeyboardInterrupt traceback, and rank 1, left waiting, printed its stacks 30 s later."""
    _, run = _run_program(tmp_path, INTERRUPTED_AT_EXIT_PROGRAM, str(gqa_checkpoint), timeout=120)
    assert (run.returncode, run.stderr) == (0, "")
    assert exited(int(run.stdout), within=5)


def test_a_killed_rank_is_the_one_line_said_even_while_another_rank_lives(tmp_path):
    """Rank 2 dies while rank 1 lives: stopping rank 1 is part of the failure, not a warning line of its own."""
    _, run = _run_program(tmp_path, THREE_RANK_KILLED_PROGRAM, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (1, "", "error: rank 2 was killed by SIGKILL\n")


def test_ranks_that_cannot_finish_their_teardown_exit_anyway(tmp_path):
    """Every rank's destroy_process_group blocks: each exits within the teardown bound (1 s here, 30 by
    default, above this test's timeout), rank 0 saying so in one line, rank 1 with its stacks."""
    pid_file = tmp_path / "rank1.pid"
    script, run = _run_program(tmp_path, STUCK_TEARDOWN_PROGRAM, str(pid_file), timeout=25)
    assert run.returncode == 1 and run.stdout == ""
    assert f"{script.name}: error: the ranks did not shut down within 1 s" in run.stderr.splitlines()
    assert exited(int(pid_file.read_text()))


def test_where_each_ranks_batch1_projections_run():
    """Splitting halves wqkv's rows, not its columns: on 2 GPUs it is deep like w2, and before split-K
    38% of a 34B rank's projection bytes went to cuBLAS (26% on one GPU). Now the GEMV takes them all."""
    from models.tp_bench import dispatch_shares
    one, two = dispatch_shares("CodeLlama-34B", 1), dispatch_shares("CodeLlama-34B", 2)
    assert (round(100 * one["shares"]["wide"]["cublas"]), round(100 * two["shares"]["wide"]["cublas"])) == (26, 38)
    for shares in (one, two, dispatch_shares("CodeLlama-70B", 2)):
        now = shares["shares"]["1"]
        assert now["cublas"] == 0 and abs(sum(now.values()) - 1) < 1e-9
    deep = {p["name"]: (p["N"], p["K"], p["split_k"]) for p in two["projections"] if p["old_route"] == "cublas"}
    assert deep == {"wqkv": (5120, 8192, 2), "w2": (8192, 11008, 3)}


def test_gemv_modes_route_deep_projections(monkeypatch):
    """"wide" (the A/B's old arm) sends deep projections to cuBLAS inside the op, "1" to split-K; "0"
    unloads the op; anything else names the choices."""
    import kernels.gemv
    from models import llama
    monkeypatch.setattr(llama, "_gemv", None)
    monkeypatch.setattr(kernels.gemv, "DEEP_ON_CUBLAS", False)
    llama.use_gemv("wide")
    assert llama._gemv is torch.ops.codecomplete.gemv
    assert [kernels.gemv.route(n, k) for n, k in ((5120, 8192), (22016, 8192))] == ["cublas", "gemv"]
    llama.use_gemv("1")
    assert [kernels.gemv.route(n, k) for n, k in ((5120, 8192), (22016, 8192))] == ["gemv split-K", "gemv"]
    llama.use_gemv("0")
    assert llama._gemv is None
    with pytest.raises(ValueError, match=r"CODECOMPLETE_GEMV='2': choose from wide \(deep ones on cuBLAS \(the default\)\)"):
        llama.use_gemv("2")
