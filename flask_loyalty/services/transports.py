"""Mail transports: ``smtp`` (stdlib smtplib), ``outbox`` (database only) or a host callable.

A transport is used for one batch: ``send()`` may be called many times
(the SMTP transport reuses one connection for the whole batch) and
``close()`` ends it.  Failures raise :class:`TemporaryFailure` (retried with
backoff), :class:`TransportUnavailable` (the server cannot be reached: the
rest of the batch is retried later without hammering it) or
:class:`PermanentFailure` (the server rejected the mail for good).
"""

from __future__ import annotations

import importlib
import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol

from ..state import LoyaltyState

if TYPE_CHECKING:
    from .mail import OutgoingMail

SECURITY_MODES = ("none", "starttls", "tls")


class SendError(Exception):
    """Base class of transport failures."""


class TemporaryFailure(SendError):
    """The mail could not be sent now; it is retried later."""


class TransportUnavailable(TemporaryFailure):
    """The mail server cannot be reached; the rest of the batch waits too."""


class PermanentFailure(SendError):
    """The mail was rejected for good (5xx); it is marked failed without retries."""


class Transport(Protocol):
    """What the dispatcher needs from a transport."""

    name: str

    def send(self, mail: OutgoingMail) -> None:
        """Hand one mail over; raise a :class:`SendError` on failure."""

    def close(self) -> None:
        """End the batch (close connections)."""


class OutboxTransport:
    """Development default: the rendered mail stays in the database, nothing leaves."""

    name = "outbox"

    def send(self, mail: OutgoingMail) -> None:
        """Nothing to do: the dispatcher already stored the rendered mail."""

    def close(self) -> None:
        """Nothing to close."""


class CallableTransport:
    """A host callable ``send(message)``; any exception means "retry later"."""

    name = "callable"

    def __init__(self, fn: Callable[[EmailMessage], Any]) -> None:
        self._fn = fn

    def send(self, mail: OutgoingMail) -> None:
        """Call the host's function with an ``EmailMessage``; its exceptions become :class:`TemporaryFailure`."""
        message: EmailMessage = mail.email_message()
        try:
            self._fn(message)
        except SendError:
            raise
        except Exception as exc:
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Nothing to close."""


class SMTPTransport:
    """stdlib ``smtplib`` with ``none``/``starttls``/``tls`` security and optional AUTH.

    One connection is opened on the first ``send`` and reused for the batch;
    a connection dropped by the server is re-opened once.
    """

    name = "smtp"

    def __init__(self, *, host: str, port: int, security: str = "none", username: str | None = None,
                 password: str | None = None, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if security not in SECURITY_MODES:
            raise ValueError(f"LOYALTY_SMTP_SECURITY must be one of {SECURITY_MODES}, not {security!r}")
        self.host, self.port, self.security = host, int(port), security
        self.username, self.password, self.timeout = username, password, float(timeout)
        self.ssl_context = ssl_context
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        context = self.ssl_context or ssl.create_default_context()
        try:
            conn: smtplib.SMTP
            if self.security == "tls":
                conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=context)
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise TransportUnavailable(f"SMTP authentication failed: {exc.smtp_code}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TransportUnavailable(f"cannot reach SMTP server {self.host}:{self.port}: {exc}") from exc
        return conn

    def send(self, mail: OutgoingMail) -> None:
        """Send over the batch's connection (opened on first use)."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.sendmail(mail.sender, mail.recipients, mail.data)
                return
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if attempt == 2:
                    raise TransportUnavailable(f"SMTP server disconnected: {exc}") from exc
            except smtplib.SMTPRecipientsRefused as exc:
                codes = [code for code, _msg in exc.recipients.values()]
                if codes and all(code >= 500 for code in codes):
                    raise PermanentFailure(f"recipient refused: {codes}") from exc
                raise TemporaryFailure(f"recipient refused: {codes}") from exc
            except smtplib.SMTPResponseException as exc:
                self._reset()
                if exc.smtp_code >= 500:
                    raise PermanentFailure(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
                raise TemporaryFailure(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                raise TransportUnavailable(f"SMTP error: {exc}") from exc

    def _reset(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rset()
            except (OSError, smtplib.SMTPException):
                self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:  # pragma: no cover - closing a dead socket
                pass

    def close(self) -> None:
        """QUIT and close the batch's connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            try:
                conn.close()
            except OSError:  # pragma: no cover
                pass


def _resolve(spec: Any) -> Any:
    if isinstance(spec, str) and ":" in spec:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)
    return spec


def get_transport(state: LoyaltyState) -> Transport:
    """The transport named by ``LOYALTY_MAIL_TRANSPORT`` for one batch."""
    config = state.config
    spec = _resolve(config.get("LOYALTY_MAIL_TRANSPORT", "outbox"))
    if callable(spec):
        return CallableTransport(spec)
    if spec == "outbox":
        return OutboxTransport()
    if spec == "smtp":
        return SMTPTransport(host=config["LOYALTY_SMTP_HOST"], port=int(config["LOYALTY_SMTP_PORT"]),
                             security=str(config["LOYALTY_SMTP_SECURITY"]).lower(),
                             username=config.get("LOYALTY_SMTP_USERNAME"),
                             password=config.get("LOYALTY_SMTP_PASSWORD"),
                             timeout=float(config["LOYALTY_SMTP_TIMEOUT"]))
    raise ValueError(f"LOYALTY_MAIL_TRANSPORT must be 'smtp', 'outbox' or a callable, not {spec!r}")
