"""Prompt layouts for completion, chosen from the tokens a tokenizer's vocabulary has.

A layout is told as segments: an ``int`` is a special token id, a ``str`` is text that the packer encodes
(see tokens.py). Three cursor styles, by the fill-in-the-middle tokens present:

``codellama-infill``  ``<PRE>``/``<SUF>``/``<MID>``, stop at ``<EOT>``: ``[BOS, PRE] + enc(prefix) + [SUF] +
                      enc_infill(suffix) + [MID]``, exactly CodeLlama's reference.
``starcoder-fim``     ``<fim_prefix>``/``<fim_suffix>``/``<fim_middle>`` (also the ``<|fim_prefix|>``,
                      ``<fim-prefix>`` and ``<｜fim▁begin｜>`` spellings of Qwen, SantaCoder and DeepSeek-Coder).
``left-to-right``     no FIM tokens (the embedded SmolLM2): the prompt ends at the cursor.

The two FIM formats lay the cursor's text out prefix-suffix-middle (PSM) by default, or, with ``suffix_first``,
suffix-prefix-middle (SPM) as llama.cpp's ``--spm-infill`` does: its format_prompt_infill swaps its two parts,
``[FIM_PRE] prefix`` and ``[FIM_SUF] suffix``, so the prompt reads ``[SUF] suffix [PRE] prefix [MID]`` after the
repository context. The text a keystroke changes then ends the prompt, and the model's cache of everything before
it, the suffix included, stays valid. (CodeLlama's own SPM, ``[PRE, SUF] suffix [MID] prefix``, is not this.)
A left-to-right prompt has no suffix to move: ``suffix_first`` changes nothing there.

Repository context comes as file sections: delimited by ``<file_sep>`` (or ``<filename>``) after an optional
``<repo_name>`` where the vocabulary has them, StarCoder2's repository format; otherwise as comments in the
current file's language, at the start of the prefix ("Path: ..." followed by the chunk's lines commented out,
as Copilot and Tabby do), so that the prompt stays one plausible source file.
"""

from __future__ import annotations

from dataclasses import dataclass

Segment = int | str

# Fill-in-the-middle token spellings: (prefix, suffix, middle).
CODELLAMA_FIM = ("▁<PRE>", "▁<SUF>", "▁<MID>")
CODELLAMA_FIM_PLAIN = ("<PRE>", "<SUF>", "<MID>")
CODELLAMA_EOT = ("▁<EOT>", "<EOT>")
STARCODER_FIM = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder's (full-width bars, "▁")
)
FILE_SEPARATORS = ("<file_sep>", "<|file_sep|>", "<filename>")
REPO_NAMES = ("<repo_name>", "<|repo_name|>", "<reponame>")
# Tokens that end a completion when the model emits them (besides its EOS).
CONTROL_TOKENS = (
    "<|endoftext|>", "<fim_pad>", "<|fim_pad|>", "<|im_end|>", "<|im_start|>", "<|eot_id|>", "<file_sep>",
    "<|file_sep|>", "<filename>", "<repo_name>", "<|repo_name|>", "<reponame>",
)


@dataclass(frozen=True)
class CompletionFormat:
    """How one family of models wants repository context and the text around the cursor."""

    name: str  # "codellama-infill" | "starcoder-fim" | "left-to-right"
    start_ids: tuple[int, ...]  # what the tokenizer puts first by default (Llama's BOS)
    fim: tuple[int, int, int] | None  # prefix, suffix, middle ids; None: left to right
    file_sep: int | None  # a token that opens each file; None: comment headers
    repo_name: int | None
    stop_token_ids: tuple[int, ...]
    suffix_first: bool = False  # SPM: the text after the cursor comes first (llama.cpp's --spm-infill)

    def opening(self, repo: str, comment: str, has_context: bool) -> list[Segment]:
        """Everything before the first context section."""
        segments: list[Segment] = list(self.start_ids)
        if self.file_sep is not None:
            return segments + ([self.repo_name, repo] if self.repo_name is not None else [])
        if self.fim is not None and not self.suffix_first:
            segments.append(self.fim[0])  # commented context lives inside the prefix (SPM: before the suffix)
        return segments + ([f"{comment} Repository: {repo}\n"] if has_context else [])

    def section(self, path: str, comment: str) -> list[Segment]:
        """The opening of a context file's section."""
        if self.file_sep is not None:
            return [self.file_sep, f"{path}\n"]
        return [f"{comment} Path: {path}\n"]

    def chunk(self, text: str, comment: str) -> list[Segment]:
        """One chunk inside its file's section (``comment``: the current file's marker)."""
        if self.file_sep is not None:
            return [text + "\n"]
        return ["".join(f"{comment} {line}\n" if line.strip() else f"{comment}\n" for line in text.split("\n"))]

    def gap(self, own_comment: str, comment: str) -> list[Segment]:
        """Between two chunks of one file that are not adjacent (``own_comment``: the marker of that file)."""
        return [f"{own_comment if self.file_sep is not None else comment} ...\n"]

    def blank(self, comment: str) -> list[Segment]:
        """A blank line between two chunks of one file that only blank lines separate."""
        return ["\n" if self.file_sep is not None else f"{comment}\n"]

    def cursor(
        self, path: str, comment: str, prefix: list[str], suffix: list[str], has_context: bool
    ) -> tuple[list[Segment], list[Segment]]:
        """The current file around the cursor, the part that changes with every keystroke, from the pieces of
        text before and after the cursor (in file order): the segments carrying the text before the cursor, and
        those carrying the text after it, each with the markers that go with it (``in_order`` lays them out)."""
        if self.file_sep is not None:
            opens, header = [self.file_sep], [f"{path}\n"]
        else:
            opens, header = [], ([f"{comment} Path: {path}\n"] if has_context else [])
        if self.fim is None:
            return opens + header + list(prefix), []
        pre, suf, mid = self.fim
        if self.suffix_first:   # llama.cpp's: the file's header ([FIM_SEP]name), [SUF] suffix [PRE] prefix [MID]
            return [pre, *prefix, mid], [*opens, *header, suf, *suffix]
        before = opens + ([pre] if self.file_sep is not None else []) + header + list(prefix)   # (codellama's PRE
        return before, [suf, *suffix, mid]                                                       # opens the prompt)

    def in_order(self, before: list[Segment], after: list[Segment]) -> list[tuple[list[Segment], bool]]:
        """``cursor``'s two parts in prompt order, each with whether it holds the text before the cursor."""
        if self.suffix_first and self.fim is not None:
            return [(after, False), (before, True)]
        return [(before, True), (after, False)]

    def stop_strings(self, mid_line: bool) -> list[str]:
        """Left to right, the model cannot know where the code after the cursor begins: stop at the end of the
        line when completing inside one, else at the first blank line (one block at a time)."""
        if self.fim is not None:
            return []
        return ["\n"] if mid_line else ["\n\n"]


def completion_format(encoder, suffix_first: bool = False) -> CompletionFormat:
    """The format the tokenizer's vocabulary supports, best first: CodeLlama infill, StarCoder FIM, left to right;
    ``suffix_first``: SPM rather than PSM where it has FIM tokens."""
    token_id = encoder.token_id
    stops = [i for i in map(token_id, CONTROL_TOKENS) if i is not None]
    eos = encoder.tokenizer.eos_token_id
    if eos is not None:
        stops.append(eos)
    file_sep = next((i for i in map(token_id, FILE_SEPARATORS) if i is not None), None)
    repo_name = next((i for i in map(token_id, REPO_NAMES) if i is not None), None)
    start = tuple(encoder.start_ids)
    for spelling in (CODELLAMA_FIM, CODELLAMA_FIM_PLAIN):
        ids = [token_id(token) for token in spelling]
        if None not in ids:
            eot = [i for i in map(token_id, CODELLAMA_EOT) if i is not None]
            return CompletionFormat("codellama-infill", start, tuple(ids), None, None, _unique(eot + stops),
                                    suffix_first)
    for spelling in STARCODER_FIM:
        ids = [token_id(token) for token in spelling]
        if None not in ids:
            return CompletionFormat("starcoder-fim", start, tuple(ids), file_sep, repo_name, _unique(ids + stops),
                                    suffix_first)
    return CompletionFormat("left-to-right", start, None, file_sep, repo_name, _unique(stops))


def _unique(ids: list[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(ids))
