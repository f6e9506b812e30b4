"""The base every config section shares: frozen, unknown keys refused with a did-you-mean; and `tagged` unions.

This is the schema toolkit, not the schema: it sits below both `tunefork.config` (the schema) and
`tunefork.adapters` (sections the schema embeds), so each imports it and neither has to import the other first.
"""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tunefork.errors import did_you_mean, shown_key


def _instead(key, known: set[str]) -> str:
    """What to write instead of an unknown key: the nearest known one, else remove it (and what this section takes)."""
    hint = did_you_mean(key, known)
    if hint:
        return hint
    names = sorted(k for k in known if not k.startswith("_"))
    shown = ", ".join(names[:12]) + (f", … ({len(names)} keys)" if len(names) > 12 else "")
    return f"; remove it (this section takes: {shown})"


class Section(BaseModel):
    """A frozen config section. A key the section does not define is an error, never silently dropped.

    `allow_inf_nan=False`: YAML reads `.inf` and `.nan` as floats, and no setting means anything with them (a learning
    rate of infinity diverges at the first step); every float field of every section refuses them, nested ones
    (`betas`, `clip`, class weights) included.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data):
        if isinstance(data, str) and "type" in cls.model_fields:
            return {"type": data}  # Ludwig's shorthand: `optimizer: adamw`
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_key", "unknown key {key}{hint}", {"key": shown_key(key), "hint": _instead(key, known)}
                    )
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_booleans_as_numbers(cls, value, info: ValidationInfo):
        """`batch_size: true` is not 1: pydantic's lax mode reads a bool as an int (or a float), so a field whose
        type admits no bool refuses one anywhere in its value (`clip: [true, 5]` too). Fields that hold sections
        leave their keys to those sections."""
        annotation = cls.model_fields[info.field_name].annotation
        if _holds_bool(value) and _numeric(annotation) and not _admits_bool(annotation):
            raise PydanticCustomError("bool_not_number", "expected a number, got a boolean")
        return value


def _holds_bool(value) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, dict) and any(_holds_bool(v) for v in value.values())


def _admits_bool(annotation) -> bool:
    """Whether `annotation` could mean a bool somewhere: bool itself, Any, or a nested section or model (which then
    judges its own fields)."""
    if annotation is bool or annotation is Any or annotation is object:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    args = get_args(annotation)
    return any(arg is True or arg is False for arg in args) or any(
        _admits_bool(arg) for arg in args if not isinstance(arg, (str, int, float)))


def _numeric(annotation) -> bool:
    if annotation in (int, float):
        return True
    return any(_numeric(arg) for arg in get_args(annotation) if not isinstance(arg, (str, int, float)))


def tagged(*members: type[Section], default: str | None = None, nullable: bool = False):
    """A union of sections chosen by their `type` key (Ludwig's string shorthand `adapter: lora` included).

    A missing or unknown `type` is one error that lists the types there are, instead of one error per member.
    `nullable` also accepts null (`adapter: null`), inside the union: `tagged(...) | None` cannot be written, as
    typing hashes the members and the discriminator's error context is a dict.
    """
    tags = [m.model_fields["type"].annotation.__args__ for m in members]
    choices = [t for group in tags for t in group]

    def pick(value):
        if value is None and nullable:
            return "null"
        if isinstance(value, str):
            return value if value in choices else None
        if isinstance(value, dict):
            tag = value.get("type", default)
            return tag if tag in choices else None
        return value.type if isinstance(value, Section) else None

    options = [Annotated[m, Tag(t)] for m, group in zip(members, tags, strict=True) for t in group]
    if nullable:
        options.append(Annotated[None, Tag("null")])
    union = Union[tuple(options)]  # noqa: UP007
    return Annotated[
        union,
        Discriminator(pick, custom_error_type="bad_type", custom_error_message="unknown type",
                      custom_error_context={"expected": ", ".join(choices)}),
    ]
