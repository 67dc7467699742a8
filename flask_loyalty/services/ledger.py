"""Points ledger writes: every change of a balance is one row and one atomic update."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from flask_loyalty.models.base import table_of

from ..clock import utcnow
from ..models import Customer, PointsEntry
from ..signals import points_changed
from ..state import LoyaltyState
from ..transaction import PendingSignal

#: The most points one reward, redemption or rate may name.  Balances and ledger
#: deltas are 32-bit integer columns on PostgreSQL (at most 2,147,483,647).
MAX_POINTS = 10**9


@dataclass
class PointsChange:
    """What a ledger write did: the applied delta and the balance after it."""

    entry: PointsEntry | None
    delta: int
    balance: int

    def signal(self, customer_ref: str) -> list[PendingSignal]:
        """The ``points_changed`` signal for this change (none when nothing changed)."""
        if not self.delta or self.entry is None:
            return []
        return [(points_changed, {"customer_ref": customer_ref, "delta": self.delta,
                                  "balance": self.balance, "entry": self.entry})]


def change_points(state: LoyaltyState, customer_id: int, delta: int, *, reason: str,
                  purchase_id: int | None = None, note: str | None = None,
                  clamp: bool = False) -> PointsChange | None:
    """Apply ``delta`` points atomically; ``None`` when it would go below zero.

    With ``clamp=True`` a negative delta larger than the balance takes the
    balance down to zero instead (used when a refund reverses points that were
    already spent).
    """
    session = state.session
    if delta == 0:
        return PointsChange(None, 0, _balance(state, customer_id))
    table = table_of(Customer)
    stmt = (update(table).where(table.c.id == customer_id)
            .values(points_balance=table.c.points_balance + delta)
            .returning(table.c.points_balance))
    if delta < 0:
        stmt = stmt.where(table.c.points_balance + delta >= 0)
    row = session.execute(stmt).first()
    if row is None:
        if not clamp or delta > 0:
            return None
        current = _balance(state, customer_id)
        if current == 0:
            return PointsChange(None, 0, 0)
        return change_points(state, customer_id, -current, reason=reason, purchase_id=purchase_id,
                             note=note, clamp=True)
    balance = int(row[0])
    entry = PointsEntry(customer_id=customer_id, delta=delta, balance_after=balance, reason=reason,
                        purchase_id=purchase_id, note=note, created_at=utcnow())
    session.add(entry)
    # keep an already-loaded Customer consistent with the row we just updated
    loaded = session.identity_map.get(identity_key(Customer, customer_id))
    if loaded is not None:
        set_committed_value(loaded, "points_balance", balance)
    return PointsChange(entry, delta, balance)


def _balance(state: LoyaltyState, customer_id: int) -> int:
    value = state.session.execute(
        select(Customer.points_balance).where(Customer.id == customer_id)).scalar_one()
    return int(value)
