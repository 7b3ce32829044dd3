"""The model from the app's side: load it for a command line, size its prompts, and run one
generation that Ctrl-C and a closed pipe end cleanly."""
from __future__ import annotations

import functools
import os
import warnings

from . import caches
from .cancel import CancelOnSigint, InterruptsDeferred
from .errors import Cancelled, UsageError, not_a_number
from .render import LiveView, status, warn
from .repeats import RepeatedLines

# On a CPU a prompt prefills at a few hundred tokens/s: a 1k-token default keeps the first
# token within seconds. On CUDA the default is the whole context the engine was built for.
CPU_PROMPT_BUDGET = 1024


def device_for(args) -> str:
    """The device to run on: --device, checked here so a typo is a usage error, or CUDA if present."""
    import torch

    if not args.device:
        if (args.gpus or 1) > 1 and not torch.cuda.is_available():
            raise UsageError(f"--gpus {args.gpus}: no CUDA GPU is available here "
                             f"(--device cpu runs {args.gpus} CPU processes instead)")
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device}: not a device (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA GPU is available here")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device}: only cpu and cuda are supported")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UsageError(f"--device {args.device}: the CPU takes no index (--threads sets its cores)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {args.device}: this machine has {count} CUDA GPU{'s' * (count != 1)} "
                         f"(cuda:0 to cuda:{count - 1})")
    if (args.gpus or 1) > 1 and device.index is not None:
        raise UsageError(f"--device {args.device} with --gpus: rank r runs on cuda:r "
                         "(choose the GPUs with CUDA_VISIBLE_DEVICES)")
    return args.device


def set_threads(requested: int | None, device: str) -> int:
    """Give torch --threads threads; by default on a CPU as many as there are idle cores now, at least one.

    Oversubscribed cores are ruinous: torch's threads wait for each other at every operation, so one that
    another process holds up stalls them all (on a busy 2-core machine 2 threads made prefill 7x and decode
    14x slower than 1). Idle cores are the cores this process may use minus the 1-minute load average, at most
    torch's own default (the physical cores). $OMP_NUM_THREADS, when set, is the user's choice: left alone."""
    import torch

    cores = check_threads(requested)
    if requested:
        torch.set_num_threads(requested)
    elif device.startswith("cpu") and not os.environ.get("OMP_NUM_THREADS"):
        idle = cores - os.getloadavg()[0] if hasattr(os, "getloadavg") else cores
        torch.set_num_threads(max(1, min(_torch_default_threads(), round(idle))))
    return torch.get_num_threads()


def check_threads(requested: int | None) -> int:
    """The cores this process may use; more --threads than that is a usage error (they only waste time, and tens
    of thousands crash torch). Checked before any work too, so a command a server answers refuses it alike."""
    cores = usable_cores()
    if requested and requested > cores:
        raise UsageError(f"--threads {requested}: this process may use {cores} core{'s' * (cores != 1)}")
    return cores


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def _torch_default_threads() -> int:
    """torch's thread count before anything changed it (its default: the physical cores)."""
    import torch

    return torch.get_num_threads()


def check_model_spec(args) -> None:
    """Random weights build in seconds to minutes (27 GB for CodeLlama-7B) and, unless they are given a tokenizer
    folder (random:PRESET:DIR), have none: refuse them at once for anything but --bench. A blank
    $CODECOMPLETE_MODEL is refused at once too, as an empty --model is (an empty one is unset)."""
    spec = args.model or os.environ.get("CODECOMPLETE_MODEL") or ""
    if not args.model and spec and not spec.strip():
        raise UsageError(f'CODECOMPLETE_MODEL="{spec}" is empty')
    named = f"--model {spec}" if args.model else f"CODECOMPLETE_MODEL={spec}"
    if not spec.startswith("random:"):
        if not _served_elsewhere(args):
            # A missing path (a typo) is said now, not after torch, transformers and the repository's index loaded.
            from models.loading import check_local
            check_local(args.model)
        return
    name, _, folder = spec[len("random:"):].partition(":")
    from models.config import preset
    from models.errors import ModelError
    try:                                    # a preset's name is a typo to say as such, like any option's value
        preset(name)
    except ModelError as exc:
        raise UsageError(f"{named}: {exc}") from None
    if not folder and not args.bench:         # `random:PRESET:` names no folder: the model loads without one
        raise UsageError(f"{named}: random weights have no tokenizer; only --bench can use them")


def _served_elsewhere(args) -> bool:
    """Whether a server the user named (--server, $CODECOMPLETE_SERVER) loads the model for this command: the path
    is the server's, which need not exist here."""
    from .client import SERVER_ENV

    uses_server = any(getattr(args, option, None) is not None for option in ("file", "ask", "prompt"))
    return (uses_server and not getattr(args, "no_server", False)
            and bool(getattr(args, "server", None) or os.environ.get(SERVER_ENV)))


def load(args, max_new_tokens: int, default_budget: int | None = None, headroom: int = 0, asked: bool = False):
    """The engine the command line asks for, with a spinner on stderr while it loads.

    Its KV cache holds the prompt budget plus the tokens to generate. The default budget shrinks to the model's
    training length (a checkpoint with 512 positions still works with the defaults). A budget the user asked for
    (--context-tokens, or `asked`: the benchmark's explicit --contexts) may go past it, with a warning, as llama.cpp
    allows (CodeLlama, trained on 16k, is documented toward 100k tokens).
    `default_budget` replaces the default for a command that knows better (the benchmark's longest context);
    `headroom` adds tokens to a cache sized from the budget, unless the model cannot hold them."""
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    check_model_spec(args)
    caches.prepare()            # no-op after the repository's check chose the cache folder
    with InterruptsDeferred():  # torch, triton and the model code import here
        device = device_for(args)
        set_threads(getattr(args, "threads", None), device)
        if args.attention == "flash" and not device.startswith("cuda"):
            # Off the GPU the Triton kernels run in Triton's interpreter, which must be chosen before anything
            # imports Triton (torch's compiler does, on importing models).
            os.environ["TRITON_INTERPRET"] = "1"
        from models import ContextTooLongError, load_model
    check_kv_cache(args, device)        # before the weights load
    check_weights(args, device)

    budget = args.context_tokens or default_budget or (CPU_PROMPT_BUDGET if device.startswith("cpu") else None)
    matmul_dtype = cpu_matmul_dtype(args, device)

    def load_with(max_context):
        with status("Loading the model…", log=getattr(args, "log_progress", False)) as progress, \
                warnings.catch_warnings():
            if not args.debug:      # the one-line error says what went wrong; library warnings only add noise
                warnings.simplefilter("ignore")
            return load_model(args.model, device=device, dtype=args.dtype, matmul_dtype=matmul_dtype,
                              weights=quantized_weights(args),
                              attention=args.attention,
                              max_context=max_context, progress=progress, gpus=args.gpus, kv_cache=args.kv_cache,
                              past_training=asked or bool(args.context_tokens))

    try:
        engine = load_with(budget + max_new_tokens + headroom if budget else None)
    except ContextTooLongError as exc:
        if args.context_tokens:
            raise UsageError(f"--context-tokens {args.context_tokens:,} and {_max_tokens(args, max_new_tokens)} "
                             f"need {budget + max_new_tokens:,} tokens: {exc}") from None
        engine = load_with(None)    # the model's own context, which is smaller than the default budget
    if engine.context_length > engine.model_max_positions:
        warn(f"{engine.name} was trained on {engine.model_max_positions:,} positions and holds "
             f"{engine.context_length:,} here: past them its output may degrade")
    for warning in engine.load_warnings:
        warn(f"{engine.name}: {warning}")
    if engine.attention_is_slow:
        warn("--attention flash on the CPU runs the Triton kernels in their interpreter: very slow")
    check_room(engine, args, max_new_tokens)     # a --max-tokens that leaves no room fails now, not later
    # Prompts name only special tokens the model embeds: a tokenizer may know more (CodeLlama-34B's infill tokens,
    # past its 32,000 rows), and a prompt holding one failed at the first request.
    if engine.tokenizer is not None:            # (random weights, for --bench, have none)
        from prompts.tokens import encoder_for
        encoder_for(engine.tokenizer, engine.model.config.vocab_size)
    return engine


def cpu_matmul_dtype(args, device: str) -> str | None:
    """On a CPU that multiplies bfloat16 natively (AVX512-BF16, AMX), the float32 model's projections in bfloat16
    unless --dtype chose the dtype (--dtype float32: float32 throughout) or $CODECOMPLETE_CPU_BF16=0. The embedded
    model then prefills 1.9-2.7x and decodes 1.8-2.2x as fast on a 2-core EPYC, with the same accuracy on real code
    (next-token top-1 54.1% against 54.5% in float32, log-loss +0.07%, over 2,040 positions of installed packages'
    code; bench/results/cpu-bf16-weights.md, NOTES.md "bfloat16 projections on the CPU"). --weights decides when
    given: bf16 asks for them (where the model's dtype is not bfloat16 already), int8 or int4 for those weights
    instead."""
    weights = getattr(args, "weights", None)
    if weights is not None:         # (bf16 under a model of bfloat16 already: the model's dtype, nothing to ask)
        float32_cpu = device.startswith("cpu") and args.dtype in (None, "float32")
        return "bfloat16" if weights == "bf16" and float32_cpu else None
    return None if args.dtype else default_matmul_dtype(device, args.gpus)


def default_matmul_dtype(device: str, gpus: int | None) -> str | None:
    """`cpu_matmul_dtype` where --dtype is left out: what this machine chooses (a server announces it)."""
    from .switches import CPU_BF16, on

    if not device.startswith("cpu") or (gpus or 1) > 1 or not on(CPU_BF16):
        return None
    from models.options import cpu_has_bf16_dots
    return "bfloat16" if cpu_has_bf16_dots() else None


def quantized_weights(args) -> str | None:
    """--weights as load_model's weights: "int8" or "int4" (bf16 is a matmul dtype, `cpu_matmul_dtype`), else None."""
    weights = getattr(args, "weights", None)
    return weights if weights in ("int8", "int4") else None


def check_weights(args, device: str) -> None:
    """--weights bf16 against the model's dtype on `device` and --gpus, as load_model will check it (bfloat16 weights
    under another dtype are for a float32 model on one CPU process), and --weights int4 against --gpus (one process
    only: `models.options.SPLIT_INT4`), as a usage error. After models is imported."""
    if getattr(args, "weights", None) == "int4" and (args.gpus or 1) > 1:
        from models.options import SPLIT_INT4
        raise UsageError(f"--weights int4 --gpus {args.gpus}: {SPLIT_INT4}")
    if getattr(args, "weights", None) != "bf16":
        return
    import torch
    from models.options import parse_dtype, parse_matmul_dtype

    try:
        narrow = parse_matmul_dtype("bfloat16", parse_dtype(args.dtype, torch.device(device)), torch.device(device))
        if narrow is not None and (args.gpus or 1) > 1:
            raise ValueError("a model split over several processes keeps its dtype: use --dtype bfloat16")
    except ValueError as exc:
        raise UsageError(f"--weights bf16: {exc}") from None


def check_kv_cache(args, device: str) -> None:
    """--kv-cache against the model's dtype on `device`, as the engine will check it (models' parse_kv_cache: an
    unquantized cache holds the model's dtype), as a usage error. Only after models is imported (TRITON_INTERPRET)."""
    import torch
    from models.options import parse_dtype, parse_kv_cache

    try:
        parse_kv_cache(args.kv_cache, parse_dtype(args.dtype, torch.device(device)))
    except ValueError as exc:
        raise UsageError(f"--kv-cache {args.kv_cache}: {exc}") from None


def _max_tokens(args, max_new_tokens: int) -> str:
    return f"--max-tokens {max_new_tokens:,}" + ("" if args.max_tokens else " (the default)")


def check_room(engine, args, max_new_tokens: int) -> None:
    if engine.context_length - max_new_tokens < 1:
        raise UsageError(f"{_max_tokens(args, max_new_tokens)} leaves no room for a prompt: {engine.name} holds "
                         f"{engine.context_length:,} tokens here (trained on {engine.model_max_positions:,})")


def prompt_budget(engine, context_tokens: int | None, max_new_tokens: int) -> int:
    """Tokens the prompt may take: what the user asked for (--context-tokens), within what the KV cache holds."""
    room = engine.context_length - max_new_tokens
    wanted = context_tokens or (CPU_PROMPT_BUDGET if engine.device.startswith("cpu") else room)
    return max(1, min(wanted, room))


def sampling(args, max_new_tokens: int):
    """How the command line asks to generate."""
    from .session import Sampling

    return Sampling(max_tokens=max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                    speculate=args.speculate)


def generate(generation, view, *, stop_repeats: bool = False, line_start: str = "", line_end: str = "\n"):
    """Stream one generation (a session's, in process or on a server) into a view. Ctrl-C ends it between tokens
    (or the prefill's layers) with finish_reason "cancelled" and the text so far; a closed pipe raises
    BrokenPipeError. `stop_repeats` (an inline suggestion, a chat answer): a line written three times running ends
    it, the copies never shown, the cursor's line (`line_start`: its text before the cursor) counted, lines ended as
    `line_end` (the prompt's, which the text is written with) ends them (codecomplete/repeats.py)."""
    if isinstance(view, LiveView):      # the live line counts tokens and shows speculation's acceptance as it goes
        view.progress = (getattr(generation, "progress", None)          # (a server's, sent with its text)
                         or (lambda: getattr(generation.engine, "progress", None)))
    repeats = RepeatedLines(view.on_text, line_start, line_end) if stop_repeats else None
    with CancelOnSigint() as cancel, view:
        result = generation.run(on_text=repeats.feed if repeats else view.on_text,
                                should_stop=lambda: cancel() or view.closed or bool(repeats and repeats.looped))
        if repeats is not None:
            result = repeats.finish(result)
    if view.closed:
        raise BrokenPipeError
    view.finish(result, generation.engine)
    if result.not_a_number:
        warn(not_a_number(result))
    return result


def exit_if_cancelled(result) -> None:
    """One-shot commands end with 130 after Ctrl-C, once the partial result is out."""
    if result.finish_reason == "cancelled":
        raise Cancelled
