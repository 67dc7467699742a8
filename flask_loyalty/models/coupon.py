"""Coupons and their redemptions.

Over-spending is prevented by the database itself, not only by the service:

* ``uses`` is changed only by a conditional ``UPDATE ... WHERE uses < max_uses``
  (and a ``CHECK`` keeps it within ``0..max_uses``);
* a redemption takes a *customer slot* ``0..max_uses_per_customer-1`` that is
  unique per ``(coupon, customer)``, and an *order slot*
  ``0..LOYALTY_COUPONS_PER_ORDER-1`` unique per order, so two concurrent
  callers can never both hold the last slot.  Releasing a redemption sets its
  slots to ``NULL`` (``NULL`` never collides), which frees them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, CreatedAt
from .types import Money, Reference, UTCDateTime

#: The kinds of coupon: a percentage off, a fixed amount off, free shipping, a named free item.
COUPON_KINDS = ("percent", "fixed", "free_shipping", "gift")


class Coupon(CreatedAt, Base):
    """A coupon code with its rules.

    ``code`` is the code as shown to shoppers (grouped with dashes when
    generated); ``code_key`` is its normalised form (upper case, no spaces or
    dashes, look-alikes mapped) and carries the unique constraint, so codes are
    unique case-insensitively.
    """

    __tablename__ = "loyalty_coupon"
    __table_args__ = (
        CheckConstraint("uses >= 0", name="uses_non_negative"),
        CheckConstraint("max_uses IS NULL OR uses <= max_uses", name="uses_within_max"),
        CheckConstraint("max_uses IS NULL OR max_uses >= 1", name="max_uses_positive"),
        CheckConstraint("max_uses_per_customer IS NULL OR max_uses_per_customer >= 1",
                        name="max_uses_per_customer_positive"),
        CheckConstraint("value IS NULL OR value >= 0", name="value_non_negative"),
        CheckConstraint("min_order_total IS NULL OR min_order_total >= 0", name="min_total_non_negative"),
        Index("ix_loyalty_coupon_customer_ref", "customer_ref"),
        Index("ix_loyalty_coupon_campaign", "campaign"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(80), nullable=False)
    code_key: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    value: Mapped[Decimal | None] = mapped_column(Money())
    gift_name: Mapped[str | None] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    max_uses: Mapped[int | None] = mapped_column(Integer)
    max_uses_per_customer: Mapped[int | None] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    min_order_total: Mapped[Decimal | None] = mapped_column(Money())
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    customer_ref: Mapped[str | None] = mapped_column(Reference(64))
    segment: Mapped[str | None] = mapped_column(String(64))
    first_order_only: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    campaign: Mapped[str | None] = mapped_column(String(64))
    #: Set when the coupon was withdrawn (e.g. its owner asked to be erased); it no longer works.
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def remaining_uses(self) -> int | None:
        """Uses left in all (``None`` = unlimited)."""
        return None if self.max_uses is None else max(self.max_uses - self.uses, 0)

    def __repr__(self) -> str:
        return f"<Coupon {self.code!r} {self.kind}>"


class Redemption(CreatedAt, Base):
    """One use of a coupon on one order.

    ``released_at`` is set when the order is cancelled or fully refunded; a
    released redemption no longer counts towards any limit (its slots are
    ``NULL``).
    """

    __tablename__ = "loyalty_redemption"
    __table_args__ = (
        UniqueConstraint("coupon_id", "customer_ref", "customer_slot", name="uq_loyalty_redemption_customer_slot"),
        UniqueConstraint("order_ref", "order_slot", name="uq_loyalty_redemption_order_slot"),
        CheckConstraint("discount >= 0", name="discount_non_negative"),
        # the two unique constraints above also serve the lookups by order and by (coupon, customer)
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    coupon_id: Mapped[int] = mapped_column(ForeignKey("loyalty_coupon.id", ondelete="CASCADE"), nullable=False)
    order_ref: Mapped[str] = mapped_column(Reference(64), nullable=False)
    customer_ref: Mapped[str] = mapped_column(Reference(64), nullable=False)
    order_total: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    discount: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    customer_slot: Mapped[int | None] = mapped_column(Integer)
    order_slot: Mapped[int | None] = mapped_column(Integer)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    coupon: Mapped[Coupon] = relationship(lazy="joined", innerjoin=True)

    @property
    def code(self) -> str:
        """The code of the redeemed coupon."""
        return self.coupon.code

    @property
    def active(self) -> bool:
        """True until the redemption is released."""
        return self.released_at is None

    def __repr__(self) -> str:
        return f"<Redemption {self.coupon_id} order={self.order_ref!r}>"
