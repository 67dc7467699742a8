"""Purchases (orders) and their items."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, CreatedAt
from .customer import Customer
from .types import Money, Reference, UTCDateTime

CHANNELS = ("online", "store", "catalog", "phone")


class Purchase(CreatedAt, Base):
    """One order recorded by the checkout hook; idempotent on ``order_ref``."""

    __tablename__ = "loyalty_purchase"
    __table_args__ = (
        CheckConstraint("total >= 0", name="total_non_negative"),
        CheckConstraint("refunded_total >= 0 AND refunded_total <= total", name="refund_within_total"),
        CheckConstraint("points_earned >= 0", name="points_earned_non_negative"),
        CheckConstraint("points_reversed >= 0 AND points_reversed <= points_earned", name="points_reversed_range"),
        Index("ix_loyalty_purchase_customer_placed", "customer_id", "placed_at"),
        # only the few purchases whose order-driven mails are not planned yet
        Index("ix_loyalty_purchase_unplanned", "id", postgresql_where=text("planned_at IS NULL"),
              sqlite_where=text("planned_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_ref: Mapped[str] = mapped_column(Reference(64), unique=True, nullable=False)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False)
    total: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    refunded_total: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    channel: Mapped[str] = mapped_column(String(16), default="online", nullable=False)
    points_earned: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    points_reversed: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    referral_code: Mapped[str | None] = mapped_column(String(64))
    #: When the plan scheduled this order's mails (``None``: not yet; see
    #: :func:`flask_loyalty.services.plan.expand_pending`).
    planned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The margin the items' unit costs tell: ``quantity * (unit_price - unit_cost)`` summed over the
    #: items that carry a cost (written by the checkout, so the lifetime-value recompute needs no items).
    known_margin: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0), server_default=text("0"),
                                                  nullable=False)
    #: What the items without a cost sold for (``quantity * unit_price`` summed); ``None`` for an order
    #: recorded without items, whose whole total has no known cost.  ``LOYALTY_DEFAULT_MARGIN`` of this
    #: amount is applied when profiles are computed, so changing that setting applies to past orders.
    uncosted_total: Mapped[Decimal | None] = mapped_column(Money())

    customer: Mapped[Customer] = relationship()
    items: Mapped[list[PurchaseItem]] = relationship(
        back_populates="purchase", cascade="all, delete-orphan", order_by="PurchaseItem.id")

    @property
    def customer_ref(self) -> str:
        """The host's reference of the customer who placed the order."""
        return self.customer.ref

    @property
    def net_total(self) -> Decimal:
        """What the customer kept paying for: ``total - refunded_total``."""
        return self.total - self.refunded_total

    def __repr__(self) -> str:
        return f"<Purchase {self.order_ref!r} {self.total} {self.currency}>"


class PurchaseItem(Base):
    """One line of a purchase."""

    __tablename__ = "loyalty_purchase_item"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("unit_price >= 0", name="unit_price_non_negative"),
        CheckConstraint("unit_cost IS NULL OR unit_cost >= 0", name="unit_cost_non_negative"),
        Index("ix_loyalty_purchase_item_sku", "sku"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(
        ForeignKey("loyalty_purchase.id", ondelete="CASCADE"), nullable=False, index=True)
    sku: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    category: Mapped[str | None] = mapped_column(String(100))
    quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    unit_price: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    unit_cost: Mapped[Decimal | None] = mapped_column(Money())
    replenish_after_days: Mapped[int | None] = mapped_column(Integer)

    purchase: Mapped[Purchase] = relationship(back_populates="items")
