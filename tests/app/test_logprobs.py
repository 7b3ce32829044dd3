"""Token log-probabilities on the OpenAI routes: the official openai client reading them from a real server on a
socket (completions' `logprobs: N`, chat's `logprobs` + `top_logprobs`, streamed and not), the numbers a float64
log-softmax of the model's own logits, and bad values refused with a 400."""
import math

import httpx
import pytest
import torch
from openai import OpenAI

from models import GenerationConfig

CODE_IDS = [1604, 803, 24, 81, 28, 278, 727, 472, 1003, 253, 1232, 278, 198]     # "def add(a, b):\n return a + b\n"


def test_openai_client_reads_completion_logprobs_streamed_or_not(server):
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    answer = client.completions.create(model="any", prompt=CODE_IDS, max_tokens=5, temperature=0, logprobs=3)
    choice, n = answer.choices[0], answer.usage.completion_tokens
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == n == 5
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:i])) for i in range(n)]
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert value <= 0 and 3 <= len(top) <= 4 and top[token] == value
        assert value == max(top.values())               # greedy: the chosen token is the likeliest
    chunks = list(client.completions.create(model="any", prompt=CODE_IDS, max_tokens=5, temperature=0, logprobs=3,
                                            stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs and c.choices[0].logprobs.tokens]
    assert sum((c.tokens for c in streamed), []) == logprobs.tokens
    assert sum((c.text_offset for c in streamed), []) == logprobs.text_offset
    assert sum((c.token_logprobs for c in streamed), []) == pytest.approx(logprobs.token_logprobs, abs=1e-5)
    plain = client.completions.create(model="any", prompt=CODE_IDS, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("prompt, case", [
    ("def fibona", "the first token ends the healed prompt"),       # "onacci": "ona" was the prompt's
    ("emojis = ['😀', '🎉', '🚀', '", "a character in several tokens"),  # an emoji's bytes, 3 tokens
])
def test_text_offsets_are_where_each_tokens_text_begins_in_the_returned_text(server, prompt, case):
    """text[text_offset[i]:text_offset[i + 1]] is the text token i made: the whole token, but for the healed
    prompt's characters a first token repeats, and a character's bytes, which make it at its last token. Summing
    the tokens' lengths put every later token past its text. Streamed chunks carry the same offsets."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    request = dict(model="any", prompt=prompt, max_tokens=8, temperature=0, logprobs=1)
    choice = client.completions.create(**request).choices[0]
    text, tokens, offsets = choice.text, choice.logprobs.tokens, choice.logprobs.text_offset
    if case == "the first token ends the healed prompt":
        assert not text.startswith(tokens[0]), (text, tokens)
    else:
        assert any("\ufffd" in token for token in tokens), (text, tokens)
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] <= len(text), (text, offsets)
    made = [text[start:end] for start, end in zip(offsets, offsets[1:] + [len(text)])]
    for i, (token, piece) in enumerate(zip(tokens, made)):
        if "\ufffd" in token:                  # a character's bytes: it is made at the last of them
            assert len(piece) <= 1, (i, tokens, made)
        elif i == 0:
            assert token.endswith(piece) and piece, (tokens, made)
        else:
            assert token == piece, (i, tokens, made)
    chunks = list(client.completions.create(**request, stream=True))
    assert sum((c.choices[0].logprobs.text_offset for c in chunks if c.choices[0].logprobs), []) == offsets


def test_openai_client_reads_chat_logprobs(server):
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    question = [{"role": "user", "content": "Say yes."}]
    answer = client.chat.completions.create(model="any", messages=question, max_tokens=4, temperature=0,
                                            logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert "".join(c.token for c in content).startswith(answer.choices[0].message.content)
    for c in content:
        assert len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == c.logprob    # greedy: the likeliest
        assert bytes(c.bytes).decode(errors="replace") == c.token
    chunks = list(client.chat.completions.create(model="any", messages=question, max_tokens=4, temperature=0,
                                                 logprobs=True, top_logprobs=2, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [c.token for c in content]


def test_logprobs_are_the_log_softmax_of_the_models_logits(engine):
    """Each token's logprob and its top alternatives', against a float64 log-softmax of the logits the model gives
    for the prompt and the tokens before it (a fresh prefill each), sampled at temperature 1 with a bias on."""
    config = GenerationConfig(max_new_tokens=4, logprobs=4, temperature=1.0, seed=7, speculate=0,
                              logit_bias=((198, -math.inf),))       # the bias is the sampler's: not in the numbers
    result = engine.generate(CODE_IDS, config)
    assert len(result.logprobs) == len(result.token_ids) == 4
    for i, (token, entry) in enumerate(zip(result.token_ids, result.logprobs)):
        engine.clear_prefix_cache()
        logits = engine._prefill(CODE_IDS + result.token_ids[:i], 0, 0)                  # (1, V)
        expected = logits[0].double().log_softmax(dim=-1)
        top = torch.topk(expected, 4)
        assert entry.logprob == pytest.approx(expected[token].item(), abs=2e-3)
        assert [i for i, _ in entry.top] == top.indices.tolist()
        assert [v for _, v in entry.top] == pytest.approx(top.values.tolist(), abs=2e-3)
    engine.clear_prefix_cache()


def test_a_tokens_text_is_its_piece_as_the_answer_writes_it():
    """A SentencePiece tokenizer (CodeLlama's kind): "▁x" is " x" in the answer, the text the bytes say, where decoding
    the token alone strips the space a text begins with ("x", and "▁" became "")."""
    from transformers import LlamaTokenizer

    from codecomplete.server.logprobs import chat_logprobs, completion_logprobs
    from models.generation import TokenLogprobs

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", "a", "d", "x", "=", "▁a", "▁ad", "▁add", "▁x"]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[("▁", "a"), ("▁a", "d"), ("▁ad", "d"), ("▁", "x")])
    ids = tokenizer.encode("x = add é", add_special_tokens=False)        # ▁x ▁ = ▁add ▁ <0xC3> <0xA9>
    entries = [TokenLogprobs(-1.0, ((i, -1.0),)) for i in ids]
    words = [" x", " ", "=", " add", " ", "\ufffd", "\ufffd"]
    legacy = completion_logprobs(tokenizer, ids, entries)
    assert legacy["tokens"] == words
    assert [list(top) for top in legacy["top_logprobs"]] == [[word] for word in words]
    content = chat_logprobs(tokenizer, ids, entries, 1)["content"]
    assert [c["token"] for c in content] == [c["top_logprobs"][0]["token"] for c in content] == words
    assert b"".join(bytes(c["bytes"]) for c in content) == " x = add é".encode()
    eos = chat_logprobs(tokenizer, [2], [TokenLogprobs(-1.0, ())], 0)["content"][0]
    assert eos["token"] == "</s>" and bytes(eos["bytes"]) == b"</s>"     # a special token: its text


@pytest.mark.parametrize("path, body, words", [
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, ["logprobs", "0..5"]),
    ("/v1/completions", {"prompt": "x", "logprobs": -1}, ["logprobs", "0..5"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                              "top_logprobs": 21}, ["top_logprobs", "0..20"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
     ["top_logprobs", "logprobs: true"]),
])
def test_bad_logprobs_are_a_400(server, path, body, words):
    response = httpx.post(server.url + path, json={**body, "max_tokens": 1}, timeout=300)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert all(word in message for word in words), message
