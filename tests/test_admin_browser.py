"""Every dashboard page in headless Chromium at tablet width; screenshots go to docs/_static/admin-*.png."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import NEEDS_CHROMIUM, live_server, screenshot_dir

from flask_loyalty.services.dashboard import area_model

STATIC = screenshot_dir()  # docs/_static with LOYALTY_SCREENSHOTS=1
TABLET = {"width": 820, "height": 1180}
UTC = timezone.utc

pytestmark = NEEDS_CHROMIUM


@pytest.fixture
def db_url(tmp_path: Any) -> str:
    """Runs once, on a SQLite file (the pages are the same on PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'shop.db'}"


def seed(shop: Any) -> dict[str, Any]:
    """A year of a small tea shop: 48 customers, repeat buyers, coupons, survey answers, mails, profiles."""
    L = shop.loyalty  # noqa: N806
    session = shop.db.session
    now = datetime.now(UTC).replace(microsecond=0)
    names = ["Ana", "Bruno", "Carla", "Dan", "Elena", "Filip", "Greta", "Hugo", "Ioana", "Jon", "Katya", "Luis"]
    n = 0
    for i in range(48):
        ref = f"cust-{i:03d}"
        L.upsert_customer(ref, email=f"{ref}@example.com", name=f"{names[i % 12]} {i}",
                          locale=("en", "es", "ro", "ru")[i % 4])
        first = now - timedelta(days=360 - i * 7)
        visits = 1 + (i * 7) % 5 if i % 3 else 1
        for k in range(visits):
            n += 1
            at = first + timedelta(days=k * (20 + i % 9))
            if at >= now:
                break
            L.record_purchase(f"ord-{n:04d}", ref, f"{18 + (i * 13 + k * 7) % 90}.50", placed_at=at,
                              channel=("online", "online", "store")[k % 3])
    L.record_refund("ord-0003", amount="5.00")
    coupons = L.coupons
    coupons.create_batch(12, prefix="POST", kind="percent", value="10", campaign="postal-spring",
                         expires_at=(now + timedelta(days=60)).date())
    coupons.create(kind="fixed", value="5.00", customer_ref="cust-001", campaign="apology")
    L.gift_cards.issue("50.00", customer_ref="cust-002")
    L.gift_cards.issue("25.00")
    if area_model("consent", "ConsentEvent") is not None:
        for i in range(0, 48, 2):
            L.consent.grant(f"cust-{i:03d}", "surveys", source="checkout")
        L.consent.grant("cust-004", "email_marketing", source="checkout")
        L.consent.withdraw("cust-006", "surveys", source="preferences")
    response = area_model("survey", "SurveyResponse")
    answer = area_model("survey", "SurveyAnswer")
    purchase_model = type(L.purchase("ord-0001"))
    if response is not None:
        comments = {0: "Delivery took two weeks and nobody answered my mail.", 3: "Lovely tea, will order again!",
                    5: "The website was confusing at checkout.", 8: "Great service, thanks."}
        for j, p in enumerate(session.query(purchase_model).order_by(purchase_model.placed_at.desc()).limit(40)):
            at = p.placed_at + timedelta(days=8)
            if at >= now:
                continue
            row = response(purchase_id=p.id, customer_id=p.customer_id, answered_at=at, updated_at=at,
                           completed_at=at, channel="page", created_at=at)
            session.add(row)
            session.flush()
            score = (10, 9, 3, 8, 10, 6, 9, 7, 10, 2)[j % 10]
            session.add(answer(response_id=row.id, question="recommend", type="scale", number=score))
            session.add(answer(response_id=row.id, question="source", type="choice",
                               choice=("search", "friend", "social", "store")[j % 4]))
            if j % 10 in comments:
                session.add(answer(response_id=row.id, question="comment", type="text", text=comments[j % 10]))
        session.commit()
    message = area_model("message", "Message")
    engagement = area_model("message", "Engagement")
    if message is not None:
        customer_model = type(L.customer("cust-000"))
        for i, c in enumerate(session.query(customer_model).order_by(customer_model.id).limit(30)):
            at = now - timedelta(days=1 + i)
            status = ("sent", "sent", "sent", "suppressed", "scheduled")[i % 5]
            m = message(customer_id=c.id, kind=("win_back", "replenish", "birthday", "campaign", "thank_you")[i % 5],
                        purpose="email_marketing", marketing=True, priority=0, payload={}, status=status,
                        reason="weekly cap: a marketing mail went out 2 days ago" if status == "suppressed" else None,
                        due_at=at, first_due_at=at, sent_at=at if status == "sent" else None, attempts=1,
                        message_id=f"<{uuid.uuid4()}@shop>", created_at=at)
            session.add(m)
            session.flush()
            if status == "sent" and i % 2 == 0 and engagement is not None:
                session.add(engagement(customer_id=c.id, message_id=m.id, kind=m.kind, event="open",
                                       at=at + timedelta(hours=2), hour=10))
                m.opened_at = at + timedelta(hours=2)
                if i % 4 == 0:
                    session.add(engagement(customer_id=c.id, message_id=m.id, kind=m.kind, event="click",
                                           at=at + timedelta(hours=3), hour=11))
                    m.clicked_at = at + timedelta(hours=3)
        session.commit()
    campaigns = getattr(L, "campaigns", None)
    if campaigns is not None and area_model("rewards", "Campaign") is not None:
        members = [f"cust-{i:03d}" for i in range(0, 48)]
        for name, offset in (("spring-tea", 70), ("autumn-honey", 30)):
            starts = now - timedelta(days=offset)
            campaigns.create(name, offer={"kind": "percent", "value": "10"}, starts_at=starts,
                             ends_at=starts + timedelta(days=21), customer_refs=members, holdout_share=0.25)
            campaigns.launch(name, now=starts)
            for k, ref in enumerate(members[: 24 if offset == 70 else 16]):
                L.record_purchase(f"{name}-{k}", ref, "32.00", placed_at=starts + timedelta(days=1 + k % 15))
    if hasattr(L, "analytics"):
        try:
            L.analytics.recompute(now=now)
        except ImportError:   # the value model's optional numeric extra is missing
            pass
    return {"message_id": session.query(message.id).order_by(message.id).first()[0] if message is not None else None}


@pytest.fixture
def served(make_shop: Any) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    shop = make_shop(LOYALTY_SHOP_NAME="Green Leaf Tea", LOYALTY_ADMIN_IDENTITY=lambda: "owner@greenleaf.test")
    shop.loyalty.admin_guard(lambda: True)
    with shop.app.app_context():
        info = seed(shop)
    with live_server(shop.app) as base:
        yield shop, f"{base}/loyalty/admin", info


def test_every_admin_page_in_chromium(served: Any, browser: Any) -> None:
    shop, base, info = served
    context = browser.new_context(viewport=TABLET, device_scale_factor=1, is_mobile=True, has_touch=True,
                                  locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(20000)
    with shop.app.app_context():
        from flask_loyalty.services.dashboard import available_charts

        charts = available_charts()
    pages = [("overview", "/?days=365"), ("charts", "/charts"), ("customers", "/customers"),
             ("customer", "/customers/cust-001"), ("audit", "/audit")]
    pages += [(f"chart-{name}", f"/charts/{name}") for name in charts]
    if info["message_id"] is not None:
        pages += [("outbox", "/outbox"), ("mail-preview", f"/outbox/{info['message_id']}?locale=es")]
    if area_model("coupon", "Coupon") is not None:
        pages += [("coupons", "/coupons"), ("gift-cards", "/gift-cards")]
    if area_model("survey", "SurveyResponse") is not None:
        pages += [("surveys", "/surveys")]
    if area_model("consent", "ConsentEvent") is not None:
        pages += [("consent", "/consent?ref=cust-004"), ("erase", "/consent/cust-004/erase")]
    STATIC.mkdir(parents=True, exist_ok=True)
    for name, path in pages:
        response = page.goto(base + path)
        assert response is not None and response.status == 200, (name, response and response.status)
        assert page.locator("h1").count() == 1
        # usable on a tablet: nothing wider than the screen but scrollable tables, big enough tap targets
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (name, overflow)
        small = page.evaluate("""() => [...document.querySelectorAll('.admin-nav a, button, .loyalty-button')]
            .filter(e => e.offsetParent !== null && e.getBoundingClientRect().height < 43.5).length""")
        assert small == 0, name
        page.screenshot(path=str(STATIC / f"admin-{name}.png"), full_page=True)
    # an action through the real form, with its CSRF token: deactivate the first coupon, then see it audited
    if area_model("coupon", "Coupon") is not None:
        page.goto(base + "/coupons?campaign=postal-spring")
        page.locator("#coupons button", has_text="Deactivate").first.click()
        page.wait_for_load_state()
        assert page.locator("#coupons .st-revoked").count() == 1
        page.goto(base + "/audit")
        assert page.locator("#audit", has_text="coupon.deactivate").count() == 1
        assert page.locator("#audit", has_text="owner@greenleaf.test").count() == 1
    # charts carry their data tables (accessible alternative) behind a disclosure
    page.goto(base + "/charts/cohorts")
    page.locator("#chart-cohorts summary").click()
    assert page.locator("#table-cohorts caption").is_visible()
    context.close()


@pytest.mark.parametrize("locale,heading", [("ru", "Обзор"), ("ro", "Prezentare generală")])
def test_translated_dashboard_fits_a_tablet(served: Any, browser: Any, locale: str, heading: str) -> None:
    """Longer Russian and Romanian labels still fit the tablet width; the browser's language picks them."""
    _shop, base, _info = served
    context = browser.new_context(viewport=TABLET, device_scale_factor=1, is_mobile=True, has_touch=True,
                                  locale=locale)
    page = context.new_page()
    page.set_default_timeout(20000)
    for name, path in (("overview", "/?days=365"), ("customer", "/customers/cust-001"), ("coupons", "/coupons")):
        response = page.goto(base + path)
        assert response is not None and response.status == 200, (locale, name)
        assert page.locator("html").get_attribute("lang") == locale
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (locale, name, overflow)
        if name == "overview":
            assert page.locator("h1").inner_text().strip() == heading
            page.screenshot(path=str(STATIC / f"admin-overview-{locale}.png"), full_page=True)
    context.close()


def test_closed_dashboard_in_chromium(make_shop: Any, browser: Any) -> None:
    shop = make_shop()
    with live_server(shop.app) as base:
        page = browser.new_page()
        response = page.goto(f"{base}/loyalty/admin/")
        assert response is not None and response.status == 403
        page.close()
