"""Tiers of the cumulative programme (``LOYALTY_TIERS``) and their perks.

Each tier is ``{"name", "min_spend", "window_days", "discount_percent",
"points_multiplier"}``: a customer holds the highest tier (by ``min_spend``)
whose ``min_spend`` they reached in net spend (order totals minus refunds)
over the tier's window: the last ``window_days`` days, or their whole history
when ``window_days`` is ``None``.  Perks: a standing percent discount the
host applies with :meth:`Tiers.discount_for`, and a points multiplier applied
through the ``points_multiplier`` hook to the points of later orders (the
tier held when an order is placed counts; an upgrade earned by an order
applies from the next one).

The tier is recomputed in the checkout transaction on every purchase and
refund, and by the plan tick for customers whose rolling window may have let
them drop.  A change sends the ``tier_changed`` signal (``customer_ref``,
``old_tier``, ``new_tier``: names or ``None``); moving up also schedules the
``tier_changed`` congratulation mail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import BigInteger, case, func, select, type_coerce, update

from flask_loyalty.models.base import table_of

from ..clock import resolve_now, utcnow
from ..errors import InvalidInput
from ..models import Customer, CustomerTier, Purchase
from ..money import from_storage, parse_amount, round_money
from ..schemas import load
from ..schemas.fields import Money
from ..signals import tier_changed
from ..state import LoyaltyState
from ..transaction import PendingSignal, insert_ignore
from .base import Facade
from .coupons import percent_of
from .purchases import get_customer


@dataclass(frozen=True)
class Tier:
    """One tier of ``LOYALTY_TIERS`` with its perks."""

    name: str
    min_spend: Decimal
    window_days: int | None = None
    discount_percent: Decimal = Decimal(0)
    points_multiplier: Decimal = Decimal(1)
    rank: int = field(default=0, compare=False)

    @property
    def perks(self) -> dict[str, str]:
        """The perks as strings: ``discount_percent`` and ``points_multiplier``."""
        return {"discount_percent": str(self.discount_percent),
                "points_multiplier": str(self.points_multiplier)}


class _TierSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Regexp(
        r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$", error="1 to 64 letters, digits, spaces, dots, dashes."))
    min_spend = Money(required=True)
    window_days = fields.Integer(load_default=None, allow_none=True, strict=True,
                                 validate=validate.Range(min=1, max=36500))
    discount_percent = Money(load_default=Decimal(0), validate=validate.Range(min=0, max=100))
    points_multiplier = Money(load_default=Decimal(1), validate=validate.Range(min=0, max=100))


_tier_schema = _TierSchema()


def parse_tiers(raw: object) -> tuple[Tier, ...]:
    """Validate ``LOYALTY_TIERS``; tiers come back ordered by ``min_spend`` (rank 1 = lowest)."""
    key = "LOYALTY_TIERS"
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise InvalidInput.field(key, "Must be a list of tier dicts.")
    tiers: list[Tier] = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidInput({key: {str(index): ["Must be a dict."]}})
        for money_key in ("min_spend", "discount_percent", "points_multiplier"):
            if isinstance(item.get(money_key), float):
                raise InvalidInput({key: {str(index): {money_key: ["Use a Decimal, int or string, not a float."]}}})
        try:
            data = load(_tier_schema, dict(item))
        except InvalidInput as exc:
            raise InvalidInput({key: {str(index): exc.errors}}) from None
        tiers.append(Tier(**data))
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise InvalidInput.field(key, "Tier names must be unique.")
    spends = [t.min_spend for t in tiers]
    if len(set(spends)) != len(spends):
        raise InvalidInput.field(key, "Two tiers cannot have the same min_spend.")
    ordered = sorted(tiers, key=lambda t: t.min_spend)
    return tuple(Tier(t.name, t.min_spend, t.window_days, t.discount_percent, t.points_multiplier, rank)
                 for rank, t in enumerate(ordered, start=1))


def tiers_of(state: LoyaltyState) -> tuple[Tier, ...]:
    """The app's parsed tiers (validated once at set-up and cached per config value)."""
    raw = state.config["LOYALTY_TIERS"]
    cached = state.extras.get("tiers")
    if cached is not None and cached[0] == repr(raw):
        return cached[1]  # type: ignore[no-any-return]
    tiers = parse_tiers(raw)
    state.extras["tiers"] = (repr(raw), tiers)
    return tiers


def tier_named(state: LoyaltyState, name: str | None) -> Tier | None:
    """The configured tier called ``name`` (``None`` when not configured any more)."""
    if name is None:
        return None
    for tier in tiers_of(state):
        if tier.name == name:
            return tier
    return None


def qualifying_tier(state: LoyaltyState, customer_id: int, now: datetime) -> Tier | None:
    """Compute the tier ``customer_id`` qualifies for at ``now`` (one aggregate query)."""
    tiers = tiers_of(state)
    if not tiers:
        return None
    windows = sorted({t.window_days for t in tiers}, key=lambda w: (w is None, w or 0))
    # raw integers of 1/10,000 units: the sums stay exact and typed the same on every database
    net = type_coerce(Purchase.total, BigInteger) - type_coerce(Purchase.refunded_total, BigInteger)
    columns = []
    for window in windows:
        if window is None:
            columns.append(func.coalesce(func.sum(net), 0))
        else:
            since = now - timedelta(days=window)
            columns.append(func.coalesce(func.sum(case(
                ((Purchase.placed_at > since) & (Purchase.placed_at <= now), net), else_=0)), 0))
    row = state.session.execute(select(*columns).where(Purchase.customer_id == customer_id)).one()
    spend = {w: from_storage(int(v)) for w, v in zip(windows, row, strict=True)}
    best: Tier | None = None
    for tier in tiers:
        if spend[tier.window_days] >= tier.min_spend:
            best = tier
    return best


def current_tier_name(state: LoyaltyState, customer_id: int) -> str | None:
    """The stored tier name of a customer (``None`` when none)."""
    return state.session.execute(
        select(CustomerTier.tier).where(CustomerTier.customer_id == customer_id)).scalar_one_or_none()


def recompute(state: LoyaltyState, customer: Customer, *, now: datetime | None = None,
              signals: list[PendingSignal] | None = None, order_ref: str | None = None) -> Tier | None:
    """Recompute and store one customer's tier; signal and congratulate on change.

    Runs in the caller's transaction (no commit).
    """
    moment = resolve_now(now)
    tiers = tiers_of(state)
    new = qualifying_tier(state, customer.id, moment)
    new_name = new.name if new else None
    table = table_of(CustomerTier)
    # The common case (no change) costs one read; a change is one conditional write.
    stored = state.session.execute(
        select(table.c.tier).where(table.c.customer_id == customer.id)).first()
    if stored is None:
        if new_name is None:
            return None                 # never held a tier and still none: nothing to store
        if insert_ignore(state, table, {"customer_id": customer.id, "tier": new_name, "changed_at": moment},
                         ["customer_id"]):
            old_name: str | None = None
        else:                           # a concurrent transaction stored a row first
            stored = state.session.execute(
                select(table.c.tier).where(table.c.customer_id == customer.id)).first()
    if stored is not None:
        old_name = stored[0]
        if old_name == new_name:
            return new
        same_old = table.c.tier.is_(None) if old_name is None else table.c.tier == old_name
        moved = state.session.execute(
            update(table).where(table.c.customer_id == customer.id, same_old)
            .values(tier=new_name, changed_at=moment).returning(table.c.customer_id)).first()
        if moved is None:               # changed concurrently: that transaction signalled it
            return new
    state.session.flush()
    if signals is not None:
        signals.append((tier_changed, {"customer_ref": customer.ref, "old_tier": old_name,
                                       "new_tier": new_name}))
    old = tier_named(state, old_name)
    if new is not None and (old is None or new.rank > old.rank) and tiers:
        from . import outbox

        outbox.enqueue(state, "tier_changed", customer, order_ref=order_ref, due_at=moment,
                       payload={"tier": new.name, "previous": old_name or "",
                                "discount_percent": str(new.discount_percent),
                                "points_multiplier": str(new.points_multiplier)},
                       dedupe_key=f"tier_changed:{customer.id}:{new.name}:{moment.date().isoformat()}")
    return new


def reference_time(placed_at: datetime) -> datetime:
    """Windows are measured up to now, or up to the order's time when that is later (imports)."""
    now = utcnow()
    return placed_at if placed_at > now else now


def on_purchase(state: LoyaltyState, *, purchase: Purchase, customer: Customer,
                signals: list[PendingSignal], **_kwargs: Any) -> None:
    """``purchase`` hook: recompute the buyer's tier."""
    if tiers_of(state):
        recompute(state, customer, now=reference_time(purchase.placed_at), signals=signals,
                  order_ref=purchase.order_ref)


def on_refund(state: LoyaltyState, *, purchase: Purchase, signals: list[PendingSignal], **_kwargs: Any) -> None:
    """``refund`` hook: recompute the tier (a refund may take a customer down)."""
    if tiers_of(state):
        recompute(state, purchase.customer, now=reference_time(purchase.placed_at), signals=signals)


def points_multiplier(state: LoyaltyState, *, customer: Customer, **_kwargs: Any) -> Decimal:
    """``points_multiplier`` hook: the multiplier of the tier the customer holds now."""
    if not tiers_of(state) or customer.id is None:
        return Decimal(1)
    tier = tier_named(state, current_tier_name(state, customer.id))
    return tier.points_multiplier if tier else Decimal(1)


def refresh_windows(state: LoyaltyState, *, now: datetime | None = None) -> int:
    """Plan tick: recompute customers holding a tier while some tier uses a rolling window.

    Returns how many customers changed tier.  The ``tier_changed`` signals go
    out at flush (the plan tick commits the transaction).
    """
    tiers = tiers_of(state)
    if not tiers or all(t.window_days is None for t in tiers):
        return 0
    moment = resolve_now(now)
    ids = state.session.execute(
        select(CustomerTier.customer_id).where(CustomerTier.tier.is_not(None))
        .order_by(CustomerTier.customer_id)).scalars().all()
    signals: list[PendingSignal] = []
    for customer_id in ids:
        customer = state.session.get(Customer, customer_id)
        if customer is not None:
            recompute(state, customer, now=moment, signals=signals)
    state.session.flush()
    for signal, kwargs in signals:
        signal.send(state.app, **kwargs)
    return len(signals)


class Tiers(Facade):
    """Tiers of the cumulative programme (``loyalty.tiers``)."""

    def of(self, customer_ref: str) -> Tier | None:
        """The tier the customer holds (``None``: no tier, unknown customer or no tiers configured)."""
        state = self._state
        customer = get_customer(state, customer_ref)
        if customer is None:
            return None
        return tier_named(state, current_tier_name(state, customer.id))

    def discount_for(self, customer_ref: str, order_total: Any) -> Decimal:
        """The tier's standing discount on ``order_total`` (0 without a tier); never above the total.

        Rounded half-even to the minor unit of ``LOYALTY_CURRENCY``.
        """
        if isinstance(order_total, float):
            raise TypeError("order_total: money must be Decimal, int or str, not float")
        total = parse_amount(order_total, field="order_total")
        currency = self._state.config["LOYALTY_CURRENCY"]
        tier = self.of(customer_ref)
        if tier is None or not tier.discount_percent:
            return round_money(Decimal(0), currency)
        return percent_of(total, tier.discount_percent, currency)   # rounded once, as a percent coupon

    def all(self) -> tuple[Tier, ...]:
        """The configured tiers, lowest first."""
        return tiers_of(self._state)

    def recompute(self, customer_ref: str, *, now: datetime | None = None, commit: bool = True) -> Tier | None:
        """Recompute one customer's tier now (e.g. after changing ``LOYALTY_TIERS``)."""
        from ..transaction import abandon, begin_write, finish

        state = self._state
        begin_write(state)
        customer = get_customer(state, customer_ref)
        if customer is None:
            abandon(state, commit=commit)
            raise InvalidInput.field("customer_ref", "Unknown customer.")
        signals: list[PendingSignal] = []
        tier = recompute(state, customer, now=now, signals=signals)
        finish(state, commit=commit, signals=signals)
        return tier
