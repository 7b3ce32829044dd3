"""kernels.fused_gemv_bench's table of model shapes (a sweep names a model and its ranks; kernels import nothing
from models) against the presets and the tensor-parallel split the decode step really runs."""

import pytest
import torch

from kernels.fused_gemv_bench import MODELS, model_projections
from models.config import preset
from models.llama import Transformer
from models.tp import shard_config, vocab_rows


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("world", [1, 2, 4])
def test_the_sweeps_shapes_are_the_ones_a_rank_launches(name, world):
    config = preset(name)
    local = shard_config(config, world) if world > 1 else config
    assert MODELS[name] == (config.n_layers, config.dim, config.n_heads, config.n_kv_heads, config.head_dim,
                            config.ffn_dim, config.vocab_size)
    with torch.device("meta"):
        layer = Transformer(local.replace(n_layers=1), max_len=1).layers[0]
    weights = {"wqkv rope cache": layer.attention.wqkv.weight, "wo + residual": layer.attention.wo.weight,
               "w13 swiglu": layer.feed_forward.w13.weight, "w2 + residual": layer.feed_forward.w2.weight}
    got = {p.name: p for p in model_projections(name, world)}
    assert set(got) == set(weights) | {"logits fp32"}
    for what, weight in weights.items():
        p = got[what]
        assert (p.N, p.K) == tuple(weight.shape) and p.per_step == config.n_layers
        if p.kind.startswith("gemv"):      # the kind fused_gemv.gemv picks for that weight
            assert p.kind == ("gemv_deep" if p.N < p.K else "gemv")
    assert (got["logits fp32"].N, got["logits fp32"].K) == (vocab_rows(config.vocab_size, world), config.dim)
    q = got["wqkv rope cache"]
    assert (q.heads, q.kv_heads, q.head_dim) == (local.n_heads, local.n_kv_heads, local.head_dim)
