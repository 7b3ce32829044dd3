"""llama.cpp's `samplers` field: which samplers run, and in what order (llama.vim and llama.vscode send
`["top_k", "top_p", "infill"]` with every completion, `[]` with their warm-ups).

Followed: llama.cpp's common/sampling.cpp. `common_sampler_init` builds the chain from the list alone: a sampler
left out does not run, whatever its field says (no temperature in the list: the logits as the model made them, and
`temperature: 0` is greedy only where the list has "temperature"); the list may also be a string of letters
(`common_sampler_types_from_chars`, "kpt"); names and letters it does not know are skipped
(`common_sampler_types_from_names` warns and goes on). Without the field, llama.cpp's default chain runs:
penalties, dry, top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature.

Here the chain's temperature, top_k and top_p run in the order the list gives them (each once: a name given twice
applies once); the repetition penalties run when "penalties" is listed, and always first, on the raw logits, where
llama.cpp's default chain has them; the other samplers (dry, top_n_sigma, typ_p, min_p, xtc, infill, adaptive_p)
are accepted and not applied. A sampler left out gets its neutral value (temperature 1, top_k 0, top_p 1, no
penalties), so the engine's greedy choice stays `temperature <= 0` with "temperature" in the list.
"""
from __future__ import annotations

from models.generation import SAMPLERS

NAMES = {"dry", "top_k", "top_p", "top_n_sigma", "typ_p", "min_p", "temperature", "xtc", "infill", "penalties",
         "adaptive_p"}
LETTERS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "s": "top_n_sigma", "m": "min_p",
           "t": "temperature", "x": "xtc", "i": "infill", "e": "penalties", "a": "adaptive_p"}
DEFAULT = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
APPLIED = SAMPLERS                                # the ones models.sampling orders


def chain(samplers: list[str] | str | None) -> tuple[str, ...]:
    """The samplers a request runs, in order: llama.cpp's names (unknown ones skipped), or its letters."""
    if samplers is None:
        return DEFAULT
    if isinstance(samplers, str):
        return tuple(LETTERS[c] for c in samplers if c in LETTERS)
    return tuple(name for name in samplers if name in NAMES)


def applied(samplers: tuple[str, ...], temperature: float, top_k: int, top_p: float, **penalties) -> dict:
    """Sampling options (codecomplete.session.Sampling's) for the chain: a sampler left out at its neutral value,
    the others in the chain's order; `penalties` (repeat_penalty, presence_penalty, frequency_penalty, ...) are
    kept only where the chain has "penalties"."""
    order = tuple(dict.fromkeys(name for name in samplers if name in APPLIED))
    order += tuple(name for name in APPLIED if name not in order)     # (the neutral ones: anywhere)
    options = {"temperature": temperature if "temperature" in samplers else 1.0,
               "top_k": top_k if "top_k" in samplers else 0,
               "top_p": top_p if "top_p" in samplers else 1.0, "sampler_order": order}
    if "penalties" in samplers:
        options.update(penalties)
    return options
