"""Dispatchers: claim due outbox rows, apply the send-time rules, render, send, record.

Any number of dispatchers may run at once against one database:

1. **Claim** (own short transaction): up to ``LOYALTY_DISPATCH_BATCH`` due
   rows get a lease (``lease_owner``/``lease_until = now +
   LOYALTY_DISPATCH_LEASE``).  On PostgreSQL the rows are picked with
   ``FOR UPDATE SKIP LOCKED`` so dispatchers never wait for each other; on
   SQLite one conditional ``UPDATE`` claims them under the write lock.  Rows
   whose lease expired (a crashed dispatcher) are claimable again.
2. **Decide** (one transaction, the batch's customers locked): erased
   customer -> suppressed; fully refunded order -> cancelled; kind checks
   (e.g. re-bought) -> cancelled; no address -> suppressed; too late
   (``stale_after_days``) -> suppressed; no consent for the purpose now ->
   suppressed; weekly cap reached -> deferred to the next free slot.  The
   rest take their cap slot and are rendered (the rendered mail is stored).
3. **Send** each mail and commit its outcome right away: ``sent`` (+
   ``message_sent``), a retry with exponential backoff, or ``failed`` after
   ``LOYALTY_MAX_ATTEMPTS`` (+ ``message_failed``).

Every decision is appended to the message's history with its reason.
Each message keeps one ``Message-ID`` for every attempt, so if a dispatcher
dies between the server's acceptance and the commit, the resend can be
recognised downstream.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, text, update

from ..clock import resolve_now
from ..models import Customer, Message, MessageEvent, Purchase
from ..models.base import table_of
from ..signals import message_failed, message_sent
from ..state import LoyaltyState
from ..transaction import begin_write, dialect_name
from .mail import build_email, render_message
from .outbox import CHECKS, KINDS, week_ago
from .transports import PermanentFailure, SendError, Transport, TransportUnavailable, get_transport

log = logging.getLogger("flask_loyalty.dispatch")


@dataclass
class DispatchReport:
    """What one ``dispatch()`` call did."""

    #: Mails handed to the transport.
    sent: int = 0
    #: Messages that gave up (``failed``: max attempts or rejected for good).
    failed: int = 0
    #: Messages moved to a later slot by the weekly cap.
    deferred: int = 0
    #: Messages not sent by a rule (no consent, erased, stale, no address).
    suppressed: int = 0
    #: Messages cancelled at send time (refunded order, kind check such as re-bought).
    cancelled: int = 0
    #: Attempts that failed and will be retried with backoff.
    retried: int = 0
    #: Rows claimed by this dispatcher.
    claimed: int = 0
    #: Reason -> count for suppressed/cancelled/deferred messages.
    reasons: dict[str, int] = field(default_factory=dict)

    def _count(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


@dataclass
class Outgoing:
    """A message ready to go: everything the send phase needs, detached from the session."""

    pk: int
    attempts: int
    reason: str
    mail: EmailMessage


def _owner() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(state: LoyaltyState, owner: str, count: int, now: datetime) -> list[int]:
    """Lease up to ``count`` due rows to ``owner``; commits; returns their ids."""
    table = table_of(Message)
    lease = timedelta(seconds=float(state.config["LOYALTY_DISPATCH_LEASE"]))
    claimable = and_(table.c.status == "scheduled", table.c.due_at <= now,
                     or_(table.c.lease_until.is_(None), table.c.lease_until < now))
    pick = (select(table.c.id).where(claimable)
            .order_by(table.c.priority.desc(), table.c.due_at, table.c.id).limit(count))
    if dialect_name(state) == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    stmt = (update(table).where(table.c.id.in_(pick), claimable)
            .values(lease_owner=owner, lease_until=now + lease).returning(table.c.id))
    session = state.session
    try:
        ids = [int(row[0]) for row in session.execute(stmt).all()]
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return ids


def backoff(state: LoyaltyState, attempts: int) -> timedelta:
    """Wait before the next attempt after ``attempts`` failed ones (exponential, capped)."""
    base = float(state.config["LOYALTY_RETRY_BACKOFF"])
    cap = float(state.config["LOYALTY_RETRY_MAX_BACKOFF"])
    return timedelta(seconds=min(base * (2 ** max(attempts - 1, 0)), cap))


class _ConsentLookup:
    """``loyalty.consent.has`` at send time; marketing counts as not consented without the area."""

    def __init__(self, state: LoyaltyState) -> None:
        self._has: Any = None
        try:
            self._has = state.extension.consent.has
        except ModuleNotFoundError as exc:  # consent area not installed in this tree
            if exc.name != "flask_loyalty.services.consent":
                raise
            log.warning("flask_loyalty.services.consent is missing: no consent-bound mail is sent")

    def has(self, customer_ref: str, purpose: str) -> bool:
        if self._has is None:
            return False
        return bool(self._has(customer_ref, purpose))


class _Batch:
    """One claimed batch of one dispatcher."""

    def __init__(self, state: LoyaltyState, owner: str, ids: list[int], now: datetime,
                 report: DispatchReport, consent: _ConsentLookup) -> None:
        self.state, self.owner, self.ids, self.now, self.report = state, owner, ids, now, report
        self.consent = consent
        self.table = table_of(Message)
        self.events: list[dict[str, Any]] = []
        self.failed: list[tuple[int, str]] = []

    # --- helpers --------------------------------------------------------------
    def _event(self, message_pk: int, action: str, reason: str | None, detail: str | None = None) -> None:
        self.events.append({"message_id": message_pk, "at": self.now, "action": action, "reason": reason,
                            "detail": detail[:500] if detail else None})

    def _flush_events(self) -> None:
        if self.events:
            self.state.session.execute(insert(table_of(MessageEvent)), self.events)
            self.events = []

    def _close(self, message: Message, status: str, reason: str, detail: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "reason": reason, "lease_owner": None, "lease_until": None}
        if detail:
            values["last_error"] = detail[:500]
        self.state.session.execute(
            update(self.table).where(self.table.c.id == message.id, self.table.c.lease_owner == self.owner)
            .values(**values))
        self._event(message.id, status, reason, detail)
        if status == "failed":
            self.failed.append((message.id, detail or reason))
        setattr(self.report, status, getattr(self.report, status) + 1)
        self.report._count(reason)

    # --- phase 2: decide ---------------------------------------------------------
    def decide(self) -> list[Outgoing]:
        """Apply the send-time rules; commit; return the messages to send, rendered."""
        state, session = self.state, self.state.session
        begin_write(state)
        messages = list(session.execute(
            select(Message).where(Message.id.in_(self.ids), Message.lease_owner == self.owner)
            .order_by(Message.priority.desc(), Message.due_at, Message.id)).unique().scalars())
        if not messages:
            session.commit()
            return []
        customer_ids = sorted({m.customer_id for m in messages})
        lock = select(Customer.id).where(Customer.id.in_(customer_ids)).order_by(Customer.id)
        if dialect_name(state) == "postgresql":
            lock = lock.with_for_update(key_share=True)
        session.execute(lock).all()
        for m in messages:
            session.refresh(m.customer)
        refunded = self._refunded_orders({m.order_ref for m in messages if m.order_ref})
        slots = self._slots(customer_ids)
        cap = int(state.config["LOYALTY_MAX_MARKETING_PER_WEEK"])
        ready: list[Outgoing] = []
        renders: list[dict[str, Any]] = []
        for m in messages:
            customer = m.customer
            spec = KINDS.get(m.kind)
            if customer.erased_at is not None:
                self._close(m, "suppressed", "erased")
                continue
            if spec is None:
                self._close(m, "suppressed", "unknown_kind")
                continue
            if m.order_ref and m.order_ref in refunded:
                self._close(m, "cancelled", "order_refunded")
                continue
            cancel = next((r for check in CHECKS.get(m.kind, ()) if (r := check(state, m, self.now))), None)
            if cancel:
                self._close(m, "cancelled", cancel)
                continue
            if spec.stale_after_days is not None and \
                    self.now > m.first_due_at + timedelta(days=spec.stale_after_days):
                self._close(m, "suppressed", "stale")
                continue
            if m.purpose and not self.consent.has(customer.ref, m.purpose):
                self._close(m, "suppressed", f"no_consent:{m.purpose}")
                continue
            why = f"consent:{m.purpose}" if m.purpose else "transactional"
            if m.marketing and m.counted_at is None:
                taken = slots.setdefault(customer.id, [])
                if len(taken) >= cap:
                    self._defer(m, min(taken) + timedelta(days=7), len(taken), cap)
                    continue
                taken.append(self.now)
                why += f"; weekly slot {len(taken)}/{cap}"
            try:
                rendered = None if m.body_text is not None else render_message(state, m, customer)
            except Exception as exc:  # a broken template must not block the queue: fail this one
                log.exception("cannot render message %s (%s)", m.id, m.kind)
                self._close(m, "failed", "render_error", f"{type(exc).__name__}: {exc}")
                continue
            if m.body_text is None and rendered is None:
                self._close(m, "suppressed", "no_address")
                continue
            values: dict[str, Any] = {"id": m.id, "reason": why}
            if m.marketing and m.counted_at is None:
                values["counted_at"] = self.now
            if rendered is not None:
                values.update(locale=rendered.locale, to_address=rendered.to_address,
                              from_address=rendered.from_address, subject=rendered.subject,
                              body_text=rendered.body_text, body_html=rendered.body_html, links=rendered.links)
            renders.append(values)
            fields = {k: values.get(k, getattr(m, k)) for k in (
                "locale", "to_address", "from_address", "subject", "body_text", "body_html")}
            mail = build_email(state, now=self.now, message_id=m.message_id, kind=m.kind, marketing=m.marketing,
                               purpose=m.purpose, customer_ref=customer.ref, **fields)
            ready.append(Outgoing(m.id, m.attempts, why, mail))
        if renders:
            session.execute(update(Message), renders)
        self._flush_events()
        session.commit()
        for pk, error in self.failed:
            message_failed.send(state.app, message=session.get(Message, pk), error=error)
        return ready

    def _defer(self, m: Message, slot: datetime, used: int, cap: int) -> None:
        due = max(slot, self.now + timedelta(seconds=1))
        self.state.session.execute(
            update(self.table).where(self.table.c.id == m.id, self.table.c.lease_owner == self.owner)
            .values(due_at=due, reason="weekly_cap", lease_owner=None, lease_until=None))
        self._event(m.id, "deferred", "weekly_cap",
                    f"{used}/{cap} marketing mails in the last 7 days; next slot {due.isoformat()}")
        self.report.deferred += 1
        self.report._count("weekly_cap")

    def _refunded_orders(self, refs: set[str]) -> set[str]:
        if not refs:
            return set()
        table = table_of(Purchase)
        rows = self.state.session.execute(select(table.c.order_ref).where(
            table.c.order_ref.in_(refs), table.c.refunded_total > 0,
            table.c.refunded_total >= table.c.total)).all()
        return {row[0] for row in rows}

    def _slots(self, customer_ids: list[int]) -> dict[int, list[datetime]]:
        """Cap slots taken in the rolling week, per customer (scheduled-with-slot or sent)."""
        table = self.table
        rows = self.state.session.execute(select(table.c.customer_id, table.c.counted_at).where(
            table.c.customer_id.in_(customer_ids), table.c.marketing.is_(True),
            table.c.status.in_(("scheduled", "sent")), table.c.counted_at > week_ago(self.now),
            table.c.counted_at <= self.now)).all()
        slots: dict[int, list[datetime]] = {}
        for customer_id, counted_at in rows:
            slots.setdefault(int(customer_id), []).append(counted_at)
        return slots

    # --- phase 3: send --------------------------------------------------------------
    def send(self, ready: list[Outgoing], transport: Transport, started: float) -> None:
        """Send each ready message and commit its outcome at once."""
        state, session = self.state, self.state.session
        lease = float(state.config["LOYALTY_DISPATCH_LEASE"])
        pg = dialect_name(state) == "postgresql"
        for index, m in enumerate(ready):
            if time.monotonic() - started > lease * 0.8:
                self._release(ready[index:], "lease_running_out")
                return
            try:
                transport.send(m.mail)
            except TransportUnavailable as exc:
                for rest in ready[index:]:
                    self._attempt_failed(rest, exc, pg)
                return
            except SendError as exc:
                self._attempt_failed(m, exc, pg)
                continue
            if pg:
                session.execute(text("SET LOCAL synchronous_commit = off"))
            reason = f"{m.reason}; via {transport.name}"[:200]
            session.execute(update(self.table).where(self.table.c.id == m.pk,
                                                     self.table.c.lease_owner == self.owner)
                            .values(status="sent", sent_at=self.now, attempts=self.table.c.attempts + 1,
                                    reason=reason, last_error=None, lease_owner=None, lease_until=None))
            self._event(m.pk, "sent", reason)
            self._flush_events()
            session.commit()
            self.report.sent += 1
            if message_sent.receivers:
                message = session.get(Message, m.pk)
                message_sent.send(state.app, message=message)

    def _release(self, messages: list[Outgoing], reason: str) -> None:
        session = self.state.session
        session.execute(update(self.table).where(self.table.c.id.in_([m.pk for m in messages]),
                                                 self.table.c.lease_owner == self.owner)
                        .values(lease_owner=None, lease_until=None))
        session.commit()
        log.info("released %d messages: %s", len(messages), reason)

    def _attempt_failed(self, m: Outgoing, exc: Exception, pg: bool) -> None:
        state, session = self.state, self.state.session
        attempts = m.attempts + 1
        error = f"{type(exc).__name__}: {exc}"[:500]
        max_attempts = int(state.config["LOYALTY_MAX_ATTEMPTS"])
        give_up = isinstance(exc, PermanentFailure) or attempts >= max_attempts
        values: dict[str, Any] = {"attempts": attempts, "last_error": error, "lease_owner": None,
                                  "lease_until": None}
        if give_up:
            reason = "rejected" if isinstance(exc, PermanentFailure) else "max_attempts"
            values.update(status="failed", reason=reason)
            self._event(m.pk, "failed", reason, error)
        else:
            due = self.now + backoff(state, attempts)
            values.update(due_at=due, reason="retry")
            self._event(m.pk, "retry", "send_error", f"attempt {attempts}: {error}; next {due.isoformat()}")
        session.execute(update(self.table).where(self.table.c.id == m.pk, self.table.c.lease_owner == self.owner)
                        .values(**values))
        self._flush_events()
        session.commit()
        if give_up:
            self.report.failed += 1
            message_failed.send(state.app, message=session.get(Message, m.pk), error=error)
        else:
            self.report.retried += 1


def dispatch(state: LoyaltyState, limit: int | None = None, now: datetime | None = None) -> DispatchReport:
    """Send the messages due at ``now`` (default: the current time), at most ``limit`` of them.

    Safe with any number of dispatchers at once (threads, processes,
    machines) on PostgreSQL; on SQLite too, serialised by its write lock.
    """
    moment = resolve_now(now)
    owner = _owner()
    report = DispatchReport()
    consent = _ConsentLookup(state)
    batch_size = max(int(state.config["LOYALTY_DISPATCH_BATCH"]), 1)
    transport = get_transport(state)
    try:
        while limit is None or report.claimed < limit:
            wanted = batch_size if limit is None else min(batch_size, limit - report.claimed)
            started = time.monotonic()
            ids = claim(state, owner, wanted, moment)
            if not ids:
                break
            report.claimed += len(ids)
            batch = _Batch(state, owner, ids, moment, report, consent)
            try:
                ready = batch.decide()
                batch.send(ready, transport, started)
            except BaseException:
                state.session.rollback()
                raise
            if len(ids) < wanted:
                break
    finally:
        transport.close()
    return report


def due_count(state: LoyaltyState, now: datetime | None = None) -> int:
    """How many scheduled messages are due at ``now`` (for monitoring and the CLI)."""
    moment = resolve_now(now)
    return int(state.session.execute(select(func.count()).select_from(table_of(Message)).where(
        table_of(Message).c.status == "scheduled", table_of(Message).c.due_at <= moment)).scalar_one())
