"""Secret, readable codes for coupons and gift cards.

Generated codes use an alphabet without look-alikes (Crockford base32 minus
``0 O 1 I L U``: 30 symbols, ~4.9 bits each) drawn with :mod:`secrets`.
Lookups :func:`normalize` what a shopper typed: case, spaces and dashes are
ignored and look-alikes are mapped the Crockford way (``O``→``0``,
``I``/``L``→``1``), so ``wel come-1o`` finds ``WELCOME10``.
"""

from __future__ import annotations

import math
import secrets

from ..errors import InvalidInput

#: Symbols of generated codes: digits 2-9 and letters without I, L, O, U.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
BITS_PER_SYMBOL = math.log2(len(ALPHABET))
#: Shortest generated code (10 symbols = 49 bits; the default 12 = 59 bits).
MIN_LENGTH = 10
#: Longest code accepted anywhere (checked before any query).
MAX_CODE_LENGTH = 64
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_IGNORED = str.maketrans("", "", " -_\t\n\r.")


def normalize(code: str) -> str:
    """The lookup key of ``code``: upper case, no spaces/dashes, look-alikes mapped."""
    return code.upper().translate(_IGNORED).translate(_LOOKALIKES)


def check_code(code: object, *, field: str = "code") -> tuple[str, str]:
    """Validate a host-chosen code; returns ``(display, key)``.

    Letters and digits only (spaces and dashes are allowed as separators),
    3 to 64 characters once normalised.
    """
    if not isinstance(code, str):
        raise InvalidInput.field(field, "Not a valid code.")
    display = " ".join(code.split()).upper()
    if len(display) > 80:
        raise InvalidInput.field(field, f"At most {MAX_CODE_LENGTH} characters.")
    key = normalize(display)
    if len(key) < 3:
        raise InvalidInput.field(field, "At least 3 letters or digits.")
    if len(key) > MAX_CODE_LENGTH:
        raise InvalidInput.field(field, f"At most {MAX_CODE_LENGTH} characters.")
    if not (key.isascii() and key.isalnum()):
        raise InvalidInput.field(field, "Use letters, digits, spaces and dashes only.")
    return display, key


def check_prefix(prefix: object, *, field: str = "prefix") -> str:
    """Validate a code prefix (letters/digits, at most 16); returned normalised."""
    if prefix is None or prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise InvalidInput.field(field, "Not a valid prefix.")
    key = normalize(prefix)
    if not key or len(key) > 16 or not (key.isascii() and key.isalnum()):
        raise InvalidInput.field(field, "Use 1 to 16 letters or digits.")
    return key


def generate(length: int, prefix: str = "") -> tuple[str, str]:
    """A fresh random code as ``(display, key)``; ``display`` is grouped in fours with dashes.

    ``prefix`` must already be normalised (see :func:`check_prefix`).
    """
    if length < MIN_LENGTH:
        raise InvalidInput.field("length", f"Generated codes need at least {MIN_LENGTH} characters.")
    body = "".join(secrets.choice(ALPHABET) for _ in range(length))
    groups = [body[i:i + 4] for i in range(0, len(body), 4)]
    display = "-".join(([prefix] if prefix else []) + groups)
    return display, prefix + body


def generate_many(count: int, length: int, prefix: str = "") -> list[tuple[str, str]]:
    """``count`` fresh random codes at once (same format as :func:`generate`), fast.

    Draws bytes from :func:`secrets.token_bytes` and keeps those below the
    largest multiple of the alphabet size (rejection sampling, so every symbol
    stays equally likely).
    """
    if length < MIN_LENGTH:
        raise InvalidInput.field("length", f"Generated codes need at least {MIN_LENGTH} characters.")
    size = len(ALPHABET)
    limit = 256 - 256 % size
    table = ALPHABET * (limit // size)
    symbols: list[str] = []
    needed = count * length
    while len(symbols) < needed:
        chunk = secrets.token_bytes(int((needed - len(symbols)) * 256 / limit) + 64)
        symbols.extend(table[b] for b in chunk if b < limit)
    text = "".join(symbols[:needed])
    result = []
    for i in range(count):
        body = text[i * length:(i + 1) * length]
        groups = [body[j:j + 4] for j in range(0, length, 4)]
        result.append(("-".join(([prefix] if prefix else []) + groups), prefix + body))
    return result
