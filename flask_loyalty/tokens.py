"""Signed links: one salt per purpose, key rotation, a maximum age per purpose.

Every page a shopper reaches from a mail verifies its token here.  A token
made for one purpose (say ``survey``) is refused by every other page, because
each purpose signs with its own salt.
"""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import TokenError
from .state import LoyaltyState, get_state

#: Default maximum age in seconds per purpose; ``LOYALTY_TOKEN_MAX_AGE`` overrides any of them.
DEFAULT_MAX_AGE: dict[str, int] = {
    "survey": 60 * 86400,
    "preferences": 30 * 86400,
    "unsubscribe": 365 * 86400,   # RFC 8058 links must keep working; at least 60 days
    "wallet": 90 * 86400,
    "confirm": 7 * 86400,
    "track": 365 * 86400,
    "erase": 86400,
}

MIN_UNSUBSCRIBE_AGE = 60 * 86400
_SALT_PREFIX = "flask-loyalty/"


def _key_list(value: Any) -> list[str | bytes]:
    """A fallback setting as a list of keys: one string is one key (never its characters)."""
    if not value:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    return [k for k in value if isinstance(k, (str, bytes)) and k]


def _secret_keys(state: LoyaltyState) -> list[str | bytes]:
    config = state.config
    current = config.get("SECRET_KEY")
    if not current:
        raise TokenError("no_secret_key")
    fallbacks = _key_list(config.get("LOYALTY_SECRET_KEY_FALLBACKS"))
    fallbacks += [k for k in _key_list(config.get("SECRET_KEY_FALLBACKS")) if k not in fallbacks]
    # itsdangerous signs with the last key and accepts all of them.
    return [*reversed(fallbacks), current]


def max_age(purpose: str, state: LoyaltyState | None = None) -> int:
    """Seconds a token of ``purpose`` stays valid."""
    state = state or get_state()
    overrides = state.config.get("LOYALTY_TOKEN_MAX_AGE") or {}
    age = int(overrides.get(purpose, DEFAULT_MAX_AGE.get(purpose, 30 * 86400)))
    if purpose == "unsubscribe":
        age = max(age, MIN_UNSUBSCRIBE_AGE)
    return age


def serializer(purpose: str, state: LoyaltyState | None = None) -> URLSafeTimedSerializer:
    """The serializer of one purpose (its own salt)."""
    state = state or get_state()
    return URLSafeTimedSerializer(_secret_keys(state), salt=_SALT_PREFIX + purpose)  # type: ignore[arg-type]


def make(purpose: str, payload: Any, *, state: LoyaltyState | None = None) -> str:
    """Sign ``payload`` (JSON-serialisable) for ``purpose``."""
    return serializer(purpose, state).dumps(payload)


def load(purpose: str, token: str, *, state: LoyaltyState | None = None,
         max_age_seconds: int | None = None) -> Any:
    """Verify a token of ``purpose``; :class:`TokenError` (``expired``/``invalid``) otherwise."""
    state = state or get_state()
    if not isinstance(token, str) or len(token) > 2048:
        raise TokenError("invalid")
    try:
        return serializer(purpose, state).loads(
            token, max_age=max_age_seconds if max_age_seconds is not None else max_age(purpose, state))
    except SignatureExpired:
        raise TokenError("expired") from None
    except (BadSignature, ValueError, TypeError, UnicodeError):
        raise TokenError("invalid") from None
