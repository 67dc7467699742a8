"""The checkout hook: customers, purchases, refunds, points (CONTRACT §2, §3)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, event, func, select, text

from flask_loyalty import InvalidInput, LoyaltyError
from flask_loyalty.models import Customer, PointsEntry, Purchase
from flask_loyalty.signals import points_changed, purchase_recorded, purchase_refunded

ITEMS = [
    {"sku": "TEA-1", "name": "Green tea", "quantity": 2, "unit_price": "10.00", "category": "tea"},
    {"sku": "MUG-1", "name": "Mug", "quantity": 1, "unit_price": "5.50", "unit_cost": "2.00"},
]


def test_record_purchase_creates_customer_and_points(shop):
    p = shop.loyalty.record_purchase("o1", "c1", Decimal("25.50"), email="a@example.com", items=ITEMS,
                                     channel="store")
    assert p.order_ref == "o1" and p.customer_ref == "c1"
    assert p.total == Decimal("25.50") and isinstance(p.total, Decimal)
    assert p.refunded_total == Decimal("0.00") and p.currency == "EUR"
    assert p.points_earned == 25 and p.channel == "store"
    assert p.placed_at.tzinfo is not None
    c = shop.loyalty.customer("c1")
    assert c.email == "a@example.com" and c.orders_count == 1 and c.total_spent == Decimal("25.50")
    assert c.first_purchase_at == c.last_purchase_at == p.placed_at
    assert c.points_balance == 25
    assert [i.sku for i in p.items] == ["TEA-1", "MUG-1"]


def test_money_is_exact(shop):
    p = shop.loyalty.record_purchase("o1", "c1", "0.1", currency="usd")
    shop.loyalty.record_purchase("o2", "c1", "0.2")
    assert p.total == Decimal("0.10") and p.currency == "USD"
    assert shop.loyalty.customer("c1").total_spent == Decimal("0.30")
    total = shop.db.session.execute(select(func.sum(Purchase.total))).scalar_one()
    assert total == Decimal("0.30")


def test_record_purchase_is_idempotent(shop):
    seen = []
    with purchase_recorded.connected_to(lambda app, **kw: seen.append(kw["purchase"].order_ref), shop.app):
        a = shop.loyalty.record_purchase("o1", "c1", 10)
        b = shop.loyalty.record_purchase("o1", "c1", 99)
    assert a.id == b.id and b.total == Decimal("10.00")
    assert seen == ["o1"]
    c = shop.loyalty.customer("c1")
    assert c.orders_count == 1 and c.points_balance == 10


@pytest.mark.parametrize("kwargs,field", [
    ({"total": 1.5}, None),
    ({"total": "-1"}, "total"),
    ({"total": "abc"}, "total"),
    ({"total": "10", "currency": "XXY"}, "currency"),
    ({"total": "10", "placed_at": datetime(2026, 1, 1)}, "placed_at"),
    ({"total": "10", "order_ref": ""}, "order_ref"),
    ({"total": "10", "order_ref": "x" * 65}, "order_ref"),
    ({"total": "10", "items": [{"sku": "a", "name": "b", "quantity": 0, "unit_price": "1"}]}, "items"),
    # each amount fits, but their sum over the items could not be stored as one amount
    ({"total": "10", "items": [{"sku": "a", "name": "b", "quantity": 1_000_000, "unit_price": "1000000000"}]},
     "items"),
    ({"total": "10", "items": [{"sku": "a", "name": "b", "quantity": 2, "unit_price": "1",
                                "unit_cost": "60000000000000"}]}, "items"),
    ({"total": "10", "channel": "pigeon"}, "channel"),
    ({"total": "10", "email": "not-an-email"}, "email"),
])
def test_bad_input_writes_nothing(shop, kwargs, field):
    args = {"order_ref": "o1", "customer_ref": "c1", **kwargs}
    order_ref, customer_ref, total = args.pop("order_ref"), args.pop("customer_ref"), args.pop("total")
    if field is None:
        with pytest.raises(TypeError):
            shop.loyalty.record_purchase(order_ref, customer_ref, total, **args)
    else:
        with pytest.raises(InvalidInput) as info:
            shop.loyalty.record_purchase(order_ref, customer_ref, total, **args)
        assert field in info.value.errors
        assert isinstance(info.value, LoyaltyError) and isinstance(info.value, ValueError)
    assert shop.db.session.execute(select(func.count(Purchase.id))).scalar_one() == 0
    assert shop.db.session.execute(select(func.count(Customer.id))).scalar_one() == 0


def test_refund_partial_and_full(shop):
    events = []
    with purchase_refunded.connected_to(lambda app, **kw: events.append(kw["amount"]), shop.app):
        shop.loyalty.record_purchase("o1", "c1", "100.00")
        p = shop.loyalty.record_refund("o1", amount="30")
        assert p.refunded_total == Decimal("30.00") and p.points_earned == 100
        assert shop.loyalty.customer("c1").points_balance == 70
        p = shop.loyalty.record_refund("o1")
        assert p.refunded_total == Decimal("100.00")
        p = shop.loyalty.record_refund("o1")
        p = shop.loyalty.record_refund("o1", amount="5")
    assert p.refunded_total == p.total
    assert events == [Decimal("30.00"), Decimal("70.00")]
    c = shop.loyalty.customer("c1")
    assert c.points_balance == 0 and c.total_spent == Decimal("0")


def test_refund_unknown_order(shop):
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.record_refund("nope")
    assert "order_ref" in info.value.errors
    with pytest.raises(TypeError):
        shop.loyalty.record_refund("nope", amount=1.0)


def test_commit_false_joins_host_transaction(shop):
    shop.db.session.add(shop.host_order(ref="o1"))
    shop.loyalty.record_purchase("o1", "c1", 10, commit=False)
    shop.db.session.rollback()
    assert shop.db.session.execute(select(func.count(Purchase.id))).scalar_one() == 0
    assert shop.db.session.execute(select(func.count(Customer.id))).scalar_one() == 0
    shop.db.session.add(shop.host_order(ref="o2"))
    shop.loyalty.record_purchase("o2", "c1", 10, commit=False)
    shop.db.session.commit()
    assert shop.loyalty.purchase("o2") is not None


def test_signals_have_app_as_sender(shop):
    got = []
    with points_changed.connected_to(lambda sender, **kw: got.append((sender, kw["delta"])), shop.app):
        shop.loyalty.record_purchase("o1", "c1", 7)
    assert got == [(shop.app, 7)]


def test_upsert_customer(shop):
    c = shop.loyalty.upsert_customer("c1", email="x@example.com", locale="ro", birthday="1990-05-04")
    assert c.locale == "ro" and c.birthday.isoformat() == "1990-05-04"
    c = shop.loyalty.upsert_customer("c1", name="Ana")
    assert c.email == "x@example.com" and c.name == "Ana"
    with pytest.raises(InvalidInput):
        shop.loyalty.upsert_customer("c2", birthday="not a date")
    assert shop.loyalty.customer("c2") is None


def test_upsert_customer_clears_a_birthday_only_when_asked(shop):
    shop.loyalty.upsert_customer("c1", email="x@example.com", birthday="1990-05-04")
    seen = []
    shop.loyalty.state.hooks.setdefault("customer_changed", []).append(
        lambda state, *, customer, changes: seen.append(changes))
    assert shop.loyalty.upsert_customer("c1", birthday=None).birthday.isoformat() == "1990-05-04"  # None: unchanged
    c = shop.loyalty.upsert_customer("c1", name="Ana", clear=("birthday",))
    assert c.birthday is None and c.name == "Ana" and shop.loyalty.customer("c1").birthday is None
    assert {"birthday": None} in seen
    assert shop.loyalty.upsert_customer("c1", clear="birthday").birthday is None   # idempotent; a str is one name
    for clear in (("email",), ("birthday", "name")):
        with pytest.raises(InvalidInput) as exc:
            shop.loyalty.upsert_customer("c1", clear=clear)
        assert "clear" in exc.value.errors
    with pytest.raises(InvalidInput):
        shop.loyalty.upsert_customer("c1", birthday="1990-05-04", clear=("birthday",))
    assert shop.loyalty.customer("c1").birthday is None


def test_placed_at_orders_first_and_last(shop):
    t0 = datetime(2026, 1, 10, 12, tzinfo=timezone.utc)
    shop.loyalty.record_purchase("o2", "c1", 5, placed_at=t0 + timedelta(days=5))
    shop.loyalty.record_purchase("o1", "c1", 5, placed_at=t0)
    c = shop.loyalty.customer("c1")
    assert c.first_purchase_at == t0 and c.last_purchase_at == t0 + timedelta(days=5)


def test_repeat_under_another_customer_ref_changes_nothing(shop):
    first = shop.loyalty.record_purchase("o1", "c1", 10, email="a@example.com")
    again = shop.loyalty.record_purchase("o1", "c2", 99, email="b@example.com")
    assert again.id == first.id and again.customer_ref == "c1"
    assert shop.loyalty.customer("c2") is None
    assert shop.db.session.execute(select(func.count(Customer.id))).scalar_one() == 1


def test_checkout_is_a_handful_of_statements(shop):
    """A returning customer's order: customer, purchase, items, counters+points, ledger row."""
    shop.loyalty.record_purchase("o1", "c1", 10, items=ITEMS)
    statements: list[str] = []
    engine = shop.db.engine

    def seen(conn, cursor, statement, *args):
        statements.append(statement.split()[0])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        shop.loyalty.record_purchase("o2", "c1", 10, items=ITEMS)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    if engine.dialect.name == "postgresql":   # one data-modifying WITH writes the whole order
        assert statements == ["SELECT", "WITH"]
    else:                                      # SQLite's write lock first
        assert statements == ["UPDATE", "SELECT", "INSERT", "INSERT", "UPDATE", "INSERT"]
    assert shop.loyalty.purchase("o2").points_earned == 10


def test_items_with_missing_optional_fields_and_no_items(shop):
    p = shop.loyalty.record_purchase("o1", "c1", 3, items=[
        {"sku": "A", "name": "a", "quantity": 1, "unit_price": "1"},
        {"sku": "B", "name": "b", "quantity": 2, "unit_price": "1.00"}])
    shop.db.session.expire_all()
    assert [(i.sku, i.quantity, i.unit_price, i.category, i.unit_cost, i.replenish_after_days)
            for i in p.items] == [("A", 1, Decimal("1.00"), None, None, None),
                                  ("B", 2, Decimal("1.00"), None, None, None)]
    q = shop.loyalty.record_purchase("o2", "c1", 0)
    assert q.items == [] and q.points_earned == 0
    assert shop.loyalty.customer("c1").orders_count == 2


def test_same_order_from_16_threads(make_shop):
    s = make_shop()
    barrier = threading.Barrier(16)
    errors, ids = [], []

    def worker():
        with s.app.app_context():
            try:
                barrier.wait()
                ids.append(s.loyalty.record_purchase("same", "c1", "12.00").id)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                s.db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 1
    with s.app.app_context():
        assert s.db.session.execute(select(func.count(Purchase.id))).scalar_one() == 1
        c = s.loyalty.customer("c1")
        assert c.orders_count == 1 and c.points_balance == 12
        assert s.db.session.execute(select(func.count(PointsEntry.id))).scalar_one() == 1


def _committed_customer_refs(shop) -> set[str]:
    """Customer refs another connection (another process) sees: only what was committed."""
    engine = create_engine(shop.url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(text("SELECT ref FROM loyalty_customer"))}
    finally:
        engine.dispose()


def test_repeated_purchase_still_commits_with_commit_true(shop):
    """A retried checkout hook (same order_ref) changes nothing but still commits the session."""
    shop.loyalty.record_purchase("o1", "c1", "10.00")
    shop.loyalty.upsert_customer("c-host", email="host@example.com", commit=False)
    shop.loyalty.record_purchase("o1", "c1", "10.00")
    assert "c-host" in _committed_customer_refs(shop)


def test_repeated_purchase_with_commit_false_leaves_the_host_transaction_open(shop):
    shop.loyalty.record_purchase("o1", "c1", "10.00")
    shop.loyalty.upsert_customer("c-host", email="host@example.com", commit=False)
    shop.loyalty.record_purchase("o1", "c1", "10.00", commit=False)
    assert "c-host" not in _committed_customer_refs(shop)
    shop.db.session.rollback()
    assert shop.loyalty.customer("c-host") is None


def test_repeated_full_refund_still_commits_with_commit_true(shop):
    """A refund with nothing left to refund changes nothing but still commits the session."""
    shop.loyalty.record_purchase("o1", "c1", "10.00")
    shop.loyalty.record_refund("o1")
    shop.loyalty.upsert_customer("c-host", email="host@example.com", commit=False)
    refunds = []
    with purchase_refunded.connected_to(lambda app, **kw: refunds.append(kw["amount"]), shop.app):
        p = shop.loyalty.record_refund("o1")
    assert refunds == [] and p.refunded_total == p.total
    assert "c-host" in _committed_customer_refs(shop)


def _another_connection_can_write(shop) -> None:
    """Fails with "database is locked" (after 0.2 s) if this session still holds SQLite's write lock."""
    engine = create_engine(shop.url, connect_args={"timeout": 0.2})
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE loyalty_customer SET locale = 'en' WHERE ref = 'c1'"))
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_shop(make_shop):
    shop = make_shop(LOYALTY_SQLITE_BUSY_TIMEOUT=0.2)
    if shop.dialect != "sqlite":
        pytest.skip("SQLite write lock")
    with shop.app.app_context():
        shop.loyalty.record_purchase("o1", "c1", "10.00")
        yield shop


def test_repeated_purchase_releases_the_sqlite_write_lock(sqlite_shop):
    """On SQLite the repeat path ends its transaction, so another connection can write right after."""
    sqlite_shop.loyalty.record_purchase("o1", "c1", "10.00")
    _another_connection_can_write(sqlite_shop)


def test_refused_refund_releases_the_sqlite_write_lock(sqlite_shop):
    """A refund of an unknown order writes nothing and, with commit=True, keeps no write lock (SQLite)."""
    with pytest.raises(InvalidInput):
        sqlite_shop.loyalty.record_refund("nope")
    _another_connection_can_write(sqlite_shop)


def test_points_beyond_32_bits_are_stored_and_reversed(shop):
    """A valid total of 3,000,000,000 earns that many points: the points columns are 64-bit."""
    p = shop.loyalty.record_purchase("o-big", "c1", "3000000000")
    assert p.points_earned == 3_000_000_000
    shop.loyalty.record_purchase("o-big-2", "c1", "3000000000")
    assert shop.loyalty.customer("c1").points_balance == 6_000_000_000
    shop.loyalty.record_refund("o-big")
    shop.db.session.expire_all()
    assert shop.loyalty.purchase("o-big").points_reversed == 3_000_000_000
    assert shop.loyalty.customer("c1").points_balance == 3_000_000_000
    entries = shop.db.session.execute(select(PointsEntry.delta, PointsEntry.balance_after)
                                      .order_by(PointsEntry.id)).all()
    assert [tuple(e) for e in entries] == [(3_000_000_000, 3_000_000_000), (3_000_000_000, 6_000_000_000),
                                           (-3_000_000_000, 3_000_000_000)]
