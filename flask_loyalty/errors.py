"""Exceptions raised by flask_loyalty.  All derive from :class:`LoyaltyError`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class LoyaltyError(Exception):
    """Base class of every error the extension raises."""


class NotInitialized(LoyaltyError, RuntimeError):
    """The extension was used for an app on which ``init_app`` was never called."""


class InvalidInput(LoyaltyError, ValueError):
    """Bad input.  ``errors`` maps field name to a list of messages; nothing was written."""

    def __init__(self, errors: Mapping[str, Sequence[str] | Mapping[str, object]] | str,
                 message: str | None = None) -> None:
        if isinstance(errors, str):
            errors = {"_schema": [errors]}
        self.errors: dict[str, object] = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                                          for k, v in errors.items()}
        super().__init__(message or self._summary())

    def _summary(self) -> str:
        parts = []
        for field, msgs in self.errors.items():
            parts.append(f"{field}: {msgs}")
        return "invalid input (" + "; ".join(parts) + ")"

    @classmethod
    def field(cls, name: str, message: str) -> InvalidInput:
        """Shorthand for an error on a single field."""
        return cls({name: [message]})


class NotFound(LoyaltyError, LookupError):
    """A referenced object (order, customer, gift card ...) does not exist."""


class CouponError(LoyaltyError):
    """A coupon cannot be used; ``reason`` is one of the contract's reason codes."""

    REASONS = ("not_found", "not_started", "expired", "exhausted", "already_used", "min_total",
               "not_yours", "segment", "first_order_only", "currency")

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or reason)


class GiftCardError(LoyaltyError):
    """A gift card cannot be charged (unknown, expired, other currency ...); see ``reason``."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or reason)


class TokenError(LoyaltyError):
    """A signed link is tampered with, expired, or made for another page."""

    def __init__(self, reason: str = "invalid") -> None:
        self.reason = reason
        super().__init__(reason)
