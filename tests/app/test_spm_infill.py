"""--spm-infill, llama.cpp's suffix/prefix/middle infill order, end to end: a keystroke changes the text before the
cursor, which ends a suffix-first prompt, so the engine reuses all but the prompt's last tokens (with an fp8 cache
too, and no repair prefill of its exact window), where the default prefix-first order prefills the whole suffix
again. In process and through `codecomplete serve` on a socket with llama.vscode's body; the command line's flag and
its errors. The model: a tiny random Llama over a byte-level vocabulary with StarCoder's FIM tokens, built here."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from codecomplete.session import Sampling, Session

SPECIALS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>"]
FILE = "import math\n\n\ndef circumference(radius):\n    ret"
# Twenty functions after the cursor: 990 one-byte tokens, more than the 480 an fp8 cache's exact ring keeps past
# its window (models/kv_cache.py), so a cut before them needs a repair prefill.
SUFFIX = "".join(f"\n\ndef f{i}(x):\n    return x * {i}  # helper number {i}" for i in range(20))


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory) -> Path:
    """A checkpoint folder: 2 layers of width 64, every byte a token (exact round trips), FIM tokens first."""
    import torch
    from byte_level import byte_level_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_tokenizer(SPECIALS, eos_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=None, eos_token_id=0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-fim")
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def keystrokes(engine, root: Path, suffix_first: bool, repairs: list) -> list[tuple[list[int], int, list]]:
    """Three requests as "ret", "retu", "retur" are typed before SUFFIX: each prompt's ids, the tokens the engine
    reused of it, and the sizes of the repair prefills it ran."""
    from prompts import index_repository

    engine.clear_prefix_cache()
    session = Session(engine, index_repository(root), suffix_first=suffix_first)
    answers = []
    for typed in ("ret", "retu", "retur"):
        repairs.clear()
        generation = session.infill(FILE[:-3] + typed, SUFFIX, path="shapes.py", sampling=Sampling(max_tokens=1),
                                    budget=3000)
        answers.append((generation.prompt.ids, generation.run().reused_prefix_tokens, list(repairs)))
    return answers


@pytest.mark.parametrize("kv_cache", [None, "fp8"], ids=["fp32", "fp8"])
def test_a_typed_character_prefills_only_the_end_of_a_suffix_first_prompt(fim_model, tmp_path, monkeypatch,
                                                                          kv_cache):
    from models import load_model

    (tmp_path / "geometry.py").write_text("import math\n\n\ndef area(radius):\n    return math.pi * radius ** 2\n")
    engine = load_model(str(fim_model), device="cpu", max_context=4096, kv_cache=kv_cache)
    repairs = []
    prefill = engine.model.prefill
    monkeypatch.setattr(engine.model, "prefill", lambda tokens, *args, **kwargs: (
        repairs.append(tokens.shape[1]) if kwargs.get("repair") else None, prefill(tokens, *args, **kwargs))[1])
    prefix, middle, suffix = (engine.tokenizer.convert_tokens_to_ids(t) for t in SPECIALS[1:4])
    for ids, reused, repaired in keystrokes(engine, tmp_path, True, repairs)[1:]:
        assert ids[-1] == middle and ids.index(suffix) < ids.index(prefix)
        # The prompt ends "...re" + [MID] or "...ret" + [MID] (the last character left to the model to write):
        # all but the last character and [MID] come from the cache, without a repair.
        assert reused == len(ids) - 2 and repaired == [], (len(ids), reused, repaired)
    for ids, reused, repaired in keystrokes(engine, tmp_path, False, repairs)[1:]:
        assert ids[-1] == middle and ids.index(prefix) < ids.index(suffix)
        # Prefix first: reused up to the typed character, the 990 tokens after it prefilled again; an fp8 cache cut
        # that far back has lost its exact window's copies and repairs them first.
        assert reused == ids.index(suffix) - 1 and len(ids) - reused > len(SUFFIX), (len(ids), reused)
        assert (repaired != []) == (kv_cache == "fp8"), repaired


def vscode_body(lines: list[str], row: int, column: int, prompt: str, extra: list[tuple[str, str]]) -> dict:
    """llama.vscode's /infill body for a cursor at 0-based ``row``, ``column`` of ``lines``, with ``prompt`` (the line's
    text before the cursor, as typed) there: the 256 lines before the cursor's line, the line's rest and the 64 lines
    after, and ``extra`` chunks of its ring as (file name, text)."""
    return {"id_slot": 0, "input_prefix": "".join(f"{line}\n" for line in lines[max(0, row - 256):row]),
            "input_suffix": lines[row][column:] + "\n" + "".join(f"{line}\n" for line in lines[row + 1:row + 65]),
            "input_extra": [{"text": text, "time": 1764460000000, "filename": filename} for filename, text in extra],
            "prompt": prompt, "n_predict": 4, "n_cmpl": 3, "top_k": 40, "top_p": 0.99, "stream": False,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "n_indent": 4, "t_max_prompt_ms": 500,
            "t_max_predict_ms": 500}


def llama_vscode_body(served_repo: Path, files: dict, prompt: str) -> dict:
    """llama.vscode's /infill body (test_server_protocols.py's), at app.py's line 5 column 5 with `prompt` typed
    there: its 256 lines before (the whole file here), the line's rest and 64 lines after, a chunk of its ring."""
    return vscode_body(files["app.py"].split("\n"), 4, 4, prompt,
                       [(str(served_repo / "shapes" / "geometry.py"), files["shapes/geometry.py"])])


@pytest.mark.parametrize("order", ["--spm-infill", None], ids=["spm", "psm"])
def test_the_servers_flag_keeps_a_keystrokes_prefill_to_the_prompts_end(script, cli_env, served_repo, fim_model,
                                                                        tmp_path, order):
    from server_process import ServerProcess

    files = {str(p.relative_to(served_repo)): p.read_text() for p in served_repo.rglob("*.py")}
    process = ServerProcess(script, served_repo, cli_env, tmp_path, "--model", str(fim_model), "--device", "cpu",
                            "--kv-cache", "fp8", "--context-tokens", "2048", "--max-tokens", "4",
                            *([order] if order else []))
    try:
        assert process.info["spm_infill"] is (order is not None)
        timings = []
        for typed in ("    re", "    ret", "    retu"):
            response = httpx.post(process.url + "/infill", json=llama_vscode_body(served_repo, files, typed),
                                  timeout=300)
            assert response.status_code == 200, response.text
            timings.append(response.json()["timings"])
        suffix_tokens = len(llama_vscode_body(served_repo, files, "")["input_suffix"].encode())   # one a byte
        for timing in timings[1:]:
            if order:
                # the last character before the cursor's token, [MID], and the one the model wrote again of the
                # text healing left out (counted as the prompt's, where llama.cpp has it)
                assert timing["prompt_n"] <= 3, timing
            else:
                assert timing["prompt_n"] > suffix_tokens, timing
    finally:
        assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log()
    assert ("infill prompts suffix first (--spm-infill)" in process.log()) is (order is not None), process.log()


def test_a_model_without_fim_tokens_is_told_the_flag_changes_nothing(engine):
    """The embedded model completes left to right: its prompt ends at the cursor and holds no suffix to move."""
    from codecomplete.server.serve import _infill_order

    assert _infill_order(engine).endswith("has no fill-in-the-middle tokens; its prompts end at the cursor either "
                                          "way, the code after it left out")


def test_a_command_line_and_a_server_of_the_other_order_are_not_used_together():
    """`--file` through a running server prints what it would in process only where both lay prompts out alike."""
    from types import SimpleNamespace

    from codecomplete.client import mismatch

    def args(**given):
        return SimpleNamespace(**{"model": None, "file": "app.py", "spm_infill": False, **given})
    info = {"spm_infill": True, "model_spec": None}
    assert mismatch(info, args(), None, 8) == "lays infill prompts out suffix first, not prefix first (no --spm-infill)"
    assert mismatch({**info, "spm_infill": False}, args(spm_infill=True), None, 8) == (
        "lays infill prompts out prefix first, not suffix first (--spm-infill)")


@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize("budget", [1280, 1536, 1792, 2048, 2560, 3072])
def test_typing_at_the_cursor_changes_the_prompt_only_at_the_cursor_until_a_step_is_crossed(fim_model, tmp_path,
                                                                                           suffix_first, budget):
    """Thirty characters typed on a new line, one llama.vscode request each, read as the server reads them. The
    suffix's window got what the prefix's left of the file's share, so a typed token took one from the suffix and,
    once a part of 8 lines no longer fitted, the suffix lost it (or, the prefix losing a part, gained one): at each
    of these budgets one keystroke changed the file's window, and the model's cache prefilled everything after the
    change (suffix first: the whole prefix and the suffix's changed end). The prefix's piece at the cursor now holds
    its tokens in steps of a sixteenth of the file's share (36 or more here, a token a byte), which these 30
    characters, on a line that began with 4 spaces, do not cross: each prompt is the last with the typed character
    inserted at the cursor (with the byte healing had left to the model), and nothing else changed."""
    from transformers import AutoTokenizer

    from prompts import index_repository

    rows = ["def run(f, v0):"] + [f"    v{n} = f(v{n - 1}, {n})" for n in range(400)]
    (tmp_path / "app.py").write_text("\n".join(rows) + "\n")
    helpers = "".join(f"def f{n}(x):\n    return x + {n}\n\n\n" for n in range(40))
    (tmp_path / "util.py").write_text(helpers)
    ring = [(str(tmp_path / "util.py"), "\n".join(helpers.split("\n")[start:start + 16])) for start in (0, 16, 32)]
    tokenizer = AutoTokenizer.from_pretrained(fim_model)
    session = Session(SimpleNamespace(tokenizer=tokenizer, check_prompt=lambda ids: None), index_repository(tmp_path),
                      suffix_first=suffix_first)
    rows.insert(300, "    ")                       # a new line, the cursor after its indentation
    typed = "total = compute(v299, factor) "
    prompts = []
    for count in range(len(typed) + 1):
        body = vscode_body(rows, 300, 4, "    " + typed[:count], ring)
        prompts.append(session.infill(body["input_prefix"] + body["prompt"], body["input_suffix"],
                                      extra=[(chunk["filename"], chunk["text"]) for chunk in body["input_extra"]],
                                      sampling=Sampling(max_tokens=0), budget=budget).prompt)
    # (the premise: the file's text was cut, the budget binding; the text is recognized as app.py, whose window takes
    # its room in parts of 8 lines, so up to a part's tokens stay over: 89% at 2,560 with pytest's longest paths in
    # the ring's labels, 93% with short ones)
    assert prompts[0].cut and len(prompts[0].ids) > budget * 0.85
    for count, (before, after) in enumerate(zip(prompts, prompts[1:]), 1):
        head = next(n for n, (a, b) in enumerate(zip(before.ids, after.ids)) if a != b)
        assert after.ids[:head] + after.ids[head + 1:] == before.ids, (        # one token more, at the cursor
            count, [(item.start_line, item.end_line) for item in before.context[-2:]],
            [(item.start_line, item.end_line) for item in after.context[-2:]])
        assert tokenizer.decode(after.ids[head:head + 1]) == ("    " + typed)[count + 2]     # (healed last time)


def test_a_new_name_typed_after_words_with_example_lines_keeps_a_keystrokes_prefill_to_the_prompts_end(
        script, cli_env, served_repo, fim_model, tmp_path):
    """`return math.tau * r` typed through llama.vscode's /infill, suffix first: `return math.` finds geometry.py's
    `return math.pi * radius ** 2` as an example line; `return math.tau ` begins no line, and the example vanished
    (prompts/holding.py holds it now), so that keystroke prefilled the whole prefix again, not the prompt's end."""
    from server_process import ServerProcess

    files = {str(p.relative_to(served_repo)): p.read_text() for p in served_repo.rglob("*.py")}
    process = ServerProcess(script, served_repo, cli_env, tmp_path, "--model", str(fim_model), "--device", "cpu",
                            "--context-tokens", "2048", "--max-tokens", "4", "--spm-infill")
    try:
        prefilled = []
        for typed in ("    return math.t", "    return math.ta", "    return math.tau", "    return math.tau ",
                      "    return math.tau *", "    return math.tau * ", "    return math.tau * r"):
            response = httpx.post(process.url + "/infill", json=llama_vscode_body(served_repo, files, typed),
                                  timeout=300)
            assert response.status_code == 200, response.text
            prefilled.append(response.json()["timings"]["prompt_n"])
        assert max(prefilled[1:]) <= 3, prefilled
    finally:
        assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log()
