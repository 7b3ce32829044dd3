"""Token log-probabilities from a real server on a socket: the OpenAI routes through the official openai client
(completions' `logprobs: N`, chat's `logprobs` + `top_logprobs`), llama.cpp's `n_probs` (and `post_sampling_probs`)
on /completion and /infill and Ollama's `logprobs` + `top_logprobs` with the bodies their clients send, streamed and
not; the numbers a float64 log-softmax of
the model's own logits (or softmax of what the sampler chain left), and bad values refused with a 400."""
import json
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
    prompt's characters a first token repeats; a character's bytes make it at their last token, whose text it is (the
    ones before it "", as vLLM writes them). Summing the tokens' lengths put every later token past its text.
    Streamed chunks carry the same offsets."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    request = dict(model="any", prompt=prompt, max_tokens=8, temperature=0, logprobs=1)
    choice = client.completions.create(**request).choices[0]
    text, tokens, offsets = choice.text, choice.logprobs.tokens, choice.logprobs.text_offset
    if case == "the first token ends the healed prompt":
        assert not text.startswith(tokens[0]), (text, tokens)
    else:
        assert "" in tokens and not any("\ufffd" in token for token in tokens), (text, tokens)
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] <= len(text), (text, offsets)
    made = [text[start:end] for start, end in zip(offsets, offsets[1:] + [len(text)])]
    for i, (token, piece) in enumerate(zip(tokens, made)):
        if i == 0 and case == "the first token ends the healed prompt":
            assert token.endswith(piece) and piece, (tokens, made)
        else:
            assert token == piece, (i, tokens, made)
    chunks = list(client.completions.create(**request, stream=True))
    assert sum((c.choices[0].logprobs.text_offset for c in chunks if c.choices[0].logprobs), []) == offsets


def test_completion_logprobs_list_the_tokens_a_stop_cut_as_vllm_does(server):
    """A stop string cuts the text, not the tokens: the token that wrote the stop word is listed (vLLM's token ids
    and logprobs keep it), with its offset where it began, the end of the returned text; streamed the same."""
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    request = dict(model="any", prompt="def add(a, b):\n    return", max_tokens=8, temperature=0, logprobs=1,
                   stop=["\n"])
    choice = client.completions.create(**request).choices[0]
    text, tokens, offsets = choice.text, choice.logprobs.tokens, choice.logprobs.text_offset
    assert choice.finish_reason == "stop" and "\n" not in text and text, (text, tokens)
    assert "".join(tokens) == text + "\n", (text, tokens)           # " a + b" and the "\n" the stop cut
    assert offsets == [sum(map(len, tokens[:i])) for i in range(len(tokens))] and offsets[-1] == len(text)
    chunks = list(client.completions.create(**request, stream=True))
    listed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs and c.choices[0].logprobs.tokens]
    assert sum((c.tokens for c in listed), []) == tokens and sum((c.text_offset for c in listed), []) == offsets


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


def byte_fallback_tokenizer():
    """A SentencePiece-style tokenizer (CodeLlama's kind) with byte tokens <0x00>..<0xFF> (ids 3..258) and a few
    words."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", "a", "d", "x", "=", "▁a", "▁ad", "▁add", "▁x"]:
        vocab.setdefault(piece, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=[("▁", "a"), ("▁a", "d"), ("▁ad", "d"), ("▁", "x")])


def test_a_tokens_text_is_its_piece_as_the_answer_writes_it():
    """A SentencePiece tokenizer (CodeLlama's kind): "▁x" is " x" in the answer, the text the bytes say, where decoding
    the token alone strips the space a text begins with ("x", and "▁" became ""). A character written in several byte
    tokens (<0xC3> <0xA9>: "é") is the text of the token that completes it, the tokens before it "", as vLLM writes
    them (v1/engine/logprobs.py, _correct_decoded_token): each was U+FFFD, and the tokens did not spell the answer.
    An alternative is the text it would have written there. `bytes` stay each token's own (OpenAI's: joined, they
    spell the text)."""
    from codecomplete.server.logprobs import chat_logprobs, completion_logprobs
    from models.generation import TokenLogprobs

    tokenizer = byte_fallback_tokenizer()
    ids = tokenizer.encode("x = add é", add_special_tokens=False)        # ▁x ▁ = ▁add ▁ <0xC3> <0xA9>
    entries = [TokenLogprobs(-1.0, ((i, -1.0),)) for i in ids]
    words = [" x", " ", "=", " add", " ", "", "é"]
    legacy = completion_logprobs(tokenizer, ids, entries)
    assert legacy["tokens"] == words
    assert [list(top) for top in legacy["top_logprobs"]] == [[word] for word in words]
    content = chat_logprobs(tokenizer, ids, entries, 1)["content"]
    assert [c["token"] for c in content] == [c["top_logprobs"][0]["token"] for c in content] == words
    assert b"".join(bytes(c["bytes"]) for c in content) == " x = add é".encode()
    assert [bytes(c["bytes"]) for c in content][-2:] == [b"\xc3", b"\xa9"]
    assert "".join(legacy["tokens"]) == " x = add é"
    lone = [ids[-2], ids[0]]                     # <0xC3>, then " x": the byte never completes a character
    assert completion_logprobs(tokenizer, lone, entries[:2])["tokens"] == ["", " x"]
    choices = [TokenLogprobs(-1.0, ((ids[-1], -1.0), (ids[0], -2.0)))]       # after <0xC3>: <0xA9> or " x"
    top = chat_logprobs(tokenizer, ids[-2:], [entries[-2], *choices], 2)["content"][1]["top_logprobs"]
    assert [t["token"] for t in top] == ["é", " x"] and [t["bytes"] for t in top] == [[0xA9], list(b" x")]
    eos = chat_logprobs(tokenizer, [2], [TokenLogprobs(-1.0, ())], 0)["content"][0]
    assert eos["token"] == "</s>" and bytes(eos["bytes"]) == b"</s>"     # a special token: its text


def test_legacy_top_logprobs_give_each_alternative_a_name_of_its_own():
    """Legacy top_logprobs is a map from names to logprobs. Byte tokens that leave a character unfinished all write
    "" there (vLLM's text for them), so they overwrote one another and fewer than N came back, the chosen token's
    logprob among those replaced. The chosen token keeps its name in `tokens`; an alternative whose text is not its
    own ("", or U+FFFD where it breaks the character before it) is named by its bytes as OpenAI's legacy API names
    such tokens ("bytes:\\xc3"); one completing the pending character is that character. Chat's list keeps each
    alternative apart by its own bytes."""
    from codecomplete.server.logprobs import chat_logprobs, completion_logprobs
    from models.generation import TokenLogprobs

    tokenizer = byte_fallback_tokenizer()
    x, c3, e2, a9 = tokenizer.convert_tokens_to_ids(["▁x", "<0xC3>", "<0xE2>", "<0xA9>"])
    top = ((x, -0.5), (c3, -1.0), (e2, -2.0), (a9, -3.0))
    legacy = completion_logprobs(tokenizer, [x], [TokenLogprobs(-0.5, top)])
    assert legacy["top_logprobs"] == [{" x": -0.5, "bytes:\\xc3": -1.0, "bytes:\\xe2": -2.0, "bytes:\\xa9": -3.0}]
    chosen_byte = completion_logprobs(tokenizer, [c3], [TokenLogprobs(-1.0, top)])
    assert chosen_byte["tokens"] == [""]
    assert chosen_byte["top_logprobs"] == [{" x": -0.5, "": -1.0, "bytes:\\xe2": -2.0, "bytes:\\xa9": -3.0}]
    after_c3 = completion_logprobs(tokenizer, [c3, a9], [TokenLogprobs(-1.0, top), TokenLogprobs(-3.0, top)])
    assert after_c3["tokens"] == ["", "é"]
    assert after_c3["top_logprobs"][1] == {" x": -0.5, "bytes:\\xc3": -1.0, "bytes:\\xe2": -2.0, "é": -3.0}
    assert completion_logprobs(tokenizer, [e2], [TokenLogprobs(-4.0, top[:2])])["top_logprobs"] == \
        [{" x": -0.5, "bytes:\\xc3": -1.0, "": -4.0}]                       # the chosen token added: N + 1
    content = chat_logprobs(tokenizer, [x], [TokenLogprobs(-0.5, top)], 4)["content"][0]
    assert [t["bytes"] for t in content["top_logprobs"]] == [list(b" x"), [0xC3], [0xE2], [0xA9]]


def test_completions_top_logprobs_list_every_byte_token_asked_for_streamed_or_not(server, engine):
    """After "emojis = ['😀', '🎉', '🚀', '" the model's likeliest tokens are pieces of emojis (b"\\xf0\\x9f", b"\\xe2",
    b"\\xe2\\x9c", ...), which all write "" there: through the OpenAI client, logprobs 5 gave 2 entries, the chosen
    token's under "" with another's logprob. Now the 5 likeliest, each under its own name (a byte token's bytes,
    "bytes:\\xe2", the chosen token's its name in `tokens`), with the model's float64 log-softmax values, and a
    stream's chunks carry the same. llama.cpp's n_probs and Ollama's top_logprobs list them apart too."""
    from models.healing import vocabulary_bytes

    pieces = vocabulary_bytes(engine.tokenizer).pieces
    prompt = engine.tokenizer.encode("emojis = ['😀', '🎉', '🚀', '", add_special_tokens=False)
    client = OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    request = dict(model="any", prompt=prompt, max_tokens=3, temperature=0, logprobs=5)
    logprobs = client.completions.create(**request).choices[0].logprobs
    context, alternatives = list(prompt), []
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        expected = torch.topk(model_logprobs(engine, context), 5)
        alternatives.append(expected.indices.tolist())
        assert len(top) == 5 and top[token] == value, (token, top)               # greedy: the chosen is among them
        assert sorted(top.values(), reverse=True) == pytest.approx(expected.values.tolist(), abs=2e-3)
        context.append(expected.indices[0].item())
    first = [(i, v) for i, v in zip(alternatives[0], logprobs.top_logprobs[0].values())]
    unfinished = [(i, v) for i, v in first[1:] if pieces[i].decode(errors="ignore").encode() != pieces[i]]
    assert len(unfinished) >= 2, [pieces[i] for i, _ in first]         # the premise: pieces that all write "" there
    for i, v in unfinished:                                             # (nothing pending before the first token)
        assert logprobs.top_logprobs[0]["bytes:" + "".join(f"\\x{b:02x}" for b in pieces[i])] == v
    chunks = list(client.completions.create(**request, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs and c.choices[0].logprobs.tokens]
    streamed = sum((c.top_logprobs for c in streamed), [])
    assert [list(top) for top in streamed] == [list(top) for top in logprobs.top_logprobs]
    assert [list(top.values()) for top in streamed] == \
        [pytest.approx(list(top.values()), abs=1e-5) for top in logprobs.top_logprobs]
    n_probs = httpx.post(server.url + "/completion", timeout=300, json={
        "prompt": prompt, "n_probs": 5, "temperature": 0.0, "n_predict": 3}).json()["completion_probabilities"]
    assert [[t["id"] for t in p["top_logprobs"]] for p in n_probs] == alternatives
    ollama = httpx.post(server.url + "/api/generate", timeout=300, json={
        "model": "m", "prompt": engine.tokenizer.decode(prompt), "raw": True, "stream": False, "logprobs": True,
        "top_logprobs": 5, "options": {"temperature": 0, "num_predict": 3}}).json()["logprobs"]
    assert all(len({bytes(t["bytes"]) for t in entry["top_logprobs"]}) == 5 for entry in ollama), ollama


def model_logprobs(engine, ids) -> torch.Tensor:
    """The model's own next-token log-probabilities (V,) float64 after `ids`, from a fresh prefill."""
    engine.clear_prefix_cache()
    logits = engine._prefill(list(ids), 0, 0)                                            # (1, V)
    engine.clear_prefix_cache()
    return logits[0].double().log_softmax(dim=-1)


def sse_events(server, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=300) as response:
        return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line]


def test_llama_cpp_n_probs_are_the_log_softmax_of_the_models_logits_streamed_or_not(server, engine):
    """/completion with n_probs, as llama.cpp's own tests send it: `completion_probabilities`, each token's id, text,
    bytes and logprob with its n_probs likeliest alternatives, in llama.cpp's field names and order. A stream's
    chunks carry the same numbers, each for the `tokens` it carries, and its final event none."""
    body = {"prompt": CODE_IDS, "n_probs": 3, "temperature": 0.0, "n_predict": 5, "return_tokens": True}
    answer = httpx.post(server.url + "/completion", json=body, timeout=300).json()
    probabilities = answer["completion_probabilities"]
    assert [p["id"] for p in probabilities] == answer["tokens"] and len(probabilities) == 5
    assert "".join(p["token"] for p in probabilities) == answer["content"]
    for i, p in enumerate(probabilities):
        expected = model_logprobs(engine, CODE_IDS + answer["tokens"][:i])
        top = torch.topk(expected, 3)
        assert list(p) == ["id", "token", "bytes", "logprob", "top_logprobs"]
        assert p["logprob"] == pytest.approx(expected[p["id"]].item(), abs=2e-3)
        assert [t["id"] for t in p["top_logprobs"]] == top.indices.tolist()
        assert [t["logprob"] for t in p["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=2e-3)
        for t in [p, *p["top_logprobs"]]:
            assert bytes(t["bytes"]).decode(errors="replace") == t["token"]
    *chunks, last = sse_events(server, "/completion", body)
    assert last["stop"] and "completion_probabilities" not in last
    assert all([p["id"] for p in c.get("completion_probabilities", [])] == c["tokens"] for c in chunks), chunks
    streamed = [p for c in chunks for p in c.get("completion_probabilities", [])]
    assert [p["id"] for p in streamed] == answer["tokens"]
    assert [p["logprob"] for p in streamed] == pytest.approx([p["logprob"] for p in probabilities], abs=1e-5)


def test_post_sampling_probs_are_the_distribution_the_token_was_drawn_from(server, engine):
    """post_sampling_probs: `prob` and `top_probs`, after llama.cpp's chain (here a logit bias banning the likeliest
    token, top_k 3 and temperature 1.5): a float64 softmax of the three largest logits left, over 1.5; the tokens
    the chain left out are not listed (3 of n_probs 5). Greedy drew from the chosen token alone: 1."""
    banned = int(model_logprobs(engine, CODE_IDS).argmax())
    body = {"prompt": CODE_IDS, "n_probs": 5, "post_sampling_probs": True, "temperature": 1.5, "top_k": 3,
            "top_p": 1.0, "min_p": 0.0, "seed": 3, "n_predict": 3, "return_tokens": True,
            "logit_bias": [[banned, False]]}
    answer = httpx.post(server.url + "/completion", json=body, timeout=300).json()
    for i, p in enumerate(answer["completion_probabilities"]):
        logprobs = model_logprobs(engine, CODE_IDS + answer["tokens"][:i])
        logprobs[banned] = -math.inf
        top = torch.topk(logprobs, 3)
        expected = (top.values / 1.5).softmax(dim=-1)
        assert list(p) == ["id", "token", "bytes", "prob", "top_probs"]
        assert [t["id"] for t in p["top_probs"]] == top.indices.tolist(), (i, p)
        assert [t["prob"] for t in p["top_probs"]] == pytest.approx(expected.tolist(), abs=2e-3)
        assert p["prob"] == pytest.approx(expected[top.indices.tolist().index(p["id"])].item(), abs=2e-3)
    greedy = httpx.post(server.url + "/completion", timeout=300, json={
        "prompt": CODE_IDS, "n_probs": 5, "post_sampling_probs": True, "temperature": 0.0, "n_predict": 2}).json()
    for p in greedy["completion_probabilities"]:
        assert p["prob"] == 1.0 and p["top_probs"] == [{k: p[k] for k in ("id", "token", "bytes", "prob")}]


def test_llama_cpp_probabilities_leave_out_healings_tokens_and_the_answers_stop_word(server):
    """Which tokens are listed: not those that only wrote a healed prompt's end again (" as" of "import numpy as":
    the prompt's), on /completion and /infill; in a whole answer not the last tokens of the stop word that ended it,
    as many as the word tokenizes to (llama.cpp's send_final_response), which a stream's chunks carry."""
    prompt = "import numpy as"
    prompt_tokens = len(httpx.post(server.url + "/tokenize", json={"content": prompt}, timeout=300).json()["tokens"])
    common = {"n_predict": 3, "temperature": 0.0, "n_probs": 1, "return_tokens": True}
    for path, body in [("/completion", {"prompt": prompt}), ("/infill", {"input_prefix": prompt, "input_suffix": ""})]:
        answer = httpx.post(server.url + path, json={**body, **common}, timeout=300).json()
        if path == "/completion":
            assert answer["tokens_evaluated"] == prompt_tokens       # " as" written again, counted as the prompt's
        probabilities = answer["completion_probabilities"]
        assert [p["id"] for p in probabilities] == answer["tokens"] and len(probabilities) == 3, (path, answer)
        assert "".join(p["token"] for p in probabilities) == answer["content"]
    body = {"prompt": "def add(a, b):\n    return", "n_predict": 8, "temperature": 0.0, "n_probs": 1,
            "stop": ["\n"], "return_tokens": True}
    answer = httpx.post(server.url + "/completion", json=body, timeout=300).json()
    assert answer["stop_type"] == "word" and answer["stopping_word"] == "\n"
    assert [p["id"] for p in answer["completion_probabilities"]] == answer["tokens"][:-1]     # "\n": one token
    streamed = [p["id"] for c in sse_events(server, "/completion", body) for p in c.get("completion_probabilities", [])]
    assert streamed == answer["tokens"]


def test_ollama_logprobs_are_the_log_softmax_of_the_models_logits_streamed_or_not(server, engine):
    """/api/generate with logprobs and top_logprobs, as Ollama's clients send them: `logprobs`, each token's text,
    logprob and bytes with its top_logprobs likeliest alternatives, in Ollama's field names. The answer's `context`
    holds the ids the model read (the healed prompt, then every generated token): the numbers are a float64
    log-softmax of its logits after each. Each streamed line carries those of the tokens behind its text, the last
    (done) line none; /api/chat's end of text, which writes nothing, is not listed, and top_logprobs 0 lists none."""
    from models.healing import vocabulary_bytes

    pieces = vocabulary_bytes(engine.tokenizer).pieces
    body = {"model": "codecomplete", "prompt": "def add(a, b):\n    return", "stream": False, "logprobs": True,
            "top_logprobs": 3, "options": {"temperature": 0, "num_predict": 5}}
    answer = httpx.post(server.url + "/api/generate", json=body, timeout=300).json()
    ids, listed = answer["context"], answer["logprobs"]
    assert len(listed) == answer["eval_count"] == 5 and "".join(e["token"] for e in listed) == answer["response"]
    start = len(ids) - len(listed)
    for j, entry in enumerate(listed):
        expected = model_logprobs(engine, ids[:start + j])
        top = torch.topk(expected, 3)
        assert list(entry) == ["token", "logprob", "bytes", "top_logprobs"]
        assert bytes(entry["bytes"]) == pieces[ids[start + j]]
        assert entry["logprob"] == pytest.approx(expected[ids[start + j]].item(), abs=2e-3)
        assert [bytes(t["bytes"]) for t in entry["top_logprobs"]] == [pieces[i] for i in top.indices.tolist()]
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=2e-3)
    with httpx.stream("POST", server.url + "/api/generate", json={**body, "stream": True}, timeout=300) as response:
        *lines, last = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert last["done"] and "logprobs" not in last
    assert all("".join(e["token"] for e in line["logprobs"]) == line["response"] for line in lines), lines
    streamed = [e for line in lines for e in line["logprobs"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in listed]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in listed], abs=1e-5)
    chat = httpx.post(server.url + "/api/chat", timeout=300, json={
        "model": "codecomplete", "messages": [{"role": "user", "content": "Say yes."}], "stream": False,
        "logprobs": True, "options": {"temperature": 0, "num_predict": 24}}).json()
    assert chat["logprobs"] and all(list(e) == ["token", "logprob", "bytes"] for e in chat["logprobs"])
    assert "".join(e["token"] for e in chat["logprobs"]) == chat["message"]["content"]


@pytest.mark.parametrize("path, body, words", [
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, ["logprobs", "0..5"]),
    ("/v1/completions", {"prompt": "x", "logprobs": -1}, ["logprobs", "0..5"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                              "top_logprobs": 21}, ["top_logprobs", "0..20"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
     ["top_logprobs", "logprobs: true"]),
    # (llama.cpp's n_probs: any number, test_server_protocols.py)
])
def test_bad_logprobs_are_a_400(server, path, body, words):
    response = httpx.post(server.url + path, json={**body, "max_tokens": 1}, timeout=300)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert all(word in message for word in words), message
