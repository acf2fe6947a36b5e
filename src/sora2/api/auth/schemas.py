"""Sign-up, sign-in and refresh bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sora2.api.schemas import Input, Output
from sora2.api.users.schemas import MAX_PASSWORD, Email, Nickname, Password, UserOut


class RegisterIn(Input):
    email: Email
    password: Password
    nickname: Nickname


class LoginIn(Input):
    email: Annotated[str, Field(min_length=1, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD)]


class RefreshIn(Input):
    refresh_token: Annotated[str | None, Field(max_length=200)] = Field(
        None, description="Omit when the refresh cookie is sent"
    )


class SessionOut(Output):
    user: UserOut
    access_token: str | None = Field(
        description="For API clients; null for browsers (requests with Origin), whose session "
        "lives only in HttpOnly cookies"
    )
    refresh_token: str | None = Field(description="As access_token")
    token_type: str = "bearer"  # noqa: S105 - the OAuth scheme name
    expires_in: int = Field(description="Seconds until the access token expires")


class MessageOut(Output):
    message: str
