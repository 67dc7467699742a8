"""Consent (CONTRACT §5): ledger, double opt-in, capture, export, erasure, suppression, CLI."""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from flask import render_template_string, request
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from flask_loyalty import InvalidInput, LoyaltyError
from flask_loyalty.models import (
    ConsentEvent,
    ConsentEventIp,
    ConsentStatus,
    ConsentSuppression,
    ConsentWording,
    Customer,
    Message,
)
from flask_loyalty.models.consent import AppendOnlyError
from flask_loyalty.services.consent import SuppressedAddress, email_hash, hash_ip
from flask_loyalty.signals import consent_changed

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def _events(shop, action=None, purpose=None):
    q = select(func.count(ConsentEvent.id))
    if action:
        q = q.where(ConsentEvent.action == action)
    if purpose:
        q = q.where(ConsentEvent.purpose == purpose)
    return shop.db.session.execute(q).scalar_one()


def _confirm_messages(shop, ref="c1"):
    return [m for m in shop.loyalty.messages.for_customer(ref) if m.kind == "consent_confirm"]


def _path(url):
    assert url.startswith("http://shop.test/")
    return url[len("http://shop.test"):]


@pytest.fixture
def customer(shop):
    shop.loyalty.upsert_customer("c1", email="Ana@Example.com", name="Ana", birthday=date(1990, 5, 17))
    return "c1"


# --- purposes and input -------------------------------------------------------------

def test_default_purposes_and_unknown_purpose(shop, customer):
    assert list(shop.loyalty.consent.purposes()) == ["email_marketing", "surveys", "postal_mail", "personalization"]
    for call in (lambda: shop.loyalty.consent.grant("c1", "telepathy", source="x"),
                 lambda: shop.loyalty.consent.withdraw("c1", "telepathy", source="x"),
                 lambda: shop.loyalty.consent.has("c1", "telepathy")):
        with pytest.raises(InvalidInput) as info:
            call()
        assert "purpose" in info.value.errors
    assert _events(shop) == 0


@pytest.mark.parametrize("kwargs,field", [
    ({"source": ""}, "source"),
    ({"source": "x" * 65}, "source"),
    ({"source": "x", "ip": "999.1.1.1"}, "ip"),
    ({"source": "x", "method": "carrier_pigeon"}, "method"),
    ({"source": "x", "wording": ""}, "wording"),
])
def test_bad_grant_input_writes_nothing(shop, customer, kwargs, field):
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.consent.grant("c1", "surveys", **kwargs)
    assert field in info.value.errors
    assert _events(shop) == 0


def test_custom_purposes_from_config(make_shop):
    s = make_shop(LOYALTY_CONSENT_PURPOSES={"surveys": {}, "sms": {"label": "Texts", "wording": "Yes, text me."}},
                  LOYALTY_DOUBLE_OPT_IN={"sms": True})
    with s.app.app_context():
        s.loyalty.upsert_customer("c1", email="a@example.com")
        assert list(s.loyalty.consent.purposes()) == ["surveys", "sms"]
        assert s.loyalty.consent.grant("c1", "sms", source="signup").status == "pending"
        assert s.loyalty.consent.history("c1")[0].wording == "Yes, text me."
        with pytest.raises(InvalidInput):
            s.loyalty.consent.has("c1", "email_marketing")


@pytest.mark.parametrize("config", [
    {"LOYALTY_CONSENT_PURPOSES": {"sms": {}}},
    {"LOYALTY_CONSENT_PURPOSES": ["Bad Name"]},
    {"LOYALTY_CONSENT_PURPOSES": []},
    {"LOYALTY_DOUBLE_OPT_IN": {"nope": True}},
    {"LOYALTY_OPT_IN_TTL_DAYS": 0},
])
def test_bad_consent_config_is_refused_at_init_app(make_shop, config):
    with pytest.raises(LoyaltyError):
        make_shop(**config)


# --- grant / withdraw / has ---------------------------------------------------------------

def test_grant_without_double_opt_in_is_immediate_and_idempotent(shop, customer):
    seen = []
    with consent_changed.connected_to(lambda app, **kw: seen.append((kw["event"].action, kw["state"].status)),
                                      shop.app):
        st = shop.loyalty.consent.grant("c1", "surveys", source="checkout", ip="203.0.113.9")
        again = shop.loyalty.consent.grant("c1", "surveys", source="checkout")
    assert st.granted and st.status == "granted" and st.method == "api" and st.source == "checkout"
    assert again.granted and st.wording_version == 1
    assert shop.loyalty.consent.has("c1", "surveys") is True
    assert shop.loyalty.consent.has("c1", "postal_mail") is False
    assert shop.loyalty.consent.has("nobody", "surveys") is False
    assert _events(shop) == 1 and seen == [("granted", "granted")]
    (event,) = shop.loyalty.consent.history("c1")
    assert event.purpose == "surveys" and event.action == "granted" and event.source == "checkout"
    assert event.created_at.tzinfo is not None and event.customer_ref == "c1"
    assert event.wording.startswith("Yes, you may ask me") and event.wording_version == 1
    assert event.ip_hash == hash_ip(shop.loyalty.state, "203.0.113.9") and "203.0.113.9" not in event.ip_hash


def test_withdraw_is_idempotent_and_history_is_oldest_first(shop, customer):
    c = shop.loyalty.consent
    c.grant("c1", "postal_mail", source="checkout", now=T0)
    st = c.withdraw("c1", "postal_mail", source="account", now=T0 + timedelta(days=1))
    again = c.withdraw("c1", "postal_mail", source="account", now=T0 + timedelta(days=2))
    assert st.status == again.status == "withdrawn" and st.since == T0 + timedelta(days=1)
    assert not c.has("c1", "postal_mail")
    assert [(e.action, e.created_at) for e in c.history("c1")] == [
        ("granted", T0), ("withdrawn", T0 + timedelta(days=1))]
    assert c.withdraw("ghost", "postal_mail", source="x").status == "none"
    assert c.withdraw("c1", "surveys", source="x").status == "none"
    assert _events(shop) == 2
    assert c.history("ghost") == []


def test_ip_hash_is_salted_and_configurable(shop, customer):
    state = shop.loyalty.state
    a = hash_ip(state, "2001:db8::1")
    assert a == hash_ip(state, "2001:0db8:0000::0001") and len(a) == 64
    import hashlib

    assert a != hashlib.sha256(b"2001:db8::1").hexdigest()
    shop.app.config["LOYALTY_IP_HASH_SALT"] = "pepper"
    assert hash_ip(state, "2001:db8::1") != a


def test_commit_false_joins_the_hosts_transaction(shop, customer):
    shop.loyalty.consent.grant("c1", "email_marketing", source="checkout", commit=False)
    shop.loyalty.consent.grant("c1", "surveys", source="checkout", commit=False)
    shop.db.session.rollback()
    assert _events(shop) == 0 and _confirm_messages(shop) == []
    assert not shop.loyalty.consent.has("c1", "surveys")


def test_wording_versions(make_shop):
    s = make_shop()
    with s.app.app_context():
        c = s.loyalty.consent
        s.loyalty.upsert_customer("c1", email="a@example.com")
        c.grant("c1", "surveys", source="checkout")
        c.grant("c1", "surveys", source="checkout")           # same wording: nothing new
        s.app.config["LOYALTY_CONSENT_PURPOSES"] = {"surveys": {"wording": "Yes, ask me about my orders."}}
        st = c.grant("c1", "surveys", source="checkout")      # new wording: new version, new event
        assert st.wording_version == 2
        c.grant("c1", "surveys", source="shop", wording="Typed by the host.")
        first, second, third = c.history("c1")
        assert first.wording.startswith("Yes, you may ask me") and first.wording_version == 1
        assert second.wording == "Yes, ask me about my orders." and second.wording_version == 2
        assert third.wording == "Typed by the host." and third.wording_version == 3
        assert len({first.wording_hash, second.wording_hash, third.wording_hash}) == 3
        assert s.db.session.execute(select(func.count(ConsentWording.id))).scalar_one() == 3


def test_regrant_with_new_wording_or_locale_keeps_since_and_the_loyal_indicator(shop, customer):
    """A shopper still subscribed who ticks a reworded (or translated) box again stays subscribed since
    the first grant: a new event with the new wording is recorded, ``since`` stays, and "subscribed for
    over six months and bought in that time" still holds."""
    lo = shop.loyalty
    lo.consent.grant("c1", "email_marketing", source="signup", double_opt_in=False, now=T0)
    later = T0 + timedelta(days=365)
    lo.record_purchase("o1", "c1", "20.00", placed_at=later - timedelta(days=30))
    st = lo.consent.grant("c1", "email_marketing", source="checkout", method="checkbox",
                          wording="Yes, send me offers (wording v2).", now=later - timedelta(days=2))
    assert st.granted and st.since == T0 and st.wording_version == 2 and st.source == "checkout"
    st = lo.consent.grant("c1", "email_marketing", source="checkout", locale="es", now=later - timedelta(days=1))
    assert st.since == T0 and st.source == "checkout"
    assert [(e.action, e.locale) for e in lo.consent.history("c1")] == [
        ("granted", "en"), ("granted", "en"), ("granted", "es")]
    assert lo.consent.state("c1", "email_marketing").since == T0
    lo.analytics.recompute(now=later)
    assert lo.analytics.profile("c1").loyal_indicator is True
    # a grant after a withdrawal is a new subscription: since starts again
    lo.consent.withdraw("c1", "email_marketing", source="prefs", now=later)
    st = lo.consent.grant("c1", "email_marketing", source="prefs", method="preference_center",
                          double_opt_in=False, now=later + timedelta(days=1))
    assert st.since == later + timedelta(days=1)


def test_wording_is_stored_in_the_shoppers_language(shop):
    shop.loyalty.upsert_customer("c2", email="b@example.com", locale="es")
    shop.loyalty.consent.grant("c2", "postal_mail", source="checkout")
    shop.loyalty.consent.grant("c3", "postal_mail", source="checkout", locale="ru")
    (es,) = shop.loyalty.consent.history("c2")
    (ru,) = shop.loyalty.consent.history("c3")
    assert es.locale == "es" and "correo postal" in es.wording
    assert ru.locale == "ru" and "почт" in ru.wording


# --- the ledger is append-only ---------------------------------------------------------------

def test_ledger_refuses_orm_update_and_delete(shop, customer):
    shop.loyalty.consent.grant("c1", "surveys", source="checkout")
    event = shop.loyalty.consent.history("c1")[0]
    event.action = "withdrawn"
    with pytest.raises(AppendOnlyError):
        shop.db.session.flush()
    shop.db.session.rollback()
    event = shop.loyalty.consent.history("c1")[0]
    shop.db.session.delete(event)
    with pytest.raises(AppendOnlyError):
        shop.db.session.flush()
    shop.db.session.rollback()
    assert [e.action for e in shop.loyalty.consent.history("c1")] == ["granted"]


@pytest.mark.parametrize("sql", [
    "UPDATE loyalty_consent_event SET action = 'withdrawn'",
    "DELETE FROM loyalty_consent_event",
    "UPDATE loyalty_consent_wording SET text = 'something else'",
    "DELETE FROM loyalty_consent_wording",
])
def test_raw_update_or_delete_fails_at_the_database(shop, customer, sql):
    shop.loyalty.consent.grant("c1", "surveys", source="checkout")
    with shop.db.engine.connect() as conn:
        with pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(sql))
        conn.rollback()
    assert [e.action for e in shop.loyalty.consent.history("c1")] == ["granted"]
    assert shop.loyalty.consent.history("c1")[0].wording.startswith("Yes, you may ask me")


# --- double opt-in ---------------------------------------------------------------------------------

def test_double_opt_in_stays_pending_until_the_link_is_followed(shop, customer):
    seen = []
    with consent_changed.connected_to(lambda app, **kw: seen.append(kw["event"].action), shop.app):
        st = shop.loyalty.consent.grant("c1", "email_marketing", source="signup", ip="198.51.100.7")
        assert st.pending and st.status == "pending" and not st.granted
        assert st.pending_expires_at is not None
        assert shop.loyalty.consent.has("c1", "email_marketing") is False
        (msg,) = _confirm_messages(shop)
        assert msg.status == "scheduled" and msg.purpose is None and msg.marketing is False
        assert msg.payload["purpose"] == "email_marketing" and msg.payload["expires_days"] == 7
        response = shop.client.get(_path(msg.payload["confirm_url"]))
        assert response.status_code == 200 and b"Thank you for confirming" in response.data
        assert shop.loyalty.consent.has("c1", "email_marketing") is True
        again = shop.client.get(_path(msg.payload["confirm_url"]))
        assert again.status_code == 200 and b"Already confirmed" in again.data
    assert seen == ["pending", "confirmed"]
    pending, confirmed = shop.loyalty.consent.history("c1")
    assert (pending.action, confirmed.action) == ("pending", "confirmed")
    assert confirmed.method == "double_opt_in" and confirmed.wording_id == pending.wording_id
    assert confirmed.ip_hash is not None and pending.ip_hash != confirmed.ip_hash
    st = shop.loyalty.consent.state("c1", "email_marketing")
    assert st.granted and st.method == "double_opt_in"


def test_double_opt_in_is_configurable(make_shop):
    s = make_shop(LOYALTY_DOUBLE_OPT_IN={"surveys": True})
    with s.app.app_context():
        s.loyalty.upsert_customer("c1", email="a@example.com")
        assert s.loyalty.consent.grant("c1", "email_marketing", source="x").granted
        assert s.loyalty.consent.grant("c1", "surveys", source="x").pending
        assert s.loyalty.consent.grant("c1", "postal_mail", source="x", double_opt_in=True).pending
    s2 = make_shop(LOYALTY_DOUBLE_OPT_IN=False)
    with s2.app.app_context():
        s2.loyalty.upsert_customer("c1", email="a@example.com")
        assert s2.loyalty.consent.grant("c1", "email_marketing", source="x").granted
        assert s2.loyalty.consent.grant("c1", "surveys", source="x", double_opt_in=False).granted


def test_double_opt_in_needs_an_email_address(shop):
    with pytest.raises(InvalidInput):
        shop.loyalty.consent.grant("nomail", "email_marketing", source="signup")
    shop.loyalty.upsert_customer("noaddress")
    with pytest.raises(InvalidInput):
        shop.loyalty.consent.grant("noaddress", "email_marketing", source="signup")
    shop.db.session.commit()          # whatever the host commits next, the refused calls wrote nothing
    assert _events(shop) == 0 and shop.loyalty.customer("nomail") is None
    assert shop.db.session.execute(select(func.count()).select_from(ConsentStatus)).scalar_one() == 0


def test_granting_without_confirmation_cancels_the_pending_mail(shop, customer):
    shop.loyalty.consent.grant("c1", "email_marketing", source="signup")
    assert shop.loyalty.consent.grant("c1", "email_marketing", source="shop", double_opt_in=False).granted
    shop.db.session.expire_all()
    assert [m.status for m in _confirm_messages(shop)] == ["cancelled"]


def test_confirmation_mails_are_rate_limited(shop, customer):
    c = shop.loyalty.consent
    start = datetime.now(timezone.utc) - timedelta(hours=3)
    c.grant("c1", "email_marketing", source="signup", now=start)
    c.grant("c1", "email_marketing", source="signup", now=start + timedelta(minutes=5))     # too soon
    assert len(_confirm_messages(shop)) == 1
    c.grant("c1", "email_marketing", source="signup", now=start + timedelta(minutes=16))
    c.grant("c1", "email_marketing", source="signup", now=start + timedelta(minutes=40))
    c.grant("c1", "email_marketing", source="signup", now=start + timedelta(minutes=80))    # over the maximum
    assert len(_confirm_messages(shop)) == 3
    assert _events(shop) == 1   # one pending event, however often the shopper asks
    # following any of the links confirms, and the unsent reminders are cancelled
    link = _confirm_messages(shop)[1].payload["confirm_url"]
    assert shop.client.get(_path(link)).status_code == 200
    shop.db.session.expire_all()
    assert [m.status for m in _confirm_messages(shop)] == ["cancelled"] * 3
    assert shop.loyalty.consent.has("c1", "email_marketing")


def test_pending_grant_expires(shop, customer):
    c = shop.loyalty.consent
    c.grant("c1", "email_marketing", source="signup", now=T0)
    (first,) = _confirm_messages(shop)
    later = T0 + timedelta(days=7, seconds=1)
    from flask_loyalty.services import consent as service

    assert service.current(shop.loyalty.state, "c1", now=T0)["email_marketing"].status == "pending"

    pending_id = c.history("c1")[0].id
    with pytest.raises(service.ConfirmationGone):
        service.confirm(shop.loyalty.state, "c1", "email_marketing", pending_id, now=later)
    assert not c.has("c1", "email_marketing")
    assert service.current(shop.loyalty.state, "c1", now=later)["email_marketing"].status == "expired"
    # asking again after expiry starts a new pending grant with a new mail; the old link is refused
    st = c.grant("c1", "email_marketing", source="signup", now=later)
    assert st.pending and len(_confirm_messages(shop)) == 2
    with pytest.raises(service.ConfirmationGone):
        service.confirm(shop.loyalty.state, "c1", "email_marketing", pending_id, now=later)
    response = shop.client.get(_path(first.payload["confirm_url"]))
    assert response.status_code == 410 and b"expired" in response.data
    assert not c.has("c1", "email_marketing")


def test_withdrawing_a_pending_grant_voids_its_link(shop, customer):
    shop.loyalty.consent.grant("c1", "email_marketing", source="signup")
    (msg,) = _confirm_messages(shop)
    shop.loyalty.consent.withdraw("c1", "email_marketing", source="account")
    shop.db.session.expire_all()
    assert [m.status for m in _confirm_messages(shop)] == ["cancelled"]   # the mail is not sent any more
    response = shop.client.get(_path(msg.payload["confirm_url"]))
    assert response.status_code == 410
    assert not shop.loyalty.consent.has("c1", "email_marketing")


def test_confirmation_mail_renders_in_the_customers_language(shop):
    from flask_loyalty.i18n import render

    shop.loyalty.upsert_customer("c2", email="b@example.com", locale="ro")
    shop.loyalty.consent.grant("c2", "email_marketing", source="signup")
    (msg,) = _confirm_messages(shop, "c2")
    ctx = {"customer": shop.loyalty.customer("c2"), "message": msg, "payload": msg.payload}
    subject = render("loyalty/mail/consent_confirm.subject.txt", locale="ro", **ctx).strip()
    body = render("loyalty/mail/consent_confirm.txt", locale="ro", **ctx)
    html = render("loyalty/mail/consent_confirm.html", locale="ro", **ctx)
    assert "confirm" in subject.lower() and "Please confirm" not in subject
    assert msg.payload["confirm_url"] in body and msg.payload["confirm_url"] in html
    assert "7 zile" in body


# --- concurrency -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("action", ["grant", "withdraw"])
def test_concurrent_calls_record_one_event(make_shop, action):
    s = make_shop()
    with s.app.app_context():
        s.loyalty.upsert_customer("c1", email="a@example.com")
        if action == "withdraw":
            s.loyalty.consent.grant("c1", "surveys", source="setup")
    barrier = threading.Barrier(4)
    errors = []

    def worker():
        with s.app.app_context():
            try:
                barrier.wait()
                getattr(s.loyalty.consent, action)("c1", "surveys", source="race")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                s.db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with s.app.app_context():
        wanted = "granted" if action == "grant" else "withdrawn"
        count = s.db.session.execute(select(func.count(ConsentEvent.id)).where(
            ConsentEvent.action == wanted, ConsentEvent.source == "race")).scalar_one()
        assert count == 1


# --- capture -------------------------------------------------------------------------------------

def _render_fields(shop, **kwargs):
    with shop.app.test_request_context("/signup"):
        return render_template_string("<form>{{ loyalty_consent_fields(**kw) }}</form>", kw=kwargs)


def _form_from(html, tick=()):
    import re

    shown = re.search(r'name="loyalty_consent_shown" value="([^"]+)"', html).group(1)
    return {"loyalty_consent_shown": shown, "loyalty_consent": list(tick)}


def test_capture_fields_are_unticked_labelled_checkboxes(shop):
    html = _render_fields(shop)
    assert html.count('type="checkbox"') == 4 and "checked" not in html
    for name in ("email_marketing", "surveys", "postal_mail", "personalization"):
        assert f'id="loyalty_consent_{name}"' in html and f'for="loyalty_consent_{name}"' in html
    assert "<fieldset" in html and "<legend>" in html
    assert "I can unsubscribe at any time with one click." in html
    es = _render_fields(shop, locale="es", purposes=["surveys"])
    assert es.count('type="checkbox"') == 1 and "encuesta" in es.lower()


def test_capture_records_what_was_ticked(shop, customer):
    from werkzeug.datastructures import MultiDict

    html = _render_fields(shop, purposes=["email_marketing", "surveys", "postal_mail"])
    form = _form_from(html)
    multi = MultiDict([("loyalty_consent_shown", form["loyalty_consent_shown"]),
                       ("loyalty_consent", "email_marketing"), ("loyalty_consent", "surveys"),
                       ("loyalty_consent", "personalization")])   # not shown: ignored
    result = shop.loyalty.consent.capture("c1", multi, source="checkout", ip="192.0.2.1")
    assert set(result) == {"email_marketing", "surveys"}
    assert result["email_marketing"].pending and result["surveys"].granted
    assert not shop.loyalty.consent.has("c1", "personalization")
    assert {e.method for e in shop.loyalty.consent.history("c1")} == {"checkbox"}
    assert len(_confirm_messages(shop)) == 1
    # a plain dict works too, and nothing ticked records nothing
    assert shop.loyalty.consent.capture("c1", {"loyalty_consent_shown": form["loyalty_consent_shown"]}) == {}
    assert _events(shop) == 2


def test_capture_refuses_forged_or_outdated_forms(shop, customer):
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.consent.capture("c1", {"loyalty_consent_shown": "forged", "loyalty_consent": ["surveys"]})
    assert "loyalty_consent_shown" in info.value.errors
    form = _form_from(_render_fields(shop), tick=["surveys"])
    shop.app.config["LOYALTY_CONSENT_PURPOSES"] = {"surveys": {"wording": "A new text."}}
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.consent.capture("c1", form)
    assert "surveys" in info.value.errors
    assert _events(shop) == 0


def test_capture_without_the_hidden_field_uses_the_current_wording(shop, customer):
    result = shop.loyalty.consent.capture("c1", {"loyalty_consent": "postal_mail"}, source="signup")
    assert result["postal_mail"].granted


def test_host_writes_two_lines(shop):
    app = shop.app

    @app.route("/signup", methods=["GET", "POST"])
    def signup():
        if request.method == "POST":
            shop.loyalty.upsert_customer("c9", email="new@example.com")
            shop.loyalty.consent.capture("c9", request.form, source="signup", ip=request.remote_addr)
            return "ok"
        return render_template_string('<form method="post">{{ loyalty_consent_fields() }}<button>Go</button></form>')

    client = app.test_client()
    form = _form_from(client.get("/signup").get_data(as_text=True), tick=["surveys", "postal_mail"])
    assert client.post("/signup", data=form).status_code == 200
    assert shop.loyalty.consent.has("c9", "surveys") and shop.loyalty.consent.has("c9", "postal_mail")


# --- export and erasure --------------------------------------------------------------------------

def _rich_customer(shop):
    shop.loyalty.record_purchase("o1", "c1", Decimal("30.00"), email="Ana@Example.com", placed_at=T0, items=[
        {"sku": "TEA", "name": "Green tea", "quantity": 3, "unit_price": "10.00"}])
    shop.loyalty.record_purchase("o2", "c1", "12.50", placed_at=T0 + timedelta(days=3))
    shop.loyalty.consent.grant("c1", "surveys", source="checkout", ip="203.0.113.1")
    shop.loyalty.consent.grant("c1", "email_marketing", source="checkout", ip="203.0.113.1")
    shop.loyalty.consent.grant("c1", "postal_mail", source="checkout")
    shop.loyalty.consent.withdraw("c1", "postal_mail", source="checkout")


def test_export_holds_everything(shop, customer):
    _rich_customer(shop)
    calls = []

    def survey_export(state, customer, data):
        calls.append(customer.ref)
        data["surveys"] = [{"comment": "Lovely tea"}]

    shop.loyalty.state.add_hook("export", survey_export)
    data = shop.loyalty.consent.export("c1")
    json.dumps(data)   # JSON-serialisable
    assert calls == ["c1"] and data["surveys"] == [{"comment": "Lovely tea"}]
    assert data["customer"]["email"] == "Ana@Example.com" and data["customer"]["name"] == "Ana"
    assert data["customer"]["birthday"] == "1990-05-17" and data["customer"]["total_spent"] == "42.50"
    assert [p["order_ref"] for p in data["purchases"]] == ["o1", "o2"]
    assert data["purchases"][0]["items"][0] == {"sku": "TEA", "name": "Green tea", "category": None, "quantity": 3,
                                                "unit_price": "10.00", "unit_cost": None,
                                                "replenish_after_days": None}
    assert data["points"]["balance"] == 42
    assert sorted(p["delta"] for p in data["points"]["history"]) == [12, 30]
    assert [e["action"] for e in data["consent"]["events"]] == ["granted", "pending", "granted", "withdrawn"]
    assert data["consent"]["events"][0]["ip_hash"] and data["consent"]["events"][0]["wording"]
    assert data["consent"]["current"]["email_marketing"]["status"] == "pending"
    with pytest.raises(LoyaltyError):
        shop.loyalty.consent.export("ghost")


def test_erase_removes_personal_data_and_keeps_anonymised_totals(shop, customer):
    _rich_customer(shop)
    scrubbed = []
    shop.loyalty.state.add_hook("erase", lambda state, customer: scrubbed.append((customer.ref, customer.email)))
    seen = []
    with consent_changed.connected_to(lambda app, **kw: seen.append((kw["event"].purpose, kw["event"].action)),
                                      shop.app):
        shop.loyalty.consent.erase("c1")
    assert scrubbed == [("c1", "Ana@Example.com")]   # hooks run before the address is removed
    assert sorted(seen) == [("email_marketing", "erased"), ("surveys", "erased")]
    shop.db.session.expire_all()
    cust = shop.loyalty.customer("c1")
    assert cust.email is None and cust.name is None and cust.birthday is None and cust.erased_at is not None
    assert cust.total_spent == Decimal("42.50") and cust.orders_count == 2
    assert shop.loyalty.purchase("o1").total == Decimal("30.00")
    for purpose in shop.loyalty.consent.purposes():
        assert not shop.loyalty.consent.has("c1", purpose)
    assert all(e.ip_hash is None for e in shop.loyalty.consent.history("c1"))
    assert shop.db.session.execute(select(func.count()).select_from(ConsentEventIp)).scalar_one() == 0
    assert [e.action for e in shop.loyalty.consent.history("c1")][-2:] == ["erased", "erased"]
    assert shop.db.session.get(ConsentSuppression, email_hash("ana@example.com")) is not None
    assert shop.loyalty.consent.is_suppressed("  ANA@example.COM ")
    exported = shop.loyalty.consent.export("c1")
    assert exported["customer"]["email"] is None and exported["customer"]["erased_at"]
    # erasing again is harmless
    shop.loyalty.consent.erase("c1")
    assert _events(shop, action="erased") == 2


def test_erased_address_is_not_silently_resubscribed(shop, customer):
    shop.loyalty.consent.grant("c1", "surveys", source="checkout")
    shop.loyalty.consent.erase("c1")
    shop.loyalty.upsert_customer("c2", email="ANA@EXAMPLE.COM")     # same address from old data
    before = _events(shop)
    for call in (lambda: shop.loyalty.consent.grant("c2", "surveys", source="import"),
                 lambda: shop.loyalty.consent.grant("c1", "surveys", source="import"),
                 lambda: shop.loyalty.consent.grant("c2", "postal_mail", source="crm", method="cli")):
        with pytest.raises(SuppressedAddress) as info:
            call()
        assert isinstance(info.value, InvalidInput)
    assert _events(shop) == before
    # a fresh, explicit choice of the shopper is accepted
    assert shop.loyalty.consent.capture("c2", {"loyalty_consent": "surveys"}, source="checkout")["surveys"].granted
    assert shop.loyalty.consent.grant("c2", "postal_mail", source="prefs", method="preference_center").granted
    # refused calls change nothing, even when the host commits afterwards
    with pytest.raises(InvalidInput):   # an erased customer has no address left for double opt-in
        shop.loyalty.consent.grant("c1", "email_marketing", source="prefs", method="preference_center")
    shop.db.session.commit()
    assert shop.loyalty.customer("c1").erased_at is not None
    # the erased customer coming back and choosing again is no longer treated as erased
    assert shop.loyalty.consent.grant("c1", "surveys", source="prefs", method="preference_center").granted
    assert shop.loyalty.consent.has("c1", "surveys") and shop.loyalty.customer("c1").erased_at is None


def test_unknown_customer_cannot_be_erased(shop):
    with pytest.raises(LoyaltyError):
        shop.loyalty.consent.erase("ghost")


def test_erase_with_commit_false_rolls_back(shop, customer):
    shop.loyalty.consent.grant("c1", "surveys", source="checkout")
    shop.loyalty.consent.erase("c1", commit=False)
    shop.db.session.rollback()
    assert shop.loyalty.customer("c1").email == "Ana@Example.com"
    assert shop.loyalty.consent.has("c1", "surveys")
    assert shop.db.session.execute(select(func.count()).select_from(ConsentSuppression)).scalar_one() == 0


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_export_and_erase(shop, customer):
    shop.loyalty.consent.grant("c1", "surveys", source="checkout")
    runner = shop.app.test_cli_runner()
    result = runner.invoke(args=["loyalty", "consent", "export", "c1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["customer"]["email"] == "Ana@Example.com"
    result = runner.invoke(args=["loyalty", "consent", "erase", "c1"], input="n\n")
    assert result.exit_code == 1 and shop.loyalty.customer("c1").email == "Ana@Example.com"
    result = runner.invoke(args=["loyalty", "consent", "erase", "c1", "--yes"])
    assert result.exit_code == 0, result.output
    shop.db.session.expire_all()
    assert shop.loyalty.customer("c1").email is None
    result = runner.invoke(args=["loyalty", "consent", "export", "ghost"])
    assert result.exit_code == 1 and "no customer" in result.output


# --- state table stays consistent with the ledger ----------------------------------------------

def test_status_table_agrees_with_the_ledger(shop, customer):
    c = shop.loyalty.consent
    c.grant("c1", "surveys", source="a")
    c.withdraw("c1", "surveys", source="a")
    c.grant("c1", "surveys", source="a")
    c.grant("c1", "email_marketing", source="a")
    c.grant("c1", "postal_mail", source="a")
    c.erase("c1")
    rows = shop.db.session.execute(select(ConsentStatus)).scalars().all()
    last = {}
    for event in c.history("c1"):
        last[event.purpose] = event
    for row in rows:
        assert row.event_id == last[row.purpose].id
        assert row.status == {"granted": "granted", "confirmed": "granted", "pending": "pending"}.get(
            last[row.purpose].action, "withdrawn")
    assert shop.db.session.execute(select(Customer.erased_at)).scalar_one() is not None
    assert shop.db.session.execute(select(func.count(Message.id))).scalar_one() == 1


def test_confirmation_mail_goes_out_through_the_dispatcher(shop, customer):
    shop.loyalty.consent.grant("c1", "email_marketing", source="signup")
    shop.loyalty.dispatch()
    (msg,) = _confirm_messages(shop)
    assert msg.status == "sent", msg.reason
    assert "Ana@Example.com" in msg.to_address and "confirm" in msg.subject.lower()
    assert "/loyalty/consent/confirm/" in msg.body_text and "/loyalty/consent/confirm/" in msg.body_html
    # the link in the mail works
    link = next(w for w in msg.body_text.split() if "/consent/confirm/" in w)
    assert shop.client.get(_path(link)).status_code == 200
    assert shop.loyalty.consent.has("c1", "email_marketing")


def test_set_choices_applies_a_whole_form_in_one_transaction(shop, customer):
    c = shop.loyalty.consent
    c.grant("c1", "surveys", source="checkout")
    seen = []
    with consent_changed.connected_to(lambda app, **kw: seen.append((kw["event"].purpose, kw["event"].action)),
                                      shop.app):
        result = c.set_choices("c1", ["email_marketing", "postal_mail", "nonsense"], source="account")
    assert result["email_marketing"].pending and result["postal_mail"].granted
    assert result["surveys"].status == "withdrawn" and result["personalization"].status == "none"
    assert seen == [("email_marketing", "pending"), ("surveys", "withdrawn"), ("postal_mail", "granted")]
    assert c.set_choices("c1", ["email_marketing", "postal_mail"], source="account")["postal_mail"].granted
    assert _events(shop) == 4      # the repeat changed nothing
    c.set_choices("c1", [], source="account", commit=False)
    shop.db.session.rollback()
    assert c.has("c1", "postal_mail")
