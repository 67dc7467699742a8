"""Input schemas of the checkout hook: customers, purchases, items, refunds."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

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
    birthday = PlainDate(allow_none=True)


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
    items = fields.List(fields.Nested(ItemSchema), load_default=list)
    channel = fields.String(load_default="online", validate=validate.OneOf(CHANNELS))
    referral_code = fields.String(allow_none=True, validate=validate.Length(min=1, max=64))


class RefundSchema(Schema):
    """``record_refund`` arguments."""

    class Meta:
        unknown = RAISE

    order_ref = Ref(required=True)
    amount = Money(allow_none=True, allow_zero=False)
