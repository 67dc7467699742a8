"""Input schemas of the checkout hook: customers, purchases, items, refunds."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from ..models.purchase import CHANNELS
from .fields import AwareDateTime, Currency, Money, PlainDate, Ref


class CustomerSchema(Schema):
    """``upsert_customer`` arguments."""

    class Meta:
        unknown = RAISE

    customer_ref = Ref(required=True)
    email = fields.Email(allow_none=True, validate=validate.Length(max=254))
    name = fields.String(allow_none=True, validate=validate.Length(max=200))
    locale = fields.String(allow_none=True, validate=validate.Regexp(
        r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$", error="Not a valid locale."))
    birthday = PlainDate(allow_none=True, any_year=True)   # only month and day are used


class ItemSchema(Schema):
    """One purchased item."""

    class Meta:
        unknown = RAISE

    sku = fields.String(required=True, validate=validate.Length(min=1, max=64))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=1_000_000))
    unit_price = Money(required=True)
    category = fields.String(allow_none=True, validate=validate.Length(max=100))
    unit_cost = Money(allow_none=True)
    replenish_after_days = fields.Integer(allow_none=True, strict=True,
                                          validate=validate.Range(min=1, max=3650))


#: Item amounts are summed per order (``quantity * unit_price``, ``quantity * unit_cost``) and stored like
#: any other amount, so each sum must stay below the limit of a single amount.
ITEMS_AMOUNT_LIMIT = Decimal(10) ** 14


def items_within_range(items: list[dict[str, Any]]) -> None:
    """Refuse items whose summed prices or costs could not be stored as one amount."""
    prices = sum((item["quantity"] * item["unit_price"] for item in items), Decimal(0))
    costs = sum((item["quantity"] * (item.get("unit_cost") or 0) for item in items), Decimal(0))
    if prices >= ITEMS_AMOUNT_LIMIT or costs >= ITEMS_AMOUNT_LIMIT:
        raise ValidationError("The items' quantities times prices or costs add up to more than can be stored.")


class PurchaseSchema(Schema):
    """``record_purchase`` arguments."""

    class Meta:
        unknown = RAISE

    order_ref = Ref(required=True)
    customer_ref = Ref(required=True)
    total = Money(required=True)
    currency = Currency(required=True)
    email = fields.Email(allow_none=True, validate=validate.Length(max=254))
    placed_at = AwareDateTime(allow_none=True)
    items = fields.List(fields.Nested(ItemSchema), load_default=list, validate=items_within_range)
    channel = fields.String(load_default="online", validate=validate.OneOf(CHANNELS))
    referral_code = fields.String(allow_none=True, validate=validate.Length(min=1, max=64))


class RefundSchema(Schema):
    """``record_refund`` arguments."""

    class Meta:
        unknown = RAISE

    order_ref = Ref(required=True)
    amount = Money(allow_none=True, allow_zero=False)
