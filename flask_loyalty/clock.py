"""Time: aware UTC in storage, the shop's time zone for what shoppers see."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidInput

UTC = timezone.utc

#: The calendar range of the dates and datetimes the extension takes as input.  Far from
#: ``date.min``/``date.max`` so that "the next day", a time zone or a previous period of
#: ten years never overflows (``OverflowError``).
DATE_MIN = date(1900, 1, 1)
DATE_MAX = date(9998, 12, 31)
DATE_RANGE_MESSAGE = "Dates from 1900-01-01 to 9998-12-31."


def in_date_range(value: date) -> bool:
    """Whether ``value`` (a date, or a datetime's own calendar date) lies in ``DATE_MIN..DATE_MAX``."""
    day = value.date() if isinstance(value, datetime) else value
    return DATE_MIN <= day <= DATE_MAX


def check_date_range(value: date, *, field: str) -> None:
    """Refuse (:class:`InvalidInput` on ``field``) a date or datetime outside ``DATE_MIN..DATE_MAX``."""
    if not in_date_range(value):
        raise InvalidInput.field(field, DATE_RANGE_MESSAGE)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def resolve_now(now: datetime | None, *, field: str = "now") -> datetime:
    """``now`` as aware UTC, or the real current time when ``None``."""
    if now is None:
        return utcnow()
    return ensure_aware(now, field=field)


def ensure_aware(value: object, *, field: str) -> datetime:
    """Refuse naive datetimes and those outside the supported dates (:class:`InvalidInput`);
    convert aware ones to UTC.
    """
    if not isinstance(value, datetime):
        raise InvalidInput.field(field, "Not a valid datetime.")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidInput.field(field, "Datetime must be timezone-aware.")
    check_date_range(value, field=field)
    return value.astimezone(UTC)


def shop_zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for ``LOYALTY_TIMEZONE``; a clear error for a bad name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput.field("LOYALTY_TIMEZONE", f"Unknown time zone {name!r}.") from None


def end_of_local_day(day: date, zone: ZoneInfo) -> datetime:
    """The last instant of ``day`` in ``zone`` (exclusive end: next local midnight), in UTC.

    Computed from the next local midnight so it stays right on DST days.
    """
    next_midnight = datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=zone)
    return (next_midnight - timedelta(microseconds=1)).astimezone(UTC)


def start_of_local_day(day: date, zone: ZoneInfo) -> datetime:
    """Local midnight at the start of ``day`` in ``zone``, in UTC."""
    return datetime.combine(day, time(0, 0), tzinfo=zone).astimezone(UTC)


def local_date(moment: datetime, zone: ZoneInfo) -> date:
    """The calendar date of ``moment`` in the shop's zone."""
    return moment.astimezone(zone).date()


def valid_days_deadline(start: datetime, days: int, zone: ZoneInfo) -> datetime:
    """The expiry of something "valid ``days`` days" from ``start``, in UTC.

    The end of the shop's local day ``days`` days after ``start``'s local
    date, like an ``expires_at`` given as a ``date``: a coupon valid 30 days
    issued at 09:00 on 1 March can be used until 23:59:59.999999 on 31 March
    in ``zone``, whatever the hour it was issued.
    """
    return end_of_local_day(local_date(start, zone) + timedelta(days=int(days)), zone)


def as_deadline(value: object, zone: ZoneInfo, *, field: str) -> datetime | None:
    """An expiry given as a ``date`` (end of that local day) or an aware ``datetime``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return ensure_aware(value, field=field)
    if isinstance(value, date):
        check_date_range(value, field=field)
        return end_of_local_day(value, zone)
    raise InvalidInput.field(field, "Not a valid date or datetime.")


def as_start(value: object, zone: ZoneInfo, *, field: str) -> datetime | None:
    """A start given as a ``date`` (local midnight) or an aware ``datetime``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return ensure_aware(value, field=field)
    if isinstance(value, date):
        check_date_range(value, field=field)
        return start_of_local_day(value, zone)
    raise InvalidInput.field(field, "Not a valid date or datetime.")
