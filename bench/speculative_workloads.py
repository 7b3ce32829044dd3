"""Workloads for speculative decoding, built from code nobody here wrote (installed packages' sources).

Two kinds, as the app would send them to the embedded SmolLM2:

copy-heavy
  completions inside a file whose sibling in the repository holds near-identical code: transformers'
  model families are generated from one another (modeling_mistral.py vs modeling_llama.py ...), so the
  body of MistralAttention.forward is LlamaAttention.forward with names changed. Each item copies the
  two files into a temporary repository, indexes it and packs the completion prompt with `prompts`
  (the sibling arrives as ranked repository context, the current file as the text before the cursor);
  and chat answers asked to repeat a function (from rich, jinja2, httpx, click) with one change.
nothing to copy
  completions of a file with no sibling at a point where the code that follows appears nowhere before,
  and chat questions asking for new code, with no code in the prompt.

    python bench/speculative_workloads.py        # prints each item's prompt size and its first lines
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

@dataclass
class Item:
    kind: str          # "copy" | "fresh"
    name: str
    prompt_ids: list[int]
    stop_token_ids: tuple[int, ...]

def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])

# (current file, its near-identical sibling, the line after which the cursor sits), under transformers/models.
SIBLING_COMPLETIONS = [
    ("mistral/modeling_mistral.py", "llama/modeling_llama.py", "class MistralAttention(nn.Module):"),
    ("qwen2/modeling_qwen2.py", "mistral/modeling_mistral.py", "class Qwen2DecoderLayer(GradientCheckpointingLayer):"),
    ("olmo2/modeling_olmo2.py", "olmo/modeling_olmo.py", "class Olmo2Attention(nn.Module):"),
    ("granite/modeling_granite.py", "llama/modeling_llama.py", "class GraniteMLP(nn.Module):"),
    ("starcoder2/modeling_starcoder2.py", "mistral/modeling_mistral.py", "class Starcoder2DecoderLayer(GradientCheckpointingLayer):"),
    ("qwen3/modeling_qwen3.py", "qwen2/modeling_qwen2.py", "class Qwen3Model(Qwen3PreTrainedModel):"),
]

# (module, function, the parameter to rename): functions of 10-40 lines to repeat with one change.
REPEAT_FUNCTIONS = [
    ("rich.text", "Text.truncate", "max_width"),
    ("jinja2.utils", "urlize", "trim_url_limit"),
    ("httpx._urlparse", "normalize_path", "path"),
    ("click.utils", "make_str", "value"),
]

# Files with no sibling, the cursor after a line whose continuation is not copied from anywhere above.
FRESH_COMPLETIONS = [
    ("rich", "progress_bar.py", "    def _get_pulse_segments("),
    ("jinja2", "lexer.py", "def compile_rules(environment: \"Environment\") -> t.List[t.Tuple[str, str]]:"),
    ("httpx", "_multipart.py", "def get_multipart_boundary_from_content_type("),
]

FRESH_QUESTIONS = [
    "Write a Python function that parses a duration like '1h30m15s' into seconds, with a docstring.",
    "Write a small Python class for an LRU cache with get and put methods, explained briefly.",
    "Write a Python function that walks a directory tree and returns the ten largest files.",
]

def cursor_line(text: str, anchor: str) -> int:
    """The 1-based line after the first line starting with `anchor`."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith(anchor):
            return number + 1
    raise ValueError(f"anchor {anchor!r} not found")

def completion_item(kind: str, name: str, files: dict[str, Path], current: str, anchor: str,
                    tokenizer, budget: int) -> Item:
    """A completion prompt packed by `prompts` in a temporary repository holding `files`."""
    from prompts import build_completion_prompt, index_repository

    with tempfile.TemporaryDirectory() as repo, tempfile.TemporaryDirectory() as cache:
        for relative, source in files.items():
            (Path(repo) / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, Path(repo) / relative)
        index = index_repository(repo, cache_dir=cache, workers=1)
        text = (Path(repo) / current).read_text()
        packed = build_completion_prompt(index, tokenizer, current, line=cursor_line(text, anchor), col=1,
                                         budget_tokens=budget)
    return Item(kind, name, packed.ids, tuple(packed.stop_token_ids))

def chat_item(kind: str, name: str, question: str, tokenizer) -> Item:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    stops = tuple(i for i in (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id) if i is not None)
    return Item(kind, name, list(ids), stops)

def function_source(module: str, qualname: str) -> str:
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return inspect.cleandoc(inspect.getsource(obj)) if "." in qualname else inspect.getsource(obj)

def copy_heavy(tokenizer, budget: int = 1536) -> list[Item]:
    models = package_dir("transformers") / "models"
    items = [completion_item("copy", f"complete {current} (sibling {sibling})",
                             {f"models/{current}": models / current, f"models/{sibling}": models / sibling},
                             f"models/{current}", anchor, tokenizer, budget)
             for current, sibling, anchor in SIBLING_COMPLETIONS]
    for module, function, parameter in REPEAT_FUNCTIONS:
        question = (f"Here is `{function}` from {module.split('.')[0]}:\n\n```python\n{function_source(module, function)}\n```\n\n"
                    f"Repeat this function with one change: rename the parameter `{parameter}` to `{parameter}_arg`. "
                    f"Reply with the code only.")
        items.append(chat_item("copy", f"chat: repeat {module}.{function}, one rename", question, tokenizer))
    return items

def nothing_to_copy(tokenizer, budget: int = 1536) -> list[Item]:
    items = [completion_item("fresh", f"complete {package}/{path} (no sibling)", {path: package_dir(package) / path},
                             path, anchor, tokenizer, budget)
             for package, path, anchor in FRESH_COMPLETIONS]
    items += [chat_item("fresh", f"chat: {question[:48]}...", question, tokenizer) for question in FRESH_QUESTIONS]
    return items


if __name__ == "__main__":
    from models import load_model

    tokenizer = load_model().tokenizer
    for item in copy_heavy(tokenizer) + nothing_to_copy(tokenizer):
        tail = tokenizer.decode(item.prompt_ids[-40:])
        print(f"[{item.kind}] {item.name}: {len(item.prompt_ids)} tokens, ends with {tail!r}")
