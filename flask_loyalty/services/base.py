"""Base of the facades exposed on the extension (``loyalty.coupons``, ``loyalty.consent`` ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..state import LoyaltyState, get_state

if TYPE_CHECKING:
    from ..extension import Loyalty


class Facade:
    """A group of public calls bound to the current app's loyalty state.

    Facades hold no per-app data themselves: every call looks up
    ``current_app.extensions["loyalty"]``, so one :class:`~flask_loyalty.Loyalty`
    object serves any number of apps.
    """

    def __init__(self, extension: Loyalty) -> None:
        self._extension = extension

    @property
    def _state(self) -> LoyaltyState:
        return get_state()
