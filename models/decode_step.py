"""The decode step on static buffers, and the token ids' way back to the host.

`DecodeStep` holds the input buffers of one (batch, tokens per sequence) shape and runs the model's decode step on
them, captured in a CUDA graph and replayed (eagerly where graphs are off: a CPU, or cuda_graphs=False). A graph's
shapes are fixed, so SDPA and eager attention in one read the same number of keys at every step: one graph per
span of keys (`key_span`), or a 4k prompt in a 64k cache would pay for 64k every step (125 tok/s for CodeLlama-7B on
an H200 at 4k, against 246 where the keys read are the context's). Flash-Decoding reads each row's length itself:
one graph over the whole capacity.
`HostCopy` brings the sampled ids (B,) to the host without stalling the stream, so the loop can queue step t+1
before it reads token t.
"""

from __future__ import annotations

import torch

from models.llama import Decode, Transformer


SPANS_PER_OCTAVE = 4         # graphs of SDPA and eager attention: at most 19% more keys read than the context holds
MIN_SPAN = 1024


def key_span(kv_len: int, capacity: int) -> int:
    """The keys a graph of SDPA or eager attention reads for kv_len of them: the next of 1,024 x 2^(i/4), rounded up
    to a multiple of 64, within the capacity."""
    span = MIN_SPAN
    i = 0
    while span < kv_len:
        i += 1
        span = -(-int(MIN_SPAN * 2 ** (i / SPANS_PER_OCTAVE)) // 64) * 64
    return min(span, capacity)


class DecodeStep:
    """Static input buffers for one batch size and width (tokens per sequence), and the decode step on
    them (graph-captured if enabled: one graph per key span for SDPA and eager attention, one for flash)."""

    def __init__(self, model: Transformer, batch: int, width: int, backend: str, device: torch.device,
                 graphed: bool, capacity: int):
        self.model, self.backend, self.graphed, self.capacity = model, backend, graphed, capacity
        self.tokens = torch.zeros(batch, width, dtype=torch.long, device=device)  # (B, T)
        self.input_pos = torch.zeros(batch, dtype=torch.long, device=device)      # (B,) first new position
        self.graphs: dict[int | None, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # span -> (graph, its logits)
        self.pool = None        # the graphs' one memory pool: they never run at once (as vLLM's batch-size graphs)

    def _forward(self, kv_len: int | None, exact: bool, graphed: bool = False) -> torch.Tensor:
        lengths = (self.input_pos + self.tokens.shape[1]).to(torch.int32)           # (B,): input_pos + T
        return self.model.decode(self.tokens, Decode(self.input_pos, lengths, self.backend, kv_len, exact, graphed))

    def run(self, kv_len: int, exact: bool) -> torch.Tensor:
        """Logits (B, V), or (B, T, V) for T > 1. Eager runs attend over the first kv_len slots; a graph over its
        span of them (flash: the whole capacity, reading each row's length)."""
        if not self.graphed:
            return self._forward(kv_len, exact)
        span = None if self.backend == "flash" else key_span(kv_len, self.capacity)
        if span not in self.graphs:
            self.graphs[span] = self._capture(span)
        graph, logits = self.graphs[span]
        graph.replay()
        return logits

    def _capture(self, span: int | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm up on a side stream (Triton compiles, cuBLAS picks kernels), then record. The warm-up
        # writes the same K/V the first replay will write, so the cache stays consistent.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(span, False, graphed=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._forward(span, False, graphed=True)
        return graph, logits


class HostCopy:
    """Token ids (B,) on their way to the host: on CUDA an async copy into pinned memory, read later."""

    def __init__(self, tokens: torch.Tensor):
        self.event = None
        if tokens.is_cuda:
            self.buffer = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            self.buffer.copy_(tokens, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.buffer = tokens

    def wait(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.buffer.tolist()
