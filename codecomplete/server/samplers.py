"""llama.cpp's `samplers` field: which samplers run, and in what order (llama.vim and llama.vscode send
`["top_k", "top_p", "infill"]` with every completion, `[]` with their warm-ups).

Followed: llama.cpp's common/sampling.cpp. `common_sampler_init` builds the chain from the list alone: a sampler
left out does not run, whatever its field says (no temperature in the list: the logits as the model made them, and
`temperature: 0` is greedy only where the list has "temperature"); the list may also be a string of letters
(`common_sampler_types_from_chars`, "kpt"); names and letters it does not know are skipped
(`common_sampler_types_from_names` warns and goes on). Without the field, llama.cpp's default chain runs:
penalties, dry, top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature.

Here every sampler of the list runs at its place in it (each once: a name given twice applies once): temperature,
top_k, top_p, min_p (llama.cpp's rule: logit >= largest + log(min_p), i.e. p >= min_p * p_max, on the logits as the
samplers before it left them), the repetition penalties ("penalties": on the logits at that point, as llama.cpp's
penalties sampler; first in the default chain) and infill (models/infill.py: llama.cpp's infill sampler, end of
generation against text and candidates merged by common prefix), with llama.cpp's rules at ties and boundaries:
top_k keeps exactly k (its partial sort; the lower ids first among ties), top_p stops once the mass kept reaches
top_p, and `min_keep` makes top_p and min_p keep at least that many tokens. A sampler left out gets its neutral value
(temperature 1, top_k 0, top_p 1, min_p 0, no penalties), so the engine's greedy choice stays `temperature <= 0`
with "temperature" in the list and no dynamic temperature (which draws at 0 too: models.GenerationConfig.greedy).
The others (dry, top_n_sigma, typ_p, xtc, adaptive_p) are not implemented: at their neutral values (llama.cpp's
defaults) they change nothing and are accepted; a request whose chain runs one with a field that would change the
distribution (typical_p < 1, dry_multiplier != 0 with dry_base >= 1 and dry_penalty_last_n != 0, xtc_probability > 0
with xtc_threshold <= 0.5, top_n_sigma > 0, adaptive_target >= 0) is refused with a 400 naming the field, as text
that ignored it would pass for what was asked.

min_p is llama.cpp's 0.05 by default on its routes, run only where the list has it: llama.vim's and llama.vscode's
lists do not, so their draws are not cut by it. The OpenAI routes without `samplers` run vLLM's chain (penalties,
temperature, min_p at vLLM's 0, top_k, top_p); llama.cpp's extras there (typical_p and the like) are checked against
llama.cpp's default chain, which would run them. The infill sampler reads the candidates on the host (one sync a
token: models/infill.py says what it costs).

llama.cpp's mirostat and dynamic temperature are implemented (models/mirostat.py, models/dynatemp.py): mirostat 1 or 2
replaces the whole chain with the temperature and mirostat, as common_sampler_init does (`AdaptiveSamplerFields`).
"""
from __future__ import annotations

from pydantic import Field

from models.generation import OPTIONAL_SAMPLERS, SAMPLERS

from .bodies import Body
from .errors import ApiError

NAMES = {"dry", "top_k", "top_p", "top_n_sigma", "typ_p", "min_p", "temperature", "xtc", "infill", "penalties",
         "adaptive_p"}
LETTERS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "s": "top_n_sigma", "m": "min_p",
           "t": "temperature", "x": "xtc", "i": "infill", "e": "penalties", "a": "adaptive_p"}
DEFAULT = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
APPLIED = SAMPLERS + OPTIONAL_SAMPLERS              # the ones models.sampling runs
LLAMA_CPP_MIN_P = 0.05                                # llama.cpp's default min_p (vLLM's and Ollama's: 0)


class UnimplementedSamplerFields(Body):
    """The fields of llama.cpp's samplers not implemented here, at llama.cpp's neutral defaults: accepted so, refused
    by `refuse_unsupported` where the chain runs one with another value (llama.cpp's routes and its extras on the
    OpenAI ones)."""
    typical_p: float = 1.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_penalty_last_n: int = -1
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    top_n_sigma: float = -1.0
    adaptive_target: float = -1.0
    min_keep: int = Field(0, ge=0)      # (implemented: top_p and min_p keep at least this many, as llama.cpp's)


class PromptCacheFields(Body):
    """llama.cpp's prompt-cache fields, which it reads on its OpenAI routes as on its own (one parser serves both):
    `n_cache_reuse` is the server's --cache-reuse for this request (0: off), `"cache_prompt": false` turns cache
    reuse off. (The exact prefix is reused either way: the same numbers as a prefill.)"""
    cache_prompt: bool = True
    n_cache_reuse: int | None = Field(None, ge=0)

    def cache_reuse(self) -> dict:
        """The engine's `cache_reuse` option this request asks for; none where the server's applies."""
        reuse = self.n_cache_reuse if self.cache_prompt else 0
        return {} if reuse is None else {"cache_reuse": reuse}


class AdaptiveSamplerFields(Body):
    """llama.cpp's mirostat and dynamic temperature (models/mirostat.py, models/dynatemp.py), at its defaults
    (tools/server reads them per request). mirostat 1 or 2 replaces the chain, `samplers` included: the logit bias,
    the temperature, then mirostat, as llama.cpp's common_sampler_init builds it; another version is a 400 (llama.cpp
    stops on an assertion). dynatemp_range > 0 makes the temperature sampler, where the chain runs it, take its
    temperature between temperature - range and temperature + range by the candidates' entropy."""
    mirostat: int = Field(0, ge=0, le=2)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0


def adaptive(samplers: tuple[str, ...], body, temperature: float) -> dict:
    """Sampling options for mirostat and the dynamic temperature: with mirostat on, it and the request's own
    temperature (run by llama.cpp's mirostat chain whatever `samplers` lists); else the dynamic temperature where
    the chain has "temperature"."""
    if body.mirostat:
        return {"mirostat": body.mirostat, "mirostat_tau": body.mirostat_tau, "mirostat_eta": body.mirostat_eta,
                "temperature": temperature}
    if "temperature" not in samplers:
        return {}
    return {"dynatemp_range": body.dynatemp_range, "dynatemp_exponent": body.dynatemp_exponent}


def unit(value: float) -> float:
    """`value` within 0..1: a top_p or min_p as llama.cpp's samplers and Ollama's NewSampler take any number."""
    return min(max(value, 0.0), 1.0)


def chain(samplers: list[str] | str | None) -> tuple[str, ...]:
    """The samplers a request runs, in order: llama.cpp's names (unknown ones skipped), or its letters."""
    if samplers is None:
        return DEFAULT
    if isinstance(samplers, str):
        return tuple(LETTERS[c] for c in samplers if c in LETTERS)
    return tuple(name for name in samplers if name in NAMES)


def applied(samplers: tuple[str, ...], temperature: float, top_k: int, top_p: float, min_p: float = 0.0,
            min_keep: int = 0, **penalties) -> dict:
    """Sampling options (codecomplete.session.Sampling's) for the chain: a sampler left out at its neutral value,
    the others in the chain's order, with llama.cpp's rules at ties (top_k keeps exactly k: its partial sort) and
    its min_keep (top_p and min_p keep at least that many); `penalties` (repeat_penalty, presence_penalty,
    frequency_penalty, ...) are kept only where the chain has "penalties"."""
    order = tuple(dict.fromkeys(name for name in samplers if name in APPLIED))
    order += tuple(name for name in SAMPLERS if name not in order)     # (the neutral ones: anywhere)
    options = {"temperature": temperature if "temperature" in samplers else 1.0,
               "top_k": top_k if "top_k" in samplers else 0,
               "top_p": top_p if "top_p" in samplers else 1.0,
               "min_p": min_p if "min_p" in samplers else 0.0, "sampler_order": order,
               "top_k_ties": False, "min_keep": min_keep}
    if "penalties" in samplers:
        options.update(penalties)
    return options


def refuse_unsupported(samplers: tuple[str, ...], body) -> None:
    """A 400 naming the field, where the chain runs a sampler this server does not implement with a value that would
    change the distribution (llama.cpp's own conditions for each to do something; its defaults do nothing). With
    mirostat on, the chain does not run."""
    if getattr(body, "mirostat", 0):
        return
    field = lambda name, default: getattr(body, name, default)  # noqa: E731
    active = {
        "typ_p": ("typical_p", field("typical_p", 1.0) < 1.0),
        "dry": ("dry_multiplier", field("dry_multiplier", 0.0) != 0.0 and field("dry_base", 1.75) >= 1.0
                and field("dry_penalty_last_n", -1) != 0),
        "xtc": ("xtc_probability", field("xtc_probability", 0.0) > 0.0 and field("xtc_threshold", 0.1) <= 0.5),
        "top_n_sigma": ("top_n_sigma", field("top_n_sigma", -1.0) > 0.0),
        "adaptive_p": ("adaptive_target", field("adaptive_target", -1.0) >= 0.0),
    }
    for name in samplers:
        if name in active and active[name][1]:
            raise ApiError(400, f"{active[name][0]} is not supported (the {name} sampler is not implemented here): "
                                f"leave it at its neutral value or take {name} out of `samplers`")
