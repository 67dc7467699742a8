"""The survey page (``/survey/<token>``), its thank-you page and the JSON endpoint.

- ``GET /survey/<token>``: the form in the customer's language;
  ``?recommend=N`` (the invitation mail's one-click scale) records that
  answer at once and shows the rest of the form pre-filled.
- ``POST /survey/<token>``: completes the survey; errors re-render the form
  with the shopper's answers kept; success redirects to the thank-you page.
- ``GET /survey/<token>/thanks``: promoters get their wallet/referral link,
  detractors are told the shop will be in touch, a reward coupon is shown.
- ``GET|POST /api/surveys/<token>``: the same for headless shops (JSON).

Expired or tampered links, and links of a customer whose data was erased,
get the friendly pages of :mod:`.common` (nothing is stored).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request, url_for
from sqlalchemy import select

from .. import tokens
from ..errors import InvalidInput, NotFound, TokenError
from ..i18n import Translator, render, translator
from ..models import Purchase
from ..models.survey import SurveyResponse
from ..schemas import load
from ..schemas.survey import ApiBodySchema, Question
from ..services import surveys
from ..services.surveys import AnswerResult, coupon_text, label_text, survey_config
from ..state import LoyaltyState
from . import register_blueprint
from .common import no_store, parse_json_object

# The one-click query parameter of the invitation mail's 0–10 scale.
ONE_CLICK = "recommend"


def _order_of(state: LoyaltyState, token: str) -> Purchase:
    payload = tokens.load("survey", token, state=state)
    order_ref = payload.get("o") if isinstance(payload, dict) else None
    if not isinstance(order_ref, str):
        raise TokenError("invalid")
    purchase = state.session.execute(select(Purchase).where(Purchase.order_ref == order_ref)).scalar_one_or_none()
    if purchase is None:
        raise NotFound(f"no order {order_ref!r}")
    if purchase.customer.erased_at is not None:
        # like the wallet: after erasure the link collects nothing more about the customer
        raise NotFound("this customer's data was erased")
    return purchase


def _response(state: LoyaltyState, purchase: Purchase) -> SurveyResponse | None:
    return state.session.execute(
        select(SurveyResponse).where(SurveyResponse.purchase_id == purchase.id)
        .execution_options(populate_existing=True)).scalar_one_or_none()


def _form_value(question: Question, value: Any) -> str:
    if value is None:
        return ""
    if question.type == "yes_no":
        return "yes" if value else "no"
    return str(value)


def _options(question: Question, tr: Translator) -> list[dict[str, str]]:
    if question.type == "choice":
        return [{"value": c.value, "label": label_text(c.label, tr.locale, tr.gettext), "extra": ""}
                for c in question.choices]
    if question.type == "yes_no":
        return [{"value": "yes", "label": tr.gettext("Yes"), "extra": ""},
                {"value": "no", "label": tr.gettext("No"), "extra": ""}]
    if question.type == "scale":
        low = label_text(question.min_label, tr.locale, tr.gettext)
        high = label_text(question.max_label, tr.locale, tr.gettext)
        return [{"value": str(n), "label": str(n),
                 "extra": low if n == question.min else high if n == question.max else ""}
                for n in question.values]
    return []


def _display(state: LoyaltyState, tr: Translator, values: dict[str, Any],
             errors: dict[str, Any]) -> list[dict[str, Any]]:
    shown = []
    for q in survey_config(state).questions:
        messages = errors.get(q.id) or []
        low = label_text(q.min_label, tr.locale, tr.gettext)
        high = label_text(q.max_label, tr.locale, tr.gettext)
        scale_hint = ""
        if q.type == "scale" and (low or high):
            scale_hint = tr.gettext("%(low)s = %(low_label)s, %(high)s = %(high_label)s",
                                    low=q.min, low_label=low, high=q.max, high_label=high)
        shown.append({
            "id": q.id, "type": q.type, "label": label_text(q.label, tr.locale, tr.gettext),
            "hint": label_text(q.hint, tr.locale, tr.gettext) if q.hint else "", "scale_hint": scale_hint,
            "required": q.required, "max_length": q.max_length, "options": _options(q, tr),
            "value": values.get(q.id, ""),
            "error": tr.gettext(str(messages[0])) if isinstance(messages, list) and messages else "",
        })
    return shown


def _render_form(state: LoyaltyState, token: str, purchase: Purchase, tr: Translator, *,
                 values: dict[str, Any], errors: dict[str, Any] | None = None, saved: bool = False,
                 status: int = 200) -> tuple[str, int]:
    errors = errors or {}
    general = [tr.gettext(str(m)) for m in errors.get("_schema", [])] if isinstance(errors.get("_schema"), list) else []
    questions = _display(state, tr, values, errors)
    html = render("loyalty/survey/form.html", locale=tr.locale, questions=questions, order_ref=purchase.order_ref,
                  action=url_for("loyalty_survey.page", token=token), saved=saved, general_errors=general,
                  has_errors=bool(errors))
    return html, status


def _thanks_context(state: LoyaltyState, response: SurveyResponse, tr: Translator) -> dict[str, Any]:
    coupon = None
    if response.reward_code:
        from ..models import Coupon

        found = state.session.execute(select(Coupon).where(Coupon.code == response.reward_code)).scalars().first()
        if found is not None:
            coupon = {"code": found.code, "description": coupon_text(found.kind, found.value, found.currency, tr),
                      "expires": tr.date(found.expires_at) if found.expires_at else ""}
    wallet_url = None
    if response.promoter:
        wallet_url = state.extension.links.wallet(response.customer_ref)
    return {"promoter": response.promoter, "detractor": response.detractor, "coupon": coupon,
            "wallet_url": wallet_url, "order_ref": response.order_ref}


def _result_json(state: LoyaltyState, result: AnswerResult) -> dict[str, Any]:
    response = result.response
    body: dict[str, Any] = {
        "status": result.status, "order_ref": response.order_ref, "completed": response.completed,
        "answers": response.values, "promoter": response.promoter, "detractor": response.detractor,
        "coupon": None, "wallet_url": None,
    }
    if response.reward_code:
        body["coupon"] = {"code": response.reward_code}
    if response.promoter:
        body["wallet_url"] = state.extension.links.wallet(response.customer_ref)
    return body


def setup(state: LoyaltyState) -> None:
    """Register a fresh survey blueprint (page, thank-you page, JSON endpoint) on the app."""
    bp = Blueprint("loyalty_survey", __name__)

    @bp.route("/survey/<token>", methods=["GET", "POST"])
    def page(token: str) -> Any:
        purchase = _order_of(state, token)
        tr = translator(purchase.customer.locale, state=state)
        response = _response(state, purchase)
        if response is not None and response.completed:
            return _already(token, response, tr)
        if request.method == "POST":
            values: dict[str, Any] = {}
            for q in survey_config(state).questions:
                raw = request.form.get(q.id)
                if raw is None or (q.type != "text" and not raw.strip()):
                    continue
                values[q.id] = raw
            try:
                result = surveys.answer(state, purchase.order_ref, values, channel="page")
            except InvalidInput as exc:
                html, status = _render_form(state, token, purchase, tr, values=values, errors=exc.errors,
                                            status=400)
                return no_store(Response(html, status=status))
            if result.status == "already_answered":
                return _already(token, result.response, tr)
            return redirect(url_for("loyalty_survey.thanks", token=token), code=303)
        saved = False
        errors: dict[str, Any] = {}
        stored = response.values if response is not None else {}
        clicked = request.args.get(ONE_CLICK)
        preselect = None
        if (clicked is not None and request.method == "GET" and survey_config(state).question(ONE_CLICK)
                and not state.config["LOYALTY_SURVEY_ONE_CLICK_STORES"]):
            # the link only chooses the score; the shopper's Send stores it (a mail scanner stores nothing)
            preselect = None if ONE_CLICK in stored else clicked
        elif clicked is not None and request.method == "GET" and survey_config(state).question(ONE_CLICK):
            try:
                result = surveys.answer(state, purchase.order_ref, {ONE_CLICK: clicked}, partial=True,
                                        channel="mail")
            except InvalidInput as exc:
                errors = exc.errors
            else:
                if result.status == "already_answered":
                    return _already(token, result.response, tr)
                saved = True
                stored = result.response.values
        questions = survey_config(state).questions
        values = {q.id: _form_value(q, stored.get(q.id)) for q in questions}
        if preselect is not None:
            values[ONE_CLICK] = preselect       # compared with the choices' values: anything else checks none
        html, status = _render_form(state, token, purchase, tr, values=values, errors=errors, saved=saved,
                                    status=400 if errors else 200)
        return no_store(Response(html, status=status))

    @bp.route("/survey/<token>/thanks")
    def thanks(token: str) -> Any:
        purchase = _order_of(state, token)
        tr = translator(purchase.customer.locale, state=state)
        response = _response(state, purchase)
        if response is None or not response.completed:
            return redirect(url_for("loyalty_survey.page", token=token), code=303)
        html = render("loyalty/survey/thanks.html", locale=tr.locale, already=False,
                      **_thanks_context(state, response, tr))
        return no_store(Response(html))

    def _already(token: str, response: SurveyResponse, tr: Translator) -> Any:
        html = render("loyalty/survey/thanks.html", locale=tr.locale, already=True,
                      answered_on=tr.date(response.completed_at or response.answered_at),
                      **_thanks_context(state, response, tr))
        return no_store(Response(html, status=200))

    @bp.route("/api/surveys/<token>", methods=["GET", "POST"])
    def api(token: str) -> Any:
        purchase = _order_of(state, token)
        if request.method == "GET":
            tr = translator(purchase.customer.locale, state=state)
            response = _response(state, purchase)
            questions = []
            for q in survey_config(state).questions:
                item: dict[str, Any] = {"id": q.id, "type": q.type, "required": q.required,
                                        "label": label_text(q.label, tr.locale, tr.gettext)}
                if q.hint:
                    item["hint"] = label_text(q.hint, tr.locale, tr.gettext)
                if q.type == "scale":
                    item.update(min=q.min, max=q.max,
                                min_label=label_text(q.min_label, tr.locale, tr.gettext),
                                max_label=label_text(q.max_label, tr.locale, tr.gettext))
                elif q.type == "choice":
                    item["choices"] = [{"value": c.value, "label": label_text(c.label, tr.locale, tr.gettext)}
                                       for c in q.choices]
                elif q.type == "text":
                    item["max_length"] = q.max_length
                questions.append(item)
            return no_store(jsonify(
                order_ref=purchase.order_ref, locale=tr.locale, questions=questions,
                completed=bool(response and response.completed),
                answers=response.values if response is not None else {}))
        body = parse_json_object(request.get_data(cache=False)) if request.is_json else None
        if body is None:
            raise InvalidInput("A JSON object is expected.")
        data = load(ApiBodySchema(), body)
        result = surveys.answer(state, purchase.order_ref, data["answers"], partial=data["partial_"],
                                channel="api")
        if result.status == "already_answered":
            return no_store(jsonify(error="already_answered", **_result_json(state, result))), 409
        return no_store(jsonify(_result_json(state, result))), 201 if result.status == "completed" else 200

    register_blueprint(state, bp)

