"""Gift cards and their movement ledger.

The balance lives on the card (changed only by conditional updates, with a
``CHECK (balance >= 0)``) and every change is one :class:`GiftCardMovement`
row, so the ledger always sums to the balance.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, CreatedAt
from .types import Money, Reference, UTCDateTime

#: Kinds of ledger movement: the issue, a charge on an order, a refund of an order's charges.
MOVEMENT_KINDS = ("issue", "charge", "refund")


class GiftCard(CreatedAt, Base):
    """A prepaid card: a secret code, an amount in one currency, an optional owner and expiry."""

    __tablename__ = "loyalty_gift_card"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_non_negative"),
        CheckConstraint("initial_amount > 0", name="initial_amount_positive"),
        Index("ix_loyalty_gift_card_customer_ref", "customer_ref"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(80), nullable=False)
    code_key: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    initial_amount: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    balance: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    customer_ref: Mapped[str | None] = mapped_column(Reference(64))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    movements: Mapped[list[GiftCardMovement]] = relationship(
        back_populates="gift_card", order_by="GiftCardMovement.id", viewonly=True)

    def __repr__(self) -> str:
        return f"<GiftCard {self.code[:4]}… {self.balance} {self.currency}>"


class GiftCardMovement(CreatedAt, Base):
    """One signed change of a gift card's balance.

    At most one ``charge`` per ``(card, order_ref)`` (the unique constraint
    makes ``charge`` idempotent even under concurrency).
    """

    __tablename__ = "loyalty_gift_card_movement"
    __table_args__ = (
        UniqueConstraint("gift_card_id", "charge_ref", name="uq_loyalty_gift_card_movement_charge"),
        CheckConstraint("balance_after >= 0", name="balance_after_non_negative"),
        CheckConstraint("kind IN ('issue', 'charge', 'refund')", name="kind_known"),
        Index("ix_loyalty_gift_card_movement_order", "order_ref"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gift_card_id: Mapped[int] = mapped_column(
        ForeignKey("loyalty_gift_card.id", ondelete="CASCADE"), nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)
    amount: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    balance_after: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    order_ref: Mapped[str | None] = mapped_column(Reference(64))
    #: ``order_ref`` on ``charge`` rows only (``NULL`` otherwise): the idempotency key.
    charge_ref: Mapped[str | None] = mapped_column(Reference(64))

    gift_card: Mapped[GiftCard] = relationship(back_populates="movements")
