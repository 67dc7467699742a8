"""Input schemas of coupons and gift cards (service calls and the JSON endpoint)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..models.coupon import COUPON_KINDS
from .fields import Currency, DateOrDateTime, Money, Ref, Text

#: Longest code accepted as input; longer ones are refused before any query.
CODE_MAX = 64

_label = validate.Length(min=1, max=64)


class CouponRulesSchema(Schema):
    """The rules of a coupon: ``coupons.create`` (and ``create_batch``) arguments."""

    class Meta:
        unknown = RAISE

    kind = fields.String(required=True, validate=validate.OneOf(COUPON_KINDS))
    value = Money(allow_none=True)
    gift_name = Text(allow_none=True, validate=validate.Length(min=1, max=200))
    code = Text(allow_none=True)
    currency = Currency(required=True)
    max_uses = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=2**31 - 1))
    max_uses_per_customer = fields.Integer(allow_none=True, strict=True,
                                           validate=validate.Range(min=1, max=1000))
    min_order_total = Money(allow_none=True)
    starts_at = DateOrDateTime(allow_none=True)
    expires_at = DateOrDateTime(allow_none=True)
    customer_ref = Ref(allow_none=True)
    segment = Text(allow_none=True, validate=_label)
    first_order_only = fields.Boolean(load_default=False, truthy={True}, falsy={False})
    campaign = Text(allow_none=True, validate=_label)

    @validates_schema
    def _check_value(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind, value = data.get("kind"), data.get("value")
        if kind == "percent":
            if value is None:
                raise ValidationError("A percent coupon needs a value.", "value")
            if not Decimal(0) < value <= Decimal(100):
                raise ValidationError("A percentage must be more than 0 and at most 100.", "value")
        elif kind == "fixed":
            if value is None:
                raise ValidationError("A fixed coupon needs a value.", "value")
            if value <= 0:
                raise ValidationError("Must be greater than zero.", "value")
        elif kind == "free_shipping" and value is not None:
            raise ValidationError("A free-shipping coupon takes no value.", "value")
        elif kind == "gift" and not data.get("gift_name"):
            raise ValidationError("A gift coupon needs the name of the free item.", "gift_name")
        if kind != "gift" and data.get("gift_name"):
            raise ValidationError("Only gift coupons name an item.", "gift_name")


class BatchSchema(Schema):
    """``coupons.create_batch`` count and prefix."""

    class Meta:
        unknown = RAISE

    count = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=1_000_000))
    prefix = Text(load_default="", validate=validate.Length(max=16))


class QuoteRequestSchema(Schema):
    """``coupons.validate`` arguments and the body of ``POST /api/coupons/validate``."""

    class Meta:
        unknown = RAISE

    code = fields.String(required=True, validate=validate.Length(min=1, max=CODE_MAX))
    order_total = Money(required=True)
    customer_ref = Ref(allow_none=True)
    currency = Currency(allow_none=True)


class RedeemSchema(Schema):
    """``coupons.redeem`` arguments."""

    class Meta:
        unknown = RAISE

    code = fields.String(required=True, validate=validate.Length(min=1, max=CODE_MAX))
    customer_ref = Ref(required=True)
    order_ref = Ref(required=True)
    order_total = Money(required=True)
    currency = Currency(allow_none=True)


class GiftCardIssueSchema(Schema):
    """``gift_cards.issue`` arguments."""

    class Meta:
        unknown = RAISE

    amount = Money(required=True, allow_zero=False)
    currency = Currency(required=True)
    customer_ref = Ref(allow_none=True)
    expires_at = DateOrDateTime(allow_none=True)


class GiftCardChargeSchema(Schema):
    """``gift_cards.charge`` arguments."""

    class Meta:
        unknown = RAISE

    code = fields.String(required=True, validate=validate.Length(min=1, max=CODE_MAX))
    amount = Money(required=True, allow_zero=False)
    order_ref = Ref(required=True)
    currency = Currency(allow_none=True)


class OrderRefSchema(Schema):
    """A single order reference (``release``, ``gift_cards.refund``)."""

    class Meta:
        unknown = RAISE

    order_ref = Ref(required=True)


__all__ = ["CODE_MAX", "BatchSchema", "CouponRulesSchema", "GiftCardChargeSchema",
           "GiftCardIssueSchema", "OrderRefSchema", "QuoteRequestSchema", "RedeemSchema"]
