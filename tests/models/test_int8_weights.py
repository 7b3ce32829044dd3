"""int8 weight-only quantization (models/int8_weights.py, `Transformer.quantize_weights`): the arithmetic, the model
of int8 weights against the model of their dequantized values, every path a projection takes (the fused one-token
step in the Triton interpreter, the general and multi-token steps, prefill, torch.compile), on fresh random weights."""

import copy

import pytest
import torch

from kernels import reference
from models import int8_weights
from models.config import ModelConfig
from models.int8_weights import Int8Weight, dequantize, int8pack_mm_agrees, linear_int8, quantize_rows
from models.llama import Decode, attention_output_and_ffn, build_random_model, linear, projection_weight

CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=101, max_positions=64)
PROMPT = [1, 17, 45, 3, 88, 20, 9, 61, 33, 50, 7]


def _projections(model):
    return [m for layer in model.layers for m in (layer.attention.wqkv, layer.attention.wo, layer.feed_forward.w13,
                                                  layer.feed_forward.w2)] + [model.output]


def test_rows_are_quantized_with_the_kernels_int8_arithmetic(monkeypatch):
    """amax / 127 per row rounded once, values rounded to nearest even: kernels.reference.quantize_int8's bytes and
    scales exactly, whatever the chunking; an all-zero row gets scale 1 and zeros."""
    weight = torch.randn(37, 50) * torch.logspace(-6, 3, 37)[:, None]          # rows of very different sizes
    weight[5] = 0
    weight[9, 3] = -weight[9].abs().max() * 3                                    # a row's amax negative
    want_values, want_scale = reference.quantize_int8(weight)
    monkeypatch.setattr(int8_weights, "ROWS_PER_CHUNK", 8)                       # 37 rows in 5 chunks
    got = quantize_rows(weight)
    assert got.values.dtype == torch.int8 and got.scale.dtype == torch.float32
    assert torch.equal(got.values, want_values) and torch.equal(got.scale, want_scale)
    assert got.scale[5] == 1 and not got.values[5].any() and got.values[9, 3] == -127
    assert (dequantize(got, torch.float64) - weight.double()).abs().max(1).values.le(got.scale / 2 * 1.0001).all()
    # A tensor-parallel rank's rows take the amax the group agrees on (here: twice this part's).
    doubled = quantize_rows(weight, row_amax=lambda amax: 2 * amax)
    assert torch.equal(doubled.scale[torch.arange(37) != 5], (want_scale[torch.arange(37) != 5].double() * 2).float())


@pytest.fixture(params=["untied", "tied"])
def models(request):
    """A float32 random model, and the same model with int8 weights: (original, int8, the float32 model whose
    projections hold the int8 weights' dequantized values)."""
    config = CONFIG.replace(tie_embeddings=request.param == "tied")
    original = build_random_model(config, max_len=64, seed=torch.randint(0, 2**31, ()).item())
    quantized = copy.deepcopy(original)
    quantized.quantize_weights()
    dequantized = copy.deepcopy(original)
    for module, source in zip(_projections(dequantized), _projections(quantized)):
        values, scale = projection_weight(source)
        exact = (values.double() * scale.double()[:, None]).float()                      # (N, K) float32
        module.weight = torch.nn.Parameter(exact, requires_grad=False)
    return original, quantized, dequantized


def test_quantize_weights_makes_every_projection_int8_and_keeps_the_embeddings(models):
    original, quantized, _ = models
    for module, before in zip(_projections(quantized), _projections(original)):
        weight = projection_weight(module)
        assert isinstance(weight, Int8Weight) and weight.values.dtype == torch.int8
        assert weight.scale.shape == (module.weight.shape[0],) and weight.scale.dtype == torch.float32
        assert torch.equal(weight.values, quantize_rows(before.weight).values)
    # A tied head gets an int8 copy of its own: the embedding table stays float32, untouched.
    assert quantized.tok_embeddings.weight.dtype == torch.float32
    assert torch.equal(quantized.tok_embeddings.weight, original.tok_embeddings.weight)
    assert quantized.output.weight.data_ptr() != quantized.tok_embeddings.weight.data_ptr()
    assert quantized.weights_quantized and not original.weights_quantized
    assert quantized.matmul_dtype == torch.int8 and quantized.compute_dtype == torch.float32
    quantized.quantize_weights()                      # a second call leaves them as they are
    assert torch.equal(projection_weight(quantized.output).values, projection_weight(models[1].output).values)


@torch.no_grad()
def _run(model, backend: str, fused: bool):
    """Prefill logits at every position, three one-token steps and a four-token (verification) step."""
    model.setup_caches(1, 32)
    model.fused_decode = fused
    out = {"prefill": model.prefill(torch.tensor([PROMPT]), all_logits=True)}
    position, steps = torch.tensor([len(PROMPT)]), []
    for token in (42, 8, 77):
        steps.append(model.decode(torch.tensor([[token]]), Decode(position, (position + 1).to(torch.int32), backend)))
        position = position + 1
    out["one-token steps"] = torch.stack(steps)
    out["verification step"] = model.decode(torch.tensor([[5, 6, 7, 8]]),
                                            Decode(position, (position + 4).to(torch.int32), backend))
    model.fused_decode = False
    return out


@pytest.mark.parametrize("backend, fused", [("sdpa", False), ("flash", True)])
def test_the_int8_model_computes_what_its_dequantized_weights_do(models, backend, fused):
    """Every path (fused: the one-token step on the fused kernels, here in the interpreter) of the int8 model against
    the float32 model holding the dequantized weights: the same numbers to float32 rounding. And against the
    original weights: close, not equal (the quantization's own error)."""
    original, quantized, dequantized = models
    got, want = _run(quantized, backend, fused), _run(dequantized, backend, False)
    unquantized = _run(original, "sdpa", False)
    for part, reference_logits in want.items():
        assert reference_logits.std() > 1e-2
        torch.testing.assert_close(got[part], reference_logits, rtol=1e-4,
                                   atol=1e-4 * reference_logits.abs().max().item(),
                                   msg=lambda message: f"{part}: {message}")
        drift = (got[part] - unquantized[part]).abs().max() / unquantized[part].abs().max()
        assert 0 < drift < 0.05, (part, drift)


def test_linear_takes_the_cpus_int8_op_for_one_row_and_the_dequantized_weight_for_several(monkeypatch):
    weight = quantize_rows(torch.randn(48, 80))
    exact = dequantize(weight, torch.float64)
    calls = []
    real = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *args: calls.append(args[0].shape) or real(*args))
    int8pack_mm_agrees.cache_clear()
    try:
        for shape in ((80,), (1, 1, 80), (3, 80), (2, 5, 80)):
            x = torch.randn(shape)
            y = linear(x, weight)
            assert y.shape == (*shape[:-1], 48) and y.dtype == torch.float32
            bound = x.double().abs() @ exact.abs().T
            assert ((y.double() - x.double() @ exact.T).abs() <= 1e-5 * bound).all(), shape
        assert calls[-2:] == [(1, 80), (1, 80)]          # after its own check (one call), one row each: the op
        # An op that disagrees with float64 is not used: the dequantized weight instead.
        monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda x, values, scale: real(x, values, scale) * 1.01)
        int8pack_mm_agrees.cache_clear()
        x = torch.randn(1, 80)
        assert not int8pack_mm_agrees(torch.float32)
        torch.testing.assert_close(linear_int8(x, weight).double(), x.double() @ exact.T, rtol=1e-5, atol=1e-5)
    finally:
        int8pack_mm_agrees.cache_clear()


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_the_compiled_dense_kernels_take_quantized_weights_as_tensor_arguments(weights):
    """torch.compile(fullgraph=True) of a block's dense part (as compile_dense and the compiled prefill call it, with
    several rows: a prefill or verification) with int8 or int4 weights: no graph break, the scales (and int4's
    offsets) inputs, not constants baked in; one compilation for layers of other weights; the eager numbers."""
    torch._dynamo.reset()
    model = build_random_model(CONFIG, max_len=64)
    model.quantize_weights(weights=weights)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]     # (the process's count: other tests compile too)
    compiled = torch.compile(attention_output_and_ffn, fullgraph=True, dynamic=False, backend="aot_eager")
    x, attn = torch.randn(1, 4, CONFIG.dim), torch.randn(1, 4, CONFIG.n_heads * CONFIG.head_dim)
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        args = (x, attn, projection_weight(a.wo), layer.ffn_norm.weight, layer.ffn_norm.eps,
                projection_weight(f.w13), projection_weight(f.w2), f.ffn_dim)
        torch.testing.assert_close(compiled(*args), attention_output_and_ffn(*args), rtol=1e-5, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 1


def test_the_batch1_gemv_op_of_int8_weights_is_well_formed():
    """The custom op the compiled CUDA step calls for one row (its fake, its schema), here in the interpreter."""
    import kernels.gemv  # noqa: F401  (registers the op)
    weight = quantize_rows(torch.randn(24, 40))
    x = torch.randn(1, 40)
    torch.library.opcheck(torch.ops.codecomplete.gemv_int8, (x, *weight), test_utils=("test_schema", "test_faketensor"))
    torch.testing.assert_close(torch.ops.codecomplete.gemv_int8(x, *weight), x @ dequantize(weight, torch.float32).T,
                               rtol=1e-5, atol=1e-5)


def test_cuda_routes_a_verification_step_to_the_few_row_op_and_prefill_to_cublas():
    """One row: the batch-1 GEMV; 2..16 rows (a verification of 1 + k <= 16 tokens, a batched step): the few-row op
    reading the int8 bytes once; more (prefill): the dequantized weight for cuBLAS. The op takes as many rows."""
    from kernels.few_rows_int8 import MAX_ROWS
    assert int8_weights.FEW_ROWS == MAX_ROWS == 16
    assert [int8_weights.cuda_route(rows) for rows in (1, 2, 9, 16, 17, 4096, 0)] == (
        ["gemv"] + ["few rows"] * 3 + ["dequantize"] * 3)


def test_the_few_row_op_computes_a_verification_steps_projection_as_the_dequantized_weight_does():
    """What linear_int8 calls on CUDA for a verification step of 4 tokens (x (1, 4, K) as rows (4, K)), here in the
    interpreter, in a torch.compile(fullgraph=True) graph as the compiled step calls it: the dequantized weight's
    numbers to float32 rounding."""
    import kernels.few_rows_int8  # noqa: F401  (registers the op)
    torch._dynamo.reset()
    weight = quantize_rows(torch.randn(48, 80))
    x = torch.randn(1, 4, 80)

    def project(x, values, scale):
        return torch.ops.codecomplete.few_rows_int8(x.reshape(-1, 80), values, scale).view(1, 4, 48)
    got = torch.compile(project, fullgraph=True, backend="aot_eager")(x, *weight)
    torch.testing.assert_close(got, linear_int8(x, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_the_bytes_a_step_reads_count_int8_weights_and_their_scales(tied):
    """models.bench's roofline: int8 values (1 byte) and float32 scales (4 bytes a row) of every projection, the
    norms; not the embedding table, of which a step reads one row (tied, it is read whole only while the output layer
    shares it: quantized, the head has an int8 copy of its own)."""
    from models.bench import weight_bytes_per_step
    config = CONFIG.replace(tie_embeddings=tied)
    model = build_random_model(config, max_len=64)
    c = config
    shapes = [((c.n_heads + 2 * c.n_kv_heads) * c.head_dim, c.dim), (c.dim, c.n_heads * c.head_dim),
              (2 * c.ffn_dim, c.dim), (c.dim, c.ffn_dim)] * c.n_layers + [(c.vocab_size, c.dim)]
    norms = (2 * c.n_layers + 1) * c.dim * 4
    assert weight_bytes_per_step(model) == sum(n * k * 4 for n, k in shapes) + norms
    model.quantize_weights()
    assert weight_bytes_per_step(model) == sum(n * k + 4 * n for n, k in shapes) + norms


def test_load_model_quantizes_when_asked_and_says_so(tiny_checkpoint):
    from models import load_model
    directory = str(tiny_checkpoint[0])                      # (directory, the transformers model)
    plain = load_model(directory, device="cpu", max_context=48)
    engine = load_model(directory, device="cpu", max_context=48, weights="int8")
    assert engine.model.weights_quantized and not plain.model.weights_quantized
    assert (engine.matmul_dtype, engine.precision) == ("int8", "float32, int8 weights")
    assert plain.precision == "float32"
    for bad, says in (({"weights": "int3"}, r"unknown weights 'int3' \(choose int8 or int4"),
                      ({"weights": "int8", "matmul_dtype": "bfloat16"}, "int8 weights replace matmul_dtype")):
        with pytest.raises(ValueError, match=says):
            load_model(directory, device="cpu", max_context=48, **bad)


@pytest.fixture(scope="module")
def int8_smollm():
    """The embedded SmolLM2 loaded with int8 weights, as `--weights int8` loads it."""
    from models import load_model
    return load_model(weights="int8", max_context=512)


def test_an_int8_engine_generates_through_prefill_decode_speculation_batches_and_the_warm_paths(int8_smollm):
    """The Engine with int8 weights on every path a request takes: a prefill, one-token steps (one int8 row), drafts
    verified in multi-token steps (several rows: the dequantized weights), a batch, a prompt that extends the cached
    one by a few tokens, and the server's warm-up calls. Greedy text with and without speculation is the same
    (speculation keeps the output), and it is code."""
    from models import GenerationConfig
    engine = int8_smollm
    assert engine.model.weights_quantized and engine.precision == "float32, int8 weights"
    prompt = engine.tokenizer.encode("class Stack:\n    def __init__(self):\n        self.items = []\n\n"
                                     "    def push(self, item):\n        self.items.append(item)\n\n"
                                     "    def pop(self):\n")
    plain = engine.generate(prompt, GenerationConfig(max_new_tokens=24, speculate=0))
    speculated = engine.generate(prompt, GenerationConfig(max_new_tokens=24, speculate=4))
    assert len(plain.token_ids) == 24 and "self.items" in plain.text, plain.text
    assert speculated.token_ids == plain.token_ids
    assert speculated.timings.verify_steps > 0 and speculated.timings.accepted_tokens > 0
    extended = engine.generate(prompt + plain.token_ids[:2], GenerationConfig(max_new_tokens=4, speculate=0))
    assert extended.reused_prefix_tokens >= len(prompt) and extended.token_ids == plain.token_ids[2:6]
    batch = engine.generate_batch([prompt, prompt[:17]], GenerationConfig(max_new_tokens=6, speculate=0))
    assert batch[0].token_ids == plain.token_ids[:6] and len(batch[1].token_ids) == 6
    engine.warm_speculation()
    assert engine.warm_prefill([40, 41]) is not None
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=24, speculate=0)).token_ids == plain.token_ids
