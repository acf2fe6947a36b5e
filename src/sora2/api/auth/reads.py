"""The signed-in check as SQL for the hot routes: one join that also carries the route's read.

Every signed-in request asks the database whether its session is still live and its account
active, so logout, a password change or a suspension take effect at once (a token is only
remembered for its signature check, see `AccessTokens`). The hot routes put that check in the
same statement as what they read: one round trip instead of two.
"""

from __future__ import annotations

from sora2.api.db.rows import Statement

# `s` is the caller's session, `u` their account; a statement adds its own joins and columns.
SIGNED_IN_FROM = "auth_sessions s JOIN users u ON u.id = s.user_id"
SIGNED_IN = (
    "s.id = :session_id AND s.user_id = :user_id AND s.revoked_at IS NULL AND u.status = 'active'"
)

BALANCE = Statement("SELECT credits FROM users WHERE id = :user_id")
CREDITS = Statement(f"SELECT u.credits FROM {SIGNED_IN_FROM} WHERE {SIGNED_IN}")
ACCOUNT = Statement(
    "SELECT u.id, u.email, u.nickname, u.role, u.status, u.credits, u.created_at "
    f"FROM {SIGNED_IN_FROM} WHERE {SIGNED_IN}"
)
