"""The wallet, the printable cards, the validate endpoint and its rate limit, the CLI."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date
from decimal import Decimal

import pytest

from flask_loyalty import tokens
from flask_loyalty.web.api import limiter_for

REDIS_URL = "redis://127.0.0.1:6379"


def wallet_path(shop, ref):
    return shop.loyalty.links.wallet(ref).replace("http://shop.test", "")


# --- wallet ---------------------------------------------------------------------

def test_wallet_shows_usable_coupons_in_customer_locale(make_shop):
    s = make_shop(LOYALTY_TIMEZONE="Europe/Madrid", LOYALTY_SHOP_NAME="Casa Té")
    with s.app.app_context():
        s.loyalty.upsert_customer("ana", locale="es")
        s.loyalty.record_purchase("o1", "ana", "1234.50")
        pct = s.loyalty.coupons.create(kind="percent", value="12.5", customer_ref="ana",
                                       expires_at=date(2030, 3, 29))
        fixed = s.loyalty.coupons.create(kind="fixed", value="5", customer_ref="ana", min_order_total="30")
        other = s.loyalty.coupons.create(kind="fixed", value="5", customer_ref="bob")
        used = s.loyalty.coupons.create(kind="fixed", value="7", customer_ref="ana")
        s.loyalty.coupons.redeem(used.code, customer_ref="ana", order_ref="o2", order_total="50")
        r = s.client.get(wallet_path(s, "ana"))
        assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
        assert r.headers["Referrer-Policy"] == "no-referrer"   # the URL is a signed token
        html = r.get_data(as_text=True)
        assert pct.code in html and fixed.code in html
        assert other.code not in html and used.code not in html
        assert "12,5\xa0%" in html and "5,00\xa0€" in html and "30,00\xa0€" in html
        assert "29 de marzo de 2030" in html
        assert "1.234" in html
        assert 'lang="es"' in html and "Tu monedero" in html and "1.234 puntos" in html
        assert "12,5\xa0% de descuento" in html and "Válido hasta el 29 de marzo de 2030" in html
        assert "/print" in html


def test_wallet_points_and_empty_state(shop):
    shop.loyalty.record_purchase("o1", "c1", "42")
    html = shop.client.get(wallet_path(shop, "c1")).get_data(as_text=True)
    assert "42 points" in html
    shop.loyalty.upsert_customer("c2")
    html = shop.client.get(wallet_path(shop, "c2")).get_data(as_text=True)
    assert "0 points" in html and "You have no coupons to use right now." in html
    html = shop.client.get(wallet_path(shop, "stranger")).get_data(as_text=True)
    assert "0 points" in html


@pytest.mark.parametrize("locale,words", [
    ("ro", ["Portofelul tău", "Livrare gratuită", "Tipărește cupoanele mele", "1 punct"]),
    ("ru", ["Ваш кошелёк", "Бесплатная доставка", "Распечатать мои купоны", "1 балл"]),
])
def test_wallet_translated(shop, locale, words):
    shop.loyalty.upsert_customer("c1", locale=locale)
    shop.loyalty.record_purchase("o1", "c1", "1.50")
    shop.loyalty.coupons.create(kind="free_shipping", customer_ref="c1")
    html = shop.client.get(wallet_path(shop, "c1")).get_data(as_text=True)
    for word in words:
        assert word in html
    cards = shop.client.get(wallet_path(shop, "c1") + "/print").get_data(as_text=True)
    assert words[1] in cards


def test_wallet_refuses_other_tokens(shop):
    shop.loyalty.upsert_customer("c1")
    survey_token = tokens.make("survey", {"c": "c1"})
    assert shop.client.get(f"/loyalty/wallet/{survey_token}").status_code == 404
    assert shop.client.get("/loyalty/wallet/garbage").status_code == 404
    assert shop.client.get(f"/loyalty/wallet/{survey_token}/print").status_code == 404
    good = wallet_path(shop, "c1")
    head, _, signature = good.rpartition(".")      # a changed first character always changes the signature
    assert shop.client.get(f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}").status_code == 404


def test_print_page_has_four_cards_per_sheet_and_qr(shop):
    for i in range(5):
        shop.loyalty.coupons.create(kind="fixed", value=str(5 + i), customer_ref="c1")
    html = shop.client.get(wallet_path(shop, "c1") + "/print").get_data(as_text=True)
    assert html.count('class="coupon-sheet"') == 2
    assert html.count('class="coupon-card"') == 5
    assert html.count("<svg") == 5 and "coupon-qr" in html
    assert "Our shop" in html and "€9.00 off" in html


def test_qr_encodes_the_code(shop):
    from flask_loyalty.web.wallet import WalletCoupon

    c = shop.loyalty.coupons.create(kind="fixed", value="5", code="QR-TEST-2")
    svg = WalletCoupon(c, None).qr_svg("t")  # type: ignore[arg-type]
    assert svg.startswith("<svg") and "<title>t</title>" in svg


def test_erased_customer_wallet_is_gone(shop):
    shop.loyalty.upsert_customer("c1")
    from flask_loyalty.clock import utcnow

    shop.loyalty.customer("c1").erased_at = utcnow()
    shop.db.session.commit()
    assert shop.client.get(wallet_path(shop, "c1")).status_code == 404


# --- validate endpoint ------------------------------------------------------------

def post(shop, body, ip="10.0.0.1", **kw):
    return shop.client.post("/loyalty/api/coupons/validate", json=body,
                            environ_base={"REMOTE_ADDR": ip}, **kw)


def test_validate_endpoint_quote(shop):
    c = shop.loyalty.coupons.create(kind="percent", value="10")
    r = post(shop, {"code": c.code.lower(), "order_total": "33.35"})
    assert r.status_code == 200
    assert r.json == {"valid": True, "discount": "3.34", "reason": None, "kind": "percent", "currency": "EUR",
                      "free_shipping": False, "gift_name": None}
    r = post(shop, {"code": c.code, "order_total": 33.35})      # JSON numbers are read as Decimal
    assert r.json["discount"] == "3.34"


def test_validate_endpoint_no_enumeration(shop):
    mine = shop.loyalty.coupons.create(kind="fixed", value="5", customer_ref="alice")
    unknown = post(shop, {"code": "ABCD-EFGH-JKMN", "order_total": "10", "customer_ref": "bob"}, ip="10.0.0.2")
    theirs = post(shop, {"code": mine.code, "order_total": "10", "customer_ref": "bob"}, ip="10.0.0.3")
    assert unknown.status_code == theirs.status_code == 200
    assert unknown.json == theirs.json and theirs.json["reason"] == "not_found"
    ok = post(shop, {"code": mine.code, "order_total": "10", "customer_ref": "alice"}, ip="10.0.0.4")
    assert ok.json["valid"] is True


@pytest.mark.parametrize("body,field", [
    ({"order_total": "10"}, "code"),
    ({"code": "ABC"}, "order_total"),
    ({"code": "ABC", "order_total": "-1"}, "order_total"),
    ({"code": "ABC", "order_total": "ten"}, "order_total"),
    ({"code": "ABC", "order_total": "1", "currency": "XXQ"}, "currency"),
    ({"code": "ABC", "order_total": "1", "extra": 1}, "extra"),
    ({"code": 12, "order_total": "1"}, "code"),
])
def test_validate_endpoint_field_errors(shop, body, field):
    r = post(shop, body)
    assert r.status_code == 400 and r.json["error"] == "invalid_input" and field in r.json["errors"]


@pytest.mark.parametrize("total", ["1" + "0" * 30, "1e30", 10 ** 40])
def test_validate_endpoint_refuses_huge_order_totals(shop, total):
    r = post(shop, {"code": "ABCD-EFGH", "order_total": total})
    assert r.status_code == 400 and r.json["errors"] == {"order_total": ["Amount too large."]}


def test_validate_endpoint_bad_json(shop):
    for data in (b"{not json", b"[1, 2]", b"", b'"x"'):
        r = shop.client.post("/loyalty/api/coupons/validate", data=data, content_type="application/json")
        assert r.status_code == 400 and "_schema" in r.json["errors"]
    r = shop.client.post("/loyalty/api/coupons/validate", data=b"x" * 5000, content_type="application/json")
    assert r.status_code == 400


@pytest.mark.parametrize("data", [b'{"code": "ABCD-EFGH", "order_total": NaN}',
                                  b'{"code": "ABCD-EFGH", "order_total": Infinity}',
                                  b'{"code": "ABCD-EFGH", "order_total": -Infinity}',
                                  b"[" * 2000 + b"]" * 2000])
def test_validate_endpoint_refuses_non_json_numbers_and_deep_nesting(shop, data):
    """NaN/Infinity (floats, not JSON) and nesting too deep for the parser: 400, never a 500."""
    r = shop.client.post("/loyalty/api/coupons/validate", data=data, content_type="application/json")
    assert r.status_code == 400
    assert r.json == {"error": "invalid_input", "errors": {"_schema": ["Send a JSON object."]}}


def test_long_codes_rejected_without_a_query(shop):
    from sqlalchemy import event

    statements = []
    engine = shop.db.engine
    listener = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        r = post(shop, {"code": "A" * 65, "order_total": "10"})
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert r.status_code == 400 and "code" in r.json["errors"]
    assert statements == []


def test_validate_endpoint_rate_limited_per_ip(make_shop):
    s = make_shop(LOYALTY_VALIDATE_RATE_LIMIT="3/minute")
    with s.app.app_context():
        for _ in range(3):
            assert post(s, {"code": "ABC", "order_total": "1"}, ip="10.1.1.1").status_code == 200
        r = post(s, {"code": "ABC", "order_total": "1"}, ip="10.1.1.1")
        assert r.status_code == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert post(s, {"code": "ABC", "order_total": "1"}, ip="10.1.1.2").status_code == 200


def test_validate_endpoint_rate_limited_per_customer(make_shop):
    s = make_shop(LOYALTY_VALIDATE_RATE_LIMIT="2/minute")
    with s.app.app_context():
        body = {"code": "ABC", "order_total": "1", "customer_ref": "carol"}
        assert post(s, body, ip="10.2.0.1").status_code == 200
        assert post(s, body, ip="10.2.0.2").status_code == 200
        r = post(s, body, ip="10.2.0.3")                    # a new IP, the same customer
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert post(s, {**body, "customer_ref": "dave"}, ip="10.2.0.4").status_code == 200


def test_bad_rate_limit_setting(make_shop):
    from flask_loyalty import InvalidInput

    with pytest.raises(InvalidInput):
        make_shop(LOYALTY_VALIDATE_RATE_LIMIT="lots")


def test_rate_limit_in_redis_is_shared_between_apps(make_shop):
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except Exception:  # pragma: no cover - the CI starts Redis
        pytest.skip("no Redis at " + REDIS_URL)
    a = make_shop(LOYALTY_VALIDATE_RATE_LIMIT="2/minute", LOYALTY_RATELIMIT_STORAGE_URI=REDIS_URL)
    b = make_shop(LOYALTY_VALIDATE_RATE_LIMIT="2/minute", LOYALTY_RATELIMIT_STORAGE_URI=REDIS_URL)
    # a and b stand for two worker processes of one shop: they share the counters in Redis
    ip = f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    with a.app.app_context():
        assert "Redis" in type(limiter_for(a.loyalty.state).storage).__name__
        assert post(a, {"code": "ABC", "order_total": "1"}, ip=ip).status_code == 200
    with b.app.app_context():
        assert post(b, {"code": "ABC", "order_total": "1"}, ip=ip).status_code == 200
        r = post(b, {"code": "ABC", "order_total": "1"}, ip=ip)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_rate_limit_storage_down_lets_requests_through(make_shop, caplog):
    pytest.importorskip("redis")
    s = make_shop(LOYALTY_VALIDATE_RATE_LIMIT="1/minute", LOYALTY_RATELIMIT_STORAGE_URI="redis://127.0.0.1:1")
    with s.app.app_context():
        for _ in range(3):
            assert post(s, {"code": "ABC", "order_total": "1"}, ip="10.3.0.1").status_code == 200
    assert "rate-limit storage unavailable" in caplog.text


# --- CLI ---------------------------------------------------------------------------

def test_cli_create_and_batch(shop):
    runner = shop.app.test_cli_runner()
    r = runner.invoke(args=["loyalty", "coupons", "create", "--kind", "percent", "--value", "15",
                            "--code", "CLI-TEN", "--expires", "2030-01-31"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "CLI-TEN"
    c = shop.loyalty.coupons.get("cliten")
    assert c.value == Decimal("15") and c.expires_at.date() == date(2030, 1, 31)
    r = runner.invoke(args=["loyalty", "coupons", "batch", "25", "--kind", "fixed", "--value", "5",
                            "--prefix", "POST", "--campaign", "autumn", "--max-uses-per-customer", "0"])
    assert r.exit_code == 0, r.output
    made = [line for line in r.stdout.splitlines() if line.startswith("P0ST-")]
    assert len(made) == 25 and len(set(made)) == 25
    assert shop.loyalty.coupons.get(made[0]).max_uses_per_customer is None
    r = runner.invoke(args=["loyalty", "coupons", "create", "--kind", "percent"])
    assert r.exit_code != 0 and "value" in r.output


def test_cli_export_only_postal_consent(shop):
    pytest.importorskip("flask_loyalty.services.consent")
    L = shop.loyalty  # noqa: N806
    L.upsert_customer("ana", name="Ana Pérez", email="ana@example.com", locale="es")
    L.upsert_customer("bob", name="Bob", email="bob@example.com", locale="en")
    a = L.coupons.create(kind="fixed", value="5", customer_ref="ana", campaign="mail", expires_at=date(2030, 5, 1))
    L.coupons.create(kind="fixed", value="5", customer_ref="bob", campaign="mail")
    L.coupons.create(kind="fixed", value="9", customer_ref="ana", campaign="other")
    L.consent.grant("ana", "postal_mail", source="test")
    r = shop.app.test_cli_runner().invoke(args=["loyalty", "coupons", "export", "--campaign", "mail"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(row["customer_ref"], row["code"]) for row in rows] == [("ana", a.code)]
    row = rows[0]
    assert row["name"] == "Ana Pérez" and row["email"] == "ana@example.com" and row["locale"] == "es"
    assert row["value"].startswith("5,00") and row["expires_on"] == "2030-05-01"
    assert "1 customers left out" in r.stderr


def test_cli_export_writes_formula_like_names_as_text(shop):
    """`flask loyalty coupons export` (postal mail-merge) writes a shopper-supplied name as text, not a formula."""
    shop.loyalty.upsert_customer("evil", name="=cmd|' /C calc'!A0", email="evil@example.com", locale="en")
    shop.loyalty.coupons.create(kind="fixed", value="5", customer_ref="evil", campaign="mail")
    shop.loyalty.consent.grant("evil", "postal_mail", source="test")
    r = shop.app.test_cli_runner().invoke(args=["loyalty", "coupons", "export"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows and rows[0]["name"] == "'=cmd|' /C calc'!A0", rows
