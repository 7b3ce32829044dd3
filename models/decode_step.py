"""The decode step on static buffers, and the token ids' way back to the host.

`DecodeStep` holds the input buffers of one (batch, tokens per sequence) shape and runs the model's decode step on
them, captured once in a CUDA graph and replayed (eagerly where graphs are off: a CPU, or cuda_graphs=False).
`HostCopy` brings the sampled ids (B,) to the host without stalling the stream, so the loop can queue step t+1
before it reads token t.
"""

from __future__ import annotations

import torch

from models.llama import Decode, Transformer


class DecodeStep:
    """Static input buffers for one batch size and width (tokens per sequence), and the decode step on
    them (graph-captured if enabled)."""

    def __init__(self, model: Transformer, batch: int, width: int, backend: str, device: torch.device,
                 graphed: bool):
        self.model, self.backend, self.graphed = model, backend, graphed
        self.tokens = torch.zeros(batch, width, dtype=torch.long, device=device)  # (B, T)
        self.input_pos = torch.zeros(batch, dtype=torch.long, device=device)      # (B,) first new position
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _forward(self, kv_len: int | None, exact: bool) -> torch.Tensor:
        lengths = (self.input_pos + self.tokens.shape[1]).to(torch.int32)           # (B,): input_pos + T
        return self.model.decode(self.tokens, Decode(self.input_pos, lengths, self.backend, kv_len, exact))

    def run(self, kv_len: int, exact: bool) -> torch.Tensor:
        """Logits (B, V), or (B, T, V) for T > 1. Eager runs attend over the first kv_len slots; the graph
        over the whole capacity."""
        if not self.graphed:
            return self._forward(kv_len, exact)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        # Warm up on a side stream (Triton compiles, cuBLAS picks kernels), then record. The warm-up
        # writes the same K/V the first replay will write, so the cache stays consistent.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(None, False)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward(None, False)


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
