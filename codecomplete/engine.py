"""The model from the app's side: load it for a command line, size its prompts, and run one
generation that Ctrl-C and a closed pipe end cleanly."""
from __future__ import annotations

import os

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
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device}: not a device (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA GPU is available here")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device}: only cpu and cuda are supported")
    return args.device


def load(args, max_new_tokens: int):
    """The engine the command line asks for, with a spinner on stderr while it loads."""
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = device_for(args)
    if args.attention == "flash" and not device.startswith("cuda"):
        # Off the GPU the Triton kernels run in Triton's interpreter, which must be chosen before anything
        # imports Triton (torch's compiler does, on importing models).
        os.environ["TRITON_INTERPRET"] = "1"
    from models import load_model

    budget = args.context_tokens or (CPU_PROMPT_BUDGET if device.startswith("cpu") else None)
    with status("Loading the model…") as progress:
        engine = load_model(args.model, device=device, dtype=args.dtype, attention=args.attention,
                            max_context=budget + max_new_tokens if budget else None, progress=progress)
    if engine.attention_is_slow:
        warn("--attention flash on the CPU runs the Triton kernels in their interpreter: very slow")
    if engine.tokenizer is None and not args.bench:
        raise UsageError(f"--model {args.model}: random weights have no tokenizer; only --bench can use them")
    return engine


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
