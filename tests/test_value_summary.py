"""The purchase summary kept between recomputes: a refreshed run must equal a full rebuild.

``analytics.recompute()`` re-aggregates only the customers whose activity
version moved (checkout, refund, a coupon redeemed or released on a recorded
order).  Every test here compares the profiles of such a run with those of
``recompute(rebuild=True)`` over the same data, on both databases.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from conftest import run_together
from sqlalchemy import select, text

from flask_loyalty.errors import LoyaltyError
from flask_loyalty.models import Customer, CustomerProfile, PurchaseSummary, metadata
from flask_loyalty.services import analytics

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


def at(days_before: float) -> datetime:
    return NOW - timedelta(days=days_before)


def profiles(shop: Any) -> dict[str, dict[str, Any]]:
    """Every profile as a dict (without ``computed_at``), by customer reference."""
    shop.db.session.expire_all()
    rows = shop.db.session.execute(select(CustomerProfile)).unique().scalars().all()
    out = {}
    for row in rows:
        data = row.as_dict()
        data.pop("computed_at")
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 9)
        out[data["customer_ref"]] = data
    return out


def fit(shop: Any) -> tuple[str | None, int | None]:
    found = shop.loyalty.analytics.model()
    return found.aggregates, found.aggregated_customers


def summary_rows(shop: Any) -> dict[int, int]:
    shop.db.session.expire_all()
    return dict(shop.db.session.execute(select(PurchaseSummary.customer_id, PurchaseSummary.version)).all())


def assert_same_as_rebuild(shop: Any, *, now: datetime = NOW) -> dict[str, dict[str, Any]]:
    """Recompute (refreshing the summary), then rebuild: the profiles must be identical."""
    lo = shop.loyalty
    lo.analytics.recompute(now=now)
    assert fit(shop)[0] == "refreshed"
    refreshed = profiles(shop)
    lo.analytics.recompute(now=now, rebuild=True)
    assert fit(shop)[0] == "rebuilt"
    rebuilt = profiles(shop)
    assert refreshed == rebuilt
    return refreshed


def seed(shop: Any) -> None:
    lo = shop.loyalty
    for i in range(6):
        lo.record_purchase(f"a{i}", "A", "100", placed_at=at(60 - 10 * i))
    lo.record_purchase("b0", "B", "60", placed_at=at(40), items=[
        {"sku": "S", "name": "Socks", "quantity": 2, "unit_price": "30", "unit_cost": "10"}])
    lo.record_purchase("b1", "B", "80", placed_at=at(20), channel="store")
    lo.record_purchase("c0", "C", "50", placed_at=at(90))
    lo.upsert_customer("D", email="d@example.com")


def test_first_run_builds_the_summary_then_only_changed_customers_are_aggregated(shop):
    lo = shop.loyalty
    seed(shop)
    lo.analytics.recompute(now=NOW)
    assert fit(shop) == ("rebuilt", 3)
    assert len(summary_rows(shop)) == 3            # the customer who never bought has none
    lo.analytics.recompute(now=NOW + timedelta(days=1))
    assert fit(shop) == ("refreshed", 0)
    lo.record_purchase("c1", "C", "70", placed_at=NOW - timedelta(hours=1))
    lo.analytics.recompute(now=NOW)
    assert fit(shop) == ("refreshed", 1)
    assert lo.analytics.profile("C").frequency == 2
    assert_same_as_rebuild(shop)


def test_the_first_run_inserting_into_the_empty_table_equals_the_runs_that_update_it(shop):
    lo = shop.loyalty
    seed(shop)
    lo.analytics.recompute(now=NOW)                # a plain INSERT: no profile yet
    inserted = profiles(shop)
    assert len(inserted) == 4
    lo.analytics.recompute(now=NOW)                # PostgreSQL: an UPDATE; SQLite: the upsert
    assert profiles(shop) == inserted
    lo.analytics.recompute(now=NOW, rebuild=True)
    assert profiles(shop) == inserted


def only_postgresql(shop: Any) -> None:
    """Skip on SQLite: other connections share the work on PostgreSQL only."""
    if shop.dialect != "postgresql":
        pytest.skip("other connections share the work on PostgreSQL only")


def copy_summary_row(session: Any, to_id: int, from_id: int) -> None:
    """Give ``to_id`` a summary row equal to ``from_id``'s: what a buyer deleted by hand leaves behind."""
    columns = ", ".join(c.name for c in metadata.tables["loyalty_purchase_summary"].columns if c.name != "customer_id")
    session.execute(text(f"INSERT INTO loyalty_purchase_summary (customer_id, {columns}) "
                         f"SELECT {to_id}, {columns} FROM loyalty_purchase_summary WHERE customer_id = {from_id}"))


def summary_table(shop: Any) -> dict[int, tuple[Any, ...]]:
    """Every summary row, all columns, by customer id."""
    shop.db.session.expire_all()
    rows = shop.db.session.execute(select(metadata.tables["loyalty_purchase_summary"])).all()
    return {row[0]: tuple(row) for row in rows}


def test_a_summary_rebuilt_over_several_connections_equals_one_rebuilt_in_the_run(shop):
    """PostgreSQL rebuilds the summary by remainder of the customer id over several connections."""
    lo = shop.loyalty
    seed(shop)
    for i in range(7):          # customers enough for every remainder of 2 and 3 to hold some
        lo.record_purchase(f"e{i}", f"E{i}", str(20 + i), placed_at=at(3 + i), channel="phone")
    lo.record_refund("e2")
    shop.app.config["LOYALTY_RECOMPUTE_CONNECTIONS"] = 1
    lo.analytics.recompute(now=NOW)
    assert fit(shop) == ("rebuilt", 10)
    expected_profiles, expected_summary = profiles(shop), summary_table(shop)
    assert len(expected_summary) == 10
    for connections in (2, 3, 8):
        shop.app.config["LOYALTY_RECOMPUTE_CONNECTIONS"] = connections
        lo.analytics.recompute(now=NOW, rebuild=True)
        assert fit(shop) == ("rebuilt", 10)
        assert summary_table(shop) == expected_summary
        assert profiles(shop) == expected_profiles
    # a stale row of a customer deleted by hand is dropped by the part that holds its remainder
    shop.db.session.execute(text("DELETE FROM loyalty_customer_profile WHERE customer_id IN "
                                 "(SELECT id FROM loyalty_customer WHERE ref = 'D')"))
    shop.db.session.execute(text("DELETE FROM loyalty_customer WHERE ref = 'D'"))
    shop.db.session.execute(text("INSERT INTO loyalty_purchase_summary SELECT 1000 + customer_id, "
                                 + ", ".join(c.name for c in metadata.tables["loyalty_purchase_summary"].columns
                                             if c.name != "customer_id")
                                 + " FROM loyalty_purchase_summary"))
    shop.db.session.commit()
    lo.analytics.recompute(now=NOW, rebuild=True)
    assert summary_table(shop) == expected_summary


def test_a_part_that_fails_fails_the_run_and_the_next_run_rebuilds(shop, monkeypatch):
    """The other parts may have committed their share: a cache the next run rebuilds, never trusted."""
    from sqlalchemy.exc import DBAPIError

    lo = shop.loyalty
    seed(shop)
    real = analytics._summary_rows_sql

    def broken(dialect: str, part: tuple[int, int] | None = None) -> str:
        sql = real(dialect, part)
        return sql.replace("FROM", "FROM no_such_table, ", 1) if part is not None and part[0] == 1 else sql

    monkeypatch.setattr(analytics, "_summary_rows_sql", broken)
    if shop.dialect == "postgresql":
        with pytest.raises(DBAPIError, match="no_such_table"):
            lo.analytics.recompute(now=NOW)
        shop.db.session.rollback()
        assert lo.analytics.model() is None
        assert len(summary_rows(shop)) > 0          # part 0 committed its share
    monkeypatch.undo()
    lo.analytics.recompute(now=NOW)
    assert fit(shop) == ("rebuilt", 3)
    assert_same_as_rebuild(shop)


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_a_run_in_a_snapshot_transaction_does_all_its_work_itself(shop, monkeypatch, isolation):
    """A snapshot taken before other connections commit would keep reading the summary as it was."""
    only_postgresql(shop)
    lo = shop.loyalty
    seed(shop)
    lo.analytics.recompute(now=NOW)
    lo.record_purchase("c1", "C", "70", placed_at=at(1))
    shared: list[int] = []
    real = analytics._rebuild_in_parts
    monkeypatch.setattr(analytics, "_rebuild_in_parts", lambda *a, **k: shared.append(1) or real(*a, **k))
    shop.db.session.connection(execution_options={"isolation_level": isolation})
    lo.analytics.recompute(now=NOW, rebuild=True)
    assert shared == ([1] if isolation == "READ COMMITTED" else [])
    assert lo.analytics.profile("C").frequency == 2
    assert fit(shop) == ("rebuilt", 3)


def test_a_run_in_a_transaction_that_has_written_aggregates_what_it_wrote(shop):
    """Other connections would not see uncommitted rows: the summary is then rebuilt in the run itself."""
    lo = shop.loyalty
    seed(shop)
    lo.record_purchase("z0", "Z", "30", placed_at=at(5), commit=False)
    assert lo.analytics.recompute(now=NOW) == 5
    assert fit(shop) == ("rebuilt", 4)
    assert lo.analytics.profile("Z").frequency == 1
    assert summary_table(shop)[lo.analytics.profile("Z").customer_id][2] == 1     # frequency


@pytest.mark.parametrize("few", [True, False], ids=["index", "scan"])
def test_refunds_backdated_orders_and_coupons_refresh_the_right_customers(shop, monkeypatch, few):
    """Both ways of reading the changed customers' purchases (PostgreSQL: per customer, or by the planner)."""
    monkeypatch.setattr(analytics, "_FEW_CUSTOMERS", 200 if few else 0)
    lo = shop.loyalty
    seed(shop)
    coupon = lo.coupons.create(kind="fixed", value="10.00", code="TEN-OFF-TEN-OFF", max_uses=10)
    lo.analytics.recompute(now=NOW)
    # a full refund of A's last order moves A's last purchase day back
    lo.record_refund("a5")
    # a partial refund of B's costed order changes its margin
    lo.record_refund("b0", amount="15")
    # a backdated order becomes C's first purchase day
    lo.record_purchase("c-old", "C", "25", placed_at=at(300))
    # a coupon redeemed after the order was recorded: the discount counts against A's value
    lo.coupons.redeem(coupon.code, customer_ref="A", order_ref="a1", order_total=Decimal("100"))
    # a coupon redeemed before the order is recorded, then the order
    lo.coupons.redeem(coupon.code, customer_ref="E", order_ref="e0", order_total=Decimal("40"))
    lo.record_purchase("e0", "E", "40", placed_at=at(3))
    refreshed = assert_same_as_rebuild(shop)
    assert Decimal(refreshed["A"]["discounts"]) == 10
    assert refreshed["A"]["recency_days"] == 20
    assert Decimal(refreshed["E"]["discounts"]) == 10
    assert refreshed["C"]["frequency"] == 2
    # releasing the coupon of a recorded order gives the discount back
    lo.coupons.release("a1")
    refreshed = assert_same_as_rebuild(shop)
    assert Decimal(refreshed["A"]["discounts"]) == 0


def test_the_margin_setting_applies_without_a_rebuild(make_shop):
    shop = make_shop(LOYALTY_DEFAULT_MARGIN=0.3)
    with shop.app.app_context():
        seed(shop)
        shop.loyalty.analytics.recompute(now=NOW)
        before = profiles(shop)["A"]["margin"]
        shop.app.config["LOYALTY_DEFAULT_MARGIN"] = 0.5
        shop.loyalty.analytics.recompute(now=NOW)
        assert fit(shop) == ("refreshed", 0)
        assert (Decimal(before), Decimal(profiles(shop)["A"]["margin"])) == (180, 300)


def test_a_now_before_the_latest_purchase_leaves_the_summary_alone(shop):
    lo = shop.loyalty
    seed(shop)
    lo.analytics.recompute(now=NOW)
    kept = summary_rows(shop)
    lo.analytics.recompute(now=at(25))
    assert fit(shop)[0] == "as_of"
    assert lo.analytics.profile("A").frequency == 4        # the two orders after that day are left out
    assert lo.analytics.profile("B").frequency == 1
    assert summary_rows(shop) == kept
    lo.analytics.recompute(now=NOW)
    assert fit(shop) == ("refreshed", 0)
    assert lo.analytics.profile("A").frequency == 6


def test_erasure_removes_the_summary_row_and_erased_customers_are_not_aggregated(shop):
    lo = shop.loyalty
    seed(shop)
    lo.analytics.recompute(now=NOW)
    customer_id = shop.db.session.execute(select(Customer.id).where(Customer.ref == "B")).scalar_one()
    assert customer_id in summary_rows(shop)
    lo.consent.erase("B")
    assert customer_id not in summary_rows(shop)
    lo.analytics.recompute(now=NOW)
    assert fit(shop) == ("refreshed", 0)
    assert "B" not in profiles(shop)
    assert customer_id not in summary_rows(shop)


def seeded_then_edited_in_sql(shop: Any, sql: str) -> Any:
    """Seed, recompute, then change the data with ``sql`` behind the library's back; the facade."""
    seed(shop)
    shop.loyalty.analytics.recompute(now=NOW)
    shop.db.session.execute(text(sql))
    shop.db.session.commit()
    return shop.loyalty


def test_purchases_changed_outside_the_library_need_a_rebuild(shop):
    lo = seeded_then_edited_in_sql(shop, "UPDATE loyalty_purchase SET total = total * 2 WHERE order_ref = 'c0'")
    lo.analytics.recompute(now=NOW)
    assert lo.analytics.profile("C").monetary == Decimal("50")   # not seen: no version moved
    lo.analytics.recompute(now=NOW, rebuild=True)
    assert lo.analytics.profile("C").monetary == Decimal("100")


def test_lost_model_fit_records_only_cost_a_rebuild(shop):
    lo = seeded_then_edited_in_sql(shop, "DELETE FROM loyalty_model_fit")
    lo.analytics.recompute(now=NOW)
    assert fit(shop) == ("rebuilt", 3)


def test_rows_of_customers_deleted_outside_the_library_are_dropped_by_the_next_run(shop):
    """The derived tables have no foreign key: what a hard delete leaves behind is never read and is then dropped."""
    seed(shop)
    lo = shop.loyalty
    lo.analytics.recompute(now=NOW)
    session = shop.db.session
    ids = dict(session.execute(select(Customer.ref, Customer.id)).all())
    gone = ids["D"]
    # as if D had bought like C and then been deleted by hand (SQLite: with foreign keys enforced)
    copy_summary_row(session, gone, ids["C"])
    session.execute(text("DELETE FROM loyalty_customer WHERE ref = 'D'"))
    session.commit()
    assert lo.upsert_customer("E").id not in ids.values()              # SQLite too: no id is handed out twice
    stored = set(session.execute(select(CustomerProfile.customer_id)).scalars())
    assert gone in stored and len(stored) == 4                      # A, B, C and the deleted D
    assert set(profiles(shop)) == {"A", "B", "C"}                   # the ORM reads through the customer
    assert set(lo.segments.members("new")) <= {"A", "B", "C"}
    with pytest.raises(LoyaltyError):
        lo.analytics.profile("D")

    refreshed = assert_same_as_rebuild(shop)
    assert set(refreshed) == {"A", "B", "C", "E"}
    assert gone not in summary_rows(shop)
    assert set(session.execute(select(CustomerProfile.customer_id)).scalars()) == {
        customer_id for customer_id, in session.execute(select(Customer.id))}
    assert lo.analytics.model().customers == 3
    session.execute(text("DELETE FROM loyalty_customer WHERE ref = 'E'"))     # and a run on a later day
    session.commit()
    lo.analytics.recompute(now=NOW + timedelta(days=1))
    assert set(session.execute(select(CustomerProfile.customer_id)).scalars()) == {ids[r] for r in "ABC"}


@pytest.mark.parametrize("rounds", [3])
def test_checkouts_and_refunds_during_recomputes_are_never_missed(shop, rounds):
    """Orders and refunds committed while recomputes run: a later refreshed run equals a rebuild."""
    lo = shop.loyalty
    seed(shop)
    lo.analytics.recompute(now=NOW)
    for round_ in range(rounds):
        def work(i: int, round_: int = round_) -> Any:
            if i == 0:
                return shop.loyalty.analytics.recompute(now=NOW)
            ref = f"r{round_}-{i}"
            shop.loyalty.record_purchase(ref, f"T{i % 4}", str(10 + i), placed_at=at(i))
            if i % 3 == 0:
                shop.loyalty.record_refund(ref)
            return None

        outcomes = run_together(shop, 8, work)
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    shop.db.session.remove()
    assert_same_as_rebuild(shop)
    assert profiles(shop)["T1"]["frequency"] == 2 * rounds


def test_the_first_purchase_days_value_by_hand(shop):
    """The spend model leaves out the first purchase day: its kept orders' net value, by hand, also "as of"."""
    from flask_loyalty.models.types import UTCDateTime

    lo = shop.loyalty
    day = datetime(2026, 2, 10, tzinfo=timezone.utc)
    lo.record_purchase("x0", "X", "70", placed_at=day - timedelta(days=3))       # refunded in full: not kept
    lo.record_refund("x0")
    lo.record_purchase("x1", "X", "40", placed_at=day + timedelta(hours=9))
    lo.record_purchase("x2", "X", "30", placed_at=day + timedelta(hours=23, minutes=59))
    lo.record_refund("x2", amount=Decimal("10"))                                   # kept: 20 of it
    lo.record_purchase("x3", "X", "25", placed_at=day + timedelta(days=1, minutes=1))
    lo.record_purchase("y0", "Y", "15", placed_at=day)
    lo.upsert_customer("Z")                                                        # no order
    lo.analytics.recompute(now=NOW)
    rows = {ref: row for ref, row in shop.db.session.execute(
        select(Customer.ref, PurchaseSummary).join(PurchaseSummary, PurchaseSummary.customer_id == Customer.id)).all()}
    x, y = rows["X"], rows["Y"]
    assert (x.days, x.frequency, x.revenue, x.first_day_value) == (2, 3, Decimal("85"), Decimal("60"))
    assert (y.days, y.first_day_value) == (1, Decimal("15"))
    assert x.first_day == y.first_day == (day.date() - datetime(1970, 1, 1).date()).days
    if "Z" in rows:
        assert rows["Z"].first_day_value == 0
    # "as of" noon of that day: the 23:59 order is not placed yet
    statement = analytics._text(analytics._aggregate_sql(shop.dialect, until_now=True), now=UTCDateTime())
    as_of = {row.customer_id: row for row in shop.db.session.execute(statement, {"now": day + timedelta(hours=12)})}
    ids = dict(shop.db.session.execute(select(Customer.ref, Customer.id)).all())
    assert (as_of[ids["X"]].days, as_of[ids["X"]].first_day_value) == (1, 40 * 10_000)
    assert as_of[ids["Y"]].first_day_value == 15 * 10_000


def model_inputs(monkeypatch: Any) -> list[tuple[bool, dict[str, Any]]]:
    """Record what every recompute's model step reads: (whether it came in pieces, the columns)."""
    seen: list[tuple[bool, dict[str, Any]]] = []
    real = analytics._read_model_input

    def spy(state: Any, dialect: str, source: str, now_day: int, margin: float, pieces: Any = None) -> Any:
        data = real(state, dialect, source, now_day, margin, pieces)
        seen.append((pieces is not None, {name: values.copy() for name, values in data.items()}))
        return data

    monkeypatch.setattr(analytics, "_read_model_input", spy)
    return seen


def test_a_nightly_runs_model_input_read_on_another_connection_equals_its_own_read(shop, monkeypatch):
    """PostgreSQL reads a night's model input meanwhile, then replaces the rows of the customers it refreshed."""
    pytest.importorskip("numpy")
    lo = shop.loyalty
    seed(shop)
    for i in range(8):
        lo.record_purchase(f"e{i}", f"E{i}", str(20 + i), placed_at=at(30 + i))
        lo.record_purchase(f"e{i}-2", f"E{i}", str(30 + i), placed_at=at(10 + i))
    lo.analytics.recompute(now=NOW)
    seen = model_inputs(monkeypatch)
    lo.record_purchase("a-new", "A", "45", placed_at=at(2))         # a changed buyer
    lo.record_refund("c0")                                         # a buyer with no order kept any more
    lo.record_purchase("f0", "F", "15", placed_at=at(1))            # a new buyer
    lo.consent.erase("E3")                                         # gone before the run: in neither read
    ids = dict(shop.db.session.execute(select(Customer.ref, Customer.id)).all())
    # a summary row left by a buyer deleted by hand: in the other connection's read, not in the run's
    copy_summary_row(shop.db.session, ids["D"], ids["B"])
    shop.db.session.execute(text(f"DELETE FROM loyalty_customer_profile WHERE customer_id = {ids['D']}"))
    shop.db.session.execute(text(f"DELETE FROM loyalty_customer WHERE id = {ids['D']}"))
    shop.db.session.commit()
    lo.analytics.recompute(now=NOW)
    assert fit(shop) == ("refreshed", 3)                            # A, C and F aggregated again; D dropped
    shop.app.config["LOYALTY_RECOMPUTE_CONNECTIONS"] = 1             # the same night, read in the run itself
    lo.analytics.recompute(now=NOW)
    (early, merged), (own, expected) = seen
    assert early is (shop.dialect == "postgresql") and not own
    assert set(merged) == set(expected)
    for name, values in expected.items():
        assert merged[name].tolist() == values.tolist(), name
    buyers = set(merged["customer_id"].tolist())
    assert {ids["A"], ids["F"], ids["B"]} <= buyers and ids["C"] not in buyers and len(buyers) == 10
    assert len(merged["customer_id"]) == 10
    assert lo.analytics.profile("A").frequency == 7


def test_a_nightly_run_whose_early_read_fails_reads_its_model_input_itself(shop, monkeypatch, caplog):
    from concurrent.futures import Future

    pytest.importorskip("numpy")
    only_postgresql(shop)
    lo = shop.loyalty
    seed(shop)
    lo.analytics.recompute(now=NOW)
    lo.record_purchase("a-new", "A", "45", placed_at=at(2))

    def failed(*_: Any) -> Future:
        future: Future = Future()
        future.set_exception(RuntimeError("no connection to be had"))
        return future

    monkeypatch.setattr(analytics, "_read_early", failed)
    seen = model_inputs(monkeypatch)
    lo.analytics.recompute(now=NOW)
    assert "reading it here" in caplog.text
    [(pieces, data)] = seen
    assert not pieces and len(data["customer_id"]) == 3
    assert lo.analytics.profile("A").frequency == 7


def test_a_nightly_run_in_a_transaction_that_has_written_reads_its_model_input_itself(shop, monkeypatch):
    """Another connection would still see the summary row this transaction deleted (an erasure not committed)."""
    pytest.importorskip("numpy")
    lo = shop.loyalty
    seed(shop)
    lo.analytics.recompute(now=NOW)
    early: list[int] = []
    real = analytics._read_early
    monkeypatch.setattr(analytics, "_read_early", lambda *a: early.append(1) or real(*a))
    seen = model_inputs(monkeypatch)
    lo.consent.erase("B", commit=False)
    lo.analytics.recompute(now=NOW)
    assert early == [] and lo.analytics.model().customers == 2
    [(pieces, data)] = seen
    assert not pieces and len(data["customer_id"]) == 2


@pytest.mark.parametrize("poolclass", ["StaticPool", "AssertionPool"])
def test_a_pool_of_one_shared_connection_never_shares_the_work(make_shop, monkeypatch, poolclass):
    """Another "connection" would be the run's own: its commit would end the run's transaction."""
    import sqlalchemy.pool

    pytest.importorskip("numpy")
    shop = make_shop(SQLALCHEMY_ENGINE_OPTIONS={"poolclass": getattr(sqlalchemy.pool, poolclass)})
    with shop.app.app_context():
        only_postgresql(shop)
        lo = shop.loyalty
        seed(shop)
        shared: list[str] = []
        for name in ("_in_parts", "_read_early"):
            monkeypatch.setattr(analytics, name, lambda *a, name=name: shared.append(name))
        lo.analytics.recompute(now=NOW)
        lo.record_purchase("a-new", "A", "45", placed_at=at(2))
        assert_same_as_rebuild(shop)
        assert shared == [] and lo.analytics.profile("A").frequency == 7


def test_a_nightly_run_without_a_free_connection_reads_its_model_input_itself(make_shop, caplog):
    """The pool's timeout passes, the run logs a warning and reads everything itself."""
    pytest.importorskip("numpy")
    shop = make_shop(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 1},
                     LOYALTY_RECOMPUTE_CONNECTIONS=1)
    with shop.app.app_context():
        only_postgresql(shop)
        lo = shop.loyalty
        seed(shop)
        lo.analytics.recompute(now=NOW)
        lo.record_purchase("a-new", "A", "45", placed_at=at(2))
        shop.app.config["LOYALTY_RECOMPUTE_CONNECTIONS"] = 2
        lo.analytics.recompute(now=NOW)
        assert "reading it here" in caplog.text
        assert fit(shop) == ("refreshed", 1) and lo.analytics.model().customers == 3
        assert lo.analytics.profile("A").frequency == 7
        assert shop.db.engine.pool.checkedout() == 1            # the run's own, and no other left behind
