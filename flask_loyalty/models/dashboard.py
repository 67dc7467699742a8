"""Indexes the dashboard's set-wise figures rely on (kept here so the owning models stay focused).

* purchases by time, covering what the overview sums (an index-only range scan);
* customers by first purchase, with their order count (new customers, cohorts) and by net spend (Pareto);
* the points ledger by time (the liability at a past moment);
* sent mails by time with their first open and click (the mail funnel), when the outbox is installed;
* a customer's coupon redemptions (the customer timeline), when coupons are installed.
"""

from __future__ import annotations

from sqlalchemy import Index

from .base import table_of
from .customer import Customer
from .points import PointsEntry
from .purchase import Purchase

_purchase = table_of(Purchase)
_customer = table_of(Customer)
_points = table_of(PointsEntry)

#: All dashboard indexes (for documentation and tests).
INDEXES: list[Index] = [
    Index("ix_loyalty_purchase_dashboard", _purchase.c.placed_at, _purchase.c.customer_id, _purchase.c.total,
          _purchase.c.refunded_total, _purchase.c.currency),
    # orders_count too: a new customer with one order needs no probe of their orders.  On PostgreSQL no
    # checkout update of a customer is HOT (last_purchase_at is indexed), so this costs it nothing extra.
    Index("ix_loyalty_customer_first_purchase", _customer.c.first_purchase_at, _customer.c.orders_count),
    Index("ix_loyalty_customer_total_spent", _customer.c.total_spent, _customer.c.orders_count),
    Index("ix_loyalty_points_entry_created", _points.c.created_at, _points.c.delta),
]

try:
    from .message import Message
except ImportError:  # pragma: no cover - the outbox is not installed in this tree
    pass
else:
    _message = table_of(Message)
    # the whole mail funnel of a period is one index-only range scan (plus a purchase probe per clicked mail)
    INDEXES.append(Index("ix_loyalty_message_sent", _message.c.status, _message.c.sent_at, _message.c.marketing,
                         _message.c.kind, _message.c.customer_id, _message.c.opened_at, _message.c.clicked_at))

try:
    from .coupon import Redemption
except ImportError:  # pragma: no cover - coupons are not installed in this tree
    pass
else:
    _redemption = table_of(Redemption)
    INDEXES.append(Index("ix_loyalty_redemption_customer", _redemption.c.customer_ref, _redemption.c.id))
