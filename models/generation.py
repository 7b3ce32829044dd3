"""What a caller asks of a generation and what it gets back (plain data: no torch here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SAMPLERS = ("penalties", "temperature", "min_p", "top_k", "top_p")   # the order they apply in by default (vLLM's)
OPTIONAL_SAMPLERS = ("infill",)                 # run only where sampler_order names them (llama.cpp's `samplers`)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0            # 0 -> greedy (`greedy`: unless dynatemp_range > 0)
    top_p: float = 1.0                  # nucleus sampling; 1 keeps every token
    top_k: int = 0                      # 0 keeps every token
    min_p: float = 0.0                  # keeps the tokens at least min_p times as likely as the likeliest; 0: off
    # Each server's rule where the samplers meet ties and boundaries (ranks: by falling logit, the lower id first):
    top_k_ties: bool = True             # top-k keeps every token tied with its k-th (vLLM); False: exactly k
                                        # (llama.cpp's partial sort, Ollama's heap)
    top_p_strict: bool = False          # top-p drops a token once the tokens ranked above it hold top_p (llama.cpp's
                                        # cum_sum >= p, vLLM's); True: once they hold more than top_p (Ollama's)
    min_keep: int = 0                   # top-p and min-p keep at least this many tokens (llama.cpp's min_keep)
    sampler_order: tuple[str, ...] = SAMPLERS   # the order the samplers apply in (each of SAMPLERS once, a neutral
                                                # value turning one off; "infill" only where named): llama.cpp's
                                                # chain ends with temperature, so its top-p weighs the untempered
                                                # distribution; its penalties apply where its `samplers` puts them
    dynatemp_range: float = 0.0         # > 0: llama.cpp's dynamic temperature where "temperature" runs, between
    dynatemp_exponent: float = 1.0      # temperature -+ range by the candidates' entropy (models/dynatemp.py)
    mirostat: int = 0                   # 1, 2: llama.cpp's mirostat v1 or v2 in place of the chain, after the logit
    mirostat_tau: float = 5.0           # bias and the temperature (models/mirostat.py): its target surprise (bits)
    mirostat_eta: float = 0.1           # and learning rate. One token a step: turns speculation off
    seed: int | None = None             # None -> a fresh random seed
    stop_token_ids: tuple[int, ...] = ()   # besides the model's EOS ids, which always stop
    stop_strings: tuple[str, ...] = ()     # never part of the returned or streamed text
    required_prefix: str = ""              # token healing: the generation begins with this text, which is
                                           # left out of the returned and streamed text (models/healing.py)
    repeat_penalty: float = 1.0            # penalties (models/penalties.py), llama.cpp's: 1 and 0 are off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64               # the tokens they look back over (0: none, -1: the whole context)
    penalize_prompt: bool = True           # the prompt's tokens among them (llama.cpp); False: only sampled ones
    repeat_window: int | None = None       # the repeat penalty's own window over prompt + answer, where it differs
                                           # (OpenAI routes: vLLM's repetition_penalty sees all of both, presence
                                           # and frequency the answer); None: penalty_last_n and penalize_prompt's
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, bias) added to the logits before every sampler
                                           # (OpenAI's and llama.cpp's logit_bias); -inf bans the token, a token
                                           # given twice gets both (llama.cpp's list adds each in turn)
    logprobs: int | None = None            # each token's logprob and the top-N alternatives' (GenerationResult.
                                           # logprobs), from the model's own distribution (the raw logits'
                                           # log-softmax, as vLLM and llama.cpp report them); None: not computed.
                                           # Turns speculation off for the request
    logprobs_after_samplers: bool = False  # those logprobs of the distribution the token was drawn from instead:
                                           # after the logit bias and the sampler chain (greedy: the chosen token
                                           # alone, at 0), as llama.cpp's post_sampling_probs
    speculate: int | None = None           # drafts verified per step (prompt lookup); None: the engine's
                                           # default, 0: off. One sequence only: generate_batch ignores it
    cache_reuse: int = 0                   # llama.cpp's n_cache_reuse: past the prefix the last request shares, runs
                                           # of at least this many of its cached tokens that the prompt goes on with
                                           # are moved into place, keys re-rotated, not prefilled (approximate:
                                           # models/cache_reuse.py); 0: off, exact prefix reuse only

    def __post_init__(self) -> None:
        required = [name for name in self.sampler_order if name not in OPTIONAL_SAMPLERS]
        optional = [name for name in self.sampler_order if name in OPTIONAL_SAMPLERS]
        if sorted(required) != sorted(SAMPLERS) or len(set(optional)) != len(optional):
            raise ValueError(f"sampler_order must name each of {', '.join(SAMPLERS)} once (and "
                             f"{', '.join(OPTIONAL_SAMPLERS)} at most once), got {self.sampler_order}")
        if any(math.isnan(bias) or bias == math.inf for _, bias in self.logit_bias):
            raise ValueError(f"a logit bias must be a number or -inf, got {self.logit_bias}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be at least 0 (the top alternatives per token), got {self.logprobs}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must lie in 0..1, got {self.min_p}")
        if self.mirostat not in (0, 1, 2):
            raise ValueError(f"mirostat must be 0 (off), 1 or 2 (llama.cpp's versions), got {self.mirostat}")
        if self.min_keep < 0:
            raise ValueError(f"min_keep must be at least 0, got {self.min_keep}")
        if self.cache_reuse < 0:
            raise ValueError(f"cache_reuse must be at least 0 (0: off), got {self.cache_reuse}")

    @property
    def greedy(self) -> bool:
        """Whether each token is the largest logit the samplers before "temperature" leave (no draw, no generator):
        a temperature of 0 or less, as llama.cpp's temperature sampler at 0, unless the temperature is dynamic.
        llama.cpp's temp-ext (src/llama-sampling.cpp) with dynatemp_range > 0 takes its temperature in
        [max(0, temperature - range), temperature + range] by the candidates' entropy whatever the temperature, so
        0 with a range still draws; only mirostat's chain, which runs the plain temperature, keeps 0 greedy then."""
        return self.temperature <= 0 and (self.dynatemp_range <= 0 or self.mirostat != 0)


@dataclass
class Timings:
    load_s: float = 0.0                 # the engine's load time (the same for every request)
    prefill_s: float = 0.0              # prompt processing, up to the first token's logits
    ttft_ms: float = 0.0                # from the call to the first token on the host
    decode_s: float = 0.0               # from the first token to the last
    decode_tokens_per_s: float = 0.0    # per sequence: tokens after the first / decode_s (with speculation,
                                        # more tokens than decode steps)
    prefill_tokens_per_s: float = 0.0   # prompt tokens actually prefilled (not reused) / prefill_s
    drafted_tokens: int = 0             # speculative decoding: draft tokens verified
    accepted_tokens: int = 0            # of those, accepted into the output (each one a decode step saved)
    decode_steps: int = 0               # decode steps run (tokens after the first / decode_steps = tokens per step)
    verify_steps: int = 0               # of those, steps that verified drafts (the others fed one token)
    moved_tokens: int = 0               # of the reused prompt tokens, those cache reuse moved into place (their K/V
                                        # from further on in the last request's cache: GenerationConfig.cache_reuse)
    restored_tokens: int = 0            # a saved prompt's tokens copied back into the cache before the prefill (the
                                        # prompt cache: Engine.keep_prompts); the reused ones are among them
    healing_tokens: int = 0             # GenerationResult.healing_tokens, counted live too (engine.progress): whole
                                        # by the first text (healing's tokens make none), a stream's prompt count
    queued_s: float = 0.0               # before the engine took the request: the wait behind other requests where a
                                        # server ran it (set by the server, for the command line); 0 where it ran at once

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens emitted per decode step: accepted drafts plus one of the model's own each step."""
        return (self.decode_steps + self.accepted_tokens) / self.decode_steps if self.decode_steps else 0.0


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token's log-probability under the model and the top alternatives', likeliest first, and where its
    text begins in the answer."""
    logprob: float
    top: tuple[tuple[int, float], ...]      # (token id, logprob)
    text_offset: int = 0                    # the characters of new text the tokens before it made: a token that
                                            # ends the healed text or a character begins where its new text does


@dataclass
class GenerationResult:
    text: str                           # the completion, stop string excluded
    token_ids: list[int]                # generated ids, including a final EOS/stop token if one ended it
    prompt_tokens: int
    reused_prefix_tokens: int           # prompt tokens whose KV came from the previous request
    finish_reason: str                  # "stop" | "length" | "cancelled"
    timings: Timings = field(default_factory=Timings)
    stop_string: str = ""               # the stop string that ended it, if one did
    healing_tokens: int = 0             # of token_ids, the first ones that only made the healed text again
    logprobs: list[TokenLogprobs] | None = None   # one per token of token_ids, where the config asked for them
    not_a_number: bool = False          # the model's output (logits) was NaN or inf at the step that ended it: that
                                        # step took the end of text (models.sampling.pick), not the model's choice

    def token_counts(self) -> tuple[int, int]:
        """The prompt's tokens and the generated ones as llama.cpp (n_decoded), Ollama (eval_count) and OpenAI usage
        count them: every token sampled, the end of text that stopped it included; but a token that only made the
        healed text again is the prompt's, where those servers (no healing) leave it, or `max_tokens: 1` after a
        healed prompt reported 2 completion tokens. The sum stays the tokens the cache holds."""
        return self.prompt_tokens + self.healing_tokens, len(self.token_ids) - self.healing_tokens
