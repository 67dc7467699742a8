"""Marshmallow fields shared by every input schema (work with marshmallow 3 and 4)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from marshmallow import ValidationError, fields

from ..errors import InvalidInput
from ..money import check_currency, parse_amount

REF_MAX = 64


class Ref(fields.String):
    """A host reference (customer or order): stripped, 1..64 characters, printable."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValidationError("Not a valid reference.")
        text = str(value).strip()
        if not text:
            raise ValidationError("Must not be empty.")
        if len(text) > REF_MAX:
            raise ValidationError(f"At most {REF_MAX} characters.")
        if not text.isprintable():
            raise ValidationError("Must not contain control characters.")
        return text


class Money(fields.Field):  # type: ignore[type-arg]
    """Decimal, int or numeric string; a float raises ``TypeError`` (never rounded silently)."""

    def __init__(self, *, allow_zero: bool = True, **kwargs: Any) -> None:
        self.allow_zero = allow_zero
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        if isinstance(value, float):
            raise TypeError(f"{attr or 'amount'}: money must be Decimal, int or str, not float")
        try:
            return parse_amount(value, field=attr or "amount", allow_zero=self.allow_zero)
        except InvalidInput as exc:
            messages = next(iter(exc.errors.values()))
            raise ValidationError(messages) from None  # type: ignore[arg-type]

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else str(value)


class Currency(fields.String):
    """An ISO 4217 code, upper-cased."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        try:
            return check_currency(value)
        except InvalidInput:
            raise ValidationError("Unknown currency code.") from None


class AwareDateTime(fields.Field):  # type: ignore[type-arg]
    """A timezone-aware ``datetime`` (object or ISO 8601 string); naive ones are refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValidationError("Not a valid datetime.") from None
        if not isinstance(value, datetime):
            raise ValidationError("Not a valid datetime.")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError("Datetime must be timezone-aware.")
        from ..clock import UTC

        return value.astimezone(UTC)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else value.isoformat()


class DateOrDateTime(fields.Field):  # type: ignore[type-arg]
    """A ``date`` (meaning a whole local day) or an aware ``datetime``, or ISO strings of either."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date | datetime:
        if isinstance(value, str):
            try:
                value = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(
                    value.replace("Z", "+00:00"))
            except ValueError:
                raise ValidationError("Not a valid date or datetime.") from None
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValidationError("Datetime must be timezone-aware.")
            return value
        if isinstance(value, date):
            return value
        raise ValidationError("Not a valid date or datetime.")


class PlainDate(fields.Field):  # type: ignore[type-arg]
    """A calendar date (object or ``YYYY-MM-DD``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if isinstance(value, datetime):
            raise ValidationError("Not a valid date.")
        if isinstance(value, date):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise ValidationError("Not a valid date.")

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else value.isoformat()
