"""The shop owner's dashboard in English, Spanish, Romanian and Russian: locale choice, labels, formatting."""

from __future__ import annotations

import pytest
from test_admin import PREFIX, add_message, add_period_orders, admin_urls, allow, tables_of

from flask_loyalty.i18n import admin_locale, gettext
from flask_loyalty.services import admin_lists, dashboard

#: Per locale: what the overview, customer, outbox and coupon pages must say, and the revenue as shown.
EXPECTED = {
    "en": {"overview": ("<h1>Overview</h1>", "Customers and orders", "Repeat-purchase rate",
                        "a purchase within 7 days of the click"),
           "customer": ("<h2 id=\"who\">Profile</h2>", "Order o3:", "refunded €10.00"),
           "outbox": ("<h1>Outbox</h1>", "Messages, newest first", "suppressed"),
           "coupons": ("<h1>Coupons</h1>", "Create a coupon", "10% off"),
           "revenue": "€170.00", "percent": "66.7%"},
    "es": {"overview": ("<h1>Resumen</h1>", "Clientes y pedidos", "Tasa de recompra",
                        "una compra en los 7 días siguientes al clic"),
           "customer": ("<h2 id=\"who\">Perfil</h2>", "Pedido o3:", "reembolsado 10,00\xa0€"),
           "outbox": ("<h1>Bandeja de salida</h1>", "Mensajes, los más recientes primero", "suprimido"),
           "coupons": ("<h1>Cupones</h1>", "Crear un cupón", "10% de descuento"),
           "revenue": "170,00\xa0€", "percent": "66,7\xa0%"},
    "ro": {"overview": ("<h1>Prezentare generală</h1>", "Clienți și comenzi", "Rata cumpărărilor repetate",
                        "o cumpărare în cel mult 7 zile de la clic"),
           "customer": ("<h2 id=\"who\">Profil</h2>", "Comanda o3:", "rambursat 10,00\xa0EUR"),
           "outbox": ("<h1>Mesaje de trimis</h1>", "Mesaje, cele mai noi primele", "suprimat"),
           "coupons": ("<h1>Cupoane</h1>", "Creează un cupon", "10% reducere"),
           "revenue": "170,00\xa0EUR", "percent": "66,7\xa0%"},
    "ru": {"overview": ("<h1>Обзор</h1>", "Клиенты и заказы", "Доля повторных покупок",
                        "покупка в течение 7 дн. после клика"),
           "customer": ("<h2 id=\"who\">Профиль</h2>", "Заказ o3:", "возвращено 10,00\xa0€"),
           "outbox": ("<h1>Исходящие</h1>", "Сообщения, сначала новые", "подавлено"),
           "coupons": ("<h1>Купоны</h1>", "Создать купон", "скидка 10%"),
           "revenue": "170,00\xa0€", "percent": "66,7\xa0%"},
}


@pytest.fixture
def admin_shop(make_shop):
    """A shop with orders, a refund, a suppressed mail and a coupon, and an open dashboard."""
    def build(**config):
        shop = make_shop(LOYALTY_ADMIN_GUARD=allow, **config)
        with shop.app.app_context():
            _period, d = add_period_orders(shop)
            add_message(shop, "c2", kind="win_back", sent_at=d, status="suppressed")
            shop.loyalty.coupons.create(kind="percent", value="10", campaign="spring")
            shop.db.session.commit()
        return shop
    return build


def _get(shop, path, lang=None):
    headers = {"Accept-Language": lang} if lang else {}
    response = shop.client.get(PREFIX + path, headers=headers)
    assert response.status_code == 200, (path, lang, response.status_code)
    return response.get_data(as_text=True)


def _check(shop, locale, lang):
    expected = EXPECTED[locale]
    overview = _get(shop, "/?days=30", lang)
    assert f'<html lang="{locale}"' in overview or f"lang=\"{locale}\"" in overview
    for text in expected["overview"]:
        assert text in overview, (locale, text)
    assert 'id="metric-revenue" data-value="170.00"' in overview
    assert expected["revenue"] in overview and expected["percent"] in overview
    customer = _get(shop, "/customers/c2", lang)
    for text in expected["customer"]:
        assert text in customer, (locale, text)
    outbox = _get(shop, "/outbox?status=suppressed", lang)
    for text in expected["outbox"]:
        assert text in outbox, (locale, text)
    assert tables_of(outbox)["outbox"][1][1:3] == ["win_back", "c2"]   # data stays data
    coupons = _get(shop, "/coupons", lang)
    for text in expected["coupons"]:
        assert text in coupons, (locale, text)


@pytest.mark.parametrize("locale", ["es", "ro", "ru"])
def test_dashboard_follows_accept_language(admin_shop, locale):
    shop = admin_shop()
    _check(shop, locale, f"{locale}-XX,{locale};q=0.9,en;q=0.5")


def test_english_is_the_default(admin_shop):
    shop = admin_shop()
    _check(shop, "en", None)
    _check(shop, "en", "de-DE,de;q=0.9")          # not offered: LOYALTY_DEFAULT_LOCALE


def test_fixed_admin_locale_wins_over_the_request(admin_shop):
    shop = admin_shop(LOYALTY_ADMIN_LOCALE="ru")
    _check(shop, "ru", "es-ES,es;q=0.9")
    _check(shop, "ru", None)


def test_default_locale_and_offered_locales(admin_shop):
    shop = admin_shop(LOYALTY_DEFAULT_LOCALE="ro", LOYALTY_LOCALES=("en", "ro"))
    _check(shop, "ro", None)
    _check(shop, "ro", "ru-RU")                   # Russian not offered to the dashboard either
    _check(shop, "en", "en-GB")
    with shop.app.test_request_context(headers={"Accept-Language": "ru"}):
        assert admin_locale(shop.loyalty.state) == "ro"
        shop.app.config["LOYALTY_ADMIN_LOCALE"] = "es-MX"
        assert admin_locale(shop.loyalty.state) == "es"


def test_charts_and_csv_are_translated(admin_shop):
    shop = admin_shop(LOYALTY_ADMIN_LOCALE="es")
    index = _get(shop, "/charts")
    assert "Retención por cohortes" in index and "Descargar CSV" in index
    html = _get(shop, "/charts/cohorts")
    assert "Proporción de cada cohorte mensual que vuelve a comprar en los meses siguientes" in html
    assert tables_of(html)["table-cohorts"][0][:3] == ["Cohorte", "Clientes", "Mes 0"]
    csv_text = shop.client.get(PREFIX + "/charts/cohorts.csv").get_data(as_text=True)
    assert csv_text.lstrip("\ufeff").startswith("Cohorte,Clientes,Mes 0")
    pareto = _get(shop, "/charts/pareto")
    assert "Curva de Pareto" in pareto and "Concentración de los ingresos" in pareto
    # the mail-merge export keeps machine-stable English offers
    exported = shop.client.get(PREFIX + "/coupons/export.csv").get_data(as_text=True)
    assert "10% off" in exported


def test_labels_stay_english_outside_the_dashboard(admin_shop):
    shop = admin_shop(LOYALTY_ADMIN_LOCALE="ru")
    _get(shop, "/", "ru")
    with shop.app.app_context():
        assert gettext("Cohort retention") == "Cohort retention"
        chart = dashboard.build_chart(shop.loyalty.state, "cohorts")
        assert chart is not None and chart.title == "Cohort retention"
        view = admin_lists.customer_view(shop.loyalty.state, "c2")
        assert any(e.title.startswith("Order o3: 40.00 EUR") for e in view.events)


@pytest.mark.parametrize("locale", ["en", "es", "ro", "ru"])
def test_no_admin_page_fails_in_any_locale(admin_shop, locale):
    shop = admin_shop(LOYALTY_ADMIN_LOCALE=locale)
    paths = ["/", "/?days=7", "/?start=2026-01-01&end=2026-01-31", "/charts", "/customers", "/customers?q=c",
             "/customers/c1", "/customers/c2", "/outbox", "/outbox?status=suppressed", "/coupons", "/gift-cards",
             "/surveys", "/consent", "/consent?ref=c1", "/consent/c1/erase", "/audit"]
    paths += [f"/charts/{name}" for name in dashboard.available_charts()]
    with shop.app.app_context():
        message_id = shop.db.session.execute(
            dashboard.select(dashboard.Message.id)).scalars().first()
    for loc in ("en", "es", "ro", "ru"):
        paths.append(f"/outbox/{message_id}?locale={loc}")
    for path in paths:
        response = shop.client.get(PREFIX + path)
        assert response.status_code == 200, (locale, path, response.status_code)
        assert b"<h1>" in response.data
    for url, methods in admin_urls(shop.app):
        if "GET" in methods:
            status = shop.client.get(url).status_code
            assert status < 500, (locale, url, status)
    assert shop.client.get(PREFIX + "/customers/nobody").status_code == 404
    assert shop.client.get(PREFIX + "/?days=abc").status_code == 400
    bad = shop.client.get(PREFIX + "/?days=abc").get_data(as_text=True)
    assert f'<html lang="{locale}"' in bad             # error pages follow the dashboard's language too
