"""The llama.cpp head-to-head table: llama-bench's JSON as it prints it, our rows as models.bench writes them."""

import json

import pytest

from models import peer_llamacpp


def _llama_bench_json(kv: str, rates: dict[int, float]) -> str:
    """What `llama-bench -o json` prints: one object per test, fields in its order, then the samples."""
    tests = []
    for depth, rate in rates.items():
        tests.append({"build_commit": "abc1234", "build_number": 7000, "cpu_info": "AMD EPYC", "gpu_info": "NVIDIA H200",
                      "backends": "CUDA", "model_type": "llama 7B F16", "type_k": kv, "type_v": kv, "n_gpu_layers": 99,
                      "flash_attn": True, "n_prompt": 0, "n_gen": 64, "n_depth": depth, "avg_ts": rate,
                      "stddev_ts": 0.3, "samples_ts": [rate - 0.2, rate + 0.2]})
    return json.dumps(tests, indent=2)


def _ours(context: int, kv: str, tok_s: dict) -> dict:
    return {"impl": "ours", "model": "CodeLlama-7B", "layers": 32, "batch": 1, "context": context, "kv_cache": kv,
            "weight_gb": 13.5, "kv_gb": context * (0.000537 if kv == "bf16" else 0.000270), "tok_s": tok_s}


@pytest.fixture
def measured(tmp_path):
    (tmp_path / "llamacpp-f16.json").write_text(_llama_bench_json("f16", {4096: 200.0, 16384: 150.0, 65536: 80.0}))
    (tmp_path / "llamacpp-q8_0.json").write_text(_llama_bench_json("q8_0", {4096: 190.0, 16384: 130.0, 65536: 70.0}))
    rows = [_ours(4096, "bf16", {"flash": 240.0, "sdpa": 230.0}), _ours(4096, "fp8", {"flash": 241.0}),
            _ours(16384, "bf16", {"flash": 170.0, "sdpa": 171.0}), _ours(16384, "fp8", {"flash": 200.0}),
            _ours(65536, "bf16", {"flash": 85.0, "sdpa": 84.0}), _ours(65536, "fp8", {"flash": 115.0}),
            {"impl": "hf", "model": "CodeLlama-7B", "batch": 1, "context": 4096, "tok_s": {"static": 20.0}}]
    env = {"card": "NVIDIA H200", "date": "2026-11-30", "torch": "2.11", "triton": "3.6",
           "copy_bandwidth": 4.27e12, "read_bandwidth": 4.36e12}
    e2e = tmp_path / "e2e.json"
    e2e.write_text(json.dumps({"env": env, "rows": rows}))
    return tmp_path, e2e, rows


def test_the_peer_is_read_per_cache_type_and_depth(measured):
    folder, _, _ = measured
    peer = peer_llamacpp.load(folder)
    assert peer["tok_s"] == {"f16": {4096: 200.0, 16384: 150.0, 65536: 80.0},
                             "q8_0": {4096: 190.0, 16384: 130.0, 65536: 70.0}}
    assert "abc1234" in peer["build"]


def test_every_bar_is_a_ratio_of_the_same_context(measured):
    folder, _, rows = measured
    bars = {(b["bar"], b["context"]): b for b in peer_llamacpp.bars(rows, peer_llamacpp.load(folder))}
    assert bars[("bf16 flash / llama.cpp F16", 4096)]["ratio"] == pytest.approx(1.2)
    assert bars[("bf16 flash / llama.cpp F16", 4096)]["met"]                         # 1.20 >= 1.15
    assert not bars[("bf16 flash / llama.cpp F16", 16384)]["met"]                    # 1.13 < 1.15
    assert bars[("bf16 flash / llama.cpp F16", 65536)]["met"]                        # 1.06 >= 1.05
    assert bars[("fp8 flash / llama.cpp best", 65536)]["ratio"] == pytest.approx(115 / 80)
    assert not bars[("fp8 flash / llama.cpp q8_0", 16384)]["met"]                    # 200 / 130 = 1.54 < 1.6
    assert bars[("fp8 flash / llama.cpp q8_0", 65536)]["met"]                        # 115 / 70 = 1.64
    # A context nobody measured is a missed bar with a NaN ratio, never a pass.
    missing = bars[("bf16 flash / llama.cpp F16", 32768)]
    assert missing["ratio"] != missing["ratio"] and not missing["met"]


def test_main_writes_the_table_and_says_whether_every_bar_is_met(measured, capsys):
    folder, e2e, _ = measured
    assert peer_llamacpp.main([str(e2e), str(folder)]) == 1                          # some bars missed
    table = (folder / "vs-llamacpp.md").read_text()
    assert "| 4096 | 240.0 | 230.0 | 241.0 | 200.0 | 190.0 | 1.20x |" in table
    assert "read 4.36 TB/s" in table and "missed" in table
    assert json.loads((folder / "vs-llamacpp.json").read_text())["llamacpp"]["gpu"] == "NVIDIA H200"
    assert peer_llamacpp.main([str(e2e), str(folder / "absent")]) == 2
