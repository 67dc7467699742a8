"""The checkout hook: customers, purchases, refunds and the points they earn."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from sqlalchemy import case, insert, select, update
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from flask_loyalty.models.base import table_of

from ..clock import utcnow
from ..errors import InvalidInput
from ..models import Customer, PointsEntry, Purchase, PurchaseItem
from ..schemas import load
from ..schemas.purchase import CustomerSchema, PurchaseSchema, RefundSchema
from ..signals import purchase_recorded, purchase_refunded
from ..state import LoyaltyState
from ..transaction import PendingSignal, begin_write, dialect_name, finish, insert_or_none
from .ledger import PointsChange, change_points

_customer_schema = CustomerSchema()
_purchase_schema = PurchaseSchema()
_refund_schema = RefundSchema()


def _drop_none(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def get_customer(state: LoyaltyState, customer_ref: str) -> Customer | None:
    """The customer with the host's reference ``customer_ref``, or ``None``."""
    return state.session.execute(select(Customer).where(Customer.ref == customer_ref)).scalar_one_or_none()


def get_purchase(state: LoyaltyState, order_ref: str) -> Purchase | None:
    """The purchase with ``order_ref``, or ``None``."""
    return state.session.execute(select(Purchase).where(Purchase.order_ref == order_ref)).scalar_one_or_none()


def ensure_customer(state: LoyaltyState, customer_ref: str, **fields: Any) -> Customer:
    """Create the customer if missing (race-free), then set the given non-``None`` fields."""
    fields = {k: (v.strip() if k == "email" and isinstance(v, str) else v)
              for k, v in fields.items() if v is not None}
    customer = get_customer(state, customer_ref)
    if customer is None:
        table = table_of(Customer)
        values = {**{c.key: None for c in table.columns}, "ref": customer_ref, "created_at": utcnow(),
                  "orders_count": 0, "total_spent": Decimal(0), "points_balance": 0, **fields}
        values.pop("id")
        pk = insert_or_none(state, table, values, ["ref"])
        if pk is not None:
            # the row holds exactly these values: attach it without reading it back
            customer = Customer(id=pk, **values)
            make_transient_to_detached(customer)
            state.session.add(customer)
            if fields:
                state.run_hooks("customer_changed", customer=customer, changes=dict(fields))
            return customer
        customer = get_customer(state, customer_ref)  # created concurrently
        assert customer is not None
    changes = {k: v for k, v in fields.items() if getattr(customer, k) != v}
    if changes:
        for key, value in changes.items():
            setattr(customer, key, value)
        state.run_hooks("customer_changed", customer=customer, changes=changes)
    return customer


def upsert_customer(state: LoyaltyState, customer_ref: str, *, email: str | None = None,
                    name: str | None = None, locale: str | None = None, birthday: Any = None,
                    commit: bool = True) -> Customer:
    """Create or update a customer; ``None`` fields are left as they are."""
    data = load(_customer_schema, _drop_none(customer_ref=customer_ref, email=email, name=name,
                                             locale=locale, birthday=birthday))
    begin_write(state)
    customer = ensure_customer(state, data.pop("customer_ref"), **data)
    finish(state, commit=commit)
    return customer


def points_for(state: LoyaltyState, total: Decimal, customer: Customer) -> int:
    """Points a purchase of ``total`` earns (``LOYALTY_POINTS_PER_UNIT`` per whole unit).

    Tier multipliers and other programmes adjust this through the
    ``points_multiplier`` hooks.
    """
    per_unit = Decimal(str(state.config["LOYALTY_POINTS_PER_UNIT"]))
    multiplier = Decimal(1)
    for hook in state.hooks.get("points_multiplier", ()):
        multiplier *= Decimal(str(hook(state, customer=customer)))
    return int((total * per_unit * multiplier).to_integral_value(rounding=ROUND_FLOOR))


def record_purchase(state: LoyaltyState, order_ref: str, customer_ref: str, total: Any, *,
                    currency: str | None = None, email: str | None = None, placed_at: Any = None,
                    items: Iterable[Mapping[str, Any]] = (), channel: str = "online",
                    referral_code: str | None = None, commit: bool = True) -> Purchase:
    """Record an order; idempotent on ``order_ref`` (a repeat returns the stored purchase)."""
    if isinstance(total, float):
        raise TypeError("total: money must be Decimal, int or str, not float")
    try:
        item_list = [dict(i) for i in items]
    except (TypeError, ValueError):
        raise InvalidInput.field("items", "Must be a list of objects.") from None
    for item in item_list:
        for key in ("unit_price", "unit_cost"):
            if isinstance(item.get(key), float):
                raise TypeError(f"items.{key}: money must be Decimal, int or str, not float")
    data = load(_purchase_schema, _drop_none(
        order_ref=order_ref, customer_ref=customer_ref, total=total,
        currency=currency or state.config["LOYALTY_CURRENCY"], email=email, placed_at=placed_at,
        items=item_list, channel=channel, referral_code=referral_code))
    session = state.session

    existing = get_purchase(state, data["order_ref"])
    if existing is not None:
        return existing
    begin_write(state)
    customer = ensure_customer(state, data["customer_ref"], email=data.get("email"))
    placed = data.get("placed_at") or utcnow()
    points = points_for(state, data["total"], customer)
    row: dict[str, Any] = {
        "order_ref": data["order_ref"], "customer_id": customer.id, "total": data["total"],
        "refunded_total": Decimal(0), "currency": data["currency"], "placed_at": placed,
        "channel": data["channel"], "points_earned": points, "points_reversed": 0,
        "referral_code": data.get("referral_code"), "created_at": utcnow()}
    purchase_id = insert_or_none(state, table_of(Purchase), row, ["order_ref"])
    if purchase_id is None:     # another caller recorded the same order first
        existing = get_purchase(state, data["order_ref"])
        assert existing is not None
        return existing

    item_rows: list[dict[str, Any]] = [
        {"purchase_id": purchase_id, "category": None, "unit_cost": None, "replenish_after_days": None, **item}
        for item in data["items"]]
    stored_items: list[PurchaseItem] = []
    if item_rows:
        ids = session.execute(insert(table_of(PurchaseItem)).returning(
            table_of(PurchaseItem).c.id, sort_by_parameter_order=True), item_rows).scalars().all()
        stored_items = [PurchaseItem(id=pk, **values) for pk, values in zip(ids, item_rows, strict=True)]
    table = table_of(Customer)
    counters = session.execute(update(table).where(table.c.id == customer.id).values(
        orders_count=table.c.orders_count + 1,
        total_spent=table.c.total_spent + data["total"],
        points_balance=table.c.points_balance + points,
        first_purchase_at=case((table.c.first_purchase_at.is_(None), placed),
                               (table.c.first_purchase_at > placed, placed),
                               else_=table.c.first_purchase_at),
        last_purchase_at=case((table.c.last_purchase_at.is_(None), placed),
                              (table.c.last_purchase_at < placed, placed),
                              else_=table.c.last_purchase_at),
    ).returning(table.c.orders_count, table.c.total_spent, table.c.points_balance,
                table.c.first_purchase_at, table.c.last_purchase_at)).one()
    for key, value in counters._mapping.items():
        set_committed_value(customer, key, value)
    orders_count, balance = counters.orders_count, counters.points_balance
    signals: list[PendingSignal] = []
    if points:
        entry = PointsEntry(customer_id=customer.id, delta=points, balance_after=balance, reason="earn",
                            purchase_id=purchase_id, created_at=utcnow())
        session.add(entry)
        signals += PointsChange(entry, points, balance).signal(customer.ref)
    # The row was just written with these values: put it in the session without reading it back.
    purchase = Purchase(id=purchase_id, **row)
    make_transient_to_detached(purchase)
    session.add(purchase)
    for stored in stored_items:
        make_transient_to_detached(stored)
        session.add(stored)
    set_committed_value(purchase, "items", stored_items)
    state.run_hooks("purchase", purchase=purchase, customer=customer,
                    first=orders_count == 1, signals=signals)
    finish(state, commit=commit,
           signals=[(purchase_recorded, {"purchase": purchase, "customer": customer}), *signals])
    return purchase


def record_refund(state: LoyaltyState, order_ref: str, *, amount: Any = None,
                  commit: bool = True) -> Purchase:
    """Refund an order in part (``amount``) or whole (``None``); never past its total.

    Points earned on the refunded part are reversed in proportion; hooks
    cancel pending messages and release coupons of the order.
    """
    if isinstance(amount, float):
        raise TypeError("amount: money must be Decimal, int or str, not float")
    data = load(_refund_schema, _drop_none(order_ref=order_ref, amount=amount))
    session = state.session
    begin_write(state)
    query = select(Purchase).where(Purchase.order_ref == data["order_ref"])
    if dialect_name(state) == "postgresql":
        query = query.with_for_update(of=table_of(Purchase))
    purchase = session.execute(query).unique().scalar_one_or_none()
    if purchase is None:
        raise InvalidInput.field("order_ref", "Unknown order.")
    session.refresh(purchase)
    remaining = purchase.total - purchase.refunded_total
    wanted = data.get("amount")
    refund = remaining if wanted is None else min(wanted, remaining)
    if refund <= 0:
        return purchase
    new_refunded = purchase.refunded_total + refund
    if purchase.total > 0:
        keep = int((Decimal(purchase.points_earned) * (purchase.total - new_refunded) / purchase.total)
                   .to_integral_value(rounding=ROUND_FLOOR))
    else:
        keep = 0
    reverse = max(purchase.points_earned - purchase.points_reversed - keep, 0)
    table = table_of(Purchase)
    result = session.execute(update(table).where(
        table.c.id == purchase.id, table.c.refunded_total + refund <= table.c.total
    ).values(refunded_total=table.c.refunded_total + refund,
             points_reversed=table.c.points_reversed + reverse))
    if not result.rowcount:  # type: ignore[attr-defined]  # pragma: no cover - guarded by the lock
        return purchase
    ctable = table_of(Customer)
    session.execute(update(ctable).where(ctable.c.id == purchase.customer_id).values(
        total_spent=case((ctable.c.total_spent >= refund, ctable.c.total_spent - refund), else_=0)))
    signals: list[PendingSignal] = []
    change = change_points(state, purchase.customer_id, -reverse, reason="refund",
                           purchase_id=purchase.id, clamp=True)
    if change is not None:
        signals += change.signal(purchase.customer.ref)
    session.flush()
    session.refresh(purchase)
    full = purchase.refunded_total >= purchase.total
    state.run_hooks("refund", purchase=purchase, amount=refund, full=full, signals=signals)
    finish(state, commit=commit,
           signals=[(purchase_refunded, {"purchase": purchase, "amount": refund}), *signals])
    return purchase
