"""The outbox: every mail the programme schedules, with its status history and engagement."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, CreatedAt
from .customer import Customer
from .types import Reference, UTCDateTime

#: Statuses a message can have (the contract's set).  A message being sent
#: keeps ``scheduled`` while it holds a lease (``lease_owner``/``lease_until``).
STATUSES = ("scheduled", "sent", "failed", "cancelled", "suppressed")


class Message(CreatedAt, Base):
    """One scheduled mail to a customer (the outbox row).

    Rows are written in the caller's transaction (the outbox pattern) and
    claimed by dispatchers with a lease: ``lease_owner``/``lease_until`` are
    set while a dispatcher works on the row; a crashed dispatcher's lease
    simply expires and another one picks the row up.  ``message_id`` is the
    stable RFC 5322 ``Message-ID`` used for every (re)send attempt.
    """

    __tablename__ = "loyalty_message"
    __table_args__ = (
        Index("ix_loyalty_message_due", "status", "due_at"),
        Index("ix_loyalty_message_customer", "customer_id", "due_at"),
        Index("ix_loyalty_message_slot", "customer_id", "marketing", "counted_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    #: Consent purpose that must hold at send time (``None``: transactional).
    purpose: Mapped[str | None] = mapped_column(String(32))
    #: Counts against ``LOYALTY_MAX_MARKETING_PER_WEEK``.
    marketing: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    #: Higher goes first when the weekly cap leaves room for one message.
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    order_ref: Mapped[str | None] = mapped_column(Reference(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="scheduled")
    #: Why it was sent, deferred, cancelled or suppressed (latest decision).
    reason: Mapped[str | None] = mapped_column(String(200))
    #: When it is (next) due; deferrals and retries move it.
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    #: When it was first due (``stale_after`` is measured from here).
    first_due_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: When it took its slot in the weekly marketing cap.
    counted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    message_id: Mapped[str] = mapped_column(String(250), unique=True, nullable=False)
    # --- the rendered mail (kept for the outbox transport and for "what did we send?") ---
    locale: Mapped[str | None] = mapped_column(String(16))
    to_address: Mapped[str | None] = mapped_column(String(254))
    from_address: Mapped[str | None] = mapped_column(String(254))
    subject: Mapped[str | None] = mapped_column(String(300))
    body_text: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    #: Target URLs of the tracked links in the mail (click redirects go only to these).
    links: Mapped[list[str] | None] = mapped_column(JSON)
    # --- engagement summary (kept by tracking beside the ``loyalty_engagement`` rows, cleared on erasure) ---
    #: When the mail was first opened (a click counts as an open: images are often blocked).
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: When a link in the mail was first clicked.
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    customer: Mapped[Customer] = relationship(lazy="joined", innerjoin=True)
    events: Mapped[list[MessageEvent]] = relationship(
        back_populates="message", order_by="MessageEvent.id", cascade="all, delete-orphan")

    @property
    def customer_ref(self) -> str:
        """The host's reference of the recipient."""
        return self.customer.ref

    def __repr__(self) -> str:
        return f"<Message {self.id} {self.kind} {self.status}>"


class MessageEvent(Base):
    """One step of a message's history: scheduled, deferred, retry, sent, suppressed ..."""

    __tablename__ = "loyalty_message_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("loyalty_message.id", ondelete="CASCADE"), nullable=False, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    #: ``scheduled``, ``deferred``, ``retry``, ``sent``, ``failed``, ``cancelled``, ``suppressed``.
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[str | None] = mapped_column(String(500))

    message: Mapped[Message] = relationship(back_populates="events")

    def __repr__(self) -> str:
        return f"<MessageEvent {self.action} {self.reason!r}>"


class Engagement(Base):
    """An open or a click of a tracked mail, with the shop-local hour it happened.

    Other areas (analytics, the dashboard) read this table for per-customer
    engagement and the best hour to write.
    """

    __tablename__ = "loyalty_engagement"
    __table_args__ = (Index("ix_loyalty_engagement_customer", "customer_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("loyalty_message.id", ondelete="CASCADE"), nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)   # message kind
    event: Mapped[str] = mapped_column(String(8), nullable=False)   # "open" or "click"
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    #: Hour of day (0-23) in the shop's time zone.
    hour: Mapped[int] = mapped_column(Integer, nullable=False)
    url: Mapped[str | None] = mapped_column(String(2000))
