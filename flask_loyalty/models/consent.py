"""Consent: the append-only proof ledger, the wording versions, the current state, suppression.

* :class:`ConsentWording` keeps every text ever shown for a purpose (one row
  per purpose, locale and text hash); events point at the wording they showed,
  so changing the wording makes a new version and old events keep the old one.
* :class:`ConsentEvent` is the ledger: one row per grant, pending opt-in,
  confirmation, withdrawal or erasure.  It is append-only: the ORM refuses to
  update or delete a row, and database triggers (installed by
  ``loyalty.create_all()`` on SQLite and PostgreSQL) refuse ``UPDATE`` and
  ``DELETE`` statements that bypass the ORM.
* :class:`ConsentEventIp` holds the salted IP hash of an event apart from the
  ledger, so erasure can remove it without touching the append-only rows.
* :class:`ConsentStatus` is the current state per customer and purpose,
  derived from the ledger and written in the same transaction as each event.
* :class:`ConsentSuppression` holds hashes of erased e-mail addresses, so old
  data cannot silently re-subscribe them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint, event, text
from sqlalchemy.orm import Mapped, Mapper, mapped_column, relationship

from .base import Base, CreatedAt
from .customer import Customer
from .types import UTCDateTime

#: Ledger actions.  ``pending`` waits for a double opt-in confirmation.
ACTIONS = ("granted", "pending", "confirmed", "withdrawn", "erased")
#: How a consent was given or withdrawn.
METHODS = ("checkbox", "double_opt_in", "preference_center", "one_click", "unsubscribe_page", "api",
           "erasure", "cli")
#: Current-state values of :class:`ConsentStatus`.
STATUSES = ("none", "pending", "granted", "withdrawn")


class AppendOnlyError(RuntimeError):
    """Raised by the ORM when code tries to change or delete a consent ledger row."""


class ConsentWording(CreatedAt, Base):
    """One version of the exact text shown to a shopper for a purpose, in one locale."""

    __tablename__ = "loyalty_consent_wording"
    __table_args__ = (UniqueConstraint("purpose", "locale", "text_hash", name="purpose_locale_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(64), nullable=False)
    locale: Mapped[str] = mapped_column(String(16), nullable=False)
    #: Hex SHA-256 of ``label + "\\n" + text``; identifies the version.
    text_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    #: 1, 2, 3 ... per purpose and locale, in the order the versions were first used.
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    label: Mapped[str] = mapped_column(String(200), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)

    def __repr__(self) -> str:
        return f"<ConsentWording {self.purpose} {self.locale} v{self.version}>"


class ConsentEvent(CreatedAt, Base):
    """One entry of the append-only consent ledger (proof of consent, GDPR Art. 7(1)).

    ``created_at`` is the moment of the event (aware UTC).  ``wording`` is the
    text the shopper saw; ``ip_hash`` the salted hash of their IP address
    (``None`` when not given or after erasure).
    """

    __tablename__ = "loyalty_consent_event"
    __table_args__ = (Index("ix_loyalty_consent_event_customer", "customer_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False)
    purpose: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    source: Mapped[str] = mapped_column(String(64), nullable=False)
    method: Mapped[str] = mapped_column(String(32), nullable=False)
    wording_id: Mapped[int | None] = mapped_column(ForeignKey("loyalty_consent_wording.id"))
    locale: Mapped[str | None] = mapped_column(String(16))

    customer: Mapped[Customer] = relationship(lazy="joined", innerjoin=True)
    wording_row: Mapped[ConsentWording | None] = relationship(lazy="joined")
    ip_row: Mapped[ConsentEventIp | None] = relationship(lazy="joined", viewonly=True)

    @property
    def customer_ref(self) -> str:
        """The host's reference of the customer."""
        return self.customer.ref

    @property
    def wording(self) -> str | None:
        """The exact text shown to the shopper with this event, if any."""
        return self.wording_row.text if self.wording_row is not None else None

    @property
    def wording_version(self) -> int | None:
        """The version number of that text (per purpose and locale)."""
        return self.wording_row.version if self.wording_row is not None else None

    @property
    def wording_hash(self) -> str | None:
        """The SHA-256 identifying the wording version."""
        return self.wording_row.text_hash if self.wording_row is not None else None

    @property
    def ip_hash(self) -> str | None:
        """Salted hash of the IP address the event came from (``None`` if not known or erased)."""
        return self.ip_row.ip_hash if self.ip_row is not None else None

    @property
    def at(self) -> datetime:
        """When the event happened (aware UTC); same as ``created_at``."""
        return self.created_at

    def __repr__(self) -> str:
        return f"<ConsentEvent {self.id} {self.purpose} {self.action} via {self.method}>"


class ConsentEventIp(Base):
    """The salted IP hash of one ledger event, kept apart so erasure can delete it."""

    __tablename__ = "loyalty_consent_event_ip"

    event_id: Mapped[int] = mapped_column(ForeignKey("loyalty_consent_event.id"), primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False, index=True)
    ip_hash: Mapped[str] = mapped_column(String(64), nullable=False)


class ConsentStatus(Base):
    """Current consent of one customer for one purpose, derived from the ledger.

    Written in the same transaction as the ledger event that changes it
    (``event_id`` points at that event).
    """

    __tablename__ = "loyalty_consent_status"

    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="none")
    event_id: Mapped[int | None] = mapped_column(ForeignKey("loyalty_consent_event.id"))
    #: When the consent in force was given (the grant or the confirmation).
    since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    pending_event_id: Mapped[int | None] = mapped_column(ForeignKey("loyalty_consent_event.id"))
    pending_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    confirm_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    confirm_sends: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class ConsentSuppression(CreatedAt, Base):
    """A hashed, lower-cased e-mail address that asked to be forgotten.

    A grant for a customer whose address is listed here needs a fresh,
    explicit consent (the shopper ticking a box or using the preference
    center); imports and API calls are refused.
    """

    __tablename__ = "loyalty_consent_suppression"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), nullable=False, default="erased")


# --- append-only enforcement --------------------------------------------------

def _refuse(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    raise AppendOnlyError(f"{type(target).__name__} rows are append-only: they cannot be changed or deleted")


for _model in (ConsentEvent, ConsentWording):
    event.listen(_model, "before_update", _refuse)
    event.listen(_model, "before_delete", _refuse)

APPEND_ONLY_TABLES = ("loyalty_consent_event", "loyalty_consent_wording")


def trigger_statements(dialect: str, table: str) -> list[str]:
    """The SQL creating the append-only triggers of ``table`` on ``dialect`` (empty for others)."""
    if dialect == "sqlite":
        return [f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END" for op in ("UPDATE", "DELETE")]
    if dialect == "postgresql":
        return [
            "CREATE OR REPLACE FUNCTION loyalty_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$fn$ BEGIN RAISE EXCEPTION 'flask_loyalty ledger rows are append-only' "
            "USING ERRCODE = 'restrict_violation'; END $fn$",
            f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION loyalty_append_only()",
        ]
    return []


def install_triggers(connection: Connection) -> None:
    """(Re)install the append-only triggers on an existing database (e.g. from a migration)."""
    for table in APPEND_ONLY_TABLES:
        for sql in trigger_statements(connection.dialect.name, table):
            connection.execute(text(sql))


def _after_create(target: Table, connection: Connection, **_kw: Any) -> None:
    for sql in trigger_statements(connection.dialect.name, target.name):
        connection.execute(text(sql))


for _model in (ConsentEvent, ConsentWording):
    event.listen(_model.__table__, "after_create", _after_create)
