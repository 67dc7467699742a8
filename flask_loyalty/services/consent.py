"""Per-purpose consent with an append-only proof ledger, double opt-in, export and erasure.

Design
------
* Every change is one row of the ledger (:class:`~flask_loyalty.models.ConsentEvent`):
  ``granted``, ``pending`` (double opt-in waiting for its link), ``confirmed``,
  ``withdrawn`` and ``erased``, with the source, the method, the exact wording
  shown (a versioned :class:`~flask_loyalty.models.ConsentWording` row), the
  time and a salted hash of the IP address.  The current state per customer
  and purpose (:class:`~flask_loyalty.models.ConsentStatus`) is written in the
  same transaction, under a row lock, so it never disagrees with the ledger.
* Repeating a call is harmless: granting what is granted (with the same
  wording) and withdrawing what is not granted write nothing.
* Double opt-in: ``grant`` records ``pending`` and queues a ``consent_confirm``
  mail through the outbox in the same transaction; the signed link
  ``/consent/confirm/<token>`` records ``confirmed``.  Confirmation mails for
  one pending grant are limited to ``LOYALTY_OPT_IN_MAX_SENDS``, at least
  ``LOYALTY_OPT_IN_RESEND_MINUTES`` apart; a pending grant expires after
  ``LOYALTY_OPT_IN_TTL_DAYS``.
* Erasure adds a hash of the lower-cased e-mail address to a suppression
  list.  Afterwards a grant for that address (or that erased customer) is only
  accepted from a fresh, explicit action of the shopper, i.e. with
  ``method="checkbox"`` (the capture form) or ``method="preference_center"``;
  ``api``/``cli`` grants (imports, old data) raise :class:`SuppressedAddress`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select

from .. import tokens
from ..clock import resolve_now
from ..errors import InvalidInput, NotFound, TokenError
from ..i18n import N_, choose_locale, translator
from ..models import Customer, PointsEntry, Purchase
from ..models.base import table_of
from ..models.consent import (
    ConsentEvent,
    ConsentEventIp,
    ConsentStatus,
    ConsentSuppression,
    ConsentWording,
)
from ..schemas import load
from ..schemas.consent import PURPOSE_RE, GrantSchema, PurposeSchema, WithdrawSchema
from ..signals import consent_changed
from ..state import LoyaltyState
from ..transaction import PendingSignal, begin_write, dialect_name, finish, insert_ignore
from .base import Facade
from .purchases import ensure_customer, get_customer

if TYPE_CHECKING:
    from werkzeug.datastructures import MultiDict

_grant_schema = GrantSchema()
_withdraw_schema = WithdrawSchema()
_purpose_schema = PurposeSchema()

#: Built-in purposes: (label, exact wording shown next to the checkbox).
BUILTIN_PURPOSES: dict[str, tuple[str, str]] = {
    "email_marketing": (
        N_("Offers and news by e-mail"),
        N_("Yes, send me offers, news and personal recommendations by e-mail, at most once a week. "
           "I can unsubscribe at any time with one click.")),
    "surveys": (
        N_("Short surveys about my purchases"),
        N_("Yes, you may ask me by e-mail for my opinion about my purchases (a few short questions). "
           "I can stop this at any time.")),
    "postal_mail": (
        N_("Coupons and offers by post"),
        N_("Yes, send me coupons and offers by post to my delivery address. I can stop this at any time.")),
    "personalization": (
        N_("Personal recommendations"),
        N_("Yes, use my purchase history to personalise the offers and recommendations I receive. "
           "I can stop this at any time.")),
}

#: How each method is shown to the shopper ("given ... by ticking a box").
METHOD_LABELS: dict[str, str] = {
    "checkbox": N_("by ticking a box"),
    "double_opt_in": N_("confirmed with the link we e-mailed"),
    "preference_center": N_("in the preference center"),
    "one_click": N_("with the one-click unsubscribe link"),
    "unsubscribe_page": N_("on the unsubscribe page"),
    "api": N_("recorded by the shop"),
    "cli": N_("recorded by the shop"),
    "erasure": N_("when your data was erased"),
}

#: Methods that count as a fresh, explicit action of the shopper (allowed for suppressed addresses).
EXPLICIT_METHODS = frozenset({"checkbox", "preference_center"})

#: Form field names used by the embeddable capture partial.
FIELD = "loyalty_consent"
SHOWN_FIELD = "loyalty_consent_shown"
#: Token purposes (salts) of the consent forms.
FORM_TOKEN = "consent_form"
CSRF_TOKEN = "form"


class SuppressedAddress(InvalidInput):
    """A grant for an erased address came without a fresh, explicit action of the shopper."""


@dataclass(frozen=True)
class Purpose:
    """One consent purpose: its name, label and wording (English msgids) and double opt-in."""

    name: str
    label: str
    wording: str
    double_opt_in: bool

    def texts(self, locale: str) -> tuple[str, str]:
        """The translated ``(label, wording)`` in ``locale``."""
        tr = translator(locale)
        return tr.gettext(self.label), tr.gettext(self.wording)


@dataclass(frozen=True)
class ConsentState:
    """Current consent of one customer for one purpose.

    ``status`` is ``"none"`` (never asked), ``"pending"`` (double opt-in
    waiting for the link), ``"expired"`` (the pending grant was not confirmed
    in time), ``"granted"`` or ``"withdrawn"``.  ``since`` is when that status
    began; ``method``/``source``/``wording_version`` describe the event that
    set it.
    """

    customer_ref: str
    purpose: str
    status: str
    since: datetime | None = None
    method: str | None = None
    source: str | None = None
    wording_version: int | None = None
    pending_expires_at: datetime | None = None

    @property
    def granted(self) -> bool:
        """True when the purpose may be used now."""
        return self.status == "granted"

    @property
    def pending(self) -> bool:
        """True while a double opt-in waits for its confirmation link."""
        return self.status == "pending"


# --- purposes and configuration ------------------------------------------------

def purposes(state: LoyaltyState) -> dict[str, Purpose]:
    """The configured purposes, in configuration order."""
    config = state.config
    raw = config["LOYALTY_CONSENT_PURPOSES"]
    items: list[tuple[str, Mapping[str, Any]]]
    if isinstance(raw, Mapping):
        items = [(str(k), v or {}) for k, v in raw.items()]
    elif isinstance(raw, str):
        raise InvalidInput.field("LOYALTY_CONSENT_PURPOSES", "Must be a list of names or a dict.")
    else:
        items = [(str(k), {}) for k in raw]
    dbl = config["LOYALTY_DOUBLE_OPT_IN"]
    result: dict[str, Purpose] = {}
    for name, spec in items:
        if not isinstance(spec, Mapping):
            raise InvalidInput.field("LOYALTY_CONSENT_PURPOSES", f"{name}: expected a dict with label and wording.")
        label, wording = BUILTIN_PURPOSES.get(name, (None, None))
        label = spec.get("label", label)
        wording = spec.get("wording", wording)
        if not label or not wording:
            raise InvalidInput.field("LOYALTY_CONSENT_PURPOSES",
                                     f"{name}: a custom purpose needs a label and a wording.")
        double = bool(dbl.get(name, False)) if isinstance(dbl, Mapping) else bool(dbl)
        result[name] = Purpose(name, str(label), str(wording), double)
    return result


def get_purpose(state: LoyaltyState, name: str) -> Purpose:
    """The purpose called ``name``; :class:`InvalidInput` for an unknown one."""
    found = purposes(state).get(name)
    if found is None:
        raise InvalidInput.field("purpose", "Unknown consent purpose.")
    return found


def validate_config(state: LoyaltyState) -> None:
    """Check the consent settings at ``init_app`` (raises :class:`InvalidInput`)."""
    known = purposes(state)
    if not known:
        raise InvalidInput.field("LOYALTY_CONSENT_PURPOSES", "Configure at least one purpose.")
    for name in known:
        if not re.match(PURPOSE_RE, name):
            raise InvalidInput.field("LOYALTY_CONSENT_PURPOSES", f"{name!r}: use lower-case letters, digits, _.")
    dbl = state.config["LOYALTY_DOUBLE_OPT_IN"]
    if isinstance(dbl, Mapping):
        unknown = set(dbl) - set(known)
        if unknown:
            raise InvalidInput.field("LOYALTY_DOUBLE_OPT_IN", f"Unknown purposes: {sorted(unknown)}.")
    elif not isinstance(dbl, bool):
        raise InvalidInput.field("LOYALTY_DOUBLE_OPT_IN", "Must be True, False or a dict purpose -> bool.")
    for key in ("LOYALTY_OPT_IN_TTL_DAYS", "LOYALTY_OPT_IN_MAX_SENDS", "LOYALTY_CONSENT_FORM_MAX_AGE"):
        value = state.config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInput.field(key, "Must be a positive whole number.")
    minutes = state.config["LOYALTY_OPT_IN_RESEND_MINUTES"]
    if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or minutes < 0:
        raise InvalidInput.field("LOYALTY_OPT_IN_RESEND_MINUTES", "Must be a number of minutes >= 0.")


def _ttl(state: LoyaltyState) -> timedelta:
    return timedelta(days=int(state.config["LOYALTY_OPT_IN_TTL_DAYS"]))


# --- hashing --------------------------------------------------------------------

def hash_ip(state: LoyaltyState, ip: str | None) -> str | None:
    """Salted HMAC-SHA256 of a (validated) IP address; ``None`` for ``None``."""
    if ip is None or ip == "":
        return None
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise InvalidInput.field("ip", "Not a valid IP address.") from None
    salt = state.config.get("LOYALTY_IP_HASH_SALT")
    if not salt:
        secret = state.config.get("SECRET_KEY") or ""
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        salt = hmac.new(key, b"flask-loyalty/ip-hash-salt", hashlib.sha256).hexdigest()
    key = salt.encode() if isinstance(salt, str) else bytes(salt)
    return hmac.new(key, address.compressed.encode(), hashlib.sha256).hexdigest()


def email_hash(email: str) -> str:
    """The suppression-list hash of an address: SHA-256 of the trimmed, lower-cased address.

    Deliberately not keyed with ``SECRET_KEY``, so suppression survives key
    rotation.
    """
    return hashlib.sha256(b"flask-loyalty/suppression\x00" + email.strip().lower().encode()).hexdigest()


def is_suppressed(state: LoyaltyState, email: str | None) -> bool:
    """True when ``email`` (any letter case) was erased before."""
    if not email:
        return False
    return state.session.execute(select(ConsentSuppression.email_hash).where(
        ConsentSuppression.email_hash == email_hash(email))).first() is not None


def wording_hash(label: str, text: str) -> str:
    """The SHA-256 that identifies a wording version."""
    return hashlib.sha256(f"{label}\n{text}".encode()).hexdigest()


# --- ledger helpers -------------------------------------------------------------

def ensure_wording(state: LoyaltyState, purpose: str, locale: str, label: str, text: str) -> ConsentWording:
    """The stored version of this exact wording, created (next version number) if new."""
    session = state.session
    digest = wording_hash(label, text)

    def find() -> ConsentWording | None:
        return session.execute(select(ConsentWording).where(
            ConsentWording.purpose == purpose, ConsentWording.locale == locale,
            ConsentWording.text_hash == digest)).scalar_one_or_none()

    found = find()
    if found is not None:
        return found
    last = session.execute(select(func.max(ConsentWording.version)).where(
        ConsentWording.purpose == purpose, ConsentWording.locale == locale)).scalar_one()
    insert_ignore(state, table_of(ConsentWording), {
        "purpose": purpose, "locale": locale, "text_hash": digest, "version": int(last or 0) + 1,
        "label": label, "text": text, "created_at": resolve_now(None)},
        ["purpose", "locale", "text_hash"])
    found = find()
    assert found is not None
    return found


def _lock_status(state: LoyaltyState, customer: Customer, purpose: str) -> ConsentStatus:
    """The status row of (customer, purpose), created if missing and locked for this transaction."""
    insert_ignore(state, table_of(ConsentStatus),
                  {"customer_id": customer.id, "purpose": purpose, "status": "none", "confirm_sends": 0},
                  ["customer_id", "purpose"])
    query = select(ConsentStatus).where(ConsentStatus.customer_id == customer.id,
                                        ConsentStatus.purpose == purpose)
    if dialect_name(state) == "postgresql":
        query = query.with_for_update(of=table_of(ConsentStatus))
    return state.session.execute(query.execution_options(populate_existing=True)).scalar_one()


def _append(state: LoyaltyState, customer: Customer, purpose: str, action: str, *, source: str,
            method: str, now: datetime, wording_id: int | None = None, locale: str | None = None,
            ip_hash: str | None = None) -> ConsentEvent:
    session = state.session
    event = ConsentEvent(customer_id=customer.id, purpose=purpose, action=action, source=source,
                         method=method, wording_id=wording_id, locale=locale, created_at=now)
    session.add(event)
    session.flush()
    if ip_hash is not None:
        session.add(ConsentEventIp(event_id=event.id, customer_id=customer.id, ip_hash=ip_hash))
        session.flush()
    session.expire(event, ["ip_row", "wording_row"])
    return event


def _effective(row: ConsentStatus | None, now: datetime) -> str:
    if row is None:
        return "none"
    if row.status == "pending" and row.pending_expires_at is not None and row.pending_expires_at <= now:
        return "expired"
    return row.status


def _to_state(state: LoyaltyState, customer_ref: str, purpose: str, row: ConsentStatus | None,
              now: datetime) -> ConsentState:
    if row is None:
        return ConsentState(customer_ref, purpose, "none")
    event = state.session.get(ConsentEvent, row.event_id) if row.event_id is not None else None
    status = _effective(row, now)
    return ConsentState(
        customer_ref=customer_ref, purpose=purpose, status=status, since=row.since,
        method=event.method if event else None, source=event.source if event else None,
        wording_version=event.wording_version if event else None,
        pending_expires_at=row.pending_expires_at if status in ("pending", "expired") else None)


def _signal(event: ConsentEvent, st: ConsentState) -> PendingSignal:
    return (consent_changed, {"event": event, "state": st})


# --- grant / withdraw / confirm ---------------------------------------------------

def _grant(state: LoyaltyState, data: dict[str, Any], now: datetime) -> tuple[ConsentState, list[PendingSignal]]:
    purpose = get_purpose(state, data["purpose"])
    method: str = data["method"]
    ip_hash = hash_ip(state, data.get("ip"))
    double = purpose.double_opt_in if data.get("double_opt_in") is None else bool(data["double_opt_in"])
    # Checks that can refuse the call run on a plain read first, so a refused call writes nothing.
    known = get_customer(state, data["customer_ref"])
    _check_grant(state, known, purpose, method, double, None)
    unchanged = _already_granted(state, known, data, purpose, now)
    if unchanged is not None:       # read-only fast path: repeating a grant writes nothing
        return unchanged, []
    begin_write(state)
    customer = ensure_customer(state, data["customer_ref"])
    row = _lock_status(state, customer, purpose.name)
    _check_grant(state, customer, purpose, method, double, row)    # again, under the lock
    customer.erased_at = None       # an erased shopper who chose again (explicitly) is back
    current = _effective(row, now)
    locale = choose_locale(data.get("locale") or customer.locale, state=state)
    label, text = purpose.texts(locale)
    if data.get("wording"):
        text = data["wording"]
    wording = ensure_wording(state, purpose.name, locale, label, text)
    signals: list[PendingSignal] = []
    if current == "granted":
        last = state.session.get(ConsentEvent, row.event_id) if row.event_id is not None else None
        if last is not None and last.wording_id == wording.id:
            return _to_state(state, customer.ref, purpose.name, row, now), signals
        double = False          # the address is already proven; record the new wording
    if double:
        if current == "pending":
            assert row.pending_event_id is not None
            pending = state.session.get(ConsentEvent, row.pending_event_id)
            assert pending is not None
            _queue_confirmation(state, customer, purpose, row, pending, now)
            return _to_state(state, customer.ref, purpose.name, row, now), signals
        event = _append(state, customer, purpose.name, "pending", source=data["source"], method=method,
                        now=now, wording_id=wording.id, locale=locale, ip_hash=ip_hash)
        row.status = "pending"
        row.event_id = event.id
        row.since = now
        row.pending_event_id = event.id
        row.pending_expires_at = now + _ttl(state)
        row.confirm_sends = 0
        row.confirm_sent_at = None
        _queue_confirmation(state, customer, purpose, row, event, now)
    else:
        if current == "pending":
            _cancel_confirmations(state, customer, purpose.name, "consent granted without confirmation", now)
        event = _append(state, customer, purpose.name, "granted", source=data["source"], method=method,
                        now=now, wording_id=wording.id, locale=locale, ip_hash=ip_hash)
        # a re-grant with a new wording or locale: still subscribed, so the status keeps its start
        _settle(row, "granted", event, row.since if current == "granted" and row.since is not None else now)
    state.session.flush()
    st = _to_state(state, customer.ref, purpose.name, row, now)
    signals.append(_signal(event, st))
    return st, signals


def _settle(row: ConsentStatus, status: str, event: ConsentEvent, since: datetime) -> None:
    """Point the current-state row at ``event``: a settled status begun at ``since``, nothing pending."""
    row.status = status
    row.event_id = event.id
    row.since = since
    row.pending_event_id = None
    row.pending_expires_at = None


def _check_grant(state: LoyaltyState, customer: Customer | None, purpose: Purpose, method: str, double: bool,
                 row: ConsentStatus | None) -> None:
    """Refuse a grant for a suppressed address without an explicit method, or a double opt-in without e-mail."""
    if customer is None:
        if double:
            raise InvalidInput.field("customer_ref", "Double opt-in needs the customer's e-mail address.")
        return
    if (customer.erased_at is not None or is_suppressed(state, customer.email)) \
            and method not in EXPLICIT_METHODS:
        raise SuppressedAddress.field(
            "customer_ref", "This address asked to be forgotten; only a fresh consent the shopper gives "
            "(checkbox or preference center) can subscribe it again.")
    if double and not customer.email:
        if row is None:
            row = state.session.execute(select(ConsentStatus).where(
                ConsentStatus.customer_id == customer.id, ConsentStatus.purpose == purpose.name)).scalar_one_or_none()
        if row is None or row.status != "granted":
            raise InvalidInput.field("customer_ref", "Double opt-in needs the customer's e-mail address.")


def _already_granted(state: LoyaltyState, customer: Customer | None, data: dict[str, Any], purpose: Purpose,
                     now: datetime) -> ConsentState | None:
    """The state when ``purpose`` is already granted with exactly this wording, else ``None``."""
    if customer is None or customer.erased_at is not None:
        return None
    locale = choose_locale(data.get("locale") or customer.locale, state=state)
    label, text = purpose.texts(locale)
    digest = wording_hash(label, data.get("wording") or text)
    row = state.session.execute(
        select(ConsentStatus)
        .join(ConsentEvent, ConsentEvent.id == ConsentStatus.event_id)
        .join(ConsentWording, ConsentWording.id == ConsentEvent.wording_id)
        .where(ConsentStatus.customer_id == customer.id, ConsentStatus.purpose == purpose.name,
               ConsentStatus.status == "granted", ConsentWording.text_hash == digest,
               ConsentWording.locale == locale, ConsentWording.purpose == purpose.name)).scalar_one_or_none()
    return None if row is None else _to_state(state, customer.ref, purpose.name, row, now)


def _queue_confirmation(state: LoyaltyState, customer: Customer, purpose: Purpose, row: ConsentStatus,
                        pending: ConsentEvent, now: datetime) -> bool:
    """Queue a ``consent_confirm`` mail unless the resend limits say no; True when queued."""
    if row.confirm_sends >= int(state.config["LOYALTY_OPT_IN_MAX_SENDS"]):
        return False
    interval = timedelta(minutes=float(state.config["LOYALTY_OPT_IN_RESEND_MINUTES"]))
    if row.confirm_sent_at is not None and now - row.confirm_sent_at < interval:
        return False
    from . import outbox
    from .links import PATHS, absolute

    token = tokens.make("confirm", {"c": customer.ref, "p": purpose.name, "e": pending.id}, state=state)
    url = absolute(state, PATHS["confirm"].format(token=token))
    sends = row.confirm_sends + 1
    outbox.enqueue(state, "consent_confirm", customer, due_at=now, payload={
        "purpose": purpose.name, "label": purpose.label, "confirm_url": url,
        "expires_days": int(state.config["LOYALTY_OPT_IN_TTL_DAYS"]),
    }, dedupe_key=f"consent_confirm:{customer.id}:{purpose.name}:{pending.id}:{sends}")
    row.confirm_sends = sends
    row.confirm_sent_at = now
    return True


def _cancel_confirmations(state: LoyaltyState, customer: Customer, purpose: str, reason: str,
                          now: datetime) -> int:
    """Cancel the not-yet-sent confirmation mails of one customer and purpose."""
    from ..models import Message
    from . import outbox

    prefix = f"consent_confirm:{customer.id}:{purpose}:".replace("\\", "\\\\").replace("_", "\\_").replace(
        "%", "\\%")
    return outbox.cancel_pending(state, reason=reason, now=now, customer_id=customer.id,
                                 kinds=("consent_confirm",),
                                 where=table_of(Message).c.dedupe_key.like(prefix + "%", escape="\\"))


def _withdraw(state: LoyaltyState, data: dict[str, Any], now: datetime) -> tuple[ConsentState, list[PendingSignal]]:
    purpose = get_purpose(state, data["purpose"])
    ip_hash = hash_ip(state, data.get("ip"))
    begin_write(state)
    customer = get_customer(state, data["customer_ref"])
    if customer is None:
        return ConsentState(data["customer_ref"], purpose.name, "none"), []
    row = _lock_status(state, customer, purpose.name)
    current = _effective(row, now)
    if current not in ("granted", "pending"):
        return _to_state(state, customer.ref, purpose.name, row, now), []
    if current == "pending":
        _cancel_confirmations(state, customer, purpose.name, "consent withdrawn", now)
    event = _append(state, customer, purpose.name, "withdrawn", source=data["source"], method=data["method"],
                    now=now, ip_hash=ip_hash)
    _settle(row, "withdrawn", event, now)
    state.session.flush()
    st = _to_state(state, customer.ref, purpose.name, row, now)
    return st, [_signal(event, st)]


def grant(state: LoyaltyState, customer_ref: str, purpose: str, *, source: str, wording: str | None = None,
          ip: str | None = None, double_opt_in: bool | None = None, method: str = "api",
          locale: str | None = None, commit: bool = True, now: datetime | None = None) -> ConsentState:
    """Record a consent (see :meth:`Consent.grant`)."""
    data = load(_grant_schema, {"customer_ref": customer_ref, "purpose": purpose, "source": source,
                                "wording": wording, "ip": ip, "double_opt_in": double_opt_in,
                                "method": method, "locale": locale})
    st, signals = _grant(state, data, resolve_now(now))
    finish(state, commit=commit, signals=signals)
    return st


def withdraw(state: LoyaltyState, customer_ref: str, purpose: str, *, source: str, method: str = "api",
             ip: str | None = None, commit: bool = True, now: datetime | None = None) -> ConsentState:
    """Withdraw a consent (see :meth:`Consent.withdraw`)."""
    data = load(_withdraw_schema, {"customer_ref": customer_ref, "purpose": purpose, "source": source,
                                   "method": method, "ip": ip})
    st, signals = _withdraw(state, data, resolve_now(now))
    finish(state, commit=commit, signals=signals)
    return st


class ConfirmationGone(TokenError):
    """A confirmation link whose pending grant was withdrawn, replaced or has expired."""

    def __init__(self) -> None:
        super().__init__("expired")


def confirm(state: LoyaltyState, customer_ref: str, purpose: str, event_id: int, *, ip: str | None = None,
            commit: bool = True, now: datetime | None = None) -> tuple[ConsentState, bool]:
    """Follow a double opt-in link: ``(state, newly_confirmed)``.

    Confirming twice is harmless (``newly_confirmed`` is then ``False``).  A
    link whose pending grant expired, was withdrawn or replaced by a newer one
    raises :class:`ConfirmationGone` (a friendly 410 page).
    """
    moment = resolve_now(now)
    target = get_purpose(state, purpose)
    ip_hash = hash_ip(state, ip)
    begin_write(state)
    customer = get_customer(state, customer_ref)
    if customer is None:
        raise NotFound("customer")
    row = _lock_status(state, customer, target.name)
    if _confirmable(row, event_id, moment) == "confirmed":
        st = _to_state(state, customer.ref, target.name, row, moment)
        finish(state, commit=commit)      # nothing written; ends the transaction that holds the row lock
        return st, False
    pending = state.session.get(ConsentEvent, event_id)
    assert pending is not None
    _cancel_confirmations(state, customer, target.name, "consent confirmed", moment)
    event = _append(state, customer, target.name, "confirmed", source="confirmation_link",
                    method="double_opt_in", now=moment, wording_id=pending.wording_id, locale=pending.locale,
                    ip_hash=ip_hash)
    _settle(row, "granted", event, moment)
    state.session.flush()
    st = _to_state(state, customer.ref, target.name, row, moment)
    finish(state, commit=commit, signals=[_signal(event, st)])
    return st, True


def _confirmable(row: ConsentStatus | None, event_id: int, moment: datetime) -> str:
    """``"confirmed"`` (already granted) or ``"pending"`` (this link may confirm); else :class:`ConfirmationGone`."""
    if row is not None and row.status == "granted":
        return "confirmed"
    if (row is None or row.status != "pending" or row.pending_event_id != event_id
            or _effective(row, moment) == "expired"):
        raise ConfirmationGone()
    return "pending"


def confirmation_status(state: LoyaltyState, customer_ref: str, purpose: str, event_id: int, *,
                        now: datetime | None = None) -> str:
    """What following a double opt-in link would do, without doing it (read only).

    ``"pending"`` when :func:`confirm` would confirm, ``"confirmed"`` when the
    purpose is granted already; a link that is gone raises
    :class:`ConfirmationGone`, an unknown customer :class:`NotFound`.
    """
    target = get_purpose(state, purpose)
    customer = get_customer(state, customer_ref)
    if customer is None:
        raise NotFound("customer")
    row = state.session.execute(
        select(ConsentStatus).where(ConsentStatus.customer_id == customer.id, ConsentStatus.purpose == target.name)
    ).scalar_one_or_none()
    return _confirmable(row, event_id, resolve_now(now))


def set_choices(state: LoyaltyState, customer_ref: str, wanted: Iterable[str], *, source: str, method: str,
                ip: str | None = None, commit: bool = True,
                now: datetime | None = None) -> dict[str, ConsentState]:
    """Make the customer's consents match ``wanted`` (the ticked purposes), in one transaction.

    Ticked purposes not yet granted or pending are granted (double opt-in as
    configured); unticked granted or pending ones are withdrawn; the rest is
    left alone.  Unknown names in ``wanted`` are ignored.  Returns every
    purpose's state.
    """
    moment = resolve_now(now)
    chosen = set(wanted)
    signals: list[PendingSignal] = []
    for name, st in current(state, customer_ref, now=moment).items():
        if name in chosen and st.status not in ("granted", "pending"):
            data = load(_grant_schema, {"customer_ref": customer_ref, "purpose": name, "source": source,
                                        "method": method, "ip": ip})
            signals += _grant(state, data, moment)[1]
        elif name not in chosen and st.status in ("granted", "pending"):
            data = load(_withdraw_schema, {"customer_ref": customer_ref, "purpose": name, "source": source,
                                           "method": method, "ip": ip})
            signals += _withdraw(state, data, moment)[1]
    result = current(state, customer_ref, now=moment)
    finish(state, commit=commit, signals=signals)
    return result


# --- reading --------------------------------------------------------------------

def has(state: LoyaltyState, customer_ref: str, purpose: str) -> bool:
    """True when the customer's consent for ``purpose`` is granted now."""
    data = load(_purpose_schema, {"customer_ref": customer_ref, "purpose": purpose})
    get_purpose(state, data["purpose"])
    status = state.session.execute(
        select(ConsentStatus.status).join(Customer, Customer.id == ConsentStatus.customer_id)
        .where(Customer.ref == data["customer_ref"], ConsentStatus.purpose == data["purpose"],
               Customer.erased_at.is_(None))).scalar_one_or_none()
    return status == "granted"


def current(state: LoyaltyState, customer_ref: str, *, now: datetime | None = None) -> dict[str, ConsentState]:
    """Every configured purpose's :class:`ConsentState` for one customer."""
    moment = resolve_now(now)
    customer = get_customer(state, customer_ref)
    rows: dict[str, ConsentStatus] = {}
    if customer is not None:
        rows = {r.purpose: r for r in state.session.execute(
            select(ConsentStatus).where(ConsentStatus.customer_id == customer.id)).scalars()}
    return {name: _to_state(state, customer_ref, name, rows.get(name), moment) for name in purposes(state)}


def history(state: LoyaltyState, customer_ref: str) -> list[ConsentEvent]:
    """The customer's ledger, oldest first (``[]`` for an unknown customer)."""
    return list(state.session.execute(
        select(ConsentEvent).join(Customer, Customer.id == ConsentEvent.customer_id)
        .where(Customer.ref == customer_ref).order_by(ConsentEvent.id)).unique().scalars())


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def export(state: LoyaltyState, customer_ref: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Everything held on the customer, JSON-serialisable (see :meth:`Consent.export`)."""
    customer = get_customer(state, customer_ref)
    if customer is None:
        raise NotFound("customer")
    session = state.session
    moment = resolve_now(now)
    data: dict[str, Any] = {
        "format": "flask_loyalty.export/1",
        "exported_at": moment.isoformat(),
        "customer": {key: _json(getattr(customer, key)) for key in (
            "ref", "email", "name", "locale", "birthday", "created_at", "first_purchase_at",
            "last_purchase_at", "orders_count", "total_spent", "points_balance", "erased_at")},
    }
    purchases_ = session.execute(select(Purchase).where(Purchase.customer_id == customer.id)
                                 .order_by(Purchase.placed_at, Purchase.id)).unique().scalars().all()
    refs = {p.id: p.order_ref for p in purchases_}
    data["purchases"] = [
        {**{key: _json(getattr(p, key)) for key in (
            "order_ref", "placed_at", "total", "refunded_total", "currency", "channel", "points_earned",
            "points_reversed", "referral_code")},
         "items": [{key: _json(getattr(i, key)) for key in (
             "sku", "name", "category", "quantity", "unit_price", "unit_cost", "replenish_after_days")}
             for i in p.items]}
        for p in purchases_]
    # The whole points ledger, oldest first (the rewards area's export hook keeps it as it is).
    data["points"] = {"balance": customer.points_balance, "history": [
        {"at": _json(e.created_at), "delta": e.delta, "balance_after": e.balance_after, "reason": e.reason,
         "order_ref": refs.get(e.purchase_id) if e.purchase_id else None, "note": e.note}
        for e in session.execute(select(PointsEntry).where(PointsEntry.customer_id == customer.id)
                                 .order_by(PointsEntry.id)).scalars()]}
    data["consent"] = {
        "current": {name: {"status": st.status, "since": _json(st.since), "method": st.method,
                           "source": st.source, "wording_version": st.wording_version}
                    for name, st in current(state, customer_ref, now=moment).items()},
        "events": [{"at": _json(e.created_at), "purpose": e.purpose, "action": e.action, "source": e.source,
                    "method": e.method, "wording": e.wording, "wording_version": e.wording_version,
                    "wording_hash": e.wording_hash, "locale": e.locale, "ip_hash": e.ip_hash}
                   for e in history(state, customer_ref)],
    }
    state.run_hooks("export", customer=customer, data=data)
    return data


# --- erasure --------------------------------------------------------------------

def erase(state: LoyaltyState, customer_ref: str, *, commit: bool = True, now: datetime | None = None) -> None:
    """Erase the customer's personal data (see :meth:`Consent.erase`)."""
    moment = resolve_now(now)
    session = state.session
    begin_write(state)
    customer = get_customer(state, customer_ref)
    if customer is None:
        raise NotFound("customer")
    if dialect_name(state) == "postgresql":
        session.execute(select(Customer.id).where(Customer.id == customer.id).with_for_update())
        session.refresh(customer)
    if customer.email:
        insert_ignore(state, table_of(ConsentSuppression),
                      {"email_hash": email_hash(customer.email), "reason": "erased", "created_at": moment},
                      ["email_hash"])
    state.run_hooks("erase", customer=customer)
    signals: list[PendingSignal] = []
    touched = set(session.execute(select(ConsentStatus.purpose).where(
        ConsentStatus.customer_id == customer.id)).scalars())
    order = list(purposes(state))       # lock rows in the order the preference center does
    for name in sorted(touched, key=lambda n: (order.index(n) if n in order else len(order), n)):
        row = _lock_status(state, customer, name)
        if row.status in ("granted", "pending"):
            if row.status == "pending":
                _cancel_confirmations(state, customer, name, "customer erased", moment)
            event = _append(state, customer, name, "erased", source="erasure", method="erasure", now=moment)
            _settle(row, "withdrawn", event, moment)
            session.flush()
            signals.append(_signal(event, _to_state(state, customer.ref, name, row, moment)))
    session.execute(delete(table_of(ConsentEventIp)).where(table_of(ConsentEventIp).c.customer_id == customer.id))
    customer.email = None
    customer.name = None
    customer.birthday = None
    if customer.erased_at is None:
        customer.erased_at = moment
    finish(state, commit=commit, signals=signals)


# --- embeddable capture -----------------------------------------------------------

@dataclass(frozen=True)
class FormItem:
    """One checkbox of the capture partial."""

    purpose: str
    label: str
    wording: str
    field_id: str


def form_items(state: LoyaltyState, *, locale: str | None = None,
               only: Iterable[str] | None = None) -> tuple[str, list[FormItem], str]:
    """``(locale, items, shown_token)`` for rendering the capture checkboxes.

    ``shown_token`` is a signed record of which purposes and which wording
    versions were shown, checked again by :func:`capture`.
    """
    loc = choose_locale(locale, state=state)
    known = purposes(state)
    names = list(known) if only is None else [n for n in only if get_purpose(state, n)]
    items: list[FormItem] = []
    shown: dict[str, str] = {}
    for name in names:
        label, text = known[name].texts(loc)
        items.append(FormItem(name, label, text, f"{FIELD}_{name}"))
        shown[name] = wording_hash(label, text)[:16]
    token = tokens.make(FORM_TOKEN, {"l": loc, "w": shown}, state=state)
    return loc, items, token


def _getlist(form: Mapping[str, Any] | MultiDict[str, Any], key: str) -> list[str]:
    getlist = getattr(form, "getlist", None)
    if callable(getlist):
        values = list(getlist(key))
    else:
        raw = form.get(key)
        values = [] if raw is None else ([raw] if isinstance(raw, str) else list(raw))
    return [v for v in values if isinstance(v, str)]


def capture(state: LoyaltyState, customer_ref: str, form: Mapping[str, Any], *, source: str = "checkout",
            ip: str | None = None, commit: bool = True, now: datetime | None = None) -> dict[str, ConsentState]:
    """Record the purposes ticked in a form that included the capture partial.

    Only ticked boxes are recorded (method ``checkbox``, with the exact
    wording version that was shown); an unticked box withdraws nothing.  A
    purpose that was not shown in the form is ignored.  Returns the state of
    every recorded purpose.
    """
    moment = resolve_now(now)
    token = form.get(SHOWN_FIELD)
    locale: str | None = None
    shown: dict[str, str] | None = None
    if token:
        try:
            payload = tokens.load(FORM_TOKEN, str(token), state=state,
                                  max_age_seconds=int(state.config["LOYALTY_CONSENT_FORM_MAX_AGE"]))
        except TokenError:
            raise InvalidInput.field(SHOWN_FIELD, "The form has expired; please submit it again.") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("w"), dict):
            raise InvalidInput.field(SHOWN_FIELD, "The form has expired; please submit it again.")
        locale = payload.get("l") if isinstance(payload.get("l"), str) else None
        shown = {str(k): str(v) for k, v in payload["w"].items()}
    known = purposes(state)
    ticked = set(_getlist(form, FIELD))
    results: dict[str, ConsentState] = {}
    signals: list[PendingSignal] = []
    loc = choose_locale(locale, state=state)
    for name, purpose in known.items():
        if name not in ticked or (shown is not None and name not in shown):
            continue
        if shown is not None:
            label, text = purpose.texts(loc)
            if wording_hash(label, text)[:16] != shown[name]:
                raise InvalidInput.field(name, "The wording of this choice has changed; please check it again.")
        data = load(_grant_schema, {"customer_ref": customer_ref, "purpose": name, "source": source,
                                    "ip": ip, "method": "checkbox", "locale": locale})
        results[name], more = _grant(state, data, moment)
        signals += more
    finish(state, commit=commit, signals=signals)
    return results


# --- facade and set-up -------------------------------------------------------------

class Consent(Facade):
    """Per-purpose consent (CONTRACT §5): grant, withdraw, has, history, export, erase."""

    def grant(self, customer_ref: str, purpose: str, *, source: str, wording: str | None = None,
              ip: str | None = None, double_opt_in: bool | None = None, commit: bool = True,
              method: str = "api", locale: str | None = None, now: datetime | None = None) -> ConsentState:
        """Record that the customer agreed to ``purpose``.

        ``source`` names where (``"checkout"``, ``"signup"``, ``"import"`` ...);
        ``method`` how (``checkbox``, ``preference_center``, ``api`` ...);
        ``wording`` is the exact text shown (default: the purpose's configured
        wording in the customer's locale); ``ip`` is stored only as a salted
        hash.  With double opt-in (``double_opt_in=None`` follows
        ``LOYALTY_DOUBLE_OPT_IN``) the state stays ``pending`` and a
        confirmation mail is queued in the same transaction.  Granting what is
        already granted with the same wording changes nothing.  For an erased
        (suppressed) address only ``checkbox``/``preference_center`` grants
        are accepted, others raise :class:`SuppressedAddress`.
        """
        return grant(self._state, customer_ref, purpose, source=source, wording=wording, ip=ip,
                     double_opt_in=double_opt_in, method=method, locale=locale, commit=commit, now=now)

    def withdraw(self, customer_ref: str, purpose: str, *, source: str, commit: bool = True,
                 method: str = "api", ip: str | None = None, now: datetime | None = None) -> ConsentState:
        """Withdraw the consent (also a pending one); withdrawing twice records one event."""
        return withdraw(self._state, customer_ref, purpose, source=source, method=method, ip=ip,
                        commit=commit, now=now)

    def has(self, customer_ref: str, purpose: str) -> bool:
        """True when ``purpose`` is granted (and confirmed, with double opt-in) right now."""
        return has(self._state, customer_ref, purpose)

    def history(self, customer_ref: str) -> list[ConsentEvent]:
        """Every ledger event of the customer, oldest first."""
        return history(self._state, customer_ref)

    def export(self, customer_ref: str) -> dict[str, Any]:
        """All data held on the customer as JSON-serialisable dict.

        Keys: ``customer``, ``purchases`` (with ``items``), ``points``,
        ``consent`` (``current`` and ``events``) and whatever other areas add
        through their ``"export"`` hooks (coupons, survey answers, messages ...).
        Raises :class:`~flask_loyalty.errors.NotFound` for an unknown customer.
        """
        return export(self._state, customer_ref)

    def erase(self, customer_ref: str, *, commit: bool = True) -> None:
        """Erase the customer's personal data and withdraw every consent.

        Removes e-mail, name, birthday and IP hashes, runs the ``"erase"``
        hooks (other areas scrub survey text, rendered mails ...), keeps
        anonymised purchase totals, adds the address to the suppression list
        and sets ``Customer.erased_at``.
        """
        erase(self._state, customer_ref, commit=commit)

    # --- beyond the contract ------------------------------------------------------
    def state(self, customer_ref: str, purpose: str) -> ConsentState:
        """The current :class:`ConsentState` of one purpose."""
        get_purpose(self._state, purpose)
        return current(self._state, customer_ref)[purpose]

    def current(self, customer_ref: str) -> dict[str, ConsentState]:
        """The current :class:`ConsentState` of every configured purpose."""
        return current(self._state, customer_ref)

    def purposes(self) -> dict[str, Purpose]:
        """The configured purposes."""
        return purposes(self._state)

    def capture(self, customer_ref: str, form: Mapping[str, Any], *, source: str = "checkout",
                ip: str | None = None, commit: bool = True) -> dict[str, ConsentState]:
        """Record what was ticked in a form that includes ``{{ loyalty_consent_fields() }}``.

        Typically ``loyalty.consent.capture(ref, request.form, ip=request.remote_addr)``.
        """
        return capture(self._state, customer_ref, form, source=source, ip=ip, commit=commit)

    def set_choices(self, customer_ref: str, wanted: Iterable[str], *, source: str,
                    method: str = "preference_center", ip: str | None = None,
                    commit: bool = True) -> dict[str, ConsentState]:
        """Grant the ticked purposes and withdraw the unticked ones in one transaction (an account page)."""
        return set_choices(self._state, customer_ref, wanted, source=source, method=method, ip=ip, commit=commit)

    def is_suppressed(self, email: str) -> bool:
        """True when ``email`` (any letter case) belongs to an erased customer."""
        return is_suppressed(self._state, email)


def setup(state: LoyaltyState) -> None:
    """Validate the consent settings and register the CLI commands."""
    validate_config(state)


__all__ = [
    "Consent",
    "ConsentState",
    "Purpose",
    "SuppressedAddress",
    "setup",
]
