"""Round 27 (security of the routes added after round 13): what one request may make the server hold."""
from server_process import in_process

from codecomplete.server import llama_cpp


def test_a_whole_answer_lists_a_bounded_number_of_probabilities(table_engine, monkeypatch):
    """llama.cpp's n_probs goes up to the vocabulary, and a whole answer holds every token's until it ends (~1.5 KB
    each): n_probs 1e6 over n_predict's default 256 took ~19 GB of the server's memory, over the context more than
    the machine has. Past MAX_ANSWER_PROBABILITIES (n_probs x n_predict) a whole answer is a 400 before anything
    runs; a stream, which holds one token's at a time, is answered."""
    with in_process(table_engine) as client:
        for path, body in (("/completion", {"prompt": "def f("}),
                           ("/infill", {"input_prefix": "def f(", "input_suffix": ""})):
            refused = client.post(path, json={**body, "n_probs": 10 ** 6, "n_predict": 1000})
            assert refused.status_code == 400, refused.text
            assert "n_probs" in refused.json()["error"]["message"] and "stream" in refused.json()["error"]["message"]
        assert client.server_log == []                                  # (nothing ran)
        monkeypatch.setattr(llama_cpp, "MAX_ANSWER_PROBABILITIES", 100)
        body = {"prompt": "def f(", "n_predict": 8, "temperature": 0, "ignore_eos": True}
        assert client.post("/completion", json={**body, "n_probs": 13}).status_code == 400     # 104 > 100
        assert client.post("/completion", json={**body, "logprobs": 13}).status_code == 400    # (its other name)
        whole = client.post("/completion", json={**body, "n_probs": 12})                        # 96
        assert whole.status_code == 200 and len(whole.json()["completion_probabilities"]) == 8, whole.text
        with client.stream("POST", "/completion", json={**body, "n_probs": 13, "stream": True}) as streamed:
            assert streamed.status_code == 200
            chunks = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert sum('"top_logprobs"' in chunk for chunk in chunks) >= 1
