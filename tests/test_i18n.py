"""Translations: every shopper-facing string in every shipped language; locale choice."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from flask_loyalty.i18n import choose_locale, translator

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("translations_tool", ROOT / "scripts" / "translations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["translations_tool"] = module
    spec.loader.exec_module(module)
    return module


def test_every_string_is_translated_in_every_locale():
    report = _tool().missing()
    assert report == {"es": [], "ro": [], "ru": []}


def _key(value):
    """Plural entries come back as lists from read_mo and tuples from read_po."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def test_compiled_catalogs_match_sources():
    from babel.messages.mofile import read_mo
    from babel.messages.pofile import read_po

    for po in (ROOT / "flask_loyalty" / "translations").glob("*/LC_MESSAGES/*.po"):
        mo = po.with_suffix(".mo")
        assert mo.exists(), f"{mo} missing: run python scripts/translations.py compile"
        with po.open("rb") as a, mo.open("rb") as b:
            source = {_key(m.id): _key(m.string) for m in read_po(a) if m.id and m.string}
            compiled = {_key(m.id): _key(m.string) for m in read_mo(b) if m.id}
        assert source == compiled, f"{mo} is stale: run python scripts/translations.py compile"


def test_locale_choice(shop):
    assert choose_locale("ro") == "ro"
    assert choose_locale("es-MX") == "es"
    assert choose_locale(None) == "en"
    with shop.app.test_request_context(headers={"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}):
        assert choose_locale(None) == "ru"
        assert choose_locale("es") == "es"
        assert choose_locale("de") == "ru"
    shop.app.config["LOYALTY_DEFAULT_LOCALE"] = "es"
    assert choose_locale("de") == "es"


def test_accept_language_is_walked_in_quality_order_matching_by_language(shop):
    # An American browser: English first, Spanish as a fallback (the shop offers en, es, ro, ru).
    with shop.app.test_request_context(headers={"Accept-Language": "en-US,es;q=0.9"}):
        assert choose_locale(None) == "en"
    with shop.app.test_request_context(headers={"Accept-Language": "de-DE,ro-RO;q=0.8,es;q=0.9"}):
        assert choose_locale(None) == "es"


def test_accept_language_q0_is_not_acceptable(shop):
    for header in ("es;q=0", "es;q=0, ro;q=0.0", "*;q=0"):
        with shop.app.test_request_context(headers={"Accept-Language": header}):
            assert choose_locale(None) == "en", header
    with shop.app.test_request_context(headers={"Accept-Language": "es;q=0, ro;q=0.1"}):
        assert choose_locale(None) == "ro"


def test_a_default_locale_that_is_not_offered_falls_back_to_the_first_offered(make_shop):
    """LOYALTY_LOCALES restricted without LOYALTY_DEFAULT_LOCALE (still "en"): pages use the first offered."""
    shop = make_shop(LOYALTY_LOCALES=("es", "ro"))
    with shop.app.app_context():
        assert choose_locale(None) == "es"
        with shop.app.test_request_context(headers={"Accept-Language": "en-GB"}):
            assert choose_locale(None) == "es"
            assert choose_locale("ro") == "ro"
    shop = make_shop(LOYALTY_LOCALES=("es", "ro"), LOYALTY_DEFAULT_LOCALE="ro")
    with shop.app.app_context():
        assert choose_locale(None) == "ro"


def test_translator_formats(shop):
    tr = translator("es")
    assert tr.gettext("Not found") == "No encontrado"
    from decimal import Decimal

    assert tr.money(Decimal("12.50"), "EUR").replace("\xa0", " ") == "12,50 €"
    assert translator("en").money(Decimal("12.50"), "EUR") == "€12.50"
