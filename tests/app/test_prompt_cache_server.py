"""llama.cpp's prompt cache through the server (`serve --cache-ram`, models/prompt_store.py): an editor's inline
completion after a chat request takes its prompt's KV cache back from host memory instead of prefilling it again.
In process, over the embedded model."""
from contextlib import contextmanager

import pytest
from server_process import in_process
from test_server_protocols import llama_vim_body


@contextmanager
def served(engine, repo, cache_ram_mib: int):
    from prompts import index_repository

    engine.clear_prefix_cache()     # (the engine is shared: an earlier test's prompt must not lend this one a prefix)
    engine.keep_prompts(cache_ram_mib)
    try:
        with in_process(engine, index_repository(repo)) as client:
            yield client
    finally:
        engine.keep_prompts(0)
        engine.clear_prefix_cache()


def completion_chat_completion(client, served_repo) -> tuple[dict, dict]:
    """The timings of an inline completion in geometry.py, and of the same one after a chat request."""
    text = (served_repo / "shapes" / "geometry.py").read_text()
    body = llama_vim_body(text[:text.index("def ")], "", text[text.index("def "):], n_predict=2,
                          input_extra=[], id_slot=-1, response_fields=[])
    first = client.post("/infill", json=body)
    assert first.status_code == 200, first.text
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "What is a shape?"}],
                                                     "max_tokens": 2})
    assert chat.status_code == 200, chat.text
    again = client.post("/infill", json=body)
    assert again.status_code == 200, again.text
    return first.json()["timings"], again.json()["timings"]


def test_an_inline_completion_after_a_chat_request_restores_its_prompt(engine, served_repo):
    with served(engine, served_repo, 64) as client:
        first, again = completion_chat_completion(client, served_repo)
    # (prefill starts are bucketed: a few of the last tokens may be prefilled again)
    assert first["cache_n"] == 0, first
    assert again["cache_n"] + again["prompt_n"] == first["prompt_n"] and again["prompt_n"] < 16, (first, again)


def test_without_the_prompt_cache_the_chat_request_costs_the_prompt(engine, served_repo):
    with served(engine, served_repo, 0) as client:
        first, again = completion_chat_completion(client, served_repo)
    assert again["cache_n"] < first["prompt_n"] // 4, (first, again)


def test_serve_keeps_prompts_after_its_warm_up(serve_options, monkeypatch):
    """`serve --cache-ram` reaches the engine on its own thread, after the warm-up's filler prompts."""
    from codecomplete.server import serve

    monkeypatch.setattr(serve, "_warm_up", lambda session, budget, warmer, cache_ram_mib, **_: cache_ram_mib)
    for given, expected in (([], 8192), (["--cache-ram", "-1"], -1), (["--cache-ram", "0"], 0)):
        assert serve_options(*given)["warm_up"]() == expected


@pytest.mark.parametrize("value", ["-2", "x", "1.5"])
def test_a_bad_cache_ram_is_a_usage_error(value, capsys):
    from codecomplete.cli import build_serve_parser

    with pytest.raises(SystemExit) as stopped:
        build_serve_parser().parse_args(["--cache-ram", value])
    assert stopped.value.code == 2 and "--cache-ram" in capsys.readouterr().err


def test_a_request_without_cache_reuse_takes_back_the_exact_prompt_an_approximate_one_held(engine, served_repo):
    """A prompt saved exact, then one holding it whole whose cache reuse (`n_cache_reuse`) moved K/V inside it, saved
    too: the first is kept, and a request without cache reuse takes it back instead of the second's exact prefix."""
    import random

    rng = random.Random(0)
    part = lambda n: [rng.randrange(100, 40000) for _ in range(n)]   # noqa: E731
    kept, dropped, run, tail, other, unrelated = part(40), part(5), part(20), part(110), part(30), part(30)
    exact = kept + run + tail      # (so long that its 40 tokens shared with `kept + dropped + run` are under a quarter)
    with served(engine, served_repo, 64) as client:
        def complete(prompt: list[int], **fields) -> dict:
            answer = client.post("/completion", json={"prompt": prompt, "n_predict": 1, "temperature": 0, **fields})
            assert answer.status_code == 200, answer.text
            return answer.json()["timings"]

        for prompt in (exact, other, kept + dropped + run):     # `exact` saved, then `other`
            complete(prompt)
        assert complete(exact + [7, 8], n_cache_reuse=8)["cache_n"] >= len(kept + run)   # `run` moved
        complete(unrelated)                                     # saves the moved prompt, holding `exact` whole
        back = complete(exact + [9])
    # (prefill starts are bucketed: a few of the last tokens may be prefilled again)
    assert back["cache_n"] + back["prompt_n"] == len(exact) + 1 and back["prompt_n"] < 16, back
