"""Campaigns: random holdout, offers through the outbox, uplift report with confidence intervals."""

from __future__ import annotations

import math
import statistics
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from statistics import NormalDist

import pytest
from conftest import assert_one_created
from sqlalchemy import insert, select, update

from flask_loyalty import InvalidInput
from flask_loyalty.models import Campaign, Coupon, Customer, Purchase
from flask_loyalty.models.base import table_of
from flask_loyalty.services.campaigns import newcombe_interval, split_holdout, welch_interval, wilson_interval

UTC = timezone.utc
START = datetime(2026, 6, 1, tzinfo=UTC)
END = START + timedelta(days=14)
OFFER = {"kind": "percent", "value": "15", "min_order_total": "30"}


def test_wilson_and_newcombe_match_published_values():
    # Newcombe (1998), Statistics in Medicine 17: 81/263 -> 0.2553 to 0.3662
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # Newcombe (1998), 56/70 - 48/80, method 10 -> 0.0524 to 0.3339
    low, high = newcombe_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # 0/10 has a proper interval too
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0.25


def test_welch_interval_by_hand():
    a, b = [0, 0, 10, 20, 30], [0, 5, 5]
    diff, low, high = welch_interval(a, b)
    se = math.sqrt(statistics.variance(a) / 5 + statistics.variance(b) / 3)
    z = NormalDist().inv_cdf(0.975)
    assert diff == pytest.approx(12 - 10 / 3)
    assert (low, high) == pytest.approx((diff - z * se, diff + z * se))


def test_split_holdout_exact_and_reproducible():
    ids = range(1, 201)
    held = split_holdout(ids, 0.1, "seed-1")
    assert len(held) == 20 and held == split_holdout(reversed(ids), 0.1, "seed-1")
    assert held != split_holdout(ids, 0.1, "seed-2")
    assert split_holdout(ids, 0, "s") == set() and len(split_holdout(range(7), 0.5, "s")) == 4


def test_launch_holdout_gets_nothing(shop):
    s = shop
    refs = [f"c{i:03d}" for i in range(100)]
    for ref in refs:
        s.loyalty.upsert_customer(ref, email=f"{ref}@example.com")
    campaign = s.loyalty.campaigns.create("summer", customer_refs=refs, offer=OFFER, starts_at=START,
                                          ends_at=END, headline="Summer treat")
    assert campaign.holdout_share == pytest.approx(0.1) and campaign.status == "draft"
    s.loyalty.campaigns.launch("summer", now=START - timedelta(days=1))
    treated = s.loyalty.campaigns.members("summer", "treatment")
    held = s.loyalty.campaigns.members("summer", "holdout")
    assert len(held) == 10 and len(treated) == 90 and not set(held) & set(treated)
    for ref in held:
        assert s.loyalty.coupons.for_customer(ref, now=START + timedelta(days=1)) == []
        assert [m for m in s.loyalty.messages.for_customer(ref) if m.kind == "campaign"] == []
    ref = treated[0]
    coupons = [c for c in s.loyalty.coupons.for_customer(ref, now=START + timedelta(days=1)) if c.campaign == "summer"]
    assert len(coupons) == 1 and coupons[0].kind == "percent" and coupons[0].value == Decimal("15")
    assert coupons[0].expires_at == END
    mails = [m for m in s.loyalty.messages.for_customer(ref) if m.kind == "campaign"]
    assert len(mails) == 1 and mails[0].due_at == START
    assert mails[0].payload["coupon_code"] == coupons[0].code and mails[0].payload["headline"] == "Summer treat"
    with pytest.raises(InvalidInput):
        s.loyalty.campaigns.launch("summer", now=START - timedelta(days=1))


def test_mails_go_through_consent_at_send_time(make_shop):
    s = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT="outbox")
    with s.app.app_context():
        for ref in ("yes", "no"):
            s.loyalty.upsert_customer(ref, email=f"{ref}@example.com")
        s.loyalty.consent.grant("yes", "email_marketing", source="test")
        s.loyalty.campaigns.create("c", customer_refs=["yes", "no"], offer={"kind": "fixed", "value": "5"},
                                   starts_at=START, ends_at=END, holdout_share=0)
        s.loyalty.campaigns.launch("c", now=START)
        s.loyalty.dispatch(now=START + timedelta(hours=1))
        status = {ref: [m.status for m in s.loyalty.messages.for_customer(ref) if m.kind == "campaign"]
                  for ref in ("yes", "no")}
        assert status == {"yes": ["sent"], "no": ["suppressed"]}


def test_report_fixture_uplift_and_intervals(shop):
    s = shop
    refs = [f"c{i:03d}" for i in range(150)]
    for ref in refs:
        s.loyalty.upsert_customer(ref)
    s.loyalty.campaigns.create("fixture", customer_refs=refs, offer={"kind": "fixed", "value": "5"},
                               starts_at=START, ends_at=END, holdout_share=8 / 15)
    s.loyalty.campaigns.launch("fixture", now=START)
    treated = s.loyalty.campaigns.members("fixture", "treatment")
    held = s.loyalty.campaigns.members("fixture", "holdout")
    assert (len(treated), len(held)) == (70, 80)
    order = 0
    ids = dict(s.db.session.execute(select(Customer.ref, Customer.id)).all())

    def buy(ref, total, when):   # bulk rows: the report only reads purchases
        nonlocal order
        order += 1
        s.db.session.execute(insert(table_of(Purchase)).values(
            order_ref=f"o{order}", customer_id=ids[ref], total=Decimal(total), refunded_total=Decimal(0),
            currency="EUR", placed_at=when, channel="online", points_earned=0, points_reversed=0,
            created_at=when))

    for ref in treated[:56]:
        buy(ref, "20", START + timedelta(days=2))
    for ref in held[:48]:
        buy(ref, "10", START + timedelta(days=3))
    buy(treated[0], "20", START - timedelta(days=1))     # before the window: not counted
    buy(held[60], "99", END + timedelta(days=1))          # after it: not counted
    buy(held[61], "30", START + timedelta(days=1))
    s.db.session.commit()
    s.loyalty.record_refund(f"o{order}")                 # refunded in full: not a conversion
    report = s.loyalty.campaigns.report("fixture", now=END + timedelta(days=5))
    assert report.measured_until == END
    t, h = report.treatment, report.holdout
    assert (t.members, t.converters, h.members, h.converters) == (70, 56, 80, 48)
    assert t.conversion == pytest.approx(0.8) and h.conversion == pytest.approx(0.6)
    assert report.conversion_uplift == pytest.approx(0.2)
    assert tuple(round(x, 4) for x in report.conversion_uplift_ci) == (0.0524, 0.3339)
    assert report.relative_conversion_lift == pytest.approx(0.2 / 0.6)
    assert t.revenue == Decimal("1120.00") and h.revenue == Decimal("480.00")
    assert t.revenue_per_member == Decimal("16.00") and h.revenue_per_member == Decimal("6.00")
    assert report.revenue_per_member_uplift == Decimal("10.00")
    assert report.incremental_revenue == Decimal("700.00")
    tv = [20.0] * 56 + [0.0] * 14
    hv = [10.0] * 48 + [0.0] * 32
    diff, low, high = welch_interval(tv, hv)
    assert diff == pytest.approx(10.0)
    assert report.revenue_per_member_uplift_ci == (Decimal(repr(low)).quantize(Decimal("0.01")),
                                                   Decimal(repr(high)).quantize(Decimal("0.01")))
    assert report.incremental_revenue_ci[0] < Decimal("700") < report.incremental_revenue_ci[1]
    data = report.to_dict()
    assert data["treatment"]["revenue"] == "1120.00" and data["conversion_uplift_ci"][0] == pytest.approx(0.0524,
                                                                                                          abs=1e-4)


def test_revenue_uplift_is_exact_decimal_rounded_once(shop):
    lo = shop.loyalty
    t0 = datetime.now(UTC) - timedelta(days=1)
    for ref in ("a", "b", "c"):
        lo.upsert_customer(ref)
    lo.campaigns.create("ab", offer={"kind": "percent", "value": "10"}, customer_refs=["a", "b", "c"],
                        starts_at=t0, ends_at=t0 + timedelta(days=10), holdout_share=0.34)
    lo.campaigns.launch("ab")
    treatment = lo.campaigns.members("ab", "treatment")
    holdout = lo.campaigns.members("ab", "holdout")
    assert len(treatment) == 2 and len(holdout) == 1
    lo.record_purchase("t1", treatment[0], "0.59", placed_at=t0 + timedelta(hours=1))
    lo.record_purchase("h1", holdout[0], "1.00", placed_at=t0 + timedelta(hours=1))
    report = lo.campaigns.report("ab")
    # 0.59 / 2 - 1.00 / 1 = -0.705 exactly: half-even to -0.70 (through floats it became -0.71)
    assert report.revenue_per_member_uplift == Decimal("-0.70")
    assert report.incremental_revenue == Decimal("-1.41")          # -0.705 x 2 = -1.41 exactly


def test_report_with_empty_holdout_has_no_interval(shop):
    s = shop
    s.loyalty.upsert_customer("a")
    s.loyalty.campaigns.create("nohold", customer_refs=["a"], offer={"kind": "free_shipping"},
                               starts_at=START, ends_at=END, holdout_share=0)
    s.loyalty.campaigns.launch("nohold", now=START)
    report = s.loyalty.campaigns.report("nohold", now=END)
    assert report.holdout.members == 0 and report.conversion_uplift is None
    assert report.incremental_revenue_ci is None


def test_segment_audience(shop):
    s = shop
    for i in range(20):
        s.loyalty.record_purchase(f"o{i}", f"c{i}", 10 + i, placed_at=START - timedelta(days=10))
    s.loyalty.analytics.recompute(now=START)
    s.loyalty.segments.define("big", {"monetary": {">=": 20}})
    s.loyalty.campaigns.create("seg", segment="big", offer={"kind": "fixed", "value": "5"}, starts_at=START,
                               ends_at=END)
    s.loyalty.campaigns.launch("seg", now=START)
    members = s.loyalty.campaigns.members("seg")
    assert sorted(members) == sorted(f"c{i}" for i in range(10, 20))
    assert len(s.loyalty.campaigns.members("seg", "holdout")) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # validation only: one database is enough
@pytest.mark.parametrize("kwargs,field", [
    ({"segment": None}, "segment"),
    ({"segment": "nope"}, "segment"),
    ({"offer": {"kind": "gift_card", "value": "5"}}, "offer"),
    ({"offer": {"kind": "percent", "value": "150"}}, "offer"),
    ({"offer": {"kind": "free_shipping", "value": "5"}}, "offer"),    # coupons.create would refuse it at launch
    ({"holdout_share": 1.0}, "holdout_share"),
    ({"holdout_share": -0.1}, "holdout_share"),
    ({"ends_at": START}, "ends_at"),
    ({"starts_at": datetime(2026, 6, 1)}, "starts_at"),
    ({"name": "Has Spaces"}, "name"),
])
def test_bad_campaigns(shop, kwargs, field):
    args = {"name": "c1", "segment": "champions", "offer": {"kind": "fixed", "value": "5"},
            "starts_at": START, "ends_at": END, **kwargs}
    name = args.pop("name")
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.campaigns.create(name, **args)
    assert field in info.value.errors
    assert shop.loyalty.campaigns.all() == []


@pytest.mark.parametrize("commit", [True, False])
def test_launch_of_an_offer_coupons_refuse_writes_nothing(shop, commit):
    s = shop
    for ref in ("c1", "c2"):
        s.loyalty.upsert_customer(ref)
    s.loyalty.campaigns.create("ship", offer={"kind": "free_shipping"}, customer_refs=["c1", "c2"],
                               starts_at=START, ends_at=END, holdout_share=0)
    # an offer stored before create checked it the way coupons.create does
    s.db.session.execute(update(table_of(Campaign)).where(Campaign.name == "ship")
                         .values(offer={"kind": "free_shipping", "value": "5", "valid_days": None,
                                        "min_order_total": None}))
    s.db.session.commit()
    with pytest.raises(InvalidInput) as info:
        s.loyalty.campaigns.launch("ship", now=START, commit=commit)
    assert "offer" in info.value.errors
    s.db.session.commit()           # the host goes on and commits its own work in the same session
    s.db.session.expire_all()
    status = s.db.session.execute(select(Campaign.status).where(Campaign.name == "ship")).scalar_one()
    assert (status, s.loyalty.campaigns.members("ship")) == ("draft", [])
    assert s.db.session.execute(select(Coupon.id).where(Coupon.campaign == "ship")).all() == []


def test_launch_after_window_refused(shop):
    shop.loyalty.campaigns.create("late", customer_refs=["a"], offer={"kind": "fixed", "value": "5"},
                                  starts_at=START, ends_at=END)
    with pytest.raises(InvalidInput):
        shop.loyalty.campaigns.launch("late", now=END + timedelta(seconds=1))


def test_cli_campaign_and_points(make_shop):
    s = make_shop(LOYALTY_POINTS_EXPIRE_DAYS=10, LOYALTY_POINTS_EXPIRY_WARNING_DAYS=0)
    with s.app.app_context():
        for i in range(10):
            s.loyalty.record_purchase(f"o{i}", f"c{i}", 10, placed_at=START - timedelta(days=30))
    runner = s.app.test_cli_runner()
    result = runner.invoke(args=["loyalty", "campaigns", "create", "cli", "--customers",
                                 ",".join(f"c{i}" for i in range(10)), "--kind", "fixed", "--value", "5",
                                 "--starts", START.isoformat(), "--ends", END.isoformat(), "--holdout", "0.2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["loyalty", "campaigns", "launch", "cli", "--now", START.isoformat()])
    assert result.exit_code == 0 and "8 offered, 2 in the holdout" in result.output
    result = runner.invoke(args=["loyalty", "campaigns", "report", "cli", "--now", END.isoformat()])
    assert '"members": 8' in result.output
    result = runner.invoke(args=["loyalty", "points", "expire", "--now", START.isoformat()])
    assert result.exit_code == 0 and "100 points expired" in result.output
    result = runner.invoke(args=["loyalty", "referrals", "process"])
    assert result.exit_code == 0 and "0 advocates rewarded" in result.output


@pytest.mark.parametrize("args", [
    ["points", "expire"], ["referrals", "process"], ["campaigns", "launch", "x"], ["campaigns", "report", "x"],
])
def test_cli_out_of_range_now_is_a_usage_error_with_its_reason(shop, args):
    """An out-of-range --now is a usage error naming the supported dates: `points expire` used to exit 0 and
    `referrals process` to end in a traceback (InvalidInput)."""
    r = shop.app.test_cli_runner().invoke(args=["loyalty", *args, "--now", "1800-01-01T00:00:00+00:00"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.exit_code, repr(r.exception))
    assert "Dates from 1900-01-01 to 9998-12-31" in r.output, r.output


@pytest.mark.slow
def test_concurrent_creates_with_one_name_make_one_campaign_and_invalid_input(make_shop):
    s = make_shop(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 8, "max_overflow": 24, "pool_timeout": 120})
    def create():
        s.loyalty.campaigns.create("spring", offer={"kind": "fixed", "value": "5"}, customer_refs=["a"],
                                   starts_at=START, ends_at=END)

    assert_one_created(s, 6, create)
    with s.app.app_context():
        assert len(s.loyalty.campaigns.all()) == 1
