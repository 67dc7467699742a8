"""Input schemas of the dashboard's query strings and forms (everything arrives as text)."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, pre_load, validate

from .fields import ID_MAX, Currency, Money, PlainDate, Ref, Text


class _Form(Schema):
    """Form/query input: unknown fields (the CSRF token, buttons) ignored, empty strings mean "not given".

    Free strings are :class:`~.fields.Text` (control characters such as NUL
    refused), ids and cursors stop at ``ID_MAX``, dates at the supported range.
    """

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def _blank_is_missing(self, data: Any, **_kwargs: Any) -> dict[str, Any]:
        return {k: (v.strip() if isinstance(v, str) else v) for k, v in dict(data).items()
                if not (isinstance(v, str) and not v.strip())}


class PeriodQuery(_Form):
    """``?days=30`` or ``?start=2026-01-01&end=2026-01-31`` (local days, inclusive)."""

    days = fields.Integer(validate=validate.Range(min=1, max=3660))
    start = PlainDate()
    end = PlainDate()


class PageQuery(_Form):
    """Paging by the last id seen (keyset; stays fast on large tables)."""

    before = fields.Integer(validate=validate.Range(min=1, max=ID_MAX))


class OutboxQuery(PageQuery):
    """Outbox filters."""

    kind = Text(validate=validate.Length(max=32))
    status = fields.String(validate=validate.OneOf(("scheduled", "sent", "failed", "cancelled", "suppressed")))
    customer = Ref()


class PreviewQuery(_Form):
    """Which language to render a mail preview in."""

    locale = Text(validate=validate.Length(min=2, max=16))


class CouponQuery(PageQuery):
    """Coupon list filters (also the export's)."""

    q = Text(validate=validate.Length(max=80))
    campaign = Text(validate=validate.Length(max=64))
    customer = Ref()
    status = fields.String(validate=validate.OneOf(("active", "revoked", "used_up", "expired")))


class CouponForm(_Form):
    """Create one coupon (mirrors ``loyalty.coupons.create``)."""

    kind = fields.String(required=True, validate=validate.OneOf(("percent", "fixed", "free_shipping", "gift")))
    value = Text(validate=validate.Length(max=200))
    code = Text(validate=validate.Length(max=80))
    currency = Currency()
    max_uses = fields.Integer(validate=validate.Range(min=1))
    max_uses_per_customer = fields.Integer(validate=validate.Range(min=1))
    min_order_total = Money()
    starts_at = PlainDate()
    expires_at = PlainDate()
    customer_ref = Ref()
    segment = Text(validate=validate.Length(max=64))
    first_order_only = fields.Boolean()
    campaign = Text(validate=validate.Length(max=64))


class BatchForm(CouponForm):
    """Create many coupons with the same rules."""

    count = fields.Integer(required=True, validate=validate.Range(min=1, max=10_000))
    prefix = Text(validate=validate.Length(max=16))


class GiftCardForm(_Form):
    """Issue a gift card."""

    amount = Money(required=True, allow_zero=False)
    currency = Currency()
    customer_ref = Ref()
    expires_at = PlainDate()


class CustomerQuery(_Form):
    """Find a customer by reference (or its beginning) or exact e-mail."""

    q = Text(validate=validate.Length(max=254))


class SurveyQuery(PageQuery):
    """Survey answer filters: ``detractors`` / ``passives`` / ``promoters``, with a comment only.

    ``rank`` is the group a page starts in (with ``before``, the response id).
    """

    group = fields.String(validate=validate.OneOf(("detractors", "passives", "promoters")))
    comments = fields.Boolean()
    source = Text(validate=validate.Length(max=64))
    rank = fields.Integer(validate=validate.Range(min=0, max=3))


class ConsentQuery(_Form):
    """Look a customer up for the consent ledger."""

    ref = Ref()


class EraseForm(_Form):
    """The erasure needs the reference typed again as confirmation."""

    confirm = Text(required=True, validate=validate.Length(min=1, max=64))
