"""`codecomplete serve` against the adversarial sweep's seventeenth round (bench/results/NOTES.md: the numbers the
product reports, and whether they are true), on a real server and its real socket."""
import math

import httpx
import pytest


def _completion(server, **body) -> dict:
    answer = httpx.post(server.url + "/completion", json={"prompt": "def area(width, height):\n", "temperature": 0,
                                                          **body}, timeout=300)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("n_predict", [2, 3, 8])
def test_llama_cpp_timings_rates_agree_with_their_counts_and_times(server, n_predict):
    """llama.cpp's timings (llama.vim's status line shows `predicted_n`, `predicted_ms` and `predicted_per_second`):
    its server computes predicted_per_token_ms = predicted_ms / predicted_n and predicted_per_second =
    1000 * predicted_n / predicted_ms, so that the one is 1000 over the other. predicted_per_second was the engine's
    decode rate, tokens after the first over the same milliseconds: `2 / 99 ms, 10.1 t/s` beside 49.5 ms a token."""
    timings = _completion(server, n_predict=n_predict, ignore_eos=True)["timings"]
    n, ms = timings["predicted_n"], timings["predicted_ms"]
    assert n == n_predict and ms > 0, timings
    assert math.isclose(timings["predicted_per_token_ms"], ms / n, rel_tol=1e-9), timings
    assert math.isclose(timings["predicted_per_second"], 1000 * n / ms, rel_tol=1e-9), timings
    assert math.isclose(timings["predicted_per_second"] * timings["predicted_per_token_ms"], 1000, rel_tol=1e-9)
    p, prompt_ms = timings["prompt_n"], timings["prompt_ms"]
    assert p > 0 and prompt_ms > 0, timings
    assert math.isclose(timings["prompt_per_token_ms"], prompt_ms / p, rel_tol=1e-9), timings
    assert math.isclose(timings["prompt_per_second"], 1000 * p / prompt_ms, rel_tol=1e-9), timings


def test_one_predicted_token_has_no_rate_rather_than_a_made_up_one(server):
    """One token comes out of the prompt's evaluation: no decode step is timed after it, so there is no rate to give
    (its predicted_ms is the bookkeeping after it, well under a millisecond: 1000 * 1 / 0.47 would say 2,140
    tokens/s). Both rates say 0, as they do for none; they disagreed (per token 0.47 ms, per second 0)."""
    for n_predict in (0, 1):
        timings = _completion(server, n_predict=n_predict, ignore_eos=True)["timings"]
        assert timings["predicted_n"] == n_predict, timings
        assert timings["predicted_per_second"] == 0 and timings["predicted_per_token_ms"] == 0, timings
