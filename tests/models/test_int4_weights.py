"""int4 weight-only quantization (models/int4_weights.py, `Transformer.quantize_weights(weights="int4")`): the model of
int4 weights (its vocabulary head int8: `models.options.head_weights`) against the model of their dequantized values in
float64, every CPU path a projection takes (prefill, one-token and verification steps, the fused one-token step (in the
interpreter), torch.compile), the module storage, the bytes a step reads and a load holds, and the refusal of a split
model. The CUDA op (kernels/gemv_int4.py) is tested with its kernel (tests/kernels/); here only which rows go to it."""

import copy

import pytest
import torch

from kernels.int4_layout import Int4Weight, dequantize_int4, int4_bytes, quantize_int4
from models import int4_weights
from models.config import ModelConfig
from models.errors import SettingError
from models.int8_weights import Int8Weight, quantize_rows
from models.llama import Decode, build_random_model, linear, projection_kind, projection_weight

# K = 64 (dim), 96 (ffn), 64 (heads x head dim): groups of 32 (kernels.int4_layout.GROUP), 2 or 3 a row.
CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=101, max_positions=64)
PROMPT = [1, 17, 45, 3, 88, 20, 9, 61, 33, 50, 7]


def _layer_projections(model):
    return [m for layer in model.layers for m in (layer.attention.wqkv, layer.attention.wo, layer.feed_forward.w13,
                                                  layer.feed_forward.w2)]


def _projections(model):
    return _layer_projections(model) + [model.output]


def _dequantized(weight: Int4Weight | Int8Weight) -> torch.Tensor:
    """A quantized weight's values exactly, (N, K) float64: q * scale + offset (int4), values * scale (int8)."""
    if isinstance(weight, Int4Weight):
        return dequantize_int4(weight, torch.float64)
    return weight.values.double() * weight.scale.double()[:, None]


@pytest.fixture(params=["untied", "tied"])
def models(request):
    """A float32 random model, the same model with int4 weights (its head int8), and a float64 model whose projections
    hold the quantized weights' dequantized values exactly: (original, int4, dequantized)."""
    config = CONFIG.replace(tie_embeddings=request.param == "tied")
    original = build_random_model(config, max_len=64, seed=torch.randint(0, 2**31, ()).item())
    quantized = copy.deepcopy(original)
    quantized.quantize_weights(weights="int4")
    dequantized = copy.deepcopy(original).double()
    for module, source in zip(_projections(dequantized), _projections(quantized)):
        exact = _dequantized(projection_weight(source))                                   # (N, K) float64
        module.weight = torch.nn.Parameter(exact, requires_grad=False)
    return original, quantized, dequantized


def test_quantize_weights_makes_every_layer_projection_int4_the_head_int8_and_keeps_the_embeddings(models):
    original, quantized, _ = models
    for module, before in zip(_layer_projections(quantized), _layer_projections(original)):
        weight = projection_weight(module)
        N, K = before.weight.shape
        assert isinstance(weight, Int4Weight) and weight.packed.shape == (N, K // 2)
        assert weight.scale.shape == weight.offset.shape == (N, K // 32)        # the product's group
        assert all(torch.equal(a, b) for a, b in zip(weight, quantize_int4(before.weight)))
    # The vocabulary head: int8 with a float32 scale per row, as int8 weights store it (llama.cpp's 4-bit files keep
    # theirs in 6 bits): an int4 head was all of int4's loss on real weights (test_int4_weights_accuracy.py).
    head = projection_weight(quantized.output)
    assert isinstance(head, Int8Weight) and not hasattr(quantized.output, "weight_offset")
    assert all(torch.equal(a, b) for a, b in zip(head, quantize_rows(original.output.weight)))
    assert (head.values.dtype, head.scale.dtype, head.scale.shape) == (torch.int8, torch.float32, (CONFIG.vocab_size,))
    assert quantized.matmul_dtype == torch.uint8                                 # the layers' packed nibbles
    # A tied head gets an int8 copy of its own: the embedding table stays float32, untouched.
    assert quantized.tok_embeddings.weight.dtype == torch.float32
    assert torch.equal(quantized.tok_embeddings.weight, original.tok_embeddings.weight)
    assert quantized.output.weight.data_ptr() != quantized.tok_embeddings.weight.data_ptr()
    assert quantized.weights_quantized and (quantized.weights_kind, original.weights_kind) == ("int4", None)
    assert quantized.compute_dtype == torch.float32
    quantized.quantize_weights(weights="int4")          # a second call leaves them as they are
    assert torch.equal(projection_weight(quantized.output).values, head.values)


@pytest.mark.parametrize("tied", [False, True])
def test_quantized_as_drawn_or_read_the_layers_are_int4_and_the_head_int8(tied, tiny_checkpoint):
    """`build_random_model(weights="int4")` and a checkpoint loaded with int4 weights (models/int8_loading.py, which
    quantizes as it reads) store what `quantize_weights(weights="int4")` does: every layer's projections int4, the
    head int8 (a tied one its own copy); the model says int4 weights, read off its layers."""
    from models import load_model
    drawn = build_random_model(CONFIG.replace(tie_embeddings=tied), max_len=64, weights="int4")
    loaded = load_model(str(tiny_checkpoint[0]), device="cpu", max_context=48, weights="int4")
    for model in (drawn, loaded.model):
        assert {projection_kind(m) for m in _layer_projections(model)} == {"int4"}
        assert projection_kind(model.output) == "int8" and model.output.weight.dtype == torch.int8
        assert model.output.weight_scale.dtype == torch.float32
        assert (model.weights_kind, model.matmul_dtype) == ("int4", torch.uint8)
    assert drawn.output.weight.data_ptr() != drawn.tok_embeddings.weight.data_ptr()
    assert (loaded.matmul_dtype, loaded.precision) == ("int4", "float32, int4 weights")


def test_int8_stays_quantize_weights_default_and_int4_takes_no_rank_amax():
    model = build_random_model(CONFIG, max_len=64)
    int8 = copy.deepcopy(model)
    int8.quantize_weights()
    assert int8.weights_kind == "int8" and int8.matmul_dtype == torch.int8
    with pytest.raises(ValueError, match="int4 without row_amax_of"):
        model.quantize_weights(lambda module: None, weights="int4")
    with pytest.raises(ValueError, match="'int3'"):
        model.quantize_weights(weights="int3")


def test_an_int4_model_registers_the_cuda_ops_of_both_kinds_it_holds(monkeypatch):
    """On CUDA an int4 model's layers run int4's ops and its head int8's: both must be registered (an int8 model's
    only int8's; a float one's none)."""
    import models.llama
    registered = []
    monkeypatch.setattr(models.llama, "register_int8_ops", lambda: registered.append("int8"))
    monkeypatch.setattr(models.llama, "register_int4_ops", lambda: registered.append("int4"))
    for weights, kinds in ((None, []), ("int8", ["int8"]), ("int4", ["int8", "int4"])):
        registered.clear()
        build_random_model(CONFIG, max_len=64, weights=weights).register_weight_ops()
        assert registered == kinds, weights


@torch.no_grad()
def _run(model, fused: bool = False, backend: str = "sdpa"):
    """Prefill logits at every position, three one-token steps and a four-token (verification) step, in float64."""
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
    return {part: logits.double() for part, logits in out.items()}


@pytest.mark.parametrize("backend, fused", [("sdpa", False), ("flash", True)])
def test_the_int4_model_computes_what_its_dequantized_weights_do_in_float64(models, backend, fused):
    """Every CPU path of the float32 int4 model against the float64 model holding the dequantized weights exactly: the
    same numbers to float32 rounding of the activations (the dequantized float32 weight is exact but for the
    rounding of q * scale + offset's sum). fused: the one-token steps on the fused kernels (models/fused_decode.py,
    here in the interpreter), which sum q * x and x apart per group (scale * sum(q x) + offset * sum(x)) and fold
    the norms' scalars in at the end: float32 rounding in another order. Against the original weights: close, not
    equal."""
    original, quantized, dequantized = models
    got, want = _run(quantized, fused, backend), _run(dequantized)
    unquantized = _run(original)
    tolerance = 1e-4 if fused else 1e-5
    for part, reference_logits in want.items():
        assert reference_logits.std() > 1e-2
        torch.testing.assert_close(got[part], reference_logits, rtol=tolerance,
                                   atol=tolerance * reference_logits.abs().max().item(),
                                   msg=lambda message: f"{part}: {message}")
        drift = (got[part] - unquantized[part]).abs().max() / unquantized[part].abs().max()
        assert 0 < drift < 0.2, (part, drift)


def test_the_fused_one_token_step_runs_on_the_int4_kernels(models, monkeypatch):
    """With fused_decode on, a one-token step goes through models/fused_decode.py, whose kernels get the packed
    nibbles with their groups' scales and offsets (not a dequantized copy): every projection of every layer; and the
    head's int8 values with their rows' float32 scales, no offsets."""
    import kernels.fused_gemv as fused_gemv
    _, quantized, _ = models
    seen = []
    for name in ("gemv", "norm_swiglu", "qkv_rope"):
        real = getattr(fused_gemv, name)
        def spy(*args, _real=real, _name=name, **kwargs):
            weight = next(a for a in args if getattr(a, "dtype", None) in (torch.uint8, torch.int8))
            offset = kwargs.get("weight_offset")
            seen.append((_name, weight.shape, weight.dtype, kwargs["weight_scale"].dtype,
                         None if offset is None else offset.dtype))
            return _real(*args, **kwargs)
        monkeypatch.setattr(fused_gemv, name, spy)
    quantized.setup_caches(1, 32)
    quantized.fused_decode = True
    quantized.prefill(torch.tensor([PROMPT]))
    quantized.decode(torch.tensor([[42]]), Decode(torch.tensor([len(PROMPT)]),
                                                 torch.tensor([len(PROMPT) + 1], dtype=torch.int32), "flash"))
    c = CONFIG
    per_layer = [("qkv_rope", ((c.n_heads + 2 * c.n_kv_heads) * c.head_dim, c.dim // 2)),
                 ("gemv", (c.dim, c.n_heads * c.head_dim // 2)), ("norm_swiglu", (2 * c.ffn_dim, c.dim // 2)),
                 ("gemv", (c.dim, c.ffn_dim // 2))]
    int4 = (torch.uint8, torch.float16, torch.float16)
    assert [(name, tuple(shape), *dtypes) for name, shape, *dtypes in seen] == \
        [(name, shape, *int4) for name, shape in per_layer] * c.n_layers + \
        [("gemv", (101, c.dim), torch.int8, torch.float32, None)]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_linear_computes_int4_weights_on_the_cpu_as_their_dequantized_values(dtype, tolerance):
    """One row, several, batched leading dimensions: x @ dequantized^T in x's dtype, within its rounding."""
    weight = quantize_int4(torch.randn(48, 256))                    # G = 32: 8 groups a row
    exact = dequantize_int4(weight, torch.float64)
    for shape in ((256,), (1, 1, 256), (3, 256), (2, 5, 256), (40, 256)):
        x = torch.randn(shape).to(dtype)
        y = linear(x, weight)
        assert y.shape == (*shape[:-1], 48) and y.dtype == dtype
        bound = x.double().abs() @ exact.abs().T
        assert ((y.double() - x.double() @ exact.T).abs() <= tolerance * bound).all(), shape


@pytest.mark.parametrize("shape", [(1, 256), (5, 256), (2, 3, 256)])
def test_a_cpu_projection_dequantizes_a_chunk_of_rows_at_a_time(shape):
    """On a CPU the float weight is never whole: the allocator's peak is a chunk of its rows (CPU_CHUNK_BYTES), the
    chunk's nibbles and the output, not N x K floats (4 MB here), and the result is x @ dequantized^T still, across a
    last chunk shorter than the others (4,000 rows, 512 a chunk)."""
    from test_int8_loading import peak_bytes
    N, K = 4000, shape[-1]
    weight = quantize_int4(torch.randn(N, K))
    exact = dequantize_int4(weight, torch.float64)
    x = torch.randn(shape)
    y, peak = peak_bytes(lambda: linear(x, weight))
    out = y.numel() * y.element_size()
    assert peak <= int4_weights.CPU_CHUNK_BYTES + N * K // 2 // 4 + 2 * out, (peak, N * K * 4)
    bound = x.double().abs() @ exact.abs().T
    assert y.shape == (*shape[:-1], N) and y.is_contiguous()
    assert ((y.double() - x.double() @ exact.T).abs() <= 1e-5 * bound).all()


def test_cuda_takes_the_op_for_up_to_16_rows_and_the_dequantized_weight_beyond():
    """1..16 rows (a decode step, a verification of 1 + k <= 16 tokens, a batch of up to 16): the op on the packed
    bytes; more (prefill), none, or the op switched off for an A/B: the dequantized weight for cuBLAS."""
    assert [int4_weights.cuda_route(rows) for rows in (1, 2, 9, 16, 17, 4096, 0)] == ["op"] * 4 + ["dequantize"] * 3
    int4_weights.CUDA_OP = False
    try:
        assert int4_weights.cuda_route(1) == "dequantize"
    finally:
        int4_weights.CUDA_OP = True


@pytest.mark.parametrize("tied", [False, True])
def test_the_bytes_a_step_reads_count_int4_weights_their_scales_and_offsets(tied):
    """models.bench's roofline: half a byte a weight and a float16 scale and offset a group, of every layer's
    projection, a byte a weight and a float32 scale a row of the head (a tied head's copy too), the norms; not the
    embedding table. What a load is estimated to hold (`weights_memory.weight_bytes`) is that and the table."""
    from models.bench import weight_bytes_per_step
    from models.weights_memory import weight_bytes
    config = CONFIG.replace(tie_embeddings=tied)
    model = build_random_model(config, max_len=64)
    c = config
    shapes = [((c.n_heads + 2 * c.n_kv_heads) * c.head_dim, c.dim), (c.dim, c.n_heads * c.head_dim),
              (2 * c.ffn_dim, c.dim), (c.dim, c.ffn_dim)] * c.n_layers
    head, table = c.vocab_size * c.dim + 4 * c.vocab_size, c.vocab_size * c.dim * 4      # int8 values and scales
    norms = (2 * c.n_layers + 1) * c.dim * 4
    model.quantize_weights(weights="int4")
    assert weight_bytes_per_step(model) == sum(n * k // 2 + 4 * n * (k // 32) for n, k in shapes) + head + norms
    assert weight_bytes_per_step(model) == sum(int4_bytes(n, k) for n, k in shapes) + head + norms
    assert weight_bytes(config, torch.float32, "int4") == weight_bytes_per_step(model) + table


def test_load_model_quantizes_to_int4_when_asked_and_says_so(tiny_checkpoint):
    from models import load_model
    directory = str(tiny_checkpoint[0])                      # (directory, the transformers model)
    engine = load_model(directory, device="cpu", max_context=48, weights="int4")
    assert engine.model.weights_kind == "int4"
    assert (engine.matmul_dtype, engine.precision) == ("int4", "float32, int4 weights")
    assert engine.generate([1, 5, 9, 13], ).token_ids
    with pytest.raises(ValueError, match="int4 weights replace matmul_dtype"):
        load_model(directory, device="cpu", max_context=48, weights="int4", matmul_dtype="bfloat16")


def test_a_split_model_refuses_int4_weights_in_one_line_before_any_rank_starts(monkeypatch):
    """--gpus N with int4 weights: refused by load_model before the ranks start (and by build_shard for a rank
    started otherwise), saying why; int8 stays the quantized kind a split model takes."""
    from models import load_model
    from models.options import SPLIT_INT4
    from models.tp import build_shard
    started = []
    monkeypatch.setattr("models.lockstep.load_on_ranks", lambda *args, **kwargs: started.append(args))
    with pytest.raises(ValueError) as error:
        load_model("random:SmolLM2-135M", device="cpu", gpus=2, weights="int4")
    assert str(error.value) == SPLIT_INT4 and "not supported" in SPLIT_INT4 and "because" in SPLIT_INT4
    assert "\n" not in SPLIT_INT4 and not started
    with pytest.raises(SettingError, match="int4 weights are not supported"):
        build_shard(CONFIG, object(), "cpu", torch.float32, weights="int4")


@pytest.fixture(scope="module")
def int4_smollm():
    """The embedded SmolLM2 loaded with int4 weights, as `--weights int4` loads it."""
    from models import load_model
    return load_model(weights="int4", max_context=512)


def test_an_int4_engine_generates_through_prefill_decode_speculation_batches_and_the_warm_paths(int4_smollm):
    """The Engine with int4 weights on every path a request takes: a prefill, one-token steps, drafts verified in
    multi-token steps, a batch, a prompt extending the cached one, the server's warm-up calls. Greedy text with and
    without speculation is the same (every CPU path computes the same dequantized weight), and it is code."""
    from models import GenerationConfig
    engine = int4_smollm
    assert engine.model.weights_kind == "int4" and engine.precision == "float32, int4 weights"
    prompt = engine.tokenizer.encode("class Stack:\n    def __init__(self):\n        self.items = []\n\n"
                                     "    def push(self, item):\n        self.items.append(item)\n\n"
                                     "    def pop(self):\n        return self.")
    plain = engine.generate(prompt, GenerationConfig(max_new_tokens=24, speculate=0))
    speculated = engine.generate(prompt, GenerationConfig(max_new_tokens=24, speculate=4))
    # (the float32 and int8 models continue this prompt with the same 24 tokens; after "def pop(self):\n" alone,
    # float32 writes prose, and so do int4 weights in groups of 32)
    assert len(plain.token_ids) == 24 and plain.text.startswith("items.pop()\n") and "self.items" in plain.text, \
        plain.text
    assert speculated.token_ids == plain.token_ids
    assert speculated.timings.verify_steps > 0
    extended = engine.generate(prompt + plain.token_ids[:2], GenerationConfig(max_new_tokens=4, speculate=0))
    assert extended.reused_prefix_tokens >= len(prompt) and extended.token_ids == plain.token_ids[2:6]
    batch = engine.generate_batch([prompt, prompt[:17]], GenerationConfig(max_new_tokens=6, speculate=0))
    assert batch[0].token_ids == plain.token_ids[:6] and len(batch[1].token_ids) == 6
    engine.warm_speculation()
    assert engine.warm_prefill([40, 41]) is not None
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=24, speculate=0)).token_ids == plain.token_ids
