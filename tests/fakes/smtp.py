"""A real SMTP server on loopback (aiosmtpd), plain, STARTTLS or implicit TLS, with login.

It keeps every message it accepts (parsed), and can hold a message in DATA until released, to
show that a request never waits on the mail server.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.fakes.servers import free_port

Mode = Literal["plain", "starttls", "tls"]
USER, PASSWORD = "mailer", "p@ss word"
IGNORE_AUTH_WARNING = "ignore:Requiring AUTH while not requiring TLS:UserWarning"


@dataclass
class Inbox:
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.release.set()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} mail(s) expected, {len(self.messages)} arrived")
            time.sleep(0.02)
        return self.messages


class _Handler:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        if not self.inbox.release.is_set():
            self.inbox.held.set()
            while not self.inbox.release.is_set():
                await asyncio.sleep(0.01)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.inbox.messages.append(parsed)
        return "250 Message accepted for delivery"


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), which the client is told to trust."""
    cert, key = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class SmtpServer:
    url: str
    inbox: Inbox
    ca_file: Path | None


@contextmanager
def smtp_server(mode: Mode, folder: Path) -> Iterator[SmtpServer]:
    inbox = Inbox()
    port = free_port()
    ca_file: Path | None = None
    kwargs: dict[str, Any] = {}
    if mode != "plain":
        cert, key = make_certificate(folder)
        ca_file = cert
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if mode == "tls":
            kwargs["ssl_context"] = context
            # aiosmtpd cannot tell that an implicit-TLS connection is encrypted: allow AUTH
            # (it warns about it on each connection; see IGNORE_AUTH_WARNING).
            kwargs["auth_require_tls"] = False
        else:
            kwargs["tls_context"] = context
            kwargs["require_starttls"] = True

        def authenticate(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> Any:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                USER.encode(),
                PASSWORD.encode(),
            )
            if ok:
                inbox.logins.append(USER)
            return AuthResult(success=ok)

        kwargs["authenticator"] = authenticate
        kwargs["auth_required"] = True
    controller = Controller(_Handler(inbox), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        scheme = {"plain": "smtp", "starttls": "smtp+starttls", "tls": "smtps"}[mode]
        auth = "" if mode == "plain" else "mailer:p%40ss%20word@"
        yield SmtpServer(f"{scheme}://{auth}127.0.0.1:{port}", inbox, ca_file)
    finally:
        inbox.release.set()
        controller.stop()
