"""Repository-scale prompts: scan a repository, chunk it with tree-sitter, rank the chunks for a cursor or a
question, and pack them into a model's prompt format within a token budget.

    index = index_repository("path/to/repo")
    packed = build_completion_prompt(index, tokenizer, "pkg/main.py", line=10, col=5, budget_tokens=4096)
    packed.ids, packed.context, packed.stop_token_ids, packed.stop_strings, packed.format

Importing this package is cheap: tree-sitter is loaded on first use, torch never.
"""

from .chat import build_chat_prompt
from .chunking import Chunk
from .completion import build_completion_prompt
from .errors import BudgetError, ChatTemplateError, PromptError
from .index import RepoIndex, index_repository
from .packing import ContextItem, PackedPrompt
from .raw import build_raw_prompt
from .scan import ScanWarning

__all__ = [
    "Chunk",
    "ContextItem",
    "PackedPrompt",
    "BudgetError",
    "ChatTemplateError",
    "PromptError",
    "RepoIndex",
    "ScanWarning",
    "build_chat_prompt",
    "build_completion_prompt",
    "build_raw_prompt",
    "index_repository",
]
