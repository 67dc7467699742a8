"""Reward specifications shared by referrals, raffles and campaigns, and how they are issued.

A reward spec is a JSON-storable dict::

    {"kind": "fixed", "value": "5.00", "valid_days": 90, "min_order_total": None}

``kind`` is a coupon kind (``fixed``, ``percent``, ``free_shipping``), or
``gift_card`` (a gift card of ``value``) or ``points`` (``value`` whole points
added to the balance).  Coupons and gift cards are personal (bound to the
customer) and go through the public facades ``loyalty.coupons.create`` and
``loyalty.gift_cards.issue`` with ``commit=False``, inside the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..clock import shop_zone, valid_days_deadline
from ..errors import InvalidInput, LoyaltyError
from ..models import Customer
from ..schemas import load
from ..schemas.coupon import CouponRulesSchema
from ..schemas.fields import Money
from ..state import LoyaltyState
from ..transaction import PendingSignal
from .ledger import MAX_POINTS, change_points

PRIZE_KINDS = ("fixed", "percent", "free_shipping", "gift_card", "points")
#: Prize kinds issued as a coupon (``coupons.create``).
COUPON_PRIZE_KINDS = ("fixed", "percent", "free_shipping")
_coupon_rules = CouponRulesSchema()


class PrizeSchema(Schema):
    """A reward spec (see the module docstring)."""

    class Meta:
        unknown = RAISE

    kind = fields.String(required=True, validate=validate.OneOf(PRIZE_KINDS))
    value = Money(allow_none=True, load_default=None)
    valid_days = fields.Integer(allow_none=True, load_default=None, strict=True,
                                validate=validate.Range(min=1, max=3650))
    min_order_total = Money(allow_none=True, load_default=None)

    @validates_schema
    def _check_value(self, data: dict[str, Any], **_kwargs: Any) -> None:
        kind, value = data["kind"], data.get("value")
        if kind in COUPON_PRIZE_KINDS:
            # the rules coupons.create applies when the reward is issued, checked now
            rules = {"kind": kind, "value": value, "min_order_total": data.get("min_order_total")}
            try:
                _coupon_rules.load({k: v for k, v in rules.items() if v is not None}, partial=("currency",))
            except ValidationError as exc:
                raise ValidationError(exc.messages) from None
            return
        if value is None or value <= 0:
            raise ValidationError("Must be greater than zero.", "value")
        if kind == "points":
            if value != value.to_integral_value():
                raise ValidationError("Points are whole numbers.", "value")
            if value > MAX_POINTS:
                raise ValidationError(f"At most {MAX_POINTS:,} points.", "value")


_schema = PrizeSchema()


def parse_prize(spec: object, *, field: str = "prize") -> dict[str, Any]:
    """Validate a reward spec; returns it JSON-storable (amounts as strings)."""
    if not isinstance(spec, Mapping):
        raise InvalidInput.field(field, "Must be an object with a kind and a value.")
    try:
        data = load(_schema, dict(spec))
    except InvalidInput as exc:
        raise InvalidInput({field: exc.errors}) from None
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in data.items()}


def prize_deadline(state: LoyaltyState, spec: Mapping[str, Any], now: datetime) -> datetime | None:
    """When a reward issued at ``now`` expires: the end of the shop's local day ``valid_days`` later."""
    if not spec.get("valid_days"):
        return None
    return valid_days_deadline(now, int(spec["valid_days"]), shop_zone(state.config["LOYALTY_TIMEZONE"]))


def issue_prize(state: LoyaltyState, spec: Mapping[str, Any], customer: Customer, *, now: datetime,
                campaign: str | None = None, note: str = "prize",
                signals: list[PendingSignal] | None = None) -> str:
    """Give ``customer`` the reward ``spec`` (already validated); returns its code.

    For ``points`` the "code" is ``"+N points"``.  Nothing is committed.
    """
    ext = state.extension
    kind = spec["kind"]
    value = Decimal(spec["value"]) if spec.get("value") is not None else None
    expires_at = prize_deadline(state, spec, now)
    if kind == "points":
        assert value is not None
        change = change_points(state, customer.id, int(value), reason="bonus", note=note[:200])
        if change is None:  # pragma: no cover - a positive delta always applies
            raise LoyaltyError("could not add points")
        if signals is not None:
            signals += change.signal(customer.ref)
        return f"+{int(value)} points"
    if kind == "gift_card":
        card = ext.gift_cards.issue(value, customer_ref=customer.ref, expires_at=expires_at, commit=False)
        return str(card.code)
    min_total = Decimal(spec["min_order_total"]) if spec.get("min_order_total") is not None else None
    coupon = ext.coupons.create(kind=kind, value=value, customer_ref=customer.ref, max_uses=1,
                                min_order_total=min_total, expires_at=expires_at, campaign=campaign,
                                commit=False)
    return str(coupon.code)


def prize_payload(state: LoyaltyState, spec: Mapping[str, Any], code: str, *, now: datetime) -> dict[str, Any]:
    """Mail payload keys for an issued reward.

    Coupons use the ``coupon_*`` keys the shared mail partial
    ``loyalty/mail/_coupon.*`` shows; gift cards ``gift_card_code`` and
    ``gift_card_value``; points ``points``.  Everything is a string or an int.
    """
    kind = spec["kind"]
    deadline = prize_deadline(state, spec, now)
    expires = deadline.isoformat() if deadline is not None else None
    if kind == "points":
        return {"points": int(Decimal(spec["value"]))}
    if kind == "gift_card":
        data: dict[str, Any] = {"gift_card_code": code, "gift_card_value": str(spec["value"]),
                                "gift_card_currency": state.config["LOYALTY_CURRENCY"]}
        if expires:
            data["gift_card_expires_at"] = expires
        return data
    data = {"coupon_code": code, "coupon_kind": kind, "coupon_currency": state.config["LOYALTY_CURRENCY"]}
    if spec.get("value") is not None:
        data["coupon_value"] = str(spec["value"])
    if expires:
        data["coupon_expires_at"] = expires
    return data
