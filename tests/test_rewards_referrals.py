"""Referrals: codes and links, friend and advocate rewards, the refund window and the fraud rules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from conftest import run_together
from sqlalchemy import select

from flask_loyalty import InvalidInput
from flask_loyalty.clock import end_of_local_day, local_date
from flask_loyalty.models import Coupon
from flask_loyalty.services.referrals import ALPHABET

UTC = timezone.utc


@pytest.fixture
def ref_shop(make_shop):
    s = make_shop(LOYALTY_REFERRAL_REFUND_WINDOW_DAYS=30, LOYALTY_REFERRAL_MAX_PER_IP_PER_WEEK=2,
                  LOYALTY_REFERRAL_FRIEND_REWARD={"kind": "fixed", "value": "5.00", "valid_days": 90},
                  LOYALTY_REFERRAL_ADVOCATE_REWARD={"kind": "points", "value": 200})
    with s.app.app_context():
        s.loyalty.upsert_customer("adv", email="Ann.Smith+shop@gmail.com", name="Ann  Smith")
        s.loyalty.record_purchase("a0", "adv", 10, placed_at=datetime.now(UTC) - timedelta(days=100))
        yield s


def kinds(s, ref, kind):
    return [m for m in s.loyalty.messages.for_customer(ref) if m.kind == kind]


def test_code_is_stable_and_link_lands(ref_shop):
    s = ref_shop
    code = s.loyalty.referrals.code_for("adv")
    assert code == s.loyalty.referrals.code_for("adv") and len(code) == 10 and set(code) <= set(ALPHABET)
    link = s.loyalty.referrals.link("adv")
    assert link == f"http://shop.test/loyalty/r/{code}"
    assert s.loyalty.referrals.owner(code.lower()) == "adv"
    with pytest.raises(InvalidInput):
        s.loyalty.referrals.code_for("ghost")
    response = s.client.get(f"/loyalty/r/{code.lower()}")
    assert response.status_code == 302 and response.headers["Location"] == "http://shop.test/"
    assert f"loyalty_ref={code}" in response.headers["Set-Cookie"]
    assert s.client.get("/loyalty/r/NOPE2345XY").status_code == 404


def test_friend_rewarded_then_advocate_after_window(ref_shop):
    s = ref_shop
    code = s.loyalty.referrals.code_for("adv")
    t0 = datetime.now(UTC)
    s.loyalty.record_purchase("f1", "friend", 40, email="bob@example.com", placed_at=t0, referral_code=code)
    referral = s.loyalty.referrals.of_order("f1")
    assert referral.status == "pending" and referral.reasons == []
    friend_coupons = [c for c in s.loyalty.coupons.for_customer("friend") if c.code == referral.friend_coupon]
    assert len(friend_coupons) == 1 and str(friend_coupons[0].value) == "5.00"
    assert kinds(s, "friend", "referral_reward")[0].payload["role"] == "friend"
    # inside the refund window: nothing for the advocate
    assert s.loyalty.referrals.process(now=t0 + timedelta(days=29)) == 0
    balance = s.loyalty.points.balance("adv")
    # past it: rewarded once
    assert s.loyalty.referrals.process(now=t0 + timedelta(days=31)) == 1
    assert s.loyalty.referrals.process(now=t0 + timedelta(days=32)) == 0
    assert s.loyalty.points.balance("adv") == balance + 200
    referral = s.loyalty.referrals.of_order("f1")
    assert referral.status == "rewarded" and referral.advocate_coupon == "+200 points"
    assert kinds(s, "adv", "referral_reward")[0].payload["role"] == "advocate"
    assert [r.status for r in s.loyalty.referrals.made_by("adv")] == ["rewarded"]


def test_reward_coupon_is_valid_to_the_end_of_the_shops_local_day(make_shop):
    s = make_shop(LOYALTY_TIMEZONE="Europe/Berlin",
                  LOYALTY_REFERRAL_FRIEND_REWARD={"kind": "fixed", "value": "5.00", "valid_days": 90})
    berlin = ZoneInfo("Europe/Berlin")
    with s.app.app_context():
        s.loyalty.record_purchase("a0", "adv", "10", placed_at=datetime.now(UTC) - timedelta(days=5))
        code = s.loyalty.referrals.code_for("adv")
        before = datetime.now(UTC)
        s.loyalty.record_purchase("f1", "friend", "40", referral_code=code)
        after = datetime.now(UTC)
        referral = s.loyalty.referrals.of_order("f1")
        assert referral.status == "pending"
        coupon = s.loyalty.coupons.get(referral.friend_coupon)
        expected = {end_of_local_day(local_date(t, berlin) + timedelta(days=90), berlin) for t in (before, after)}
        assert coupon.expires_at in expected


def test_full_refund_in_window_cancels_advocate_reward(ref_shop):
    s = ref_shop
    code = s.loyalty.referrals.code_for("adv")
    t0 = datetime.now(UTC)
    s.loyalty.record_purchase("f1", "friend", 40, placed_at=t0, referral_code=code)
    s.loyalty.record_refund("f1")
    assert s.loyalty.referrals.of_order("f1").status == "cancelled"
    assert s.loyalty.referrals.process(now=t0 + timedelta(days=40)) == 0
    assert s.loyalty.referrals.of_order("f1").reasons == ["refunded"]


def test_plan_tick_rewards_matured(ref_shop):
    s = ref_shop
    code = s.loyalty.referrals.code_for("adv")
    t0 = datetime.now(UTC)
    s.loyalty.record_purchase("f1", "friend", 40, placed_at=t0, referral_code=code)
    s.loyalty.state.run_hooks("plan_tick", now=t0 + timedelta(days=31))
    s.db.session.commit()
    assert s.loyalty.referrals.of_order("f1").status == "rewarded"


def test_fraud_not_first_order_and_self_referral(ref_shop):
    s = ref_shop
    code = s.loyalty.referrals.code_for("adv")
    s.loyalty.record_purchase("f0", "friend", 10)
    s.loyalty.record_purchase("f1", "friend", 40, referral_code=code)
    r = s.loyalty.referrals.of_order("f1")
    assert r.status == "rejected" and r.reasons == ["not_first_order"] and r.friend_coupon is None
    s.loyalty.record_purchase("a1", "adv", 40, referral_code=code)
    assert s.loyalty.referrals.of_order("a1").reasons == ["self_referral", "not_first_order", "same_email",
                                                         "same_name"]
    assert kinds(s, "friend", "referral_reward") == []


@pytest.mark.parametrize("email,name,reason", [
    ("annsmith@gmail.com", None, "same_email"),
    ("ANN.SMITH+x@googlemail.com", None, "same_email"),
    (None, "ann smith", "same_name"),
])
def test_fraud_same_email_or_name(ref_shop, email, name, reason):
    s = ref_shop
    code = s.loyalty.referrals.code_for("adv")
    if name:
        s.loyalty.upsert_customer("twin", name=name)
    s.loyalty.record_purchase("t1", "twin", 40, email=email, referral_code=code)
    r = s.loyalty.referrals.of_order("t1")
    assert r.status == "rejected" and r.reasons == [reason]


def test_fraud_unknown_code(ref_shop):
    s = ref_shop
    s.loyalty.record_purchase("x1", "someone", 40, referral_code="NOSUCHCODE")
    r = s.loyalty.referrals.of_order("x1")
    assert r.status == "rejected" and r.reasons == ["unknown_code"] and r.advocate_id is None


def test_fraud_too_many_from_one_ip(ref_shop):
    s = ref_shop
    code = s.loyalty.referrals.code_for("adv")
    t0 = datetime.now(UTC)
    for i in range(3):
        with s.app.test_request_context("/checkout", environ_base={"REMOTE_ADDR": "203.0.113.7"}):
            s.loyalty.record_purchase(f"ip{i}", f"friend{i}", 30, placed_at=t0 + timedelta(hours=i),
                                      referral_code=code)
    with s.app.test_request_context("/checkout", environ_base={"REMOTE_ADDR": "198.51.100.1"}):
        s.loyalty.record_purchase("other", "friend9", 30, placed_at=t0, referral_code=code)
    statuses = [(r.status, r.reasons) for r in (s.loyalty.referrals.of_order(f"ip{i}") for i in range(3))]
    assert statuses == [("pending", []), ("pending", []), ("rejected", ["ip_limit"])]
    assert s.loyalty.referrals.of_order("other").status == "pending"
    # a week later the same IP may refer again
    with s.app.test_request_context("/checkout", environ_base={"REMOTE_ADDR": "203.0.113.7"}):
        s.loyalty.record_purchase("later", "friend5", 30, placed_at=t0 + timedelta(days=8), referral_code=code)
    assert s.loyalty.referrals.of_order("later").status == "pending"
    assert s.loyalty.referrals.of_order("ip0").ip_hash not in (None, "203.0.113.7")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # validation only: one database is enough
@pytest.mark.parametrize("setting,spec", [
    ("LOYALTY_REFERRAL_FRIEND_REWARD", {"kind": "free_shipping", "value": "5"}),   # coupons.create refuses it
    ("LOYALTY_REFERRAL_ADVOCATE_REWARD", {"kind": "fixed", "value": "5", "min_order_total": "abc"}),
    ("LOYALTY_REFERRAL_ADVOCATE_REWARD", {"kind": "points", "value": 3_000_000_000}),
])
def test_reward_that_cannot_be_issued_is_refused_at_setup(make_shop, setting, spec):
    with pytest.raises(InvalidInput) as info:
        make_shop(**{setting: spec})
    assert setting in info.value.errors


@pytest.mark.slow
def test_ip_limit_holds_under_concurrent_referred_checkouts(make_shop):
    s = make_shop(LOYALTY_REFERRAL_MAX_PER_IP_PER_WEEK=1,
                  SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 8, "max_overflow": 24, "pool_timeout": 120})
    s.app.extensions["loyalty"].add_hook("client_ip", lambda state: "203.0.113.7")
    with s.app.app_context():
        s.loyalty.record_purchase("a0", "adv", "10", placed_at=datetime.now(UTC) - timedelta(days=5))
        code = s.loyalty.referrals.code_for("adv")
    n = 8
    outcomes = run_together(s, n, lambda i: s.loyalty.record_purchase(f"f{i}", f"friend{i}", "40", referral_code=code))
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors
    with s.app.app_context():
        statuses = sorted(s.loyalty.referrals.of_order(f"f{i}").status for i in range(n))
        rewarded = s.db.session.execute(select(Coupon.id).where(Coupon.customer_ref.like("friend%"))).all()
    # one friend reward from this IP this week, the other seven rejected (ip_limit)
    assert statuses == ["pending"] + ["rejected"] * (n - 1) and len(rewarded) == 1


def test_export_and_erase(ref_shop):
    s = ref_shop
    code = s.loyalty.referrals.code_for("adv")
    with s.app.test_request_context("/checkout", environ_base={"REMOTE_ADDR": "203.0.113.7"}):
        s.loyalty.record_purchase("f1", "friend", 40, referral_code=code)
    data = s.loyalty.consent.export("adv")
    assert data["referrals"]["code"] == code
    assert data["referrals"]["referrals"][0]["role"] == "advocate"
    assert "ip_hash" not in data["referrals"]["referrals"][0]          # the friend's, not the advocate's
    assert data["points"]["balance"] == s.loyalty.points.balance("adv") and data["tier"] is None
    friend = s.loyalty.consent.export("friend")
    assert friend["referrals"]["referrals"][0]["role"] == "friend"
    held = s.loyalty.referrals.of_order("f1").ip_hash
    assert held and friend["referrals"]["referrals"][0]["ip_hash"] == held   # export lists what is held
    s.loyalty.consent.erase("friend")
    s.loyalty.consent.erase("adv")
    assert s.loyalty.referrals.of_order("f1").ip_hash is None
    assert s.loyalty.referrals.owner(code) is None


def test_referrals_disabled(make_shop):
    s = make_shop(LOYALTY_REFERRAL_ENABLED=False)
    with s.app.app_context():
        s.loyalty.record_purchase("a0", "adv", 10)
        code = s.loyalty.referrals.code_for("adv")
        s.loyalty.record_purchase("f1", "friend", 40, referral_code=code)
        assert s.loyalty.referrals.of_order("f1") is None
        assert s.client.get(f"/loyalty/r/{code}").status_code == 404
        page = s.client.get(s.loyalty.links.wallet("adv").removeprefix("http://shop.test")).get_data(as_text=True)
        assert "Invite your friends" not in page
