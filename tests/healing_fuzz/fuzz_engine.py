"""Part B: the engine under a required prefix, tiny random models, random prefixes/prompts/stops."""
import random, sys, traceback
from fuzz_common import FRAGMENTS, Failures, arguments, random_text, scratch_folder, tokenizers
from models import GenerationConfig, load_model
from models.healing import token_bytes
from models.tokenizer import IncrementalDetokenizer
from prompts import build_raw_prompt
from tiny_models import save_tiny_llama

seed, cases, which, rng = arguments(100, ["llama_tiny", "smollm2"])
toks = tokenizers()
failures = Failures()
fail = failures.add
count = 0

for name in which:
    tok = toks[name]
    d = scratch_folder() / name
    d.mkdir()
    save_tiny_llama(d, tok, n_kv_heads=2, max_position_embeddings=512, seed=seed)
    engine = load_model(str(d), device="cpu", max_context=256)
    pieces = token_bytes(tok)
    eos = set(engine.eos_token_ids)
    for case in range(cases):
        body = random_text(rng, rng.randint(1, 8)) or "x"
        mode = rng.random()
        if mode < 0.5:
            packed = build_raw_prompt(tok, body)
            prompt, R = packed.ids, packed.heal_text
        else:
            prompt = tok.encode(body)
            R = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 3)))[:40]
        if not prompt:
            continue
        limit = rng.randint(1, 12)
        stops = ()
        if rng.random() < 0.4:
            stops = (rng.choice([R[-1:] + "a", R[-2:], "\n", " ", R[-1:], "e", "\u0301"]),)
            stops = tuple(s for s in stops if s)
        temp = rng.choice([0.0, 0.0, 1.0])
        for speculate in (0, 3):
            count += 1
            config = GenerationConfig(max_new_tokens=limit, temperature=temp, seed=case, required_prefix=R,
                                      stop_strings=stops, speculate=speculate)
            where = (name, body, R, limit, stops, temp, speculate)
            try:
                deltas = []
                result = engine.generate(prompt, config, on_text=deltas.append)
                quiet = engine.generate(prompt, config)
            except Exception as exc:
                if type(exc).__name__ == "ContextTooLongError":
                    continue
                fail((name, "raises"), (where, traceback.format_exc()[-800:])); continue
            if "".join(deltas) != result.text:
                fail((name, "stream != text"), (where, deltas, result.text))
            if quiet.text != result.text or quiet.token_ids != result.token_ids:
                fail((name, "quiet != streamed"), (where, quiet.text, result.text))
            if speculate == 0:
                plain = result
            elif temp == 0 and (plain.text, plain.token_ids) != (result.text, result.token_ids):
                fail((name, "speculative != plain"), (where, plain.text, result.text, plain.token_ids, result.token_ids))
            ids = [i for i in result.token_ids if i not in eos]
            produced = b"".join(pieces[i] or b"" for i in ids)
            rb = R.encode()
            finished_early = result.token_ids and result.token_ids[-1] in eos
            if not (produced.startswith(rb) or rb.startswith(produced)):
                fail((name, "bytes do not begin with R"), (where, produced[:40], rb))
            if len(produced) < len(rb) and not finished_early and result.finish_reason != "stop":
                fail((name, "R not completed"), (where, produced, rb, result.finish_reason))
            # detokenized text after the healed prompt
            det = IncrementalDetokenizer(tok, prompt)
            generated = "".join(det.push(i) for i in ids) + det.flush()
            if len(produced) >= len(rb):
                if not generated.startswith(R):
                    fail((name, "generated text does not start with R"), (where, generated[:40]))
                new = generated[len(R):]
                cut = min([new.find(s) for s in stops if s and s in new] or [len(new)])
                if result.text != new[:cut]:
                    fail((name, "text != decode after R"), (where, result.text, new, result.stop_string))
            # healing tokens and counts
            h = result.healing_tokens
            e, p = result.token_counts()
            if e + p != result.prompt_tokens + len(result.token_ids):
                fail((name, "counts do not add up"), where)
            if p > limit:
                fail((name, "more new tokens than max"), (where, p, h, len(result.token_ids)))
            head = b"".join(pieces[i] or b"" for i in result.token_ids[:h])
            if not rb.startswith(head):
                fail((name, "healing tokens carry new text"), (where, h, head, rb))
            if h < len(result.token_ids) and result.token_ids[h] not in eos and pieces[result.token_ids[h]]:
                nxt = b"".join(pieces[i] or b"" for i in result.token_ids[:h + 1])
                if len(nxt) <= len(rb) and nxt == rb[:len(nxt)] and len(produced) > len(nxt):
                    # the token after the healing ones made only healed bytes, yet was not counted as healing
                    fail((name, "healing token not counted"), (where, h, result.token_ids, nxt, rb))
    del engine
print("cases", count)
for key, items in failures.items():
    print(key, len(items))
    for it in items[:3]:
        print("   ", repr(it)[:900])
