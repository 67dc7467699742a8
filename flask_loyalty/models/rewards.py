"""Rewards: tiers held, referral codes and referrals, raffles and campaigns with a holdout."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, CreatedAt
from .types import Money, Reference, UTCDateTime

REFERRAL_STATUSES = ("pending", "rewarded", "rejected", "cancelled")
RAFFLE_STATUSES = ("open", "drawn")
CAMPAIGN_STATUSES = ("draft", "launched")
CAMPAIGN_GROUPS = ("treatment", "holdout")


class CustomerTier(Base):
    """The tier a customer holds now (one row per customer that was ever evaluated)."""

    __tablename__ = "loyalty_customer_tier"

    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), primary_key=True)
    tier: Mapped[str | None] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class ReferralCode(CreatedAt, Base):
    """A customer's own referral code (shown in the wallet, used in the link /r/<code>)."""

    __tablename__ = "loyalty_referral_code"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), unique=True, nullable=False)
    code: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)


class Referral(CreatedAt, Base):
    """An order placed with a referral code, with the outcome and the fraud reasons found.

    ``status``: ``pending`` (the friend was rewarded; the advocate waits for
    the refund window), ``rewarded``, ``rejected`` (``reasons`` says why) or
    ``cancelled`` (the friend's order was refunded within the window).
    """

    __tablename__ = "loyalty_referral"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'rewarded', 'rejected', 'cancelled')", name="status_known"),
        Index("ix_loyalty_referral_status", "status"),
        Index("ix_loyalty_referral_ip", "ip_hash", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("loyalty_purchase.id"), unique=True, nullable=False)
    code: Mapped[str] = mapped_column(String(64), nullable=False)
    advocate_id: Mapped[int | None] = mapped_column(ForeignKey("loyalty_customer.id"), index=True)
    friend_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reasons: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    ip_hash: Mapped[str | None] = mapped_column(String(64))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    friend_coupon: Mapped[str | None] = mapped_column(String(64))
    advocate_coupon: Mapped[str | None] = mapped_column(String(64))
    rewarded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Raffle(CreatedAt, Base):
    """A raffle drawn verifiably: ``seed_hash`` is public from creation, ``seed`` after the draw."""

    __tablename__ = "loyalty_raffle"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'drawn')", name="status_known"),
        CheckConstraint("winners > 0", name="winners_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Reference(64), unique=True, nullable=False)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    rule: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    entries_per: Mapped[str] = mapped_column(String(16), nullable=False)  # "order" | "amount"
    amount_per_entry: Mapped[Decimal | None] = mapped_column(Money())
    prize: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    winners: Mapped[int] = mapped_column(Integer, nullable=False)
    seed_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    seed: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(8), nullable=False, default="open")
    public_salt: Mapped[str | None] = mapped_column(String(200))
    entries_digest: Mapped[str | None] = mapped_column(String(64))
    drawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RaffleEntry(Base):
    """One customer's tickets in a drawn raffle; ``number`` is the public entry number."""

    __tablename__ = "loyalty_raffle_entry"
    __table_args__ = (
        UniqueConstraint("raffle_id", "customer_id", name="uq_loyalty_raffle_entry_customer"),
        UniqueConstraint("raffle_id", "number", name="uq_loyalty_raffle_entry_number"),
        CheckConstraint("tickets > 0", name="tickets_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    raffle_id: Mapped[int] = mapped_column(ForeignKey("loyalty_raffle.id", ondelete="CASCADE"), nullable=False)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False, index=True)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    tickets: Mapped[int] = mapped_column(Integer, nullable=False)
    place: Mapped[int | None] = mapped_column(Integer)  # 1 = first winner drawn
    prize_code: Mapped[str | None] = mapped_column(String(64))


class Campaign(CreatedAt, Base):
    """An offer (coupon rule + mail) sent to a segment in a date window, with a random holdout."""

    __tablename__ = "loyalty_campaign"
    __table_args__ = (
        CheckConstraint("status IN ('draft', 'launched')", name="status_known"),
        CheckConstraint("holdout_share >= 0 AND holdout_share < 1", name="holdout_share_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Reference(64), unique=True, nullable=False)
    segment: Mapped[str | None] = mapped_column(String(64))
    #: An explicit audience (customer refs) when no segment is used.
    audience: Mapped[list[str] | None] = mapped_column(JSON)
    offer: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    message: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    holdout_share: Mapped[float] = mapped_column(nullable=False)
    seed: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="draft")
    launched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notes: Mapped[str | None] = mapped_column(Text)


class CampaignMember(Base):
    """A segment member at launch: in the ``treatment`` group (offered) or the ``holdout``."""

    __tablename__ = "loyalty_campaign_member"
    __table_args__ = (
        UniqueConstraint("campaign_id", "customer_id", name="uq_loyalty_campaign_member_customer"),
        CheckConstraint("grp IN ('treatment', 'holdout')", name="group_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("loyalty_campaign.id", ondelete="CASCADE"), nullable=False)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False, index=True)
    grp: Mapped[str] = mapped_column(String(16), nullable=False)
    coupon_code: Mapped[str | None] = mapped_column(String(64))
