"""Customer value: profiles, RFM, historical CLV, Pareto, stage (CONTRACT §9), against hand-computed figures."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from flask_loyalty import InvalidInput
from flask_loyalty.errors import NotFound
from flask_loyalty.services import dashboard

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


def day(month: int, d: int, year: int = 2026) -> datetime:
    return datetime(year, month, d, 12, 0, tzinfo=timezone.utc)


def build_shop(shop) -> None:
    """Five buyers with distinct R, F and M, a customer who never bought, one who returned everything.

    Hand-computed (LOYALTY_DEFAULT_MARGIN 0.30):
      A: 5 x 100 (Jan 1 .. Feb 28)                 R5 F5 M4 -> "554" champions, margin 150
      B: 4 x 60, first with items (2 x 30 cost 10), 30 refunded of the last
                                                   R4 F4 M3 -> "443" loyal, margin 40+18+18+9 = 85, net 210
      C: 3 x 50, 10.00 coupon discount on c1        R3 F3 M2 -> "332" need_attention, margin 45, CLV 35
      D: 400 + 300 (Jan 3, Jan 10)                 R2 F2 M5 -> "225" at_risk, margin 210
      E: 20 (Dec 1, 2025)                          R1 F1 M1 -> "111" lost, margin 6
    """
    lo = shop.loyalty
    for i, d in enumerate([day(1, 1), day(1, 15), day(2, 1), day(2, 15), day(2, 28)]):
        lo.record_purchase(f"a{i}", "A", "100", placed_at=d)
    lo.record_purchase("b0", "B", "60", placed_at=day(1, 2), items=[
        {"sku": "S", "name": "Socks", "quantity": 2, "unit_price": "30", "unit_cost": "10"}])
    for i, d in enumerate([day(1, 20), day(2, 10), day(2, 20)], start=1):
        lo.record_purchase(f"b{i}", "B", "60", placed_at=d, channel="store")
    lo.record_refund("b3", amount="30")
    coupon = lo.coupons.create(kind="fixed", value="10.00", code="TENOFF-TENOFF")
    lo.coupons.redeem(coupon.code, customer_ref="C", order_ref="c0", order_total=Decimal("60"))
    for i, d in enumerate([day(1, 5), day(1, 25), day(2, 5)]):
        lo.record_purchase(f"c{i}", "C", "50", placed_at=d)
    lo.record_purchase("d0", "D", "400", placed_at=day(1, 3))
    lo.record_purchase("d1", "D", "300", placed_at=day(1, 10))
    lo.record_purchase("e0", "E", "20", placed_at=day(12, 1, 2025))
    lo.upsert_customer("F", email="f@example.com")
    lo.record_purchase("g0", "G", "80", placed_at=day(2, 1))
    lo.record_refund("g0")


def test_rfm_and_historical_value_by_hand(shop):
    build_shop(shop)
    assert shop.loyalty.analytics.recompute(now=NOW) == 7
    prof = {ref: shop.loyalty.analytics.profile(ref) for ref in "ABCDEFG"}
    expected = {
        "A": (1, 5, "500.00", "554", "champions", "150.00"),
        "B": (9, 4, "210.00", "443", "loyal", "85.00"),
        "C": (24, 3, "150.00", "332", "need_attention", "35.00"),
        "D": (50, 2, "700.00", "225", "at_risk", "210.00"),
        "E": (90, 1, "20.00", "111", "lost", "6.00"),
    }
    for ref, (recency, frequency, monetary, rfm, segment, clv) in expected.items():
        p = prof[ref]
        assert p.customer_ref == ref
        assert (p.recency_days, p.frequency, p.monetary, p.rfm, p.segment, p.historical_clv) == \
            (recency, frequency, Decimal(monetary), rfm, segment, Decimal(clv)), ref
        assert isinstance(p.monetary, Decimal) and isinstance(p.historical_clv, Decimal)
    assert prof["B"].refunds == Decimal("30.00") and prof["B"].margin == Decimal("85.00")
    assert prof["C"].discounts == Decimal("10.00") and prof["C"].margin == Decimal("45.00")
    assert prof["B"].channel_mix == {"online": 1, "store": 3, "catalog": 0, "phone": 0}
    assert prof["B"].main_channel == "store" and prof["A"].main_channel == "online"
    # intervals between distinct purchase days: A Jan 1 -> Feb 28 is 58 days over 4 gaps
    assert prof["A"].avg_interval_days == pytest.approx(14.5)
    assert prof["E"].avg_interval_days is None
    assert (prof["A"].repeat_purchases, prof["A"].tenure_days) == (4, 59)
    for ref in "FG":   # never bought / everything refunded: no RFM, stage trust
        p = prof[ref]
        assert (p.frequency, p.rfm, p.segment, p.recency_days) == (0, None, None, None)
        assert p.stage == "trust" and p.stage_reasons == ["no_purchase"]
    assert prof["G"].refunds == Decimal("80.00") and prof["G"].historical_clv == Decimal("0.00")


def test_margin_of_mixed_items_and_a_changed_default_margin(shop):
    """Items with and without a cost; the default margin is applied at recompute time, also to past orders."""
    lo = shop.loyalty
    lo.record_purchase("m0", "M", "100", placed_at=day(2, 1), items=[
        {"sku": "A", "name": "Costed", "quantity": 3, "unit_price": "20", "unit_cost": "12.50"},   # 22.50
        {"sku": "B", "name": "Uncosted", "quantity": 2, "unit_price": "20"}])                       # 40 x margin
    lo.record_purchase("m1", "M", "50", placed_at=day(2, 10))                                      # 50 x margin
    stored = lo.purchase("m0")
    assert (stored.known_margin, stored.uncosted_total) == (Decimal("22.50"), Decimal("40"))
    assert (lo.purchase("m1").known_margin, lo.purchase("m1").uncosted_total) == (Decimal(0), None)
    lo.record_purchase("m2", "N", "10", placed_at=day(2, 1), items=[        # sold below cost
        {"sku": "C", "name": "Clearance", "quantity": 1, "unit_price": "10", "unit_cost": "12.3456"}])
    assert (lo.purchase("m2").known_margin, lo.purchase("m2").uncosted_total) == (Decimal("-2.3456"), Decimal(0))
    lo.record_refund("m0", amount="25")                                 # three quarters of m0 kept
    shop.app.config["LOYALTY_DEFAULT_MARGIN"] = "0.30"
    lo.analytics.recompute(now=NOW)
    assert lo.analytics.profile("M").margin == Decimal("40.875")       # (22.50 + 12) * 0.75 + 15 = 40.875
    shop.app.config["LOYALTY_DEFAULT_MARGIN"] = "0.50"
    lo.analytics.recompute(now=NOW)
    assert lo.analytics.profile("M").margin == Decimal("56.875")       # (22.50 + 20) * 0.75 + 25 = 56.875
    assert lo.analytics.profile("N").margin == Decimal("-2.3456")


def test_heuristic_prediction_and_stage_by_hand(shop):
    build_shop(shop)
    shop.loyalty.analytics.recompute(now=NOW)
    a = shop.loyalty.analytics.profile("A")
    # heuristic: recent (1 day <= 14.5-day interval) -> p_alive 1; 5 purchase days over max(59, 365)
    # days -> 5 expected in 365; 100 per day at 30% margin, discounted half a year at 10%
    assert a.clv_method == "heuristic"
    assert a.p_alive == pytest.approx(1.0) and a.expected_purchases == pytest.approx(5.0)
    assert a.predicted_clv == Decimal("143.0194")
    assert a.total_clv == a.historical_clv + a.predicted_clv
    d = shop.loyalty.analytics.profile("D")
    assert d.p_alive == pytest.approx(7 / 50)
    assert d.expected_purchases == pytest.approx(7 / 50 * 2)
    # A and D are the top 2 of 5 by total value (top 30%); A recent -> reward, D not -> relationship
    assert a.clv_top_share == 0.0 and d.clv_top_share == pytest.approx(0.2)
    assert a.stage == "reward" and a.stage_reasons == ["top_value", "recent_repeat_buyer"]
    assert d.stage == "relationship" and d.stage_reasons == ["repeat_buyer", "satisfaction_unknown"]
    b = shop.loyalty.analytics.profile("B")
    assert b.stage == "relationship" and b.stage_reasons == ["repeat_buyer", "not_top_value"]
    e = shop.loyalty.analytics.profile("E")
    assert e.stage == "trust" and e.stage_reasons == ["first_purchase", "lapsed"]
    assert shop.loyalty.analytics.model_params() is None
    assert "too little history" in shop.loyalty.analytics.model().reason


def test_pareto_by_hand(shop):
    build_shop(shop)
    shop.loyalty.analytics.recompute(now=NOW)
    report = shop.loyalty.analytics.pareto()
    # ranked by historical value: D 210, A 150, B 85, C 35, E 6 (total 486; revenue 1580)
    assert report.buyers == 5 and report.customers == 2       # ceil(0.3 * 5)
    assert report.revenue_share == pytest.approx(1200 / 1580)
    assert report.profit_share == pytest.approx(360 / 486)
    assert report.revenue == Decimal("1580.00") and report.profit == Decimal("486.00")
    expected_curve = [(0, 0, 0), (0.2, 700 / 1580, 210 / 486), (0.4, 1200 / 1580, 360 / 486),
                      (0.6, 1410 / 1580, 445 / 486), (0.8, 1560 / 1580, 480 / 486), (1, 1, 1)]
    assert len(report.curve) == len(expected_curve)
    for point, want in zip(report.curve, expected_curve, strict=True):
        assert (point.customer_share, point.revenue_share, point.profit_share) == pytest.approx(want)
    one = shop.loyalty.analytics.pareto(top_share=0.2)
    assert one.customers == 1 and one.revenue_share == pytest.approx(700 / 1580)
    everyone = shop.loyalty.analytics.pareto(top_share=1)
    assert everyone.revenue_share == 1.0 and everyone.profit_share == 1.0
    for bad in (0, -0.1, 1.5, "0.3", True, float("nan")):
        with pytest.raises(InvalidInput):
            shop.loyalty.analytics.pareto(top_share=bad)


def test_pareto_takes_ceil_of_the_share_as_written(shop):
    """``ceil(top_share * buyers)``: a tiny positive share takes the best buyer, and a share whose float
    product is a hair off (0.6 * 5 = 3.0000000000000004 in floats) is taken as written."""
    build_shop(shop)
    shop.loyalty.analytics.recompute(now=NOW)
    tiny = shop.loyalty.analytics.pareto(top_share=1e-10)
    assert tiny.customers == 1 and tiny.revenue_share == pytest.approx(700 / 1580)
    assert shop.loyalty.analytics.pareto(top_share=Decimal("1E-12")).customers == 1
    assert shop.loyalty.analytics.pareto(top_share=0.6).customers == 3
    assert shop.loyalty.analytics.pareto(top_share=0.61).customers == 4
    assert shop.loyalty.analytics.pareto(top_share=0.7).customers == 4
    # the dashboard's Pareto page counts its top buyers the same way
    profit, revenue = dashboard.top_profit_shares(shop.loyalty.state, Decimal("1E-10"))
    assert (profit, revenue) == (Decimal(str(tiny.profit_share)), Decimal(str(tiny.revenue_share)))


def test_pareto_of_an_empty_shop(shop):
    assert shop.loyalty.analytics.recompute(now=NOW) == 0
    report = shop.loyalty.analytics.pareto()
    assert (report.customers, report.revenue_share, report.profit_share, report.curve) == (0, 0.0, 0.0, [])


def test_ties_share_the_lower_score_and_quintiles(shop):
    # ten buyers with distinct totals -> exact quintiles; two pairs share a purchase day
    for i in range(10):
        placed = NOW - timedelta(days=1 + (i // 2) * 10)
        shop.loyalty.record_purchase(f"o{i}", f"c{i}", str(10 * (i + 1)), placed_at=placed)
    shop.loyalty.analytics.recompute(now=NOW)
    m_scores = [shop.loyalty.analytics.profile(f"c{i}").m_score for i in range(10)]
    assert m_scores == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    r_scores = [shop.loyalty.analytics.profile(f"c{i}").r_score for i in range(10)]
    assert r_scores == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    f_scores = {shop.loyalty.analytics.profile(f"c{i}").f_score for i in range(10)}
    assert f_scores == {1}     # everybody bought once: one tie, the lowest score


def test_purchases_after_now_are_ignored_and_recompute_replaces(shop):
    shop.loyalty.record_purchase("o1", "x", "10", placed_at=day(1, 1))
    shop.loyalty.record_purchase("o2", "x", "30", placed_at=day(4, 1))
    assert shop.loyalty.analytics.recompute(now=NOW) == 1
    p = shop.loyalty.analytics.profile("x")
    assert (p.frequency, p.monetary, p.recency_days) == (1, Decimal("10.00"), 59)
    assert shop.loyalty.analytics.recompute(now=day(5, 1)) == 1
    shop.db.session.expire_all()
    p = shop.loyalty.analytics.profile("x")
    assert (p.frequency, p.monetary) == (2, Decimal("40.00"))
    assert p.computed_at == day(5, 1)


def test_profile_errors(shop):
    with pytest.raises(NotFound):
        shop.loyalty.analytics.profile("nobody")
    shop.loyalty.record_purchase("o1", "x", "10", placed_at=day(1, 1))
    with pytest.raises(NotFound):          # not recomputed yet
        shop.loyalty.analytics.profile("x")
    with pytest.raises(InvalidInput):
        shop.loyalty.analytics.recompute(now=datetime(2026, 1, 1))   # naive


def test_survey_consent_and_loyal_indicator(make_shop):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False)
    with shop.app.app_context():
        lo = shop.loyalty
        start = datetime(2025, 1, 1, tzinfo=timezone.utc)
        lo.record_purchase("h0", "H", "50", placed_at=start)
        lo.record_purchase("h1", "H", "50", placed_at=start + timedelta(days=300))
        lo.record_purchase("u0", "U", "50", placed_at=start)
        lo.record_purchase("u1", "U", "50", placed_at=start + timedelta(days=30))
        lo.consent.grant("H", "email_marketing", source="checkout", double_opt_in=False,
                         now=start + timedelta(days=1))
        lo.consent.grant("U", "email_marketing", source="checkout", double_opt_in=False,
                         now=start + timedelta(days=1))
        lo.surveys.answer("u1", {"recommend": 3, "experience": 2}, now=start + timedelta(days=32))
        lo.surveys.answer("h1", {"recommend": 10}, now=start + timedelta(days=302))
        now = start + timedelta(days=320)
        lo.analytics.recompute(now=now)
        h, u = lo.analytics.profile("H"), lo.analytics.profile("U")
        assert h.consent is True and h.loyal_indicator is True          # subscribed 319 days, bought 20 days ago
        assert u.consent is True and u.loyal_indicator is False         # no purchase in the last 183 days
        assert (u.survey_recommend, u.survey_experience) == (3, 2)
        assert h.survey_recommend == 10 and h.survey_experience is None
        assert u.stage == "trust" and "dissatisfied" in u.stage_reasons
        assert h.stage == "reward" and h.stage_reasons[:2] == ["top_value", "promoter"]
        assert "loyal_indicator" in h.stage_reasons
        assert lo.segments.members("trust") == ["U"] and lo.segments.members("reward") == ["H"]


def test_erase_and_export_hooks(shop):
    shop.loyalty.record_purchase("o1", "x", "10", placed_at=day(1, 1))
    shop.loyalty.analytics.recompute(now=NOW)
    customer = shop.loyalty.customer("x")
    data: dict = {}
    shop.loyalty.state.run_hooks("export", customer=customer, data=data)
    assert data["value"]["frequency"] == 1 and data["value"]["monetary"] == "10.00"
    shop.loyalty.state.run_hooks("erase", customer=customer)
    shop.db.session.commit()
    with pytest.raises(NotFound):
        shop.loyalty.analytics.profile("x")


def test_cli_recompute(shop):
    shop.loyalty.record_purchase("o1", "x", "10", placed_at=day(1, 1))
    runner = shop.app.test_cli_runner()
    result = runner.invoke(args=["loyalty", "recompute", "--now", "2026-03-01T00:00:00+00:00"])
    assert result.exit_code == 0, result.output
    assert "1 customers scored" in result.output and "heuristic" in result.output
    assert shop.loyalty.analytics.profile("x").recency_days == 59
    bad = runner.invoke(args=["loyalty", "recompute", "--now", "yesterday"])
    assert bad.exit_code != 0


def test_cli_recompute_refuses_an_out_of_range_now_without_a_traceback(shop):
    """An out-of-range --now is a usage error naming the supported dates (an InvalidInput escaped as a traceback)."""
    r = shop.app.test_cli_runner().invoke(args=["loyalty", "recompute", "--now", "1800-01-01T00:00:00+00:00"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Dates from 1900-01-01 to 9998-12-31" in r.output, r.output


def test_engagement_from_open_and_click_tracking(shop):
    from flask_loyalty.services import outbox, tracking

    shop.loyalty.record_purchase("o1", "x", "10", placed_at=day(1, 1))
    shop.loyalty.record_purchase("o2", "y", "10", placed_at=day(1, 1))
    customer = shop.loyalty.customer("x")
    messages = [outbox.enqueue(shop.loyalty.state, "thank_you", customer, dedupe_key=f"t{i}") for i in range(3)]
    messages[0].links = ["https://shop.test/page"]
    shop.db.session.commit()
    ids = [m.id for m in messages]
    state = shop.loyalty.state
    assert tracking.record_open(state, ids[0], now=datetime(2026, 2, 1, 20, 5, tzinfo=timezone.utc))
    assert tracking.record_open(state, ids[1], now=datetime(2026, 2, 2, 20, 40, tzinfo=timezone.utc))
    assert tracking.record_open(state, ids[2], now=datetime(2026, 2, 3, 8, 0, tzinfo=timezone.utc))
    tracking.click_target(state, ids[0], 0, now=datetime(2026, 2, 1, 20, 6, tzinfo=timezone.utc))
    shop.loyalty.analytics.recompute(now=NOW)
    x, y = shop.loyalty.analytics.profile("x"), shop.loyalty.analytics.profile("y")
    assert (x.opens, x.clicks, x.reading_hour) == (3, 1, 20)
    assert (y.opens, y.clicks, y.reading_hour) == (0, 0, None)


def test_profile_table_keeps_room_for_heap_only_updates(shop):
    """PostgreSQL creates the profile table with fillfactor 45 (every recompute rewrites every row)."""
    from sqlalchemy import text

    from flask_loyalty.models.profile import PROFILE_FILLFACTOR

    session = shop.db.session
    if shop.db.engine.dialect.name == "postgresql":
        options = session.execute(text(
            "SELECT reloptions FROM pg_class WHERE relname = 'loyalty_customer_profile'")).scalar_one()
        assert options == [f"fillfactor={PROFILE_FILLFACTOR}"]
    else:   # SQLite has no such storage setting: the table is created as it is
        assert session.execute(text("SELECT count(*) FROM loyalty_customer_profile")).scalar_one() == 0


@pytest.mark.parametrize(("scores", "segment"), [
    ((5, 4, 3), "champions"), ((5, 5, 5), "champions"), ((4, 5, 4), "loyal"), ((3, 4, 3), "loyal"),
    ((5, 3, 3), "potential_loyalists"), ((4, 1, 2), "potential_loyalists"), ((5, 1, 1), "new"),
    ((4, 1, 1), "promising"), ((3, 3, 2), "need_attention"), ((3, 2, 1), "about_to_sleep"),
    ((3, 1, 1), "about_to_sleep"), ((1, 5, 5), "cant_lose"), ((2, 4, 5), "cant_lose"), ((2, 3, 2), "at_risk"),
    ((1, 4, 3), "at_risk"), ((2, 1, 2), "hibernating"), ((2, 1, 1), "hibernating"), ((1, 2, 2), "lost"),
])
def test_rfm_segment_rules(scores, segment):
    """The documented mapping (R and FM = (F + M + 1) // 2), at the edges of each rule."""
    from flask_loyalty.services.analytics import RFM_SEGMENTS, rfm_segment

    assert rfm_segment(*scores) == segment
    assert {rfm_segment(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)} == set(RFM_SEGMENTS)
