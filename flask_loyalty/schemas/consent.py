"""Input schemas of the consent calls (grant, withdraw, confirm, capture)."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from ..models.consent import METHODS
from .fields import Ref

PURPOSE_RE = r"^[a-z][a-z0-9_]{0,63}$"


class PurposeSchema(Schema):
    """A customer and a purpose name (``has``, ``withdraw``)."""

    class Meta:
        unknown = RAISE

    customer_ref = Ref(required=True)
    purpose = fields.String(required=True, validate=validate.Regexp(PURPOSE_RE, error="Unknown consent purpose."))


class WithdrawSchema(PurposeSchema):
    """``withdraw`` arguments."""

    source = fields.String(required=True, validate=validate.Length(min=1, max=64))
    method = fields.String(load_default="api", validate=validate.OneOf(METHODS))
    ip = fields.String(allow_none=True, validate=validate.Length(max=64))


class GrantSchema(WithdrawSchema):
    """``grant`` arguments."""

    wording = fields.String(allow_none=True, validate=validate.Length(min=1, max=5000))
    double_opt_in = fields.Boolean(allow_none=True)
    locale = fields.String(allow_none=True, validate=validate.Regexp(
        r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$", error="Not a valid locale."))
