"""`sora2 user list | set-role | ban | unban | credits add`: the admin rules at a shell, audited
as the command line."""

from __future__ import annotations

import json

from sora2.settings import Settings
from tests.api.harness import PASSWORD, RunningApi, register_admin
from tests.api.test_ops import env_for, sora2
from tests.api.test_videos import balance


async def test_user_commands_change_accounts_and_are_audited_as_the_cli(
    api: RunningApi, settings: Settings
) -> None:
    admin_token, _ = await register_admin(api)
    user_token, user = await api.register(nickname="Shell Target")
    email, uid = user["user"]["email"], user["user"]["id"]
    env = env_for(settings)

    listed = sora2("user", "list", "--search", "shell target", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["email"] for line in listed.stdout.splitlines()] == [email]

    credited = sora2("user", "credits", "add", email.upper(), "25", "--reason", "support", env=env)
    assert credited.returncode == 0, credited.stderr
    assert f"{email} now has 125 credits" in credited.stdout
    assert await balance(api, user_token) == 125

    overdrawn = sora2("user", "credits", "add", uid, "-500", "--reason", "x", env=env)
    assert overdrawn.returncode == 1
    assert "negative balance" in overdrawn.stderr

    promoted = sora2("user", "set-role", uid, "admin", "--reason", "on call", env=env)
    assert promoted.returncode == 0, promoted.stderr
    banned = sora2("user", "ban", email, "--reason", "abuse", env=env)
    assert banned.returncode == 0, banned.stderr
    assert (await api.request("GET", "/api/auth/me", token=user_token))[0] == 401
    login = {"email": email, "password": PASSWORD}
    assert (await api.request("POST", "/api/auth/login", json=login))[0] == 403
    assert sora2("user", "unban", email, env=env).returncode == 0
    assert (await api.request("POST", "/api/auth/login", json=login))[0] == 200

    unknown = sora2("user", "ban", "nobody@example.com", env=env)
    assert unknown.returncode == 1
    assert "nobody@example.com" in unknown.stderr
    no_reason = sora2("user", "credits", "add", email, "5", env=env)
    assert no_reason.returncode == 2
    assert "--reason" in no_reason.stderr

    _, page, _ = await api.request(
        "GET", "/api/admin/audit", token=admin_token, params={"targetId": uid}
    )
    entries = [(e["action"], e["reason"], e["actorId"]) for e in page["items"]]
    assert entries == [
        ("user.unban", None, None),
        ("user.ban", "abuse", None),
        ("user.role", "on call", None),
        ("user.credits", "support", None),
    ]
    assert all(e["actor"].startswith("cli:") for e in page["items"])


async def test_creating_an_account_at_the_shell_is_audited(
    api: RunningApi, settings: Settings
) -> None:
    admin_token, _ = await register_admin(api)
    made = sora2(
        "user", "create", "--email", "second-admin@example.com", "--nickname", "Second", "--admin",
        env=env_for(settings), stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    _, page, _ = await api.request(
        "GET", "/api/admin/audit", token=admin_token, params={"action": "user.create"}
    )
    [entry] = page["items"]
    assert entry["actor"].startswith("cli:")
    assert entry["after"] == {"email": "second-admin@example.com", "role": "admin", "credits": 100}
    assert all(e["requestId"].startswith("cli-") for e in page["items"])
