"""flask_loyalty: keep the customers a Flask shop has won.

Public names only; see the documentation for the host-facing contract.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import CouponError, GiftCardError, InvalidInput, LoyaltyError, NotFound, NotInitialized, TokenError
from .extension import Loyalty

try:
    __version__ = version("flask-loyalty")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "CouponError",
    "GiftCardError",
    "InvalidInput",
    "Loyalty",
    "LoyaltyError",
    "NotFound",
    "NotInitialized",
    "TokenError",
    "__version__",
]
