"""`/api/auth`: register, login, refresh, logout, me."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from sora2.api.auth import service
from sora2.api.auth.cookies import clear_session_cookies, set_session_cookies
from sora2.api.auth.schemas import LoginIn, MessageOut, RefreshIn, RegisterIn, SessionOut
from sora2.api.context import ApiContext
from sora2.api.deps import ACCESS_COOKIE, REFRESH_COOKIE, ClientIp, Context, CurrentUser, SessionDep
from sora2.api.errors import ERROR_RESPONSES, ApiError, unauthorized
from sora2.api.users.models import User
from sora2.api.users.schemas import UserOut

router = APIRouter(prefix="/api/auth", tags=["auth"], responses=ERROR_RESPONSES)


def _session_response(
    request: Request,
    response: Response,
    context: ApiContext,
    user: User,
    issued: service.IssuedSession,
) -> SessionOut:
    access = context.tokens.issue(user_id=user.id, session_id=issued.session_id)
    set_session_cookies(
        response, context.settings, access_token=access, refresh_token=issued.refresh_token
    )
    # A browser (it always sends Origin with a POST) keeps its session in the HttpOnly cookies
    # alone: tokens in the body would be readable by any script on the page. API clients, which
    # send no Origin, get them in the body for `Authorization: Bearer`.
    from_browser = "origin" in request.headers
    return SessionOut(
        user=UserOut.model_validate(user),
        access_token=None if from_browser else access,
        refresh_token=None if from_browser else issued.refresh_token,
        expires_in=context.tokens.ttl_seconds,
    )


async def _sign_in(
    request: Request, response: Response, context: ApiContext, session: SessionDep, user: User
) -> SessionOut:
    """A new session for `user`, committed with whatever the route did, and its answer."""
    issued = await service.start_session(
        session, user_id=user.id, ttl_days=context.settings.refresh_token_ttl_days
    )
    return _session_response(request, response, context, user, issued)


@router.post(
    "/register", response_model=SessionOut, status_code=201, responses={409: ERROR_RESPONSES[400]}
)
async def register(
    body: RegisterIn,
    request: Request,
    response: Response,
    context: Context,
    session: SessionDep,
    ip: ClientIp,
) -> SessionOut:
    """Create an account (with the sign-up gift of credits) and sign in."""
    settings = context.settings
    await context.limiter.check_and_record(
        f"register:ip:{ip}", settings.register_limit_per_ip, "sign-ups from your address"
    )
    await context.limiter.check_and_record(
        f"register:email:{body.email}", settings.login_limit_per_account, "sign-ups for this email"
    )
    user = await service.create_user(
        session,
        passwords=context.passwords,
        email=body.email,
        password=body.password,
        nickname=body.nickname,
        signup_credits=settings.signup_credits,
    )
    return await _sign_in(request, response, context, session, user)


@router.post("/login", response_model=SessionOut)
async def login(
    body: LoginIn,
    request: Request,
    response: Response,
    context: Context,
    session: SessionDep,
    ip: ClientIp,
) -> SessionOut:
    """Sign in with email and password: sets the session cookies (and, for API clients, returns
    the tokens)."""
    settings = context.settings
    account_key = f"login:account:{body.email.strip().lower()}"
    await context.limiter.check_and_record(
        f"login:ip:{ip}", settings.login_limit_per_ip, "sign-in attempts from your address"
    )
    await context.limiter.enforce(
        account_key, settings.login_limit_per_account, "failed sign-ins for this account"
    )
    try:
        user = await service.authenticate(
            session, passwords=context.passwords, email=body.email, password=body.password
        )
    except ApiError:
        await context.limiter.record(account_key)
        raise
    return await _sign_in(request, response, context, session, user)


@router.post("/refresh", response_model=SessionOut)
async def refresh(
    request: Request,
    response: Response,
    context: Context,
    session: SessionDep,
    body: RefreshIn | None = None,
) -> SessionOut:
    """Trade the refresh token (cookie or body) for a new pair; each refresh token works once."""
    token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise unauthorized("Send the refresh cookie or refreshToken in the body.")
    user_id, issued = await service.rotate(
        session,
        refresh_token=token,
        ttl_days=context.settings.refresh_token_ttl_days,
        reuse_grace_seconds=context.settings.refresh_reuse_grace_seconds,
    )
    user = await session.get(User, user_id)
    if user is None or user.status != "active":
        raise unauthorized("This account cannot sign in.")
    return _session_response(request, response, context, user, issued)


@router.post("/logout", response_model=MessageOut)
async def logout(
    request: Request,
    response: Response,
    context: Context,
    session: SessionDep,
    body: RefreshIn | None = None,
) -> MessageOut:
    """End this session (its refresh and access tokens stop working) and clear the cookies."""
    session_id = await _session_to_end(request, context, session, body)
    if session_id is not None:
        await service.revoke_session(session, session_id=session_id, reason="logout")
    clear_session_cookies(response, context.settings)
    return MessageOut(message="Signed out.")


async def _session_to_end(
    request: Request, context: ApiContext, session: SessionDep, body: RefreshIn | None
) -> str | None:
    header = request.headers.get("authorization", "")
    access = (
        header[7:].strip()
        if header.lower().startswith("bearer ")
        else request.cookies.get(ACCESS_COOKIE)
    )
    claims = context.tokens.read(access) if access else None
    if claims is not None:
        return claims.session_id
    token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    return await service.session_of_refresh_token(session, token) if token else None


@router.get("/me", response_model=UserOut)
async def me(user: CurrentUser) -> UserOut:
    """The signed-in account."""
    return UserOut.model_validate(user)
