"""The extension itself: registration, per-app state, CLI, links."""

from __future__ import annotations

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import inspect

from flask_loyalty import Loyalty, LoyaltyError, NotInitialized
from flask_loyalty.models import metadata


def test_second_registration_is_refused(shop):
    with pytest.raises(LoyaltyError, match="already registered"):
        shop.loyalty.init_app(shop.app, shop.db)


def test_defaults_are_set_and_overridable(make_shop):
    s = make_shop(LOYALTY_URL_PREFIX="/rewards")
    assert s.app.config["LOYALTY_URL_PREFIX"] == "/rewards"
    assert s.app.config["LOYALTY_TIMEZONE"] == "UTC"
    assert s.app.config["LOYALTY_CURRENCY"] == "EUR"
    assert "loyalty" in s.app.extensions


def test_use_without_init_app_is_explained():
    app = Flask("bare")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    SQLAlchemy().init_app(app)
    loyalty = Loyalty()
    with app.app_context(), pytest.raises(NotInitialized, match="init_app"):
        loyalty.record_purchase("o", "c", 1)
    with pytest.raises(NotInitialized, match="application context"):
        loyalty.record_purchase("o", "c", 1)


def test_bad_config_is_refused_at_init_app():
    app = Flask("bad")
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", LOYALTY_TIMEZONE="Mars/Olympus")
    db = SQLAlchemy()
    db.init_app(app)
    with pytest.raises(LoyaltyError):
        Loyalty(app, db)


def test_two_apps_in_one_process(make_shop):
    a = make_shop(LOYALTY_SHOP_NAME="A")
    b = make_shop(LOYALTY_SHOP_NAME="B")
    with a.app.app_context():
        a.loyalty.record_purchase("o1", "c1", 10)
    with b.app.app_context():
        assert b.app.extensions["loyalty"].app is b.app
        assert b.loyalty.state.config["LOYALTY_SHOP_NAME"] == "B"
    with a.app.app_context():
        assert a.loyalty.purchase("o1") is not None


def test_one_extension_object_serves_two_apps(tmp_path):
    loyalty = Loyalty()
    apps = []
    for name in ("x", "y"):
        app = Flask(name)
        app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / name}.db", SECRET_KEY="k")
        db = SQLAlchemy()
        db.init_app(app)
        loyalty.init_app(app, db)
        with app.app_context():
            loyalty.create_all()
            loyalty.record_purchase(f"{name}-1", "c", 3)
        apps.append((app, db))
    for (app, db), name in zip(apps, ("x", "y"), strict=True):
        with app.app_context():
            assert loyalty.purchase(f"{name}-1") is not None
            other = "y" if name == "x" else "x"
            assert loyalty.purchase(f"{other}-1") is None
            db.engine.dispose()


def test_create_all_is_idempotent_and_prefixed(shop):
    shop.loyalty.create_all()
    shop.loyalty.create_all()
    names = set(inspect(shop.db.engine).get_table_names())
    ours = {t.name for t in metadata.sorted_tables}
    assert ours <= names
    assert all(n.startswith("loyalty_") for n in ours)


def test_cli_init_db(make_shop):
    s = make_shop()
    result = s.app.test_cli_runner().invoke(args=["loyalty", "init-db"])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output


def test_links_are_absolute_and_signed(shop):
    url = shop.loyalty.links.survey("o1")
    assert url.startswith("http://shop.test/loyalty/survey/")
    shop.app.config["LOYALTY_BASE_URL"] = None
    with shop.app.test_request_context(base_url="https://store.example"):
        assert shop.loyalty.links.wallet("c1").startswith("https://store.example/loyalty/wallet/")


BAD_REFS = ["a\x00b", "", " padded ", "x" * 500, "tab\there"]


@pytest.mark.parametrize("ref", BAD_REFS)
def test_no_contract_call_fails_on_a_reference_no_row_can_have(shop, ref):
    """A NUL (refused by PostgreSQL in any query), padding, an empty or huge value: unknown or InvalidInput.

    Never a database error: the read calls answer as for an unknown customer or
    order, the write calls refuse with one of the library's documented errors
    (:class:`InvalidInput`, ``NotFound``, ``CouponError``, ``NotEnoughPoints``).
    """
    L = shop.loyalty  # noqa: N806
    L.record_purchase("o-known", "c-known", "10.00")
    calls = [
        lambda: L.coupons.for_customer(ref), lambda: L.points.balance(ref), lambda: L.tiers.of(ref),
        lambda: L.tiers.discount_for(ref, "10.00"), lambda: L.messages.for_customer(ref),
        lambda: L.consent.has(ref, "email_marketing"), lambda: L.consent.history(ref),
        lambda: L.consent.export(ref), lambda: L.analytics.profile(ref),
        lambda: L.coupons.validate("NOSUCHCODE", customer_ref=ref, order_total="10.00"),
        lambda: L.coupons.release(ref), lambda: L.gift_cards.refund(ref), lambda: L.record_refund(ref),
        lambda: L.consent.erase(ref), lambda: L.points.redeem(ref, 100),
        lambda: L.consent.withdraw(ref, "email_marketing", source="test"),
        lambda: L.upsert_customer(ref), lambda: L.record_purchase(ref, "c-known", "10.00"),
        lambda: L.record_purchase("o-new", ref, "10.00"),
        lambda: L.links.survey(ref), lambda: L.links.wallet(ref), lambda: L.links.preferences(ref),
    ]
    for call in calls:
        try:
            call()
        except LoyaltyError:          # InvalidInput, NotFound, CouponError, NotEnoughPoints ...
            shop.db.session.rollback()
    assert L.points.balance(ref) == 0 and L.coupons.for_customer(ref) == []
    assert L.points.balance("c-known") >= 0          # the session is still usable
