"""Consent pages (CONTRACT §5, §6): preference center, unsubscribe (RFC 8058), confirmation, signed links."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from flask_loyalty import tokens
from flask_loyalty.models import ConsentEvent
from flask_loyalty.services import consent as consent_service


def _path(url):
    assert url.startswith("http://shop.test/")
    return url[len("http://shop.test"):]


def _withdrawals(shop, purpose="email_marketing"):
    shop.db.session.expire_all()
    return shop.db.session.execute(select(func.count(ConsentEvent.id)).where(
        ConsentEvent.action == "withdrawn", ConsentEvent.purpose == purpose)).scalar_one()


def _csrf(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


@pytest.fixture
def subscribed(shop):
    shop.loyalty.upsert_customer("c1", email="ana@example.com")
    shop.loyalty.consent.grant("c1", "email_marketing", source="checkout", double_opt_in=False)
    shop.loyalty.consent.grant("c1", "surveys", source="checkout")
    return "c1"


# --- unsubscribe ---------------------------------------------------------------------------------

def test_unsubscribe_get_changes_nothing_and_post_withdraws(shop, subscribed):
    url = _path(shop.loyalty.links.unsubscribe("c1"))
    page = shop.client.get(url)
    assert page.status_code == 200 and b"Yes, unsubscribe me" in page.data
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert shop.loyalty.consent.has("c1", "email_marketing") and _withdrawals(shop) == 0
    done = shop.client.post(url)
    assert done.status_code == 200 and b"You are unsubscribed" in done.data
    assert not shop.loyalty.consent.has("c1", "email_marketing")
    assert shop.loyalty.consent.has("c1", "surveys")
    (event,) = [e for e in shop.loyalty.consent.history("c1") if e.action == "withdrawn"]
    assert event.method == "unsubscribe_page" and event.ip_hash is not None
    again = shop.client.get(url)
    assert again.status_code == 200 and b"You are not subscribed" in again.data


def test_one_click_unsubscribe_rfc8058(shop, subscribed):
    url = _path(shop.loyalty.links.unsubscribe("c1", "surveys"))
    client = shop.app.test_client(use_cookies=False)
    for _ in range(3):
        response = client.post(url, data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded")
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers
    assert not shop.loyalty.consent.has("c1", "surveys")
    assert shop.loyalty.consent.has("c1", "email_marketing")
    assert _withdrawals(shop, "surveys") == 1
    (event,) = [e for e in shop.loyalty.consent.history("c1") if e.action == "withdrawn"]
    assert event.method == "one_click" and event.source == "unsubscribe_link"


def test_unsubscribe_page_speaks_the_customers_language(shop):
    shop.loyalty.upsert_customer("c2", email="ivan@example.com", locale="ru")
    shop.loyalty.consent.grant("c2", "surveys", source="checkout")
    page = shop.client.get(_path(shop.loyalty.links.unsubscribe("c2", "surveys")))
    text = page.get_data(as_text=True)
    assert 'lang="ru"' in text and "Отписаться" in text and "Короткие опросы" in text


def test_a_token_of_another_purpose_is_refused(shop, subscribed):
    survey_token = shop.loyalty.links.survey("o1").rsplit("/", 1)[1]
    prefs_token = shop.loyalty.links.preferences("c1").rsplit("/", 1)[1]
    unsub_token = shop.loyalty.links.unsubscribe("c1").rsplit("/", 1)[1]
    for url in (f"/loyalty/unsubscribe/{survey_token}", f"/loyalty/unsubscribe/{prefs_token}",
                f"/loyalty/preferences/{unsub_token}", f"/loyalty/consent/confirm/{unsub_token}"):
        get = shop.client.get(url)
        post = shop.client.post(url, data={"List-Unsubscribe": "One-Click"})
        assert get.status_code == post.status_code == 404
        assert b"This link does not work" in get.data
    assert _withdrawals(shop) == 0 and shop.loyalty.consent.has("c1", "email_marketing")


def test_tampered_and_expired_links_get_a_friendly_translated_page(shop, subscribed, monkeypatch):
    url = _path(shop.loyalty.links.unsubscribe("c1"))
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    page = shop.client.get(tampered, headers={"Accept-Language": "es"})
    from flask_loyalty.i18n import Translator

    assert page.status_code == 404
    assert Translator("es").gettext("This link does not work") in page.get_data(as_text=True)
    assert Translator("es").gettext("This link does not work") != "This link does not work"
    shop.app.config["LOYALTY_TOKEN_MAX_AGE"] = {"preferences": 60}
    import itsdangerous.timed

    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", lambda self: real(self) - 3600)
    old = _path(shop.loyalty.links.preferences("c1"))
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", real)
    expired = shop.client.get(old, headers={"Accept-Language": "ro"})
    assert expired.status_code == 410
    assert Translator("ro").gettext("This link has expired") in expired.get_data(as_text=True)
    assert shop.client.get(old, headers={"Accept": "application/json"}).get_json() == {"error": "invalid_link"}


def test_unsubscribe_links_live_at_least_sixty_days(shop, subscribed, monkeypatch):
    shop.app.config["LOYALTY_TOKEN_MAX_AGE"] = {"unsubscribe": 3600}
    assert tokens.max_age("unsubscribe") >= 60 * 86400
    import itsdangerous.timed

    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", lambda self: real(self) - 59 * 86400)
    url = _path(shop.loyalty.links.unsubscribe("c1"))
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", real)
    assert shop.client.get(url).status_code == 200


@pytest.mark.parametrize("fallback_key", ["LOYALTY_SECRET_KEY_FALLBACKS", "SECRET_KEY_FALLBACKS"])
def test_key_rotation(shop, subscribed, fallback_key):
    url = _path(shop.loyalty.links.unsubscribe("c1"))        # signed with "test-secret"
    shop.app.config["SECRET_KEY"] = "a-brand-new-secret"
    shop.app.config[fallback_key] = ["test-secret"]
    assert shop.client.get(url).status_code == 200           # old key accepted while it is a fallback
    fresh = _path(shop.loyalty.links.unsubscribe("c1"))
    assert fresh != url
    shop.app.config[fallback_key] = []
    assert shop.client.get(url).status_code == 404           # refused once the fallback is dropped
    assert shop.client.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert shop.client.get(fresh).status_code == 200
    assert shop.loyalty.consent.has("c1", "email_marketing")


_PAGES = ("/loyalty/unsubscribe/{}", "/loyalty/preferences/{}", "/loyalty/consent/confirm/{}",
          "/loyalty/preferences/{}/data.json", "/loyalty/preferences/{}/erase")


def _mutations():
    return st.one_of(
        st.text(max_size=300),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.tuples(st.integers(0, 200), st.text(min_size=1, max_size=5)).map(lambda t: ("mutate", *t)),
        st.tuples(st.integers(0, 200)).map(lambda t: ("truncate", *t)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_mutations())
def test_fuzzed_tokens_never_give_a_500(shop, raw):
    from urllib.parse import quote

    valid = [shop.loyalty.links.unsubscribe("c1").rsplit("/", 1)[1],
             shop.loyalty.links.preferences("c1").rsplit("/", 1)[1]]
    if isinstance(raw, tuple):
        base = valid[len(raw) % 2]
        if raw[0] == "mutate":
            pos = raw[1] % len(base)
            token = base[:pos] + raw[2] + base[pos + 1:]
        else:
            token = base[: raw[1] % len(base)]
    else:
        token = raw
    segment = quote(token, safe="") or "x"
    for page in _PAGES:
        url = page.format(segment)
        for response in (shop.client.get(url), shop.client.post(url, data={"List-Unsubscribe": "One-Click"})):
            assert response.status_code < 500, (url, response.status_code)


# --- confirmation link -----------------------------------------------------------------------------

def test_confirmation_page_and_bad_payloads(shop):
    shop.loyalty.upsert_customer("c1", email="ana@example.com")
    shop.loyalty.consent.grant("c1", "email_marketing", source="signup")
    (msg,) = shop.loyalty.messages.for_customer("c1")
    assert shop.client.get(_path(msg.payload["confirm_url"])).status_code == 200
    # validly signed but wrong shapes never crash
    for payload in ({"c": "c1"}, {"c": "c1", "p": "email_marketing", "e": "1"}, ["c1"],
                    {"c": "c1", "p": "telepathy", "e": 1}, {"c": "ghost", "p": "email_marketing", "e": 1}):
        token = tokens.make("confirm", payload)
        assert shop.client.get(f"/loyalty/consent/confirm/{token}").status_code in (404, 410)
    for payload in ({"c": 5}, {"x": 1}, "c1", {"c": "ghost"}):
        token = tokens.make("preferences", payload)
        assert shop.client.get(f"/loyalty/preferences/{token}").status_code == 404
        token = tokens.make("unsubscribe", payload)
        assert shop.client.post(f"/loyalty/unsubscribe/{token}").status_code == 404


def test_confirmation_button_mode_confirms_only_on_post(shop):
    """With LOYALTY_OPT_IN_CONFIRM_BUTTON a mail scanner's GET confirms nothing; the button's POST does."""
    shop.app.config["LOYALTY_OPT_IN_CONFIRM_BUTTON"] = True
    shop.loyalty.upsert_customer("c1", email="ana@example.com", locale="ro")
    shop.loyalty.consent.grant("c1", "email_marketing", source="signup")
    (msg,) = shop.loyalty.messages.for_customer("c1")
    url = _path(msg.payload["confirm_url"])
    events = shop.db.session.scalar(select(func.count()).select_from(ConsentEvent))
    for _ in range(2):                                   # a scanner may open the link more than once
        page = shop.client.get(url)
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert '<form method="post"' in html and "Da, confirm" in html
    shop.db.session.expire_all()
    assert not shop.loyalty.consent.has("c1", "email_marketing")
    assert shop.db.session.scalar(select(func.count()).select_from(ConsentEvent)) == events
    done = shop.client.post(url)
    assert done.status_code == 200
    shop.db.session.expire_all()
    assert shop.loyalty.consent.has("c1", "email_marketing")
    assert [e.action for e in shop.loyalty.consent.history("c1")][-1] == "confirmed"
    again = shop.client.get(url)                         # confirmed: no button any more
    assert again.status_code == 200 and '<form method="post"' not in again.get_data(as_text=True)
    # a link that is gone answers 410 before showing any button
    shop.loyalty.consent.withdraw("c1", "email_marketing", source="preferences")
    shop.loyalty.consent.grant("c1", "email_marketing", source="signup")
    assert shop.client.get(url).status_code == 410


def test_confirming_again_ends_the_transaction(shop):
    """A second confirmation writes nothing and keeps no lock on the consent row (commit=True honoured)."""
    shop.loyalty.upsert_customer("c1", email="ana@example.com")
    shop.loyalty.consent.grant("c1", "email_marketing", source="signup")
    (msg,) = shop.loyalty.messages.for_customer("c1")
    token = _path(msg.payload["confirm_url"]).rsplit("/", 1)[1]
    data = tokens.load("confirm", token, max_age_seconds=3600)
    state = shop.app.extensions["loyalty"]
    _state, fresh = consent_service.confirm(state, "c1", "email_marketing", data["e"])
    assert fresh
    _state, fresh = consent_service.confirm(state, "c1", "email_marketing", data["e"])
    assert not fresh
    assert not shop.db.session().in_transaction()


# --- preference center --------------------------------------------------------------------------------

def test_preference_center_shows_and_changes_every_purpose(shop, subscribed):
    url = _path(shop.loyalty.links.preferences("c1"))
    page = shop.client.get(url)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    for name in ("email_marketing", "surveys", "postal_mail", "personalization"):
        assert f'id="purpose-{name}"' in html and f'for="purpose-{name}"' in html
    assert html.count(" checked") == 2 and "recorded by the shop" in html and "Not given." in html
    # tick postal_mail, untick surveys, keep email_marketing
    response = shop.client.post(url, data={"csrf_token": _csrf(html),
                                           "purpose": ["email_marketing", "postal_mail"]})
    assert response.status_code == 200 and b"Your choices are saved." in response.data
    c = shop.loyalty.consent
    assert c.has("c1", "email_marketing") and c.has("c1", "postal_mail") and not c.has("c1", "surveys")
    events = c.history("c1")
    assert [(e.purpose, e.action, e.method) for e in events[-2:]] == [
        ("surveys", "withdrawn", "preference_center"), ("postal_mail", "granted", "preference_center")]
    assert "in the preference center" in response.get_data(as_text=True)


def test_preference_center_honours_double_opt_in(shop):
    shop.loyalty.upsert_customer("c1", email="ana@example.com")
    url = _path(shop.loyalty.links.preferences("c1"))
    html = shop.client.get(url).get_data(as_text=True)
    response = shop.client.post(url, data={"csrf_token": _csrf(html), "purpose": ["email_marketing"]})
    assert b"Waiting for your confirmation" in response.data
    assert not shop.loyalty.consent.has("c1", "email_marketing")
    assert [m.kind for m in shop.loyalty.messages.for_customer("c1")] == ["consent_confirm"]


def test_preference_center_forms_need_their_csrf_token(shop, subscribed):
    url = _path(shop.loyalty.links.preferences("c1"))
    other = shop.loyalty.links.preferences("c2")
    shop.loyalty.upsert_customer("c2", email="bob@example.com")
    other_csrf = _csrf(shop.client.get(_path(other)).get_data(as_text=True))
    for data in ({"purpose": []}, {"csrf_token": "forged", "purpose": []}, {"csrf_token": other_csrf}):
        response = shop.client.post(url, data=data)
        assert response.status_code == 400 and b"Please check what you entered" in response.data
    assert shop.loyalty.consent.has("c1", "email_marketing") and shop.loyalty.consent.has("c1", "surveys")


def test_preference_center_downloads_the_export(shop, subscribed):
    response = shop.client.get(_path(shop.loyalty.links.preferences("c1")) + "/data.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert "attachment" in response.headers["Content-Disposition"]
    data = json.loads(response.data)
    assert data["customer"]["email"] == "ana@example.com"
    assert {e["purpose"] for e in data["consent"]["events"]} == {"email_marketing", "surveys"}


def test_erasure_needs_a_second_step(shop, subscribed):
    url = _path(shop.loyalty.links.preferences("c1"))
    step1 = shop.client.get(url + "/erase")
    assert step1.status_code == 200 and b"This cannot be undone." in step1.data
    assert shop.loyalty.customer("c1").email == "ana@example.com"
    assert shop.client.post(url + "/erase").status_code == 404            # no confirmation token
    assert shop.client.post(url + "/erase", data={"erase_token": tokens.make("erase", {"c": "c2"})}).status_code == 404
    assert shop.loyalty.customer("c1").email == "ana@example.com"
    erase_token = re.search(r'name="erase_token" value="([^"]+)"', step1.get_data(as_text=True)).group(1)
    done = shop.client.post(url + "/erase", data={"erase_token": erase_token})
    assert done.status_code == 200 and b"Your data is erased" in done.data
    shop.db.session.expire_all()
    assert shop.loyalty.customer("c1").email is None
    assert not shop.loyalty.consent.has("c1", "email_marketing")
    again = shop.client.get(url)
    assert again.status_code == 200 and b"Your data is erased" in again.data


def test_a_single_fallback_string_is_one_key_not_its_characters(shop, subscribed):
    url = _path(shop.loyalty.links.unsubscribe("c1"))
    shop.app.config.update(SECRET_KEY="rotated", LOYALTY_SECRET_KEY_FALLBACKS="test-secret")
    assert shop.client.get(url).status_code == 200
    shop.app.config.update(SECRET_KEY="t", LOYALTY_SECRET_KEY_FALLBACKS=())
    forged = _path(shop.loyalty.links.unsubscribe("c1"))        # signed with the one-character key "t"
    shop.app.config.update(SECRET_KEY="rotated", LOYALTY_SECRET_KEY_FALLBACKS="test-secret")
    assert shop.client.get(forged).status_code == 404
