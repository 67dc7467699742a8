"""Consent in a real browser (headless Chromium): capture + confirmation link, preference center, unsubscribe."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import NEEDS_CHROMIUM, live_server
from flask import render_template_string, request

pytestmark = NEEDS_CHROMIUM


@pytest.fixture
def live(make_shop, browser) -> Iterator[tuple]:
    shop = make_shop()
    app = shop.app

    @app.route("/signup", methods=["GET", "POST"])
    def signup():
        if request.method == "POST":
            shop.loyalty.upsert_customer("c1", email=request.form["email"])
            shop.loyalty.consent.capture("c1", request.form, source="signup", ip=request.remote_addr)
            return "<p id='thanks'>Thanks</p>"
        return render_template_string(
            '<!doctype html><form method="post"><label for="email">E-mail</label>'
            '<input id="email" name="email" type="email">{{ loyalty_consent_fields() }}'
            '<button type="submit">Sign up</button></form>')

    with live_server(app) as base:
        app.config["LOYALTY_BASE_URL"] = base
        page = browser.new_page(viewport={"width": 375, "height": 740})
        try:
            yield shop, base, page
        finally:
            page.close()


def test_signup_then_follow_the_confirmation_link(live):
    shop, base, page = live
    page.goto(base + "/signup")
    boxes = page.locator("input[type=checkbox]")
    assert boxes.count() == 4
    for i in range(4):
        assert not boxes.nth(i).is_checked()
    page.fill("#email", "ana@example.com")
    page.get_by_label("Offers and news by e-mail").check()     # labels are wired to their boxes
    page.get_by_label("Short surveys about my purchases").check()
    page.click("button[type=submit]")
    page.wait_for_selector("#thanks")
    with shop.app.app_context():
        assert shop.loyalty.consent.has("c1", "surveys")
        assert not shop.loyalty.consent.has("c1", "email_marketing")
        (msg,) = shop.loyalty.messages.for_customer("c1")
        url = msg.payload["confirm_url"]
    page.goto(url)
    assert page.locator("h1").inner_text() == "Thank you for confirming"
    with shop.app.app_context():
        assert shop.loyalty.consent.has("c1", "email_marketing")
    page.get_by_role("link", name="Manage all your preferences").click()
    assert page.locator("#purpose-email_marketing").is_checked()


def test_tick_and_untick_preferences(live):
    shop, _base, page = live
    with shop.app.app_context():
        shop.loyalty.upsert_customer("c1", email="ana@example.com", locale="es")
        shop.loyalty.consent.grant("c1", "surveys", source="checkout")
        url = shop.loyalty.links.preferences("c1")
    page.goto(url)
    assert page.locator("html").get_attribute("lang") == "es"
    assert page.locator("#purpose-surveys").is_checked()
    page.locator("#purpose-surveys").uncheck()
    page.locator("#purpose-postal_mail").check()
    page.locator("form button[type=submit]").click()
    page.wait_for_selector("[role=status]")
    assert not page.locator("#purpose-surveys").is_checked()
    assert page.locator("#purpose-postal_mail").is_checked()
    with shop.app.app_context():
        assert not shop.loyalty.consent.has("c1", "surveys")
        assert shop.loyalty.consent.has("c1", "postal_mail")
    page.locator("#purpose-postal_mail").uncheck()
    page.locator("form button[type=submit]").click()
    page.wait_for_selector("[role=status]")
    with shop.app.app_context():
        assert not shop.loyalty.consent.has("c1", "postal_mail")
    # tap targets are at least 44px high on a phone-sized screen
    box = page.locator("form button[type=submit]").bounding_box()
    assert box is not None and box["height"] >= 44


def test_one_click_unsubscribe_and_the_unsubscribe_page(live):
    shop, _base, page = live
    with shop.app.app_context():
        shop.loyalty.upsert_customer("c1", email="ana@example.com")
        shop.loyalty.consent.grant("c1", "email_marketing", source="checkout", double_opt_in=False)
        shop.loyalty.consent.grant("c1", "surveys", source="checkout")
        one_click = shop.loyalty.links.unsubscribe("c1", "surveys")
        page_link = shop.loyalty.links.unsubscribe("c1")
    # RFC 8058: what a mail client sends, with the browser's request context (no cookies, no token)
    for _ in range(2):
        response = page.request.post(one_click, form={"List-Unsubscribe": "One-Click"})
        assert response.status == 200
    # the human way: GET shows a confirm page, the button withdraws
    page.goto(page_link)
    with shop.app.app_context():
        assert shop.loyalty.consent.has("c1", "email_marketing")
        assert not shop.loyalty.consent.has("c1", "surveys")
    page.get_by_role("button", name="Yes, unsubscribe me").click()
    assert page.locator("h1").inner_text() == "You are unsubscribed"
    with shop.app.app_context():
        assert not shop.loyalty.consent.has("c1", "email_marketing")
        withdrawn = [e for e in shop.loyalty.consent.history("c1") if e.action == "withdrawn"]
        assert sorted((e.purpose, e.method) for e in withdrawn) == [
            ("email_marketing", "unsubscribe_page"), ("surveys", "one_click")]
