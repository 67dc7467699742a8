"""The demo shop (example_shop) works as a host: catalogue, cart, checkout, accounts, staff, seed.

It is also the reference integration: these tests pin down that the
checkout writes the shop's order and the loyalty side in one transaction,
that coupons and consent go through flask_loyalty's public API, and that the
dashboard is open to staff only.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, inspect, select, text
from werkzeug.datastructures import MultiDict

from example_shop import create_app, db, loyalty
from example_shop.models import Account, Order
from example_shop.seed import STAFF_EMAIL, is_seeded, seed, seed_catalogue
from example_shop.views import CSRF_FIELD, CSRF_SESSION_KEY

SHOWN = re.compile(r'name="loyalty_consent_shown" value="([^"]+)"')


class ShopClient(FlaskClient):
    """A browser posting the shop's forms as rendered, i.e. with the session's CSRF token.

    Posts to flask_loyalty's own pages (under ``/loyalty``) are left alone: they have their own tokens.
    A test of the CSRF check itself uses a plain :class:`FlaskClient`.
    """

    def post(self, *args: Any, **kwargs: Any) -> Any:
        url = str(args[0]) if args else str(kwargs.get("path", "/"))
        data = kwargs.get("data")
        if not url.startswith("/loyalty") and isinstance(data, dict) and CSRF_FIELD not in data:
            with self.session_transaction() as sess:
                token = sess.setdefault(CSRF_SESSION_KEY, secrets.token_urlsafe(32))
            kwargs["data"] = MultiDict([*MultiDict(data).items(multi=True), (CSRF_FIELD, token)])
        return super().post(*args, **kwargs)


@pytest.fixture
def shop_app(db_url: str) -> Iterator[Flask]:
    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url, "TESTING": True,
                      "LOYALTY_BASE_URL": "http://shop.test", "LOYALTY_VALIDATE_RATE_LIMIT": "1000/minute"})
    app.test_client_class = ShopClient
    with app.app_context():
        if db.engine.dialect.name == "postgresql":  # a clean slate in the shared test database
            with db.engine.begin() as conn:
                names = [n for n in inspect(conn).get_table_names() if n.startswith(("shop_", "loyalty_"))]
                conn.execute(text("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " RESTART IDENTITY CASCADE"))
            loyalty.create_all()
        seed_catalogue()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def sign_up(client: Any, email: str, *, consents: tuple[str, ...] = (), **extra: str) -> None:
    page = client.get("/signup?email=" + email).get_data(as_text=True)
    form = {"email": email, "name": "Ana Test", "language": "es", "birthday": "1990-04-02", **extra}
    match = SHOWN.search(page)
    assert match, "the sign-up form embeds flask_loyalty's consent checkboxes"
    form["loyalty_consent_shown"] = match.group(1)
    data = MultiDict(list(form.items()) + [("loyalty_consent", p) for p in consents])
    response = client.post("/signup", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)


def checkout(client: Any, coupon: str = "", **form: str) -> Any:
    page = client.get("/checkout").get_data(as_text=True)
    match = SHOWN.search(page)
    data = {"coupon": coupon, "action": "place", **form}
    if match:
        data["loyalty_consent_shown"] = match.group(1)
    return client.post("/checkout", data=data)


def account(app: Flask, email: str) -> Account:
    acc = db.session.scalar(select(Account).where(Account.email == email))
    assert acc is not None
    return acc


def test_catalogue_categories_and_cart(shop_app):
    client = shop_app.test_client()
    home = client.get("/").get_data(as_text=True)
    assert "Sencha green tea" in home and "Hand grinder" in home
    tea = client.get("/?category=tea").get_data(as_text=True)
    assert "Sencha green tea" in tea and "Hand grinder" not in tea
    client.post("/cart", data={"sku": "TEA-SENCHA", "quantity": "2"})
    cart = client.get("/cart").get_data(as_text=True)
    assert "Sencha green tea" in cart and "€19.80" in cart
    client.post("/cart/update", data={"qty-TEA-SENCHA": "0"})
    assert "Your cart is empty" in client.get("/cart").get_data(as_text=True)


def test_signup_with_consent_and_checkout_record_everything_in_one_transaction(shop_app):
    client = shop_app.test_client()
    sign_up(client, "ana@example.com", consents=("email_marketing", "surveys"))
    client.post("/cart", data={"sku": "COF-ETHIOPIA", "quantity": "2"})
    response = checkout(client)
    assert response.status_code == 302 and "/orders/LB-" in response.location
    with shop_app.app_context():
        me = account(shop_app, "ana@example.com")
        [order] = me.orders
        purchase = loyalty.purchase(order.ref)
        assert purchase is not None and purchase.total == Decimal("25.80") == order.total
        assert purchase.points_earned == 25
        customer = loyalty.customer(me.ref)
        assert customer.email == "ana@example.com" and customer.locale == "es"
        assert str(customer.birthday) == "1990-04-02"
        # surveys: granted at once; e-mail marketing waits for the double opt-in link
        assert loyalty.consent.has(me.ref, "surveys")
        assert not loyalty.consent.has(me.ref, "email_marketing")
        kinds = {m.kind for m in loyalty.messages.for_customer(me.ref)}
        assert {"consent_confirm", "thank_you"} <= kinds
        assert [e.source for e in loyalty.consent.history(me.ref)] == ["signup", "signup"]
    page = client.get(response.location).get_data(as_text=True)
    assert "Thank you for your order" in page and "/loyalty/wallet/" in page


def test_a_failing_checkout_leaves_neither_order_nor_loyalty_rows(shop_app, monkeypatch):
    client = shop_app.test_client()
    sign_up(client, "bo@example.com")
    client.post("/cart", data={"sku": "TEA-CHAI"})

    def payment_declined(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("payment declined")

    # the last step before the commit fails: the order and the loyalty writes roll back together
    monkeypatch.setattr("example_shop.views.capture_consent", payment_declined)
    shop_app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError):
        checkout(client)
    with shop_app.app_context():
        db.session.rollback()
        assert db.session.scalar(select(func.count()).select_from(Order)) == 0
        assert loyalty.customer(account(shop_app, "bo@example.com").ref).orders_count == 0


def test_coupon_is_quoted_redeemed_and_refused_when_used_up(shop_app):
    with shop_app.app_context():
        loyalty.coupons.create(kind="fixed", value=Decimal(5), code="FIVEOFF-TEST", max_uses=1)
    client = shop_app.test_client()
    sign_up(client, "cy@example.com")
    client.post("/cart", data={"sku": "GEAR-KETTLE"})
    quoted = client.post("/checkout", data={"coupon": "fiveoff test", "action": "apply"})
    assert quoted.status_code == 200 and "Coupon applied: −€5.00" in quoted.get_data(as_text=True)
    assert checkout(client, "fiveoff-test").status_code == 302
    with shop_app.app_context():
        [order] = account(shop_app, "cy@example.com").orders
        assert order.total == Decimal("54.90") and order.discount_cents == 500
        assert loyalty.purchase(order.ref).total == Decimal("54.90")
        assert [r.discount for r in loyalty.coupons.redemptions(order.ref)] == [Decimal("5.00")]

    other = shop_app.test_client()
    sign_up(other, "dee@example.com")
    other.post("/cart", data={"sku": "GEAR-KETTLE"})
    refused = checkout(other, "FIVEOFF-TEST")
    assert refused.status_code == 400 and "used up" in refused.get_data(as_text=True)
    with shop_app.app_context():
        assert account(shop_app, "dee@example.com").orders == []


def test_live_check_uses_the_json_endpoint_the_script_calls(shop_app):
    with shop_app.app_context():
        loyalty.coupons.create(kind="percent", value=Decimal(10), code="TENPERCENT1")
    client = shop_app.test_client()
    sign_up(client, "eve@example.com")
    client.post("/cart", data={"sku": "GEAR-GRINDER"})
    page = client.get("/checkout").get_data(as_text=True)
    url = re.search(r'data-validate-url="([^"]+)"', page).group(1)
    ref = re.search(r'data-customer-ref="([^"]+)"', page).group(1)
    quote = client.post(url, json={"code": "TENPERCENT1", "order_total": "69.90", "customer_ref": ref}).get_json()
    assert quote["valid"] is True and Decimal(quote["discount"]) == Decimal("6.99")
    assert client.post(url, json={"code": "NOPE-NOPE-NOPE", "order_total": "69.90"}).get_json()["reason"] == "not_found"
    script = client.get("/static/coupon.js")
    script.close()
    assert "coupon.js" in page and script.status_code == 200


def test_profile_keeps_the_programme_in_step_and_links_to_wallet_and_preferences(shop_app):
    client = shop_app.test_client()
    sign_up(client, "flo@example.com")
    client.post("/account", data={"name": "Flo", "language": "ro", "birthday": "1985-12-24"})
    with shop_app.app_context():
        customer = loyalty.customer(account(shop_app, "flo@example.com").ref)
        assert customer.locale == "ro" and str(customer.birthday) == "1985-12-24" and customer.name == "Flo"
    page = client.get("/account").get_data(as_text=True)
    wallet = re.search(r'href="http://shop.test(/loyalty/wallet/[^"]+)"', page).group(1)
    preferences = re.search(r'href="http://shop.test(/loyalty/preferences/[^"]+)"', page).group(1)
    wallet_page = client.get(wallet)
    assert wallet_page.status_code == 200
    # flask_loyalty's pages are wrapped in the shop's own layout (templates/loyalty/base.html override)
    assert "Leaf &amp; Bean" in wallet_page.get_data(as_text=True)
    assert 'class="site-header"' in wallet_page.get_data(as_text=True)
    assert client.get(preferences).status_code == 200


def test_staff_refunds_and_only_staff_see_orders_and_dashboard(shop_app):
    buyer = shop_app.test_client()
    sign_up(buyer, "gus@example.com")
    buyer.post("/cart", data={"sku": "GIFT-TASTING", "quantity": "2"})
    checkout(buyer)
    assert buyer.get("/staff/orders").status_code == 403
    assert buyer.get("/loyalty/admin/").status_code == 403
    with shop_app.app_context():
        [order] = account(shop_app, "gus@example.com").orders
        ref = order.ref

    staff = shop_app.test_client()
    staff.post("/login", data={"email": STAFF_EMAIL})
    assert ref in staff.get("/staff/orders").get_data(as_text=True)
    assert staff.get("/loyalty/admin/").status_code == 200
    staff.post(f"/staff/orders/{ref}/refund", data={"amount": "19.80"})
    with shop_app.app_context():
        purchase = loyalty.purchase(ref)
        assert purchase.refunded_total == Decimal("19.80") and purchase.points_reversed == 20  # floor(59 × 40.00/59.80) = 39 kept
        assert db.session.scalar(select(Order).where(Order.ref == ref)).status == "partly refunded"
    staff.post(f"/staff/orders/{ref}/refund", data={"amount": ""})
    with shop_app.app_context():
        assert loyalty.purchase(ref).refunded_total == Decimal("59.80")
        assert db.session.scalar(select(Order).where(Order.ref == ref)).status == "refunded"
        assert loyalty.points.balance(account(shop_app, "gus@example.com").ref) == 0


def test_seed_writes_a_small_history_through_the_public_api(shop_app):
    now = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
    with shop_app.app_context():
        assert is_seeded()  # the fixture wrote the catalogue
        db.session.execute(text("DELETE FROM shop_account"))
        db.session.execute(text("DELETE FROM shop_product"))
        db.session.execute(text("DELETE FROM shop_category"))
        db.session.commit()
        report = seed(customers=40, orders=160, now=now, echo=lambda _msg: None)
        # 160 planned orders, plus those a win-back campaign may bring back
        assert report.customers == 40 and report.orders >= 160
        orders = db.session.scalar(select(func.count()).select_from(Order))
        assert orders == report.orders
        channels = {o.channel for o in db.session.scalars(select(Order))}
        assert channels <= {"online", "store", "catalog", "phone"} and len(channels) >= 3
        refs = [a.ref for a in db.session.scalars(select(Account).where(Account.is_staff.is_(False)))]
        assert sum(loyalty.customer(r).orders_count for r in refs) == report.orders
        assert report.extra["mails sent"] > 0
        assert loyalty.analytics.profile(refs[0]) is not None
    runner = shop_app.test_cli_runner()
    assert "already seeded" in runner.invoke(args=["shop", "seed"]).output


def test_a_friend_brought_by_a_referral_link_is_recorded_at_checkout(shop_app):
    advocate = shop_app.test_client()
    sign_up(advocate, "hal@example.com")
    page = advocate.get("/account").get_data(as_text=True)
    link = re.search(r'id="referral" type="text" readonly value="http://shop.test(/loyalty/r/[^"]+)"', page).group(1)

    friend = shop_app.test_client()
    landing = friend.get(link)
    assert landing.status_code == 302  # the landing page keeps the code in a cookie for the checkout
    sign_up(friend, "ida@example.com")
    friend.post("/cart", data={"sku": "GIFT-COFFEEBOX"})
    assert checkout(friend).status_code == 302
    with shop_app.app_context():
        [order] = account(shop_app, "ida@example.com").orders
        referral = loyalty.referrals.of_order(order.ref)
        assert referral is not None
        assert [r.id for r in loyalty.referrals.made_by(account(shop_app, "hal@example.com").ref)] == [referral.id]


# --- regressions ------------------------------------------------------------------------
def test_add_to_cart_redirects_only_to_a_path_on_the_shop(shop_app):
    client = shop_app.test_client()
    for target in ("https://evil.example/phish", "//evil.example/x", "/\\evil.example"):
        response = client.post("/cart", data={"sku": "TEA-SENCHA", "next": target})
        assert response.status_code == 302 and "evil.example" not in response.location
        assert response.location.endswith("/cart")
    kept = client.post("/cart", data={"sku": "TEA-SENCHA", "next": "/products/TEA-SENCHA"})
    assert kept.location.endswith("/products/TEA-SENCHA")


def _signup_form(client: Any, **fields: str) -> dict[str, str]:
    page = client.get("/signup").get_data(as_text=True)
    return {"language": "en", "loyalty_consent_shown": SHOWN.search(page).group(1), **fields}


def test_signup_shows_the_programmes_refusal_and_creates_no_account(shop_app):
    client = shop_app.test_client()
    # the shop's own check is only `"@" in email`; flask_loyalty's e-mail validation refuses it
    response = client.post("/signup", data=_signup_form(client, email="ana@", name="Ana"))
    assert response.status_code == 400 and "Please check: email" in response.get_data(as_text=True)
    with shop_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Account)) == 1  # the seeded staff only
        assert loyalty.customer("C000002") is None


def test_signup_and_profile_refuse_a_name_longer_than_the_shop_stores(shop_app):
    client = shop_app.test_client()
    response = client.post("/signup", data=_signup_form(client, email="long@example.com", name="N" * 121))
    assert response.status_code == 200 and "shorten your name to 120" in response.get_data(as_text=True)
    with shop_app.app_context():
        assert db.session.scalar(select(Account).where(Account.email == "long@example.com")) is None
    sign_up(client, "long@example.com", name="N" * 120)
    client.post("/account", data={"name": "M" * 121, "language": "en"})
    with shop_app.app_context():
        me = account(shop_app, "long@example.com")
        assert me.name == "N" * 120 and loyalty.customer(me.ref).name == "N" * 120


def test_clearing_the_birthday_in_the_profile_clears_it_in_the_programme(shop_app):
    client = shop_app.test_client()
    sign_up(client, "kim@example.com")  # birthday 1990-04-02
    client.post("/account", data={"name": "Kim", "language": "es", "birthday": ""})
    with shop_app.app_context():
        me = account(shop_app, "kim@example.com")
        assert me.birthday is None and loyalty.customer(me.ref).birthday is None


def make_gold(shop_app: Any, email: str) -> str:
    """Give the account a Gold tier (400 spent in the last 12 months) through the public API."""
    with shop_app.app_context():
        ref = account(shop_app, email).ref
        loyalty.record_purchase("OLD-" + ref, ref, Decimal("450.00"),
                                placed_at=datetime.now(timezone.utc) - timedelta(days=30))
        assert loyalty.tiers.of(ref).name == "Gold"
        return ref


def test_order_page_shows_coupon_and_member_discount_apart(shop_app):
    with shop_app.app_context():
        loyalty.coupons.create(kind="fixed", value=Decimal(5), code="FIVEOFF-TEST")
    client = shop_app.test_client()
    sign_up(client, "gold@example.com")
    make_gold(shop_app, "gold@example.com")
    client.post("/cart", data={"sku": "GEAR-KETTLE"})  # 59.90; Gold: 5 % = 3.00 (2.995 rounded)
    response = checkout(client, "fiveoff test")
    assert response.status_code == 302
    page = client.get(response.location).get_data(as_text=True)
    assert "Coupon FIVEOFF-TEST: −€5.00" in page and "Member discount: −€3.00" in page
    assert "None" not in page
    with shop_app.app_context():
        [order] = account(shop_app, "gold@example.com").orders
        assert (order.discount_cents, order.tier_discount_cents, order.total_cents) == (800, 300, 5190)


def test_coupon_and_tier_discount_together_never_exceed_the_subtotal(shop_app):
    with shop_app.app_context():
        loyalty.coupons.create(kind="percent", value=Decimal(100), code="ALLFREE-TEST")
    client = shop_app.test_client()
    sign_up(client, "gold2@example.com")
    make_gold(shop_app, "gold2@example.com")
    client.post("/cart", data={"sku": "GEAR-KETTLE"})
    quoted = client.post("/checkout", data={"coupon": "ALLFREE-TEST", "action": "apply"}).get_data(as_text=True)
    assert "To pay: <strong id=\"to-pay\">€0.00</strong>" in quoted and "member discount" not in quoted
    assert checkout(client, "ALLFREE-TEST").status_code == 302
    with shop_app.app_context():
        [order] = account(shop_app, "gold2@example.com").orders
        assert (order.subtotal_cents, order.discount_cents, order.tier_discount_cents, order.total_cents) \
            == (5990, 5990, 0, 0)


def test_order_stores_the_coupons_own_code_not_the_typing(shop_app):
    with shop_app.app_context():
        loyalty.coupons.create(kind="fixed", value=Decimal(5), code="FIVEOFF-TEST")
    client = shop_app.test_client()
    sign_up(client, "lou@example.com")
    client.post("/cart", data={"sku": "GEAR-KETTLE"})
    typed = "fiveoff" + " " * 40 + "test"   # lookup ignores spaces and dashes: a valid code
    assert checkout(client, typed).status_code == 302
    with shop_app.app_context():
        [order] = account(shop_app, "lou@example.com").orders
        assert order.coupon_code == "FIVEOFF-TEST"


def test_staff_refund_refuses_amounts_above_the_remainder_or_not_positive(shop_app):
    buyer = shop_app.test_client()
    sign_up(buyer, "max@example.com")
    buyer.post("/cart", data={"sku": "TEA-SENCHA"})  # 9.90
    checkout(buyer)
    with shop_app.app_context():
        [order] = account(shop_app, "max@example.com").orders
        ref = order.ref
    staff = shop_app.test_client()
    staff.post("/login", data={"email": STAFF_EMAIL})
    assert staff.post(f"/staff/orders/{ref}/refund", data={"amount": "4.00"}).status_code == 302
    for amount in ("1000", "5.91", "0", "-1", "abc", "1.001", "NaN"):
        response = staff.post(f"/staff/orders/{ref}/refund", data={"amount": amount}, follow_redirects=True)
        assert "Refund refused" in response.get_data(as_text=True) and "5.90" in response.get_data(as_text=True)
    with shop_app.app_context():
        assert loyalty.purchase(ref).refunded_total == Decimal("4.00")
    staff.post(f"/staff/orders/{ref}/refund", data={"amount": "5.90"})
    with shop_app.app_context():
        assert loyalty.purchase(ref).refunded_total == Decimal("9.90")
        assert db.session.scalar(select(Order).where(Order.ref == ref)).status == "refunded"


def test_a_malformed_referral_cookie_is_ignored_at_checkout(shop_app):
    client = shop_app.test_client()
    sign_up(client, "ned@example.com")
    for value in ("x" * 300, "not a code!"):
        client.post("/cart", data={"sku": "TEA-SENCHA"})
        client.set_cookie(shop_app.config["LOYALTY_REFERRAL_COOKIE"], value)
        assert checkout(client).status_code == 302
    with shop_app.app_context():
        orders = account(shop_app, "ned@example.com").orders
        assert len(orders) == 2 and all(loyalty.referrals.of_order(o.ref) is None for o in orders)


def test_shop_forms_refuse_a_post_without_the_sessions_csrf_token(shop_app):
    buyer = shop_app.test_client()
    sign_up(buyer, "pat@example.com")
    buyer.post("/cart", data={"sku": "TEA-SENCHA"})
    checkout(buyer)
    with shop_app.app_context():
        [order] = account(shop_app, "pat@example.com").orders
        ref = order.ref
    staff = shop_app.test_client()
    staff.post("/login", data={"email": STAFF_EMAIL})
    # a form on another site, submitted by the signed-in staff member's browser: no token, or a wrong one
    plain = FlaskClient(shop_app, shop_app.response_class, use_cookies=True)
    with staff.session_transaction() as sess:
        session_cookie = dict(sess)
    with plain.session_transaction() as sess:
        sess.update(session_cookie)
    for data in ({"amount": ""}, {"amount": "", CSRF_FIELD: "x" * 43}):
        response = plain.post(f"/staff/orders/{ref}/refund", data=data,
                              headers={"Origin": "https://evil.example", "Referer": "https://evil.example/x"})
        assert response.status_code == 400
    for url, data in (("/cart", {"sku": "TEA-SENCHA"}), ("/account", {"name": "X"}), ("/checkout", {}),
                      ("/signup", {"email": "z@example.com", "name": "Z"}), ("/cart/update", {}),
                      ("/login", {"email": STAFF_EMAIL}), ("/logout", {})):
        assert plain.post(url, data=data).status_code == 400, url
    with shop_app.app_context():
        assert loyalty.purchase(ref).refunded_total == Decimal("0")
    # the pages carry the token, and a post with it goes through
    page = staff.get(f"/staff/orders?q={ref}").get_data(as_text=True)
    token = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page).group(1)
    assert plain.post(f"/staff/orders/{ref}/refund", data={"amount": "", CSRF_FIELD: token}).status_code == 302
    with shop_app.app_context():
        assert loyalty.purchase(ref).refunded_total == Decimal("9.90")
