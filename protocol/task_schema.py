"""The structure of a task file, as pydantic models, and its problems in a task file's words.

This is the first of the two passes a task file goes through (protocol.taskfile runs the
second, on what the task means). The models forbid unknown fields, so a misspelt field is
an error, and their types are strict, so ``"100"`` is not a count. Each pydantic error is
turned into one line that names the field by its dotted path:
``inputs.a.generate.count: must be at least 1, got -5``.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from protocol.errors import TaskFileError
from protocol.inputs import DISTRIBUTIONS, DTYPES, MAX_ITEM_DIMS, MAX_SEED, show_json
from protocol.operations import OPERATIONS, RETURN_MODES

MAX_ATTEMPTS_LIMIT = 100
DEFAULT_MAX_ATTEMPTS = 3
MAX_NAME_LENGTH = 64
MAX_REQUIREMENTS = 16


def _problem(message: str, **context: object) -> PydanticCustomError:
    """A validation error whose message is already in a task file's words."""
    return PydanticCustomError("task_file", message, context)  # type: ignore[arg-type]


class _Model(BaseModel):
    """Common ground of the task file models: unknown fields and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_null(cls, value: object) -> object:
        # Optional fields default to None in Python, but a JSON null is never meant.
        if value is None:
            raise _problem("must not be null")
        return value


class GenerateModel(_Model):
    """Items drawn from numpy.random.default_rng([seed, i]) for item i."""

    model_config = ConfigDict(title="generate")
    count: int = Field(ge=1, description="How many items.")
    shape: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=1, max_length=MAX_ITEM_DIMS, description="The shape of one item."
    )
    seed: int = Field(ge=0, le=MAX_SEED, description="Item i is drawn from default_rng([seed, i]).")
    distribution: Literal[DISTRIBUTIONS] = Field("normal", description="How each item is drawn.")  # type: ignore[valid-type]
    dtype: Literal[DTYPES] = Field("float64", description="float32 items are drawn in float64, then cast.")  # type: ignore[valid-type]


_SOURCES = ("generate", "file", "inline")


class InputModel(_Model):
    """One input: exactly one of generate, file or inline."""

    model_config = ConfigDict(
        title="input",
        json_schema_extra={
            "oneOf": [{"required": [source]} for source in _SOURCES],
            "dependentRequired": {"key": ["file"]},
        },
    )
    generate: GenerateModel | None = None
    file: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="A .npy or .npz file, relative to the task file; first axis the items."
    )
    key: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="The array to take from a .npz file."
    )
    inline: list[Any] | None = Field(None, description="Nested lists of numbers; first axis the items.")

    @model_validator(mode="after")
    def _one_source(self) -> InputModel:
        given = [source for source in _SOURCES if getattr(self, source) is not None]
        if len(given) != 1:
            got = " and ".join(f'"{source}"' for source in given) or "none"
            raise _problem('needs exactly one of "generate", "file" or "inline", got {got}', got=got)
        if self.key is not None and self.file is None:
            raise _problem('"key" only goes with "file"')
        return self


class TaskModel(_Model):
    """A chainconsole task file: one operation over a number of items."""

    model_config = ConfigDict(title="chainconsole task file")
    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)] | None = Field(
        None, description="A short name; default: the file name without .json."
    )
    operation: str = Field(
        description="The operation applied to every item: a built-in, or one an installed package adds.",
        json_schema_extra=lambda schema: schema.update(enum=list(OPERATIONS.builtin_names())),
    )
    inputs: dict[str, InputModel] = Field(description="The inputs the operation takes, by name.")
    chunk_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description='Items per chunk, or "auto" to size chunks from measured speed.'
    )
    return_mode: Literal[RETURN_MODES] = Field(  # type: ignore[valid-type]
        "full", alias="return", description="full: every result item; norms: each item's Frobenius norm."
    )
    max_attempts: int = Field(
        DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=MAX_ATTEMPTS_LIMIT,
        description="How many times one chunk may be tried before its items are marked failed.",
    )
    requires: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")],
                   Annotated[str, Field(min_length=1, max_length=128)] | int | float] = Field(
        default_factory=dict, max_length=MAX_REQUIREMENTS,
        description="What a node must have to get this task's chunks, as its --resource options say it: "
                    "at least this number, or exactly this name.",
    )

    @field_validator("operation")
    @classmethod
    def _known_operation(cls, operation: str) -> str:
        # Checked against the registry when the file is read, so installed operations count.
        if operation not in OPERATIONS:
            raise _problem("{problem}", problem=_choice_message(tuple(OPERATIONS), operation))
        return operation

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        if not name.isprintable():
            raise _problem("must not contain control characters")
        return name

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _chunk_size(cls, value: object) -> object:
        # One message for the whole union instead of one per member.
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise _problem('must be a positive integer or "auto", got {got}', got=show_json(value))


_CHOICES: dict[str, tuple[str, ...]] = {
    "return": RETURN_MODES,
    "distribution": DISTRIBUTIONS,
    "dtype": DTYPES,
}


def _fields_at(parent: tuple[int | str, ...]) -> list[str]:
    """The field names a task file may use at ``parent`` (for "did you mean")."""
    if not parent:
        model: type[BaseModel] = TaskModel
    elif len(parent) == 2 and parent[0] == "inputs":
        model = InputModel
    elif len(parent) == 3 and parent[2] == "generate":
        model = GenerateModel
    else:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _did_you_mean(word: object, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _format_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _choice_message(choices: tuple[str, ...], value: object) -> str:
    listed = ", ".join(f'"{choice}"' for choice in choices)
    return f"must be one of {listed}, got {show_json(value)}" + _did_you_mean(value, choices)


def _describe(error: ErrorDetails) -> str:
    """One problem line, in the words of a task file rather than of pydantic."""
    kind, loc, value = error["type"], error["loc"], error.get("input")
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    field = loc[-1] if loc else ""
    if kind == "task_file":
        message = error["msg"]
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "extra_forbidden":
        message = "unknown field" + _did_you_mean(field, _fields_at(loc[:-1]))
    elif kind == "literal_error" and field in _CHOICES:
        message = _choice_message(_CHOICES[str(field)], value)
    elif kind == "int_type":
        message = f"must be an integer, got {show_json(value)}"
    elif kind == "string_type":
        message = f"must be a string, got {show_json(value)}"
    elif kind == "list_type":
        message = f"must be a list, got {show_json(value)}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"must be a JSON object, got {show_json(value)}"
    elif kind == "greater_than_equal":
        message = f"must be at least {ctx['ge']}, got {show_json(value)}"
    elif kind == "less_than_equal":
        message = f"must be at most {ctx['le']}, got {show_json(value)}"
    elif kind == "string_too_short":
        message = "must not be empty"
    elif kind == "string_too_long":
        message = f"must be at most {ctx['max_length']} characters long"
    elif kind == "too_short":
        message = f"must have at least {ctx['min_length']} entries"
    elif kind == "too_long":
        message = f"must have at most {ctx['max_length']} entries"
    else:
        message = error["msg"]
    path = _format_path(loc)
    return f"{path}: {message}" if path else f"the task {message}"


def validate_structure(document: object) -> TaskModel:
    """Check the structure of a parsed task file; TaskFileError lists every problem found."""
    try:
        return TaskModel.model_validate(document)
    except ValidationError as error:
        raise TaskFileError([_describe(detail) for detail in error.errors()]) from None


class _TaskFileJsonSchema(GenerateJsonSchema):
    """Leaves out the None of optional fields: it is only their Python default, JSON null is refused."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default") is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def task_json_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of a task file."""
    schema = TaskModel.model_json_schema(by_alias=True, schema_generator=_TaskFileJsonSchema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
