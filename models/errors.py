"""The errors the models package raises: one line each, naming the file (or model) and the problem.

The app prints `str(error)` as is and maps the class to an exit code, so messages say what to do next.
"""


class ModelError(Exception):
    """Anything that stops a model from loading or generating."""


class ModelNotFoundError(ModelError):
    """The named path, package or hub id does not exist (or is not cached while offline)."""


class UnsupportedModelError(ModelError):
    """The checkpoint exists but is not something this package runs (architecture, quantization, format)."""


class ContextTooLongError(ModelError):
    """A prompt or a requested context does not fit the KV cache or the model's position limit."""


class MismatchError(ModelError):
    """What the user named does not fit together: an option the model cannot take (an attention backend whose kernels
    do not take its head dim), or a checkpoint folder whose files disagree (a tokenizer making ids its embedding table
    lacks). Said as a usage error (exit 2), as a missing file is; the model itself may be fine."""


class SettingError(ValueError):
    """An environment setting (CODECOMPLETE_GEMV, _PREFILL_BUCKET, _ALLREDUCE, _TP_TIMEOUT; torchrun's RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; GLOO_SOCKET_IFNAME) or a choice like the number of ranks (--gpus) holds a
    value it cannot take: the user's input, like an option (a ValueError, as library callers catch it)."""


class OutOfMemoryError(ModelError):
    """The weights or the KV cache do not fit in free device memory; the message says what would fit."""
