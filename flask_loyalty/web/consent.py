"""Shopper pages of consent: preference center, unsubscribe (RFC 8058), double opt-in confirmation.

Every page is reached through a signed, purpose-bound link
(:mod:`flask_loyalty.tokens`).  Forms of the preference center carry a
signed, per-form token against cross-site request forgery (no session or
cookie is used).  The unsubscribe URL accepts the RFC 8058 one-click POST
(``List-Unsubscribe=One-Click``) without any token besides the link itself.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, make_response, request, url_for
from markupsafe import Markup

from .. import tokens
from ..errors import InvalidInput, NotFound, TokenError
from ..i18n import choose_locale, render
from ..models import Customer
from ..services import consent as service
from ..services.links import signed_url
from ..services.purchases import get_customer
from ..state import LoyaltyState, get_state
from . import register_blueprint
from .common import no_store

CSRF_FORMS = ("save", "erase")


def _payload(purpose: str, token: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """Verify ``token`` and check its payload has the string ``keys`` (else a bad-link error)."""
    data = tokens.load(purpose, token)
    if not isinstance(data, dict):
        raise TokenError("invalid")
    for key in keys:
        if not isinstance(data.get(key), str) or not data[key]:
            raise TokenError("invalid")
    return data


def _customer(state: LoyaltyState, ref: str) -> Customer:
    customer = get_customer(state, ref)
    if customer is None:
        raise NotFound("customer")
    return customer


def _client_ip() -> str | None:
    return request.remote_addr or None


def csrf_token(state: LoyaltyState, customer_ref: str, form: str) -> str:
    """A signed token binding a preference-center form to one customer."""
    return tokens.make(service.CSRF_TOKEN, {"c": customer_ref, "f": form}, state=state)


def check_csrf(state: LoyaltyState, customer_ref: str, form: str) -> None:
    """Refuse a POST whose form token is missing, forged, stale or for another customer/form."""
    token = request.form.get("csrf_token", "")
    try:
        data = tokens.load(service.CSRF_TOKEN, token, state=state,
                           max_age_seconds=int(state.config["LOYALTY_CONSENT_FORM_MAX_AGE"]))
    except TokenError:
        raise InvalidInput.field("csrf_token", "The form has expired; please try again.") from None
    if not isinstance(data, dict) or data.get("c") != customer_ref or data.get("f") != form:
        raise InvalidInput.field("csrf_token", "The form has expired; please try again.")


def _page(template: str, customer: Customer | None, status: int = 200, **context: Any) -> Response:
    locale = customer.locale if customer is not None else None
    response = make_response(render(template, locale=locale, **context), status)
    return no_store(response)


def consent_fields(purposes: list[str] | None = None, *, locale: str | None = None,
                   legend: str | None = None) -> Markup:
    """Template global ``loyalty_consent_fields()``: the unticked consent checkboxes for a host form.

    Record what was ticked with ``loyalty.consent.capture(ref, request.form)``.
    """
    state = get_state()
    loc, items, shown = service.form_items(state, locale=locale, only=purposes)
    html = render("loyalty/consent/_fields.html", locale=loc, items=items, shown_token=shown,
                  field=service.FIELD, shown_field=service.SHOWN_FIELD, legend=legend)
    return Markup(html)


def _rows(state: LoyaltyState, customer: Customer) -> list[dict[str, Any]]:
    locale = choose_locale(customer.locale, state=state)
    known = service.purposes(state)
    rows = []
    for name, st in service.current(state, customer.ref).items():
        label, text = known[name].texts(locale)
        rows.append({"purpose": name, "label": label, "wording": text, "state": st,
                     "how": service.METHOD_LABELS.get(st.method or "", None),
                     "checked": st.status in ("granted", "pending")})
    return rows


def make_blueprint() -> Blueprint:
    """A fresh consent blueprint (one per app)."""
    bp = Blueprint("loyalty_consent", __name__)

    # --- preference center ----------------------------------------------------
    @bp.route("/preferences/<token>", methods=["GET", "POST"])
    def preferences(token: str) -> Any:
        state = get_state()
        ref = _payload("preferences", token, ("c",))["c"]
        customer = _customer(state, ref)
        if customer.erased_at is not None:
            return _page("loyalty/consent/erased.html", customer)
        saved = False
        if request.method == "POST":
            check_csrf(state, ref, "save")
            service.set_choices(state, ref, request.form.getlist("purpose"), source="preference_center",
                                method="preference_center", ip=_client_ip())
            saved = True
        return _page("loyalty/consent/preferences.html", customer, token=token, rows=_rows(state, customer),
                     saved=saved, csrf_token=csrf_token(state, ref, "save"),
                     export_url=url_for(".export", token=token),
                     erase_url=url_for(".erase", token=token))

    @bp.route("/preferences/<token>/data.json", methods=["GET"])
    def export(token: str) -> Any:
        state = get_state()
        ref = _payload("preferences", token, ("c",))["c"]
        _customer(state, ref)
        body = json.dumps(service.export(state, ref), indent=2, ensure_ascii=False, sort_keys=True)
        response = Response(body, mimetype="application/json")
        response.headers["Content-Disposition"] = 'attachment; filename="my-data.json"'
        return no_store(response)

    @bp.route("/preferences/<token>/erase", methods=["GET", "POST"])
    def erase(token: str) -> Any:
        state = get_state()
        ref = _payload("preferences", token, ("c",))["c"]
        customer = _customer(state, ref)
        if customer.erased_at is not None:
            return _page("loyalty/consent/erased.html", customer)
        if request.method == "POST":
            # The second step: the short-lived erase token proves the shopper saw the warning.
            confirm = _payload("erase", request.form.get("erase_token", ""), ("c",))
            if confirm["c"] != ref:
                raise TokenError("invalid")
            service.erase(state, ref)
            return _page("loyalty/consent/erased.html", customer, just_erased=True)
        return _page("loyalty/consent/erase.html", customer, token=token,
                     erase_token=tokens.make("erase", {"c": ref}, state=state),
                     back_url=url_for(".preferences", token=token))

    # --- unsubscribe ---------------------------------------------------------
    @bp.route("/unsubscribe/<token>", methods=["GET", "POST"])
    def unsubscribe(token: str) -> Any:
        state = get_state()
        data = _payload("unsubscribe", token, ("c", "p"))
        ref, purpose = data["c"], data["p"]
        known = service.purposes(state)
        if purpose not in known:
            raise NotFound("purpose")
        customer = get_customer(state, ref)
        if customer is None:
            raise NotFound("customer")
        label, _text = known[purpose].texts(choose_locale(customer.locale, state=state))
        prefs = None if customer.erased_at else signed_url(state, "preferences", {"c": ref})
        if request.method == "POST":
            one_click = request.form.get("List-Unsubscribe") == "One-Click"
            service.withdraw(state, ref, purpose, source="unsubscribe_link",
                             method="one_click" if one_click else "unsubscribe_page", ip=_client_ip())
            return _page("loyalty/consent/unsubscribed.html", customer, label=label, preferences_url=prefs)
        st = service.current(state, ref)[purpose]
        return _page("loyalty/consent/unsubscribe.html", customer, label=label, state=st,
                     action_url=url_for(".unsubscribe", token=token), preferences_url=prefs)

    # --- double opt-in confirmation -------------------------------------------
    @bp.route("/consent/confirm/<token>", methods=["GET", "POST"])
    def confirm(token: str) -> Any:
        state = get_state()
        data = tokens.load("confirm", token,
                           max_age_seconds=int(state.config["LOYALTY_OPT_IN_TTL_DAYS"]) * 86400)
        if (not isinstance(data, dict) or not isinstance(data.get("c"), str) or not isinstance(data.get("p"), str)
                or not isinstance(data.get("e"), int) or isinstance(data.get("e"), bool)):
            raise TokenError("invalid")
        if data["p"] not in service.purposes(state):
            raise NotFound("purpose")
        customer = _customer(state, data["c"])
        label, _text = service.get_purpose(state, data["p"]).texts(choose_locale(customer.locale, state=state))
        preferences_url = signed_url(state, "preferences", {"c": data["c"]})
        if request.method == "GET" and state.config["LOYALTY_OPT_IN_CONFIRM_BUTTON"]:
            # only the button's POST confirms: a mail scanner opening the link changes nothing
            if service.confirmation_status(state, data["c"], data["p"], data["e"]) == "pending":
                return _page("loyalty/consent/confirm.html", customer, label=label,
                             action_url=url_for(".confirm", token=token), preferences_url=preferences_url)
            return _page("loyalty/consent/confirmed.html", customer, label=label, fresh=False,
                         preferences_url=preferences_url)
        _state, fresh = service.confirm(state, data["c"], data["p"], data["e"], ip=_client_ip())
        return _page("loyalty/consent/confirmed.html", customer, label=label, fresh=fresh,
                     preferences_url=preferences_url)

    return bp


def setup(state: LoyaltyState) -> None:
    """Register the consent pages and the ``loyalty_consent_fields()`` template global."""
    register_blueprint(state, make_blueprint())
    state.app.add_template_global(consent_fields, "loyalty_consent_fields")
