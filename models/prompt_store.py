"""Earlier prompts' KV caches kept aside: llama.cpp's prompt cache (`--cache-ram N`, on by default there).

The engine's cache row 0 holds one prompt (and its answer); the next request reuses what it shares with it. An
editor that talks to one server for two kinds of requests (inline completions and chat, or two files far apart)
would prefill each from nothing whenever the other came between. llama.cpp's server (tools/server: a slot's
`prompt_save` and `prompt_load`, `server_prompt_cache`) keeps them: when a request shares too little with the
cached prompt (its common prefix is at most a tenth of the request, or less than half of the cached prompt), the
cached prompt's K/V are copied to host memory, and the saved prompt that serves the request best is copied back into
the row. Exact: the restored K/V are the bytes the row held. On a GPU the copies stay in its own memory: on an H200,
copying a CodeLlama-7B prompt's K/V to host memory and back took 12-15x longer than prefilling it again, within the
GPU 4x shorter (bench/results/NOTES.md, Run 34).

The rules are llama.cpp's, here for its one slot:
- a save is skipped where a saved prompt already holds the whole cached one; saved prompts that the cached one
  holds whole are dropped;
- a saved prompt is taken back when it keeps at least a quarter of itself for the request and beats the cached
  prompt both in the share of itself kept and in the share of the request it covers; it leaves the store then;
- past the memory limit the oldest saved prompts go, after the one taken back left (the oldest may be the one the
  request wants), the newest always stays (on a GPU, one larger than the limit is not saved: the limit is what its
  memory has room for, and the one taken back counts there until it is restored).

One difference: llama.cpp's K/V are all alike, ours are exact or approximate. Cache reuse (models/cache_reuse.py)
moves runs of K/V into place; from the first of them on a prompt's K/V are approximate (`approximate_from`), and a
request that does not ask for cache reuse reuses only what lies before. So a prompt holds another whole only where
its tokens begin with the other's and its exact K/V reach as far as the other's (else saving it would drop, or
skip, exact K/V that only the other has), and for such a request the shares above count each prompt's tokens only up
to its `approximate_from`, the cached prompt's and the saved ones'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.cache_reuse import common_run

SIMILAR = 0.1        # llama.cpp's --slot-prompt-similarity: the shared prefix's share of the request that keeps a slot
KEEP_FOR_SAVE = 0.5  # ... and the share of the cached prompt below which it is saved all the same
KEEP_TO_LOAD = 0.25  # a saved prompt that would keep less of itself is not taken back ("don't trash large prompts")


def exact_length(tokens: list[int], approximate_from: int | None) -> int:
    """How many leading tokens of a prompt have exact K/V."""
    return len(tokens) if approximate_from is None else min(approximate_from, len(tokens))


def usable(tokens: list[int], approximate_from: int | None, prompt: list[int], exact_only: bool) -> int:
    """How many of the request `prompt`'s leading tokens a prompt of `tokens` serves: those it shares, and where the
    request may use no approximate K/V (`exact_only`), only those before `approximate_from`."""
    shared = common_run(tokens, 0, prompt, 0, len(prompt))
    return min(shared, exact_length(tokens, approximate_from)) if exact_only else shared


def covers(tokens: list[int], approximate_from: int | None,
           other: list[int], other_approximate_from: int | None) -> bool:
    """Whether a prompt of `tokens` serves every request at least as well as the prompt `other` does: it begins
    with all of the other's tokens, and its exact K/V reach as far as the other's."""
    whole = common_run(tokens, 0, other, 0, len(other)) == len(other)
    return whole and exact_length(tokens, approximate_from) >= exact_length(other, other_approximate_from)


@dataclass
class SavedPrompt:
    tokens: list[int]
    layers: list[tuple[torch.Tensor, ...]]    # per layer: K, V (1, Hkv, n, D) and, 8-bit, their scales (1, Hkv, n)
    approximate_from: int | None              # the engine's: where cache reuse's moved K/V begin (None: nowhere)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer)


class PromptStore:
    """Saved prompts, oldest first, within `limit_bytes` (None: no limit)."""

    def __init__(self, limit_bytes: int | None):
        self.limit_bytes = limit_bytes
        self.saved: list[SavedPrompt] = []

    @staticmethod
    def wants_switch(cached: list[int], prompt: list[int], approximate_from: int | None = None,
                     exact_only: bool = False) -> bool:
        """Whether the request `prompt` shares so little with the `cached` prompt (K/V approximate from
        `approximate_from`) that llama.cpp's server would save it and look for a better one: a usable prefix of at
        most a tenth of the request, or under half of `cached` (`exact_only`: a request without cache reuse)."""
        if not cached or not prompt:
            return False
        shared = usable(cached, approximate_from, prompt, exact_only)
        return shared <= SIMILAR * len(prompt) or shared < KEEP_FOR_SAVE * len(cached)

    def holds(self, tokens: list[int], approximate_from: int | None = None) -> bool:
        """Whether a saved prompt holds all of the prompt `tokens` (K/V approximate from `approximate_from`) as
        exactly: saving them again would add nothing."""
        return any(covers(s.tokens, s.approximate_from, tokens, approximate_from) for s in self.saved)

    def add(self, tokens: list[int], nbytes: int, copy: Callable[[], SavedPrompt], held: int = 0,
            approximate_from: int | None = None) -> None:
        """Keep the prompt `tokens` (K/V approximate from `approximate_from`), whose K/V (`nbytes`) `copy` returns,
        dropping the saved ones it holds whole as exactly, and first the oldest that would leave it past the limit,
        with `held` bytes (a saved prompt taken back and not yet restored) still alive meanwhile: the copy is made
        once there is room for it, so the limit bounds the peak. A prompt larger than the limit alone stays, as in
        llama.cpp."""
        self.saved = [s for s in self.saved if not covers(tokens, approximate_from, s.tokens, s.approximate_from)]
        while self.saved and self.limit_bytes is not None and self.nbytes + nbytes + held > self.limit_bytes:
            self.saved.pop(0)
        self.saved.append(copy())

    def take_best(self, cached: list[int], prompt: list[int], cached_approximate_from: int | None = None,
                  exact_only: bool = False) -> SavedPrompt | None:
        """The saved prompt that serves `prompt` better than `cached` (K/V approximate from
        `cached_approximate_from`) does (removed from the store), or None; `exact_only`: a request without cache
        reuse, which each prompt serves only up to its approximate K/V."""
        shared = usable(cached, cached_approximate_from, prompt, exact_only)
        best_keep = shared / len(cached) if cached else 0.0
        best_share = shared / len(prompt)
        best = None
        for saved in self.saved:
            shared = usable(saved.tokens, saved.approximate_from, prompt, exact_only)
            keep, share = shared / len(saved.tokens), shared / len(prompt)
            if keep >= KEEP_TO_LOAD and keep > best_keep and share > best_share:
                best, best_keep, best_share = saved, keep, share
        if best is not None:
            self.saved.remove(best)
        return best

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.saved)
