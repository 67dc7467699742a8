"""Points: balance, redemption into a personal coupon, expiry after inactivity.

The balance lives on ``loyalty_customer.points_balance`` and every change is
a row of the points ledger (:mod:`flask_loyalty.services.ledger`), written by
one conditional ``UPDATE ... WHERE points_balance + delta >= 0``.  That one
statement is what makes :meth:`Points.redeem` safe under concurrency: of
twenty callers spending 100 points from a balance of 500, exactly five see
their update applied; the others find the condition false and get
:class:`NotEnoughPoints`, with nothing written.

Expiry (``LOYALTY_POINTS_EXPIRE_DAYS``, off by default): a customer's last
activity is their latest purchase or points redemption.  ``LOYALTY_POINTS_
EXPIRY_WARNING_DAYS`` before the points would expire a ``points_expiring``
message is scheduled; once the inactivity reaches the limit the whole balance
is written off with an ``expire`` ledger entry.  :func:`expire_points` runs
from the plan tick (hook ``plan_tick``, see :mod:`.rewards`) and from
``flask loyalty points expire``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import func, or_, select

from ..clock import resolve_now, shop_zone, valid_days_deadline
from ..errors import InvalidInput, LoyaltyError
from ..models import Customer, PointsEntry
from ..money import parse_amount, round_money
from ..schemas import load
from ..schemas.fields import Ref
from ..state import LoyaltyState
from ..transaction import PendingSignal, abandon, abandoned_on_error, begin_write, dialect_name, finish
from .base import Facade
from .ledger import MAX_POINTS, change_points
from .purchases import get_customer

#: Ledger reasons that count as the customer's own activity (besides purchases).
ACTIVITY_REASONS = ("redeem",)


class NotEnoughPoints(LoyaltyError):
    """The customer has fewer points than asked for; nothing was changed."""

    def __init__(self, balance: int, wanted: int) -> None:
        self.balance = balance
        self.wanted = wanted
        super().__init__(f"not enough points: {wanted} asked, {balance} available")


class _RedeemSchema(Schema):
    class Meta:
        unknown = RAISE

    customer_ref = Ref(required=True)
    points = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_POINTS))


_redeem_schema = _RedeemSchema()


def redemption_rate(config: Mapping[str, Any]) -> tuple[int, Decimal]:
    """``LOYALTY_POINTS_REDEMPTION`` as ``(points, value)``; :class:`InvalidInput` when malformed."""
    raw = config["LOYALTY_POINTS_REDEMPTION"]
    key = "LOYALTY_POINTS_REDEMPTION"
    if not isinstance(raw, Mapping) or set(raw) != {"points", "value"}:
        raise InvalidInput.field(key, "Must be a dict with exactly 'points' and 'value'.")
    points = raw["points"]
    if not isinstance(points, int) or isinstance(points, bool) or not 1 <= points <= MAX_POINTS:
        raise InvalidInput.field(key, f"'points' must be a whole number from 1 to {MAX_POINTS:,}.")
    if isinstance(raw["value"], float):
        raise InvalidInput.field(key, "'value' must be a Decimal, int or numeric string, not a float.")
    value = parse_amount(raw["value"], field=key, allow_zero=False)
    return points, value


def check_config(config: Mapping[str, Any]) -> None:
    """Validate the points settings at set-up."""
    redemption_rate(config)
    for key, minimum in (("LOYALTY_POINTS_EXPIRE_DAYS", 1), ("LOYALTY_POINTS_EXPIRY_WARNING_DAYS", 0),
                         ("LOYALTY_POINTS_COUPON_VALID_DAYS", 1)):
        value = config[key]
        if value is None and key != "LOYALTY_POINTS_EXPIRY_WARNING_DAYS":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidInput.field(key, f"Must be a whole number of days >= {minimum}.")


class Points(Facade):
    """Points balance and redemption (``loyalty.points``)."""

    def balance(self, customer_ref: str) -> int:
        """The customer's points; 0 for an unknown customer."""
        value = self._state.session.execute(
            select(Customer.points_balance).where(Customer.ref == customer_ref)).scalar_one_or_none()
        return int(value or 0)

    def redeem(self, customer_ref: str, points: int, *, commit: bool = True) -> Any:
        """Turn ``points`` (a multiple of the redemption unit) into a personal fixed coupon.

        ``LOYALTY_POINTS_REDEMPTION = {"points": 100, "value": "5.00"}`` makes
        300 points a coupon worth 15.00 for this customer only, valid
        ``LOYALTY_POINTS_COUPON_VALID_DAYS``.  Not a multiple ->
        :class:`InvalidInput`; more than the balance -> :class:`NotEnoughPoints`
        (a :class:`LoyaltyError`) and nothing changes.
        """
        return redeem(self._state, customer_ref, points, commit=commit)

    def history(self, customer_ref: str) -> list[PointsEntry]:
        """The customer's ledger entries, newest first (empty for an unknown customer)."""
        return list(self._state.session.execute(
            select(PointsEntry).join(Customer, Customer.id == PointsEntry.customer_id)
            .where(Customer.ref == customer_ref)
            .order_by(PointsEntry.created_at.desc(), PointsEntry.id.desc())).scalars())

    def expire(self, *, now: datetime | None = None, commit: bool = True) -> int:
        """Warn and expire points after inactivity (what the plan tick runs); returns points expired."""
        state = self._state
        count = expire_points(state, now=now)
        finish(state, commit=commit)
        return count


def redeem(state: LoyaltyState, customer_ref: str, points: int, *, commit: bool = True,
           now: datetime | None = None) -> Any:
    """See :meth:`Points.redeem`."""
    if isinstance(points, float):
        raise InvalidInput.field("points", "Points are whole numbers.")
    data = load(_redeem_schema, {"customer_ref": customer_ref, "points": points})
    unit, value = redemption_rate(state.config)
    wanted = int(data["points"])
    if wanted % unit:
        raise InvalidInput.field("points", f"Must be a multiple of {unit}.")
    moment = resolve_now(now)
    begin_write(state)   # SQLite: take the write lock before the first read
    customer = get_customer(state, data["customer_ref"])
    if customer is None:
        abandon(state, commit=commit)
        raise NotEnoughPoints(0, wanted)
    change = change_points(state, customer.id, -wanted, reason="redeem", note="coupon")
    if change is None:
        balance = int(state.session.execute(
            select(Customer.points_balance).where(Customer.id == customer.id)).scalar_one())
        abandon(state, commit=commit)
        raise NotEnoughPoints(balance, wanted)
    currency = state.config["LOYALTY_CURRENCY"]
    amount = round_money(value * (wanted // unit), currency)
    days = state.config["LOYALTY_POINTS_COUPON_VALID_DAYS"]
    with abandoned_on_error(state, commit=commit):
        coupon = state.extension.coupons.create(
            kind="fixed", value=amount, currency=currency, customer_ref=customer.ref, max_uses=1,
            expires_at=valid_days_deadline(moment, days, shop_zone(state.config["LOYALTY_TIMEZONE"])) if days else None,
            commit=False)
    assert change.entry is not None
    change.entry.note = f"coupon {coupon.code}"[:200]
    finish(state, commit=commit, signals=change.signal(customer.ref))
    return coupon


def _last_redemption() -> Any:
    """A correlated expression: the customer's latest redemption time."""
    return (select(func.max(PointsEntry.created_at))
            .where(PointsEntry.customer_id == Customer.id, PointsEntry.reason.in_(ACTIVITY_REASONS))
            .correlate(Customer).scalar_subquery())


def expire_points(state: LoyaltyState, now: datetime | None = None) -> int:
    """Schedule expiry warnings and expire inactive balances; returns the points expired.

    Runs in the caller's transaction (no commit).  Candidates are found with
    one query; each expiry re-checks the balance with the conditional ledger
    update, so a concurrent redemption never drives a balance negative.
    """
    days = state.config["LOYALTY_POINTS_EXPIRE_DAYS"]
    if not days:
        return 0
    moment = resolve_now(now)
    warn_days = int(state.config["LOYALTY_POINTS_EXPIRY_WARNING_DAYS"] or 0)
    limit = moment - timedelta(days=int(days))
    warn_limit = limit + timedelta(days=warn_days)
    last_redeem = _last_redemption()
    begin_write(state)
    query = (select(Customer, Customer.last_purchase_at, last_redeem)
             .where(Customer.points_balance > 0, Customer.erased_at.is_(None),
                    or_(Customer.last_purchase_at.is_(None), Customer.last_purchase_at <= warn_limit),
                    or_(last_redeem.is_(None), last_redeem <= warn_limit),
                    or_(Customer.last_purchase_at.is_not(None), last_redeem.is_not(None),
                        Customer.created_at <= warn_limit))
             .order_by(Customer.id))
    if dialect_name(state) == "postgresql":
        query = query.with_for_update(of=Customer, skip_locked=True)
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    expired = 0
    signals: list[PendingSignal] = []
    for customer, last_purchase, last_redemption in state.session.execute(query).all():
        stamps = [t for t in (last_purchase, last_redemption) if t is not None]
        active_at = max(stamps) if stamps else customer.created_at
        # the end of the shop's local day the warning mail names (the query above is a superset)
        expires_at = valid_days_deadline(active_at, int(days), zone)
        if expires_at <= moment:
            balance = int(customer.points_balance)
            change = change_points(state, customer.id, -balance, reason="expire",
                                   note=f"inactive since {active_at.date().isoformat()}")
            if change is not None:
                expired += balance
                signals += change.signal(customer.ref)
        elif warn_days:
            _warn(state, customer, expires_at, active_at, moment)
    _flush_signals(state, signals)
    return expired


def _warn(state: LoyaltyState, customer: Customer, expires_at: datetime, active_at: datetime,
          now: datetime) -> None:
    from . import outbox

    outbox.enqueue(state, "points_expiring", customer, due_at=now,
                   payload={"points": int(customer.points_balance), "expires_at": expires_at.isoformat()},
                   dedupe_key=f"points_expiring:{customer.id}:{active_at.isoformat()}")


def _flush_signals(state: LoyaltyState, signals: list[PendingSignal]) -> None:
    """Expiry runs inside a larger transaction: its ``points_changed`` signals go out at flush."""
    state.session.flush()
    for signal, kwargs in signals:
        signal.send(state.app, **kwargs)


__all__ = ["NotEnoughPoints", "Points", "check_config", "expire_points", "redeem", "redemption_rate"]
