"""Absolute, signed, purpose-bound links for shoppers (``loyalty.links``)."""

from __future__ import annotations

from typing import Any

from flask import has_request_context, request

from .. import tokens
from ..errors import InvalidInput
from ..state import LoyaltyState
from .base import Facade

#: Page path (under ``LOYALTY_URL_PREFIX``) of each link purpose.
PATHS = {
    "survey": "/survey/{token}",
    "preferences": "/preferences/{token}",
    "unsubscribe": "/unsubscribe/{token}",
    "wallet": "/wallet/{token}",
    "confirm": "/consent/confirm/{token}",
}


def base_url(state: LoyaltyState) -> str:
    """``LOYALTY_BASE_URL`` if set, else the current request's host URL.

    Outside a request without ``LOYALTY_BASE_URL`` this raises, because a
    link in a mail must be absolute.
    """
    configured = state.config.get("LOYALTY_BASE_URL")
    if configured:
        return str(configured).rstrip("/")
    if has_request_context():
        return request.host_url.rstrip("/")
    raise InvalidInput.field("LOYALTY_BASE_URL", "Set LOYALTY_BASE_URL to build links outside a request.")


def absolute(state: LoyaltyState, path: str) -> str:
    """An absolute URL for a path under the loyalty prefix."""
    prefix = state.config["LOYALTY_URL_PREFIX"].rstrip("/")
    return f"{base_url(state)}{prefix}{path}"


def signed_url(state: LoyaltyState, purpose: str, payload: Any, *, path_purpose: str | None = None,
               query: str = "") -> str:
    """A signed link of ``purpose`` to the page of ``path_purpose`` (default: the same)."""
    token = tokens.make(purpose, payload, state=state)
    return absolute(state, PATHS[path_purpose or purpose].format(token=token)) + query


class Links(Facade):
    """Signed links shoppers follow from mails; each refused by every other page."""

    def survey(self, order_ref: str) -> str:
        """The survey page of one order."""
        return signed_url(self._state, "survey", {"o": order_ref})

    def preferences(self, customer_ref: str) -> str:
        """The customer's preference center (consent per purpose, data export, erasure)."""
        return signed_url(self._state, "preferences", {"c": customer_ref})

    def unsubscribe(self, customer_ref: str, purpose: str = "email_marketing") -> str:
        """One-click unsubscribe from ``purpose`` (GET confirms, POST withdraws; RFC 8058)."""
        return signed_url(self._state, "unsubscribe", {"c": customer_ref, "p": purpose})

    def wallet(self, customer_ref: str) -> str:
        """The shopper's wallet: coupons, points, tier, referral link."""
        return signed_url(self._state, "wallet", {"c": customer_ref})
