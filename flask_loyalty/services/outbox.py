"""The outbox: scheduling messages in the caller's transaction, and ``loyalty.messages``.

Any area schedules a mail with :func:`enqueue`; the row is written in the
caller's transaction (nothing is committed here), so a mail exists if and
only if the business change that caused it was committed.  Dispatchers
(:mod:`flask_loyalty.services.dispatch`) send it later, applying the
send-time rules (consent now, erased customers, the weekly cap, staleness).

Kinds of message are registered in :data:`KINDS` with :func:`register_kind`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import make_transient_to_detached

from ..clock import ensure_aware, shop_zone, utcnow
from ..errors import InvalidInput
from ..models import Customer, Engagement, Message, MessageEvent
from ..models.base import table_of
from ..state import LoyaltyState
from ..transaction import dialect_name
from .base import Facade


@dataclass(frozen=True)
class MessageKind:
    """What the dispatcher needs to know about a kind of message.

    ``purpose``: consent purpose that must hold at send time (``None`` for
    transactional mails).  ``marketing``: counts against the weekly cap.
    ``priority``: higher goes first when the cap leaves room for only one.
    ``stale_after_days``: suppress (with reason ``stale``) a message that
    could only be sent this many days after it was first due.
    ``to_config``: config key holding the recipient address instead of the
    customer's (e.g. ``LOYALTY_ALERT_EMAIL`` for alerts to the shop owner).
    """

    purpose: str | None
    marketing: bool
    priority: int
    stale_after_days: int | None
    to_config: str | None = None


#: Every known kind of message, by name.  Areas add theirs with :func:`register_kind`.
KINDS: dict[str, MessageKind] = {}

#: Kind-specific send-time checks: ``check(state, message, now) -> reason | None``.
#: A returned reason cancels the message (e.g. a replenish reminder after the
#: customer bought the item again).
CHECKS: dict[str, list[Callable[[LoyaltyState, Message, datetime], str | None]]] = {}


#: Extra template context per kind: ``provider(state, message, customer, locale) -> dict``.
CONTEXTS: dict[str, Callable[[LoyaltyState, Message, Customer, str], dict[str, Any]]] = {}


def register_kind(name: str, kind: MessageKind) -> None:
    """Register (or redefine) a kind of message; call it at import time of a service module."""
    if not name or len(name) > 32 or not name.replace("_", "").isalnum():
        raise ValueError(f"bad message kind name {name!r}")
    KINDS[name] = kind


def register_check(name: str, check: Callable[[LoyaltyState, Message, datetime], str | None]) -> None:
    """Add a send-time check for messages of kind ``name`` (returns a cancel reason or ``None``)."""
    CHECKS.setdefault(name, []).append(check)


def register_context(name: str,
                     provider: Callable[[LoyaltyState, Message, Customer, str], dict[str, Any]]) -> None:
    """Add template context for messages of kind ``name`` (computed at render time)."""
    CONTEXTS[name] = provider


_MARKETING = "email_marketing"
for _name, _kind in {
    "consent_confirm": MessageKind(None, False, 100, 7),
    "detractor_alert": MessageKind(None, False, 100, None, to_config="LOYALTY_ALERT_EMAIL"),
    "survey_reward": MessageKind("surveys", False, 90, None),
    "thank_you": MessageKind(_MARKETING, True, 80, 14),
    "birthday": MessageKind(_MARKETING, True, 70, 7),
    "points_expiring": MessageKind(_MARKETING, True, 65, 14),
    "survey_invite": MessageKind("surveys", True, 60, 30),
    "referral_reward": MessageKind(_MARKETING, True, 55, 30),
    "usage_guide": MessageKind(_MARKETING, True, 50, 30),
    "replenish": MessageKind(_MARKETING, True, 45, 21),
    "tier_changed": MessageKind(_MARKETING, True, 40, 30),
    "win_back": MessageKind(_MARKETING, True, 30, 30),
    "campaign": MessageKind(_MARKETING, True, 20, 14),
}.items():
    register_kind(_name, _kind)


def message_id_domain(state: LoyaltyState) -> str:
    """Domain part of generated Message-IDs."""
    configured = state.config.get("LOYALTY_MESSAGE_ID_DOMAIN")
    if configured:
        return str(configured)
    base = state.config.get("LOYALTY_BASE_URL")
    host = urlsplit(str(base)).hostname if base else None
    return host or "flask-loyalty.invalid"


def add_event(state: LoyaltyState, message_id: int, action: str, reason: str | None, *,
              at: datetime, detail: str | None = None) -> None:
    """Append one step to a message's history (in the current transaction)."""
    # Added through the unit of work so the events of one checkout go out in one INSERT at flush.
    state.session.add(MessageEvent(message_id=message_id, at=at, action=action, reason=reason,
                                   detail=detail[:500] if detail else None))


@functools.cache
def _insert_message(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (dedupe_key) DO NOTHING RETURNING id``, built once per dialect."""
    table = table_of(Message)
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=["dedupe_key"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["dedupe_key"])
    else:  # pragma: no cover - other databases: plain insert
        stmt = insert(table)
    return stmt.returning(table.c.id)


def enqueue(state: LoyaltyState, kind: str, customer: Customer, *, due_at: datetime | None = None,
            order_ref: str | None = None, payload: dict[str, Any] | None = None,
            dedupe_key: str | None = None, reason: str | None = None) -> Message | None:
    """Schedule a message in the caller's transaction (no commit).

    Returns the new :class:`Message`, or ``None`` when ``dedupe_key`` was
    already used (``INSERT ... ON CONFLICT DO NOTHING``: idempotent, and safe
    inside a PostgreSQL transaction).  ``payload`` must be JSON (store
    Decimals as str).  ``reason`` is recorded in the history ("why was it
    scheduled").
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise InvalidInput.field("kind", f"Unknown message kind {kind!r}.")
    due = ensure_aware(due_at, field="due_at") if due_at is not None else utcnow()
    table = table_of(Message)
    created = utcnow()
    values: dict[str, Any] = {
        "customer_id": customer.id, "kind": kind, "purpose": spec.purpose, "marketing": spec.marketing,
        "priority": spec.priority, "order_ref": order_ref, "payload": dict(payload or {}),
        "dedupe_key": dedupe_key, "status": "scheduled", "reason": reason, "due_at": due, "first_due_at": due,
        "attempts": 0, "message_id": f"<{uuid.uuid4().hex}.{kind}@{message_id_domain(state)}>",
        "created_at": created,
    }
    # a prebuilt statement on the session's connection: no statement building, no autoflush
    row = state.session.connection().execute(_insert_message(dialect_name(state)), values).first()
    if row is None:
        return None
    message_pk = int(row[0])
    add_event(state, message_pk, "scheduled", reason, at=created,
              detail=f"due {due.isoformat()}")
    # The row holds exactly these values: attach it to the session without reading it back.
    columns = {c.key: None for c in table.columns}
    message = Message(**{**columns, **values, "id": message_pk})
    make_transient_to_detached(message)
    state.session.add(message)
    return message


def cancel_pending(state: LoyaltyState, *, reason: str, now: datetime | None = None,
                   order_ref: str | None = None, customer_id: int | None = None,
                   kinds: tuple[str, ...] | None = None, where: Any = None) -> int:
    """Cancel scheduled messages matching the filters (in the caller's transaction)."""
    if order_ref is None and customer_id is None:
        raise ValueError("cancel_pending needs order_ref or customer_id")
    table = table_of(Message)
    stmt = update(table).where(table.c.status == "scheduled")
    if order_ref is not None:
        stmt = stmt.where(table.c.order_ref == order_ref)
    if customer_id is not None:
        stmt = stmt.where(table.c.customer_id == customer_id)
    if kinds is not None:
        stmt = stmt.where(table.c.kind.in_(kinds))
    if where is not None:
        stmt = stmt.where(where)
    rows = state.session.execute(
        stmt.values(status="cancelled", reason=reason, lease_owner=None, lease_until=None)
        .returning(table.c.id)).all()
    at = now or utcnow()
    for (pk,) in rows:
        add_event(state, int(pk), "cancelled", reason, at=at)
    return len(rows)


def engagement_summary(state: LoyaltyState, customer_id: int) -> dict[str, Any]:
    """Opens, clicks and the shop-local hour a customer most often reads mails (``None`` if unknown)."""
    table = table_of(Engagement)
    rows = state.session.execute(
        select(table.c.event, table.c.hour, func.count()).where(table.c.customer_id == customer_id)
        .group_by(table.c.event, table.c.hour)).all()
    opens = sum(int(n) for event, _h, n in rows if event == "open")
    clicks = sum(int(n) for event, _h, n in rows if event == "click")
    by_hour: dict[int, int] = {}
    for _event, hour, n in rows:
        by_hour[int(hour)] = by_hour.get(int(hour), 0) + int(n)
    best = max(sorted(by_hour), key=lambda h: by_hour[h]) if by_hour else None
    return {"opens": opens, "clicks": clicks, "best_hour": best, "by_hour": by_hour}


class Messages(Facade):
    """``loyalty.messages``: what was scheduled, sent, deferred or suppressed, and why."""

    def _customer(self, customer_ref: str) -> Customer | None:
        return self._state.session.execute(
            select(Customer).where(Customer.ref == customer_ref)).scalar_one_or_none()

    def for_customer(self, customer_ref: str) -> list[Message]:
        """Every message of a customer, oldest due first (an unknown customer has none).

        Each :class:`Message` has ``.kind .status .due_at .sent_at .order_ref``,
        ``.reason`` and ``.events`` (the status history).  Orders of the
        customer that the plan has not read yet are planned first, in the
        caller's transaction (see :func:`flask_loyalty.services.plan.expand_pending`).
        """
        customer = self._customer(customer_ref)
        if customer is None:
            return []
        from .plan import expand_pending

        # orders recorded since the last dispatch: plan them now (in the caller's
        # transaction, flushed, not committed) so what is shown is complete; a caller
        # that does not commit gets them planned again, with new coupon codes, later
        expand_pending(self._state, customer_id=customer.id)
        return list(self._state.session.execute(
            select(Message).where(Message.customer_id == customer.id)
            .order_by(Message.due_at, Message.id)).scalars())

    def get(self, message_pk: int) -> Message | None:
        """One message by its primary key (with its rendered mail once rendered)."""
        return self._state.session.get(Message, message_pk)

    def history(self, message_pk: int) -> list[MessageEvent]:
        """The status history of one message, oldest first (empty for an unknown id)."""
        return list(self._state.session.execute(
            select(MessageEvent).where(MessageEvent.message_id == message_pk)
            .order_by(MessageEvent.id)).scalars())

    def outbox(self, *, limit: int = 50) -> list[Message]:
        """The most recently rendered mails (what the ``outbox`` transport keeps), newest first."""
        return list(self._state.session.execute(
            select(Message).where(Message.body_text.is_not(None))
            .order_by(Message.sent_at.desc().nulls_last(), Message.id.desc()).limit(limit)).scalars())

    def engagement(self, customer_ref: str) -> dict[str, Any]:
        """Opens, clicks and best reading hour (shop time) of a customer's tracked mails."""
        customer = self._customer(customer_ref)
        if customer is None:
            return {"opens": 0, "clicks": 0, "best_hour": None, "by_hour": {}}
        return engagement_summary(self._state, customer.id)

    def counts(self, *, since: datetime | None = None) -> dict[str, dict[str, int]]:
        """Messages per kind and status (optionally due since ``since``) for the dashboard."""
        query = select(Message.kind, Message.status, func.count()).group_by(Message.kind, Message.status)
        if since is not None:
            query = query.where(Message.due_at >= ensure_aware(since, field="since"))
        result: dict[str, dict[str, int]] = {}
        for kind, status, n in self._state.session.execute(query).all():
            result.setdefault(kind, {})[status] = int(n)
        return result


def local_hour(state: LoyaltyState, moment: datetime) -> int:
    """Hour of day of ``moment`` in the shop's time zone."""
    return moment.astimezone(shop_zone(state.config["LOYALTY_TIMEZONE"])).hour


def week_ago(now: datetime) -> datetime:
    """Start of the rolling 7-day window of the weekly cap."""
    return now - timedelta(days=7)
