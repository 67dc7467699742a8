"""The SMTP transport's STARTTLS, implicit TLS and AUTH against aiosmtpd (self-signed certificate)."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from smtp_sink import SinkHandler, free_port

from flask_loyalty.services.mail import OutgoingMail
from flask_loyalty.services.transports import SMTPTransport, TransportUnavailable

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def authenticator(server, session, envelope, mechanism, data):
    return AuthResult(success=data.login == b"shop" and data.password == b"secret")


MAIL = OutgoingMail(sender="shop@shop.test", recipients=["ana@example.com"], message_id="<1@shop.test>",
                    data=b"From: shop@shop.test\r\nTo: ana@example.com\r\nSubject: hi\r\n"
                         b"Message-ID: <1@shop.test>\r\n\r\nhello\r\n")


def test_starttls_with_auth(certificate):
    server_ctx, client_ctx = certificate
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=server_ctx,
                            require_starttls=True, authenticator=authenticator, auth_required=True)
    controller.start()
    try:
        transport = SMTPTransport(host="127.0.0.1", port=port, security="starttls", username="shop",
                                  password="secret", ssl_context=client_ctx, timeout=5)
        transport.send(MAIL)
        transport.send(MAIL)            # the same connection is reused
        transport.close()
        assert len(handler.raw) == 2
        wrong = SMTPTransport(host="127.0.0.1", port=port, security="starttls", username="shop",
                              password="nope", ssl_context=client_ctx, timeout=2)
        with pytest.raises(TransportUnavailable):  # refused (aiosmtpd delays failed logins)
            wrong.send(MAIL)
        plain = SMTPTransport(host="127.0.0.1", port=port, security="none", timeout=5)
        with pytest.raises(Exception):  # the server insists on STARTTLS first
            plain.send(MAIL)
        plain.close()
        assert len(handler.raw) == 2
    finally:
        controller.stop()


def test_implicit_tls(certificate):
    server_ctx, client_ctx = certificate
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=server_ctx)
    controller.start()
    try:
        transport = SMTPTransport(host="127.0.0.1", port=port, security="tls", ssl_context=client_ctx, timeout=5)
        transport.send(MAIL)
        transport.close()
        assert len(handler.raw) == 1
    finally:
        controller.stop()


def test_bad_security_mode():
    with pytest.raises(ValueError):
        SMTPTransport(host="127.0.0.1", port=25, security="ssl3")
