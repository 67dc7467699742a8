"""The shop's own tables.  flask_loyalty keeps its ``loyalty_*`` tables beside them.

Prices are stored as integer cents, the simplest exact type every database
has; :func:`money` turns them into the ``Decimal`` flask_loyalty expects.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

from sqlalchemy import Boolean, Date, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .app import db

CENT = Decimal("0.01")


def money(cents: int) -> Decimal:
    """Integer cents -> Decimal currency units (1990 -> Decimal('19.90'))."""
    return (Decimal(cents) * CENT).quantize(CENT)


def cents(amount: Decimal) -> int:
    """Decimal currency units -> integer cents."""
    return int((amount / CENT).to_integral_value())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Category(db.Model):  # type: ignore[name-defined]
    __tablename__ = "shop_category"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(80))
    products: Mapped[list[Product]] = relationship(back_populates="category", order_by="Product.name")


class Product(db.Model):  # type: ignore[name-defined]
    __tablename__ = "shop_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="")
    category_id: Mapped[int] = mapped_column(ForeignKey("shop_category.id"))
    price_cents: Mapped[int] = mapped_column(Integer)
    cost_cents: Mapped[int] = mapped_column(Integer)
    #: consumables: days after which a customer usually needs more (drives replenishment mails)
    replenish_after_days: Mapped[int | None] = mapped_column(Integer)
    category: Mapped[Category] = relationship(back_populates="products")

    @property
    def price(self) -> Decimal:
        return money(self.price_cents)


class Account(db.Model):  # type: ignore[name-defined]
    """A shop customer account.  Demo login is by e-mail only (no passwords)."""

    __tablename__ = "shop_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    language: Mapped[str] = mapped_column(String(8), default="en")
    birthday: Mapped[date | None] = mapped_column(Date)
    is_staff: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    orders: Mapped[list[Order]] = relationship(back_populates="account", order_by="Order.placed_at.desc()")

    @property
    def ref(self) -> str:
        """The customer reference the shop gives flask_loyalty (stable, never the e-mail)."""
        return f"C{self.id:06d}"


class Order(db.Model):  # type: ignore[name-defined]
    __tablename__ = "shop_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("shop_account.id"), index=True)
    placed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    channel: Mapped[str] = mapped_column(String(16), default="online")
    subtotal_cents: Mapped[int] = mapped_column(Integer)
    discount_cents: Mapped[int] = mapped_column(Integer, default=0)  # coupon and tier discount together
    tier_discount_cents: Mapped[int] = mapped_column(Integer, default=0)  # the member's tier discount alone
    total_cents: Mapped[int] = mapped_column(Integer)
    refunded_cents: Mapped[int] = mapped_column(Integer, default=0)
    coupon_code: Mapped[str | None] = mapped_column(String(80))  # as the coupon spells it (Coupon.code)
    account: Mapped[Account] = relationship(back_populates="orders")
    lines: Mapped[list[OrderLine]] = relationship(back_populates="order", cascade="all, delete-orphan")

    @property
    def total(self) -> Decimal:
        return money(self.total_cents)

    @property
    def coupon_discount(self) -> Decimal:
        return money(self.discount_cents - self.tier_discount_cents)

    @property
    def tier_discount(self) -> Decimal:
        return money(self.tier_discount_cents)

    @property
    def status(self) -> str:
        if self.refunded_cents >= self.total_cents and self.total_cents:
            return "refunded"
        return "partly refunded" if self.refunded_cents else "paid"


class OrderLine(db.Model):  # type: ignore[name-defined]
    __tablename__ = "shop_order_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("shop_order.id"), index=True)
    sku: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(120))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(Integer)
    order: Mapped[Order] = relationship(back_populates="lines")
