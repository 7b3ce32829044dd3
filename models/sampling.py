"""Next-token choice on the device: the request's logit bias, then the sampler chain (penalties, temperature, min-p,
top-k, top-p and llama.cpp's infill, in the config's order), then greedy or a draw.

The logit bias (OpenAI's and llama.cpp's logit_bias, and llama.cpp's ignore_eos, which bans the end-of-generation
tokens) comes first, as llama.cpp puts its logit-bias sampler before the chain and vLLM applies it before penalties
and temperature: a vector (V,) built once per request (`bias_vector`) and added to every row, on the device.

Each sampler sees the logits as the samplers before it left them, as llama.cpp's chain does: a sampler that drops a
token sets its logit to -inf, one that reshapes (temperature, penalties) rewrites the logits; the draw is a softmax of
what is left. Orders that matter: top-p and min-p after temperature weigh the tempered distribution (vLLM, Ollama),
before it the model's own (llama.cpp's chain, which ends with temperature); penalties after top-k penalize only the
tokens top-k kept; top-p after min-p renormalizes over what min-p kept.

Greedy (`GenerationConfig.greedy`: temperature <= 0 without a dynamic temperature) is llama.cpp's temperature
sampler at 0: the largest logit the samplers before "temperature" left wins (those after it choose among that one
token). With dynatemp_range > 0 a temperature of 0 still draws, at the entropy's temperature (models/dynatemp.py).

Never a draw from NaN: a request whose bans leave no token is refused before it runs (`check_bans`), and a row that a
step still leaves with nothing to draw (every logit -inf, or the model's output not a number mid-generation) takes
the engine's end of text (`pick`), so the generation ends there instead of taking token 0 out of NaN.

Once a sampler leaves a row few tokens (top-k's k; on a CPU, where reading how many is free, any sampler), the
samplers after it and the draw run on those candidates only (models/candidates.py), as llama.cpp's samplers run on
their candidate array: the same logits, and the same token for the same seed, since the draw still takes the whole
row's random numbers and reads them at the candidates (models/race_draws.py).

Everything stays on the device (no .item(), no multinomial), so the decode loop never waits on the host to pick a
token: sampling uses the exponential-race form of the Gumbel-max trick. The infill sampler (models/infill.py) is the
exception where it cannot run as a kernel (on a CPU, or with no top-k before it): there it reads the candidates on
the host, one sync per sampled token. Where a request asks for token log-probabilities,
`logprob_table` packs the chosen token's and the top N's (the raw logits' log-softmax) into one small tensor that
goes to the host with the token; a request that does not ask computes nothing of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

import models.candidates as candidates_module
from models.candidates import Candidates, compacted, kept, survivors_width
import models.dynatemp as dynatemp
from models.generation import GenerationConfig, TokenLogprobs
from models.race_draws import race_scores

Penalize = Callable[[torch.Tensor], torch.Tensor]       # logits (B, V) -> penalized logits (B, V)


def bias_vector(config: GenerationConfig, vocab_size: int, device: torch.device) -> torch.Tensor | None:
    """The request's logit bias as one vector (V,) float32 to add to the logits (each token's biases summed, as
    llama.cpp adds them one by one), or None without one.

    A finite sum stays finite: summed in float64 and clamped to float32's range (llama.cpp takes any number: 1e39, or
    two of 3e38, overflowed to +inf, whose softmax is NaN); float32's largest still wins over every unbiased token.
    A ban (-inf) stays a ban whatever else the token is given."""
    if not config.logit_bias:
        return None
    ids = [token for token, _ in config.logit_bias]
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"logit_bias: token id {max(ids) if max(ids) >= vocab_size else min(ids)} is outside the "
                         f"vocabulary (0..{vocab_size - 1})")
    check_bans(config.logit_bias, vocab_size)
    finite = [(token, b) for token, b in config.logit_bias if math.isfinite(b)]
    bias = torch.zeros(vocab_size, dtype=torch.float64)
    if finite:
        bias.index_put_((torch.tensor([token for token, _ in finite]),),
                        torch.tensor([b for _, b in finite], dtype=torch.float64), accumulate=True)
    largest = torch.finfo(torch.float32).max
    bias = bias.nan_to_num(posinf=largest, neginf=-largest).clamp(-largest, largest)     # (1e308 twice: inf)
    bias[[token for token, b in config.logit_bias if b == -math.inf]] = -math.inf
    return bias.to(device, torch.float32)


def banned(logit_bias) -> set[int]:
    """The ids a logit bias bans (a -inf among their biases)."""
    return {token for token, bias in logit_bias if bias == -math.inf}


def check_bans(logit_bias, vocab_size: int) -> None:
    """A ValueError where the bias bans every token of the vocabulary: the softmax of nothing but -inf is NaN (llama.cpp
    draws from it too), so such a request has nothing to generate."""
    if len(banned(logit_bias)) >= vocab_size:
        raise ValueError(f"logit_bias bans every token of the vocabulary ({vocab_size}): nothing is left to generate")


def sample(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None,
           penalize: Penalize | None = None, infill=None, bias: torch.Tensor | None = None,
           end: int | None = None) -> torch.Tensor:
    """Token ids (B,) int64 from float32 logits (B, V). `penalize`: the request's repetition penalties, applied where
    the chain has "penalties"; `infill`: a models.infill.InfillSampler where the chain has "infill"; `bias`: the
    request's `bias_vector`, added first; `end`: the token of a row left with nothing to draw (`pick`)."""
    candidates = chain(logits, config, penalize, infill, bias)
    if config.greedy:
        return pick_candidate(candidates, end)
    return race_candidates(candidates, generator, end)


def probabilities(logits: torch.Tensor, config: GenerationConfig, penalize: Penalize | None = None,
                  infill=None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution (B, V) that sampling draws from (not `config.greedy`)."""
    return chained(logits, config, penalize, infill, bias).softmax(dim=-1)


def chained(logits: torch.Tensor, config: GenerationConfig, penalize: Penalize | None = None,
            infill=None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, V) after the bias and the chain, in `config.sampler_order`; greedy (`config.greedy`), after the
    samplers before "temperature" only (greedy takes their largest)."""
    return chain(logits, config, penalize, infill, bias).row()


def chain(logits: torch.Tensor, config: GenerationConfig, penalize: Penalize | None = None,
          infill=None, bias: torch.Tensor | None = None, compact: bool = True) -> Candidates:
    """`chained`'s logits as models.candidates.Candidates: once a sampler leaves a row few tokens (top-k; on a CPU
    any sampler), the samplers after it run on those candidates only. `compact` False: on whole rows throughout
    (the same numbers; tests compare the two)."""
    if bias is not None:
        logits = logits + bias                                                      # (B, V) + (V,)
    candidates = Candidates(logits, None, logits.shape[-1])
    compact = compact and candidates_module.host_reads(logits)     # (CUDA rows stay whole: models/candidates.py)
    # Greedy reads only the largest logit, which min-p, top-k and top-p never drop: skip their sort and top-k over
    # the vocabulary each token (llama.cpp's default chain has all three), unless a sampler after them reads what
    # they leave (infill) or reorders it (penalties after top-k 1 leave its token the largest).
    only_largest_read = config.greedy and infill is None and penalize is None
    # The size of llama.cpp's candidate array, banned tokens in it, cut tokens not (models/dynatemp.py), (B, 1) on
    # the device: a dynamic temperature's n and infill's; followed only where one of them reads it
    size = dynatemp.array_size(logits) if config.dynatemp_range > 0 or infill is not None else None
    for sampler in config.sampler_order:
        logits = candidates.values                                                  # (B, W)
        if sampler == "temperature":
            if config.greedy:
                break
            candidates = candidates.with_values(
                _temperature(logits, config.temperature) if config.dynatemp_range <= 0 else
                dynatemp.dynamic_temperature(logits, config.temperature, config.dynatemp_range,
                                             config.dynatemp_exponent, size))
            if infill is None:
                size = None                                     # (nothing after the temperature reads it)
        elif only_largest_read and sampler in ("min_p", "top_k", "top_p"):
            continue
        elif sampler == "penalties" and penalize is not None:
            candidates = candidates.through_row(penalize)
        elif sampler == "min_p" and config.min_p > 0:
            # llama.cpp's rule on the logits: p_i >= min_p * p_max is logit_i >= max + log(min_p); min_p 1 keeps the
            # tokens tied with the largest, and the largest always stays (the min_keep likeliest too).
            floor = logits.amax(dim=-1, keepdim=True) + math.log(config.min_p)               # (B, 1)
            drop = logits < floor                                                              # (B, W)
            if size is not None:
                size = dynatemp.cut(size, (~drop).sum(dim=-1, keepdim=True), config.min_keep)
            if config.min_keep > 1:
                drop &= ~_likeliest(logits, config.min_keep, ties=False)
            candidates = candidates.with_values(logits.masked_fill(drop, float("-inf")))
        elif sampler == "top_k" and config.top_k > 0:
            if config.top_k >= logits.shape[-1]:
                pass                    # keeps every candidate (the array's k first, where it holds more: below)
            elif candidates.compact or not compact:
                candidates = candidates.with_values(
                    logits.masked_fill(~_likeliest(logits, config.top_k, config.top_k_ties), float("-inf")))
            else:
                candidates = _top_k_candidates(logits, config.top_k, config.top_k_ties)
            if size is not None:        # k of the array (more with vLLM's ties: those it keeps)
                size = dynatemp.cut(size, dynatemp.live(candidates.values), config.top_k)
        elif sampler == "top_p" and config.top_p < 1.0:
            cut = None if candidates.compact or not compact else _top_p_candidates(logits, config)
            candidates = cut or candidates.with_values(_top_p(logits, config))
            if size is not None:
                size = dynatemp.cut(size, dynatemp.live(candidates.values), config.min_keep)
        elif sampler == "infill" and infill is not None:
            candidates = _infill(candidates, infill, config, size)
            if size is not None:
                size = dynatemp.cut(size, dynatemp.live(candidates.values), 1)
        else:
            continue
        if compact and sampler in ("min_p", "top_p", "infill"):      # what they dropped may leave few tokens
            candidates = compacted(candidates)
    return candidates


def _top_k_candidates(logits: torch.Tensor, k: int, ties: bool) -> Candidates:
    """Top-k on whole CPU rows (B, V), 0 < k < V, as candidates: the tokens `_likeliest` keeps. From one torch.topk
    where the tokens tied with the k-th are all among its k (the usual case: its order among ties is its own), else
    from `_likeliest`'s mask."""
    top, ids = torch.topk(logits, k, dim=-1)                                       # (B, k) falling, ties any order
    kth = top[:, -1:]                                                               # (B, 1)
    # every token tied with the k-th inside the k (ties: nothing at or above it outside; NaN, torch.topk's
    # largest, counts as _likeliest's `~(logits < kth)` keeps it)
    inside = (logits == kth).sum(dim=-1) == (top == kth).sum(dim=-1) if not ties else \
        (~(logits < kth)).sum(dim=-1) == k                                          # (B,)
    if bool(inside.all()):
        ids, order = torch.sort(ids, dim=-1)                                        # rising ids
        top = top.gather(-1, order)
        # exactly k: a NaN is no candidate of `_likeliest` (it compares); -inf stays -inf either way
        return Candidates(top if ties else torch.where(top >= kth, top, float("-inf")), ids, logits.shape[-1])
    keep = _likeliest(logits, k, ties)                                              # (B, V)
    if not ties:
        return kept(logits, keep, k)
    return compacted(Candidates(logits.masked_fill(~keep, float("-inf")), None, logits.shape[-1]))


def _top_p(logits: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Logits (B, W) with top-p's drops at -inf."""
    # stable: tied tokens rank by id, so which of them a boundary cuts is the same every run, on every device
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)   # (B, W)
    drop = _top_p_drops(sorted_logits.softmax(dim=-1), config)
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))


def _top_p_drops(probs: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Probabilities (B, W) ranked (falling, ties by id) -> which of them top-p drops (B, W) bool."""
    above = torch.nn.functional.pad(probs.cumsum(dim=-1)[:, :-1], (1, 0))     # (B, W) mass ranked above
    # Drop a token once the tokens ranked above it hold top_p of the mass (Ollama: more than top_p); the first
    # (llama.cpp: the min_keep first) always stay.
    drop = above > config.top_p if config.top_p_strict else above >= config.top_p
    drop[:, :max(config.min_keep, 1)] = False
    return drop


def _top_p_candidates(logits: torch.Tensor, config: GenerationConfig) -> Candidates | None:
    """Top-p on whole CPU rows (B, V) without sorting the vocabulary: the likeliest m tokens (every token tied with
    the m-th too), m growing until each row's boundary falls among them, ranked and cut there as `_top_p` cuts the
    whole row (the tokens after them, holding no more than what is ranked above them, are all dropped). None where
    that would not pay (a NaN, a boundary past COMPACT_SHARE of the vocabulary): `_top_p` then."""
    vocab = logits.shape[-1]
    if logits.shape[0] == 0 or bool(torch.isnan(logits).any()):
        return None
    probs = logits.softmax(dim=-1)                                                  # (B, V) the whole row's
    first = max(config.min_keep, 1)                                                 # ranks that always stay
    likeliest = max(64, first)
    while likeliest <= candidates_module.COMPACT_SHARE * vocab:
        kth = torch.topk(logits, likeliest, dim=-1).values[:, -1:]                  # (B, 1)
        inside = (logits >= kth) & (logits > float("-inf"))     # (B, V) whole tie groups (-inf: dropped anyway)
        candidates = kept(logits, inside, survivors_width(inside))                  # (B, W) rising ids
        if candidates.values.shape[-1] == 0:
            return None                                 # every row all -inf: nothing to rank (`_top_p` keeps them so)
        ranked, order = torch.sort(candidates.values, dim=-1, descending=True, stable=True)     # (B, W)
        ranked_probs = torch.where(ranked > float("-inf"), probs.gather(-1, candidates.ids.gather(-1, order)), 0.0)
        mass = ranked_probs.cumsum(dim=-1)[:, -1]                                   # (B,) what the m hold
        beyond = mass > config.top_p if config.top_p_strict else mass >= config.top_p
        if bool((beyond & (inside.sum(dim=-1) >= first)).all()):
            drop = _top_p_drops(ranked_probs, config)
            return candidates.with_values(torch.full_like(ranked, float("-inf")).scatter(
                -1, order, ranked.masked_fill(drop, float("-inf"))))
        likeliest *= 4
    return None


def _infill(candidates: Candidates, infill, config: GenerationConfig, size: torch.Tensor) -> Candidates:
    """llama.cpp's infill sampler on the candidates (its own candidate path where it has one, models.infill), else on
    the whole row they stand for; `size` (B, 1): llama.cpp's array size there, the n of its end test."""
    on_candidates = getattr(infill, "apply_to_candidates", None)
    if candidates.compact and on_candidates is not None:
        values, ids = on_candidates(candidates.values, candidates.ids, config, size)
        return Candidates(values, ids, candidates.vocab)
    return candidates.through_row(lambda rows: infill.apply(rows, config, size))


def _likeliest(logits: torch.Tensor, k: int, ties: bool) -> torch.Tensor:
    """Which tokens (B, V) bool are the k likeliest of each row: with `ties`, every token tied with the k-th too
    (vLLM's top-k); else exactly k, the lower ids first among the tokens tied with the k-th (llama.cpp's partial sort
    and Ollama's heap keep the earlier ones), decided on the device without a sort."""
    if k >= logits.shape[-1]:
        return torch.ones_like(logits, dtype=torch.bool)
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]                              # (B, 1)
    if ties:
        return ~(logits < kth)
    above = logits > kth                                                             # (B, V)
    tied = logits == kth
    room = k - above.sum(dim=-1, keepdim=True)                                       # (B, 1) places left for ties
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def _temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, as llama.cpp's temperature sampler (the logits themselves: penalties after it see their
    signs). Below float32's smallest normal number the temperature would round to 0 (1e-300: 0 / 0 is NaN): it
    divides as that number. A row whose finite logits overflow (1e-45 sent the largest to +inf, and inf - inf is NaN
    in the softmax) divides from its largest logit down instead: the others go to -inf, the largest stays 0. Above
    float32's largest number it would round to inf (1e300: a banned token's -inf / inf is NaN): it divides as that
    number, which leaves every token alike already."""
    if temperature >= 1.0:          # |logit| / temperature <= |logit|: nothing overflows (llama.vim's chain leaves
        if temperature == 1.0:      # the temperature out: 1, every token)
            return logits
        return logits / min(temperature, torch.finfo(torch.float32).max)
    temperature = max(temperature, torch.finfo(torch.float32).tiny)
    scaled = logits / temperature
    overflow = (torch.isinf(scaled) & torch.isfinite(logits)).any(dim=-1, keepdim=True)      # (B, 1)
    return torch.where(overflow, (logits - logits.amax(dim=-1, keepdim=True)) / temperature, scaled)


def logprob_table(logits: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Raw logits (B, V) and the tokens chosen (B,) -> (B, 1 + 2n) float64 on the device: the chosen token's logprob,
    the top n logprobs, their ids (exact in float64), so that one copy brings a step's numbers to the host."""
    logprobs = logits.float().log_softmax(dim=-1)                                     # (B, V)
    chosen = logprobs.gather(-1, tokens[:, None])                                      # (B, 1)
    top = torch.topk(logprobs, n, dim=-1)                                               # (B, n) each
    return torch.cat([chosen.double(), top.values.double(), top.indices.double()], dim=-1)


def read_logprobs(row: list[float], n: int):
    """One row of `logprob_table`, on the host -> a models.generation.TokenLogprobs."""
    return TokenLogprobs(row[0], tuple((int(i), v) for v, i in zip(row[1:1 + n], row[1 + n:])))


def race(weights: torch.Tensor, generator: torch.Generator | None, end: int | None = None) -> torch.Tensor:
    """One index per row of non-negative weights (B, V), drawn with probability proportional to the weight.

    argmax(w / E) with E ~ Exp(1) draws index i with probability w_i / sum(w): no normalisation needed. A row of
    NaN weights (the softmax of a row with nothing left) gives `end` (`pick`).
    """
    return pick(race_scores(weights, generator), end)


def race_candidates(candidates: Candidates, generator: torch.Generator | None, end: int | None = None
                    ) -> torch.Tensor:
    """`race` over the softmax of the candidates' logits -> token ids (B,): the token the whole row's race draws,
    with the same generator (models/race_draws.py)."""
    weights = candidates.values.softmax(dim=-1)                                        # (B, W)
    scores = race_scores(weights, generator, candidates.ids, candidates.vocab)
    return _token_or_end(candidates, scores, end)


def pick_candidate(candidates: Candidates, end: int | None = None) -> torch.Tensor:
    """`pick` over the candidates' logits -> token ids (B,): the largest, the lower id first among ties."""
    return _token_or_end(candidates, candidates.values, end)


def _token_or_end(candidates: Candidates, scores: torch.Tensor, end: int | None) -> torch.Tensor:
    if not candidates.compact:
        return pick(scores, end)
    largest, position = scores.max(dim=-1)                                            # (B,) each
    token = candidates.token(position)
    return token if end is None else torch.where(largest > float("-inf"), token, end)


def pick(scores: torch.Tensor, end: int | None = None) -> torch.Tensor:
    """The index of each row's largest score (B, V) -> (B,), the first of ties; with `end`, a row with nothing to
    choose from (its largest NaN or -inf: every token dropped, or the model's output not a number) gives `end`, the
    engine's end of text, so a generation whose step leaves nothing to draw ends there instead of taking token 0 out
    of NaN. On the device: one more elementwise op on (B,), no sync."""
    largest, index = scores.max(dim=-1)                                                # (B,) each
    return index if end is None else torch.where(largest > float("-inf"), index, end)


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
