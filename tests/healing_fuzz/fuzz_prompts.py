"""Part A: build_completion_prompt at random cursors of random files, every tokenizer/format."""
import random, sys, traceback
from fuzz_common import random_text, scratch_folder, tokenizers
from prompts import build_completion_prompt, index_repository
from prompts.scan import unix_newlines
from prompts.tokens import encoder_for, tokenizable
from prompts.formats import completion_format
from models.healing import token_bytes, vocabulary_bytes

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
cases = int(sys.argv[2]) if len(sys.argv) > 2 else 200
rng = random.Random(seed)
root = scratch_folder() / "repo"; root.mkdir()
(root / "geometry.py").write_text("def polygon_area(poly):\n    return 0.0\n")
(root / "main.py").write_text("from geometry import polygon_area\nx = 1\n")
index = index_repository(root, cache_dir=scratch_folder())
toks = tokenizers()
failures = {}
count = 0

def region(ids, pieces, form):
    """(bytes of the file's text before the cursor region, bytes of suffix region or None)"""
    ids = list(ids)
    if form.fim:
        pre, suf, mid = form.fim
        s = len(ids) - 1 - ids[::-1].index(suf)
        before_ids, after_ids = ids[:s], ids[s + 1:-1]
        assert ids[-1] == mid
    else:
        before_ids, after_ids = ids, None
    start = 0
    for i, t in enumerate(before_ids):
        if pieces[t] is None:
            start = i + 1
    b = b"".join(pieces[t] for t in before_ids[start:])
    a = None if after_ids is None else b"".join(pieces[t] for t in after_ids)
    return b, a

def fail(key, detail):
    failures.setdefault(key, []).append(detail)

for name, tok in toks.items():
    pieces = token_bytes(tok)
    table = vocabulary_bytes(tok)
    form = completion_format(encoder_for(tok))
    for case in range(cases):
        raw = random_text(rng)
        text = unix_newlines(tokenizable(raw))
        offsets = sorted({0, len(text), *(rng.randint(0, len(text)) for _ in range(4))})
        for k in offsets:
            count += 1
            before, after = text[:k], text[k:]
            line = before.count("\n") + 1
            col = len(before.rpartition("\n")[2]) + 1
            try:
                packed = build_completion_prompt(index, tok, "main.py", text=raw, line=line, col=col, budget_tokens=8192)
            except Exception as e:
                fail((name, "raises", type(e).__name__), (raw, k, traceback.format_exc()[-600:]))
                continue
            heal = packed.heal_text
            if heal and not before.endswith(heal):
                fail((name, "heal not a suffix of before"), (raw, k, heal)); continue
            kept = before[:len(before) - len(heal)]
            b, a = region(packed.ids, pieces, form)
            exp = kept.encode()
            ok = b.endswith(exp) and (b == exp or b == b" " + exp or b.endswith(b"main.py\n" + exp))
            if not ok:
                fail((name, "prefix region mismatch"), (raw, k, heal, b[-80:], exp[-80:]))
            if a is not None:
                expa = after.encode()
                if not (a == expa):
                    fail((name, "suffix region mismatch"), (raw, k, a[:60], expa[:60]))
            if heal and not table.allowed(heal.encode()):
                fail((name, "heal unreachable"), (raw, k, heal))
print("cases", count)
for key, items in failures.items():
    print(key, len(items))
    for it in items[:3]:
        print("   ", repr(it)[:700])
