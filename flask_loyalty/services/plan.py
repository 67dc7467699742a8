"""The communication plan: from the thank-you after a first order to the win-back mail.

Steps (each configurable or switched off in ``LOYALTY_PLAN``):

``thank_you``
    right after a first purchase, with a personal welcome coupon
    (``LOYALTY_WELCOME_COUPON``).
``usage_guide``
    ``delay_days`` after a purchase, built from the purchased items for which
    the host provides a guide (:func:`guides` registry, or templates
    ``loyalty/guides/<sku>.html`` / ``loyalty/guides/category/<category>.html``);
    an item without a guide, or one the customer already got a guide for,
    is left out; no guide at all -> no mail.
``survey_invite``
    ``LOYALTY_SURVEY_DELAY_DAYS`` after an order (at most one invitation per
    ``min_interval_days``).
``replenish``
    when an item's ``replenish_after_days`` comes due (``lead_days``
    earlier), unless the customer bought it again meanwhile (decided at send
    time, so a re-buy that is fully refunded does not count).
``birthday``
    on the customer's birthday in the shop's time zone (``hour`` local), with a
    coupon (``LOYALTY_BIRTHDAY_COUPON``), once a year.
``win_back``
    when the customer's silence exceeds ``LOYALTY_WIN_BACK_FACTOR`` times
    their usual interval between orders (``LOYALTY_WIN_BACK_DAYS`` for
    one-time buyers); once per silence.

Order-driven steps (thank-you, usage guide, survey invitation,
replenishment) are planned from the purchase row itself: the checkout only
writes the order, which commits or rolls back with the host's transaction,
and :func:`expand_pending` turns the orders not planned yet into messages.
It runs at the start of every :func:`~flask_loyalty.services.dispatch.dispatch`
and :func:`run_plan`, before a refund, and when a customer's messages are
read, so no mail is ever late or missing because of it, and the checkout
stays a handful of statements.  Time-driven steps are scheduled by
:func:`run_plan` (``loyalty.plan()``, ``flask loyalty plan``), which is
idempotent and may run as often as wanted.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask
from jinja2 import TemplateNotFound
from sqlalchemy import String, and_, delete, exists, extract, func, or_, select, update
from sqlalchemy.orm import joinedload, selectinload

from ..clock import local_date, resolve_now, shop_zone, utcnow, valid_days_deadline
from ..errors import InvalidInput
from ..models import Customer, Engagement, Message, MessageEvent, Purchase, PurchaseItem
from ..models.base import table_of
from ..schemas.fields import is_ref
from ..state import LoyaltyState, get_state
from ..transaction import begin_write, dialect_name, finish
from . import outbox

log = logging.getLogger("flask_loyalty.plan")

#: Default settings of each step; ``LOYALTY_PLAN`` overrides them per step.
DEFAULT_PLAN: dict[str, dict[str, Any]] = {
    "thank_you": {"delay_days": 0},
    "usage_guide": {"delay_days": 3},
    "survey_invite": {"delay_days": None, "min_interval_days": 60},
    "replenish": {"lead_days": 3},
    "birthday": {"hour": 9, "catch_up_days": 3},
    "win_back": {"hour": 10, "min_days": 30, "max_days": 730},
}

#: The steps planned from an order (by :func:`expand_pending`); the others are time-driven.
ORDER_STEPS = ("thank_you", "usage_guide", "survey_invite", "replenish")

#: Guide content: ``fn(item, locale) -> str | dict | None`` (HTML string, or
#: ``{"html": ..., "text": ...}``), ``item`` a dict with sku, name, category.
GuideFn = Callable[[dict[str, Any], str], Any]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TAG = re.compile(r"<[^>]+>")


def step(state: LoyaltyState, name: str) -> dict[str, Any] | None:
    """Settings of plan step ``name`` (``None`` when switched off in ``LOYALTY_PLAN``)."""
    configured = (state.config.get("LOYALTY_PLAN") or {}).get(name, {})
    if configured is False or configured is None:
        return None
    if configured is True:
        configured = {}
    if not isinstance(configured, dict):
        raise InvalidInput.field("LOYALTY_PLAN", f"Step {name!r} must be False or a dict of settings.")
    return {**DEFAULT_PLAN[name], **configured}


# --------------------------------------------------------------------------- usage guides
class GuideRegistry:
    """Host-provided usage guides per SKU, per category, or a catch-all callback."""

    def __init__(self) -> None:
        self.by_sku: dict[str, GuideFn] = {}
        self.by_category: dict[str, GuideFn] = {}
        self.fallbacks: list[GuideFn] = []

    def sku(self, *skus: str) -> Callable[[GuideFn], GuideFn]:
        """Decorator: ``fn`` writes the guide of these SKUs."""
        def deco(fn: GuideFn) -> GuideFn:
            for value in skus:
                self.by_sku[value] = fn
            return fn
        return deco

    def category(self, *categories: str) -> Callable[[GuideFn], GuideFn]:
        """Decorator: ``fn`` writes the guide of items in these categories."""
        def deco(fn: GuideFn) -> GuideFn:
            for value in categories:
                self.by_category[value] = fn
            return fn
        return deco

    def register(self, fn: GuideFn) -> GuideFn:
        """Decorator: ``fn`` is asked for every item (return ``None`` when it has nothing)."""
        self.fallbacks.append(fn)
        return fn


def guides(app: Flask | None = None) -> GuideRegistry:
    """The usage-guide registry of ``app`` (default: the current app).

    Example: ``guides(app).sku("TEA-1")(tea_guide)`` where
    ``tea_guide(item, locale)`` returns HTML (or ``{"html", "text"}``) or ``None``.
    """
    state = get_state(app)
    registry = state.extras.get("plan.guides")
    if registry is None:
        registry = state.extras["plan.guides"] = GuideRegistry()
    assert isinstance(registry, GuideRegistry)
    return registry


def _guide_templates(item: dict[str, Any]) -> list[str]:
    names = []
    if _SAFE_NAME.match(str(item.get("sku") or "")):
        names.append(f"loyalty/guides/{item['sku']}.html")
    if item.get("category") and _SAFE_NAME.match(str(item["category"])):
        names.append(f"loyalty/guides/category/{item['category']}.html")
    return names


def _find_template(state: LoyaltyState, item: dict[str, Any]) -> str | None:
    for name in _guide_templates(item):
        try:
            state.app.jinja_env.get_template(name)
        except TemplateNotFound:
            continue
        except Exception:  # a broken host template (syntax error ...): no guide, never a blocked plan
            log.exception("usage guide template %s cannot be loaded; treated as no guide", name)
            continue
        return name
    return None


def _ask(fn: GuideFn, item: dict[str, Any], locale: str) -> Any:
    """A host guide callback's answer; one that raises counts as "no guide" (logged)."""
    try:
        return fn(item, locale)
    except Exception:
        log.exception("usage guide callback %r failed for item %r; treated as no guide", fn, item.get("sku"))
        return None


def guide_for(state: LoyaltyState, item: dict[str, Any], locale: str) -> dict[str, str] | None:
    """The guide of one item as ``{"name", "html", "text"}``, or ``None`` when the host has none."""
    registry = guides(state.app)
    candidates: list[GuideFn] = []
    if item.get("sku") in registry.by_sku:
        candidates.append(registry.by_sku[item["sku"]])
    if item.get("category") in registry.by_category:
        candidates.append(registry.by_category[item["category"]])
    candidates += registry.fallbacks
    for fn in candidates:
        content = _ask(fn, item, locale)
        if content:
            if isinstance(content, dict):
                body = str(content.get("html") or "")
                text = str(content.get("text") or _text_of(body))
            else:
                body, text = str(content), _text_of(str(content))
            return {"name": str(item.get("name") or item.get("sku")), "html": body, "text": text}
    name = _find_template(state, item)
    if name is None:
        return None
    from ..i18n import render

    body = render(name, locale=locale, item=item)
    return {"name": str(item.get("name") or item.get("sku")), "html": body, "text": _text_of(body)}


def has_guide(state: LoyaltyState, item: dict[str, Any]) -> bool:
    """Whether the host provides a guide for ``item`` (registry or template)."""
    registry = guides(state.app)
    if item.get("sku") in registry.by_sku or item.get("category") in registry.by_category:
        return True
    if _find_template(state, item) is not None:
        return True
    from ..i18n import default_locale

    locale = default_locale(state)
    return any(_ask(fn, item, locale) for fn in registry.fallbacks)


def _text_of(fragment: str) -> str:
    text = _TAG.sub("", re.sub(r"(?i)<br\s*/?>|</p>|</li>|</h\d>", "\n", fragment))
    lines = [" ".join(line.split()) for line in html.unescape(text).splitlines()]
    return "\n".join(line for line in lines if line).strip()


def _guide_context(state: LoyaltyState, message: Message, customer: Customer, locale: str) -> dict[str, Any]:
    items = (message.payload or {}).get("items") or []
    found = [g for g in (guide_for(state, item, locale) for item in items) if g]
    if not found:  # every guide broke since the send-time check: fail this mail (render_error)
        raise LookupError("none of the message's usage guides can be rendered")
    return {"guides": found}


def _guide_check(state: LoyaltyState, message: Message, now: datetime) -> str | None:
    items = (message.payload or {}).get("items") or []
    return None if any(has_guide(state, item) for item in items) else "no_guide"


# --------------------------------------------------------------------------- replenish
def _bought_again(state: LoyaltyState, message: Message, now: datetime) -> str | None:
    payload = message.payload or {}
    since = payload.get("placed_at")
    if not payload.get("sku") or not since:
        return None
    placed = datetime.fromisoformat(since)
    ptable, itable = table_of(Purchase), table_of(PurchaseItem)
    again = state.session.execute(select(ptable.c.id).select_from(
        itable.join(ptable, itable.c.purchase_id == ptable.c.id)).where(
        ptable.c.customer_id == message.customer_id, itable.c.sku == payload["sku"],
        ptable.c.placed_at > placed, ptable.c.refunded_total < ptable.c.total).limit(1)).first()
    return "bought_again" if again is not None else None


def _schedule_replenish(state: LoyaltyState, cfg: dict[str, Any], customer: Customer, purchase: Purchase,
                        item: PurchaseItem) -> Message | None:
    assert item.replenish_after_days is not None
    lead = int(cfg.get("lead_days") or 0)
    due = purchase.placed_at + timedelta(days=max(item.replenish_after_days - lead, 0))
    return outbox.enqueue(state, "replenish", customer, due_at=due, order_ref=purchase.order_ref,
                          payload={"sku": item.sku, "name": item.name, "days": item.replenish_after_days,
                                   "placed_at": purchase.placed_at.isoformat()},
                          dedupe_key=f"replenish:{item.id}", reason=f"replenish_after_days:{item.sku}")


# --------------------------------------------------------------------------- coupons
def _coupon(state: LoyaltyState, setting: str, customer: Customer, start: datetime,
            campaign: str) -> dict[str, Any]:
    """Create the personal coupon of ``setting`` (``commit=False``); its fields for the payload."""
    rule = state.config.get(setting)
    if not rule:
        return {}
    rule = dict(rule)
    valid_days = rule.pop("valid_days", None)
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    expires = valid_days_deadline(start, int(valid_days), zone) if valid_days else None
    try:
        coupon = state.extension.coupons.create(customer_ref=customer.ref, expires_at=expires, campaign=campaign,
                                commit=False, **rule)
    except InvalidInput as exc:
        log.error("%s is invalid, mail sent without a coupon: %s", setting, exc)
        return {}
    return {"coupon_code": coupon.code, "coupon_kind": coupon.kind,
            "coupon_value": None if coupon.value is None else str(coupon.value),
            "coupon_currency": getattr(coupon, "currency", None),
            "coupon_expires_at": expires.isoformat() if expires else None}


# --------------------------------------------------------------------------- order-driven steps
def expand_pending(state: LoyaltyState, *, customer_id: int | None = None, order_ref: str | None = None,
                   batch: int = 500) -> int:
    """Schedule the order-driven steps of every purchase not planned yet; how many purchases.

    Each purchase is claimed with a conditional ``UPDATE ... WHERE
    planned_at IS NULL`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so
    concurrent dispatchers plan every order exactly once, oldest first (the
    order in which they were recorded, which is what "first purchase" and the
    survey interval are about).  Works in the caller's transaction and does
    not commit.  ``customer_id`` / ``order_ref`` limit it to one customer or
    order.
    """
    ptable = table_of(Purchase)
    done = 0
    while True:
        pick = select(ptable.c.id).where(ptable.c.planned_at.is_(None))
        if customer_id is not None:
            pick = pick.where(ptable.c.customer_id == customer_id)
        if order_ref is not None:
            pick = pick.where(ptable.c.order_ref == order_ref)
        pick = pick.order_by(ptable.c.id).limit(batch)
        chosen: Any
        if dialect_name(state) == "postgresql":
            # picked once (MATERIALIZED): ``IN (SELECT ... LIMIT n SKIP LOCKED)`` may be re-run per row
            # and claim more than a batch (see dispatch.claim)
            picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            chosen = ptable.c.id.in_(select(picked.c.id))
        else:
            if state.session.execute(pick.limit(1)).first() is None:
                return done  # nothing to do: no write lock taken on SQLite
            begin_write(state)
            chosen = ptable.c.id.in_(pick.scalar_subquery())
        claimed = sorted(state.session.execute(
            update(ptable).where(chosen, ptable.c.planned_at.is_(None))
            .values(planned_at=utcnow()).returning(ptable.c.id)).scalars().all())
        if not claimed:
            return done
        purchases = state.session.execute(
            select(Purchase).where(Purchase.id.in_(claimed)).order_by(Purchase.id)
            .options(selectinload(Purchase.items), joinedload(Purchase.customer))).scalars().all()
        customers = {p.customer_id for p in purchases}
        first_ids = set(state.session.execute(
            select(func.min(ptable.c.id)).where(ptable.c.customer_id.in_(customers))
            .group_by(ptable.c.customer_id)).scalars())
        for purchase in purchases:
            if purchase.customer.erased_at is None:
                plan_order(state, purchase=purchase, customer=purchase.customer,
                           first=purchase.id in first_ids)
        state.session.flush()
        done += len(claimed)
        if len(claimed) < batch:
            return done


def unplanned_orders(state: LoyaltyState) -> int:
    """How many orders wait for the next dispatch or plan run to plan their mails."""
    ptable = table_of(Purchase)
    return int(state.session.execute(
        select(func.count()).select_from(ptable).where(ptable.c.planned_at.is_(None))).scalar_one())


def plan_customer(state: LoyaltyState, customer_ref: str) -> int:
    """Plan the orders of one customer not planned yet (caller's transaction, flushed); how many."""
    if not is_ref(customer_ref):    # no such customer (and a NUL byte would reach PostgreSQL)
        return 0
    customer_id = state.session.execute(
        select(Customer.id).where(Customer.ref == customer_ref)).scalar_one_or_none()
    return 0 if customer_id is None else expand_pending(state, customer_id=customer_id)


def plan_order(state: LoyaltyState, *, purchase: Purchase, customer: Customer, first: bool) -> None:
    """Schedule the order-driven steps of one purchase (``first``: the customer's first order)."""
    placed = purchase.placed_at
    cfg = step(state, "thank_you")
    if first and cfg is not None:
        # orders_count just became 1, so no thank-you exists yet: the welcome coupon is made
        # first and goes into the message as it is written (one statement less than an update)
        extra = _coupon(state, "LOYALTY_WELCOME_COUPON", customer, placed, "welcome")
        outbox.enqueue(
            state, "thank_you", customer, due_at=placed + timedelta(days=float(cfg["delay_days"])),
            order_ref=purchase.order_ref, payload={"order_ref": purchase.order_ref, **extra},
            dedupe_key=f"thank_you:{customer.id}", reason="first_purchase")
    items: list[dict[str, Any]] = [{"sku": i.sku, "name": i.name, "category": i.category}
                                   for i in purchase.items]
    cfg = step(state, "usage_guide")
    guided = [i for i in items if has_guide(state, i)] if cfg is not None else []
    if cfg is not None and guided:
        already = _guided_skus(state, customer.id) if not first else set()
        wanted = [i for i in guided if i["sku"] not in already]
        if wanted:
            outbox.enqueue(state, "usage_guide", customer,
                           due_at=placed + timedelta(days=float(cfg["delay_days"])),
                           order_ref=purchase.order_ref, payload={"items": wanted},
                           dedupe_key=f"usage_guide:{purchase.order_ref}",
                           reason="guide_for:" + ",".join(str(i["sku"]) for i in wanted)[:180])
    cfg = step(state, "survey_invite")
    if cfg is not None:
        delay = cfg.get("delay_days")
        if delay is None:
            delay = state.config["LOYALTY_SURVEY_DELAY_DAYS"]
        due = placed + timedelta(days=float(delay))
        if first or not _recent_invite(state, customer.id, due, int(cfg.get("min_interval_days") or 0)):
            outbox.enqueue(state, "survey_invite", customer, due_at=due, order_ref=purchase.order_ref,
                           payload={"order_ref": purchase.order_ref},
                           dedupe_key=f"survey_invite:{purchase.order_ref}", reason="order_survey")
    cfg = step(state, "replenish")
    if cfg is not None:
        # earlier reminders of the same items stay scheduled: the send-time check cancels them
        # (bought_again) unless this order is fully refunded by then
        for item in purchase.items:
            if item.replenish_after_days:
                _schedule_replenish(state, cfg, customer, purchase, item)


def _guided_skus(state: LoyaltyState, customer_id: int) -> set[str]:
    rows = state.session.execute(select(Message.payload).where(
        Message.customer_id == customer_id, Message.kind == "usage_guide",
        Message.status.in_(("scheduled", "sent")))).scalars()
    return {str(item.get("sku")) for payload in rows for item in (payload or {}).get("items") or []}


def _recent_invite(state: LoyaltyState, customer_id: int, due: datetime, days: int) -> bool:
    if days <= 0:
        return False
    table = table_of(Message)
    return state.session.execute(select(table.c.id).where(
        table.c.customer_id == customer_id, table.c.kind == "survey_invite",
        table.c.status.in_(("scheduled", "sent")),
        table.c.first_due_at > due - timedelta(days=days)).limit(1)).first() is not None


def on_refund(state: LoyaltyState, *, purchase: Purchase, full: bool, **_: Any) -> None:
    """A full refund cancels the order's messages that were not sent yet."""
    if full:
        # plan the order first, so what the refund cancels is on record with its reason
        expand_pending(state, order_ref=purchase.order_ref)
        outbox.cancel_pending(state, reason="order_refunded", order_ref=purchase.order_ref)


def on_erase(state: LoyaltyState, *, customer: Customer, **_: Any) -> None:
    """Erasure: cancel pending mails, drop rendered mails, payloads, error texts and engagement of the customer.

    A transport's error text (``Message.last_error`` and the ``detail`` of the
    message history) can quote the address or name, so both are cleared.
    """
    ptable = table_of(Purchase)
    state.session.execute(update(ptable).where(ptable.c.customer_id == customer.id,
                                               ptable.c.planned_at.is_(None)).values(planned_at=utcnow()))
    outbox.cancel_pending(state, reason="erased", customer_id=customer.id)
    table = table_of(Message)
    state.session.execute(update(table).where(table.c.customer_id == customer.id).values(
        payload={}, to_address=None, subject=None, body_text=None, body_html=None, links=None,
        last_error=None, opened_at=None, clicked_at=None))
    events = table_of(MessageEvent)
    state.session.execute(update(events).where(
        events.c.message_id.in_(select(table.c.id).where(table.c.customer_id == customer.id)),
        events.c.detail.is_not(None)).values(detail=None))
    state.session.execute(delete(table_of(Engagement)).where(table_of(Engagement).c.customer_id == customer.id))


def on_export(state: LoyaltyState, *, customer: Customer, data: dict[str, Any], **_: Any) -> None:
    """Export: every message (with its history and rendered mail) and every open/click."""
    messages = state.session.execute(select(Message).where(Message.customer_id == customer.id)
                                     .order_by(Message.id)).unique().scalars().all()
    data["messages"] = [{
        "kind": m.kind, "status": m.status, "reason": m.reason, "order_ref": m.order_ref,
        "due_at": m.due_at.isoformat(), "sent_at": m.sent_at.isoformat() if m.sent_at else None,
        "message_id": m.message_id, "to": m.to_address, "subject": m.subject, "body_text": m.body_text,
        "history": [{"at": e.at.isoformat(), "action": e.action, "reason": e.reason, "detail": e.detail}
                    for e in m.events],
    } for m in messages]
    engagement = state.session.execute(select(Engagement).where(Engagement.customer_id == customer.id)
                                       .order_by(Engagement.id)).scalars().all()
    data["engagement"] = [{"event": e.event, "kind": e.kind, "at": e.at.isoformat(), "hour": e.hour,
                           "url": e.url} for e in engagement]


# --------------------------------------------------------------------------- time-based steps
def run_plan(state: LoyaltyState, now: datetime | None = None) -> int:
    """Schedule the time-based steps due at ``now``; returns how many messages were scheduled.

    Idempotent (dedupe keys): running it twice, or from several machines,
    schedules nothing twice.  Commits.
    """
    moment = resolve_now(now)
    begin_write(state)
    count = 0
    try:
        expand_pending(state)
        cfg = step(state, "birthday")
        if cfg is not None:
            count += _birthdays(state, cfg, moment)
        cfg = step(state, "win_back")
        if cfg is not None:
            count += _win_backs(state, cfg, moment)
        cfg = step(state, "replenish")
        if cfg is not None:
            count += _replenish_catch_up(state, cfg, moment)
        # other areas' time-based steps (points expiry, referral rewards, tier windows ...)
        state.run_hooks("plan_tick", now=moment)
    except BaseException:
        state.session.rollback()
        raise
    finish(state, commit=True)
    return count


def _enqueue_with_coupon(state: LoyaltyState, kind: str, customer: Customer, coupon_setting: str, *,
                         due_at: datetime, payload: dict[str, Any], dedupe_key: str, reason: str) -> int:
    """Schedule a time-based step and, only when it is new, its personal coupon; 1 if scheduled."""
    message = outbox.enqueue(state, kind, customer, due_at=due_at, payload=payload, dedupe_key=dedupe_key,
                             reason=reason)
    if message is None:   # already scheduled by an earlier tick: no second coupon
        return 0
    extra = _coupon(state, coupon_setting, customer, due_at, kind)
    if extra:
        message.payload = {**message.payload, **extra}
    return 1


def _birthday_days(today: date, catch_up: int) -> list[date]:
    return [today - timedelta(days=k) for k in range(max(catch_up, 0) + 1)]


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def local_time_on(day: date, hour: float, zone: ZoneInfo) -> datetime:
    """``hour`` o'clock shop time on ``day``, in UTC (right on DST days, unlike midnight + hours)."""
    days, minutes = divmod(round(hour * 60), 24 * 60)
    local = datetime.combine(day + timedelta(days=days), time(minutes // 60, minutes % 60), tzinfo=zone)
    return local.astimezone(timezone.utc)


def _birthdays(state: LoyaltyState, cfg: dict[str, Any], now: datetime) -> int:
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    today = local_date(now, zone)
    count = 0
    for day in _birthday_days(today, int(cfg.get("catch_up_days") or 0)):
        due = local_time_on(day, float(cfg.get("hour") or 0), zone)
        if due > now and day != today:
            continue
        matches = [and_(extract("month", Customer.birthday) == day.month,
                        extract("day", Customer.birthday) == day.day)]
        if day.month == 2 and day.day == 28 and not _is_leap(day.year):
            matches.append(and_(extract("month", Customer.birthday) == 2, extract("day", Customer.birthday) == 29))
        customers = state.session.execute(select(Customer).where(
            Customer.birthday.is_not(None), Customer.erased_at.is_(None), Customer.email.is_not(None),
            or_(*matches))).scalars().all()
        for customer in customers:
            count += _enqueue_with_coupon(
                state, "birthday", customer, "LOYALTY_BIRTHDAY_COUPON", due_at=due,
                payload={"day": day.isoformat()}, dedupe_key=f"birthday:{customer.id}:{day.year}",
                reason="birthday")
    return count


def _win_backs(state: LoyaltyState, cfg: dict[str, Any], now: datetime) -> int:
    min_days = float(cfg.get("min_days") or 0)
    max_days = float(cfg.get("max_days") or 3650)
    factor = float(state.config["LOYALTY_WIN_BACK_FACTOR"])
    one_timer = float(state.config["LOYALTY_WIN_BACK_DAYS"])
    mtable = table_of(Message)
    already = exists().where(mtable.c.customer_id == Customer.id, mtable.c.kind == "win_back",
                             mtable.c.first_due_at >= Customer.last_purchase_at)
    candidates = state.session.execute(select(Customer).where(
        Customer.erased_at.is_(None), Customer.email.is_not(None), Customer.last_purchase_at.is_not(None),
        Customer.first_purchase_at.is_not(None),
        Customer.last_purchase_at < now - timedelta(days=min_days),
        Customer.last_purchase_at > now - timedelta(days=max_days), ~already)).scalars().all()
    count = 0
    for customer in candidates:
        assert customer.last_purchase_at is not None and customer.first_purchase_at is not None
        silence = (now - customer.last_purchase_at).total_seconds() / 86400
        if customer.orders_count >= 2 and customer.last_purchase_at > customer.first_purchase_at:
            usual = (customer.last_purchase_at - customer.first_purchase_at).total_seconds() / 86400 \
                / (customer.orders_count - 1)
            threshold = max(factor * usual, min_days)
            why = f"silent {silence:.0f}d > {factor:g} x usual {usual:.0f}d"
        else:
            threshold = max(one_timer, min_days)
            why = f"one-time buyer silent {silence:.0f}d > {threshold:.0f}d"
        if silence <= threshold:
            continue
        count += _enqueue_with_coupon(
            state, "win_back", customer, "LOYALTY_WIN_BACK_COUPON", due_at=now,
            payload={"days_silent": int(silence), "last_purchase_at": customer.last_purchase_at.isoformat()},
            dedupe_key=f"win_back:{customer.id}:{customer.last_purchase_at.isoformat()}", reason=why[:200])
    return count


def _replenish_catch_up(state: LoyaltyState, cfg: dict[str, Any], now: datetime) -> int:
    """Replenish reminders of items recorded while the step was off (or before it existed)."""
    lead = int(cfg.get("lead_days") or 0)
    stale = outbox.KINDS["replenish"].stale_after_days or 21
    ptable, itable, mtable = table_of(Purchase), table_of(PurchaseItem), table_of(Message)
    scheduled = exists().where(mtable.c.dedupe_key == "replenish:" + itable.c.id.cast(String(20)))
    window_start = now - timedelta(days=stale + 730)
    rows = state.session.execute(select(itable.c.id, ptable.c.id).select_from(
        itable.join(ptable, itable.c.purchase_id == ptable.c.id)).where(
        itable.c.replenish_after_days.is_not(None), ptable.c.placed_at > window_start,
        ptable.c.refunded_total < ptable.c.total, ~scheduled)).all()
    count = 0
    for item_id, purchase_id in rows:
        item = state.session.get(PurchaseItem, item_id)
        purchase = state.session.get(Purchase, purchase_id)
        assert item is not None and purchase is not None and item.replenish_after_days is not None
        due = purchase.placed_at + timedelta(days=max(item.replenish_after_days - lead, 0))
        if due > now or now > due + timedelta(days=stale):
            continue
        if purchase.customer.erased_at is not None:
            continue
        if _schedule_replenish(state, cfg, purchase.customer, purchase, item) is not None:
            count += 1
    return count


outbox.register_context("usage_guide", _guide_context)
outbox.register_check("usage_guide", _guide_check)
outbox.register_check("replenish", _bought_again)


def setup(state: LoyaltyState) -> None:
    """Register the plan's checkout hooks, erase/export hooks and the CLI commands."""
    for name in (state.config.get("LOYALTY_PLAN") or {}):
        if name not in DEFAULT_PLAN:
            raise InvalidInput.field("LOYALTY_PLAN", f"Unknown plan step {name!r}.")
        step(state, name)
    state.add_hook("refund", on_refund)
    state.add_hook("erase", on_erase)
    state.add_hook("export", on_export)
    state.extras.setdefault("plan.guides", GuideRegistry())
