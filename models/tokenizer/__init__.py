"""Text out of token ids, one token at a time: incremental detokenization and stop strings."""

from models.tokenizer.detokenize import IncrementalDetokenizer
from models.tokenizer.stop_strings import StopStringMatcher

__all__ = ["IncrementalDetokenizer", "StopStringMatcher"]
