"""Marshmallow fields shared by every input schema (work with marshmallow 3 and 4)."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from marshmallow import ValidationError, fields

from ..clock import DATE_RANGE_MESSAGE, in_date_range
from ..errors import InvalidInput
from ..money import check_currency, parse_amount

REF_MAX = 64
#: The largest row id (the ``Integer`` primary keys: 32 bits on PostgreSQL); larger ids,
#: cursors and route arguments are refused before they reach the database driver.
ID_MAX = 2**31 - 1
MSG_CONTROL = "Must not contain control characters."

#: Control characters (C0 with NUL, CR, LF and tab; DEL; C1) and lone surrogates.
_NOT_PRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_printable(text: str) -> bool:
    """Whether ``text`` is one line of printable text: no control character, no lone surrogate.

    PostgreSQL refuses a NUL byte in a text parameter, CR/LF in a header or a
    redirect are refused by werkzeug, and a lone surrogate cannot be encoded:
    none of them belongs in a name, a label, a search term or a URL.  (Less
    strict than ``str.isprintable``: non-breaking spaces and joiners pass.)
    """
    return _NOT_PRINTABLE.search(text) is None


def is_ref(value: object) -> bool:
    """Whether ``value`` is a reference exactly as :class:`Ref` stores it (else it matches no row)."""
    return (isinstance(value, str) and 0 < len(value) <= REF_MAX and value == value.strip()
            and value.isprintable())


class Text(fields.String):
    """One line of printable text (a name, a label, a search term): see :func:`is_printable`.

    Use it (with ``validate.Length``) for every free string of a form, query
    string or service call that reaches a query, so bad bytes are an
    :class:`InvalidInput` on the field, never a driver error.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not is_printable(text):
            raise ValidationError(MSG_CONTROL)
        return text


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
            raise ValidationError(MSG_CONTROL)
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
        if not in_date_range(value):
            raise ValidationError(DATE_RANGE_MESSAGE)
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
        if not isinstance(value, date):     # a datetime is a date too
            raise ValidationError("Not a valid date or datetime.")
        if isinstance(value, datetime) and (value.tzinfo is None or value.utcoffset() is None):
            raise ValidationError("Datetime must be timezone-aware.")
        if not in_date_range(value):
            raise ValidationError(DATE_RANGE_MESSAGE)
        return value


class PlainDate(fields.Field):  # type: ignore[type-arg]
    """A calendar date (object or ``YYYY-MM-DD``) in the supported range (1900–9998).

    ``any_year=True`` lifts the range, for dates only their month and day
    matter in (birthdays, where hosts may store placeholder years).
    """

    def __init__(self, *, any_year: bool = False, **kwargs: Any) -> None:
        self.any_year = any_year
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        day: date | None = None
        if isinstance(value, datetime):
            raise ValidationError("Not a valid date.")
        if isinstance(value, date):
            day = value
        elif isinstance(value, str):
            try:
                day = date.fromisoformat(value)
            except ValueError:
                pass
        if day is None:
            raise ValidationError("Not a valid date.")
        if not self.any_year and not in_date_range(day):
            raise ValidationError(DATE_RANGE_MESSAGE)
        return day

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else value.isoformat()
