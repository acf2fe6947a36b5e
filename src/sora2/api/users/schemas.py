"""Account bodies: who you are, and the rules for emails, passwords and nicknames."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from sora2.api.schemas import Input, Output

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 128


MAX_EMAIL = 320


def _email(value: str) -> str:
    value = value.strip().lower()
    # Some characters grow when lower-cased ('İ' becomes two): the stored form must fit the column.
    if len(value) > MAX_EMAIL:
        raise ValueError(f"must be at most {MAX_EMAIL} characters once lower-cased")
    if not _EMAIL.match(value):
        raise ValueError("must be an email address such as ana@example.com")
    return value


def _password(value: str) -> str:
    if len(value) < MIN_PASSWORD:
        raise ValueError(f"must be at least {MIN_PASSWORD} characters")
    if value.isalpha() or value.isdigit():
        raise ValueError("must mix letters with digits or symbols")
    return value


def _nickname(value: str) -> str:
    if not value or any(not ch.isprintable() for ch in value):
        raise ValueError("must be 1 to 50 printable characters")
    return value


Email = Annotated[str, Field(min_length=3, max_length=MAX_EMAIL), AfterValidator(_email)]
Password = Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD), AfterValidator(_password)]
Nickname = Annotated[str, Field(min_length=1, max_length=50), AfterValidator(_nickname)]


class UserOut(Output):
    id: str
    email: str
    nickname: str
    role: str
    status: str
    credits: int
    created_at: datetime


class ProfileUpdate(Input):
    nickname: Nickname


class PasswordChange(Input):
    current_password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD)]
    new_password: Password
