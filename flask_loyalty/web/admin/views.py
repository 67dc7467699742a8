"""The dashboard's pages.  Thin: parse input with the admin schemas, call services, render."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

from flask import Blueprint, Response, abort, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from ...clock import utcnow
from ...errors import InvalidInput, LoyaltyError, NotFound
from ...i18n import N_, SHIPPED_LOCALES, active_translator, admin_translator, gettext, render
from ...models import Message
from ...schemas import load
from ...schemas.admin import (
    BatchForm,
    ConsentQuery,
    CouponForm,
    CouponQuery,
    CustomerQuery,
    EraseForm,
    GiftCardForm,
    OutboxQuery,
    PageQuery,
    PeriodQuery,
    PreviewQuery,
    SurveyQuery,
)
from ...schemas.fields import ID_MAX, is_printable
from ...services import admin_lists, audit, dashboard, plan
from ...state import get_state
from . import audit_action

#: The URL converter of row ids: larger numbers match no route (404) instead of overflowing the driver.
ID_ARG = f"int(max={ID_MAX})"
#: The survey page's summary covers this many days.
STATS_DAYS = 90
_period_q, _page_q, _outbox_q, _preview_q = PeriodQuery(), PageQuery(), OutboxQuery(), PreviewQuery()
_coupon_q, _coupon_f, _batch_f, _card_f = CouponQuery(), CouponForm(), BatchForm(), GiftCardForm()
_customer_q, _survey_q, _consent_q, _erase_f = CustomerQuery(), SurveyQuery(), ConsentQuery(), EraseForm()


def sections() -> list[tuple[str, str]]:
    """The navigation: ``(endpoint, label)`` of every page (every area is always installed).

    Labels are English msgids; the layout translates them.
    """
    return [("overview", N_("Overview")), ("charts", N_("Charts")), ("customers", N_("Customers")),
            ("outbox", N_("Outbox")), ("coupons", N_("Coupons")), ("gift_cards", N_("Gift cards")),
            ("surveys", N_("Survey answers")), ("consent", N_("Consent")), ("audit_log", N_("Audit log"))]


#: Pages that belong under another page's navigation entry.
NAV_PARENT = {"chart": "charts", "customer": "customers", "message": "outbox", "consent_erase_confirm": "consent",
              "consent_erase": "consent", "coupon_create": "coupons", "coupon_batch": "coupons",
              "gift_card_issue": "gift_cards"}


def page(template: str, *, status: int = 200, **context: Any) -> tuple[str, int]:
    """Render an admin page in the dashboard's language (``LOYALTY_ADMIN_LOCALE`` or negotiated; see
    :func:`flask_loyalty.i18n.admin_locale`) with the shop's time zone for dates.
    """
    state = get_state()
    here = (request.endpoint or "").rpartition(".")[2]
    tr = active_translator() or admin_translator(state)
    return render(f"loyalty/admin/{template}", tr=tr, nav=sections(), here=NAV_PARENT.get(here, here),
                  currency=state.config["LOYALTY_CURRENCY"], page_size=_size(), **context), status


def _size() -> int:
    return max(1, min(int(get_state().config["LOYALTY_ADMIN_PAGE_SIZE"]), 500))


def _args(schema: Any) -> dict[str, Any]:
    return load(schema, request.args.to_dict())


def csv_response(text: str, filename: str) -> Response:
    """A CSV download (UTF-8 with BOM so spreadsheet programs detect the encoding)."""
    response = Response("\ufeff" + text, mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def register(bp: Blueprint) -> None:
    """Add every dashboard view to ``bp``."""

    # ---------------------------------------------------------------- overview and charts
    @bp.get("/")
    def overview() -> Any:
        state = get_state()
        args = _args(_period_q)
        period = dashboard.period_for(state, days=args.get("days"), start=args.get("start"), end=args.get("end"))
        data = dashboard.overview(state, period)
        funnel_chart = dashboard.funnel_chart(data) if data.funnel else None
        return page("overview.html", data=data, period=period, args=args, funnel_chart=funnel_chart)

    @bp.get("/charts")
    def charts() -> Any:
        names = dashboard.available_charts()
        return page("charts.html", names=names, titles=dashboard.CHART_TITLES)

    @bp.get("/charts/<name>")
    def chart(name: str) -> Any:
        if name not in dashboard.chart_builders():
            abort(404)
        built = dashboard.build_chart(get_state(), name)
        names = dashboard.available_charts()
        return page("chart.html", chart=built, name=name, names=names, titles=dashboard.CHART_TITLES)

    @bp.get("/charts/<name>.csv")
    def chart_csv(name: str) -> Any:
        if name not in dashboard.chart_builders():
            abort(404)
        chart = dashboard.build_chart(get_state(), name)
        if chart is None:
            abort(404)
        return csv_response(chart.table.to_csv(), f"{name}.csv")

    # ---------------------------------------------------------------- customers
    @bp.get("/customers")
    def customers() -> Any:
        state = get_state()
        q = _args(_customer_q).get("q", "")
        found = admin_lists.find_customers(state, q) if q else admin_lists.recent_customers(state)
        if q and len(found) == 1 and found[0].ref == q:
            return redirect(url_for(".customer", ref=found[0].ref))
        return page("customers.html", q=q, customers=found)

    @bp.get("/customers/<path:ref>")
    def customer(ref: str) -> Any:
        state = get_state()
        if plan.plan_customer(state, ref):
            state.session.commit()  # orders not planned yet: show their mails (and keep the coupon codes)
        view = admin_lists.customer_view(state, ref)
        return page("customer.html", view=view, c=view.customer, profile_labels=admin_lists.PROFILE_LABELS)

    # ---------------------------------------------------------------- outbox
    @bp.get("/outbox")
    def outbox() -> Any:
        state = get_state()
        args = _args(_outbox_q)
        result = admin_lists.outbox_page(state, kind=args.get("kind"), status=args.get("status"),
                                         customer=args.get("customer"), before=args.get("before"), size=_size())
        return page("outbox.html", result=result, args=args, kinds=admin_lists.message_kinds(state),
                    unplanned=plan.unplanned_orders(state))

    @bp.get(f"/outbox/<{ID_ARG}:message_id>")
    def message(message_id: int) -> Any:
        state = get_state()
        msg = state.session.get(Message, message_id)
        if msg is None:
            raise NotFound("no such message")
        locales = [loc for loc in state.config["LOYALTY_LOCALES"] if loc in SHIPPED_LOCALES] or ["en"]
        wanted = _args(_preview_q).get("locale") or msg.locale or msg.customer.locale
        chosen: str = wanted if isinstance(wanted, str) and wanted in locales else locales[0]
        preview, error = _preview(state, msg, chosen)
        history = state.extension.messages.history(message_id)
        return page("message.html", msg=msg, locales=locales, chosen=chosen, preview=preview, error=error,
                    history=history)

    # ---------------------------------------------------------------- coupons and gift cards
    @bp.get("/coupons")
    def coupons() -> Any:
        return _coupons_page({}, None)

    def _coupons_page(form: dict[str, Any], errors: dict[str, Any] | None, *, status: int = 200,
                      made: list[Any] | None = None) -> Any:
        state = get_state()
        args = _args(_coupon_q)
        result = admin_lists.coupons_page(state, q=args.get("q"), campaign=args.get("campaign"),
                                          customer=args.get("customer"), status=args.get("status"),
                                          before=args.get("before"), size=_size())
        return page("coupons.html", status=status, result=result, args=args, form=form, errors=errors or {},
                    made=made or [], now=utcnow(), value_of=admin_lists.coupon_value,
                    status_of=admin_lists.coupon_status, statuses=admin_lists.COUPON_STATUSES)

    def _rules(data: dict[str, Any]) -> dict[str, Any]:
        rules = {k: v for k, v in data.items() if k not in ("count", "prefix")}
        value = rules.pop("value", None)
        if value is not None:
            if rules["kind"] == "gift":
                rules["gift_name"] = value
            else:
                rules["value"] = value
        return rules

    @bp.post("/coupons")
    def coupon_create() -> Any:
        state = get_state()
        form = request.form.to_dict()
        try:
            rules = _rules(load(_coupon_f, form))
            coupon = state.extension.coupons.create(**rules, commit=False)
            audit_action("coupon.create", coupon.code, commit=False, **rules)
            state.session.commit()
        except InvalidInput as exc:
            state.session.rollback()
            return _coupons_page(form, exc.errors, status=400)
        return _coupons_page({}, None, made=[coupon])

    @bp.post("/coupons/batch")
    def coupon_batch() -> Any:
        state = get_state()
        form = request.form.to_dict()
        try:
            data = load(_batch_f, form)
            rules = _rules(data)
            rules.pop("code", None)
            made = state.extension.coupons.create_batch(data["count"], prefix=data.get("prefix", ""), commit=False,
                                                         **rules)
            audit_action("coupon.batch", rules.get("campaign"), commit=False, count=len(made),
                         prefix=data.get("prefix", ""), **rules)
            state.session.commit()
        except InvalidInput as exc:
            state.session.rollback()
            return _coupons_page({f"batch_{k}": v for k, v in form.items()},
                                 {f"batch_{k}": v for k, v in exc.errors.items()}, status=400)
        return _coupons_page({}, None, made=made)

    @bp.post(f"/coupons/<{ID_ARG}:coupon_id>/deactivate")
    def coupon_deactivate(coupon_id: int) -> BaseResponse:
        state = get_state()
        coupon = admin_lists.deactivate_coupon(state, coupon_id, commit=False)
        audit_action("coupon.deactivate", coupon.code, commit=False)
        state.session.commit()
        back = request.form.get("next") or ""
        home = url_for(".coupons")
        # only back to the coupon list; a CR/LF (or any control character) would make werkzeug
        # refuse the Location header (a 500), so anything not printable falls back to the list too
        if not back.startswith(home) or "//" in back or "\\" in back or not is_printable(back):
            back = home
        return redirect(back, code=303)

    @bp.get("/coupons/export.csv")
    def coupons_export() -> Any:
        state = get_state()
        args = _args(_coupon_q)
        text, n = admin_lists.coupons_csv(state, q=args.get("q"), campaign=args.get("campaign"),
                                          customer=args.get("customer"), status=args.get("status"))
        audit_action("coupon.export", args.get("campaign"), rows=n, filters=args)
        return csv_response(text, "coupons-mail-merge.csv")

    @bp.get("/gift-cards")
    def gift_cards() -> Any:
        return _cards_page({}, None)

    def _cards_page(form: dict[str, Any], errors: dict[str, Any] | None, *, status: int = 200,
                    issued: Any = None) -> Any:
        args = _args(_coupon_q)
        result = admin_lists.gift_cards_page(get_state(), customer=args.get("customer"),
                                             before=args.get("before"), size=_size())
        return page("gift_cards.html", status=status, result=result, args=args, form=form, errors=errors or {},
                    issued=issued, now=utcnow())

    @bp.post("/gift-cards")
    def gift_card_issue() -> Any:
        state = get_state()
        form = request.form.to_dict()
        try:
            data = load(_card_f, form)
            card = state.extension.gift_cards.issue(data.pop("amount"), commit=False, **data)
            audit_action("gift_card.issue", card.code[:4] + "…", commit=False, amount=card.initial_amount,
                         currency=card.currency, customer_ref=card.customer_ref)
            state.session.commit()
        except InvalidInput as exc:
            state.session.rollback()
            return _cards_page(form, exc.errors, status=400)
        return _cards_page({}, None, issued=card)

    # ---------------------------------------------------------------- survey answers
    @bp.get("/surveys")
    def surveys() -> Any:
        state = get_state()
        args = _args(_survey_q)
        result = admin_lists.survey_page(state, group=args.get("group"), comments=bool(args.get("comments")),
                                         source=args.get("source"), before=args.get("before"),
                                         rank=args.get("rank"), size=_size())
        since = utcnow() - timedelta(days=STATS_DAYS)
        stats = state.extension.surveys.stats(since=since)
        return page("surveys.html", result=result, args=args, stats=stats, stats_days=STATS_DAYS,
                    sources=admin_lists.source_breakdown(state))

    # ---------------------------------------------------------------- consent
    @bp.get("/consent")
    def consent() -> Any:
        state = get_state()
        ref = _args(_consent_q).get("ref")
        if not ref:
            return page("consent.html", ref=None, customer=None)
        try:
            customer, history, states = admin_lists.consent_ledger(state, ref)
        except NotFound:
            return page("consent.html", status=404, ref=ref, customer=None)
        audit_action("consent.view", ref)
        return page("consent.html", ref=ref, customer=customer, history=history, states=states)

    @bp.post("/consent/<path:ref>/export")
    def consent_export(ref: str) -> Any:
        state = get_state()
        admin_lists.get_customer(state, ref)
        data = state.extension.consent.export(ref)
        audit_action("consent.export", ref, sections=sorted(data) if isinstance(data, dict) else [])
        body = json.dumps(data, indent=2, ensure_ascii=False, default=str, sort_keys=True)
        response = Response(body, mimetype="application/json")
        response.headers["Content-Disposition"] = f'attachment; filename="customer-data-{_safe(ref)}.json"'
        return response

    @bp.get("/consent/<path:ref>/erase")
    def consent_erase_confirm(ref: str) -> Any:
        customer = admin_lists.get_customer(get_state(), ref)
        return page("erase.html", customer=customer, error=None)

    @bp.post("/consent/<path:ref>/erase")
    def consent_erase(ref: str) -> Any:
        state = get_state()
        customer = admin_lists.get_customer(state, ref)
        data = load(_erase_f, request.form.to_dict())
        if data["confirm"] != ref:
            return page("erase.html", status=400, customer=customer,
                        error=gettext("The reference you typed does not match; nothing was erased."))
        state.extension.consent.erase(ref, commit=False)
        audit_action("consent.erase", ref, commit=False)
        state.session.commit()
        return redirect(url_for(".consent", ref=ref, erased=1), code=303)

    # ---------------------------------------------------------------- audit log
    @bp.get("/audit")
    def audit_log() -> Any:
        state = get_state()
        args = _args(_page_q)
        size = _size()
        # one order and one keyset for every page: by id, newest first
        rows, total = audit.entries(state, limit=size + 1, before=args.get("before"))
        more = len(rows) > size
        rows = rows[:size]
        return page("audit.html", rows=rows, total=total, next_before=rows[-1].id if more and rows else None)

    @bp.errorhandler(LoyaltyError)
    def _loyalty_error(exc: LoyaltyError) -> Any:
        if isinstance(exc, NotFound):
            return page("error.html", status=404, message=str(exc) or gettext("Not found."))
        if isinstance(exc, InvalidInput):
            return page("error.html", status=400, message=gettext("Invalid input: %(errors)s", errors="; ".join(
                f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in exc.errors.items())))
        return page("error.html", status=409, message=str(exc))


def _safe(ref: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ref)[:64]


def _preview(state: Any, msg: Any, locale: str) -> tuple[Any, str | None]:
    """Render ``msg`` in ``locale`` without tracking a real message (id 0) and without touching the row."""
    from ...services.mail import render_message

    customer = msg.customer
    fake_customer = SimpleNamespace(**{k: getattr(customer, k) for k in (
        "id", "ref", "email", "name", "birthday", "first_purchase_at", "last_purchase_at", "orders_count",
        "total_spent", "points_balance", "erased_at")}, locale=locale)
    if not fake_customer.email:
        fake_customer.email = "preview@example.invalid"
    fake_message = SimpleNamespace(**{k: getattr(msg, k) for k in (
        "kind", "purpose", "marketing", "priority", "order_ref", "payload", "status", "due_at", "first_due_at",
        "sent_at", "message_id", "reason")}, id=0, locale=locale)
    try:
        rendered = render_message(state, cast(Any, fake_message), cast(Any, fake_customer))
    except Exception as exc:  # a broken template must not break the dashboard
        problem = f"{type(exc).__name__}: {exc}"
        return None, gettext("Could not render this mail: %(error)s", error=problem)
    if rendered is None:
        return None, gettext("This mail has no recipient address.")
    return rendered, None
