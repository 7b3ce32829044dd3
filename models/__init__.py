"""The model side of codecomplete: a lean Llama, its loaders and the streaming decode loop.

    from models import load_model, GenerationConfig
    engine = load_model()                    # $CODECOMPLETE_MODEL, or the embedded SmolLM2-135M GGUF
    result = engine.generate(engine.tokenizer.encode("def fib(n):"), GenerationConfig(max_new_tokens=32))

`import models` is cheap: the errors and the request/result types load at once, everything that
needs torch (or gguf, imported only when a GGUF is converted) loads on first use.
"""

from models.errors import (ContextTooLongError, MismatchError, ModelError, ModelNotFoundError, OutOfMemoryError,
                           SettingError, UnsupportedModelError)
from models.generation import GenerationConfig, GenerationResult, Timings

_LAZY = {
    "load_model": "models.load", "Engine": "models.engine",
    "ModelConfig": "models.config", "PRESETS": "models.config", "preset": "models.config",
    "Transformer": "models.llama", "build_random_model": "models.llama",
}

__all__ = ["ContextTooLongError", "Engine", "GenerationConfig", "GenerationResult", "MismatchError", "ModelConfig",
           "ModelError", "ModelNotFoundError", "OutOfMemoryError", "PRESETS", "SettingError", "Timings", "Transformer",
           "UnsupportedModelError", "build_random_model", "load_model", "preset"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
