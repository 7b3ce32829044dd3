"""The errors prompts raises: for bad input, PromptError, and its kind for a budget too small, BudgetError; for a
chat template that cannot render, ChatTemplateError."""


class PromptError(ValueError):
    """A problem with what the user asked for, told in one line.

    Raised for a missing file, a path outside the repository, a cursor position out of range, a repository
    with nothing to index, or a budget too small for even the prompt's fixed tokens. The app maps it to exit
    code 2.
    """


class BudgetError(PromptError):
    """The token budget cannot hold even the prompt's fixed part (its format, the file name, the question).

    A separate class so the app can say which of its options set the budget."""


class ChatTemplateError(Exception):
    """The tokenizer's chat template cannot render the conversation (a syntax error, a `raise_exception` it always
    reaches, no text at all): the model's files are at fault, not what was asked. The app maps it to exit code 1, as a
    model it cannot load."""
