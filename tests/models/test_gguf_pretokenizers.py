"""A byte-level BPE GGUF splits text before BPE as llama.cpp does for its tokenizer.ggml.pre name.

The expected pieces follow llama.cpp's regexes for each name (src/llama-vocab.cpp): every regex of a name's list
splits each piece the previous ones left, matches and the text between them both becoming pieces. Checked once
against llama.cpp's own vocabulary test files (models/ggml-vocab-{deepseek-coder,deepseek-llm,starcoder,refact,
falcon}.gguf with the ids the models' Hugging Face tokenizers give): all 47 texts of each match.
"""

from __future__ import annotations

import pytest
from tiny_models import GGUF_TOKENS, write_tiny_gguf

# Three texts that tell every split apart: digits after a space, a contraction and two spaces before digits,
# an indented line after a colon and a newline.
NUMBER, CONTRACTION, BLOCK = "x = 123456", "It's  42", "if x:\n    return 1"
DIGITS = ["1", "2", "3", "4", "5", "6"]

GPT2_PIECES = {NUMBER: ["x", " =", " 123456"], CONTRACTION: ["It", "'s", " ", " 42"],
               BLOCK: ["if", " x", ":", "\n   ", " return", " 1"]}
EXPECTED = {
    # digits alone first, then GPT-2's split
    "starcoder": {NUMBER: ["x", " =", " ", *DIGITS], CONTRACTION: ["It", "'s", "  ", "4", "2"],
                  BLOCK: ["if", " x", ":", "\n   ", " return", " ", "1"]},
    # up to three digits together; a punctuation run takes the newlines after it
    "llama-bpe": {NUMBER: ["x", " =", " ", "123", "456"], CONTRACTION: ["It", "'s", " ", " ", "42"],
                  BLOCK: ["if", " x", ":\n", "   ", " return", " ", "1"]},
    # newlines alone, then letters and Unicode punctuation (not symbols such as "=") with one space before them
    "deepseek-coder": {NUMBER: ["x", " = ", *DIGITS], CONTRACTION: ["It", "'", "s", "  ", "4", "2"],
                       BLOCK: ["if", " x", ":", "\n", "   ", " return", " ", "1"]},
    # the same with ASCII punctuation and symbols, and digit runs whole
    "deepseek-llm": {NUMBER: ["x", " =", " ", "123456"], CONTRACTION: ["It", "'", "s", "  ", "42"],
                     BLOCK: ["if", " x", ":", "\n", "   ", " return", " ", "1"]},
    # Llama 3's with single digits, and punctuation runs without their newlines
    "seed-coder": {NUMBER: ["x", " =", " ", *DIGITS], CONTRACTION: ["It", "'s", " ", " ", "4", "2"],
                   BLOCK: ["if", " x", ":", "\n", "   ", " return", " ", "1"]},
    # anything up to a space or . , ! ? ( ) |, then single digits
    "viking": {NUMBER: ["x", " =", " ", *DIGITS], CONTRACTION: ["It's", " ", " ", "4", "2"],
               BLOCK: ["if", " x:", "\n   ", " return", " ", "1"]},
    # punctuation and math symbol runs alone, GPT-2's split, then threes of ASCII digits
    "falcon": {NUMBER: ["x", " ", "=", " ", "123", "456"], CONTRACTION: ["It", "'", "s", " ", " 42"],
               BLOCK: ["if", " x", ":", "\n   ", " return", " 1"]},
    # llama.cpp's default: as falcon's, with digit runs apart from their space
    "default": {NUMBER: ["x", " ", "=", " ", "123", "456"], CONTRACTION: ["It", "'", "s", " ", " ", "42"],
                BLOCK: ["if", " x", ":", "\n   ", " return", " ", "1"]},
    "gpt-2": GPT2_PIECES,
}
SAME_AS = {"starcoder": ["refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
           "llama-bpe": ["llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano",
                         "dbrx", "smaug-bpe"],
           "gpt-2": ["phi-2", "mpt", "olmo", "jais", "trillion", "mellum", "exaone4", "roberta-bpe"]}
CASES = [(name, expected) for group, expected in EXPECTED.items() for name in [group, *SAME_AS.get(group, [])]]


def _write_vocabulary_gguf(path, pre, merges=("Ġ t", "h e", "Ġt he")):
    """A GGUF of only a byte-level vocabulary (no tensors), as llama.cpp's vocabulary test files are."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(GGUF_TOKENS)
    writer.add_token_types([3, 3, 3] + [1] * (len(GGUF_TOKENS) - 3))
    writer.add_token_merges(list(merges))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tokenizer_for(tmp_path_factory):
    """tokenizer_for(pre, merges=...) -> (the tokenizer the loader builds for such a file, its warnings).
    transformers' first GGUF tokenizer costs ~1 s, the next ones ~10 ms."""
    from models.loading.gguf import gguf_tokenizer, open_gguf

    folder = tmp_path_factory.mktemp("pre-tokenizers")

    def build(pre, **kwargs):
        path = _write_vocabulary_gguf(folder / f"{pre or 'none'}-{len(kwargs)}.gguf", pre, **kwargs)
        return gguf_tokenizer(path, open_gguf(path))

    return build


def pieces(tokenizer, text: str) -> list[str]:
    """The text of each piece the tokenizer's pre-tokenizer cuts `text` into (BPE then runs inside each)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    split = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    return [bytes(byte_of[char] for char in piece).decode("utf-8") for piece, _ in split]


@pytest.mark.parametrize(("name", "expected"), CASES, ids=[name for name, _ in CASES])
def test_each_pre_tokenizer_name_splits_as_llama_cpp(tokenizer_for, name, expected):
    tokenizer, warnings = tokenizer_for(name)
    assert {text: pieces(tokenizer, text) for text in expected} == expected
    assert warnings == []


def test_llama3_takes_a_piece_that_is_a_token_whole_as_llama_cpp_does(tokenizer_for):
    """llama.cpp (ignore_merges) and Llama 3's tokenizer.json take " the" as the token "Ġthe" even where no merge
    makes it; GPT-2's vocabularies go by the merges."""
    no_merge_to_the = ("Ġ t", "h e")
    llama3, _ = tokenizer_for("llama-bpe", merges=no_merge_to_the)
    gpt2, _ = tokenizer_for("gpt-2", merges=no_merge_to_the)
    assert llama3.tokenize(" the") == ["Ġthe"]
    assert gpt2.tokenize(" the") == ["Ġt", "he"]


@pytest.mark.parametrize("name", ["dbrx", "smaug-bpe"])
def test_llama3s_split_without_its_ignore_merges_goes_by_the_merges_as_llama_cpp_does(tokenizer_for, name):
    """dbrx and smaug-bpe split as Llama 3 does, but llama.cpp sets ignore_merges for the llama3 names only
    (`llama_vocab::impl::load`): a piece that is a token goes by the merges there."""
    tokenizer, _ = tokenizer_for(name, merges=("Ġ t", "h e"))
    assert tokenizer.tokenize(" the") == ["Ġt", "he"]


def test_llama3s_names_put_bos_first_where_the_file_does_not_say_as_llama_cpp_does(tmp_path):
    """llama.cpp sets add_bos for the llama3 names (Llama 3's tokenizer_config names no add_bos_token, so its GGUFs
    often carry no tokenizer.ggml.add_bos_token); transformers added none. Other names keep no BOS, and the
    converted copy a second load reads keeps the tokenizer's choice."""
    from models import load_model

    for pre, expected in (("llama-bpe", [1]), ("smollm", [])):
        write_tiny_gguf(tmp_path / f"{pre}.gguf", pre=pre)
        for _ in range(2):              # converted, then from the converted copy
            tokenizer = load_model(tmp_path / f"{pre}.gguf", device="cpu", max_context=32).tokenizer
            ids = tokenizer("the")["input_ids"]
            assert ids[:len(expected)] == expected and ids.count(1) == len(expected), (pre, ids)


@pytest.mark.parametrize(("pre", "message"), [("made-up-split", "pre-tokenizer 'made-up-split' is unknown here"),
                                              (None, "names no pre-tokenizer")])
def test_an_unknown_or_missing_name_keeps_gpt2s_split_and_says_so(tokenizer_for, pre, message):
    tokenizer, warnings = tokenizer_for(pre)
    assert {text: pieces(tokenizer, text) for text in GPT2_PIECES} == GPT2_PIECES
    assert len(warnings) == 1 and message in warnings[0] and "GPT-2" in warnings[0]


def test_a_name_transformers_splits_itself_is_left_to_it(tokenizer_for):
    """qwen2 (single digits, Llama 3's other rules) is not in our table: transformers knows it, so no warning."""
    tokenizer, warnings = tokenizer_for("qwen2")
    assert warnings == []
    assert pieces(tokenizer, NUMBER) == ["x", " =", " ", *DIGITS]


def test_the_warning_is_kept_with_the_conversion_and_given_at_every_load(tmp_path):
    from models import load_model

    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, pre="made-up-split")
    first = load_model(path, device="cpu", max_context=32)
    again = load_model(path, device="cpu", max_context=32)     # from the converted copy: the GGUF is not read
    assert first.load_warnings == again.load_warnings
    assert len(again.load_warnings) == 1 and "'made-up-split' is unknown here" in again.load_warnings[0]
    (tmp_path / "copy.gguf").write_bytes(path.read_bytes())    # shares the conversion's files, and its warning
    assert load_model(tmp_path / "copy.gguf", device="cpu", max_context=32).load_warnings == again.load_warnings
    write_tiny_gguf(tmp_path / "known.gguf", pre="smollm")
    assert load_model(tmp_path / "known.gguf", device="cpu", max_context=32).load_warnings == []


def test_the_embedded_model_splits_digits_after_spaces_and_newlines_as_it_was_trained(smollm_engine):
    """SmolLM2's file names "smollm": digits one by one first, so the spaces or newlines before a digit stay one
    piece. GPT-2's split (transformers' own) gave "\\n   " + " 1", which BPE made one token more than training."""
    tokenizer = smollm_engine.tokenizer
    assert tokenizer.tokenize("values = [\n    1,\n    2,\n]") == [
        "values", "Ġ=", "Ġ[", "ĊĠĠĠĠ", "1", ",", "ĊĠĠĠĠ", "2", ",", "Ċ", "]"]
    assert tokenizer.tokenize("x  1") == ["x", "ĠĠ", "1"]
    assert tokenizer.tokenize("]\n\n1. Accuracy") == ["]", "ĊĊ", "1", ".", "ĠAccuracy"]
    assert smollm_engine.load_warnings == []
