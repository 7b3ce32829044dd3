"""`codecomplete serve` against the adversarial sweep's seventeenth round (bench/results/NOTES.md: the numbers the
product reports, and whether they are true), on a real server and its real socket."""
import math
import time

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


def test_the_command_lines_live_count_through_a_server_counts_tokens_not_pieces_of_text(server):
    """The live line (`14.4 tok/s · 35 tokens`) counts with the engine's counters: one token, then one a decode step
    and one an accepted draft. Through a server it had none and counted one token a piece of text, so a character of
    several byte tokens (CJK, emoji) or a step's accepted drafts counted once: `6.5 tok/s · 17 tokens` through the
    server where the answer was 40 tokens at 15.8 tok/s (15.4 and 38 live without it). The server's text events now
    carry the counters (native.py), and the remote generation's `progress` gives them to the live line."""
    from codecomplete import client
    from codecomplete.session import Sampling

    remote = client.RemoteSession(server.url, client._get_info(server.url, None), None, None)
    generation = remote.raw("春天来了，花儿开了。我们一起去公园散步，看到了", sampling=Sampling(max_tokens=24))
    counted, texts = [], []

    def on_text(delta: str) -> None:
        texts.append(delta)
        running = generation.progress()      # as render.LiveView reads it at each text
        counted.append(1 + running.decode_steps + running.accepted_tokens)
    result = generation.run(on_text=on_text)
    assert texts and "".join(texts) == result.text
    assert counted == sorted(counted) and counted[-1] <= len(result.token_ids), (counted, result.token_ids)
    # (at most the bytes of one unfinished character after the last text)
    assert counted[-1] >= len(result.token_ids) - 3, (counted, result.token_ids)
    assert len(texts) < counted[-1], (texts, counted)       # several byte tokens a character: pieces read low
    assert generation.progress().healing_tokens == result.healing_tokens


def test_a_suggestion_queued_behind_another_request_says_how_long_it_waited(script, server, served_repo):
    """Through a server busy with another request (an editor's), the command line's suggestion waited seconds for the
    engine and said `first token 91 ms`: the engine's time from taking the request, the wait nowhere (the server's log
    had it: `first 5570.6 ms (queued 5474.6, ...)`). The result now carries the wait (`timings.queued_s`, 0 in
    process) and the closing line says it beside the first token."""
    import json
    import subprocess
    import threading

    from codecomplete import render
    from models import GenerationResult, Timings

    busy = threading.Thread(target=_completion, args=(server,), kwargs={"n_predict": 40, "ignore_eos": True})
    busy.start()
    try:
        time.sleep(1.0)         # (the long request is running: a 40-token answer takes 2-4 s here)
        proc = subprocess.run([str(script), str(served_repo), "--file", "app.py", "--max-tokens", "2",
                               "--context-tokens", "300", "--json"], capture_output=True, text=True,
                              env={**server.env, "CODECOMPLETE_SERVER": server.url}, timeout=300)
    finally:
        busy.join()
    assert proc.returncode == 0, proc.stderr
    timings = json.loads(proc.stdout)["timings"]
    assert timings["queued_s"] >= 0.5, timings
    assert timings["ttft_ms"] < 1000 * timings["queued_s"] + 60_000
    line = render.summary_line(GenerationResult("x", [1, 2], 5, 0, "length", Timings(**timings)))
    shown = (f"first token {render._duration(timings['ttft_ms'] / 1000)} · queued "
             f"{render._duration(timings['queued_s'])} at the server · ")
    assert shown in line, line
    alone = render.summary_line(GenerationResult("x", [1, 2], 5, 0, "length", Timings(ttft_ms=90.0)))
    assert "queued" not in alone, alone


def test_props_and_generation_settings_say_the_servers_own_limit(table_server):
    """A server started with --max-tokens 64 (the test server) gives a request without n_predict 64 tokens, as
    llama.cpp's `-n 64` does, and llama.cpp's /props says so (default_generation_settings.params.n_predict 64), as does
    an answer's generation_settings. Both said -1 (unlimited) beside an answer that stopped at 64 (`stop_type`
    limit). An explicit n_predict is said as sent (-1 too: llama.cpp's slot shows its request's). (On conftest's
    table server: `server`'s options, hundreds of tokens a second; the counts are the server's, whatever the
    weights.)"""
    server = table_server
    props = httpx.get(server.url + "/props", timeout=60).json()
    assert props["default_generation_settings"]["params"]["n_predict"] == 64, props
    answer = _completion(server, samplers=[], ignore_eos=True)
    assert (answer["tokens_predicted"], answer["stop_type"]) == (64, "limit"), answer
    assert answer["generation_settings"]["n_predict"] == 64, answer["generation_settings"]
    for sent in (3, -1):
        settings = _completion(server, n_predict=sent, samplers=[], ignore_eos=True)["generation_settings"]
        assert settings["n_predict"] == sent, settings



def test_ollamas_listings_name_the_weights_the_server_computes_with(script, cli_env, served_repo, tmp_path):
    """Ollama's `details.quantization_level` (/api/tags, /api/show, /api/ps; `ollama list`-style clients show it) is
    the weights' type. It said the activations' (`float32`) where the projections ran in bfloat16 (`--weights bf16`,
    a bfloat16 CPU's default: the log's `float32, bfloat16 weights`), and so it would of int8 or int4 weights."""
    from server_process import ServerProcess

    server = ServerProcess(script, served_repo, cli_env, tmp_path, "--weights", "bf16", "--context-tokens", "256",
                           "--max-tokens", "8")
    try:
        engine = httpx.get(server.url + "/codecomplete/v1/info", timeout=60).json()["engine"]
        assert (engine["dtype"], engine["matmul_dtype"]) == ("float32", "bfloat16"), engine
        listed = [httpx.get(server.url + "/api/tags", timeout=60).json()["models"][0]["details"],
                  httpx.post(server.url + "/api/show", json={"model": "x"}, timeout=60).json()["details"],
                  httpx.get(server.url + "/api/ps", timeout=60).json()["models"][0]["details"]]
        assert [details["quantization_level"] for details in listed] == ["bfloat16"] * 3, listed
        assert server.stop() == 0
    finally:
        server.kill()


def test_tokens_cached_counts_what_the_cache_holds_and_never_more_than_it_can(table_server):
    """llama.cpp's tokens_cached is its slot's n_past: the prompt and the answer's tokens fed back, the last one
    sampled and never fed. It was the prompt plus every token, one more, so that an answer that filled the context
    said 577 of a 576-token cache (`n_ctx` in /props). (On conftest's table server: `server`'s options and context,
    hundreds of tokens a second; the counts are the server's, whatever the weights.)"""
    server = table_server
    n_ctx = httpx.get(server.url + "/props", timeout=60).json()["default_generation_settings"]["n_ctx"]
    for n_predict in (0, 1, 3):
        answer = _completion(server, n_predict=n_predict, ignore_eos=True)
        assert answer["tokens_predicted"] == n_predict, answer
        assert answer["tokens_cached"] == answer["tokens_evaluated"] + max(n_predict - 1, 0), answer
    prompt = [1604] * (n_ctx - 12)          # (token ids: the context fills after a few new tokens)
    answer = _completion(server, prompt=prompt, n_predict=1000, ignore_eos=True, samplers=[])
    assert answer["truncated"] is True and answer["stop_type"] == "limit", answer
    assert answer["tokens_cached"] <= n_ctx, (answer["tokens_cached"], n_ctx)
    assert answer["tokens_cached"] == answer["tokens_evaluated"] + answer["tokens_predicted"] - 1, answer


def test_a_servers_warm_up_pays_for_the_attention_after_a_cached_prefix(engine, cli_env):
    """An editor's request that reuses a cached prefix and prefills a few new tokens runs the attention with a mask
    aligned bottom-right (models/attention.py), whose module torch imports at its first use (with torch._dynamo):
    1.0-1.6 s inside the first such request after every start on this CPU (`prompt_n` 2, `prompt_ms` 1075 where the
    next ones take ~90; the REPL's first follow-up: first token 2.0 s). Not one of the warm-up's generations reached
    it (a first prompt has no prefix; the prefill spans start from an empty cache). The server's warm-up now imports
    it before it serves, and its log says so."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from models import load_model\n"
            "from codecomplete.session import Session\n"
            "from codecomplete.server import serve\n"
            "session = Session(load_model(device='cpu', max_context=256))\n"
            "assert 'torch.nn.attention.bias' not in sys.modules\n"
            "said = serve._warm_up(session, 128, None, 0)\n"
            "print(said)\n"
            "assert 'torch.nn.attention.bias' in sys.modules, said\n")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the attention after a cached prefix (" in proc.stdout, proc.stdout
