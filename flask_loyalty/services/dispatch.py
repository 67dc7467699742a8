"""Dispatchers: claim due outbox rows, apply the send-time rules, render, send, record.

Any number of dispatchers may run at once against one database:

1. **Claim** (own short transaction): up to ``LOYALTY_DISPATCH_BATCH`` due
   rows get a lease (``lease_owner``/``lease_until = now +
   LOYALTY_DISPATCH_LEASE``).  On PostgreSQL the rows are picked once (a
   ``MATERIALIZED`` CTE) with ``FOR UPDATE SKIP LOCKED`` so dispatchers never
   wait for each other and never take more than asked; on
   SQLite one conditional ``UPDATE`` claims them under the write lock.  Rows
   whose lease expired (a crashed dispatcher) are claimable again.
2. **Decide** (one transaction, the batch's customers locked): erased
   customer -> suppressed; fully refunded order -> cancelled; kind checks
   (e.g. re-bought) -> cancelled; no address -> suppressed; too late
   (``stale_after_days``) -> suppressed; no consent for the purpose now ->
   suppressed; weekly cap reached -> deferred to the next free slot.  The
   rest take their cap slot and are rendered (the rendered mail is stored).
3. **Send** each mail, right after re-checking that it is still leased and
   scheduled, the customer not erased and the consent for its purpose given
   (else ``suppressed``, or nothing when it was cancelled meanwhile), and
   commit its outcome right away: ``sent`` (+
   ``message_sent``), a retry with exponential backoff, or ``failed`` after
   ``LOYALTY_MAX_ATTEMPTS`` (+ ``message_failed``).

Every decision is appended to the message's history with its reason.
Each message keeps one ``Message-ID`` for every attempt, so if a dispatcher
dies between the server's acceptance and the commit, the resend can be
recognised downstream.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, func, insert, literal, or_, select, update

from ..clock import resolve_now
from ..models import Customer, Message, MessageEvent, Purchase
from ..models.base import table_of
from ..models.consent import ConsentStatus
from ..models.types import UTCDateTime
from ..signals import message_failed, message_sent
from ..state import LoyaltyState
from ..transaction import begin_write, dialect_name
from .mail import OutgoingMail, UnsupportedAddress, build_mail, recipient, recipient_header, render_message
from .outbox import CHECKS, KINDS, week_ago
from .transports import (
    PermanentFailure,
    SendError,
    SMTPTransport,
    Transport,
    TransportUnavailable,
    get_transport,
)

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
    mail: OutgoingMail


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
        # The ids are picked once, in a MATERIALIZED CTE, and exactly those rows are leased.
        # ``id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` may be planned as a nested
        # loop that re-runs the subquery per outer row, leasing every due row whatever n is.
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        chosen: Any = table.c.id.in_(select(picked.c.id))
    else:
        # SQLite: one conditional UPDATE under the write lock; the subquery runs once
        chosen = table.c.id.in_(pick)
    stmt = (update(table).where(chosen, claimable)
            .values(lease_owner=owner, lease_until=now + lease).returning(table.c.id))
    session = state.session
    try:
        ids = [int(row[0]) for row in session.execute(stmt).all()]
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return ids


def plan_new_orders(state: LoyaltyState) -> int:
    """Schedule the mails of orders recorded since the last run (commits); how many orders.

    The checkout only writes the order; its thank-you, guide, survey and
    replenishment mails are planned here, in batches, before anything is
    claimed, so they can go out in the same run.
    """
    from .plan import expand_pending

    session = state.session
    try:
        count = expand_pending(state)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return count


def backoff(state: LoyaltyState, attempts: int) -> timedelta:
    """Wait before the next attempt after ``attempts`` failed ones (exponential, capped)."""
    base = float(state.config["LOYALTY_RETRY_BACKOFF"])
    cap = float(state.config["LOYALTY_RETRY_MAX_BACKOFF"])
    return timedelta(seconds=min(base * (2 ** max(attempts - 1, 0)), cap))


class ConsentLookup:
    """Send-time consent for a whole batch: one query per purpose instead of one per message.

    The predicate is exactly that of ``loyalty.consent.has(ref, purpose)``:
    the customer's current status for the purpose is ``granted`` (erased
    customers are suppressed before this is asked).  ``tests/test_plan.py``
    checks the equivalence with ``has()`` for granted, pending, withdrawn,
    re-granted, erased and unknown customers.
    """

    def __init__(self, state: LoyaltyState) -> None:
        self.state = state

    def granted(self, customer_ids: set[int], purpose: str) -> set[int]:
        """The customers among ``customer_ids`` whose consent for ``purpose`` holds now."""
        if not customer_ids:
            return set()
        model = ConsentStatus
        return {int(pk) for pk in self.state.session.execute(select(model.customer_id).where(
            model.customer_id.in_(customer_ids), model.purpose == purpose, model.status == "granted")).scalars()}


#: The rendered columns with a length limit: a longer value fails its message, not the batch.
_LIMITED = ("locale", "to_address", "from_address", "subject")


def _too_long(fields: dict[str, Any]) -> str | None:
    """Why one of the rendered ``fields`` cannot be stored (too long for its column), or ``None``."""
    columns = table_of(Message).c
    for name in _LIMITED:
        value, limit = fields.get(name), getattr(columns[name].type, "length", None)
        if isinstance(value, str) and limit is not None and len(value) > limit:
            return f"{name} is {len(value)} characters long; at most {limit} can be stored"
    return None


class _Batch:
    """One claimed batch of one dispatcher."""

    def __init__(self, state: LoyaltyState, owner: str, ids: list[int], now: datetime,
                 report: DispatchReport, consent: ConsentLookup) -> None:
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
        # lock the batch's customers first (one cap decision per customer at a time), then read
        # the messages and their customers fresh
        table = self.table
        lock = (select(Customer.id).where(Customer.id.in_(
            select(table.c.customer_id).where(table.c.id.in_(self.ids)))).order_by(Customer.id))
        if dialect_name(state) == "postgresql":
            lock = lock.with_for_update(key_share=True)
        customer_ids = [int(pk) for pk in session.execute(lock).scalars()]
        messages = list(session.execute(
            select(Message).where(Message.id.in_(self.ids), Message.lease_owner == self.owner)
            .order_by(Message.priority.desc(), Message.due_at, Message.id)
            .execution_options(populate_existing=True)).unique().scalars())
        if not messages:
            session.commit()
            return []
        refunded = self._refunded_orders({m.order_ref for m in messages if m.order_ref})
        consented = {purpose: self.consent.granted({m.customer_id for m in messages if m.purpose == purpose}, purpose)
                     for purpose in {m.purpose for m in messages if m.purpose}}
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
            try:
                cancel = next((r for check in CHECKS.get(m.kind, ()) if (r := check(state, m, self.now))), None)
            except Exception as exc:  # a broken check must not block the queue: fail this one
                log.exception("send-time check of message %s (%s) failed", m.id, m.kind)
                self._close(m, "failed", "check_error", f"{type(exc).__name__}: {exc}")
                continue
            if cancel:
                self._close(m, "cancelled", cancel)
                continue
            if spec.stale_after_days is not None and \
                    self.now > m.first_due_at + timedelta(days=spec.stale_after_days):
                self._close(m, "suppressed", "stale")
                continue
            if m.purpose and customer.id not in consented[m.purpose]:
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
            # a retry is not re-rendered (same content, same Message-ID) but goes to the current address
            address = rendered.to_address if rendered is not None else recipient(state, m, customer)
            if not address:
                self._close(m, "suppressed", "no_address")
                continue
            values: dict[str, Any] = {"id": m.id, "reason": why}
            if m.marketing and m.counted_at is None:
                values["counted_at"] = self.now
            if rendered is not None:
                values.update(locale=rendered.locale, to_address=rendered.to_address,
                              from_address=rendered.from_address, subject=rendered.subject,
                              body_text=rendered.body_text, body_html=rendered.body_html, links=rendered.links)
            elif address != m.to_address:
                values["to_address"] = address
            fields = {k: values.get(k, getattr(m, k)) for k in (
                "locale", "to_address", "from_address", "subject", "body_text", "body_html")}
            too_long = _too_long(fields)
            if too_long:  # would fail the batch's update (PostgreSQL): fail this one instead
                self._close(m, "failed", "render_error", too_long)
                continue
            fields["to_address"] = recipient_header(state, m, customer, address)
            try:
                mail = build_mail(state, now=self.now, message_id=m.message_id, kind=m.kind, marketing=m.marketing,
                                   purpose=m.purpose, customer_ref=customer.ref,
                                   unsubscribe_url=rendered.unsubscribe_url if rendered else None, **fields)
            except UnsupportedAddress as exc:
                self._close(m, "suppressed", "unsupported_address", str(exc))
                continue
            except Exception as exc:  # a mail that cannot be built fails alone, never the batch
                log.exception("cannot build the mail of message %s (%s)", m.id, m.kind)
                self._close(m, "failed", "build_error", f"{type(exc).__name__}: {exc}")
                continue
            renders.append(values)
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



@functools.cache
def _recheck_statement() -> Any:
    """The send-time re-check of one message: status, lease, erasure, consent for its purpose."""
    mtable, ctable, stable = table_of(Message), table_of(Customer), table_of(ConsentStatus)
    consent = (select(stable.c.status).where(stable.c.customer_id == mtable.c.customer_id,
                                             stable.c.purpose == mtable.c.purpose)
               .scalar_subquery().label("consent"))
    return (select(mtable.c.status, mtable.c.lease_owner, mtable.c.purpose, ctable.c.erased_at, consent)
            .select_from(mtable.join(ctable, ctable.c.id == mtable.c.customer_id))
            .where(mtable.c.id == bindparam("pk")))


@dataclass
class _Outcome:
    """What happened to one claimed message in the send phase (written by the recorder)."""

    pk: int
    action: str                      # "sent", "retry", "failed", "suppressed" or "release"
    reason: str | None
    values: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None


class _Pipeline:
    """The send phase: a sender thread and a recorder thread behind the claiming thread.

    The claiming thread claims and decides batch N+1 (database reads,
    rendering) while the sender threads (``LOYALTY_SMTP_CONNECTIONS`` SMTP
    connections, one thread each; one for other transports) send batch N
    and the recorder thread commits outcomes.  Each sender runs at most
    :attr:`WINDOW` (2) mails ahead of the recorder, so at any moment at most
    two mails per connection are accepted by the server but not yet
    recorded (a purely sequential dispatcher has a window of one: SMTP has
    no two-phase commit).  A dispatcher killed right then leaves those rows leased, and
    after the lease they are sent again with the same ``Message-ID``.  With
    ``LOYALTY_DISPATCH_ASYNC_COMMIT`` (PostgreSQL) the recorder's commits do
    not wait for the WAL flush: only a crash of the *database server* can
    then forget the last fraction of a second of deliveries (resent with the
    same ``Message-ID``).
    """

    WINDOW = 2

    def __init__(self, state: LoyaltyState, owner: str, now: datetime, report: DispatchReport,
                 depth: int) -> None:
        self.state, self.owner, self.now, self.report = state, owner, now, report
        first = get_transport(state)
        self.transports = [first]
        if isinstance(first, SMTPTransport):
            self.transports += [get_transport(state)
                                for _ in range(max(int(state.config["LOYALTY_SMTP_CONNECTIONS"]), 1) - 1)]
        self.lease = float(state.config["LOYALTY_DISPATCH_LEASE"])
        self.max_attempts = int(state.config["LOYALTY_MAX_ATTEMPTS"])
        bind = state.session.get_bind()
        self.engine = bind if isinstance(bind, Engine) else bind.engine
        self.async_commit = (self.engine.dialect.name == "postgresql"
                             and bool(state.config["LOYALTY_DISPATCH_ASYNC_COMMIT"]))
        self.send_q: queue.Queue[tuple[Outgoing, float] | None] = queue.Queue(maxsize=max(depth, 1))
        self.record_q: queue.Queue[_Outcome | None] = queue.Queue()
        self.unavailable: TransportUnavailable | None = None
        self.errors: list[BaseException] = []
        self.sent: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        #: At most WINDOW mails accepted by the server but not yet recorded, at any moment.
        self.window = threading.BoundedSemaphore(self.WINDOW * len(self.transports))
        self.senders = [threading.Thread(target=self._send_loop, args=(t,), name=f"loyalty-dispatch-send-{n}",
                                         daemon=True) for n, t in enumerate(self.transports)]
        self.recorder = threading.Thread(target=self._record_loop, name="loyalty-dispatch-record", daemon=True)
        for thread in [*self.senders, self.recorder]:
            thread.start()

    @property
    def stopped(self) -> bool:
        """No point claiming more: the server is unreachable or a thread failed."""
        return self.unavailable is not None or bool(self.errors)

    def put(self, item: Outgoing, started: float) -> None:
        """Queue a ready message for sending (blocks while the sender is a batch behind)."""
        while True:
            try:
                self.send_q.put((item, started), timeout=0.5)
                return
            except queue.Full:
                if not any(t.is_alive() for t in self.senders):  # pragma: no cover - the senders died
                    raise RuntimeError("dispatch sender threads stopped") from None

    def finish(self) -> None:
        """Wait for every queued message to be sent and recorded; re-raise a thread's error."""
        for _ in self.senders:
            self.send_q.put(None)
        for thread in self.senders:
            thread.join()
        self.record_q.put(None)
        self.recorder.join()
        if self.errors:
            raise self.errors[0]

    # --- sender thread -----------------------------------------------------------
    def _send_loop(self, transport: Transport) -> None:
        conn = None
        try:
            conn = self.engine.connect()
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            with self.state.app.app_context():  # host transport callables may need it
                while True:
                    item = self.send_q.get()
                    if item is None:
                        break
                    self._send_one(transport, conn, *item)
        except BaseException as exc:  # pragma: no cover - unexpected; surfaced by finish()
            self.errors.append(exc)
            while self.send_q.get() is not None:
                pass
        finally:
            try:
                transport.close()
            finally:
                if conn is not None:
                    conn.close()

    def _recheck(self, conn: Any, m: Outgoing) -> _Outcome | None:
        """The outcome to record instead of sending ``m``, or ``None`` when it may go out now.

        Right before the transport: the message must still be leased to us and scheduled, the
        customer not erased, the consent for its purpose given (one indexed query: the batch was
        decided a while ago, and consent counts at the moment of sending).
        """
        try:
            row = conn.execute(_recheck_statement(), {"pk": m.pk}).first()
        finally:
            conn.rollback()  # no snapshot or lock kept between two mails
        if row is None or row.status != "scheduled" or row.lease_owner != self.owner:
            # cancelled meanwhile (refund, erasure ...) or no longer leased to us: not ours to send
            return _Outcome(m.pk, "release", None)
        if row.erased_at is not None:
            return _Outcome(m.pk, "suppressed", "erased", {"status": "suppressed", "reason": "erased"})
        if row.purpose and row.consent != "granted":
            reason = f"no_consent:{row.purpose}"
            return _Outcome(m.pk, "suppressed", reason, {"status": "suppressed", "reason": reason},
                            "consent withdrawn after the batch was decided")
        return None

    def _send_one(self, transport: Transport, conn: Any, m: Outgoing, started: float) -> None:
        # every path below hands exactly one outcome to the recorder, which releases the window
        while not self.window.acquire(timeout=0.5):
            if not self.recorder.is_alive():  # pragma: no cover - the recorder died
                raise RuntimeError("dispatch recorder thread stopped")
        if self.errors:
            self.record_q.put(_Outcome(m.pk, "release", None))
            return
        if self.unavailable is not None:
            self._attempt_failed(m, self.unavailable)
            return
        if time.monotonic() - started > self.lease * 0.8:
            self.record_q.put(_Outcome(m.pk, "release", None))
            return
        verdict = self._recheck(conn, m)
        if verdict is not None:
            self.record_q.put(verdict)
            return
        try:
            transport.send(m.mail)
        except TransportUnavailable as exc:
            self.unavailable = exc
            self._attempt_failed(m, exc)
            return
        except SendError as exc:
            self._attempt_failed(m, exc)
            return
        self.record_q.put(_Outcome(m.pk, "sent", f"{m.reason}; via {transport.name}"[:200]))

    def _attempt_failed(self, m: Outgoing, exc: Exception) -> None:
        attempts = m.attempts + 1
        error = f"{type(exc).__name__}: {exc}"[:500]
        values: dict[str, Any] = {"attempts": attempts, "last_error": error}
        if isinstance(exc, PermanentFailure) or attempts >= self.max_attempts:
            reason = "rejected" if isinstance(exc, PermanentFailure) else "max_attempts"
            values.update(status="failed", reason=reason)
            self.record_q.put(_Outcome(m.pk, "failed", reason, values, error))
        else:
            due = self.now + backoff(self.state, attempts)
            values.update(due_at=due, reason="retry")
            self.record_q.put(_Outcome(m.pk, "retry", "send_error", values,
                                       f"attempt {attempts}: {error}; next {due.isoformat()}"))

    # --- recorder thread -----------------------------------------------------------
    def _record_loop(self) -> None:
        conn = None
        try:
            conn = self.engine.connect()
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                if self.async_commit:
                    conn.exec_driver_sql("SET synchronous_commit TO off")
                conn.commit()
            done = False
            while not done:
                item = self.record_q.get()
                if item is None:
                    break
                items = [item]
                while len(items) < 500:
                    try:
                        more = self.record_q.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        done = True
                        break
                    items.append(more)
                try:
                    self._write(conn, items)
                finally:
                    for _ in items:
                        self.window.release()
        except BaseException as exc:
            self.errors.append(exc)
            while self.record_q.get() is not None:
                self.window.release()
        finally:
            if conn is not None:
                try:
                    if self.async_commit:
                        conn.exec_driver_sql("RESET synchronous_commit")
                        conn.commit()
                finally:
                    conn.close()

    #: PostgreSQL hot path: mark sent and append the history row in one statement (one round
    #: trip, no SQL compilation per mail).
    SENT_SQL = (
        "WITH changed AS (UPDATE loyalty_message SET status = 'sent', sent_at = %(now)s, "
        "attempts = attempts + 1, reason = %(reason)s, last_error = NULL, lease_owner = NULL, "
        "lease_until = NULL WHERE id = %(pk)s AND (lease_owner = %(owner)s OR (lease_owner IS NULL "
        "AND status IN ('cancelled', 'suppressed'))) RETURNING id) "
        "INSERT INTO loyalty_message_event (message_id, at, action, reason) "
        "SELECT id, %(now)s, 'sent', %(reason)s FROM changed")

    def _write(self, conn: Any, items: list[_Outcome]) -> None:
        table, events = table_of(Message), table_of(MessageEvent)
        mine = and_(table.c.id == bindparam("o_pk"), table.c.lease_owner == self.owner)
        # a mail handed to the transport is recorded as sent even if the row was cancelled (refund,
        # erasure) in the instant between the re-check and the send: the row must say what happened
        delivered = and_(table.c.id == bindparam("o_pk"), or_(
            table.c.lease_owner == self.owner,
            and_(table.c.lease_owner.is_(None),
                 or_(table.c.status == "cancelled", table.c.status == "suppressed"))))  # executemany: no IN
        sent = [i for i in items if i.action == "sent"]
        others = [i for i in items if i.action != "sent"]
        if self.engine.dialect.name == "postgresql":
            # autocommit: each statement is atomic on its own (row change + history row in one
            # statement), so a delivery costs one round trip
            if sent:
                params = [{"pk": i.pk, "reason": i.reason, "now": self.now, "owner": self.owner} for i in sent]
                conn.exec_driver_sql(self.SENT_SQL, params if len(params) > 1 else params[0])
            for i in others:
                changed = (update(table).where(mine).values(lease_owner=None, lease_until=None, **i.values)
                           .returning(table.c.id))
                if i.action == "release":
                    conn.execute(changed, {"o_pk": i.pk})
                    continue
                cte = changed.cte("changed")
                conn.execute(insert(events).from_select(
                    ["message_id", "at", "action", "reason", "detail"],
                    select(cte.c.id, literal(self.now, UTCDateTime()), literal(i.action), literal(i.reason),
                           literal(i.detail))), {"o_pk": i.pk})
            conn.commit()  # ends SQLAlchemy's autobegun block; no round trip in autocommit mode
        else:
            with conn.begin():
                if sent:
                    conn.execute(update(table).where(delivered).values(
                        status="sent", sent_at=self.now, attempts=table.c.attempts + 1,
                        reason=bindparam("o_reason"), last_error=None, lease_owner=None, lease_until=None),
                        [{"o_pk": i.pk, "o_reason": i.reason} for i in sent])
                    conn.execute(insert(events), [{"message_id": i.pk, "at": self.now, "action": "sent",
                                                   "reason": i.reason} for i in sent])
                for i in others:
                    conn.execute(update(table).where(mine).values(lease_owner=None, lease_until=None,
                                                                  **i.values), {"o_pk": i.pk})
                logged = [{"message_id": i.pk, "at": self.now, "action": i.action, "reason": i.reason,
                           "detail": i.detail} for i in others if i.action != "release"]
                if logged:
                    conn.execute(insert(events), logged)
        with self.lock:
            self.report.sent += len(sent)
            self.sent += [i.pk for i in sent]
            for i in others:
                if i.action == "retry":
                    self.report.retried += 1
                elif i.action == "failed":
                    self.report.failed += 1
                    self.failed.append((i.pk, i.detail or str(i.reason)))
                elif i.action == "suppressed":
                    self.report.suppressed += 1
                    self.report._count(str(i.reason))


def dispatch(state: LoyaltyState, limit: int | None = None, now: datetime | None = None) -> DispatchReport:
    """Send the messages due at ``now`` (default: the current time), at most ``limit`` of them.

    Safe with any number of dispatchers at once (threads, processes,
    machines) on PostgreSQL; on SQLite too, serialised by its write lock.
    ``message_sent`` / ``message_failed`` fire at the end, after the
    outcomes are committed.
    """
    moment = resolve_now(now)
    plan_new_orders(state)
    owner = _owner()
    report = DispatchReport()
    consent = ConsentLookup(state)
    batch_size = max(int(state.config["LOYALTY_DISPATCH_BATCH"]), 1)
    pipeline = _Pipeline(state, owner, moment, report, depth=batch_size)
    try:
        while (limit is None or report.claimed < limit) and not pipeline.stopped:
            wanted = batch_size if limit is None else min(batch_size, limit - report.claimed)
            started = time.monotonic()
            ids = claim(state, owner, wanted, moment)
            if not ids:
                break
            report.claimed += len(ids)
            batch = _Batch(state, owner, ids, moment, report, consent)
            try:
                ready = batch.decide()
            except BaseException:
                state.session.rollback()
                raise
            for item in ready:
                pipeline.put(item, started)
            if len(ids) < wanted:
                break
    finally:
        pipeline.finish()
    session = state.session
    if message_sent.receivers:
        for pk in pipeline.sent:
            message_sent.send(state.app, message=session.get(Message, pk))
    for pk, error in pipeline.failed:
        message_failed.send(state.app, message=session.get(Message, pk), error=error)
    return report


def due_count(state: LoyaltyState, now: datetime | None = None) -> int:
    """How many scheduled messages are due at ``now`` (for monitoring and the CLI)."""
    moment = resolve_now(now)
    return int(state.session.execute(select(func.count()).select_from(table_of(Message)).where(
        table_of(Message).c.status == "scheduled", table_of(Message).c.due_at <= moment)).scalar_one())
