"""Part C: /infill, /completion, /v1/completions in process, tiny random models, random cursors and splits."""
import json, random, sys, traceback
from fuzz_common import Failures, arguments, random_text, scratch_folder, tokenizers
from models import load_model
from prompts import index_repository
from tiny_models import save_tiny_llama
from fastapi.testclient import TestClient
from codecomplete.session import Session
from codecomplete.server.app import Server, create_app

seed, cases, which, rng = arguments(30, ["codellama", "starcoder", "smollm2"])
toks = tokenizers()
failures = Failures()
fail = failures.add
count = 0

root = scratch_folder() / "repo"; root.mkdir()
(root / "geometry.py").write_text("def polygon_area(poly):\n    return 0.0\n")
(root / "main.py").write_text("from geometry import polygon_area\nx = 1\n")

def streamed(client, path, body):
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        lines = [l for l in r.iter_lines() if l.startswith("data: ") and l != "data: [DONE]"]
        return r.status_code, [json.loads(l[6:]) for l in lines]

for name in which:
    tok = toks[name]
    d = scratch_folder() / name; d.mkdir()
    save_tiny_llama(d, tok, n_kv_heads=2, max_position_embeddings=1024, seed=seed)
    engine = load_model(str(d), device="cpu", max_context=768)
    index = index_repository(root, cache_dir=scratch_folder())
    server = Server(Session(engine, index, context_tokens=512), max_tokens=8, api_key=None, info={})
    with TestClient(create_app(server), base_url="http://127.0.0.1") as client:
        for case in range(cases):
            text = random_text(rng, rng.randint(0, 12))
            k = rng.randint(0, len(text))
            prefix, suffix = text[:k], text[k:] if rng.random() < 0.7 else ""
            n = rng.randint(1, 8)
            extra = [{"filename": "geometry.py", "text": random_text(rng, 3)}] if rng.random() < 0.3 else []
            answers = []
            for j in sorted({0, len(prefix), rng.randint(0, len(prefix))}):
                count += 1
                body = {"input_prefix": prefix[:j], "prompt": prefix[j:], "input_suffix": suffix, "input_extra": extra,
                        "n_predict": n, "temperature": 0, "seed": 1, "return_tokens": True, "cache_prompt": True}
                where = (name, prefix, suffix, j, n)
                try:
                    r = client.post("/infill", json=body)
                except Exception:
                    fail((name, "infill raises"), (where, traceback.format_exc()[-600:])); continue
                if r.status_code != 200:
                    fail((name, "infill status", r.status_code), (where, r.text[:300])); continue
                a = r.json()
                answers.append((a["content"], a["tokens"]))
                if a["tokens_predicted"] > n:
                    fail((name, "predicted > n"), (where, a["tokens_predicted"]))
                if len(a["tokens"]) != a["tokens_predicted"]:
                    fail((name, "tokens len != predicted"), (where, a["tokens"], a["tokens_predicted"]))
                status, events = streamed(client, "/infill", body)
                content = "".join(e.get("content", "") for e in events)
                ids = [t for e in events for t in e.get("tokens", [])]
                if status != 200 or content != a["content"] or ids != a["tokens"]:
                    fail((name, "stream != answer"), (where, status, content, a["content"], ids, a["tokens"]))
            if len(set(map(repr, answers))) > 1:
                fail((name, "split position changes the answer"), (prefix, suffix, answers))
            # /completion: a raw prompt (often ending in whitespace)
            raw = prefix + rng.choice(["", " ", "\n    ", "\t", "  "])
            if raw:
                count += 1
                body = {"prompt": raw, "n_predict": n, "temperature": 0, "return_tokens": True}
                r = client.post("/completion", json=body)
                if r.status_code != 200:
                    fail((name, "completion status", r.status_code), (raw, r.text[:300]))
                else:
                    a = r.json()
                    if not a["prompt"].endswith(raw) and name != "codellama":
                        fail((name, "echoed prompt"), (raw, a["prompt"]))
                    status, events = streamed(client, "/completion", body)
                    content = "".join(e.get("content", "") for e in events)
                    if content != a["content"]:
                        fail((name, "completion stream != answer"), (raw, content, a["content"]))
                count += 1
                body = {"model": "x", "prompt": prefix or "x", "suffix": suffix, "max_tokens": n, "temperature": 0}
                r = client.post("/v1/completions", json=body)
                if r.status_code != 200:
                    fail((name, "v1 status", r.status_code), (prefix, suffix, r.text[:300]))
                else:
                    v1 = r.json()["choices"][0]["text"]
                    status, events = streamed(client, "/v1/completions", body)
                    content = "".join(e["choices"][0]["text"] for e in events if e.get("choices"))
                    if content != v1:
                        fail((name, "v1 stream != answer"), (prefix, suffix, content, v1))
                    if prefix and answers and v1 != answers[0][0] and not extra:
                        fail((name, "v1 suffix != infill"), (prefix, suffix, v1, answers[0][0]))
    server.worker.shutdown()
print("cases", count)
for key, items in failures.items():
    print(key, len(items))
    for it in items[:3]:
        print("   ", repr(it)[:900])
