"""Rendering messages into localized multipart mails (text + HTML).

Templates: ``loyalty/mail/<kind>.subject.txt``, ``<kind>.txt`` and
``<kind>.html`` (a host overrides any of them with its own template of the
same name).  They are rendered in the customer's locale with the context
``customer, message, payload, links, unsubscribe_url, preferences_url,
shop_name, _, ngettext, format_money, format_date``.

Marketing mails get ``List-Unsubscribe`` (the signed https link, plus a
``mailto:`` when ``LOYALTY_UNSUBSCRIBE_MAILTO`` is set) and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058); when
tracking is on, their HTML links go through signed click redirects and an
open pixel is added.
"""

from __future__ import annotations

import binascii
import html
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from email import message_from_bytes
from email import policy as email_policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any

from .. import tokens
from ..i18n import choose_locale, render, translator
from ..models import Customer, Message
from ..state import LoyaltyState
from .links import absolute
from .outbox import CONTEXTS, KINDS

_HREF = re.compile(r'href="(https?://[^"]+)"', re.IGNORECASE)
_SPACES = re.compile(r"\s+")


@dataclass
class Rendered:
    """A rendered mail as stored on the message row."""

    locale: str
    to_address: str
    from_address: str
    subject: str
    body_text: str
    body_html: str
    links: list[str]
    unsubscribe_url: str | None = None
    #: The ``To:`` header (``Name <address>``); ``to_address`` is the bare address that is stored.
    to_header: str | None = None


class UnsupportedAddress(ValueError):
    """An address the mail cannot be sent to: its mailbox name is not ASCII (SMTPUTF8)."""


def template_names(kind: str) -> tuple[str, str, str]:
    """The subject, text and HTML templates of ``kind``."""
    base = f"loyalty/mail/{kind}"
    return f"{base}.subject.txt", f"{base}.txt", f"{base}.html"


def recipient(state: LoyaltyState, message: Message, customer: Customer) -> str | None:
    """The address the message goes to (``to_config`` kinds go to a configured address)."""
    spec = KINDS.get(message.kind)
    if spec is not None and spec.to_config:
        value = state.config.get(spec.to_config)
        return str(value) if value else None
    return customer.email or None


def recipient_header(state: LoyaltyState, message: Message, customer: Customer, address: str) -> str:
    """The ``To:`` header of ``address``: with the customer's name as display name when there is one."""
    spec = KINDS.get(message.kind)
    if (spec is not None and spec.to_config) or not customer.name:
        return address
    try:
        return str(Address(display_name=customer.name, addr_spec=address))
    except (ValueError, IndexError):  # an address the header registry cannot parse: keep it bare
        return address


def wire_address(address: str) -> str:
    """``address`` as it goes on the wire: ASCII as is, an internationalised domain in IDNA
    (``xn--``) form; :class:`UnsupportedAddress` for a non-ASCII mailbox name, which needs SMTPUTF8
    (RFC 6531), not supported.
    """
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        raise UnsupportedAddress("the address's mailbox name is not ASCII (SMTPUTF8 is not supported)")
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError as exc:
        raise UnsupportedAddress("the address's domain is not a valid internationalised domain name") from exc


def sender(state: LoyaltyState, message: Message) -> str:
    """From address: the marketing sender for marketing kinds, else the transactional one."""
    config = state.config
    if message.marketing and config.get("LOYALTY_MARKETING_SENDER"):
        return str(config["LOYALTY_MARKETING_SENDER"])
    return str(config["LOYALTY_MAIL_SENDER"])


def tracking_on(state: LoyaltyState, message: Message) -> bool:
    """Whether this message's opens and clicks are tracked (marketing mails, shop opt-in)."""
    return bool(state.config.get("LOYALTY_TRACKING")) and message.marketing


def track_url(state: LoyaltyState, what: str, message_pk: int, index: int | None = None) -> str:
    """Signed open-pixel (``what="o"``) or click (``"c"``) URL of one message."""
    payload: dict[str, int] = {"m": message_pk}
    if index is not None:
        payload["i"] = index
    token = tokens.make("track", payload, state=state)
    return absolute(state, f"/t/{what}/{token}")


def _rewrite_links(state: LoyaltyState, message_pk: int, body: str,
                   untracked: set[str]) -> tuple[str, list[str]]:
    targets: list[str] = []

    def swap(match: re.Match[str]) -> str:
        url = html.unescape(match.group(1))
        if url in untracked:
            return match.group(0)
        if url not in targets:
            targets.append(url)
        return f'href="{html.escape(track_url(state, "c", message_pk, targets.index(url)))}"'

    body = _HREF.sub(swap, body)
    pixel = (f'<img src="{html.escape(track_url(state, "o", message_pk))}" width="1" height="1" '
             'alt="" style="display:block;border:0;width:1px;height:1px">')
    if "</body>" in body:
        body = body.replace("</body>", pixel + "</body>", 1)
    else:
        body += pixel
    return body, targets


def coupon_context(payload: dict[str, Any], locale: str, state: LoyaltyState) -> dict[str, Any] | None:
    """The coupon a message carries (payload keys ``coupon_*``) with a localized label."""
    code = payload.get("coupon_code")
    if not code:
        return None
    tr = translator(locale, state=state)
    _ = tr.gettext
    kind, value = payload.get("coupon_kind"), payload.get("coupon_value")
    currency = payload.get("coupon_currency") or state.config["LOYALTY_CURRENCY"]
    if kind == "percent" and value is not None:
        label = _("%(value)s%% off your next order", value=format(Decimal(str(value)).normalize(), "f"))
    elif kind == "fixed" and value is not None:
        label = _("%(amount)s off your next order", amount=tr.money(Decimal(str(value)), str(currency)))
    elif kind == "free_shipping":
        label = _("Free shipping on your next order")
    else:
        label = _("A gift with your next order")
    expires = payload.get("coupon_expires_at")
    return {"code": code, "kind": kind, "label": label,
            "expires_at": datetime.fromisoformat(expires) if expires else None}


def render_message(state: LoyaltyState, message: Message, customer: Customer) -> Rendered | None:
    """Render ``message`` for ``customer``; ``None`` when it has no recipient address."""
    to = recipient(state, message, customer)
    if not to:
        return None
    spec = KINDS.get(message.kind)
    to_config = spec is not None and spec.to_config is not None
    locale = choose_locale(None if to_config else customer.locale, state=state)
    links = state.extension.links
    unsubscribe_url = links.unsubscribe(customer.ref, message.purpose) if message.purpose else None
    preferences_url = links.preferences(customer.ref) if not to_config else None
    context: dict[str, Any] = {
        "customer": customer, "message": message, "payload": message.payload or {}, "links": links,
        "unsubscribe_url": unsubscribe_url, "preferences_url": preferences_url,
        "marketing": message.marketing, "shop_url": state.config.get("LOYALTY_BASE_URL"),
        "coupon": coupon_context(message.payload or {}, locale, state),
    }
    provider = CONTEXTS.get(message.kind)
    if provider is not None:
        context.update(provider(state, message, customer, locale))
    subject_t, text_t, html_t = template_names(message.kind)
    subject = _SPACES.sub(" ", render(subject_t, locale=locale, **context)).strip()[:300]
    text = render(text_t, locale=locale, **context).strip() + "\n"
    body_html = render(html_t, locale=locale, **context)
    targets: list[str] = []
    if tracking_on(state, message):
        untracked = {u for u in (unsubscribe_url, preferences_url) if u}
        body_html, targets = _rewrite_links(state, message.id, body_html, untracked)
    return Rendered(locale=locale, to_address=to, from_address=sender(state, message), subject=subject,
                    body_text=text, body_html=body_html, links=targets, unsubscribe_url=unsubscribe_url,
                    to_header=recipient_header(state, message, customer, to))


def _header_address(value: str) -> tuple[str, str]:
    """``(header value, bare address)`` of ``"Name <addr>"``; non-ASCII names RFC 2047-encoded,
    internationalised domains in IDNA form (:func:`wire_address`).
    """
    name, addr = parseaddr(value)
    if not addr:
        addr = value.strip()
    addr = wire_address(addr)
    return formataddr((name, addr), charset="utf-8"), addr


def _text_header(value: str) -> str:
    """An unstructured header value: ASCII as is, anything else RFC 2047-encoded (UTF-8)."""
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


def _qp(body: str) -> bytes:
    """Quoted-printable UTF-8 body with CRLF line ends (``binascii``: fast and exact)."""
    encoded = binascii.b2a_qp(body.replace("\r\n", "\n").encode("utf-8"))
    return encoded.replace(b"\n", b"\r\n")


def _part(body: str, subtype: str) -> bytes:
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode() + _qp(body)


@dataclass
class OutgoingMail:
    """A mail ready for the wire: envelope and RFC 5322 bytes (CRLF line ends).

    ``email_message()`` gives the same mail as an ``email.message.EmailMessage``
    (what a host transport callable receives).
    """

    sender: str
    recipients: list[str]
    data: bytes
    message_id: str

    def email_message(self) -> EmailMessage:
        """The mail parsed into an ``EmailMessage`` (modern ``email.policy.default``)."""
        parsed = message_from_bytes(self.data, policy=email_policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


def build_mail(state: LoyaltyState, *, now: datetime, message_id: str, kind: str, marketing: bool,
               purpose: str | None, customer_ref: str, locale: str | None, to_address: str | None,
               from_address: str | None, subject: str | None, body_text: str | None,
               body_html: str | None, unsubscribe_url: str | None = None) -> OutgoingMail:
    """Build a rendered message's multipart (text + HTML) mail with its stable ``Message-ID``.

    Marketing mails get ``List-Unsubscribe`` (https, plus ``mailto:`` when
    ``LOYALTY_UNSUBSCRIBE_MAILTO`` is set) and ``List-Unsubscribe-Post:
    List-Unsubscribe=One-Click``; transactional ones ``Auto-Submitted``.
    Raises :class:`UnsupportedAddress` for an address with a non-ASCII
    mailbox name.  The wire format is written directly (headers encoded per RFC 2047,
    bodies quoted-printable UTF-8): several times faster than the ``email``
    package's generator, which matters for a dispatcher's throughput.
    """
    if not to_address or subject is None or body_text is None:
        raise ValueError("build_mail needs a rendered message")
    from_header, envelope_from = _header_address(from_address or str(state.config["LOYALTY_MAIL_SENDER"]))
    to_header, envelope_to = _header_address(to_address)
    headers = [("From", from_header), ("To", to_header), ("Subject", _text_header(subject)),
               ("Date", format_datetime(now)), ("Message-ID", message_id), ("X-Loyalty-Kind", kind)]
    if marketing and purpose:
        url = unsubscribe_url or state.extension.links.unsubscribe(customer_ref, purpose)
        entries = [f"<{url}>"]
        mailto = state.config.get("LOYALTY_UNSUBSCRIBE_MAILTO")
        if mailto:
            entries.append(f"<mailto:{mailto}?subject=unsubscribe>")
        headers += [("List-Unsubscribe", ",\r\n ".join(entries)),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"), ("Precedence", "bulk")]
    elif not marketing:
        headers.append(("Auto-Submitted", "auto-generated"))
    if locale:
        headers.append(("Content-Language", locale))
    headers.append(("MIME-Version", "1.0"))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("ascii")
    if body_html:
        boundary = f"=_{uuid.uuid4().hex}"
        data = b"".join([
            head, f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode(),
            f"--{boundary}\r\n".encode(), _part(body_text, "plain"),
            f"\r\n--{boundary}\r\n".encode(), _part(body_html, "html"),
            f"\r\n--{boundary}--\r\n".encode()])
    else:
        data = head + _part(body_text, "plain") + b"\r\n"
    return OutgoingMail(sender=envelope_from, recipients=[envelope_to], data=data, message_id=message_id)


def build_email(state: LoyaltyState, **fields: Any) -> EmailMessage:
    """Like :func:`build_mail`, as an ``EmailMessage``."""
    return build_mail(state, **fields).email_message()
