"""Money: exact ``Decimal`` parsing (floats refused), currencies and rounding."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from babel.numbers import format_currency, get_currency_precision, list_currencies

from .errors import InvalidInput

#: Money is stored with this many decimal places (enough for every ISO 4217 currency).
STORAGE_PLACES = 4
_QUANT_STORAGE = Decimal(1).scaleb(-STORAGE_PLACES)
_KNOWN = frozenset(list_currencies())


def parse_amount(value: object, *, field: str = "amount", allow_zero: bool = True,
                 allow_negative: bool = False) -> Decimal:
    """Turn ``Decimal``, ``int`` or a numeric ``str`` into a ``Decimal``.

    A ``float`` raises ``TypeError`` (binary floats cannot hold money exactly);
    anything else that is not a finite number raises :class:`InvalidInput`.
    """
    if isinstance(value, float):
        raise TypeError(f"{field}: money must be Decimal, int or str, not float")
    if isinstance(value, bool):
        raise InvalidInput.field(field, "Not a valid amount.")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidInput.field(field, "Not a valid amount.") from None
    else:
        raise InvalidInput.field(field, "Not a valid amount.")
    if not amount.is_finite():
        raise InvalidInput.field(field, "Not a valid amount.")
    if amount < 0 and not allow_negative:
        raise InvalidInput.field(field, "Must not be negative.")
    if amount == 0 and not allow_zero:
        raise InvalidInput.field(field, "Must be greater than zero.")
    # the size first, from the exponent (abs() and quantize() raise Overflow/InvalidOperation
    # in the 28-digit context for 1e24 and more)
    if amount and amount.adjusted() >= 14:
        raise InvalidInput.field(field, "Amount too large.")
    if amount != amount.quantize(_QUANT_STORAGE, rounding=ROUND_HALF_EVEN):
        raise InvalidInput.field(field, f"At most {STORAGE_PLACES} decimal places.")
    return amount


def check_currency(code: object, *, field: str = "currency") -> str:
    """Validate an ISO 4217 code and return it upper-cased."""
    if not isinstance(code, str) or code.upper() not in _KNOWN or len(code) != 3:
        raise InvalidInput.field(field, "Unknown currency code.")
    return code.upper()


def minor_unit(currency: str) -> Decimal:
    """The smallest unit of ``currency`` as a Decimal (``0.01`` for EUR, ``1`` for JPY)."""
    return Decimal(1).scaleb(-get_currency_precision(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round half-even to the currency's minor unit."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_EVEN)


def format_money(amount: Decimal, currency: str, locale: str = "en") -> str:
    """Format an amount for a shopper with Babel (``€12.50``, ``12,50 €`` ...)."""
    return format_currency(amount, currency, locale=locale)


def to_storage(amount: Decimal) -> int:
    """Integer in 1/10,000 of a unit, as the database stores it."""
    return int((amount * (10 ** STORAGE_PLACES)).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_storage(value: int) -> Decimal:
    """Inverse of :func:`to_storage`, with two places unless more are used."""
    amount = Decimal(int(value)).scaleb(-STORAGE_PLACES)
    two = amount.quantize(Decimal("0.01"))
    return two if two == amount else amount.normalize()
