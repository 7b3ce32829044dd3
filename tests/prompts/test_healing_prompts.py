"""Token healing in every prompt format: the prompt stops before the last token of the text before the cursor
(trailing spaces, indentation, a partly typed name), PackedPrompt.heal_text holds that token's text, and the
text after the cursor is untouched."""

import pytest

from prompts import build_completion_prompt, index_repository

GEOMETRY = "def polygon_area(poly):\n    return 0.0\n"
FILLER = "".join(f"value_{i} = {i}\n" for i in range(40))  # 40 lines: the cursor block starts at line 33
MAIN = "from geometry import polygon_area\n" + FILLER + "\ndef report(poly):\n    area = polygon_area(poly)\n"
ROWS = MAIN.split("\n")
REPORT = ROWS.index("def report(poly):")  # 0-based
CURSORS = {
    "after a space": (REPORT + 1, len("    area = ")),
    "after indentation": (REPORT + 1, len("    ")),
    "in a partly typed name": (REPORT + 1, len("    area = polygon_ar")),
    "at the start of a line": (REPORT + 1, 0),
    "after an indentation that starts a block": (32, 0),  # row 32 is the first of its 32-line block
}
FORMATS = {  # tokenizer fixture -> (what opens the current file's text, what closes it)
    "smollm2_tokenizer": ("<file_sep>main.py\n", None),
    "starcoder_tokenizer": ("<file_sep><fim_prefix>main.py\n", "<fim_suffix>"),
    "codellama_tokenizer": ("# Path: main.py\n", " <SUF>"),  # the repository context is commented out
}


@pytest.fixture(scope="module")
def repo_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("healing") / "repo"
    root.mkdir()
    (root / "geometry.py").write_text(GEOMETRY)
    (root / "main.py").write_text(MAIN)
    return index_repository(root, cache_dir=tmp_path_factory.mktemp("healing-cache"))


def _last_token_text(tokenizer, text: str) -> str:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text[offsets[-1][0] :]


@pytest.mark.parametrize("cursor", CURSORS)
@pytest.mark.parametrize("tokenizer_name", FORMATS)
def test_the_prompt_ends_before_the_last_token_and_the_rest_is_left_to_the_model(
    repo_index, tokenizer_name, cursor, request
):
    tokenizer = request.getfixturevalue(tokenizer_name)
    row, col = CURSORS[cursor]
    if cursor == "after an indentation that starts a block":  # indent line 33 to make it so
        text = MAIN.replace(ROWS[32] + "\n", "    " + ROWS[32] + "\n")
        col = 4
    else:
        text = MAIN
    rows = text.split("\n")
    before = "\n".join(rows[:row] + [rows[row][:col]])
    packed = build_completion_prompt(repo_index, tokenizer, "main.py", text=text, line=row + 1, col=col + 1,
                                     budget_tokens=2000)
    assert packed.heal_text and packed.heal_text == _last_token_text(tokenizer, before)
    opening, closing = FORMATS[tokenizer_name]
    decoded = tokenizer.decode(packed.ids)
    file_text = decoded[decoded.rindex(opening) + len(opening) :]
    prefix = file_text[: file_text.index(closing)] if closing else file_text
    assert prefix + packed.heal_text == before  # nothing lost, nothing doubled
    if closing:  # fill in the middle: the text after the cursor is all there, from the cursor on
        assert file_text[file_text.index(closing) + len(closing) :].lstrip().startswith(text[len(before) :].strip()[:20])
    assert any(item.path == "main.py" and (item.start_line, item.end_line) == (1, row + 1) for item in packed.context)


def test_indentation_and_spaces_are_healed_whole(repo_index, smollm2_tokenizer):
    """The byte-level vocabulary's whitespace tokens: a lone space, and a newline with the indentation."""
    row, col = CURSORS["after a space"]
    packed = build_completion_prompt(repo_index, smollm2_tokenizer, "main.py", line=row + 1, col=col + 1)
    assert packed.heal_text == " "
    row, col = CURSORS["after indentation"]
    packed = build_completion_prompt(repo_index, smollm2_tokenizer, "main.py", line=row + 1, col=col + 1)
    assert packed.heal_text == "\n    "
    assert packed.stop_strings == ["\n"]  # mid-line: the line's rest is still to come


def test_nothing_is_healed_inside_the_first_token_of_a_file(repo_index, smollm2_tokenizer):
    packed = build_completion_prompt(repo_index, smollm2_tokenizer, "main.py", line=1, col=3)  # "fr|om"
    assert packed.heal_text == ""
    assert smollm2_tokenizer.decode(packed.ids).endswith("<file_sep>main.py\nfr")


@pytest.mark.parametrize("tokenizer_name", ["smollm2_tokenizer", "codellama_tokenizer"])
def test_a_raw_prompt_heals_its_last_token_and_keeps_special_tokens(tokenizer_name, request):
    """The server's /completion and OpenAI completions (a raw text prompt): the prompt ends one token earlier,
    heal_text is that token's text; a prompt ending in a special token, or one token long, is left as it is."""
    from prompts import build_raw_prompt

    tokenizer = request.getfixturevalue(tokenizer_name)
    for text in ("    area = ", "def report(poly):\n    ", "x = polygon_ar", "print(1)\n"):
        packed = build_raw_prompt(tokenizer, text)
        assert packed.heal_text == _last_token_text(tokenizer, text) and packed.heal_text
        assert packed.ids == tokenizer.encode(text[: len(text) - len(packed.heal_text)])
        assert build_raw_prompt(tokenizer, text, heal=False).ids == tokenizer.encode(text)
    for text in ("x", tokenizer.all_special_tokens[0], "a = 1" + tokenizer.all_special_tokens[0]):
        packed = build_raw_prompt(tokenizer, text)
        assert packed.heal_text == "" and packed.ids == tokenizer.encode(text)


def test_crlf_text_is_read_with_lf_and_its_line_end_kept(repo_index, smollm2_tokenizer):
    """A Windows buffer (or a raw prompt of one) makes the prompt of its LF twin, and `line_end` says "\\r\\n", in
    which the app writes the answer (codecomplete/line_ends.py); a lone "\\r" in a raw prompt stays as it is."""
    from prompts import build_raw_prompt

    unix = build_completion_prompt(repo_index, smollm2_tokenizer, "main.py", text=MAIN, line=2, col=3)
    windows = build_completion_prompt(repo_index, smollm2_tokenizer, "main.py", text=MAIN.replace("\n", "\r\n"),
                                      line=2, col=3)
    assert (windows.ids, windows.heal_text, windows.line_end, unix.line_end) == (unix.ids, unix.heal_text, "\r\n",
                                                                                 "\n")
    text = "def report(poly):\r\n    return\rpoly\r\n    "
    raw, lf = build_raw_prompt(smollm2_tokenizer, text), build_raw_prompt(smollm2_tokenizer, text.replace("\r\n", "\n"))
    assert (raw.ids, raw.heal_text, raw.line_end, lf.line_end) == (lf.ids, lf.heal_text, "\r\n", "\n")


def test_an_unknown_token_is_never_healed(repo_index):
    """A vocabulary without byte pieces makes a character it lacks <unk>: no token writes that text, so leaving it
    to the model would ask for what it cannot write (the prompt stays whole instead)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["def", "report", "poly", "area", "=", "(", ")", ":", "'"]
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    text = "def report(poly):\n    area = '🙂"
    packed = build_completion_prompt(repo_index, tokenizer, "main.py", text=text)
    assert packed.heal_text == "" and packed.ids[-1] == vocab["<unk>"]
    assert build_completion_prompt(repo_index, tokenizer, "main.py", text=text[:-3]).heal_text == "="
