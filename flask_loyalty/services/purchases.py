"""The checkout hook: customers, purchases, refunds and the points they earn."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Connection, Integer, bindparam, case, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, make_transient_to_detached, scoped_session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from flask_loyalty.models.base import table_of

from ..clock import utcnow
from ..errors import InvalidInput
from ..models import Customer, PointsEntry, Purchase, PurchaseItem
from ..models.types import Money, UTCDateTime
from ..money import to_storage
from ..schemas import load
from ..schemas.fields import is_ref
from ..schemas.purchase import CustomerSchema, PurchaseSchema, RefundSchema
from ..signals import purchase_recorded, purchase_refunded
from ..state import LoyaltyState
from ..transaction import PendingSignal, abandon, begin_write, dialect_name, finish, insert_or_none
from .ledger import PointsChange, change_points

_M = TypeVar("_M")

_customer_schema = CustomerSchema()
_purchase_schema = PurchaseSchema()
_refund_schema = RefundSchema()


def _drop_none(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def get_customer(state: LoyaltyState, customer_ref: str) -> Customer | None:
    """The customer with the host's reference ``customer_ref``, or ``None``.

    A value no reference can be (not a string, empty, too long, padded, a
    control character such as NUL, which PostgreSQL refuses in a query) is
    simply unknown.
    """
    if not is_ref(customer_ref):
        return None
    return state.session.execute(select(Customer).where(Customer.ref == customer_ref)).scalar_one_or_none()


def get_purchase(state: LoyaltyState, order_ref: str) -> Purchase | None:
    """The purchase with ``order_ref``, or ``None`` (also for a value no reference can be)."""
    if not is_ref(order_ref):
        return None
    return state.session.execute(select(Purchase).where(Purchase.order_ref == order_ref)).scalar_one_or_none()


def ensure_customer(state: LoyaltyState, customer_ref: str, **fields: Any) -> Customer:
    """Create the customer if missing (race-free), then set the given non-``None`` fields."""
    fields = {k: (v.strip() if k == "email" and isinstance(v, str) else v)
              for k, v in fields.items() if v is not None}
    customer = get_customer(state, customer_ref)
    if customer is None:
        values = {**_NEW_CUSTOMER, "ref": customer_ref, "created_at": utcnow(), **fields}
        pk = insert_or_none(state, table_of(Customer), values, ["ref"])
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


#: Fields ``upsert_customer(..., clear=...)`` can remove (``None`` means "leave as it is").
CLEARABLE = ("birthday",)


def upsert_customer(state: LoyaltyState, customer_ref: str, *, email: str | None = None,
                    name: str | None = None, locale: str | None = None, birthday: Any = None,
                    clear: Iterable[str] = (), commit: bool = True) -> Customer:
    """Create or update a customer; ``None`` fields are left as they are, those named in ``clear`` removed."""
    cleared = _cleared_fields(clear, birthday=birthday)
    data = load(_customer_schema, _drop_none(customer_ref=customer_ref, email=email, name=name,
                                             locale=locale, birthday=birthday))
    begin_write(state)
    customer = ensure_customer(state, data.pop("customer_ref"), **data)
    removed = {key: None for key in cleared if getattr(customer, key) is not None}
    if removed:
        for key in removed:
            setattr(customer, key, None)
        state.run_hooks("customer_changed", customer=customer, changes=removed)
    finish(state, commit=commit)
    return customer


def _cleared_fields(clear: Iterable[str], **given: Any) -> tuple[str, ...]:
    """The field names in ``clear``: each one of :data:`CLEARABLE` and not also given a value."""
    names = (clear,) if isinstance(clear, str) else tuple(clear)
    unknown = [n for n in names if n not in CLEARABLE]
    if unknown:
        raise InvalidInput.field("clear", f"Only {', '.join(CLEARABLE)} can be cleared, not {unknown[0]!r}.")
    both = [n for n in names if given.get(n) is not None]
    if both:
        raise InvalidInput.field("clear", f"{both[0]} is both given and cleared.")
    return names


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


@dataclass(frozen=True)
class _CheckoutStatements:
    """The checkout's statements, built once per dialect (building one costs more than running it)."""

    customer_by_ref: Any
    insert_customer: Any
    insert_purchase: Any
    insert_items: Any
    count_purchase: Any
    insert_points: Any


@functools.cache
def _checkout_statements(dialect: str) -> _CheckoutStatements:
    customers, purchases = table_of(Customer), table_of(Purchase)
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    placed = bindparam("placed", type_=customers.c.last_purchase_at.type)
    return _CheckoutStatements(
        customer_by_ref=select(*customers.columns).where(customers.c.ref == bindparam("ref")),
        insert_customer=dialect_insert(customers).on_conflict_do_nothing(index_elements=["ref"])
        .returning(customers.c.id),
        insert_purchase=dialect_insert(purchases).on_conflict_do_nothing(index_elements=["order_ref"])
        .returning(purchases.c.id),
        insert_items=insert(table_of(PurchaseItem)),
        count_purchase=update(customers).where(customers.c.id == bindparam("customer_id")).values(
            orders_count=customers.c.orders_count + 1,
            activity_version=customers.c.activity_version + 1,
            total_spent=customers.c.total_spent + bindparam("total", type_=customers.c.total_spent.type),
            points_balance=customers.c.points_balance + bindparam("points", type_=BigInteger()),
            first_purchase_at=case((customers.c.first_purchase_at.is_(None), placed),
                                   (customers.c.first_purchase_at > placed, placed),
                                   else_=customers.c.first_purchase_at),
            last_purchase_at=case((customers.c.last_purchase_at.is_(None), placed),
                                  (customers.c.last_purchase_at < placed, placed),
                                  else_=customers.c.last_purchase_at),
        ).returning(customers.c.orders_count, customers.c.total_spent, customers.c.points_balance,
                    customers.c.first_purchase_at, customers.c.last_purchase_at, customers.c.activity_version),
        insert_points=insert(table_of(PointsEntry)).returning(table_of(PointsEntry).c.id),
    )


def _attach(session: Session | scoped_session[Session], cls: type[_M], values: Mapping[str, Any]) -> _M:
    """The session's object for a row just read or written, without reading it (again)."""
    loaded = session.identity_map.get(identity_key(cls, values["id"]))
    if loaded is not None:
        return loaded
    obj = cls(**values)
    make_transient_to_detached(obj)
    session.add(obj)
    return obj


def record_purchase(state: LoyaltyState, order_ref: str, customer_ref: str, total: Any, *,
                    currency: str | None = None, email: str | None = None, placed_at: Any = None,
                    items: Iterable[Mapping[str, Any]] = (), channel: str = "online",
                    referral_code: str | None = None, commit: bool = True) -> Purchase:
    """Record an order; idempotent on ``order_ref`` (a repeat returns the stored purchase).

    A handful of prebuilt statements: the customer (created if new), the
    purchase (``INSERT ... ON CONFLICT (order_ref) DO NOTHING``, which is what
    makes concurrent repeats safe), its items, the customer's counters and
    points in one ``UPDATE ... RETURNING``, and the points ledger row.  The
    order's mails are planned from the purchase row by the next dispatch (see
    :func:`flask_loyalty.services.plan.expand_pending`).
    """
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
    dialect = dialect_name(state)
    statements = _checkout_statements(dialect)
    begin_write(state)
    connection = session.connection()
    email = data.get("email")
    email = email.strip() if email else None
    found = connection.execute(statements.customer_by_ref, {"ref": data["customer_ref"]}).first()
    new_customer: dict[str, Any] | None = None
    if found is None:
        new_customer = {**_NEW_CUSTOMER, "ref": data["customer_ref"], "email": email, "created_at": utcnow()}
        pk = connection.execute(statements.insert_customer, new_customer).scalar()
        if pk is None:  # created concurrently
            found = connection.execute(statements.customer_by_ref, {"ref": data["customer_ref"]}).one()
            new_customer = None
        else:
            new_customer["id"] = pk
    customer = _attach(session, Customer, found._asdict() if found is not None else new_customer or {})
    placed = data.get("placed_at") or utcnow()
    points = points_for(state, data["total"], customer)
    row: dict[str, Any] = {
        "order_ref": data["order_ref"], "customer_id": customer.id, "total": data["total"],
        "refunded_total": Decimal(0), "currency": data["currency"], "placed_at": placed,
        "channel": data["channel"], "points_earned": points, "points_reversed": 0,
        "referral_code": data.get("referral_code"), "created_at": utcnow(),
        "planned_at": None if _plans_orders(state) else utcnow(), **_margin_parts(data["items"])}
    written = _write_order(connection, statements, dialect, row, data["items"])
    if written is None:     # a repeat, or another caller recorded the same order first
        if new_customer is not None:  # a repeat under another customer ref: undo the new customer
            session.expunge(customer)
            connection.execute(delete(table_of(Customer)).where(table_of(Customer).c.id == customer.id))
        existing = get_purchase(state, data["order_ref"])
        assert existing is not None
        finish(state, commit=commit)    # no signals: nothing changed, but commit= still ends the call
        return existing
    purchase_id, counters, entry_id = written
    if new_customer is not None:
        if email:
            state.run_hooks("customer_changed", customer=customer, changes={"email": email})
    elif email and customer.email != email:
        customer.email = email
        state.run_hooks("customer_changed", customer=customer, changes={"email": email})
    for key, value in counters.items():
        set_committed_value(customer, key, value)
    signals: list[PendingSignal] = []
    if points:
        entry = PointsEntry(id=entry_id, customer_id=customer.id, delta=points,
                            balance_after=counters["points_balance"], reason="earn", purchase_id=purchase_id,
                            note=None, created_at=row["created_at"])
        make_transient_to_detached(entry)
        signals += PointsChange(entry, points, counters["points_balance"]).signal(customer.ref)
    # The row was just written with these values: put it in the session without reading it back.
    purchase = _attach(session, Purchase, {"id": purchase_id, **row})
    set_committed_value(purchase, "customer", customer)
    state.run_hooks("purchase", purchase=purchase, customer=customer,
                    first=counters["orders_count"] == 1, signals=signals)
    finish(state, commit=commit,
           signals=[(purchase_recorded, {"purchase": purchase, "customer": customer}), *signals])
    return purchase


def _margin_parts(items: list[dict[str, Any]]) -> dict[str, Decimal | None]:
    """The order's ``known_margin`` (items with a unit cost) and ``uncosted_total`` (items without one).

    An order without items has no known cost at all: ``uncosted_total`` is
    ``None`` and the lifetime value applies ``LOYALTY_DEFAULT_MARGIN`` to its
    total.
    """
    known, uncosted = Decimal(0), Decimal(0)
    for item in items:
        quantity, price, cost = item["quantity"], item["unit_price"], item.get("unit_cost")
        if cost is None:
            uncosted += quantity * price
        else:
            known += quantity * (price - cost)
    return {"known_margin": known, "uncosted_total": uncosted if items else None}


def _write_order(connection: Connection, statements: _CheckoutStatements, dialect: str, row: dict[str, Any],
                 items: list[dict[str, Any]]) -> tuple[int, dict[str, Any], int | None] | None:
    """Write purchase, items, counters and ledger row; ``None`` when ``order_ref`` is already taken.

    Returns the purchase id, the customer's new counters and the ledger row's
    id (``None`` when no points were earned).  One statement on PostgreSQL
    (data-modifying CTEs), four on other databases.
    """
    counters_of = {"customer_id": row["customer_id"], "total": row["total"], "points": row["points_earned"],
                   "placed": row["placed_at"]}
    entry_of = {"customer_id": row["customer_id"], "delta": row["points_earned"], "reason": "earn",
                "note": None, "created_at": row["created_at"]}
    if dialect == "postgresql":
        result = connection.execute(_PG_CHECKOUT, {**row, **counters_of, **_item_arrays(items)}).first()
        if result is None:
            return None
        values = result._asdict()
        return values.pop("purchase_id"), values, values.pop("entry_id")
    purchase_id = connection.execute(statements.insert_purchase, row).scalar()
    if purchase_id is None:
        return None
    if items:
        connection.execute(statements.insert_items, [
            {"purchase_id": purchase_id, "category": None, "unit_cost": None, "replenish_after_days": None,
             **item} for item in items])
    counters = dict(connection.execute(statements.count_purchase, counters_of).one()._mapping)
    entry_id = None
    if row["points_earned"]:
        entry_id = connection.execute(statements.insert_points, {
            **entry_of, "balance_after": counters["points_balance"], "purchase_id": purchase_id}).scalar_one()
    return purchase_id, counters, entry_id


_ITEM_COLUMNS = ("sku", "name", "category", "quantity", "unit_price", "unit_cost", "replenish_after_days")

def _item_arrays(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Items as one array per column (money in storage units) for ``unnest``."""
    columns: dict[str, list[Any]] = {name: [item.get(name) for item in items] for name in _ITEM_COLUMNS}
    for money in ("unit_price", "unit_cost"):
        columns[money] = [None if value is None else to_storage(value) for value in columns[money]]
    return columns


#: PostgreSQL: the whole order in one round trip.  The purchase ``INSERT ... ON CONFLICT DO NOTHING``
#: feeds the others, so a repeated order writes nothing at all; items come from ``unnest`` of one
#: array per column; counters and points are one ``UPDATE``; the ledger row reads the new balance.
_PG_CHECKOUT = text("""
WITH p AS (
    INSERT INTO loyalty_purchase (order_ref, customer_id, total, refunded_total, currency, placed_at, channel,
                                  points_earned, points_reversed, referral_code, created_at, planned_at,
                                  known_margin, uncosted_total)
    VALUES (:order_ref, :customer_id, :total, 0, :currency, :placed_at, :channel,
            :points_earned, 0, :referral_code, :created_at, :planned_at, :known_margin, :uncosted_total)
    ON CONFLICT (order_ref) DO NOTHING
    RETURNING id
), i AS (
    INSERT INTO loyalty_purchase_item (purchase_id, sku, name, category, quantity, unit_price, unit_cost,
                                       replenish_after_days)
    SELECT p.id, u.* FROM p, unnest(CAST(:sku AS varchar[]), CAST(:name AS varchar[]),
        CAST(:category AS varchar[]), CAST(:quantity AS integer[]), CAST(:unit_price AS bigint[]),
        CAST(:unit_cost AS bigint[]), CAST(:replenish_after_days AS integer[])) AS u
), c AS (
    UPDATE loyalty_customer SET
        orders_count = orders_count + 1,
        activity_version = activity_version + 1,
        total_spent = total_spent + :total,
        points_balance = points_balance + :points,
        first_purchase_at = CASE WHEN first_purchase_at IS NULL OR first_purchase_at > :placed
                                 THEN :placed ELSE first_purchase_at END,
        last_purchase_at = CASE WHEN last_purchase_at IS NULL OR last_purchase_at < :placed
                                THEN :placed ELSE last_purchase_at END
    WHERE id = :customer_id AND EXISTS (SELECT 1 FROM p)
    RETURNING orders_count, total_spent, points_balance, first_purchase_at, last_purchase_at, activity_version
), e AS (
    INSERT INTO loyalty_points_entry (customer_id, delta, balance_after, reason, purchase_id, note, created_at)
    SELECT :customer_id, :points, c.points_balance, 'earn', p.id, NULL, :created_at
    FROM p, c WHERE :points <> 0
    RETURNING id
)
SELECT p.id AS purchase_id, c.orders_count, c.total_spent, c.points_balance, c.first_purchase_at,
       c.last_purchase_at, c.activity_version, (SELECT id FROM e) AS entry_id
FROM p, c
""").bindparams(
    bindparam("total", type_=Money()), bindparam("placed_at", type_=UTCDateTime()),
    bindparam("placed", type_=UTCDateTime()), bindparam("created_at", type_=UTCDateTime()),
    bindparam("planned_at", type_=UTCDateTime()), bindparam("known_margin", type_=Money()),
    bindparam("uncosted_total", type_=Money()),
).columns(purchase_id=Integer(), orders_count=Integer(), total_spent=Money(), points_balance=BigInteger(),
          first_purchase_at=UTCDateTime(), last_purchase_at=UTCDateTime(), activity_version=BigInteger(),
          entry_id=Integer())


def _plans_orders(state: LoyaltyState) -> bool:
    """Whether any order-driven step of the plan is on (else a purchase is born planned)."""
    from .plan import ORDER_STEPS, step

    return any(step(state, name) is not None for name in ORDER_STEPS)


#: Column values of a customer created by the checkout (``ref``, ``email`` and ``created_at`` added).
_NEW_CUSTOMER: dict[str, Any] = {
    **{column.key: None for column in table_of(Customer).columns if column.key != "id"},
    "orders_count": 0, "total_spent": Decimal(0), "points_balance": 0, "activity_version": 0}


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
        abandon(state, commit=commit)
        raise InvalidInput.field("order_ref", "Unknown order.")
    session.refresh(purchase)
    remaining = purchase.total - purchase.refunded_total
    wanted = data.get("amount")
    refund = remaining if wanted is None else min(wanted, remaining)
    if refund <= 0:     # nothing left to refund: no signals, but commit= still ends the call
        finish(state, commit=commit)
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
        finish(state, commit=commit)
        return purchase
    ctable = table_of(Customer)
    session.execute(update(ctable).where(ctable.c.id == purchase.customer_id).values(
        total_spent=case((ctable.c.total_spent >= refund, ctable.c.total_spent - refund), else_=0),
        activity_version=ctable.c.activity_version + 1))
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
