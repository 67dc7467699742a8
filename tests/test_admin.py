"""The shop owner's dashboard: the guard closes everything, figures match hand-computed ones, CSV = tables."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import func, select, update

from flask_loyalty import Loyalty
from flask_loyalty.models import AdminAuditEntry, Customer, GiftCard, GiftCardMovement
from flask_loyalty.services import admin_lists, audit, dashboard
from flask_loyalty.services.dashboard import Period, area_model
from flask_loyalty.spreadsheet import FORMULA_START

UTC = timezone.utc
PREFIX = "/loyalty/admin"


def allow():
    return True


def who():
    return "alice@shop"


# ----------------------------------------------------------------------------- helpers


def admin_urls(app):
    """Every admin URL of the app, with placeholder arguments, and its methods."""
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("loyalty_admin."):
            continue
        values = {}
        for arg in rule.arguments:
            conv = rule._converters[arg].__class__.__name__
            values[arg] = 1 if conv == "IntegerConverter" else "c1"
        with app.test_request_context():
            from flask import url_for

            url = url_for(rule.endpoint, **values)
        out.append((url, sorted(rule.methods - {"HEAD", "OPTIONS"})))
    return out


class TableParser(HTMLParser):
    """Collects tables by id: header row and body rows as text."""

    def __init__(self):
        super().__init__()
        self.tables = {}
        self._id = None
        self._row = None
        self._cell = None
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._id = attrs.get("id")
            self.tables[self._id] = []
        elif tag == "tr" and self._id is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._id = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._id].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables_of(html: str):
    parser = TableParser()
    parser.feed(html)
    return parser.tables


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def add_message(shop, customer_ref, *, sent_at, kind="campaign", marketing=True, status="sent"):
    message = area_model("message", "Message")
    cust = shop.loyalty.customer(customer_ref)
    row = message(customer_id=cust.id, kind=kind, purpose="email_marketing" if marketing else None,
                  marketing=marketing, priority=0, payload={}, status=status, due_at=sent_at, first_due_at=sent_at,
                  sent_at=sent_at if status == "sent" else None, attempts=1, message_id=f"<{uuid.uuid4()}@t>",
                  created_at=sent_at)
    shop.db.session.add(row)
    shop.db.session.flush()
    return row


def add_engagement(shop, msg, event, at):
    """An open or click row, with the mail's first-open / first-click times kept as tracking keeps them."""
    engagement = area_model("message", "Engagement")
    shop.db.session.add(engagement(customer_id=msg.customer_id, message_id=msg.id, kind=msg.kind, event=event,
                                   at=at, hour=at.hour))
    msg.opened_at = min(msg.opened_at or at, at)
    if event == "click":
        msg.clicked_at = min(msg.clicked_at or at, at)


def add_response(shop, order_ref, recommend, at, comment=None, source=None):
    response = area_model("survey", "SurveyResponse")
    answer = area_model("survey", "SurveyAnswer")
    purchase = shop.loyalty.purchase(order_ref)
    row = response(purchase_id=purchase.id, customer_id=purchase.customer_id, answered_at=at, updated_at=at,
                   completed_at=at, channel="page", created_at=at)
    shop.db.session.add(row)
    shop.db.session.flush()
    shop.db.session.add(answer(response_id=row.id, question="recommend", type="scale", number=recommend))
    if comment:
        shop.db.session.add(answer(response_id=row.id, question="comment", type="text", text=comment))
    if source:
        shop.db.session.add(answer(response_id=row.id, question="source", type="choice", choice=source))
    return row


# ----------------------------------------------------------------------------- the fixture


def add_period_orders(shop):
    """Five orders of three customers around the last 30 days, one refunded in part.

    Returns the period and midday of its first day.
    """
    period = dashboard.period_for(shop.loyalty.state, days=30)
    d = period.start + timedelta(hours=12)
    buy = shop.loyalty.record_purchase
    buy("o1", "c1", "100.00", placed_at=d - timedelta(days=50), email="c1@example.com")
    buy("o2", "c1", "50.00", placed_at=d + timedelta(days=4))
    buy("o3", "c2", "40.00", placed_at=d + timedelta(days=2), email="c2@example.com")
    buy("o4", "c2", "60.00", placed_at=d + timedelta(days=19))
    shop.loyalty.record_refund("o4", amount="10.00")
    buy("o5", "c3", "30.00", placed_at=d + timedelta(days=9), email="c3@example.com")
    return period, d


@pytest.fixture
def figures(shop):
    """A small shop whose overview figures are computed by hand below (period = the last 30 days)."""
    period, d = add_period_orders(shop)
    buy = shop.loyalty.record_purchase
    buy("o6", "c4", "20.00", placed_at=d - timedelta(days=21))
    buy("o7", "c5", "80.00", placed_at=d - timedelta(days=11))
    buy("o8", "c5", "20.00", placed_at=d - timedelta(days=6))
    return shop, period, d


def test_customer_and_order_figures_match_hand_computed(figures):
    shop, period, _d = figures
    data = dashboard.overview(shop.loyalty.state, period)
    m = data.metric
    assert (m("customers").value, m("customers").previous) == (5, 3)
    assert (m("new_customers").value, m("new_customers").previous) == (2, 2)
    assert (m("active_customers").value, m("active_customers").previous) == (3, 2)
    assert (m("orders").value, m("orders").previous) == (4, 3)
    assert m("repeat_rate").value == Decimal("0.6667") and m("repeat_rate").previous == Decimal("0.5000")
    assert m("frequency").value == Decimal("1.3333") and m("frequency").previous == Decimal("1.5000")
    assert m("revenue").value == Decimal("170.00") and m("revenue").previous == Decimal("120.00")
    assert m("aov").value == Decimal("42.50") and m("aov").previous == Decimal("40.00")
    assert m("returning_revenue").value == Decimal("100.00") and m("returning_revenue").previous == Decimal("20.00")
    assert m("returning_share").value == Decimal("0.5882")
    # points: 1 per unit earned (400), 10 reversed by the partial refund; written now = inside the period
    assert m("points_outstanding").value == 390 and m("points_outstanding").previous == 0
    assert m("points_liability").value == Decimal("19.50")
    assert m("revenue").trend == "up" and m("aov").change == Decimal("2.50")


def test_period_previous_and_validation(shop):
    state = shop.loyalty.state
    p = dashboard.period_for(state, start=date(2026, 3, 1), end=date(2026, 3, 31))
    assert p.start == datetime(2026, 3, 1, tzinfo=UTC) and p.end == datetime(2026, 4, 1, tzinfo=UTC)
    assert p.previous == Period(datetime(2026, 1, 29, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert p.days == 31
    from flask_loyalty import InvalidInput

    with pytest.raises(InvalidInput):
        dashboard.period_for(state, start=date(2026, 3, 2), end=date(2026, 3, 1))
    with pytest.raises(InvalidInput):
        dashboard.period_for(state, days=0)


def test_gift_card_liability_of_the_previous_period_uses_its_own_end_for_expiry(shop):
    """A card issued in the previous period, unspent and unexpired at that period's end, is a liability then.

    docs/dashboard.md: "unspent, unexpired gift-card balances at the period's end" - for the previous
    period, expiry is judged at the previous period's end, not the current one's.
    """
    state = shop.loyalty.state
    period = dashboard.period_for(state, days=30)
    card = shop.loyalty.gift_cards.issue("25.00")
    issued_at = period.previous.start + timedelta(days=5)
    expires_at = period.start + timedelta(days=5)        # after the previous period's end, inside this one
    session = shop.db.session
    session.execute(update(GiftCard).where(GiftCard.id == card.id).values(created_at=issued_at,
                                                                          expires_at=expires_at))
    session.execute(update(GiftCardMovement).where(GiftCardMovement.gift_card_id == card.id)
                    .values(created_at=issued_at))
    session.commit()
    m = dashboard.overview(state, period).metric("gift_card_liability")
    assert m.value == Decimal("0")                          # expired by the current period's end: right
    assert m.previous == Decimal("25.00"), "unexpired at the previous period's end, yet left out"


def test_previous_period_has_whole_local_days_across_a_dst_change(make_shop):
    """The previous period is as many local calendar days as the period and starts at local midnight.

    Period = local days 29 Mar .. 4 Apr 2026 in Europe/Madrid (DST starts 29 Mar): 7 days minus 1 hour.
    The previous period is the local days 22 .. 28 Mar, so an order at 00:30 local on 22 Mar is in it
    (subtracting the real length would start it at 01:00 local and lose that order).
    """
    shop = make_shop(LOYALTY_TIMEZONE="Europe/Madrid")
    with shop.app.app_context():
        state = shop.loyalty.state
        period = dashboard.period_for(state, start=date(2026, 3, 29), end=date(2026, 4, 4))
        madrid_midnight_22 = datetime(2026, 3, 21, 23, 0, tzinfo=UTC)      # 22 Mar 00:00 CET
        shop.loyalty.record_purchase("dst1", "d1", "10.00", placed_at=madrid_midnight_22 + timedelta(minutes=30))
        m = dashboard.overview(state, period).metric("orders")
        assert m.previous == 1, period.previous
        assert period.previous.start == madrid_midnight_22, period.previous


def test_repeat_rate_counts_two_orders_placed_at_the_same_instant(shop):
    """Repeat-purchase rate: "share of the period's buyers who have two or more orders by the period's end".

    A new customer with two orders at the same timestamp (e.g. a split shipment recorded together) has
    two orders: a repeat buyer; only one of them (the lowest id) is their first order, so the other one
    is revenue from a returning customer.
    """
    state = shop.loyalty.state
    period = dashboard.period_for(state, days=30)
    at = period.start + timedelta(days=3)
    shop.loyalty.record_purchase("t1", "tie", "10.00", placed_at=at)
    shop.loyalty.record_purchase("t2", "tie", "20.00", placed_at=at)
    m = dashboard.overview(state, period).metric
    assert m("orders").value == 2 and m("active_customers").value == 1
    assert m("repeat_rate").value == Decimal("1.0000")
    assert m("returning_revenue").value == Decimal("20.00")


def test_coupon_redemptions_count_orders_in_other_currencies(shop):
    """Docs: orders in other currencies "count as orders but not as revenue".  A percent coupon used on a USD
    order is a redemption; only its discount stays out of the discount cost."""
    state = shop.loyalty.state
    period = dashboard.period_for(state, days=30)
    code = shop.loyalty.coupons.create(kind="percent", value=10).code
    shop.loyalty.record_purchase("usd1", "cu", "50.00", currency="USD")
    shop.loyalty.coupons.redeem(code, customer_ref="cu", order_ref="usd1", order_total="50.00", currency="USD")
    m = dashboard.overview(state, period).metric
    assert m("discount_cost").value == Decimal("0")          # not in EUR: right
    assert m("redemptions").value == 1


def test_coupon_gift_card_survey_mail_figures(figures):
    shop, period, d = figures
    if area_model("coupon", "Coupon") is None:
        pytest.fail("coupons not installed: every area ships with the package")
    coupons = shop.loyalty.coupons
    state = shop.loyalty.state
    base = dashboard.overview(state, period).metric("coupons_issued").value   # welcome coupons of the plan
    used = coupons.create(kind="fixed", value="5.00")
    coupons.create(kind="percent", value=10)
    coupons.redeem(used.code, customer_ref="c3", order_ref="o5", order_total="30.00")
    shop.loyalty.gift_cards.issue("25.00")
    data = dashboard.overview(state, period)
    m = data.metric
    assert (m("coupons_issued").value, m("coupons_issued").previous) == (base + 2, 0)
    assert m("coupon_redemption_rate").value == dashboard.ratio(1, base + 2)
    assert m("redemptions").value == 1 and m("discount_cost").value == Decimal("5.00")
    assert m("gift_card_liability").value == Decimal("25.00") and m("gift_card_liability").previous == Decimal("0")

    if area_model("survey", "SurveyResponse") is None or area_model("message", "Message") is None:
        pytest.fail("survey or outbox not installed: every area ships with the package")
    add_response(shop, "o2", 10, d + timedelta(days=5), comment="Great tea", source="search")
    add_response(shop, "o3", 9, d + timedelta(days=3), source="friend")
    add_response(shop, "o5", 3, d + timedelta(days=10), comment="Late delivery", source="search")
    add_response(shop, "o7", 5, d - timedelta(days=10))
    for ref, day in (("c1", 1), ("c2", 2), ("c3", 3), ("c5", 1)):
        add_message(shop, ref, kind="survey_invite", sent_at=d + timedelta(days=day), marketing=True)
    m1 = add_message(shop, "c1", sent_at=d + timedelta(days=1))      # opened, clicked, bought o2 on day 4
    add_engagement(shop, m1, "open", d + timedelta(days=1, hours=1))
    add_engagement(shop, m1, "click", d + timedelta(days=3))
    m2 = add_message(shop, "c3", sent_at=d + timedelta(days=2))      # opened only
    add_engagement(shop, m2, "open", d + timedelta(days=2, hours=2))
    add_message(shop, "c2", sent_at=d + timedelta(days=3))           # nothing
    add_message(shop, "c4", sent_at=d - timedelta(days=20))          # previous period, clicked, no purchase
    shop.db.session.commit()
    data = dashboard.overview(state, period)
    m = data.metric
    assert (m("survey_responses").value, m("survey_responses").previous) == (3, 1)
    assert m("nps").value == 33 and m("nps").previous == -100 and m("nps").trend == "up"
    assert m("response_rate").value == Decimal("0.7500")     # 3 responses / 4 invitations sent
    # survey invitations are marketing mails too: 4 + 3 campaign mails sent in the period
    assert [(s, n) for s, n, _p in data.funnel] == [("Sent", 7), ("Opened", 2), ("Clicked", 1), ("Bought", 1)]
    assert m("mails_sent").previous == 1 and m("mail_conversion").value == Decimal("0.1429")


def test_unsubscribes_counted(figures):
    shop, period, _d = figures
    if area_model("consent", "ConsentEvent") is None:
        pytest.fail("consent not installed: every area ships with the package")
    shop.loyalty.consent.grant("c2", "surveys", source="checkout")
    shop.loyalty.consent.grant("c1", "email_marketing", source="checkout")
    shop.loyalty.consent.withdraw("c1", "email_marketing", source="unsubscribe")
    shop.loyalty.consent.withdraw("c2", "surveys", source="preferences")   # not e-mail marketing
    m = dashboard.overview(shop.loyalty.state, period).metric("unsubscribes")
    assert (m.value, m.previous) == (1, 0)


def _direct_figures(shop, period):
    """The purchase and funnel figures computed row by row in Python, straight from the definitions."""
    from flask_loyalty.models import Engagement, Message, Purchase

    session = shop.db.session
    orders = session.execute(select(Purchase)).unique().scalars().all()
    by_customer = {}
    for o in orders:
        by_customer.setdefault(o.customer_id, []).append(o)
    days = int(shop.loyalty.state.config["LOYALTY_ADMIN_ATTRIBUTION_DAYS"])

    def window(w):
        inside = [o for o in orders if w.start <= o.placed_at < w.end]
        buyers = {o.customer_id for o in inside}
        first_at = {cid: min(o.placed_at for o in mine) for cid, mine in by_customer.items()}
        new = [cid for cid, at in first_at.items() if w.start <= at < w.end]
        # "two or more orders by the period's end": orders at the same instant count as two
        single = [cid for cid in new if sum(1 for o in by_customer[cid] if o.placed_at < w.end) == 1]
        revenue = sum((o.total - o.refunded_total for o in inside), Decimal(0))
        # the first order: the earliest, and of orders at the same instant the lowest id
        first_order = {cid: min(mine, key=lambda o: (o.placed_at, o.id)) for cid, mine in by_customer.items()}
        first_net = sum((first_order[cid].total - first_order[cid].refunded_total for cid in new), Decimal(0))
        sent = [m for m in session.execute(select(Message)).unique().scalars()
                if m.status == "sent" and m.marketing and m.sent_at and w.start <= m.sent_at < w.end]
        opened = clicked = bought = 0
        for m in sent:
            events = session.execute(select(Engagement).where(Engagement.message_id == m.id)).scalars().all()
            if not events:
                continue
            opened += 1
            clicks = [e.at for e in events if e.event == "click"]
            if clicks:
                clicked += 1
                first_click = min(clicks)
                if any(first_click <= o.placed_at < first_click + timedelta(days=days)
                       for o in by_customer.get(m.customer_id, [])):
                    bought += 1
        return {"customers": sum(1 for at in first_at.values() if at < w.end), "new_customers": len(new),
                "active_customers": len(buyers), "orders": len(inside), "revenue": revenue,
                "repeat": len(buyers) - len(single), "returning_revenue": revenue - first_net,
                "funnel": (len(sent), opened, clicked, bought)}

    return window(period), window(period.previous)


@pytest.mark.parametrize("days", [7, 30, 365])
def test_overview_equals_direct_computation_on_random_shop(shop, days):
    """Random orders (backdated, refunded, same-instant ties), mails, opens and clicks: every query path agrees."""
    import random

    rnd = random.Random(days)
    state = shop.loyalty.state
    now = datetime.now(UTC)
    for i in range(60):
        ref = f"r{rnd.randint(1, 15)}"
        placed = now - timedelta(days=rnd.uniform(0, 2.5 * days), hours=rnd.randint(0, 23))
        shop.loyalty.record_purchase(f"ro{i}", ref, f"{rnd.randint(5, 90)}.00", placed_at=placed)
        if rnd.random() < 0.15:
            shop.loyalty.record_refund(f"ro{i}", amount=None if rnd.random() < 0.5 else "3.00")
        if rnd.random() < 0.1:   # a second order at the very same instant
            shop.loyalty.record_purchase(f"ro{i}t", ref, "7.00", placed_at=placed)
    for _i in range(40):
        sent_at = now - timedelta(days=rnd.uniform(0, 2.2 * days))
        ref = shop.loyalty.upsert_customer(f"r{rnd.randint(1, 16)}").ref
        msg = add_message(shop, ref, sent_at=sent_at, marketing=rnd.random() < 0.9,
                          status="sent" if rnd.random() < 0.85 else "failed")
        if rnd.random() < 0.5:
            add_engagement(shop, msg, "open", sent_at + timedelta(hours=2))
            if rnd.random() < 0.6:
                add_engagement(shop, msg, "click", sent_at + timedelta(hours=rnd.randint(3, 200)))
    shop.db.session.commit()
    period = dashboard.period_for(state, days=days)
    now_fig, prev_fig = _direct_figures(shop, period)
    data = dashboard.overview(state, period)
    m = data.metric
    for key in ("customers", "new_customers", "active_customers", "orders", "revenue", "returning_revenue"):
        assert (m(key).value, m(key).previous) == (now_fig[key], prev_fig[key]), key
    assert m("repeat_rate").value == dashboard.ratio(now_fig["repeat"], now_fig["active_customers"])
    assert m("repeat_rate").previous == dashboard.ratio(prev_fig["repeat"], prev_fig["active_customers"])
    assert [n for _s, n, _p in data.funnel] == list(now_fig["funnel"])
    assert [p for _s, _n, p in data.funnel] == list(prev_fig["funnel"])
    assert dashboard.mail_funnel(state, period) == data.funnel
    # a period in the past (orders after its end exist): buyers counted with DISTINCT, not from last purchases
    past = Period(period.previous.start, period.start)
    assert dashboard.overview(state, past).metric("active_customers").value == prev_fig["active_customers"]


def test_cohort_retention_hand_computed(shop):
    buy = shop.loyalty.record_purchase
    at = lambda y, mo, da: datetime(y, mo, da, 12, tzinfo=UTC)  # noqa: E731
    buy("x1a", "x1", "10", placed_at=at(2026, 1, 15))
    buy("x1b", "x1", "10", placed_at=at(2026, 2, 10))
    buy("x1c", "x1", "10", placed_at=at(2026, 4, 1))
    buy("x2a", "x2", "10", placed_at=at(2026, 1, 20))
    buy("x3a", "x3", "10", placed_at=at(2026, 2, 5))
    buy("x3b", "x3", "10", placed_at=at(2026, 3, 5))
    buy("x3c", "x3", "10", placed_at=at(2026, 3, 25))
    chart = dashboard.cohort_chart(shop.loyalty.state, at(2026, 4, 15), months=4)
    assert chart.table.columns == ["Cohort", "Customers", "Month 0", "Month 1", "Month 2", "Month 3"]
    assert chart.table.text_rows() == [
        ["2026-01", "2", "100.0%", "50.0%", "0.0%", "50.0%"],
        ["2026-02", "1", "100.0%", "100.0%", "0.0%", ""],
        ["2026-03", "0", "", "", "", ""],
        ["2026-04", "0", "", "", "", ""],
    ]
    assert "<svg" in chart.svg and "<title" in chart.svg


def test_pareto_hand_computed(shop):
    for i, amount in enumerate(("100", "50", "30", "20")):
        shop.loyalty.record_purchase(f"p{i}", f"k{i}", amount)
    chart = dashboard.pareto_chart(shop.loyalty.state, datetime.now(UTC))
    assert chart.table.text_rows() == [
        ["25.0%", "1", "100.00", "50.0%"],
        ["50.0%", "2", "150.00", "75.0%"],
        ["75.0%", "3", "180.00", "90.0%"],
        ["100.0%", "4", "200.00", "100.0%"],
    ]
    assert "top 30.0%: 55.0% of revenue" in chart.table.caption


def test_pareto_chart_counts_revenue_in_the_shop_currency_only(shop):
    """Money figures are "in LOYALTY_CURRENCY (orders in other currencies count as orders but not as revenue)".

    The Pareto chart ranks and sums spend in EUR only: a 1000 USD order is not 1000 EUR of revenue and does
    not make its buyer the top customer (Customer.total_spent adds up every currency).
    """
    shop.loyalty.record_purchase("e1", "eur", "100.00")
    shop.loyalty.record_purchase("u1", "usd", "1000.00", currency="USD")
    chart = dashboard.pareto_chart(shop.loyalty.state, datetime.now(UTC))
    last = chart.table.text_rows()[-1]
    assert last[2] == "100.00", chart.table.text_rows()
    assert last[1] == "1"          # the USD-only buyer has no revenue in EUR to rank


@pytest.mark.parametrize("mark", ["0.3", "0.2", "1"])
def test_pareto_profit_shares_equal_analytics(shop, mark):
    """The Pareto page's own top-share query gives analytics.pareto's figures."""
    for i, amount in enumerate(("100", "50", "30", "20", "5", "70", "70")):
        shop.loyalty.record_purchase(f"s{i}", f"w{i % 5}", amount)
    shop.loyalty.analytics.recompute()
    report = shop.loyalty.analytics.pareto(top_share=float(mark))
    profit, revenue = dashboard.top_profit_shares(shop.loyalty.state, Decimal(mark))
    assert (profit, revenue) == (Decimal(str(report.profit_share)), Decimal(str(report.revenue_share)))
    assert "of the profit" in dashboard.pareto_chart(shop.loyalty.state, datetime.now(UTC)).description

def test_clv_distribution_without_profiles(shop):
    for i, amount in enumerate(("5", "30", "30", "700")):
        shop.loyalty.record_purchase(f"q{i}", f"v{i}", amount)
    chart = dashboard.clv_chart(shop.loyalty.state, datetime.now(UTC))
    counts = {row[0]: row[1] for row in chart.table.text_rows()}
    assert counts["0–10 EUR"] == "1" and counts["25–50 EUR"] == "2" and counts["500–1000 EUR"] == "1"
    assert sum(int(v) for v in counts.values()) == 4


def test_clv_chart_without_profiles_counts_spend_in_the_shop_currency_only(shop):
    """The lifetime-value bands (historical net spend, in EUR) leave a USD-only buyer out of the EUR bands."""
    shop.loyalty.record_purchase("e1", "eur", "100.00")
    shop.loyalty.record_purchase("u1", "usd", "1000.00", currency="USD")
    chart = dashboard.clv_chart(shop.loyalty.state, datetime.now(UTC))
    counts = {row[0]: row[1] for row in chart.table.text_rows()}
    assert counts["1000–2500 EUR"] == "0", counts
    assert counts["100–250 EUR"] == "1" and sum(int(v) for v in counts.values()) == 1


def test_nps_chart_and_stage_funnel(figures):
    shop, _period, d = figures
    if area_model("survey", "SurveyResponse") is None:
        pytest.fail("survey not installed: every area ships with the package")
    add_response(shop, "o2", 10, d + timedelta(days=5))
    add_response(shop, "o3", 9, d + timedelta(days=5))
    add_response(shop, "o5", 0, d + timedelta(days=5))
    shop.db.session.commit()
    chart = dashboard.nps_chart(shop.loyalty.state, d + timedelta(days=5))
    last = chart.table.text_rows()[-1]
    assert last[1:] == ["3", "2", "0", "1", "33"]


# ----------------------------------------------------------------------------- the guard


def test_guard_closes_every_admin_url(make_shop):
    shop = make_shop()
    urls = admin_urls(shop.app)
    assert len(urls) >= 15
    client = shop.client
    for url, methods in urls:
        for method in methods:
            response = client.open(url, method=method)
            assert response.status_code == 403, (method, url, response.status_code)


def test_guard_false_or_raising_closes_true_opens(make_shop):
    shop = make_shop()
    client = shop.client
    shop.loyalty.admin_guard(lambda: False)
    assert client.get(PREFIX + "/").status_code == 403
    shop.loyalty.admin_guard(lambda: 1)             # only True opens
    assert client.get(PREFIX + "/").status_code == 403

    def broken():
        raise RuntimeError("no user")

    shop.loyalty.admin_guard(broken)
    assert client.get(PREFIX + "/").status_code == 403
    shop.loyalty.admin_guard(allow)
    assert client.get(PREFIX + "/").status_code == 200
    for url, methods in admin_urls(shop.app):
        if "GET" in methods and "<" not in url:
            assert client.get(url).status_code != 403, url


def test_guard_from_config_import_string(make_shop):
    shop = make_shop(LOYALTY_ADMIN_GUARD=f"{__name__}:allow")
    assert shop.client.get(PREFIX + "/charts").status_code == 200
    closed = make_shop(LOYALTY_ADMIN_GUARD=lambda: False)
    assert closed.client.get(PREFIX + "/charts").status_code == 403


def deny():
    return False


def _app_on(tmp_path, name, loyalty, **config):
    """A bare app set up with ``loyalty`` (one object serving several apps)."""
    app = Flask(name)
    app.config.update(SECRET_KEY="k-" + name, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / name}.db",
                      LOYALTY_BASE_URL="http://shop.test", **config)
    db = SQLAlchemy()
    db.init_app(app)
    loyalty.init_app(app, db)
    with app.app_context():
        loyalty.create_all()
    return app


def test_guard_belongs_to_the_app_it_was_registered_for(tmp_path):
    loyalty = Loyalty()                      # the module-level object of an app factory
    closed = _app_on(tmp_path, "closed", loyalty, LOYALTY_ADMIN_GUARD=deny)
    assert closed.test_client().get(PREFIX + "/").status_code == 403
    staff = _app_on(tmp_path, "staff", loyalty)
    with staff.app_context():
        loyalty.admin_guard(allow)           # for the staff app only
    assert staff.extensions["loyalty"].admin_guard is allow
    assert staff.test_client().get(PREFIX + "/").status_code == 200
    assert closed.test_client().get(PREFIX + "/").status_code == 403
    bare = _app_on(tmp_path, "bare", loyalty)
    assert bare.test_client().get(PREFIX + "/").status_code == 403    # a new app starts closed
    loyalty.admin_guard(deny, app=staff)     # explicit app, outside any app context
    assert staff.test_client().get(PREFIX + "/").status_code == 403


def test_guard_outside_app_context_goes_to_the_app_just_set_up(tmp_path):
    loyalty = Loyalty()
    first = _app_on(tmp_path, "first", loyalty)
    loyalty.admin_guard(allow)               # app factory: init_app, then admin_guard
    second = _app_on(tmp_path, "second", loyalty)
    assert first.test_client().get(PREFIX + "/").status_code == 200
    assert second.test_client().get(PREFIX + "/").status_code == 403


def test_guard_registered_before_init_app_is_a_default_an_app_config_overrides(tmp_path):
    loyalty = Loyalty()
    loyalty.admin_guard(allow)               # module level, before any app exists
    plain = _app_on(tmp_path, "plain", loyalty)
    own = _app_on(tmp_path, "own", loyalty, LOYALTY_ADMIN_GUARD=deny)
    assert plain.test_client().get(PREFIX + "/").status_code == 200
    assert own.test_client().get(PREFIX + "/").status_code == 403


# ----------------------------------------------------------------------------- pages, CSV, CSRF, audit


@pytest.fixture
def admin(figures):
    shop, period, d = figures
    shop.app.config["LOYALTY_ADMIN_IDENTITY"] = f"{__name__}:who"
    shop.loyalty.admin_guard(allow)
    return shop, period, d


def test_every_page_renders(admin):
    shop, _period, _d = admin
    client = shop.client
    for path in ("/", "/?days=7", "/?start=2026-01-01&end=2026-01-31", "/charts", "/charts/cohorts", "/customers",
                 "/customers?q=c",
                 "/customers/c1", "/audit"):
        response = client.get(PREFIX + path)
        assert response.status_code == 200, path
        assert b"<h1>" in response.data
    assert client.get(PREFIX + "/customers/nobody").status_code == 404
    assert client.get(PREFIX + "/?days=abc").status_code == 400
    assert client.get(PREFIX + "/charts/nothing.csv").status_code == 404


def test_overview_page_shows_figures(admin):
    shop, _period, _d = admin
    html = shop.client.get(PREFIX + "/?days=30").get_data(as_text=True)
    assert 'id="metric-active_customers" data-value="3"' in html
    assert 'id="metric-revenue" data-value="170.00"' in html
    assert "€42.50" in html and "66.7%" in html


def test_chart_csv_equals_table(admin):
    shop, _period, _d = admin
    client = shop.client
    index = client.get(PREFIX + "/charts").get_data(as_text=True)
    names = dashboard.available_charts()
    assert {"cohorts", "pareto", "clv"} <= set(names)
    shown = 0
    for name in names:
        assert f"/charts/{name}" in index
        html = client.get(f"{PREFIX}/charts/{name}").get_data(as_text=True)
        tables = tables_of(html)
        if f"table-{name}" not in tables:          # no data for this chart (e.g. no profiles computed)
            assert 'id="no-data"' in html
            assert client.get(f"{PREFIX}/charts/{name}.csv").status_code == 404
            continue
        shown += 1
        assert "<svg" in html and "<caption>" in html
        response = client.get(f"{PREFIX}/charts/{name}.csv")
        assert response.status_code == 200 and response.mimetype == "text/csv"
        rows = list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))
        assert rows == tables[f"table-{name}"], name
        assert len(rows) > 1
    assert shown >= 3


def test_coupon_mail_merge_csv_writes_formula_like_text_as_text(shop):
    """Customer names come from the shop's checkout: a name like '=HYPERLINK(...)' is written as text (a leading ')."""
    shop.loyalty.upsert_customer("evil", name='=HYPERLINK("http://evil.example","click")',
                                 email="evil@example.com")
    shop.loyalty.coupons.create(kind="fixed", value="5", customer_ref="evil", campaign="@SUM(1+1)")
    text, _n = admin_lists.coupons_csv(shop.loyalty.state)
    rows = list(csv.DictReader(io.StringIO(text)))
    row = next(r for r in rows if r["customer_ref"] == "evil")
    assert not row["name"].startswith(FORMULA_START), row["name"]
    assert not row["campaign"].startswith(FORMULA_START), row["campaign"]
    assert row["name"] == "'" + '=HYPERLINK("http://evil.example","click")' and row["campaign"] == "'@SUM(1+1)"


def test_chart_csv_writes_formula_like_text_as_text_and_numbers_as_they_are():
    table = dashboard.Table("t", ["label", "n", "share"],
                            [["=1+2", -5, "-12.5%"], ["-x", Decimal("-1.50"), "+3"], ["\tcmd", 0, "@a"]])
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[1:] == [["'=1+2", "-5", "-12.5%"], ["'-x", "-1.50", "+3"], ["'\tcmd", "0", "'@a"]]


def test_customer_timeline(admin):
    shop, _period, _d = admin
    html = shop.client.get(PREFIX + "/customers/c2").get_data(as_text=True)
    assert "Order o3" in html and "Order o4" in html and "refunded €10.00" in html
    assert "Refund: -10 points" in html
    assert html.index("Order o4") < html.index("Order o3")   # newest first


def test_find_customers_by_email_ignores_case(shop):
    """find_customers: "whose e-mail is q (case-insensitive)" - a stored mixed-case address is not found."""
    shop.loyalty.record_purchase("m1", "mixed", "10.00", email="Bob.Smith@Example.com")
    for q in ("bob.smith@example.com", "BOB.SMITH@EXAMPLE.COM", "Bob.Smith@Example.com"):
        assert [c.ref for c in admin_lists.find_customers(shop.loyalty.state, q)] == ["mixed"], q


def test_active_coupon_filter_leaves_out_coupons_not_started(shop):
    """The list's status=active filter returns coupons that the same list shows as "not started"."""
    state = shop.loyalty.state
    later = shop.loyalty.coupons.create(kind="fixed", value="5", starts_at=date.today() + timedelta(days=30),
                                        campaign="later")
    now_ = shop.loyalty.coupons.create(kind="fixed", value="5", campaign="later")
    page = admin_lists.coupons_page(state, status="active", campaign="later")
    shown = [admin_lists.coupon_status(c, datetime.now(UTC)) for c in page.rows]
    assert [c.id for c in page.rows] == [now_.id] and shown == ["active"], (later.id, shown)


def test_post_needs_csrf_and_writes_audit(admin):
    shop, _period, _d = admin
    if area_model("coupon", "Coupon") is None:
        pytest.fail("coupons not installed: every area ships with the package")
    client = shop.client
    page = client.get(PREFIX + "/coupons").get_data(as_text=True)
    token = csrf_of(page)
    assert client.post(PREFIX + "/coupons", data={"kind": "fixed", "value": "5.00"}).status_code == 400
    assert client.post(PREFIX + "/coupons", data={"kind": "fixed", "value": "5.00", "csrf_token": "x" * 43}
                       ).status_code == 400
    coupon_model = area_model("coupon", "Coupon")
    base = shop.db.session.execute(select(func.count(coupon_model.id))).scalar_one()   # the plan's welcome coupons
    assert not shop.db.session.execute(select(coupon_model).where(coupon_model.kind == "fixed",
                                                                  coupon_model.value == Decimal("5"))).first()
    response = client.post(PREFIX + "/coupons", data={"kind": "fixed", "value": "5.00", "campaign": "spring",
                                                      "expires_at": "2099-12-31", "csrf_token": token})
    assert response.status_code == 200 and b'id="made"' in response.data
    bad = client.post(PREFIX + "/coupons", data={"kind": "fixed", "value": "-3", "csrf_token": token})
    assert bad.status_code == 400 and b"correct the marked fields" in bad.data
    batch = client.post(PREFIX + "/coupons/batch", data={"count": "3", "kind": "percent", "value": "10",
                                                         "campaign": "postal", "csrf_token": token})
    assert batch.status_code == 200
    shop.db.session.expire_all()
    assert shop.db.session.execute(select(func.count(coupon_model.id))).scalar_one() == base + 4
    one = shop.db.session.execute(select(coupon_model).where(coupon_model.campaign == "spring")).scalar_one()
    gone = client.post(f"{PREFIX}/coupons/{one.id}/deactivate",
                       data={"csrf_token": token, "next": "https://evil.example/phish"})
    assert gone.status_code == 303 and gone.headers["Location"].endswith(PREFIX + "/coupons")
    shop.db.session.expire_all()
    assert shop.db.session.get(coupon_model, one.id).revoked_at is not None
    exported = client.get(PREFIX + "/coupons/export.csv?campaign=postal").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(exported.lstrip("\ufeff"))))
    assert len(rows) == 3 and {r["offer"] for r in rows} == {"10% off"}
    entries = shop.db.session.execute(select(AdminAuditEntry).order_by(AdminAuditEntry.id)).scalars().all()
    assert [e.action for e in entries] == ["coupon.create", "coupon.batch", "coupon.deactivate", "coupon.export"]
    assert {e.who for e in entries} == {"alice@shop"}
    assert entries[1].details["count"] == 3 and entries[2].target == one.code
    audit_html = client.get(PREFIX + "/audit").get_data(as_text=True)
    assert "coupon.deactivate" in audit_html and "alice@shop" in audit_html


def test_audit_log_pages_neither_skip_nor_repeat_entries(shop):
    """Every audit page has the same order as its cursor (by id): entries whose times are not in id order (two
    admins acting at once: the earlier one commits later) are each shown exactly once."""
    state = shop.loyalty.state
    base = datetime(2026, 1, 1, 12, tzinfo=UTC)
    # ids 1..4; the time of id 2 is later than that of id 3 and 4 (it was stamped first, committed last)
    for i, minutes in enumerate((0, 30, 10, 20), start=1):
        audit.record(state, who="a", action=f"act{i}", now=base + timedelta(minutes=minutes))
    shop.app.config["LOYALTY_ADMIN_PAGE_SIZE"] = 1
    shop.loyalty.admin_guard(allow)
    client = shop.client
    seen: list[str] = []
    url = PREFIX + "/audit"
    for _ in range(10):
        html = client.get(url).get_data(as_text=True)
        seen += re.findall(r"\bact\d\b", html)
        nxt = re.search(r'before=(\d+)', html)
        if not nxt:
            break
        url = PREFIX + f"/audit?before={nxt.group(1)}"
    assert seen == ["act4", "act3", "act2", "act1"], seen


def test_gift_card_issue(admin):
    shop, _period, _d = admin
    if area_model("gift_card", "GiftCard") is None:
        pytest.fail("gift cards not installed: every area ships with the package")
    client = shop.client
    token = csrf_of(client.get(PREFIX + "/gift-cards").get_data(as_text=True))
    response = client.post(PREFIX + "/gift-cards", data={"amount": "30.00", "customer_ref": "c1", "csrf_token": token})
    assert response.status_code == 200 and b'id="issued"' in response.data
    assert shop.db.session.execute(select(AdminAuditEntry.action)).scalars().all() == ["gift_card.issue"]
    assert client.post(PREFIX + "/gift-cards", data={"amount": "0", "csrf_token": token}).status_code == 400


def test_consent_lookup_export_and_erase_with_confirmation(admin):
    shop, _period, _d = admin
    if area_model("consent", "ConsentEvent") is None:
        pytest.fail("consent not installed: every area ships with the package")
    shop.loyalty.consent.grant("c1", "surveys", source="checkout")
    client = shop.client
    html = client.get(PREFIX + "/consent?ref=c1").get_data(as_text=True)
    assert "surveys" in html and "granted" in html
    token = csrf_of(html)
    exported = client.post(PREFIX + "/consent/c1/export", data={"csrf_token": token})
    assert exported.status_code == 200 and exported.mimetype == "application/json"
    assert "customer" in exported.get_json() or exported.get_json()
    assert client.get(PREFIX + "/consent/c1/erase").status_code == 200
    wrong = client.post(PREFIX + "/consent/c1/erase", data={"confirm": "c2", "csrf_token": token})
    assert wrong.status_code == 400
    shop.db.session.expire_all()
    assert shop.loyalty.customer("c1").email == "c1@example.com"
    done = client.post(PREFIX + "/consent/c1/erase", data={"confirm": "c1", "csrf_token": token})
    assert done.status_code == 303
    shop.db.session.expire_all()
    c1 = shop.db.session.execute(select(Customer).where(Customer.ref == "c1")).scalar_one()
    assert c1.email is None and c1.erased_at is not None
    entries = shop.db.session.execute(select(AdminAuditEntry).order_by(AdminAuditEntry.id)).scalars().all()
    assert [e.action for e in entries] == ["consent.view", "consent.export", "consent.erase"]
    # the erasure keeps the fact that earlier actions happened, not their details; its own entry stays whole
    assert entries[1].details == {"erased": True} and entries[0].details == {"erased": True}
    assert entries[2].target == "c1" and entries[2].who == "alice@shop"


def test_audit_trail_in_customer_export(admin):
    shop, _period, _d = admin
    if area_model("consent", "ConsentEvent") is None:
        pytest.fail("consent not installed: every area ships with the package")
    from flask_loyalty.services import audit

    audit.record(shop.loyalty.state, who="bob", action="coupon.create", target="c2", details={"kind": "fixed"})
    audit.record(shop.loyalty.state, who="bob", action="coupon.create", target="c3")
    exported = shop.loyalty.consent.export("c2")
    assert [(e["who"], e["action"], e["details"]) for e in exported["admin_audit"]] == [
        ("bob", "coupon.create", {"kind": "fixed"})]


def test_erasure_drops_details_of_every_audit_entry_about_the_customer(shop):
    """docs: "When a customer is erased, the audit entries about them keep the fact that an action happened but
    lose their details."  A gift card issued to the customer from the dashboard is audited with the target
    "<code>…" and details {customer_ref, amount ...}: it is about them too, in their export and scrubbed."""
    shop.loyalty.record_purchase("g1", "gc", "10.00", email="gc@example.com")
    shop.loyalty.record_purchase("g2", "other", "10.00", email="other@example.com")
    shop.loyalty.admin_guard(allow)
    client = shop.client
    token = csrf_of(client.get(PREFIX + "/gift-cards").get_data(as_text=True))
    for ref in ("gc", "other"):
        r = client.post(PREFIX + "/gift-cards", data={"amount": "30.00", "customer_ref": ref, "csrf_token": token})
        assert r.status_code == 200
    exported = shop.loyalty.consent.export("gc")["admin_audit"]
    assert [(e["action"], e["details"]["customer_ref"]) for e in exported] == [("gift_card.issue", "gc")]
    shop.loyalty.consent.erase("gc")
    shop.db.session.expire_all()
    entries = shop.db.session.execute(select(AdminAuditEntry).order_by(AdminAuditEntry.id)).scalars().all()
    issued = [e.details for e in entries if e.action == "gift_card.issue"]
    assert issued[0] == {"erased": True}, issued
    assert issued[1]["customer_ref"] == "other", issued     # another customer's entry keeps its details


def test_survey_answers_detractors_first(admin):
    shop, _period, d = admin
    if area_model("survey", "SurveyResponse") is None:
        pytest.fail("survey not installed: every area ships with the package")
    add_response(shop, "o2", 10, d + timedelta(days=5), comment="Great tea", source="search")
    add_response(shop, "o3", 8, d + timedelta(days=3), source="friend")
    add_response(shop, "o5", 3, d + timedelta(days=10), comment="Late delivery", source="search")
    shop.db.session.commit()
    html = shop.client.get(PREFIX + "/surveys").get_data(as_text=True)
    assert html.index("Late delivery") < html.index("Great tea")
    assert "mailto:c3@example.com" in html
    assert tables_of(html)["sources"][1:] == [["search", "2"], ["friend", "1"]]
    only = shop.client.get(PREFIX + "/surveys?group=promoters").get_data(as_text=True)
    assert "Great tea" in only and "Late delivery" not in only


def test_survey_answers_next_page_links_walk_every_group(shop):
    """The "Older" link of every page works, also past the detractors: each answer is shown once, in order.

    (The cursor was once ``rank * 2**40 + id``, beyond what ``before=`` accepts: a 400 after the detractors.)
    """
    now = datetime.now(UTC)
    for i, score in enumerate((10, 3, 10, 8, 0, 9)):
        shop.loyalty.record_purchase(f"sv{i}", f"svc{i}", "10.00", placed_at=now - timedelta(days=2))
        add_response(shop, f"sv{i}", score, now - timedelta(days=1))
    shop.db.session.commit()
    shop.app.config["LOYALTY_ADMIN_PAGE_SIZE"] = 1
    shop.loyalty.admin_guard(allow)
    url, seen = PREFIX + "/surveys", []
    for _ in range(10):
        r = shop.client.get(url)
        assert r.status_code == 200, url
        html = r.get_data(as_text=True)
        seen += re.findall(r"order (sv\d)", html)
        nxt = re.search(r'rel="next" href="([^"]+)"', html)
        if not nxt:
            break
        url = nxt.group(1).replace("&amp;", "&")
    # detractors (newest first), passives, promoters
    assert seen == ["sv4", "sv1", "sv3", "sv5", "sv2", "sv0"], seen


def test_outbox_filter_and_preview(admin):
    shop, _period, d = admin
    if area_model("message", "Message") is None:
        pytest.fail("outbox not installed: every area ships with the package")
    add_message(shop, "c1", kind="thank_you", sent_at=d, status="scheduled")
    add_message(shop, "c2", kind="win_back", sent_at=d, status="suppressed")
    shop.db.session.commit()
    client = shop.client
    html = client.get(PREFIX + "/outbox?status=suppressed&kind=win_back").get_data(as_text=True)
    rows = tables_of(html)["outbox"][1:]
    assert len(rows) == 1 and rows[0][1:4] == ["win_back", "c2", "suppressed"]
    html = client.get(PREFIX + "/outbox?customer=c1&kind=thank_you").get_data(as_text=True)
    rows = tables_of(html)["outbox"][1:]
    assert rows and all(r[1] == "thank_you" and r[2] == "c1" for r in rows)
    msg_id = rows[0][0]
    for locale in ("en", "es", "ro", "ru"):
        page = client.get(f"{PREFIX}/outbox/{msg_id}?locale={locale}")
        assert page.status_code == 200
        assert b'id="preview-subject"' in page.data or b"Could not render" in page.data


def test_new_orders_are_planned_for_the_customer_view(admin):
    from flask_loyalty.models import Purchase

    shop, _period, _d = admin
    shop.loyalty.record_purchase("new-o1", "new1", "20.00", email="new1@example.com")
    html = shop.client.get(PREFIX + "/outbox").get_data(as_text=True)
    assert 'id="unplanned"' in html           # told, not done, on the outbox page
    html = shop.client.get(PREFIX + "/customers/new1").get_data(as_text=True)
    assert "thank_you" in html or "Thank" in html
    shop.db.session.expire_all()
    planned = shop.db.session.execute(select(Purchase.planned_at).where(Purchase.order_ref == "new-o1"))
    assert planned.scalar_one() is not None   # committed by the view: the welcome coupon keeps its code


# ----------------------------------------------------------------------------- out-of-range and control input


def _counts(shop):
    from flask_loyalty.models import Coupon, GiftCard

    session = shop.db.session
    session.expire_all()
    return tuple(session.execute(select(func.count(m.id))).scalar_one() for m in (Coupon, GiftCard, AdminAuditEntry))


def test_huge_page_cursors_and_ids_are_refused_before_the_database(admin):
    """Cursors and ids beyond the 32-bit row ids overflowed the driver (a 500); now 400 / 404."""
    shop, _period, _d = admin
    client = shop.client
    huge = "9" * 25
    for path in ("/audit", "/outbox", "/coupons", "/gift-cards", "/surveys"):
        r = client.get(f"{PREFIX}{path}?before={huge}")
        assert r.status_code == 400 and "Something is not right" in r.get_data(as_text=True), path
        assert client.get(f"{PREFIX}{path}?before=2147483648").status_code == 400, path
        assert client.get(f"{PREFIX}{path}?before=2147483647").status_code == 200, path
    assert client.get(f"{PREFIX}/outbox/{huge}").status_code == 404
    assert client.get(f"{PREFIX}/outbox/2147483648").status_code == 404
    token = csrf_of(client.get(PREFIX + "/coupons").get_data(as_text=True))
    before = _counts(shop)
    for coupon_id in (huge, "2147483648"):
        r = client.post(f"{PREFIX}/coupons/{coupon_id}/deactivate", data={"csrf_token": token})
        assert r.status_code == 404
    from flask_loyalty import NotFound
    from flask_loyalty.services import admin_lists

    with pytest.raises(NotFound):
        admin_lists.deactivate_coupon(shop.loyalty.state, 10 ** 25)
    assert _counts(shop) == before


@pytest.mark.parametrize("query", ["start=0001-01-01&end=0001-01-02", "start=9999-12-30&end=9999-12-31",
                                   "start=1899-12-31&end=1900-01-05", "end=9999-12-31"])
def test_overview_refuses_dates_outside_the_supported_range(admin, query):
    """Year 1 or 9999 made ``date + timedelta`` overflow (OverflowError, a 500)."""
    shop, _period, _d = admin
    r = shop.client.get(f"{PREFIX}/?{query}")
    assert r.status_code == 400 and "Something is not right" in r.get_data(as_text=True)


def test_overview_accepts_the_ends_of_the_supported_range(admin):
    shop, _period, _d = admin
    assert shop.client.get(f"{PREFIX}/?start=1900-01-01&end=1900-01-31").status_code == 200
    assert shop.client.get(f"{PREFIX}/?start=9998-12-01&end=9998-12-31").status_code == 200


def test_period_refuses_dates_outside_the_supported_range(shop):
    from flask_loyalty import InvalidInput

    state = shop.loyalty.state
    for kwargs, field in (({"start": date(1, 1, 1), "end": date(1, 1, 2)}, "start"),
                          ({"start": date(9999, 12, 30), "end": date(9999, 12, 31)}, "start"),
                          ({"end": date(9999, 12, 31)}, "end")):
        with pytest.raises(InvalidInput) as info:
            dashboard.period_for(state, **kwargs)
        assert field in info.value.errors


@pytest.mark.parametrize("path,form,field", [
    ("/gift-cards", {"amount": "5", "expires_at": "9999-12-31"}, "expires_at"),
    ("/gift-cards", {"amount": "5", "expires_at": "0001-01-01"}, "expires_at"),
    ("/gift-cards", {"amount": "1" + "0" * 30}, "amount"),
    ("/coupons", {"kind": "fixed", "value": "5", "expires_at": "9999-12-31"}, "expires_at"),
    ("/coupons", {"kind": "fixed", "value": "5", "starts_at": "0001-01-01"}, "starts_at"),
    ("/coupons", {"kind": "fixed", "value": "1" + "0" * 30}, "value"),
    ("/coupons", {"kind": "fixed", "value": "5", "min_order_total": "1" + "0" * 30}, "min_order_total"),
    ("/coupons/batch", {"count": "2", "kind": "fixed", "value": "5", "expires_at": "9999-12-31"}, "batch_expires_at"),
])
def test_coupon_and_gift_card_forms_refuse_extreme_dates_and_amounts(admin, path, form, field):
    """end_of_local_day(9999-12-31) overflowed, quantize() of 1e30 raised: both were 500s; now the form again."""
    shop, _period, _d = admin
    client = shop.client
    token = csrf_of(client.get(PREFIX + "/coupons").get_data(as_text=True))
    before = _counts(shop)
    r = client.post(PREFIX + path, data=dict(form, csrf_token=token))
    assert r.status_code == 400 and b"correct the marked fields" in r.data
    assert f'aria-describedby="e-{field}"'.encode() in r.data or field.encode() in r.data
    assert _counts(shop) == before


@pytest.mark.parametrize("path,status", [
    ("/customers?q=a%00b", 400), ("/customers/a%00b", 404), ("/coupons?q=a%00b", 400),
    ("/coupons?campaign=a%0Ab", 400), ("/outbox?kind=a%00b", 400), ("/surveys?source=a%00b", 400),
    ("/coupons/export.csv?campaign=a%00b", 400), ("/consent/a%00b/erase", 404), ("/consent?ref=a%00b", 400),
    ("/outbox/{message}?locale=e%00s", 400),
])
def test_filters_and_references_with_control_characters_are_refused(admin, path, status):
    """NUL bytes reached PostgreSQL (psycopg DataError, a 500); now a friendly 400/404 on both databases."""
    shop, _period, _d = admin
    message = add_message(shop, "c1", sent_at=datetime(2026, 1, 5, tzinfo=UTC)).id
    shop.db.session.commit()
    before = _counts(shop)
    r = shop.client.get(PREFIX + path.format(message=message))
    assert r.status_code == status and "<h1" in r.get_data(as_text=True)
    assert _counts(shop) == before     # the CSV export writes no audit entry either


@pytest.mark.parametrize("form,field", [
    ({"kind": "fixed", "value": "5", "campaign": "a\x00b"}, "campaign"),
    ({"kind": "gift", "value": "mug\x00"}, "value"),
    ({"kind": "fixed", "value": "5", "segment": "vip\x00"}, "segment"),
    ({"kind": "fixed", "value": "5", "code": "AB\x00CD-EFGH"}, "code"),
])
def test_coupon_form_refuses_control_characters(admin, form, field):
    shop, _period, _d = admin
    client = shop.client
    token = csrf_of(client.get(PREFIX + "/coupons").get_data(as_text=True))
    before = _counts(shop)
    r = client.post(PREFIX + "/coupons", data=dict(form, csrf_token=token))
    assert r.status_code == 400 and b"correct the marked fields" in r.data
    assert _counts(shop) == before


def test_erase_form_refuses_a_reference_with_control_characters(admin):
    shop, _period, _d = admin
    client = shop.client
    token = csrf_of(client.get(PREFIX + "/coupons").get_data(as_text=True))
    assert client.post(PREFIX + "/consent/a%00b/erase", data={"csrf_token": token, "confirm": "a\x00b"}
                       ).status_code == 404
    assert client.post(PREFIX + "/consent/c1/erase", data={"csrf_token": token, "confirm": "c1\x00"}
                       ).status_code == 400
    assert shop.loyalty.customer("c1").erased_at is None


@pytest.mark.parametrize("back", [PREFIX + "/coupons\r\nX-Injected: 1", PREFIX + "/coupons?q=a\nb",
                                  PREFIX + "/coupons?q=\x00", PREFIX + "/coupons\x85"])
def test_deactivate_falls_back_to_the_coupon_list_for_a_non_printable_next(admin, back):
    """A CR/LF in ``next`` passed the prefix check and werkzeug refused the Location header (a 500)."""
    shop, _period, _d = admin
    client = shop.client
    token = csrf_of(client.get(PREFIX + "/coupons").get_data(as_text=True))
    coupon = shop.loyalty.coupons.create(kind="fixed", value="5")
    r = client.post(f"{PREFIX}/coupons/{coupon.id}/deactivate", data={"csrf_token": token, "next": back})
    assert r.status_code == 303 and r.headers["Location"].endswith(PREFIX + "/coupons")
    assert "X-Injected" not in r.headers
    shop.db.session.expire_all()
    assert shop.loyalty.coupons.validate(coupon.code, order_total="10").reason is not None   # deactivated
    kept = client.post(f"{PREFIX}/coupons/{coupon.id}/deactivate",
                       data={"csrf_token": token, "next": PREFIX + "/coupons?status=revoked"})
    assert kept.headers["Location"].endswith(PREFIX + "/coupons?status=revoked")
