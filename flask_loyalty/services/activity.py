"""The customer's activity version: which customers' purchase aggregates a recompute must refresh.

``Customer.activity_version`` moves with every change to what a customer's
value is computed from.  The checkout and refunds bump it in the update of the
customer row they make anyway; a coupon redeemed or released on an order that
is already recorded bumps the version of that order's customer here.
``analytics.recompute()`` compares it with the version its purchase summary
was computed from (:class:`~flask_loyalty.models.PurchaseSummary`).
"""

from __future__ import annotations

from sqlalchemy import Update, bindparam, select, update

from ..models import Customer, Purchase
from ..models.base import table_of
from ..state import LoyaltyState

_customers = table_of(Customer)
_purchases = table_of(Purchase)

#: ``activity_version + 1`` for the customer of the recorded order ``:order_ref`` (nothing when
#: the order is not recorded yet: the checkout bumps the version when it is).
_TOUCH_ORDER: Update = update(_customers).where(
    _customers.c.id == select(_purchases.c.customer_id)
    .where(_purchases.c.order_ref == bindparam("order_ref")).scalar_subquery()
).values(activity_version=_customers.c.activity_version + 1)


def touch_order(state: LoyaltyState, order_ref: str) -> None:
    """Mark the customer of the recorded order ``order_ref`` as changed (no commit).

    Called before the redemption rows are written, so the customer row is
    locked before the coupon row, in the same order as a refund takes them.
    """
    state.session.execute(_TOUCH_ORDER, {"order_ref": order_ref})


__all__ = ["touch_order"]
