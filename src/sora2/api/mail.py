"""Outgoing mail: SMTP through aiosmtplib (plain, STARTTLS or implicit TLS), sent in the
background so a request never waits on, or reveals anything through, a mail server.

`SMTP_URL` picks the transport: `smtp://host:25` (plain), `smtp+starttls://user:pass@host:587`
(STARTTLS required), `smtps://user:pass@host:465` (TLS from the first byte). Without it, in
development the message's text is written to the log (so a reset link can be followed); elsewhere
nothing is sent and a warning says so (`sora2 doctor` flags it in production).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from sora2.settings import Settings

logger = logging.getLogger("sora2.api.mail")

# How long shutdown waits for mail still being sent.
DRAIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str


class Transport(Protocol):
    async def deliver(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True, slots=True)
class SmtpTransport:
    hostname: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool
    tls_context: ssl.SSLContext | None
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTransport:
        assert settings.smtp_url is not None
        parts = urlsplit(settings.smtp_url)
        implicit = parts.scheme == "smtps"
        starttls = parts.scheme == "smtp+starttls"
        context = None
        if implicit or starttls:
            context = ssl.create_default_context(
                cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None
            )
        return cls(
            hostname=parts.hostname or "localhost",
            port=parts.port or (465 if implicit else 587 if starttls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=implicit,
            start_tls=starttls,
            tls_context=context,
            timeout=settings.smtp_timeout_seconds,
        )

    def __repr__(self) -> str:  # the password must never reach a log through a repr
        return f"SmtpTransport({self.hostname}:{self.port}, tls={self.use_tls or self.start_tls})"

    async def deliver(self, message: EmailMessage) -> None:
        await aiosmtplib.send(
            message,
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.use_tls,
            # False, not None: a plain smtp:// URL must not upgrade (or fail) on its own.
            start_tls=self.start_tls,
            tls_context=self.tls_context,
            timeout=self.timeout,
        )


class LogTransport:
    """Development without SMTP_URL: the text part goes to the log, links included."""

    async def deliver(self, message: EmailMessage) -> None:
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        logger.warning(
            "SMTP_URL is not set: mail to %s not sent; it said:\n%s", message["To"], text
        )


class DroppingTransport:
    """Outside development without SMTP_URL: nothing may leak to a log, so nothing is sent."""

    async def deliver(self, message: EmailMessage) -> None:
        logger.error("SMTP_URL is not set: a %r mail was not sent", message["Subject"])


def build_message(mail: Mail, *, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip("> ") or None)
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    return message


class Mailer:
    """Queues mail for sending in the background; failures are logged, never raised."""

    def __init__(self, transport: Transport, *, sender: str) -> None:
        self.transport = transport
        self.sender = sender
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Mailer:
        transport: Transport
        if settings.smtp_url:
            transport = SmtpTransport.from_settings(settings)
        elif settings.is_development:
            transport = LogTransport()
        else:
            transport = DroppingTransport()
        return cls(transport, sender=settings.mail_from)

    def send_later(self, mail: Mail) -> None:
        task = asyncio.get_running_loop().create_task(self._send(mail))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, mail: Mail) -> None:
        try:
            await self.transport.deliver(build_message(mail, sender=self.sender))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            # The server's words only: they never contain the message body.
            logger.error("mail %r not sent: %s: %s", mail.subject, type(error).__name__, error)

    async def drain(self) -> None:
        """Waits (a little) for mail still being sent, at shutdown."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=DRAIN_SECONDS)
