"""The shopper's whole journey through the demo shop, in a real headless Chromium.

A shopper signs up with consent, confirms the double opt-in from the mail,
buys; the dispatcher puts the thank-you mail with its welcome coupon into
the outbox; the survey link from the invitation is followed and answered at
phone width; the coupon shows in the wallet and prints; a second purchase
redeems it (checked live by the checkout's script); the unsubscribe link in
a marketing mail withdraws the consent; the preference center shows what was
given and withdrawn, and when; the staff user sees all of it in the
dashboard.  Screenshots go to ``docs/_static/journey-*.png`` for the docs.

The shop runs on werkzeug in a thread on 127.0.0.1 with a temporary SQLite
database; the mails are read from the outbox (``LOYALTY_MAIL_TRANSPORT =
"outbox"``), as a developer would read them in the dashboard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from conftest import NEEDS_CHROMIUM, live_server, screenshot_dir
from flask import Flask

SHOTS = screenshot_dir()  # docs/_static with LOYALTY_SCREENSHOTS=1
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 1}
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
EMAIL = "ana.journey@example.com"
URL = re.compile(r"https?://[^\s\"'<>]+")

pytestmark = NEEDS_CHROMIUM
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    from example_shop import create_app, db
    from example_shop.seed import seed_catalogue

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'journey.db'}", "SECRET_KEY": "journey"})
    with app.app_context():
        seed_catalogue()
    try:
        with live_server(app) as base:
            app.config["LOYALTY_BASE_URL"] = base  # links in mails point at this server
            yield app, base
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"journey-{name}.png"), full_page=True)


def mails(app: Flask, ref: str, kind: str) -> list[Any]:
    """The customer's messages of ``kind`` that the dispatcher put into the outbox."""
    from example_shop import loyalty

    with app.app_context():
        return [m for m in loyalty.messages.for_customer(ref) if m.kind == kind and m.status == "sent"]


def sent_mail(app: Flask, ref: str, kind: str, days: tuple[float, ...]) -> tuple[Any, float]:
    """Run the dispatcher at each of ``days`` (from now) until a ``kind`` mail has been sent."""
    from example_shop import loyalty

    for day in days:
        dispatch(app, day)
        found = mails(app, ref, kind)
        if found:
            assert len(found) == 1, found
            return found[0], day
    with app.app_context():
        states = [(m.status, m.reason, m.last_error) for m in loyalty.messages.for_customer(ref) if m.kind == kind]
    raise AssertionError(f"no {kind} mail was sent: {states}")


def link_in(message: Any, path: str) -> str:
    """The first link in a sent mail whose URL contains ``path`` (tracked click links included)."""
    text = (message.body_text or "") + " " + (message.body_html or "") + " " + " ".join(message.links or ())
    for url in URL.findall(text.replace("&amp;", "&")):
        if path in url:
            return url
    raise AssertionError(f"no {path} link in the {message.kind} mail")


def dispatch(app: Flask, days_later: float = 0) -> Any:
    from example_shop import loyalty

    with app.app_context():
        return loyalty.dispatch(now=datetime.now(timezone.utc) + timedelta(days=days_later))


def buy(page: Any, base: str, skus: list[str], coupon: str = "", checkout_shot: str | None = None) -> str:
    for sku in skus:
        page.goto(f"{base}/products/{sku}")
        page.get_by_role("button", name="Add to cart").click()
    page.goto(f"{base}/checkout")
    if coupon:
        page.get_by_label("Coupon code (optional)").fill(coupon)
        # the checkout's script asks flask_loyalty's JSON endpoint while the shopper types
        sync_api.expect(page.locator("#coupon-status")).to_contain_text("Coupon applied", timeout=10_000)
    if checkout_shot:
        shot(page, checkout_shot)
    page.get_by_role("button", name="Place order").click()
    sync_api.expect(page.get_by_role("heading", name="Thank you for your order!")).to_be_visible()
    return re.search(r"Order (LB-[0-9A-F]+)", page.inner_text("main")).group(1)


def test_the_shoppers_whole_journey(served, browser):
    from example_shop import db, loyalty
    from example_shop.models import Account

    app, base = served
    desk = browser.new_context(**DESKTOP)
    page = desk.new_page()

    # 1. browse, sign up with consent ------------------------------------------------------
    page.goto(base + "/")
    sync_api.expect(page.get_by_role("heading", level=1)).to_contain_text("Tea, coffee")
    shot(page, "01-catalogue")
    page.goto(base + "/login?next=/checkout")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_role("button", name="Continue").click()
    sync_api.expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    page.get_by_label("Name").fill("Ana Journey")
    page.get_by_label("Birthday").fill("1991-05-17")
    page.locator("input[name=loyalty_consent][value=email_marketing]").check()
    page.locator("input[name=loyalty_consent][value=surveys]").check()
    shot(page, "02-signup-with-consent")
    page.get_by_role("button", name="Create account").click()
    with app.app_context():
        ref = db.session.query(Account).filter_by(email=EMAIL).one().ref
        assert loyalty.consent.has(ref, "surveys")
        assert not loyalty.consent.has(ref, "email_marketing")  # double opt-in: pending

    # 2. the confirmation mail, then the first purchase --------------------------------------
    dispatch(app)
    [confirm_mail] = mails(app, ref, "consent_confirm")
    page.goto(link_in(confirm_mail, "/consent/confirm/"))
    if page.get_by_role("button").filter(has_text=re.compile("confirm", re.I)).count():
        page.get_by_role("button").filter(has_text=re.compile("confirm", re.I)).first.click()
    shot(page, "03-consent-confirmed")
    with app.app_context():
        assert loyalty.consent.has(ref, "email_marketing")

    first_order = buy(page, base, ["TEA-SENCHA", "GEAR-INFUSER"], checkout_shot="04-checkout-with-consent-boxes")
    shot(page, "05-thank-you-page")

    # 3. the thank-you mail lands in the outbox with its welcome coupon -----------------------
    dispatch(app)
    [thank_you] = mails(app, ref, "thank_you")
    code = thank_you.payload["coupon_code"]
    assert code and code in thank_you.body_text and code in thank_you.body_html

    # 4. the survey invitation, answered at phone width ---------------------------------------
    invite, days = sent_mail(app, ref, "survey_invite", (4, 8, 11, 15, 22))
    phone = browser.new_context(**PHONE).new_page()
    phone.goto(link_in(invite, "/survey/"))
    sync_api.expect(phone.get_by_role("heading", name="How did we do?")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    phone.locator("fieldset#q-source").get_by_text("A friend or family member").click()
    phone.locator("fieldset#q-experience label").last.click()
    phone.locator("fieldset#q-ease label").last.click()
    phone.locator("fieldset#q-recommend label").last.click()
    phone.get_by_label(re.compile("anything", re.I)).fill("Lovely sencha, the infuser is perfect.")
    shot(phone, "06-survey-phone")
    phone.get_by_role("button", name="Send my answers").click()
    sync_api.expect(phone.locator("main")).to_contain_text(re.compile("thank", re.I))
    shot(phone, "07-survey-thanks-phone")
    with app.app_context():
        stats = loyalty.surveys.stats()
        assert stats.responses == 1 and stats.nps == 100
    # thanks for answering: the reward coupon (LOYALTY_SURVEY_REWARD in the demo) comes by mail
    reward, _ = sent_mail(app, ref, "survey_reward", (days, days + 1, days + 8))
    reward_code = reward.payload["code"]
    assert reward_code in reward.body_text

    # 5. the coupon in the wallet, printable --------------------------------------------------
    page.goto(base + "/account")
    shot(page, "08-account")
    page.get_by_role("link", name="Open your wallet").click()
    sync_api.expect(page.locator("main")).to_contain_text(code)
    sync_api.expect(page.locator("main")).to_contain_text(reward_code)
    shot(page, "09-wallet")
    page.get_by_role("link", name="Print my coupons").click()
    sync_api.expect(page.locator("main")).to_contain_text(code)
    page.emulate_media(media="print")
    shot(page, "10-wallet-print")
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF") and len(pdf) > 2000
    page.emulate_media(media="screen")

    # 6. a second purchase redeems it -----------------------------------------------------------
    second_order = buy(page, base, ["COF-ESPRESSO"], coupon=code, checkout_shot="11-checkout-coupon-checked-live")
    shot(page, "12-second-order-with-coupon")
    with app.app_context():
        [redemption] = loyalty.coupons.redemptions(second_order)
        assert redemption.discount > 0 and redemption.customer_ref == ref
        assert code not in {c.code for c in loyalty.coupons.for_customer(ref)}  # used up for this shopper
        assert loyalty.customer(ref).orders_count == 2

    # 7. the unsubscribe link of a marketing mail withdraws the consent ------------------------
    marketing = [m for m in loyalty_sent(app, ref) if m.marketing]
    assert marketing, "a marketing mail went out (thank-you, usage guide ...)"
    page.goto(link_in(marketing[0], "/unsubscribe/"))
    shot(page, "13-unsubscribe")
    page.get_by_role("button", name="Yes, unsubscribe me").click()
    with app.app_context():
        assert not loyalty.consent.has(ref, "email_marketing")
        assert loyalty.consent.has(ref, "surveys")

    # 8. the preference center shows what was given, confirmed and withdrawn -------------------
    page.goto(base + "/account")
    page.get_by_role("link", name="Mail preferences and your data").click()
    status = page.locator("#purpose-email_marketing-status")
    sync_api.expect(status).to_have_attribute("data-status", "withdrawn")
    sync_api.expect(page.locator("#purpose-surveys-status")).to_have_attribute("data-status", "granted")
    shot(page, "14-preferences")
    export = page.request.get(urljoin(page.url, page.get_by_role("link", name="Download my data").get_attribute("href")))
    data = json.loads(export.body())
    assert EMAIL in json.dumps(data)
    with app.app_context():
        actions = [(e.purpose, e.action) for e in loyalty.consent.history(ref)]
    assert ("email_marketing", "withdraw") in actions or ("email_marketing", "withdrawn") in actions

    # 9. the staff user sees all of it in the dashboard (after the nightly value recompute) -----
    with app.app_context():
        assert loyalty.analytics.recompute() >= 1
    staff = browser.new_context(**DESKTOP).new_page()
    staff.goto(base + "/login")
    staff.get_by_role("button", name=re.compile("Sign in as demo staff")).click()
    staff.goto(base + "/loyalty/admin/")
    sync_api.expect(staff.locator("main")).to_be_visible()
    shot(staff, "15-dashboard-overview")
    staff.goto(f"{base}/loyalty/admin/customers/{ref}")
    customer_page = staff.inner_text("main")
    for expected in (first_order, second_order, code):
        assert expected in customer_page, expected
    shot(staff, "16-dashboard-customer")
    staff.goto(f"{base}/loyalty/admin/outbox/{thank_you.id}")
    sync_api.expect(staff.locator("main")).to_contain_text(code)
    shot(staff, "17-dashboard-thank-you-mail")
    staff.goto(base + "/loyalty/admin/surveys")
    sync_api.expect(staff.locator("main")).to_contain_text("Lovely sencha")
    shot(staff, "18-dashboard-surveys")
    staff.goto(f"{base}/staff/orders?q={first_order}")
    shot(staff, "19-staff-orders")


def loyalty_sent(app: Flask, ref: str) -> list[Any]:
    from example_shop import loyalty

    with app.app_context():
        return [m for m in loyalty.messages.for_customer(ref) if m.status == "sent"]
