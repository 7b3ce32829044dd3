"""What the tensor-parallel tests run on every rank (a module of its own: spawned ranks unpickle these
functions by name, and every test folder's conftest is importable as `conftest`)."""

from __future__ import annotations

from pathlib import Path

import torch

from models.config import ModelConfig
from models.llama import Decode

PROMPT_A = [1, 17, 45, 3, 88, 20, 9, 61, 33, 50, 7]      # ids below every test model's vocabulary
PROMPT_B = [1, 5, 70, 14, 99, 31, 76]
NEXT = [[42, 11], [8, 93]]          # the tokens fed to the two decode steps, per row
CACHE = 24                          # KV-cache capacity: short, so flash stays quick in the interpreter

# Tied embeddings and an odd vocabulary: the output rows are a copy of the embedding's, the last rank's padded.
TIED = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=101, max_positions=64,
                   tie_embeddings=True)


@torch.no_grad()
def logits(model, backend: str) -> dict[str, torch.Tensor]:
    """Prefill logits at every position, a prefill continued from a cached prefix, and two decode steps
    over a batch of two rows of different lengths, through `backend`."""
    model.setup_caches(2, CACHE)
    prefill = model.prefill(torch.tensor([PROMPT_A]), 0, 0, all_logits=True)             # (1, Ta, V)
    model.prefill(torch.tensor([PROMPT_B[:4]]), 0, 1)
    continued = model.prefill(torch.tensor([PROMPT_B[4:]]), 4, 1, all_logits=True)        # (1, Tb - 4, V)
    position = torch.tensor([len(PROMPT_A), len(PROMPT_B)])
    steps = []
    for tokens in NEXT:
        step = Decode(position, (position + 1).to(torch.int32), backend)
        steps.append(model.decode(torch.tensor(tokens)[:, None], step))                   # (2, V)
        position = position + 1
    # One sequence, one token per step: the fused step (models/fused_decode.py), with the rank's collectives.
    model.setup_caches(1, CACHE)
    model.prefill(torch.tensor([PROMPT_A]))
    fused, model.fused_decode = model.fused_decode, True
    position, one = torch.tensor([len(PROMPT_A)]), []
    for token in (42, 8):
        one.append(model.decode(torch.tensor([[token]]), Decode(position, (position + 1).to(torch.int32), backend)))
        position = position + 1
    model.fused_decode = fused
    return {"prefill": prefill, "continued": continued, "decode": torch.stack(steps), "fused one-token": torch.stack(one)}


def all_logits(hf_model, gguf_model, tied_model) -> dict[str, torch.Tensor]:
    out = {f"hf-{backend}": logits(hf_model, backend) for backend in ("sdpa", "eager", "flash")}
    out["gguf-sdpa"] = logits(gguf_model, "sdpa")
    out["tied-eager"] = logits(tied_model, "eager")
    return {f"{case}/{part}": t for case, parts in out.items() for part, t in parts.items()}


def rank_logits(tp, directory: str, gguf_path: str) -> dict[str, torch.Tensor]:
    """Every rank: its part of the three models; rank 0's (gathered, full-vocabulary) logits come back."""
    from models.load import load_model
    from models.loading.hf import load_hf_model
    from models.tp import random_shard

    hf = load_hf_model(Path(directory), tp.device, torch.float32, max_len=64, tp=tp).model
    gguf = load_model(gguf_path, tp=tp, max_context=64, cuda_graphs=False).model
    tied = random_shard(TIED, tp, tp.device, torch.float32, max_len=64)
    out = all_logits(hf, gguf, tied)
    out["rank 0 holds/wqkv rows"] = torch.tensor(hf.layers[0].attention.wqkv.weight.shape[0])
    out["rank 0 holds/KV heads"] = torch.tensor(hf.layers[0].attention.kv_cache.k.shape[1])
    return out


def rank_number(tp) -> int:
    return tp.rank


def raise_on_rank_1(tp) -> None:
    import torch.distributed as dist
    if tp.rank == 1:
        raise ValueError("boom on rank 1")
    dist.all_reduce(torch.ones(4), group=tp.group)      # rank 0 waits for a rank that is gone


def hang_in_teardown(tp, seconds: float, pid_file: str) -> None:
    """Every rank: the process group's destruction never returns, and the teardown bound is `seconds`."""
    import os
    import time

    import models.distributed as distributed
    distributed.LEAVE_TIMEOUT_S = seconds
    distributed.dist.destroy_process_group = lambda *args, **kwargs: time.sleep(3600)
    if tp.rank == 1:
        Path(pid_file).write_text(str(os.getpid()))


def die_while_reporting(tp) -> None:
    """Rank 1 raises and is gone while torch.multiprocessing writes its report: the report file stays empty (as
    when a rank is killed at that moment)."""
    import os
    import sys
    import types

    import torch.distributed as dist
    if tp.rank == 1:     # (the module: torch.multiprocessing.spawn is also the name of a function)
        sys.modules["torch.multiprocessing.spawn"].pickle = types.SimpleNamespace(dump=lambda *args: os._exit(1))
        raise ValueError("boom on rank 1")
    dist.all_reduce(torch.ones(4), group=tp.group)


def killed_on_rank_2(tp) -> None:
    """Rank 2 is killed (the OOM killer, `kill -9`); ranks 0 and 1 wait for it in an all-reduce."""
    import os
    import signal

    import torch.distributed as dist
    if tp.rank == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(4), group=tp.group)


def interrupted_while_rank_1_works(tp) -> None:
    """Ctrl-C on rank 0 while rank 1 is busy outside any collective (loading its part of a model, say)."""
    import time
    if tp.rank == 1:
        time.sleep(120)
    raise KeyboardInterrupt


def hang_on_rank_1(tp) -> None:
    """Rank 1 hangs (alive, answering nothing) while rank 0 waits for it in an all-reduce."""
    import time

    import torch.distributed as dist
    if tp.rank == 1:
        time.sleep(120)
    dist.all_reduce(torch.ones(4), group=tp.group)


def rank_int8(tp, directory: str, out: str) -> dict[str, torch.Tensor]:
    """Every rank: its part of the checkpoint with int8 weights (models.tp.quantize_shard), its int8 projections
    saved to out/rank{r}.pt; rank 0's logits (eager) come back."""
    from models.llama import projection_weight
    from models.loading.hf import load_hf_model
    from models.tp import quantize_shard

    model = load_hf_model(Path(directory), tp.device, torch.float32, max_len=64, tp=tp).model
    quantize_shard(model, tp)
    layer = model.layers[0]
    held = {name: tuple(projection_weight(module)) for name, module in (
        ("wqkv", layer.attention.wqkv), ("wo", layer.attention.wo), ("w13", layer.feed_forward.w13),
        ("w2", layer.feed_forward.w2), ("output", model.output))}
    torch.save(held, Path(out) / f"rank{tp.rank}.pt")
    return logits(model, "eager")


def rank_int8_as_loaded(tp, directory: str, out: str) -> None:
    """Every rank: its part of the checkpoint (float32 and bfloat16) and of the tied random model, quantized as they
    load (weights="int8") and after loading (models.tp.quantize_shard), both state dicts saved to out/rank{r}.pt."""
    from models.loading.hf import load_hf_model
    from models.tp import quantize_shard, random_shard

    def checkpoint(dtype, weights=None):
        return load_hf_model(Path(directory), tp.device, dtype, max_len=64, tp=tp, weights=weights).model

    def tied(weights=None):
        return random_shard(TIED, tp, tp.device, torch.float32, max_len=64, weights=weights)

    saved = {}
    for case, load in (("float32 checkpoint", lambda w=None: checkpoint(torch.float32, w)),
                       ("bfloat16 checkpoint", lambda w=None: checkpoint(torch.bfloat16, w)), ("tied random", tied)):
        after = load()
        quantize_shard(after, tp)
        saved[case] = (load("int8").state_dict(), after.state_dict())
    torch.save(saved, Path(out) / f"rank{tp.rank}.pt")
