"""logit_bias on the llama.cpp and OpenAI routes (a ban, a push, llama.cpp's text tokens and `false`), llama.cpp's
ignore_eos (the end-of-generation tokens banned: the answer runs to n_predict), and bad biases refused with a 400.
In process, on the embedded model, greedy: each test asks for a token or two."""
import math

import pytest
import torch
from server_process import in_process

from models import GenerationConfig
from models.sampling import bias_vector

CODE = "def add(a, b):\n    return a + b\n"
CODE_IDS = [1604, 803, 24, 81, 28, 278, 727, 472, 1003, 253, 1232, 278, 198]   # (no healing): greedy goes on with
NEWLINE, EQUALS = 198, 45                                                       # "\n"; "=" is one token
SAID_YES = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\nYes."     # greedy ends: <|im_end|>


@pytest.fixture(scope="module")
def client(engine, repo, tmp_path_factory):
    from prompts import index_repository

    with in_process(engine, index_repository(repo, cache_dir=tmp_path_factory.mktemp("bias-index"))) as client:
        yield client


def completion(client, **body) -> dict:
    response = client.post("/completion", json={"n_predict": 1, "temperature": 0, "return_tokens": True, **body})
    assert response.status_code == 200, response.text
    return response.json()


def first_token(client, **body) -> int:
    return completion(client, prompt=CODE_IDS, **body)["tokens"][0]


def test_a_llama_cpp_ban_changes_the_greedy_token(client):
    assert first_token(client) == NEWLINE
    assert first_token(client, logit_bias=[[NEWLINE, False]]) != NEWLINE
    assert first_token(client, logit_bias={str(NEWLINE): False}) != NEWLINE
    assert first_token(client, logit_bias=[[NEWLINE, -1000]]) != NEWLINE


def test_a_llama_cpp_text_token_biases_each_token_of_its_tokenization(client, engine):
    assert engine.tokenizer.encode(CODE) == CODE_IDS and engine.tokenizer.encode("\n") == [NEWLINE]
    assert first_token(client, logit_bias=[["\n", False]]) != NEWLINE
    assert first_token(client, logit_bias={"\n": False}) != NEWLINE
    # a push: " Hello" (its one token) wins over everything
    (hello,) = engine.tokenizer.encode(" Hello", add_special_tokens=False)
    assert first_token(client, logit_bias=[[" Hello", 100]]) == hello


def test_openai_logit_bias_bans_and_pushes_tokens(client):
    body = {"model": "any", "prompt": CODE_IDS, "max_tokens": 1, "temperature": 0}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    banned = client.post("/v1/completions", json={**body, "logit_bias": {str(NEWLINE): -100}}).json()
    assert plain == "\n" and banned["choices"][0]["text"] not in ("\n", ""), banned
    pushed = client.post("/v1/completions", json={**body, "logit_bias": {str(EQUALS): 100}}).json()
    assert pushed["choices"][0]["text"] == "=", pushed
    chat = {"model": "any", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 1,
            "temperature": 0, "logit_bias": {str(EQUALS): 100}}
    assert client.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"] == "="


def test_ignore_eos_runs_to_n_predict_where_the_model_would_end(client, engine):
    ended = completion(client, prompt=SAID_YES, n_predict=4)
    assert ended["stop_type"] == "eos" and ended["tokens"] == [2] and ended["content"] == ""
    ignored = completion(client, prompt=SAID_YES, n_predict=4, ignore_eos=True)
    assert ignored["stop_type"] == "limit" and ignored["tokens_predicted"] == 4, ignored
    assert not set(ignored["tokens"]) & set(engine.eos_token_ids) and ignored["content"]


def test_a_request_that_bans_every_token_is_a_400(client, engine):
    """Every token banned (with ignore_eos, every token but the ends): softmax of all -inf is NaN, and the draw took
    token 0 (here the end of text, elsewhere any token). llama.cpp does the same; here the request is refused."""
    vocab = engine.model.config.vocab_size
    ends = set(engine.eos_token_ids)
    for body in ({"logit_bias": [[i, False] for i in range(vocab)]},
                 {"logit_bias": {str(i): False for i in range(vocab) if i not in ends}, "ignore_eos": True}):
        for path in ("/completion", "/infill"):
            prompt = {"prompt": CODE_IDS} if path == "/completion" else {"input_prefix": "x = ", "input_suffix": ""}
            response = client.post(path, json={**prompt, "n_predict": 2, **body})
            assert response.status_code == 400, response.text
            assert "every token" in response.json()["error"]["message"], response.text
    assert first_token(client, logit_bias=[[i, False] for i in range(vocab) if i != EQUALS]) == EQUALS
    with pytest.raises(ValueError, match="every token"):
        bias_vector(GenerationConfig(logit_bias=tuple((i, -math.inf) for i in range(8))), 8, torch.device("cpu"))


def test_bans_that_leave_no_way_to_heal_the_prompt_turn_healing_off(client, engine):
    """A prompt ending in a newline heals it (the model writes it again first); a client that bans every token
    beginning with a newline (one line at a time) left healing nothing to draw: NaN, token 0, an empty answer. Without
    healing the model goes on from the newline, as llama.cpp (which does not heal) does."""
    from models.healing import vocabulary_bytes

    table = vocabulary_bytes(engine.tokenizer)
    newlines = [[i, False] for i in table.allowed(b"\n")]
    for path, prompt in (("/completion", {"prompt": "print(x)\n"}),
                         ("/infill", {"input_prefix": "print(x)\n", "input_suffix": ""})):
        answer = client.post(path, json={**prompt, "n_predict": 3, "temperature": 0, "return_tokens": True,
                                         "ignore_eos": True, "logit_bias": newlines}).json()
        assert answer["stop_type"] == "limit" and len(answer["tokens"]) == 3, answer
        assert not set(answer["tokens"]) & {i for i, _ in newlines} and answer["content"], answer
    banned = {i for i, _ in newlines} - {NEWLINE}
    assert table.can_write(b"\n", excluding=banned) and not table.can_write(b"\n", excluding=banned | {NEWLINE})
    # a token inside the prefix whose rest only banned tokens can write is not offered
    (x,) = engine.tokenizer.encode("x", add_special_tokens=False)
    assert x in table.allowed(b"x\n") and x not in table.allowed(b"x\n", excluding={i for i, _ in newlines})


def test_every_end_of_generation_token_ends_a_raw_completion_and_ignore_eos_bans_them_all(client):
    """llama.cpp's end-of-generation set (llama_vocab_is_eog) holds the FIM pad, repo and file-separator tokens too:
    the embedded model's <reponame> (4). A raw /completion ran past it, and with ignore_eos it was not banned."""
    REPONAME = 4
    ended = completion(client, prompt=CODE_IDS, n_predict=3, logit_bias=[[REPONAME, 100]])
    assert ended["tokens"] == [REPONAME] and ended["stop_type"] == "eos", ended
    ignored = completion(client, prompt=CODE_IDS, n_predict=3, logit_bias=[[REPONAME, 100]], ignore_eos=True)
    assert REPONAME not in ignored["tokens"] and ignored["stop_type"] == "limit", ignored


def test_biases_of_one_token_add_up_and_bans_stay_bans():
    config = GenerationConfig(logit_bias=((3, 1.5), (3, 2.0), (0, -math.inf), (5, -4.0)))
    bias = bias_vector(config, 8, torch.device("cpu"))
    assert bias.tolist() == [-math.inf, 0.0, 0.0, 3.5, 0.0, -4.0, 0.0, 0.0]
    assert bias_vector(GenerationConfig(), 8, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bias_vector(GenerationConfig(logit_bias=((8, 1.0),)), 8, torch.device("cpu"))


def test_a_bias_past_float32_pushes_the_token_and_never_makes_nan(client):
    """llama.cpp's biases are any number: 1e39 (or two of 3e38 on one token) overflowed float32 to +inf, whose softmax
    is NaN, and the draw took token 0 (the embedded model's end of text) instead of the token pushed."""
    for bias in ([[EQUALS, 1e39]], [[EQUALS, 3e38], [EQUALS, 3e38]], [[EQUALS, 1e308], [EQUALS, 1e308], [EQUALS, 1]]):
        for temperature in (0, 0.8):
            assert first_token(client, logit_bias=bias, temperature=temperature, seed=1) == EQUALS, (bias, temperature)
    config = GenerationConfig(logit_bias=((3, 1e39), (3, 1e39), (5, -1e39), (6, 1e300), (6, -math.inf)))
    bias = bias_vector(config, 8, torch.device("cpu"))
    assert bias[3] == torch.finfo(torch.float32).max and bias[6] == -math.inf and torch.isfinite(bias[:6]).all()


@pytest.mark.parametrize("speculate", [0, 3])
def test_the_engine_bans_a_token_in_plain_and_speculative_decoding(engine, speculate):
    """Every step is biased, drafts verified against the biased choice too: the banned token never comes."""
    ids = engine.tokenizer.encode(CODE * 3)       # repeated: prompt lookup drafts from it
    plain = engine.generate(ids, GenerationConfig(max_new_tokens=12, speculate=speculate))
    token = plain.token_ids[4]                    # the comma of "add(a, b)" written again
    banned = engine.generate(ids, GenerationConfig(max_new_tokens=12, speculate=speculate,
                                                   logit_bias=((token, -math.inf),)))
    assert token not in banned.token_ids and len(banned.token_ids) == 12
    assert (banned.timings.drafted_tokens > 0) == (speculate > 0)


@pytest.mark.parametrize("path, bias, words", [
    ("/v1/completions", {"28": 101}, ["outside -100..100"]),
    ("/v1/completions", {"28": -100.5}, ["outside -100..100"]),
    ("/v1/completions", {"49152": 1}, ["token id 49152", "outside the vocabulary"]),
    ("/v1/completions", {"abc": 1}, ["not a token id"]),
    ("/v1/completions", {"28": True}, ["finite number"]),
    ("/v1/completions", {"28": "1"}, ["finite number"]),
    ("/v1/chat/completions", {"-1": 1}, ["not a token id"]),
    ("/completion", [[49152, 1]], ["token id 49152", "outside the vocabulary"]),
    ("/completion", [[-1, 1]], ["token id -1"]),
    ("/completion", {"-1": 1}, ["token id -1"]),
    ("/completion", [[28, True]], ["finite number or false"]),
    ("/completion", [[28, "x"]], ["logit_bias[0]"]),
    ("/completion", [28], ["[token, bias] pair"]),
    ("/completion", [[28, 1, 2]], ["[token, bias] pair"]),
    ("/completion", [[None, 1]], ["id or text"]),
])
def test_a_bad_logit_bias_is_a_400_naming_it(client, path, bias, words):
    body = ({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "x"})
    response = client.post(path, json={**body, "max_tokens": 1, "logit_bias": bias})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "logit_bias" in message and all(word in message for word in words), message
