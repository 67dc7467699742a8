"""Column types: exact money, aware UTC datetimes and references that any value can be compared with."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from ..money import from_storage, to_storage


class Reference(TypeDecorator[str]):
    """A host's reference or a name (``VARCHAR``), safe to compare with any string.

    Stored values are validated as printable text before they are written
    (:class:`~flask_loyalty.schemas.fields.Ref`), but look-ups compare the
    column with whatever a caller passed, and PostgreSQL refuses a NUL
    character anywhere in a query's text parameters (``DataError``).  A NUL
    in a bound value is sent as U+0001 instead: no stored value contains that
    control character either, so the look-up finds nothing, as it would for
    any other unknown reference, on every database.
    """

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Replace NUL characters (never stored) by U+0001 (never stored either)."""
        if isinstance(value, str) and "\x00" in value:
            return value.replace("\x00", "\x01")
        return value


class Money(TypeDecorator[Decimal]):
    """A ``Decimal`` stored exactly as a 64-bit integer of 1/10,000 units.

    Integer storage is exact on SQLite too (whose NUMERIC goes through float),
    and sums computed by the database stay exact.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        """Decimal -> integer of 1/10,000 units."""
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("money must not be a float")
        return to_storage(Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        """Integer of 1/10,000 units -> Decimal."""
        if value is None:
            return None
        return from_storage(int(value))


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes: ``timestamptz`` on PostgreSQL, naive UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        """Aware datetime -> UTC (naive UTC on SQLite); naive input is refused."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError("expected a datetime")
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        moment: datetime = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return moment.replace(tzinfo=None)
        return moment

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Stored value -> aware UTC datetime."""
        if value is None:
            return None
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
