"""The model from the app's side: load it for a command line, size its prompts, and run one
generation that Ctrl-C and a closed pipe end cleanly."""
from __future__ import annotations

import os
import warnings

from . import caches
from .cancel import CancelOnSigint
from .errors import UsageError
from .render import status, warn

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
    if (args.gpus or 1) > 1 and device.index is not None:
        raise UsageError(f"--device {args.device} with --gpus: rank r runs on cuda:r "
                         "(choose the GPUs with CUDA_VISIBLE_DEVICES)")
    return args.device


def check_model_spec(args) -> None:
    """Random weights build in seconds to minutes (27 GB for CodeLlama-7B) and, unless they are given a tokenizer
    folder (random:PRESET:DIR), have none: refuse them at once for anything but --bench."""
    spec = args.model or os.environ.get("CODECOMPLETE_MODEL") or ""
    if spec.startswith("random:") and ":" not in spec[len("random:"):] and not args.bench:
        named = f"--model {spec}" if args.model else f"CODECOMPLETE_MODEL={spec}"
        raise UsageError(f"{named}: random weights have no tokenizer; only --bench can use them")


def load(args, max_new_tokens: int, default_budget: int | None = None):
    """The engine the command line asks for, with a spinner on stderr while it loads.

    Its KV cache holds the prompt budget plus the tokens to generate. The default budget shrinks to what the
    model can address (a checkpoint with 512 positions still works with the defaults); only an explicit
    --context-tokens beyond the model's limit is an error, and it names the options that set the numbers.
    `default_budget` replaces the default for a command that knows better (the benchmark's longest context)."""
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    check_model_spec(args)
    caches.prepare()            # no-op after the repository's check chose the cache folder
    device = device_for(args)
    if args.attention == "flash" and not device.startswith("cuda"):
        # Off the GPU the Triton kernels run in Triton's interpreter, which must be chosen before anything
        # imports Triton (torch's compiler does, on importing models).
        os.environ["TRITON_INTERPRET"] = "1"
    from models import ContextTooLongError, load_model

    budget = args.context_tokens or default_budget or (CPU_PROMPT_BUDGET if device.startswith("cpu") else None)

    def load_with(max_context):
        with status("Loading the model…") as progress, warnings.catch_warnings():
            if not args.debug:      # the one-line error says what went wrong; library warnings only add noise
                warnings.simplefilter("ignore")
            return load_model(args.model, device=device, dtype=args.dtype, attention=args.attention,
                              max_context=max_context, progress=progress, gpus=args.gpus)

    try:
        engine = load_with(budget + max_new_tokens if budget else None)
    except ContextTooLongError as exc:
        if args.context_tokens:
            raise UsageError(f"--context-tokens {args.context_tokens:,} and {_max_tokens(args, max_new_tokens)} "
                             f"need {budget + max_new_tokens:,} tokens: {exc}") from None
        engine = load_with(None)    # the model's own context, which is smaller than the default budget
    if engine.attention_is_slow:
        warn("--attention flash on the CPU runs the Triton kernels in their interpreter: very slow")
    check_room(engine, args, max_new_tokens)     # a --max-tokens that leaves no room fails now, not later
    return engine


def _max_tokens(args, max_new_tokens: int) -> str:
    return f"--max-tokens {max_new_tokens:,}" + ("" if args.max_tokens else " (the default)")


def check_room(engine, args, max_new_tokens: int) -> None:
    if engine.context_length - max_new_tokens < 1:
        raise UsageError(f"{_max_tokens(args, max_new_tokens)} leaves no room for a prompt: {engine.name} holds "
                         f"{engine.context_length:,} tokens here (the model allows {engine.model_max_positions:,})")


def prompt_budget(engine, context_tokens: int | None, max_new_tokens: int) -> int:
    """Tokens the prompt may take: what the user asked for (--context-tokens), within what the KV cache holds."""
    room = engine.context_length - max_new_tokens
    wanted = context_tokens or (CPU_PROMPT_BUDGET if engine.device.startswith("cpu") else room)
    return max(1, min(wanted, room))


def sampling(args, max_new_tokens: int):
    """How the command line asks to generate."""
    from .session import Sampling

    return Sampling(max_tokens=max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def generate(generation, view):
    """Stream one generation (a session's, in process or on a server) into a view. Ctrl-C ends it between tokens
    with finish_reason "cancelled" and the text so far; a closed pipe raises BrokenPipeError."""
    with CancelOnSigint() as cancel, view:
        result = generation.run(on_text=view.on_text, should_stop=lambda: cancel() or view.closed)
    if view.closed:
        raise BrokenPipeError
    view.finish(result, generation.engine)
    return result


def exit_if_cancelled(result) -> None:
    """One-shot commands end with 130 after Ctrl-C, once the partial result is out."""
    if result.finish_reason == "cancelled":
        raise KeyboardInterrupt
