"""Accuracy of the 8-bit KV caches on real weights and real code: the embedded SmolLM2, teacher-forced over
source files of installed packages nobody here wrote. The bar (issue 11): the 8-bit cache's top-1 next token
agrees with the unquantized cache's at >= 98% of at least 2,000 positions; the mean KL divergence is reported.

The fp8 cache reads each query's first 16 keys (attention sinks) and last 32 exact, from a model-dtype copy
(models/kv_cache.py, EXACT_SINK and EXACT_WINDOW); int8 needs none. Measured here (2026-12-04, this test, 2,040
positions, the prefill in chunks of 255 so the second reads the first's exact tokens back from the cache): fp8 e4m3
98.6% (mean KL 6.9e-4 nats); with 4 sink tokens 98.5% (7.6e-4); int8 with the same copies 99.6% (5.7e-5), 99.75%
with 4 sink tokens (it keeps none: it meets the bar alone, and they cost a GPU's prefill and decode some). Without the exact tokens (2026-11-30):
e4m3 95.9% (5.8e-3), int8 98.2% (8.5e-4); int8 on 2026-12-04 98.4% (8.8e-4): e4m3 keeps 3 mantissa bits, a relative
error of up to 2^-4 on every element whatever the scale granularity (a Hadamard rotation of K and V did not help
either: 94-96%).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

SOURCES = [("rich", "text.py"), ("jinja2", "lexer.py"), ("httpx", "_models.py"), ("click", "core.py")]
TOKENS_PER_FILE = 510      # 4 files -> 2,040 predicted positions
CHUNK = 255                # prefilled in chunks: the second reads the first back from the cache
BAR = 0.98
KINDS = ("fp8", "int8")


def code_ids(tokenizer) -> list[list[int]]:
    files = []
    for package, name in SOURCES:
        path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / name
        files.append(tokenizer.encode(path.read_text())[:TOKENS_PER_FILE + 1])
    return files


@torch.no_grad()
def teacher_forced(model, ids: list[int]) -> torch.Tensor:
    """log-probabilities (N, V) of each next token, the sequence prefilled chunk by chunk."""
    out = []
    for start in range(0, len(ids) - 1, CHUNK):
        chunk = torch.tensor([ids[start:min(start + CHUNK, len(ids) - 1)]])
        out.append(model.prefill(chunk, start, all_logits=True)[0].log_softmax(-1))
    return torch.cat(out)


@pytest.fixture(scope="module")
def agreement(smollm_engine, float32_teacher_forced) -> dict:
    """Per 8-bit kind: (top-1 agreement, mean KL(unquantized || 8-bit) in nats, positions)."""
    engine = smollm_engine
    files = code_ids(engine.tokenizer)
    assert all(len(f) == TOKENS_PER_FILE + 1 for f in files)
    agree, kl = dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0.0)
    positions = 0
    try:
        for ids, exact in zip(files, float32_teacher_forced, strict=True):
            engine.set_kv_cache(None)
            # exact: teacher_forced(engine.model, ids) with the unquantized cache (N, V), computed once a run
            positions += exact.shape[0]
            for kind in KINDS:
                engine.set_kv_cache(kind)
                quantized = teacher_forced(engine.model, ids)
                agree[kind] += (exact.argmax(-1) == quantized.argmax(-1)).sum().item()
                kl[kind] += (exact.exp() * (exact - quantized)).sum(-1).sum().item()
    finally:
        engine.set_kv_cache(None)
        engine.clear_prefix_cache()
    return {kind: (agree[kind] / positions, kl[kind] / positions, positions) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_8bit_cache_agrees_with_the_unquantized_cache_on_real_code(agreement, record_property, kind):
    rate, mean_kl, positions = agreement[kind]
    record_property(f"{kind}_top1_agreement", rate)
    record_property(f"{kind}_mean_kl_nats", mean_kl)
    print(f"\n{kind} KV cache vs unquantized, {positions} positions: top-1 agreement {rate:.4f}, mean KL {mean_kl:.2e} nats")
    assert positions >= 2000
    assert 0 < mean_kl, "the two caches gave identical distributions: the 8-bit path did not run"
    assert rate >= BAR, f"top-1 agreement {rate:.4f} < {BAR} (mean KL {mean_kl:.3e} nats, {positions} positions)"
