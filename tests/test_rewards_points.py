"""Points: balance, redemption into a coupon (also under concurrency), expiry with a warning."""

from __future__ import annotations

import threading
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from flask_loyalty import InvalidInput, LoyaltyError
from flask_loyalty.clock import end_of_local_day, local_date
from flask_loyalty.models import Coupon, PointsEntry
from flask_loyalty.services.points import NotEnoughPoints, expire_points
from flask_loyalty.signals import points_changed

UTC = timezone.utc


def coupon_count(s) -> int:
    return s.db.session.execute(select(func.count(Coupon.id))).scalar_one()


def test_balance_unknown_customer_is_zero(shop):
    assert shop.loyalty.points.balance("nobody") == 0


def test_redeem_makes_personal_fixed_coupon(shop):
    shop.loyalty.record_purchase("o1", "c1", 350)
    assert shop.loyalty.points.balance("c1") == 350
    seen = []
    with points_changed.connected_to(lambda app, **kw: seen.append(kw["delta"]), shop.app):
        coupon = shop.loyalty.points.redeem("c1", 300)
    assert seen == [-300]
    assert coupon.kind == "fixed" and coupon.value == Decimal("15.00") and coupon.currency == "EUR"
    assert coupon.customer_ref == "c1" and coupon.max_uses == 1
    assert shop.loyalty.points.balance("c1") == 50
    # the coupon works for its owner only
    assert shop.loyalty.coupons.validate(coupon.code, customer_ref="c1", order_total="40").discount == Decimal("15.00")
    assert shop.loyalty.coupons.validate(coupon.code, customer_ref="c2", order_total="40").reason == "not_yours"
    entry = shop.loyalty.points.history("c1")[0]
    assert entry.reason == "redeem" and entry.delta == -300 and coupon.code in entry.note


def test_points_coupon_is_valid_to_the_end_of_the_shops_local_day(make_shop):
    s = make_shop(LOYALTY_TIMEZONE="Europe/Berlin", LOYALTY_POINTS_COUPON_VALID_DAYS=30)
    berlin = ZoneInfo("Europe/Berlin")
    with s.app.app_context():
        s.loyalty.record_purchase("o1", "c1", "500")
        before = datetime.now(timezone.utc)
        coupon = s.loyalty.points.redeem("c1", 100)
        after = datetime.now(timezone.utc)
        # valid 30 days: until 23:59:59.999999 Berlin time, 30 days after today in Berlin
        expected = {end_of_local_day(local_date(t, berlin) + timedelta(days=30), berlin) for t in (before, after)}
        assert coupon.expires_at in expected
        assert coupon.expires_at.astimezone(berlin).time() == time(23, 59, 59, 999999)


def test_redeem_uses_configured_rate(make_shop):
    s = make_shop(LOYALTY_POINTS_REDEMPTION={"points": 50, "value": "2.50"})
    with s.app.app_context():
        s.loyalty.record_purchase("o1", "c1", 120)
        coupon = s.loyalty.points.redeem("c1", 100)
        assert coupon.value == Decimal("5.00")
        assert s.loyalty.points.balance("c1") == 20


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # validation only: one database is enough
@pytest.mark.parametrize("points", [150, 0, -100, "100", 100.0])
def test_redeem_bad_amount_is_invalid_input(shop, points):
    shop.loyalty.record_purchase("o1", "c1", 500)
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.points.redeem("c1", points)
    assert "points" in info.value.errors
    assert shop.loyalty.points.balance("c1") == 500


def test_redeem_more_than_balance_changes_nothing(shop):
    shop.loyalty.record_purchase("o1", "c1", 250)
    before = coupon_count(shop)
    with pytest.raises(LoyaltyError) as info:
        shop.loyalty.points.redeem("c1", 300)
    assert isinstance(info.value, NotEnoughPoints) and info.value.balance == 250
    assert shop.loyalty.points.balance("c1") == 250
    assert coupon_count(shop) == before
    assert shop.db.session.execute(
        select(func.count(PointsEntry.id)).where(PointsEntry.reason == "redeem")).scalar_one() == 0
    with pytest.raises(NotEnoughPoints):
        shop.loyalty.points.redeem("ghost", 100)


def test_redeem_commit_false_rolls_back_with_host(shop):
    shop.loyalty.record_purchase("o1", "c1", 200)
    before = coupon_count(shop)
    shop.loyalty.points.redeem("c1", 100, commit=False)
    assert coupon_count(shop) == before + 1
    shop.db.session.rollback()
    assert shop.loyalty.points.balance("c1") == 200
    assert coupon_count(shop) == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # validation only: one database is enough
def test_bad_redemption_config_fails_at_setup(make_shop):
    with pytest.raises(InvalidInput):
        make_shop(LOYALTY_POINTS_REDEMPTION={"points": 0, "value": "5"})
    with pytest.raises(InvalidInput):
        make_shop(LOYALTY_POINTS_REDEMPTION={"points": 100, "value": 5.0})
    with pytest.raises(InvalidInput):         # more than a points balance may hold
        make_shop(LOYALTY_POINTS_REDEMPTION={"points": 3_000_000_000, "value": "5"})


@pytest.mark.slow
def test_concurrent_redeem_exactly_five_coupons(make_shop):
    s = make_shop()
    with s.app.app_context():
        s.loyalty.record_purchase("o1", "c1", 500)
        before = coupon_count(s)
    barrier = threading.Barrier(20)
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with s.app.app_context():
            barrier.wait()
            try:
                s.loyalty.points.redeem("c1", 100)
                outcome = "ok"
            except NotEnoughPoints:
                outcome = "refused"
            except Exception as exc:  # pragma: no cover - reported below
                outcome = f"error {exc!r}"
            finally:
                s.db.session.remove()
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] * 5 + ["refused"] * 15, results
    with s.app.app_context():
        assert s.loyalty.points.balance("c1") == 0
        assert coupon_count(s) == before + 5
        assert s.db.session.execute(select(func.sum(PointsEntry.delta))).scalar_one() == 0


def test_expiry_warns_then_expires(make_shop):
    s = make_shop(LOYALTY_POINTS_EXPIRE_DAYS=365, LOYALTY_POINTS_EXPIRY_WARNING_DAYS=30)
    with s.app.app_context():
        t0 = datetime.now(UTC) + timedelta(days=1)
        s.loyalty.record_purchase("o1", "c1", 120, placed_at=t0)
        s.loyalty.record_purchase("o2", "c2", 80, placed_at=t0 + timedelta(days=200))
        # before the warning window: nothing
        assert expire_points(s.loyalty.state, now=t0 + timedelta(days=300)) == 0
        s.db.session.commit()
        assert [m.kind for m in s.loyalty.messages.for_customer("c1") if m.kind == "points_expiring"] == []
        # in the warning window: one warning, idempotent
        for _ in range(2):
            assert expire_points(s.loyalty.state, now=t0 + timedelta(days=340)) == 0
            s.db.session.commit()
        warnings = [m for m in s.loyalty.messages.for_customer("c1") if m.kind == "points_expiring"]
        assert len(warnings) == 1 and warnings[0].payload["points"] == 120
        assert s.loyalty.points.balance("c1") == 120
        # past the limit: c1 expires, c2 (active later) keeps its points
        seen = []
        with points_changed.connected_to(lambda app, **kw: seen.append((kw["customer_ref"], kw["delta"])), s.app):
            assert s.loyalty.points.expire(now=t0 + timedelta(days=366)) == 120
        assert seen == [("c1", -120)]
        assert s.loyalty.points.balance("c1") == 0 and s.loyalty.points.balance("c2") == 80
        assert s.loyalty.points.history("c1")[0].reason == "expire"


def test_points_expire_at_the_end_of_the_local_day_the_warning_mail_names(make_shop):
    from flask_loyalty.services.mail import render_message

    s = make_shop(LOYALTY_TIMEZONE="Europe/Madrid", LOYALTY_POINTS_EXPIRE_DAYS=30,
                  LOYALTY_POINTS_EXPIRY_WARNING_DAYS=14)
    with s.app.app_context():
        s.loyalty.upsert_customer("C1", email="a@example.com", name="Ana", locale="en")
        s.loyalty.record_purchase("O1", "C1", Decimal("50.00"),
                                  placed_at=datetime(2026, 3, 1, 9, tzinfo=UTC))   # 10:00 in Madrid
        balance = s.loyalty.points.balance("C1")
        assert balance > 0
        s.loyalty.points.expire(now=datetime(2026, 3, 20, 9, tzinfo=UTC))
        [warning] = [m for m in s.loyalty.messages.for_customer("C1") if m.kind == "points_expiring"]
        assert warning.payload["expires_at"] == "2026-03-31T21:59:59.999999+00:00"  # midnight in Madrid (CEST)
        rendered = render_message(s.loyalty.state, warning, s.loyalty.customer("C1"))
        assert "They expire on March 31, 2026" in rendered.body_text
        # 14:00 and 23:59 in Madrid on 31 March: the day the mail names is not over yet
        for hour, minute in ((12, 0), (21, 59)):
            assert s.loyalty.points.expire(now=datetime(2026, 3, 31, hour, minute, tzinfo=UTC)) == 0
        assert s.loyalty.points.balance("C1") == balance
        assert s.loyalty.points.expire(now=datetime(2026, 3, 31, 22, tzinfo=UTC)) == balance   # 1 April


def test_redemption_counts_as_activity(make_shop):
    s = make_shop(LOYALTY_POINTS_EXPIRE_DAYS=30, LOYALTY_POINTS_EXPIRY_WARNING_DAYS=0)
    with s.app.app_context():
        long_ago = datetime.now(UTC) - timedelta(days=100)
        s.loyalty.record_purchase("o1", "c1", 250, placed_at=long_ago)
        s.loyalty.points.redeem("c1", 100)   # activity now
        assert s.loyalty.points.expire(now=datetime.now(UTC) + timedelta(days=10)) == 0
        assert s.loyalty.points.expire(now=datetime.now(UTC) + timedelta(days=31)) == 150


def test_expiry_disabled_by_default(shop):
    shop.loyalty.record_purchase("o1", "c1", 100, placed_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert shop.loyalty.points.expire(now=datetime(2030, 1, 1, tzinfo=UTC)) == 0
    assert shop.loyalty.points.balance("c1") == 100


def test_plan_tick_hook_runs_expiry(make_shop):
    s = make_shop(LOYALTY_POINTS_EXPIRE_DAYS=10, LOYALTY_POINTS_EXPIRY_WARNING_DAYS=0)
    with s.app.app_context():
        s.loyalty.record_purchase("o1", "c1", 100, placed_at=datetime(2020, 1, 1, tzinfo=UTC))
        s.loyalty.state.run_hooks("plan_tick", now=datetime.now(UTC))
        s.db.session.commit()
        assert s.loyalty.points.balance("c1") == 0


def test_the_plan_tick_expires_points(make_shop):
    s = make_shop(LOYALTY_POINTS_EXPIRE_DAYS=10, LOYALTY_POINTS_EXPIRY_WARNING_DAYS=0)
    with s.app.app_context():
        s.loyalty.record_purchase("o1", "c1", 100, placed_at=datetime(2020, 1, 1, tzinfo=UTC))
        s.loyalty.plan(now=datetime(2020, 3, 1, tzinfo=UTC))
        assert s.loyalty.points.balance("c1") == 0
        assert s.loyalty.points.history("c1")[0].reason == "expire"


def test_export_keeps_the_whole_points_ledger_oldest_first(shop):
    """consent.export's points history keeps order_ref and note, oldest first, with the rewards area on."""
    lo = shop.loyalty
    lo.record_purchase("o1", "c1", "250.00")
    coupon = lo.points.redeem("c1", 100)
    lo.record_purchase("o2", "c1", "30.00")
    data = lo.consent.export("c1")
    assert data["points"]["balance"] == 180
    history = data["points"]["history"]
    assert [(e["delta"], e["balance_after"], e["reason"], e["order_ref"]) for e in history] == [
        (250, 250, "earn", "o1"), (-100, 150, "redeem", None), (30, 180, "earn", "o2")]
    assert history[1]["note"] == f"coupon {coupon.code}" and history[0]["note"] is None
    assert all(set(e) == {"at", "delta", "balance_after", "reason", "order_ref", "note"} for e in history)
