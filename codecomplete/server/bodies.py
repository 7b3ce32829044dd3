"""Request bodies checked at the edge, before anything reaches the engine: the size (413), the encoding and the JSON
(400), then the fields against the protocol's pydantic model (400 naming the first bad field). Types are strict
("5" is not a number), numbers finite (JSON's 1e999 reads as infinity), seeds within what a generator takes; fields
a model does not know are ignored, as llama.cpp and OpenAI ignore them (real clients send many: llama.vim's
`t_max_prompt_ms` and `cache_prompt`); a null is the field's default where the field has no use for None, as
llama.cpp's json_value, Go's decoder (Ollama) and OpenAI's nullable parameters read it (the openai package sends
`"temperature": null` for temperature=None); a UTF-8 byte order mark may come first, as llama.cpp reads a body. A
lone surrogate (`"\ud800"` is valid JSON, not valid text) becomes U+FFFD, as the command line does with such text: a
tokenizer refuses it, and so does a UTF-8 response."""
from __future__ import annotations

import json
import sys
import types
from typing import Annotated, TypeVar, Union, get_args, get_origin

from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from starlette.requests import Request

from prompts.tokens import tokenizable

from .errors import ApiError

MAX_BODY_BYTES = 1024 * 1024
TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}   # pydantic's names for union members

Model = TypeVar("Model", bound=BaseModel)
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]    # torch.Generator.manual_seed's range


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _null_is_default(cls, value, info: ValidationInfo):
        if value is None:
            field = cls.model_fields[info.field_name]
            if not field.is_required() and types.NoneType not in get_args(field.annotation):
                return field.get_default(call_default_factory=True)
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _whole_number_is_int(cls, value, info: ValidationInfo):
        """`"n_predict": 2.0` is 2, as llama.cpp's json_value and Ollama's options read a number for an integer
        (Python's json.dumps writes a float that holds a count so); a fraction stays an error."""
        if isinstance(value, float) and value.is_integer() and _takes_int(cls.model_fields[info.field_name].annotation):
            return int(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _null_alias_gives_way(cls, data):
        """A field's null alias gives way to another that has a value: pydantic takes the first alias present, null or
        not, so `{"max_completion_tokens": null, "max_tokens": 5}` (a client that sends every field) had no limit."""
        if not isinstance(data, dict):
            return data
        for field in cls.model_fields.values():
            if isinstance(field.validation_alias, AliasChoices):
                names = [name for name in field.validation_alias.choices if isinstance(name, str)]
                if any(data.get(name) is not None for name in names):
                    data = {key: value for key, value in data.items() if key not in names or value is not None}
        return data


def _takes_int(annotation) -> bool:
    """Whether a field is an integer (`int`, `int | None`, `Seed`) and not also a float."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    members = {get_args(m)[0] if get_origin(m) is Annotated else m for m in members}
    return int in members and float not in members


async def read_json(request: Request, model: type[Model], limit: int = MAX_BODY_BYTES) -> Model:
    return parse(await read_object(request, limit), model)


async def read_object(request: Request, limit: int = MAX_BODY_BYTES) -> dict:
    """The body as a JSON object, not yet a protocol's: a path two protocols share reads it once, and its fields say
    whose request it is (`parse` then checks them)."""
    # A list of codings, over any number of header lines, empty elements allowed (RFC 9110 8.4, 5.6.1); identity is
    # none. RFC 9110 15.5.16: a content coding the server does not apply is 415.
    codings = [c.strip().lower() for line in request.headers.getlist("content-encoding") for c in line.split(",")]
    applied = [c for c in codings if c not in ("", "identity")]
    if applied:
        raise ApiError(415, f"Content-Encoding {', '.join(applied)!r} is not supported: send the JSON body "
                            "uncompressed")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is larger than {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is larger than {limit:,} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    # One UTF-8 byte order mark before the JSON is skipped, as llama.cpp's server reads a body (nlohmann::json's
    # lexer skips it at the start of the input, and refuses it anywhere else, as here); Windows tools write one.
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_not_json)
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return _text_of(data)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except RecursionError:          # arrays in arrays, a few hundred deep (parsed, or then walked): no request needs it
        raise ApiError(400, "the request body nests too deeply") from None
    except NotJson as exc:          # (a ValueError too: before the next clause, which took it for a long integer)
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except ValueError:              # an integer of more than 4,300 digits (Python's own limit on converting one)
        # (its message tells the client to call sys.set_int_max_str_digits(): the server's workings, not the request's)
        raise ApiError(400, f"the request body is not usable JSON: an integer of more than "
                            f"{sys.get_int_max_str_digits():,} digits") from None


class NotJson(ValueError):
    """A literal Python's json reads and JSON has not."""


def _not_json(literal: str):
    """NaN, Infinity and -Infinity, which Python's json reads and JSON has not (llama.cpp's parser refuses them)."""
    raise NotJson(f"{literal} is not a JSON value")


def parse(data: dict, model: type[Model]) -> Model:
    """A JSON object (`read_object`'s) checked against a protocol's model: 400 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, _first_problem(exc)) from None
    except RecursionError:
        raise ApiError(400, "the request body nests too deeply") from None


def _text_of(value):
    """The JSON value with every string's lone surrogates replaced (keys too)."""
    if isinstance(value, str):
        return tokenizable(value)
    if isinstance(value, list):
        return [_text_of(item) for item in value]
    if isinstance(value, dict):
        return {tokenizable(key): _text_of(item) for key, item in value.items()}
    return value


def _first_problem(exc: ValidationError) -> str:
    """`n_predict: Input should be a valid integer`, `input_extra[2].text: Field required`. Of a union's errors, the
    one that got furthest into the value: a list of content parts with an image part is `content[1].type: Input
    should be 'text'`, not `content: Input should be a valid string` (the union's first member)."""
    error = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))    # (the first of the deepest)
    where = ""
    for part in error["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part.split("[")[0] not in TYPE_TAGS and part.isidentifier():
            where += f".{part}" if where else part
    return f"{where or 'body'}: {error['msg']}"


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """OpenAI's and Ollama's `stop`: one string or a list; empty ones mean nothing (llama.cpp skips them too)."""
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop or []) if s)


def check_ids(engine, prompt) -> None:
    """A prompt of token ids must name tokens of the vocabulary; any prompt must have something in it."""
    if not prompt:
        raise ApiError(400, "the prompt is empty")
    if isinstance(prompt, list):
        vocabulary = engine.model.config.vocab_size
        bad = next((i for i in prompt if not 0 <= i < vocabulary), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary (0..{vocabulary - 1})")
