"""A shop's customer as the loyalty programme knows them."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, Date, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, CreatedAt
from .types import Money, Reference, UTCDateTime


class Customer(CreatedAt, Base):
    """One customer, keyed by the host's own reference (``ref``).

    The counters (``orders_count``, ``total_spent``, first/last purchase) are
    maintained by the checkout hook with atomic updates, so reading them never
    needs an aggregate query.
    """

    __tablename__ = "loyalty_customer"
    __table_args__ = (
        CheckConstraint("orders_count >= 0", name="orders_count_non_negative"),
        CheckConstraint("points_balance >= 0", name="points_non_negative"),
        CheckConstraint("total_spent >= 0", name="total_spent_non_negative"),
        # SQLite: never hand out the id of a deleted customer again (the derived tables refer to ids
        # without a foreign key until the next recompute drops their rows)
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(Reference(64), unique=True, nullable=False)
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    locale: Mapped[str | None] = mapped_column(String(16))
    birthday: Mapped[date | None] = mapped_column(Date)
    first_purchase_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_purchase_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    orders_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    total_spent: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0), nullable=False)
    points_balance: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Bumped by every change to what the customer's value is computed from (a purchase, a refund, a
    #: coupon redeemed or released on a recorded order); ``analytics.recompute()`` re-aggregates the
    #: purchases of the customers whose version differs from their purchase summary's.
    activity_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", nullable=False)

    def __repr__(self) -> str:
        return f"<Customer {self.ref!r}>"
