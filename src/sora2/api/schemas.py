"""Base models for request and response bodies: camelCase on the wire, unknown fields rejected."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.alias_generators import to_camel


class Input(BaseModel):
    """A request body: unknown fields are an error naming the field, never silently dropped."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, str_strip_whitespace=True
    )

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        """PostgreSQL text cannot hold NUL: it would fail at the INSERT as a 500. Refused here as
        a 422 naming the field. (Unpaired surrogates never get this far: pydantic refuses them.)"""
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(
                "contains a NUL character (\\u0000), which cannot be stored; remove it"
            )
        return value


class Output(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class Page(Output):
    page: int
    limit: int
    total: int


PageNumber = Annotated[int, Query(ge=1, le=100_000, description="1-based page number")]
PageSize = Annotated[int, Query(ge=1, le=100, description="items per page (at most 100)")]
