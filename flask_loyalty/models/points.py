"""The points ledger: every change of a customer's points is one row."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, CreatedAt

POINTS_REASONS = ("earn", "refund", "redeem", "expire", "adjust", "bonus")


class PointsEntry(CreatedAt, Base):
    """A signed change of points with the reason and, where it applies, the order."""

    __tablename__ = "loyalty_points_entry"
    __table_args__ = (Index("ix_loyalty_points_entry_customer", "customer_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False)
    delta: Mapped[int] = mapped_column(BigInteger, nullable=False)
    balance_after: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reason: Mapped[str] = mapped_column(String(16), nullable=False)
    purchase_id: Mapped[int | None] = mapped_column(ForeignKey("loyalty_purchase.id"))
    note: Mapped[str | None] = mapped_column(String(200))
