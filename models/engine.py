"""The Engine: a loaded model, its KV cache, and the decode loop that streams text.

    engine = load_model()                   # models/load.py: the embedded SmolLM2 unless told otherwise
    result = engine.generate(ids, GenerationConfig(max_new_tokens=64), on_text=print)

A request prefills its prompt (only the part the cache does not already hold from the previous
request), then decodes. Plain decoding runs one step per token: on CUDA a replayed CUDA graph, and the
host reads token t while the GPU already computes step t+1, so the loop never stalls the GPU.
Speculative decoding (one sequence, `GenerationConfig.speculate` drafts per step) verifies drafts
looked up in the prompt in one multi-token step (a second graph) and keeps the output unchanged
(models/speculative.py).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from time import perf_counter
from typing import NamedTuple

import torch

from models.attention import BACKENDS, KERNEL_HEAD_DIMS, load_kernels
from models.cache_reuse import apply_moves, common_run, reusable_runs, reused_end
from models.config import ModelConfig
from models.decode_step import DecodeStep, HostCopy
from models.errors import ContextTooLongError, MismatchError, ModelError, SettingError
from models.generation import GenerationConfig, GenerationResult, Timings
from models.healing import HealingConstraint, PrefixStripper, vocabulary_bytes
from models.llama import DenseKernels, Transformer, attention_inputs, attention_output_and_ffn, final_logits
from models.kv_cache import cache_dtype_name, exact_tokens_held, repair_start
from models.options import DEFAULT_MAX_CONTEXT, parse_kv_cache
from models.prompt_store import PromptStore, SavedPrompt
from models.infill import InfillSampler
from models.penalties import Penalties
from models.mirostat import Mirostat
from models.request_sampler import RequestSampler
from models.sampling import banned, bias_vector, make_generator, read_logprobs
from models.speculative import PromptLookup
from models.tokenizer import IncrementalDetokenizer, StopStringMatcher


def triton_installed() -> bool:
    """Whether Triton can be imported: it has no build for macOS, nor on PyPI for Windows, where decoding runs
    without its kernels (sdpa attention, nothing compiled: inductor writes GPU code in Triton). Asked without
    importing it, which on a CPU must wait for TRITON_INTERPRET."""
    return importlib.util.find_spec("triton") is not None


# Drafts verified per step when GenerationConfig.speculate is None, by device (bench/results/NOTES.md).
DEFAULT_SPECULATE = {"cpu": 8, "cuda": 8}
MAX_SPECULATE = 15     # a verification of 16 tokens: what an 8-bit cache's exact ring is sized for (MAX_STEP_TOKENS)
# Query rows one program of the decode kernel holds: kernels.plan.MAX_BLOCK_M (not imported here: importing
# kernels defines the Triton kernels, which on a CPU must wait for TRITON_INTERPRET; a test keeps the two equal).
# A verification step whose rows (query heads per KV head x tokens) fit in one tile reads K/V once. CodeLlama-34B
# (8 per KV head) at 9 tokens takes two tiles: its attention cost 1.60-1.64x a one-token step's on an H200
# (bench/results/h200-run5/decode/, h200-run6/decode/), so the default depth is capped at 7 drafts there.
TILE_ROWS = 64

# A prompt that differs from the cached one in a few trailing tokens (an editor typing a character) feeds them
# through graph replays of the decode step instead of an eager prefill: on an H200 a 1-2 token prefill of the
# CodeLlama-7B shape took 45-77 ms of the server's time to first token, the replayed steps 21-28 ms
# (bench/results/h200-run6/serve/). Each replay feeds the verification step's width of tokens (1 + drafts, its graph
# captured at warm-up; padded past the prompt's end, where the next step overwrites them) or, without speculation,
# one; at most GRAPHED_TAIL replays: beyond them the bucketed prefill is as quick (on an H200, bench/results/h200-run43/
# tail-width/: 7B 36 tokens 23 / 36 ms at 8k / 32k against the prefill's 40 / 46; 34B 4 replays tie it). Without
# graphs (a CPU) a step costs what a short prefill does: only one token.
GRAPHED_TAIL = 4
# A longer tail (a paste, a word the editor completed, an edit a line back) goes through at most WIDE_TAIL_REPLAYS
# replays of a step WIDE_TAIL tokens wide, its graph captured at warm-up (`warm_wide_tail`), instead of the
# bucketed prefill, whose ~1,200 eager launches make it host-bound at these lengths. On an H200 one replay costs
# about what one verification-wide replay does, two of those more (bench/results/h200-run44/wide-tail/: 7B at 8k
# 7.5-7.8 ms for 37-128 tokens, two 14.3 for 256, against the prefill's 33-41 ms; 34B at 32k 39-40 and 77 against
# 90-129), so with it the narrow step takes one replay's worth at most. Its queries are the decode kernel's rows as
# a verification's are, so only with the flash backend (one graph for every span) and an unquantized cache (an
# 8-bit cache's exact ring and kernels take at most models.kv_cache.MAX_STEP_TOKENS a step).
WIDE_TAIL = 128
WIDE_TAIL_REPLAYS = 2
SAVED_PROMPT_HEADROOM = 4 << 30   # GPU memory saved prompts leave free (prefill's activations, logits, graphs)
# Prefill spans on CUDA snap to multiples of this many tokens: the start down (re-prefilling up to 127 cached
# tokens), the end up (pad tokens after the prompt). Every new prefill length cost a first-call setup that nearly
# every request paid, prompts differing in length: cuDNN builds an attention plan per (new tokens, keys) shape, and
# kernels/append.py's append kernel was compiled per number of new tokens until that became a run-time argument.
# On an H200 a first 5.9k-token prefill at a new length took 370-566 ms against 197 ms (the compile 117-134 ms, the
# plan 50-73 ms). On buckets those shapes recur, and `warm_prefill` prepares the likely ones ahead of time
# (bench/results/h200-cold/). A start snapped to 0 also keeps a cold prompt on cuDNN's attention: with fewer
# queries than keys SDPA takes FlashAttention-2, twice as slow there.
# The pads come after every prompt token, so causal attention keeps them out of the prompt's logits and keys and
# values; theirs lie past the sequence's length, where decoding overwrites them before anything reads them.
# CODECOMPLETE_PREFILL_BUCKET=0 turns it off (and N sets another size).
PREFILL_BUCKET = {"cuda": 128}
# A GPU prefill of at least this many new tokens may be stopped between layers (`_QueuedLayers`); a shorter one
# is over in milliseconds, and its launches are its time on the critical path, so it is not slowed to be stoppable.
STOPPABLE_GPU_PREFILL = 1024


def _prefill_attention_inputs(x, norm_weight, eps, wqkv, cos, sin, n_heads, n_kv_heads, head_dim):
    """`models.llama.attention_inputs`, as a function of its own: its compiled code (any number of tokens) is cached
    apart from the decode step's (static shapes)."""
    return attention_inputs(x, norm_weight, eps, wqkv, cos, sin, n_heads, n_kv_heads, head_dim)


def _prefill_output_and_ffn(x, attn, wo, norm_weight, eps, w13, w2, ffn_dim):
    """`models.llama.attention_output_and_ffn`, likewise."""
    return attention_output_and_ffn(x, attn, wo, norm_weight, eps, w13, w2, ffn_dim)


def _any_length(compiled):
    """Call `compiled` with the token dimension of its (1, T, ...) tensors marked dynamic: one compilation serves
    every span length (T >= 2; one token compiles a variant of its own)."""
    def call(*args):
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.dim() == 3 and arg.shape[1] >= 2:
                torch._dynamo.mark_dynamic(arg, 1)
        return compiled(*args)
    return call


@functools.cache
def compiled_prefill_kernels() -> DenseKernels:
    """The dense parts of a prefill, compiled (at the first call) for any number of tokens."""
    compile = functools.partial(torch.compile, fullgraph=True)
    return DenseKernels(_any_length(compile(_prefill_attention_inputs)), _any_length(compile(_prefill_output_and_ffn)),
                        final_logits)


def prefill_bucket(device_type: str, config: ModelConfig) -> int:
    """The prefill span's granularity (PREFILL_BUCKET) for a device: $CODECOMPLETE_PREFILL_BUCKET when set (0:
    off). Never under dynamic rope scaling, whose rotations depend on the call's length, pads included."""
    if config.dynamic_rope:
        return 0
    setting = os.environ.get("CODECOMPLETE_PREFILL_BUCKET")
    if setting is None or not setting.strip():     # (empty: unset, as every CODECOMPLETE_* setting reads it)
        return PREFILL_BUCKET.get(device_type, 0)
    try:
        bucket = int(setting)
    except ValueError:
        bucket = -1
    if bucket < 0:
        raise SettingError(f"CODECOMPLETE_PREFILL_BUCKET={setting!r}: a number of tokens (0: off)")
    return bucket


def precision(dtype: str, matmul_dtype: str | None) -> str:
    """"float32", or "float32, bfloat16 weights" where the projections' weights are in another dtype."""
    return dtype if matmul_dtype in (None, "", dtype) else f"{dtype}, {matmul_dtype} weights"


def on_its_device(method):
    """An Engine method run with the engine's GPU as the thread's current CUDA device. Triton launches its kernels
    and CUDA graphs capture on the current device, and every new thread (the server's worker) starts on cuda:0,
    whatever --device said: an engine on cuda:1 would launch there with cuda:1's pointers."""
    @functools.wraps(method)
    def on_device(self, *args, **kwargs):
        with self.current_device():
            return method(self, *args, **kwargs)
    return on_device


def default_speculation(device_type: str, heads_per_kv_head: int) -> int:
    """Drafts per step when a request does not say: DEFAULT_SPECULATE for the device, capped so that a verification
    step's rows fit one kernel tile (TILE_ROWS). Whatever the weights: with int4 ones a GPU's verification of 8
    tokens costs 1.30-1.32x a one-token step (9 tokens: 1.35-1.50x; int8's 1.11-1.27x; bench/gpu/int4_verify.py on
    an H100, Run 51) since the several-row 4-bit GEMV dequantizes a wide tile for one dot; before that it cost
    several steps and int4 decoded without drafts."""
    return min(DEFAULT_SPECULATE.get(device_type, 0), max(1, TILE_ROWS // heads_per_kv_head - 1))


class Engine:
    """A model ready to generate; see ARCHITECTURE.md (models) for the contract."""

    def __init__(self, model: Transformer, tokenizer=None, *, name: str = "model", attention: str | None = None,
                 context_length: int | None = None, eos_token_ids: Sequence[int] = (), cuda_graphs: bool | None = None,
                 kv_cache: str | None = None):
        param = model.output.weight
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self._device = param.device
        self.device = self._device.type
        self.dtype = str(model.compute_dtype).removeprefix("torch.")     # activations and KV cache
        # the projections' weights: a dtype's name, or "int8", "int4" (whose packed nibbles are uint8)
        self.matmul_dtype = model.weights_kind or str(model.matmul_dtype).removeprefix("torch.")
        self.context_length = context_length or min(model.rope.max_len, DEFAULT_MAX_CONTEXT)
        self.model_max_positions = model.config.context_limit     # its training length (n_ctx_train)
        self.eos_token_ids = sorted(set(eos_token_ids) | set(model.config.eos_token_ids))
        # A step whose chain leaves nothing to draw (the model's output not a number mid-generation) takes this end of
        # text, which stops the generation (models.sampling.pick); None: no end token, the first index.
        self.end_token = self.eos_token_ids[0] if self.eos_token_ids else None
        self.load_s = 0.0
        self.checkpoint_format = ""   # "gguf", "safetensors" or "pytorch" as loaded (`load_model`); "": random weights
        self.load_warnings: list[str] = []     # one line each: what about the checkpoint may degrade its output
        # The running request's decode steps and speculation counts, for a live status line: its tokens so far are
        # 1 + decode_steps + accepted_tokens, once text came (a token that ends inside a character sends none).
        self.progress = Timings()
        # The running request's generated ids as they come (the list its result will hold): a stream reads there the
        # ids behind each text delta, as on_text is called (on this thread) after the row took its token.
        self.live_tokens: list[int] = []
        self.live_logprobs: list | None = None       # its TokenLogprobs, where the request asks for them
        self._quant = parse_kv_cache(kv_cache, model.compute_dtype)
        # Drafts per step when a request does not say (GenerationConfig.speculate None); 0 turns it off.
        self.speculate = default_speculation(self._device.type, model.config.n_heads // model.config.n_kv_heads)
        self._graphs_enabled = self._device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self._device.type == "cuda" and triton_installed():
            load_kernels()
        if self._graphs_enabled and os.environ.get("CODECOMPLETE_COMPILE", "1") != "0" and triton_installed():
            # Fuse the decode step's norms, RoPE and SwiGLU around the matmuls (compiled once, at the
            # first step; inductor caches it on disk for later starts). On an H100 this took CodeLlama-7B
            # at 4k context from 118 to ~150 tokens/s. CODECOMPLETE_COMPILE=0 turns it off.
            model.compile_dense()
        # Read token t while step t+1 runs: only pays where the device runs asynchronously.
        self._lookahead = self._device.type == "cuda"
        self.prefill_bucket = prefill_bucket(self._device.type, model.config)
        # Run prefill's dense parts compiled (`prefill_compilable` says where it can): a long-lived process's choice,
        # the server's, since the first prefill compiles them (then inductor's disk cache serves later starts).
        self.compile_prefill = False
        self._steps: dict[tuple[int, int], DecodeStep] = {}    # (batch, tokens per step) -> step
        self.tail_override: tuple[int, int] | None = None      # (replays, width) of a prompt's tail (tail_plan)
        self._cache_rows = 0
        self._cached_ids: list[int] = []       # the tokens whose K/V cache row 0 holds, in order
        # The first of them whose K/V cache reuse moved, or computed after moved ones (approximate: a request that
        # asks for no cache reuse reuses only the slots before it); None: all are what a prefill computes.
        self._approximate_from: int | None = None
        self.prompt_store: PromptStore | None = None   # earlier prompts' K/V, kept aside (keep_prompts)
        self.attention = ""
        flash_fits = model.config.head_dim in KERNEL_HEAD_DIMS      # else flash's first decode step would fail
        self.set_attention(attention or ("flash" if self._device.type == "cuda" and flash_fits and triton_installed()
                                         else "sdpa"))
        self._ensure_rows(1)

    # ---- configuration -----------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """The dtypes as said to a user: "bfloat16", or "float32, bfloat16 weights" where the projections' weights
        are narrower than the activations (models.options.parse_matmul_dtype)."""
        return precision(self.dtype, self.matmul_dtype)

    def current_device(self) -> torch.cuda.device:
        """A context in which the engine's GPU is the thread's current CUDA device (a no-op off CUDA)."""
        return torch.cuda.device(self._device if self._device.type == "cuda" else -1)

    @property
    def attention_is_slow(self) -> bool:
        """True when flash runs through the Triton interpreter (CPU): correct but very slow."""
        return self.attention == "flash" and self._device.type != "cuda"

    @property
    def prefill_compilable(self) -> bool:
        """Whether prefill's norms, RoPE, SwiGLU and residuals can run compiled here, once for any number of tokens
        (CodeLlama-7B, 7,880 tokens on an H200: 209 ms against 262 eager, its errors against float32 no larger:
        bench/results/h200-cold/run2-compiled/):
        where the decode step is compiled (CUDA graphs, CODECOMPLETE_COMPILE not 0), not on a tensor-parallel rank
        (whose dense parts carry collectives), and unless CODECOMPLETE_COMPILE_PREFILL=0."""
        return (self._graphs_enabled and os.environ.get("CODECOMPLETE_COMPILE", "1") != "0" and triton_installed()
                and os.environ.get("CODECOMPLETE_COMPILE_PREFILL", "1") != "0" and self.model.dense == DenseKernels())

    @property
    def use_cuda_graphs(self) -> bool:
        return self._graphs_enabled

    @use_cuda_graphs.setter
    def use_cuda_graphs(self, enabled: bool) -> None:
        if enabled and self._device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self._graphs_enabled = enabled
        self._steps.clear()

    def set_attention(self, name: str) -> None:
        """Switch the decode attention backend; the weights and the KV cache stay as they are."""
        if name not in BACKENDS:
            raise ValueError(f"unknown attention {name!r} (choose from {', '.join(BACKENDS)})")
        head_dim = self.model.config.head_dim
        if name in ("flash", "eager") and head_dim not in KERNEL_HEAD_DIMS:
            raise MismatchError(f"{name} attention takes head dims {KERNEL_HEAD_DIMS[0]}..{KERNEL_HEAD_DIMS[-1]}, "
                                f"and {self.name}'s is {head_dim}: use sdpa")
        if name == "flash" and not triton_installed():
            raise ModelError("flash attention runs Triton kernels, and Triton is not installed (it has no build for "
                             "this platform): use sdpa")
        if name == "flash" and self._device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            # Off the GPU, Triton kernels run only in its interpreter, which must be chosen before Triton is
            # imported (its own helpers, tl.cdiv and the like, are jitted at import); importing torch's compiler
            # imports Triton, so it is too late here.
            raise ModelError("flash attention on the CPU needs TRITON_INTERPRET=1 set before Triton is imported "
                             "(the codecomplete command sets it)")
        self.attention = name
        self._steps.clear()        # captured graphs have the old backend baked in

    @property
    def kv_cache_dtype(self) -> str:
        """"fp8", "int8" or the model dtype's name ("bfloat16", "float32", "float16")."""
        return cache_dtype_name(self._quant, self.model.compute_dtype)

    def set_kv_cache(self, kv_cache: str | None) -> None:
        """Switch the KV cache between the model dtype (None), "fp8" and "int8"; the cache is reallocated empty."""
        quant = parse_kv_cache(kv_cache, self.model.compute_dtype)
        if quant != self._quant:
            self._quant = quant
            rows, self._cache_rows = self._cache_rows, 0
            self._ensure_rows(max(rows, 1))

    def release_graphs(self) -> None:
        """Destroy the captured decode graphs now (the next step captures again), even where a traceback
        still holds them. Before a tensor-parallel group goes: NCCL (2.26 on) waits, in destroying or
        aborting a communicator, until every CUDA graph that captured one of its collectives is destroyed."""
        for state in self._steps.values():
            for graph, _ in state.graphs.values():
                graph.reset()
            state.graphs.clear()
        self._steps.clear()

    def release_memory(self) -> None:
        """Hand the KV cache and the captured decode graphs back to the device (before loading another model
        beside this one); the next generation allocates them again."""
        self.release_graphs()
        self.model.free_caches()
        self._cache_rows = 0
        self.clear_prefix_cache()

    def clear_prefix_cache(self) -> None:
        """Forget which tokens the KV cache holds, and every saved prompt: the next request prefills its whole
        prompt."""
        self._cached_ids = []
        if self.prompt_store is not None:
            self.prompt_store.saved.clear()

    def keep_prompts(self, limit_mib: int) -> None:
        """Keep earlier prompts' K/V, up to `limit_mib` MiB (-1: no limit, 0: none), for requests that share little
        with the last one: llama.cpp's prompt cache (`--cache-ram`, models/prompt_store.py); in host memory on a CPU,
        in the GPU's own memory on a GPU."""
        if limit_mib < -1:
            raise ValueError(f"the prompt cache's limit must be -1 (none), 0 (off) or a number of MiB, got {limit_mib}")
        limit = None if limit_mib < 0 else limit_mib << 20
        if self._device.type == "cuda" and limit_mib:
            # Saved prompts stay in the GPU's memory (models/prompt_store.py: why): at most what it has free now
            # beside the headroom a prefill needs, in whole GiB.
            room = max(0, torch.cuda.mem_get_info(self._device)[0] - SAVED_PROMPT_HEADROOM) >> 30 << 30
            collectives = self.model.rank_collectives
            if collectives is not None:
                # The ranks of a tensor-parallel model each decide alone which prompts to keep: one limit for all,
                # the least room (whole GiB still differ where a GPU is a few MiB fuller), or they would keep other
                # prompts, restore on one rank only, and prefill other spans in lockstep.
                gib = torch.tensor([[room >> 30]], dtype=torch.float32, device=self.model.norm.weight.device)
                room = int(collectives.gather_logits(gib).min().item()) << 30              # (1, 1) -> (1, world)
            limit = room if limit is None else min(limit, room)
        self.prompt_store = None if limit_mib == 0 else PromptStore(limit)

    def _ensure_rows(self, batch: int) -> None:
        """A KV cache with at least `batch` rows of context_length tokens."""
        if self._cache_rows < batch:
            self._steps.clear()
            self.clear_prefix_cache()       # (saved prompts too: on a GPU their memory may be what the rows need)
            self._cache_rows = 0
            self.model.setup_caches(batch, self.context_length, self.name, quant=self._quant)
            self._cache_rows = batch

    def _decode_step(self, batch: int, width: int = 1) -> DecodeStep:
        """The decode step for `batch` sequences of `width` tokens each (1, or 1 + drafts to verify)."""
        if (batch, width) not in self._steps:
            self._steps[batch, width] = DecodeStep(self.model, batch, width, self.attention, self._device,
                                                   self._graphs_enabled, self.context_length)
        return self._steps[batch, width]

    def _speculation_depth(self, config: GenerationConfig, batch: int) -> int:
        """Drafts per step for this request: 0 (plain decoding) for a batch, else the config's or the default; the
        default with graphs only once the verifying step is captured (`warm_speculation`: a long-lived process, the
        server or the REPL, captures it at its start). Its first capture inside an answer cost 2.2-7.1 s on an H200
        (Run 34), more than speculation saves a one-shot answer (a completion decodes in ~0.2 s)."""
        k = self.speculate if config.speculate is None else config.speculate
        if not 0 <= k <= MAX_SPECULATE:
            raise ValueError(f"speculate must be 0..{MAX_SPECULATE} draft tokens per step, got {k}")
        one_a_step = config.logprobs is not None or config.mirostat     # (mirostat's mu moves with each token)
        if config.speculate is None and k and self._graphs_enabled and not self._captured(1 + k):
            return 0
        return k if batch == 1 and not one_a_step else 0

    # ---- generation --------------------------------------------------------------------------

    @on_its_device
    def generate(self, prompt_ids: Sequence[int], config: GenerationConfig = GenerationConfig(),
                 on_text: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> GenerationResult:
        """Generate from one prompt, streaming text deltas to on_text; reuses the cached prefix of the last request.
        `should_stop` is asked between tokens, and between the prefill's layers too (on a GPU only in a long
        prefill: `_prefill_poll`): True ends the request ("cancelled", the text so far)."""
        return self._generate([list(prompt_ids)], config, on_text, should_stop, reuse=True)[0]

    @on_its_device
    def generate_batch(self, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig(),
                       should_stop: Callable[[], bool] | None = None) -> list[GenerationResult]:
        """Generate from several prompts at once (any lengths), one result each, in order."""
        return self._generate([list(p) for p in prompts], config, None, should_stop, reuse=False)

    @torch.no_grad()
    def _generate(self, prompts, config, on_text, should_stop, reuse) -> list[GenerationResult]:
        t_call = perf_counter()
        self._check_prompts(prompts)
        B, cap = len(prompts), self.context_length
        depth = self._speculation_depth(config, B)
        rows = [_Row(self.tokenizer, p, config, cap - len(p) + 1, on_text) for p in prompts]
        self.live_tokens = rows[0].token_ids
        self.live_logprobs = rows[0].logprobs       # (None unless asked for)
        if config.max_new_tokens <= 0:
            return [row.result(len(p), 0, Timings(load_s=self.load_s)) for row, p in zip(rows, prompts)]
        self._ensure_rows(B)
        cached, self._cached_ids = self._cached_ids, []   # unknown until this request ends cleanly
        restored = 0
        if (reuse and B == 1 and self.prompt_store is not None and not self.model.config.dynamic_rope
                and PromptStore.wants_switch(cached, prompts[0], self._approximate_from, not config.cache_reuse)):
            cached, restored = self._switch_prompt(cached, prompts[0], exact_only=not config.cache_reuse)

        # Prefill: each prompt into its own cache row, from the first token the cache does not hold.
        t_prefill = perf_counter()
        reused = [self._reusable_prefix(cached, prompts[0]) if reuse else 0] + [0] * (B - 1)
        exact = len(cached) if self._approximate_from is None else self._approximate_from
        if not config.cache_reuse:      # K/V moved by an earlier request, or computed after them, only where asked
            reused[0] = min(reused[0], exact)
        prefix = reused[0]     # (what cache reuse moves into place lies after it, each run right after the last)
        if reuse and config.cache_reuse and not self.model.config.dynamic_rope:
            reused[0] = self._move_reusable_runs(cached, prompts[0], prefix, config.cache_reuse)
        tail = self._tail_width(reused[0], len(prompts[0])) if B == 1 else None     # None: a prefill
        if tail is None:
            reused = [self.prefill_span(r, len(p))[0] for p, r in zip(prompts, reused)]   # bucketed starts
        start = self._with_exact_window(prompts[0], reused[0])
        if start != reused[0]:          # 0: the whole prompt prefilled
            reused[0], tail = start, self._tail_width(0, len(prompts[0])) if B == 1 else None
        # Past min(exact, prefix) the row's K/V are moved ones, or were computed after them, unless the prefill
        # rewrites them all (its start is at or before that slot); also what a prefill stopped part way leaves.
        self._approximate_from = None if reused[0] <= min(exact, prefix) else min(exact, prefix)
        moved = max(0, reused[0] - prefix)     # (the runs lie right after the prefix; a bucketed start cut into them)
        if tail is not None:
            logits = self._feed_tail(prompts[0], reused[0], tail)                        # (1, V)
        else:
            logits = []
            for b, (p, r) in enumerate(zip(prompts, reused)):
                poll = self._prefill_poll(should_stop, len(p) - r)
                # (exact_checked: row 0's window before r, by _with_exact_window; the other rows start at 0)
                logits.append(self._prefill(p, r, b, poll, b == 0))                             # None: stopped
                if logits[-1] is None:
                    return self._cancelled_in_prefill(prompts, rows, reused, t_prefill, moved, restored)
            logits = torch.cat(logits)                                                  # (B, V)
        if not bool(torch.isfinite(logits).all()):    # NaN or inf weights: the "text" would be token 0 over and over
            raise ModelError(f"{self.name}: the model's output is not a number (NaN or inf in its weights?)")
        sampler = self._sampler(config, prompts, logits)
        stop_ids = set(self.eos_token_ids) | set(config.stop_token_ids)
        tokens, scores = sampler.choose(logits)                                          # (B,), table or None
        if depth:
            loop = self._decode_speculative(prompts[0], rows[0], tokens, sampler, stop_ids, should_stop, depth)
        else:
            loop = self._decode_plain(prompts, rows, tokens, sampler, stop_ids, should_stop, scores)
        t_end = perf_counter()
        self._cached_ids = loop.fed[:cap - 1]   # a finished row's writes clamp at slot cap - 1

        prefilled = sum(len(p) - r for p, r in zip(prompts, reused))
        prefill_s = loop.t_first - t_prefill
        decode_s = t_end - loop.t_first
        timings = Timings(load_s=self.load_s, prefill_s=prefill_s, ttft_ms=1000 * (loop.t_first - t_call),
                          decode_s=decode_s, decode_tokens_per_s=loop.decoded / decode_s if decode_s > 0 else 0.0,
                          prefill_tokens_per_s=prefilled / prefill_s if prefill_s > 0 else 0.0,
                          drafted_tokens=loop.drafted, accepted_tokens=loop.accepted, decode_steps=loop.steps,
                          verify_steps=loop.verify_steps, moved_tokens=moved, restored_tokens=restored)
        return [row.result(len(p), r, timings) for row, p, r in zip(rows, prompts, reused)]

    def _cancelled_in_prefill(self, prompts, rows, reused, t_prefill: float, moved: int,
                              restored: int) -> list[GenerationResult]:
        """Results without tokens for a request stopped during its prefill. Cache row 0 still holds the prefix the
        prefill started from (its span's K/V were written in some layers only, so nothing past it counts), `moved`
        of them moved there by cache reuse."""
        self._cached_ids = prompts[0][:reused[0]]
        for row in rows:
            row.cancel()
        timings = Timings(load_s=self.load_s, prefill_s=perf_counter() - t_prefill, moved_tokens=moved,
                          restored_tokens=restored)
        return [row.result(len(p), r, timings) for row, p, r in zip(rows, prompts, reused)]

    def _prefill_poll(self, should_stop, new_tokens: int):
        """What the prefill asks between layers: on a CPU `should_stop` itself. A GPU queues all the layers in
        milliseconds and runs them for up to seconds, so there a bare poll would stop nothing: a long prefill keeps
        only a few layers queued (`_QueuedLayers`), a short one is not polled."""
        if should_stop is None or self._device.type != "cuda":
            return should_stop
        return _QueuedLayers(should_stop) if new_tokens >= STOPPABLE_GPU_PREFILL else None

    def prefill_span(self, start: int, length: int) -> tuple[int, int]:
        """The positions [first, end) a prefill of prompt[start:length] runs over: with `prefill_bucket` set,
        `start` rounded down and `length` up to multiples of it (the end within the cache); else as given."""
        bucket = self.prefill_bucket
        if not bucket:
            return start, length
        return start // bucket * bucket, min(-(-length // bucket) * bucket, self.context_length)

    def _prefill(self, prompt: list[int], start: int, row: int, should_stop=None,
                 exact_checked: bool = False) -> torch.Tensor | None:
        """The logits (1, V) after `prompt`, whose first `start` tokens cache row `row` holds: a prefill of the rest,
        padded at the end to the bucketed span (pad keys and values land past the prompt, never read).
        None if `should_stop` said so between two layers. `exact_checked`: `Transformer.prefill`'s."""
        end = self.prefill_span(start, len(prompt))[1]
        ids = prompt[start:] + [prompt[-1]] * (end - len(prompt))
        tokens = torch.tensor([ids], device=self._device)                            # (1, end - start)
        dense = compiled_prefill_kernels() if self.compile_prefill else None
        return self.model.prefill(tokens, start, row, last=len(prompt) - 1 - start, dense=dense,
                                  should_stop=should_stop, exact_checked=exact_checked)

    @torch.no_grad()
    @on_its_device
    def warm_prefill(self, lengths: Sequence[int]) -> list[int]:
        """Run one prefill of each bucketed span that prompts of these lengths take from an empty cache, so that
        the first real prompt of such a length finds its shapes' setup done (the append kernel compiled, the
        attention plan built: bench/results/h200-cold/). Forgets what the cache held. Returns the spans' ends:
        none without buckets, where no length recurs often enough to prepare for."""
        if not self.prefill_bucket:
            return []
        ends = sorted({self.prefill_span(0, n)[1] for n in lengths if 1 <= n <= self.context_length})
        self._ensure_rows(1)
        self._cached_ids = []
        vocab = self.model.config.vocab_size
        for end in ends:
            ids = [(7 * i + 3) % vocab for i in range(end)]       # any valid tokens: only the shapes matter
            self._prefill(ids, 0, 0)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return ends

    def tail_plan(self) -> tuple[tuple[int, int], ...]:
        """The ways a prompt's new tokens may reach the cache without a prefill, narrowest first: (replays, width),
        at most `replays` decode steps of `width` tokens each; `tail_override` alone where set (a benchmark's arms,
        a CPU test of the graphs' path)."""
        if self.tail_override is not None:
            return (self.tail_override,)
        if not self._graphs_enabled:
            return ((1, 1),)
        # Only steps already captured: a first capture mid-request costs seconds (the verification step's, 11.7 s
        # for a 22-token chat follow-up of the CodeLlama-7B shape on an H100 in a process that had not warmed it,
        # bench/results/NOTES.md), where a prefill takes tens of ms. The server captures both at its warm-up
        # (`warm_speculation`, `warm_wide_tail`); elsewhere a one-token step, captured by the first answer, feeds
        # the few tokens of a keystroke.
        narrow = 1 + self.speculate if self.speculate and self._captured(1 + self.speculate) else 1
        if self._captured(WIDE_TAIL) and self._wide_tail_applies():
            # (one wide replay costs what one narrow one does, two narrow ones more: Run 44)
            return (1, narrow), (WIDE_TAIL_REPLAYS, WIDE_TAIL)
        return ((GRAPHED_TAIL, narrow),)

    def _captured(self, width: int) -> bool:
        """Whether the one-sequence step of `width` tokens has a graph captured."""
        step = self._steps.get((1, width))
        return step is not None and bool(step.graphs)

    def _wide_tail_applies(self) -> bool:
        """Whether a WIDE_TAIL step may feed tails here (WIDE_TAIL's comment says why only so)."""
        return (self._graphs_enabled and self.attention == "flash" and self._quant is None
                and self.context_length >= 2 * WIDE_TAIL)

    def _tail_width(self, start: int, end: int) -> int | None:
        """The width of the decode steps that feed prompt[start:end] (`tail_plan`), or None: a prefill does."""
        # (one token goes alone: a one-token step is ~1 ms quicker than a padded 9-wide one, CodeLlama-7B at 8k on
        # an H200, 5.8 against 6.7 ms; two already take 10.4 ms one at a time: bench/results/h200-run43/tail-width/)
        new_tokens = end - start
        for replays, width in self.tail_plan():
            if new_tokens <= replays * width:
                if new_tokens == 1 or width == 1:
                    return 1
                # A narrow step near the cache's end feeds the rest one at a time (`_feed_tail`); a wide one
                # would, a hundred of them: there the prefill does
                if width <= 1 + MAX_SPECULATE or start + -(-new_tokens // width) * width <= self.context_length:
                    return width
        return None

    def _feed_tail(self, prompt: list[int], start: int, width: int) -> torch.Tensor:
        """The logits (1, V) after prompt[start:], fed `width` tokens a step (`_tail_width`) through the decode step,
        graph-replayed when graphs are on (the cache holds prompt[:start]): what a prefill of these few tokens
        computes, without its eager launches. A last step with fewer tokens is padded with copies of its last one,
        whose K/V lie past the prompt (as rejected drafts' do); near the cache's end the rest go one at a time."""
        position = start
        while position < len(prompt):
            if position + width > self.context_length:
                width = 1
            chunk = prompt[position:position + width]
            state = self._decode_step(1, width)
            state.tokens.copy_(torch.tensor([chunk + chunk[-1:] * (width - len(chunk))]))   # (1, width)
            state.input_pos.fill_(position)
            logits = state.run(kv_len=position + width, exact=True)             # (1, V) or (1, width, V)
            position += len(chunk)
        # (a view of the graph's output: copied, the next replay of the same step overwrites it)
        return logits.view(width, -1)[len(chunk) - 1:len(chunk)].clone()       # (1, V)

    def _decode_plain(self, prompts, rows, tokens, sampler: RequestSampler, stop_ids, should_stop,
                      scores: torch.Tensor | None = None) -> _Loop:
        """One token per sequence per step; on CUDA, step t+1 is queued before token t is read. `scores`: the first
        tokens' `logprob_table` where the request asks for logprobs (each step's comes to the host with its tokens)."""
        state = self._decode_step(len(prompts))
        positions = [len(p) for p in prompts]          # host mirror of state.input_pos
        state.input_pos.copy_(torch.tensor(positions))
        steps = max(row.budget for row in rows)
        fed = list(prompts[0])                          # row 0's tokens whose K/V are in the cache
        self.progress = live = Timings()
        sums = None                     # the first tokens' logits were checked after the prefill
        for step in range(steps):
            host = HostCopy(tokens)
            host_scores = HostCopy(scores) if scores is not None else None
            # With lookahead, step t+1 is queued before waiting for token t (wasted only if t is the last);
            # not while healing, nor with penalties: their next choice depends on token t.
            queued = self._lookahead and step + 1 < steps and not sampler.waits_for_tokens
            if queued:
                next_tokens, next_scores, next_sums = self._step(state, tokens, positions, sampler)
            token_list = host.wait()
            entries = ([read_logprobs(r, sampler.config.logprobs) for r in host_scores.wait()] if host_scores
                       else [None] * len(rows))
            live.decode_steps = step                    # before the tokens' text is sent
            if step == 0:
                t_first = perf_counter()
            sampler.took(token_list)
            for b, (row, token, entry) in enumerate(zip(rows, token_list, entries)):
                was_open = not row.finish_reason
                row.accept(token, stop_ids, entry)
                if was_open and row.finish_reason and token == self.end_token and sums is not None:
                    row.not_a_number = not math.isfinite(sums[b].item())    # (a sync, at the row's end only)
            live.healing_tokens = rows[0].healing_tokens    # before the next text: healing's tokens make none
            if queued:
                fed.append(token_list[0])
            if all(row.finish_reason for row in rows):      # always so at the last step: budgets <= steps
                break
            if should_stop is not None and should_stop():
                for row in rows:
                    row.cancel()
                break
            if not queued:
                next_tokens, next_scores, next_sums = self._step(state, tokens, positions, sampler)
                fed.append(token_list[0])
            tokens, scores, sums = next_tokens, next_scores, next_sums
        # Tokens after the first: one decode step each.
        return _Loop(t_first=t_first, fed=fed, decoded=step, steps=step)

    def _step(self, state: DecodeStep, tokens, positions: list[int], sampler: RequestSampler
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Feed tokens (B,) at the current positions, advance them, and sample the next tokens (on the device); with
        them their `logprob_table` where the request asks for logprobs, else None, and the sums of the logits (B,),
        not finite where a row's held a NaN or inf (one reduction, read only where a row takes the end of text)."""
        state.tokens.copy_(tokens[:, None])                                         # (B, 1)
        logits = state.run(kv_len=max(positions) + 1, exact=len(set(positions)) == 1)
        last = self.context_length - 1
        state.input_pos.add_(1).clamp_(max=last)
        positions[:] = [min(p + 1, last) for p in positions]
        return *sampler.choose(logits), logits.sum(-1)

    def _sampler(self, config: GenerationConfig, prompts: list[list[int]], logits: torch.Tensor) -> RequestSampler:
        """The request's sampler, built once its first logits (B, V) are in: its generator, healing, penalties,
        infill sampler and logit bias (a vector on the device, added each step), or mirostat in place of the chain."""
        mirostat = Mirostat.of(config, len(prompts), logits)      # in place of the chain (llama.cpp's)
        return RequestSampler(
            config,
            None if config.greedy else make_generator(self._device, config.seed),
            healing=self._healing(config, len(prompts)),
            penalties=None if mirostat else Penalties.of(config, prompts, self.context_length),   # where the chain
            infill=None if mirostat else self._infill(config),                                   # has them
            bias=bias_vector(config, logits.shape[-1], logits.device),
            end=self.end_token, mirostat=mirostat)

    def _healing(self, config: GenerationConfig, batch: int) -> HealingConstraint | None:
        """The token-healing constraint on the first sampled tokens, if the request has a required prefix."""
        if not config.required_prefix:
            return None
        if self.tokenizer is None:
            raise ModelError(f"{self.name}: a required prefix needs a tokenizer")
        table = vocabulary_bytes(self.tokenizer)
        bans = banned(config.logit_bias)        # (the caller heals only what its bans leave writable: Session)
        if not table.can_write(config.required_prefix.encode(), bans):    # (a vocabulary without byte pieces)
            raise ModelError(f"{self.name}: the required prefix {config.required_prefix!r} cannot be written with "
                             f"this vocabulary's tokens{' (those logit_bias leaves)' if bans else ''}")
        return HealingConstraint(table, config.required_prefix, batch, bans)

    def _infill(self, config: GenerationConfig) -> InfillSampler | None:
        """llama.cpp's infill sampler, where the request's chain has it: its end-of-generation tokens are the stop
        ids, and its one end token the prompt format's end of text (CodeLlama's <EOT>), else EOS."""
        if "infill" not in config.sampler_order:
            return None
        if self.tokenizer is None:
            raise ModelError(f"{self.name}: the infill sampler needs a tokenizer")
        ends = [*config.stop_token_ids, *self.eos_token_ids]
        if not ends:
            raise ModelError(f"{self.name}: the infill sampler needs an end-of-generation token")
        return InfillSampler(vocabulary_bytes(self.tokenizer), ends, ends[0])

    def _decode_speculative(self, prompt, row, tokens, sampler: RequestSampler, stop_ids, should_stop,
                            depth: int) -> _Loop:
        """One sequence: each step feeds the pending token plus up to `depth` drafts looked up in the text so
        far, and emits the accepted drafts plus the model's own next token (models/speculative.py).
        While token healing still constrains the next token, no drafts: one token a step from the restricted
        logits, as plain decoding does (a draft's verification would sample unconstrained). Penalties stay exact
        under verification: each position's logits are penalized for the window plain decoding would have had there
        (Penalties.apply), so the drafts are checked against the penalized choice."""
        drafter = PromptLookup(prompt)                  # built on the host while the device prefills
        pending = HostCopy(tokens).wait()[0]           # the newest token, not yet fed
        t_first = perf_counter()
        self.progress = live = Timings()               # before the first token's text is sent
        sampler.took([pending])
        row.accept(pending, stop_ids)
        live.healing_tokens = row.healing_tokens
        drafter.extend([pending])
        pos, fed, last = len(prompt), list(prompt), self.context_length - 1
        steps = verify_steps = drafted = accepted = 0
        while not row.finish_reason:
            if should_stop is not None and should_stop():
                row.cancel()
                break
            room = min(depth, row.left - 1, last - pos)
            drafts = drafter.draft(room) if room > 0 and not sampler.constrained else []
            if drafts and self._graphs_enabled:
                # One captured graph per width: verify `depth` drafts, padding a short draft (it is only checked).
                drafts = drafts + drafts[-1:] * (depth - len(drafts)) if pos + depth <= last else []
            state = self._decode_step(1, 1 + len(drafts))
            state.tokens.copy_(torch.tensor([[pending] + drafts]))                  # (1, 1 + drafts)
            state.input_pos.fill_(pos)
            logits = state.run(kv_len=pos + 1 + len(drafts), exact=True)        # (1, V) or (1, T, V)
            logits = logits.view(1 + len(drafts), -1)                                # (1 + drafts, V)
            emitted = sampler.verify(logits, drafts)
            if should_stop is not None and should_stop():
                # Asked while the step ran (Ctrl-C, a departed client, a newer request): none of the up to depth + 1
                # tokens it emitted are sent. Their K/V lie past the cached length, as a plain lookahead step's do.
                row.cancel()
                break
            steps, verify_steps, drafted = steps + 1, verify_steps + bool(drafts), drafted + len(drafts)
            live.decode_steps, live.drafted_tokens = steps, drafted
            fed += [pending] + emitted[:-1]             # the K/V kept: rejected drafts lie past the length
            pos += len(emitted)
            pending = emitted[-1]
            for i, token in enumerate(emitted):
                # Counted as the row takes each one, before its text is sent: the live count follows the text (not
                # the whole step at its first token), and the tokens after a stop inside the step are not counted.
                live.accepted_tokens = accepted + i
                row.accept(token, stop_ids)
                if row.finish_reason:
                    row.not_a_number = token == self.end_token and not bool(torch.isfinite(logits[i]).all())
                    break
            accepted, live.healing_tokens = live.accepted_tokens, row.healing_tokens
            drafter.extend(emitted)
        return _Loop(t_first=t_first, fed=fed, decoded=len(row.token_ids) - 1, steps=steps,
                     verify_steps=verify_steps, drafted=drafted, accepted=accepted)

    def check_prompt(self, prompt_ids: Sequence[int]) -> None:
        """Raise what `generate` would raise for this prompt (empty, longer than the KV cache, an id outside the
        vocabulary) before any work: a server can then answer 400 before it starts a stream."""
        self._check_prompts([list(prompt_ids)])

    def _check_prompts(self, prompts: list[list[int]]) -> None:
        if not prompts or any(not p for p in prompts):
            raise ModelError(f"{self.name}: empty prompt (nothing to continue from)")
        vocab = self.model.config.vocab_size
        for p in prompts:
            if len(p) > self.context_length:
                raise ContextTooLongError(
                    f"{self.name}: a prompt of {len(p)} tokens does not fit the context of {self.context_length} "
                    f"tokens (the KV cache; the model was trained on {self.model_max_positions})")
            if min(p) < 0 or max(p) >= vocab:
                raise ModelError(f"{self.name}: token id {max(p) if max(p) >= vocab else min(p)} "
                                 f"is outside the vocabulary (0..{vocab - 1})")

    def _reusable_prefix(self, cached: list[int], prompt: list[int]) -> int:
        """How many leading prompt tokens already sit in cache row 0 (always leaving one to prefill)."""
        if self.model.config.dynamic_rope:
            return 0   # cached keys were rotated with the frequencies of their own call's length
        return common_run(cached, 0, prompt, 0, len(prompt) - 1)

    def _with_exact_window(self, prompt: list[int], start: int) -> int:
        """Where row 0's prefill of `prompt` may start so that every query reads its exact sink and window tokens
        (an fp8 cache, models/kv_cache.py). `start` where the row still holds the copies of the window before it
        (a cut of at most EXACT_RING - EXACT_WINDOW = 480 tokens, a restored prompt: no repair). Where the ring
        overwrote them (a longer cut) or a cache-reuse move dropped them, they are computed again by a repair
        prefill of the `repair_span` tokens before `start` (which the row holds), unless that reaches back to the
        sink: then 0, the whole prompt prefilled.
        The request's one check of them (one host sync): its prefills are told it was made (`exact_checked`)."""
        if start == 0:
            return start
        caches = [layer.attention.kv_cache for layer in self.model.layers]
        sink, window = exact_tokens_held(caches, 0, start)
        if window:
            return start
        first = repair_start(start, len(caches))
        if first == 0 or not sink:
            return 0
        tokens = torch.tensor([prompt[first:start]], device=self._device)                    # (1, repair_span)
        self.model.prefill(tokens, first, 0, repair=True, exact_checked=True)
        return start

    def _switch_prompt(self, cached: list[int], prompt: list[int], exact_only: bool = False) -> tuple[list[int], int]:
        """llama.cpp's prompt cache (models/prompt_store.py): cache row 0's prompt `cached` saved (on a GPU, unless
        it and the prompt taken back are past the limit), and the saved prompt that serves `prompt` better, if one
        does, copied back into the row; `exact_only`: a request without cache reuse, served only by exact K/V.
        Returns the tokens the row then holds, and how many of them were copied back."""
        store = self.prompt_store
        caches = [layer.attention.kv_cache for layer in self.model.layers]
        nbytes = sum(len(cached) * cache.bytes_per_token() + cache.exact_bytes(len(cached)) for cache in caches)
        on_gpu = self._device.type == "cuda"
        approximate_from = self._approximate_from
        # Held whole by any saved prompt, the one taken back too, as llama.cpp checks:
        held_whole = store.holds(cached, approximate_from)
        # Taken back before the save, which may drop the oldest saved prompts: llama.cpp drops them only after
        # the load (the cached prompt itself never serves the request better than it does, saved or not).
        best = store.take_best(cached, prompt, approximate_from, exact_only)
        held = best.nbytes if on_gpu and best is not None else 0   # (on a GPU alive beside the copy: the peak)
        if not held_whole and (not on_gpu or nbytes + held <= store.limit_bytes):
            place = self._saved_prompt_place()
            store.add(cached, nbytes,
                      lambda: SavedPrompt(cached, [cache.saved(0, len(cached), place) for cache in caches],
                                          approximate_from),
                      held, approximate_from)
        if best is None:
            return cached, 0
        for layer, tensors in zip(self.model.layers, best.layers):
            layer.attention.kv_cache.restore(0, tensors)
        self._approximate_from = best.approximate_from
        return best.tokens, len(best.tokens)

    def _saved_prompt_place(self) -> torch.device:
        """Where saved prompts are kept: the engine's device (host memory on a CPU, as llama.cpp keeps them; a GPU's
        own memory on a GPU, models/prompt_store.py says why)."""
        return self._device

    def _move_reusable_runs(self, cached: list[int], prompt: list[int], start: int, min_run: int) -> int:
        """llama.cpp's cache reuse in cache row 0 (models/cache_reuse.py): after the prefix `start`, the runs of at
        least `min_run` cached tokens that the prompt goes on with, moved into place. Returns how many leading
        prompt tokens the row then holds."""
        moves = reusable_runs(cached, prompt, start, min_run)
        apply_moves(self.model, 0, moves)
        return reused_end(start, moves)

    @on_its_device
    def warm_speculation(self) -> bool:
        """Build the step that verifies drafts (compiled, its graph captured) before a request needs it: the first
        request whose text repeats its prompt (a newline and an indentation it already holds) otherwise paid for
        that inside its decode, 2.2-7.1 s on an H200 (bench/results/NOTES.md, Run 34). Only with graphs, where every
        verification has the one width, 1 + depth (without them a step costs no setup). Returns whether it did."""
        if not (self.speculate and self._graphs_enabled):
            return False
        self._warm_step(1 + self.speculate)
        return True

    @on_its_device
    def warm_wide_tail(self) -> bool:
        """Capture the step that feeds a long tail (WIDE_TAIL tokens; compiled, its graph captured) before a
        request needs it: until then `tail_plan` leaves such tails to the prefill, since a first capture costs
        seconds. Only where it applies (flash, an unquantized cache, graphs). Returns whether it did."""
        if not self._wide_tail_applies():
            return False
        self._warm_step(WIDE_TAIL)
        return True

    def _warm_step(self, width: int) -> None:
        """Run the decode step `width` tokens wide once, which compiles and captures it. It writes the K/V of the
        context's last `width` slots, so a cached prompt that ends before them stays cached: the REPL builds these
        steps after a first answer, and the next question reads the conversation again (10.8k tokens, 0.6 s on an
        H100, where reusing it takes 0.25 s; Run 49). Flash's graph reads each row's length, one graph for every
        length; sdpa's and eager's steps are built for the span of the whole context."""
        cached = self._cached_ids
        self.make_decode_step(1, self.context_length, width)()
        if len(cached) <= self.context_length - width:
            self._cached_ids = cached

    # ---- benchmarking ------------------------------------------------------------------------

    @on_its_device
    def make_decode_step(self, batch_size: int = 1, context_tokens: int | None = None,
                         width: int = 1) -> Callable[[], torch.Tensor]:
        """A zero-argument callable running one decode step with `context_tokens` tokens in every row's cache.

        For timing what one step costs (the cache's contents do not change the time): each call writes
        the last `width` slots of the context (1, or 1 + drafts to verify) and attends over context_tokens
        keys with the current backend, as a CUDA-graph replay when graphs are on. Returns the logits
        (B, V), or (B, width, V), without synchronising.
        """
        context_tokens = context_tokens or self.context_length
        if not width <= context_tokens <= self.context_length:
            raise ContextTooLongError(f"{self.name}: {context_tokens} tokens do not fit the context of {self.context_length}")
        self._ensure_rows(batch_size)
        self._cached_ids = []
        state = self._decode_step(batch_size, width)
        state.tokens.zero_()
        state.input_pos.fill_(context_tokens - width)

        @torch.no_grad()
        def step() -> torch.Tensor:
            with self.current_device():         # (its first call captures the graph)
                return state.run(kv_len=context_tokens, exact=True)
        return step


class _Loop(NamedTuple):
    """What a decode loop reports back to `_generate`."""
    t_first: float           # when the first token reached the host
    fed: list[int]           # row 0's tokens whose K/V the cache now holds, in order
    decoded: int             # tokens after the first
    steps: int               # decode steps run
    verify_steps: int = 0    # steps that verified drafts
    drafted: int = 0         # draft tokens verified
    accepted: int = 0        # of those, accepted


class _QueuedLayers:
    """A GPU prefill's poll between layers that keeps at most `depth` layers queued ahead of the GPU: before
    queueing the next layer it waits until the layer `depth` back has run, then asks `should_stop`. A stop then
    takes effect within about `depth` layers, not after the whole prefill. The GPU does not wait for the host as
    long as queueing a layer (~0.1 ms of launches) is quicker than running one, which a long prefill's layer is.
    Under tensor parallelism `should_stop` is a broadcast every rank makes, once per layer on each."""

    def __init__(self, should_stop: Callable[[], bool], depth: int = 2, event=torch.cuda.Event):
        self.should_stop, self.depth, self.event = should_stop, depth, event
        self.queued = []                    # one event after each layer queued so far, the oldest first

    def __call__(self) -> bool:
        done = self.event()
        done.record()
        self.queued.append(done)
        if len(self.queued) > self.depth:
            self.queued.pop(0).synchronize()
        return self.should_stop()


class _Row:
    """One sequence's output: ids, streamed text (through the detokenizer and stop strings), finish reason.

    max_new_tokens counts tokens of new text: a token that only makes the healed text again (the prompt's last
    token, which healing took off) is not one of them, or `max_tokens: 1` after a healed cursor returned nothing.
    `budget` is the most tokens the row can take: that plus one token per byte of the healed text, within
    `room` (what the KV cache has left). A token made only healed text when its bytes lie inside what was left of it."""

    def __init__(self, tokenizer, prompt: list[int], config: GenerationConfig, room: int, on_text):
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt) if tokenizer is not None else None
        self.healed = PrefixStripper(config.required_prefix)   # the generation begins with it: not shown
        # Healing's tokens are told by their bytes, not by the text they show: a token that ends the healed text and
        # begins a character (" " + a CJK character's first byte) shows nothing yet, and is new text all the same.
        self.unhealed = config.required_prefix.encode() if tokenizer is not None else b""
        self.pieces = vocabulary_bytes(tokenizer).pieces if self.unhealed else []
        self.stops = StopStringMatcher(config.stop_strings)
        self.limit = config.max_new_tokens
        self.budget = min(self.limit + len(config.required_prefix.encode()), room)
        self.on_text = on_text
        self.token_ids: list[int] = []
        self.logprobs: list | None = [] if config.logprobs is not None else None    # TokenLogprobs per token
        self.healing_tokens = 0             # tokens that made only healed text
        self.made = 0                       # characters of new text made so far (held back or not)
        self.finish_reason: str | None = None
        self.not_a_number = False           # it ended on a step whose logits were NaN or inf (GenerationResult)

    def accept(self, token: int, stop_ids: set[int], logprobs=None) -> None:
        if self.finish_reason:
            return
        self.token_ids.append(token)
        if self.logprobs is not None:
            self.logprobs.append(replace(logprobs, text_offset=self.made))
        if token in stop_ids:
            self._finish("stop")
            return
        if self.unhealed:
            piece = self.pieces[token] if token < len(self.pieces) else None
            inside = bool(piece) and self.unhealed.startswith(piece)
            self.healing_tokens += inside
            self.unhealed = self.unhealed[len(piece):] if inside else b""
        shown = self.healed.feed(self.detokenizer.push(token) if self.detokenizer else "")
        self.made += len(shown)
        text, hit = self.stops.feed(shown)
        self._emit(text)
        if hit:
            self.finish_reason = "stop"
        elif self.left <= 0:
            self._finish("length")

    @property
    def left(self) -> int:
        """How many more tokens the row may take."""
        return min(self.budget - len(self.token_ids), self.limit - (len(self.token_ids) - self.healing_tokens))

    def cancel(self) -> None:
        if not self.finish_reason:
            self._finish("cancelled")

    def _finish(self, reason: str) -> None:
        """End the row, releasing text held back for an incomplete character or a possible stop string."""
        text, hit = self.stops.feed(self.healed.feed(self.detokenizer.flush() if self.detokenizer else ""))
        self._emit(text if hit else text + self.stops.flush())
        self.finish_reason = "stop" if hit else reason

    def _emit(self, text: str) -> None:
        if text and self.on_text is not None:
            self.on_text(text)

    def result(self, prompt_tokens: int, reused: int, timings: Timings) -> GenerationResult:
        return GenerationResult(text=self.stops.text, token_ids=self.token_ids, prompt_tokens=prompt_tokens,
                                reused_prefix_tokens=reused, finish_reason=self.finish_reason or "length",
                                timings=replace(timings, healing_tokens=self.healing_tokens),   # (shared by rows)
                                stop_string=self.stops.hit, healing_tokens=self.healing_tokens,
                                logprobs=self.logprobs, not_a_number=self.not_a_number)
