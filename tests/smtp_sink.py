"""A real SMTP server (aiosmtpd) on loopback for the delivery tests and the benchmark."""

from __future__ import annotations

import asyncio
import email
import socket
import threading
from email import policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SinkHandler:
    """Keeps every accepted mail; can refuse (4xx) or stall to simulate trouble."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.lock = threading.Lock()
        self.stall_after: int | None = None
        self.stalled = threading.Event()
        self.temp_fail = False
        #: Client connections seen so far, and those whose further mails are refused (see refuse_open_sessions).
        self.peers: set[Any] = set()
        self.refused_peers: set[Any] = set()

    def refuse_open_sessions(self) -> None:
        """Refuse (451) any further mail on the connections opened so far, e.g. those of a killed client.

        A client killed after sending a whole mail leaves it in the socket's buffer; the server may
        read it later and would accept it, which is a delivery the client never saw confirmed.
        """
        with self.lock:
            self.refused_peers |= self.peers

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        with self.lock:
            self.peers.add(session.peer)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.temp_fail:
            return "451 4.3.0 try again later"
        with self.lock:
            if session.peer in self.refused_peers:
                return "451 4.3.0 aborted"
            stall = self.stall_after is not None and len(self.raw) >= self.stall_after
        if stall:
            self.stalled.set()
            while self.stall_after is not None:
                await asyncio.sleep(0.02)
            return "451 4.3.0 aborted"  # the client is gone by now; nothing is delivered
        with self.lock:
            self.raw.append(envelope.original_content or envelope.content)
        return "250 OK"


class SMTPSink:
    """``with SMTPSink() as sink: ... sink.messages``."""

    def __init__(self, port: int | None = None) -> None:
        self.handler = SinkHandler()
        self.port = port or free_port()
        self.controller: Controller | None = None

    def start(self) -> SMTPSink:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self) -> SMTPSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def count(self) -> int:
        with self.handler.lock:
            return len(self.handler.raw)

    @property
    def messages(self) -> list[EmailMessage]:
        with self.handler.lock:
            raws = list(self.handler.raw)
        return [email.message_from_bytes(r, policy=policy.default) for r in raws]  # type: ignore[misc]

    def config(self) -> dict[str, Any]:
        return {"LOYALTY_MAIL_TRANSPORT": "smtp", "LOYALTY_SMTP_HOST": "127.0.0.1", "LOYALTY_SMTP_PORT": self.port}
