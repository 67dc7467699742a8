"""Tiers: config validation, lifetime and rolling windows, perks, signal and congratulation mail."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from flask_loyalty import InvalidInput
from flask_loyalty.signals import tier_changed

UTC = timezone.utc

TIERS = [
    {"name": "Gold", "min_spend": "500", "discount_percent": "10", "points_multiplier": "2"},
    {"name": "Silver", "min_spend": "100", "discount_percent": "5", "points_multiplier": "1.5"},
]


@pytest.fixture
def tiered(make_shop):
    s = make_shop(LOYALTY_TIERS=TIERS)
    with s.app.app_context():
        yield s


def changes(s):
    seen = []

    def receiver(app, **kw):
        seen.append((kw["customer_ref"], kw["old_tier"], kw["new_tier"]))
    return seen, tier_changed.connected_to(receiver, s.app)


def test_no_tiers_configured(shop):
    shop.loyalty.record_purchase("o1", "c1", 1000)
    assert shop.loyalty.tiers.of("c1") is None
    assert shop.loyalty.tiers.discount_for("c1", "100") == Decimal("0.00")


def test_upgrade_signal_mail_and_perks(tiered):
    s = tiered
    seen, ctx = changes(s)
    with ctx:
        s.loyalty.record_purchase("o1", "c1", 60)
        assert s.loyalty.tiers.of("c1") is None
        s.loyalty.record_purchase("o2", "c1", 60)
        tier = s.loyalty.tiers.of("c1")
        assert tier.name == "Silver" and tier.perks == {"discount_percent": "5", "points_multiplier": "1.5"}
        s.loyalty.record_purchase("o3", "c1", 400)
    assert seen == [("c1", None, "Silver"), ("c1", "Silver", "Gold")]
    assert s.loyalty.tiers.of("c1").name == "Gold"
    mails = [m for m in s.loyalty.messages.for_customer("c1") if m.kind == "tier_changed"]
    assert [m.payload["tier"] for m in mails] == ["Silver", "Gold"]
    assert s.loyalty.tiers.discount_for("c1", Decimal("80.05")) == Decimal("8.00")  # 8.005, half-even
    assert s.loyalty.tiers.discount_for("unknown", "80") == Decimal("0.00")


def test_discount_rounding_and_bad_input(tiered):
    s = tiered
    s.loyalty.record_purchase("o1", "c1", 150)  # Silver, 5 %
    assert s.loyalty.tiers.discount_for("c1", "10.10") == Decimal("0.50")   # 0.505 -> 0.50 (half-even)
    assert s.loyalty.tiers.discount_for("c1", "10.30") == Decimal("0.52")   # 0.515 -> 0.52
    assert s.loyalty.tiers.discount_for("c1", 0) == Decimal("0.00")
    with pytest.raises(TypeError):
        s.loyalty.tiers.discount_for("c1", 10.5)
    with pytest.raises(InvalidInput):
        s.loyalty.tiers.discount_for("c1", "-3")


def test_discount_is_rounded_once_half_even_like_a_percent_coupon(make_shop):
    s = make_shop(LOYALTY_TIERS=[{"name": "Silver", "min_spend": "10", "discount_percent": "1.5"}])
    with s.app.app_context():
        s.loyalty.record_purchase("o1", "c1", "100")
        assert s.loyalty.tiers.of("c1").name == "Silver"
        # 1.5 % of 1.67 = 0.02505 exactly: half-even to the cent is 0.03 (rounding to 0.0250 first gives 0.02)
        coupon = s.loyalty.coupons.create(kind="percent", value="1.5")
        assert s.loyalty.coupons.validate(coupon.code, order_total="1.67").discount == Decimal("0.03")
        assert s.loyalty.tiers.discount_for("c1", "1.67") == Decimal("0.03")


def test_points_multiplier_applies_to_later_orders(tiered):
    s = tiered
    first = s.loyalty.record_purchase("o1", "c1", 100)   # earns 100 and reaches Silver
    assert first.points_earned == 100
    second = s.loyalty.record_purchase("o2", "c1", 100)  # Silver x1.5
    assert second.points_earned == 150
    assert s.loyalty.points.balance("c1") == 250


def test_refund_downgrades(tiered):
    s = tiered
    s.loyalty.record_purchase("o1", "c1", 80)
    s.loyalty.record_purchase("o2", "c1", 40)
    assert s.loyalty.tiers.of("c1").name == "Silver"
    seen, ctx = changes(s)
    with ctx:
        s.loyalty.record_refund("o2", amount="30")
    assert seen == [("c1", "Silver", None)]
    assert s.loyalty.tiers.of("c1") is None
    # a downgrade sends no congratulation
    assert len([m for m in s.loyalty.messages.for_customer("c1") if m.kind == "tier_changed"]) == 1


def test_rolling_window_lapses_in_plan_tick(make_shop):
    s = make_shop(LOYALTY_TIERS=[{"name": "VIP", "min_spend": 200, "window_days": 30, "discount_percent": 3}])
    with s.app.app_context():
        now = datetime.now(UTC)
        s.loyalty.record_purchase("old", "c1", 500, placed_at=now - timedelta(days=60))
        assert s.loyalty.tiers.of("c1") is None     # outside the window
        s.loyalty.record_purchase("new", "c1", 250, placed_at=now - timedelta(days=1))
        assert s.loyalty.tiers.of("c1").name == "VIP"
        seen, ctx = changes(s)
        with ctx:
            s.loyalty.state.run_hooks("plan_tick", now=now + timedelta(days=10))
            s.db.session.commit()
            assert s.loyalty.tiers.of("c1").name == "VIP"
            s.loyalty.state.run_hooks("plan_tick", now=now + timedelta(days=40))
            s.db.session.commit()
        assert s.loyalty.tiers.of("c1") is None
        assert seen == [("c1", "VIP", None)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # validation only: one database is enough
@pytest.mark.parametrize("tiers,field", [
    ("gold", None),
    ([{"name": "A"}], "min_spend"),
    ([{"name": "A", "min_spend": 10.0}], "min_spend"),
    ([{"name": "A", "min_spend": "10", "discount_percent": "101"}], "discount_percent"),
    ([{"name": "A", "min_spend": "10", "window_days": 0}], "window_days"),
    ([{"name": "A", "min_spend": "10", "colour": "red"}], "colour"),
    ([{"name": "A", "min_spend": "10"}, {"name": "A", "min_spend": "20"}], None),
    ([{"name": "A", "min_spend": "10"}, {"name": "B", "min_spend": "10"}], None),
])
def test_bad_tiers_fail_at_setup(make_shop, tiers, field):
    with pytest.raises(InvalidInput) as info:
        make_shop(LOYALTY_TIERS=tiers)
    assert "LOYALTY_TIERS" in info.value.errors
    if field:
        assert field in str(info.value.errors)


def test_recompute_after_config_change(tiered):
    s = tiered
    s.loyalty.record_purchase("o1", "c1", 150)
    assert s.loyalty.tiers.of("c1").name == "Silver"
    s.app.config["LOYALTY_TIERS"] = [{"name": "Bronze", "min_spend": "50"}, {"name": "Silver", "min_spend": "200"}]
    assert s.loyalty.tiers.of("c1").name == "Silver"          # stored until recomputed
    assert [t.name for t in s.loyalty.tiers.all()] == ["Bronze", "Silver"]
    assert s.loyalty.tiers.recompute("c1").name == "Bronze"
    assert s.loyalty.tiers.of("c1").name == "Bronze"
    with pytest.raises(InvalidInput):
        s.loyalty.tiers.recompute("ghost")
