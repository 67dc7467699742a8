"""The dashboard's lists and look-ups: customer search and timeline, outbox, coupons, gift cards, survey answers.

Every list is paged by keyset (``before=<last id>``), fetching one row more
than a page to know whether there is a next page, so no list needs a
``COUNT(*)`` or an ``OFFSET`` over a large table.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update

from ..clock import local_date, resolve_now, shop_zone
from ..errors import NotFound
from ..i18n import N_, active_translator, gettext
from ..models import (
    ConsentEvent,
    ConsentStatus,
    Coupon,
    Customer,
    CustomerProfile,
    CustomerTier,
    Engagement,
    GiftCard,
    Message,
    MessageEvent,
    PointsEntry,
    Purchase,
    Redemption,
    SurveyAnswer,
    SurveyResponse,
)
from ..models.base import table_of
from ..schemas.fields import ID_MAX, is_ref
from ..spreadsheet import CsvWriter
from ..state import LoyaltyState
from ..transaction import begin_write, finish

#: Most rows of one kind shown on a customer's timeline.
TIMELINE_LIMIT = 200


@dataclass
class Page:
    """One page of a keyset-paged list: ``rows`` and the ``before`` value of the next page (or ``None``).

    ``next_rank`` is the group the next page starts in, for lists paged
    group by group (the survey answers), else ``None``.
    """

    rows: list[Any]
    next_before: int | None
    next_rank: int | None = None


def _page(state: LoyaltyState, query: Select[Any], id_column: Any, *, before: int | None, size: int) -> Page:
    if before is not None:
        query = query.where(id_column < before)
    rows = list(state.session.execute(query.order_by(id_column.desc()).limit(size + 1)).scalars())
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, int(rows[-1].id) if more and rows else None)


# --------------------------------------------------------------------------- customers


def find_customers(state: LoyaltyState, q: str, *, limit: int = 50) -> list[Customer]:
    """Customers whose reference starts with ``q``, or whose e-mail is ``q`` (case-insensitive)."""
    q = q.strip()
    if not q:
        return []
    if "@" in q:
        # lower() on both sides in SQL, so both fold case alike (a scan of the customers: tens of ms at 100k)
        cond = func.lower(Customer.email) == func.lower(q)
    else:
        cond = and_(Customer.ref >= q, Customer.ref < q + "\U0010ffff")
    return list(state.session.execute(select(Customer).where(cond).order_by(Customer.ref).limit(limit)).scalars())


def recent_customers(state: LoyaltyState, *, limit: int = 20) -> list[Customer]:
    """The customers who bought most recently."""
    return list(state.session.execute(
        select(Customer).where(Customer.last_purchase_at.is_not(None))
        .order_by(Customer.last_purchase_at.desc()).limit(limit)).scalars())


def get_customer(state: LoyaltyState, ref: str) -> Customer:
    """The customer ``ref`` (:class:`NotFound` otherwise, without a query for a ref no customer can have)."""
    if not is_ref(ref):
        raise NotFound(f"no customer {ref!r}")
    customer = state.session.execute(select(Customer).where(Customer.ref == ref)).scalar_one_or_none()
    if customer is None:
        raise NotFound(f"no customer {ref!r}")
    return customer


@dataclass
class Event:
    """One line of a customer's timeline."""

    at: datetime
    kind: str
    title: str
    detail: str = ""
    status: str = ""


@dataclass
class CustomerView:
    """Everything the customer page shows."""

    customer: Customer
    events: list[Event]
    profile: dict[str, Any] | None = None
    consent: dict[str, str] = field(default_factory=dict)
    tier: str | None = None
    engagement: dict[str, int] = field(default_factory=dict)


def _money(amount: Decimal, currency: str) -> str:
    """Money in the dashboard's locale during a dashboard request, else ``"12.50 EUR"``."""
    tr = active_translator()
    return tr.money(amount, currency) if tr is not None else f"{amount} {currency}"


def customer_view(state: LoyaltyState, ref: str) -> CustomerView:
    """The customer's timeline (newest first), profile, stage with reasons, consent and tier."""
    customer = get_customer(state, ref)
    session = state.session
    events: list[Event] = []
    cid = customer.id
    for p in session.execute(select(Purchase).where(Purchase.customer_id == cid)
                             .order_by(Purchase.placed_at.desc()).limit(TIMELINE_LIMIT)).scalars():
        detail = gettext("%(channel)s, %(points)s points", channel=p.channel, points=p.points_earned)
        if p.refunded_total:
            detail += "; " + gettext("refunded %(amount)s", amount=_money(p.refunded_total, p.currency))
        events.append(Event(p.placed_at, "purchase",
                            gettext("Order %(order)s: %(amount)s", order=p.order_ref,
                                    amount=_money(p.total, p.currency)),
                            detail,
                            "refunded" if p.refunded_total >= p.total and p.total else ""))
    entries = list(session.execute(select(PointsEntry).where(PointsEntry.customer_id == cid)
                                   .order_by(PointsEntry.id.desc()).limit(TIMELINE_LIMIT)).scalars())
    wanted = {e.purchase_id for e in entries if e.purchase_id}
    orders = dict(session.execute(select(Purchase.id, Purchase.order_ref).where(Purchase.id.in_(wanted))).all()
                  ) if wanted else {}
    for e in entries:
        order = " " + gettext("(order %(order)s)", order=orders.get(e.purchase_id, "?")) if e.purchase_id else ""
        kind = "refund" if e.reason == "refund" else "points"
        delta = f"{e.delta:+d}"
        title = (gettext("Refund: %(delta)s points", delta=delta) if kind == "refund"
                 else gettext("%(delta)s points: %(reason)s", delta=delta, reason=e.reason)) + order
        note = gettext("balance %(balance)s", balance=e.balance_after) + (f"; {e.note}" if e.note else "")
        events.append(Event(e.created_at, kind, title, note))
    events += _coupon_events(state, customer)
    events += _message_events(state, customer)
    events += _consent_events(state, customer)
    events += _survey_events(state, customer)
    view = CustomerView(customer, events)
    view.consent = _consent_states(state, customer)
    view.profile = _profile(state, customer)
    view.tier = _tier(state, customer)
    view.engagement = _engagement(state, customer)
    view.events.sort(key=lambda ev: ev.at, reverse=True)
    return view


def _coupon_events(state: LoyaltyState, customer: Customer) -> list[Event]:
    coupon = Coupon
    redemption = Redemption
    events: list[Event] = []
    for c in state.session.execute(select(coupon).where(coupon.customer_ref == customer.ref)
                                   .order_by(coupon.id.desc()).limit(TIMELINE_LIMIT)).scalars():
        status = "revoked" if c.revoked_at else ("used" if c.max_uses and c.uses >= c.max_uses else "")
        events.append(Event(c.created_at, "coupon",
                            gettext("Coupon %(code)s issued: %(offer)s", code=c.code, offer=coupon_value(c)),
                            gettext("campaign %(campaign)s", campaign=c.campaign) if c.campaign else "", status))
    for r in state.session.execute(select(redemption).where(redemption.customer_ref == customer.ref)
                                   .order_by(redemption.id.desc()).limit(TIMELINE_LIMIT)).scalars():
        events.append(Event(r.created_at, "coupon",
                            gettext("Coupon %(code)s used on order %(order)s", code=r.code, order=r.order_ref),
                            gettext("discount %(amount)s", amount=_money(r.discount, r.currency)),
                            "released" if r.released_at else ""))
        if r.released_at:
            events.append(Event(r.released_at, "coupon", gettext("Coupon %(code)s released (order %(order)s)",
                                                                 code=r.code, order=r.order_ref)))
    card = GiftCard
    for g in state.session.execute(select(card).where(card.customer_ref == customer.ref)
                                   .order_by(card.id.desc()).limit(TIMELINE_LIMIT)).scalars():
        events.append(Event(g.created_at, "gift_card",
                            gettext("Gift card %(code)s issued: %(amount)s", code=g.code[:4] + "…",
                                    amount=_money(g.initial_amount, g.currency)),
                            gettext("balance %(balance)s", balance=_money(g.balance, g.currency))))
    return events


def _message_events(state: LoyaltyState, customer: Customer) -> list[Event]:
    message = Message
    history = MessageEvent
    engagement = Engagement
    events: list[Event] = []
    rows = state.session.execute(
        select(history, message.kind, message.id).join(message, message.id == history.message_id)
        .where(message.customer_id == customer.id).order_by(history.id.desc()).limit(TIMELINE_LIMIT)).all()
    for h, kind, mid in rows:
        why = gettext("why: %(reason)s", reason=h.reason) if h.reason else ""
        if h.detail:
            why = f"{why}; {h.detail}" if why else h.detail
        events.append(Event(h.at, "message", gettext("Mail %(kind)s #%(id)s: %(action)s", kind=kind, id=mid,
                                                      action=h.action), why, h.action))
    for g in state.session.execute(select(engagement).where(engagement.customer_id == customer.id)
                                   .order_by(engagement.id.desc()).limit(TIMELINE_LIMIT)).scalars():
        title = (gettext("Mail %(kind)s #%(id)s opened", kind=g.kind, id=g.message_id) if g.event == "open"
                 else gettext("Mail %(kind)s #%(id)s clicked", kind=g.kind, id=g.message_id))
        events.append(Event(g.at, g.event, title, g.url or ""))
    return events


def _consent_events(state: LoyaltyState, customer: Customer) -> list[Event]:
    event = ConsentEvent
    return [Event(e.created_at, "consent", gettext("Consent %(purpose)s: %(action)s", purpose=e.purpose,
                                                   action=e.action),
                  gettext("source %(source)s, %(method)s", source=e.source, method=e.method)
                  + (", " + gettext("wording v%(version)s", version=e.wording_version) if e.wording_version else ""),
                  e.action)
            for e in state.session.execute(select(event).where(event.customer_id == customer.id)
                                           .order_by(event.id.desc()).limit(TIMELINE_LIMIT)).scalars()]


def survey_value_text(values: dict[str, Any]) -> str:
    """Survey answers as ``question: value`` text (the comment last)."""
    parts = [f"{k}: {v}" for k, v in values.items() if k != "comment"]
    if values.get("comment"):
        parts.append(f"comment: {values['comment']}")
    return "; ".join(parts)


def _survey_events(state: LoyaltyState, customer: Customer) -> list[Event]:
    response = SurveyResponse
    return [Event(r.answered_at, "survey", gettext("Survey answer about order %(order)s", order=r.order_ref),
                  survey_value_text(r.values),
                  "detractor" if r.detractor else "promoter" if r.promoter else "")
            for r in state.session.execute(select(response).where(response.customer_id == customer.id)
                                           .order_by(response.id.desc()).limit(TIMELINE_LIMIT)).scalars()]


def _consent_states(state: LoyaltyState, customer: Customer) -> dict[str, str]:
    status = ConsentStatus
    purposes = list(state.config.get("LOYALTY_CONSENT_PURPOSES") or ())
    result = {p: "none" for p in purposes}
    for s in state.session.execute(select(status).where(status.customer_id == customer.id)).scalars():
        result[s.purpose] = s.status
    return result


PROFILE_FIELDS = ("stage", "segment", "rfm", "recency_days", "frequency", "monetary", "historical_clv",
                  "predicted_clv", "total_clv", "p_alive", "clv_method", "main_channel", "reading_hour",
                  "loyal_indicator", "computed_at")


#: How the customer page names each profile field (English msgids).
PROFILE_LABELS = {"stage": N_("stage"), "segment": N_("segment"), "rfm": N_("RFM"), "recency_days": N_("recency days"),
                  "frequency": N_("frequency"), "monetary": N_("monetary"), "historical_clv": N_("historical CLV"),
                  "predicted_clv": N_("predicted CLV"), "total_clv": N_("total CLV"), "p_alive": N_("P(alive)"),
                  "clv_method": N_("CLV method"), "main_channel": N_("main channel"),
                  "reading_hour": N_("reading hour"), "loyal_indicator": N_("loyal indicator"),
                  "computed_at": N_("computed at")}


def _profile(state: LoyaltyState, customer: Customer) -> dict[str, Any] | None:
    profile = CustomerProfile
    row = state.session.execute(select(profile).where(profile.customer_id == customer.id)).scalar_one_or_none()
    if row is None:
        return None
    data = {name: _shown(getattr(row, name)) for name in PROFILE_FIELDS if hasattr(row, name)}
    reasons = getattr(row, "stage_reasons", None) or getattr(row, "reasons", None)
    if reasons:
        data["reasons"] = [_reason_text(r) for r in reasons]
    return data


def _shown(value: Any) -> Any:
    """Profile values as shown: floats rounded to three places."""
    return round(value, 3) if isinstance(value, float) else value


def _reason_text(code: str) -> str:
    """A stage reason code with its explanation when analytics documents one."""
    try:
        from . import analytics
    except ImportError:  # pragma: no cover - analytics not installed
        return code
    explained = getattr(analytics, "STAGE_REASONS", {})
    if isinstance(explained, dict) and code in explained:
        return f"{code}: {explained[code]}"
    return code


def _tier(state: LoyaltyState, customer: Customer) -> str | None:
    tier = CustomerTier
    return state.session.execute(select(tier.tier).where(tier.customer_id == customer.id)).scalar_one_or_none()


def _engagement(state: LoyaltyState, customer: Customer) -> dict[str, int]:
    engagement = Engagement
    rows = state.session.execute(select(engagement.event, func.count()).where(engagement.customer_id == customer.id)
                                 .group_by(engagement.event)).all()
    return {str(k): int(n) for k, n in rows}


# --------------------------------------------------------------------------- outbox


def outbox_page(state: LoyaltyState, *, kind: str | None = None, status: str | None = None,
                customer: str | None = None, before: int | None = None, size: int = 50) -> Page:
    """Messages newest first, filtered by kind, status and customer reference."""
    message = Message
    query = select(message)
    if kind:
        query = query.where(message.kind == kind)
    if status:
        query = query.where(message.status == status)
    if customer:
        query = query.where(message.customer_id == select(Customer.id).where(Customer.ref == customer)
                            .scalar_subquery())
    return _page(state, query, message.id, before=before, size=size)


def message_kinds(state: LoyaltyState) -> list[str]:
    """Every registered kind of message (for the outbox filter)."""
    try:
        from .outbox import KINDS
    except ImportError:  # pragma: no cover - outbox not installed
        return []
    return sorted(KINDS)


# --------------------------------------------------------------------------- coupons and gift cards


def coupon_value(coupon: Any, *, translate: bool = True) -> str:
    """What a coupon gives, as text (``10% off``, ``5.00 EUR off``, ``free shipping``, ``gift: Mug``).

    In the dashboard's language during a dashboard request unless ``translate`` is false (exports).
    """
    say = gettext if translate else (lambda message, **variables: message % variables)
    if coupon.kind == "percent":
        value = format(coupon.value.normalize(), "f") if coupon.value is not None else "?"
        return say(N_("%(value)s%% off"), value=value)
    if coupon.kind == "fixed":
        amount = _money(coupon.value, coupon.currency) if translate and coupon.value is not None else \
            f"{coupon.value} {coupon.currency}"
        return say(N_("%(amount)s off"), amount=amount)
    if coupon.kind == "free_shipping":
        return say(N_("free shipping"))
    return say(N_("gift: %(gift)s"), gift=coupon.gift_name or coupon.value or "").strip()


#: How each coupon status is shown (English msgids, translated by the coupon list).
COUPON_STATUSES = {"revoked": N_("revoked"), "expired": N_("expired"), "used up": N_("used up"),
                   "not started": N_("not started"), "active": N_("active")}


def coupon_status(coupon: Any, now: datetime) -> str:
    """``revoked``, ``expired``, ``used up``, ``not started`` or ``active`` (keys of :data:`COUPON_STATUSES`)."""
    if coupon.revoked_at is not None:
        return "revoked"
    if coupon.expires_at is not None and coupon.expires_at <= now:
        return "expired"
    if coupon.max_uses is not None and coupon.uses >= coupon.max_uses:
        return "used up"
    if coupon.starts_at is not None and coupon.starts_at > now:
        return "not started"
    return "active"


def _coupon_query(state: LoyaltyState, *, q: str | None, campaign: str | None, customer: str | None,
                  status: str | None, now: datetime) -> Select[Any]:
    coupon = Coupon
    query = select(coupon)
    if q:
        key = "".join(ch for ch in q.upper() if ch not in " -")
        query = query.where(coupon.code_key >= key, coupon.code_key < key + "\U0010ffff")
    if campaign:
        query = query.where(coupon.campaign == campaign)
    if customer:
        query = query.where(coupon.customer_ref == customer)
    if status == "revoked":
        query = query.where(coupon.revoked_at.is_not(None))
    elif status == "expired":
        query = query.where(coupon.revoked_at.is_(None), coupon.expires_at <= now)
    elif status == "used_up":
        query = query.where(coupon.revoked_at.is_(None), coupon.max_uses.is_not(None),
                            coupon.uses >= coupon.max_uses)
    elif status == "active":
        # the status coupon_status shows as "active": not revoked, expired, used up, nor not started yet
        query = query.where(coupon.revoked_at.is_(None),
                            or_(coupon.starts_at.is_(None), coupon.starts_at <= now),
                            or_(coupon.expires_at.is_(None), coupon.expires_at > now),
                            or_(coupon.max_uses.is_(None), coupon.uses < coupon.max_uses))
    return query


def coupons_page(state: LoyaltyState, *, q: str | None = None, campaign: str | None = None,
                 customer: str | None = None, status: str | None = None, before: int | None = None,
                 size: int = 50, now: datetime | None = None) -> Page:
    """Coupons newest first with the filters of the list page."""
    coupon = Coupon
    query = _coupon_query(state, q=q, campaign=campaign, customer=customer, status=status, now=resolve_now(now))
    return _page(state, query, coupon.id, before=before, size=size)


MAIL_MERGE_COLUMNS = ["code", "offer", "kind", "value", "currency", "min_order_total", "valid_from", "valid_until",
                      "customer_ref", "name", "email", "locale", "campaign"]


def coupons_csv(state: LoyaltyState, *, q: str | None = None, campaign: str | None = None,
                customer: str | None = None, status: str | None = None, now: datetime | None = None,
                limit: int = 100_000) -> tuple[str, int]:
    """The filtered coupons as CSV for a postal mail-merge (one row per coupon, with the owner's name).

    Dates are the shop's local dates.  Returns the CSV text and the number of rows.
    """
    moment = resolve_now(now)
    query = _coupon_query(state, q=q, campaign=campaign, customer=customer, status=status, now=moment)
    sub = query.subquery()
    joined = select(sub, Customer.name, Customer.email, Customer.locale).select_from(sub).outerjoin(
        Customer, Customer.ref == sub.c.customer_ref).order_by(sub.c.id).limit(limit)
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    buffer = io.StringIO()
    writer = CsvWriter(buffer, lineterminator="\r\n")
    writer.writerow(MAIL_MERGE_COLUMNS)
    n = 0
    for row in state.session.execute(joined).mappings():
        item = _CouponRow(row)
        writer.writerow([
            row["code"], coupon_value(item, translate=False), row["kind"], "" if row["value"] is None else row["value"],
            row["currency"], "" if row["min_order_total"] is None else row["min_order_total"],
            local_date(row["starts_at"], zone).isoformat() if row["starts_at"] else "",
            local_date(row["expires_at"], zone).isoformat() if row["expires_at"] else "",
            row["customer_ref"] or "", row["name"] or "", row["email"] or "", row["locale"] or "",
            row["campaign"] or ""])
        n += 1
    return buffer.getvalue(), n


class _CouponRow:
    """Attribute access over a coupon row mapping (for :func:`coupon_value`)."""

    def __init__(self, row: Any) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return self._row[name]


def deactivate_coupon(state: LoyaltyState, coupon_id: int, *, now: datetime | None = None,
                      commit: bool = True) -> Any:
    """Withdraw a coupon (it stops working; past redemptions stay).  Returns the coupon, or ``None`` if unknown.

    Uses ``loyalty.coupons.deactivate`` when the coupons area offers one,
    else sets ``revoked_at`` with a conditional update (idempotent).
    """
    coupon = Coupon
    if not isinstance(coupon_id, int) or not 1 <= coupon_id <= ID_MAX:   # would overflow the driver
        raise NotFound(f"no coupon {coupon_id}")
    row = state.session.get(coupon, coupon_id)
    if row is None:
        raise NotFound(f"no coupon {coupon_id}")
    facade = state.extension.coupons
    if hasattr(facade, "deactivate"):
        facade.deactivate(row.code, commit=commit)
    else:
        begin_write(state)
        table = table_of(coupon)
        state.session.execute(update(table).where(table.c.id == coupon_id, table.c.revoked_at.is_(None))
                              .values(revoked_at=resolve_now(now)))
        finish(state, commit=commit)
    state.session.refresh(row)
    return row


def gift_cards_page(state: LoyaltyState, *, customer: str | None = None, before: int | None = None,
                    size: int = 50) -> Page:
    """Gift cards newest first."""
    card = GiftCard
    query = select(card)
    if customer:
        query = query.where(card.customer_ref == customer)
    return _page(state, query, card.id, before=before, size=size)


# --------------------------------------------------------------------------- survey answers


@dataclass
class SurveyRow:
    """One survey response as the answers page lists it."""

    id: int
    answered_at: datetime
    customer_ref: str
    email: str | None
    name: str | None
    order_ref: str
    recommend: int | None
    values: dict[str, Any]

    @property
    def group(self) -> str:
        """``detractor``, ``passive``, ``promoter`` or ``""`` (no recommend answer)."""
        if self.recommend is None:
            return ""
        return "detractor" if self.recommend <= 6 else "promoter" if self.recommend >= 9 else "passive"

    @property
    def comment(self) -> str:
        """The free-text comment, if any."""
        value = self.values.get("comment")
        return value if isinstance(value, str) else ""


GROUPS = (("detractors", 0, 6), ("passives", 7, 8), ("promoters", 9, 10))


def survey_page(state: LoyaltyState, *, group: str | None = None, comments: bool = False,
                source: str | None = None, before: int | None = None, rank: int | None = None,
                size: int = 50) -> Page:
    """Survey responses, detractors first (then passives, promoters, unscored), newest first within each.

    One indexed query per group (``recommend`` answers by score), so the
    first page never sorts every response.  ``rank`` (0 detractors,
    1 passives, 2 promoters, 3 unscored; 0 when not given) and ``before`` (a
    response id) page within that order: the next page starts in group
    ``Page.next_rank`` below id ``Page.next_before``.
    """
    response = SurveyResponse
    answer = SurveyAnswer
    ranks: list[tuple[int, int | None, int | None]] = [
        (i, lo, hi) for i, (name, lo, hi) in enumerate(GROUPS) if group in (None, name)]
    if group is None:
        ranks.append((3, None, None))
    start_rank, start_id = (rank or 0), before
    found: list[tuple[int, int]] = []
    for rank, lo, hi in ranks:
        if rank < start_rank or len(found) > size:
            continue
        if lo is not None and hi is not None:
            query = select(answer.response_id).where(answer.question == "recommend", answer.number.between(lo, hi))
            id_col = answer.response_id
        else:
            scored = select(answer.response_id).where(answer.question == "recommend", answer.number.is_not(None))
            query = select(response.id).where(response.id.not_in(scored))
            id_col = response.id
        if comments:
            query = query.where(id_col.in_(select(answer.response_id).where(
                answer.question == "comment", answer.text.is_not(None), answer.text != "")))
        if source:
            query = query.where(id_col.in_(select(answer.response_id).where(
                answer.question == "source", answer.choice == source)))
        if rank == start_rank and start_id is not None:
            query = query.where(id_col < start_id)
        ids = state.session.execute(query.order_by(id_col.desc()).limit(size + 1 - len(found))).scalars().all()
        found += [(rank, int(i)) for i in ids]
    more = len(found) > size
    found = found[:size]
    rows = {}
    ids = [i for _r, i in found]
    if ids:
        for r in state.session.execute(
                select(response.id, response.answered_at, Customer.ref, Customer.email, Customer.name,
                       Purchase.order_ref)
                .join(Customer, Customer.id == response.customer_id)
                .join(Purchase, Purchase.id == response.purchase_id).where(response.id.in_(ids))).all():
            rows[int(r[0])] = r
    values: dict[int, dict[str, Any]] = {i: {} for i in ids}
    if ids:
        for a in state.session.execute(select(answer).where(answer.response_id.in_(ids))
                                       .order_by(answer.id)).scalars():
            if a.value is not None:
                values[a.response_id][a.question] = a.value
    items = []
    for _rank, i in found:
        r = rows[i]
        rec = values[i].get("recommend")
        items.append(SurveyRow(i, r[1], r[2], r[3], r[4], r[5], rec if isinstance(rec, int) else None, values[i]))
    if more and found:
        return Page(items, found[-1][1], found[-1][0])
    return Page(items, None)


def source_breakdown(state: LoyaltyState) -> list[tuple[str, int]]:
    """How respondents found the shop: ``[(source, responses)]``, most first."""
    answer = SurveyAnswer
    rows = state.session.execute(select(answer.choice, func.count()).where(
        answer.question == "source", answer.choice.is_not(None)).group_by(answer.choice)
        .order_by(func.count().desc(), answer.choice)).all()
    return [(str(k), int(n)) for k, n in rows]


# --------------------------------------------------------------------------- consent


def consent_ledger(state: LoyaltyState, ref: str) -> tuple[Customer, list[Any], dict[str, str]]:
    """A customer's consent ledger (oldest first) and current state per purpose."""
    customer = get_customer(state, ref)
    history = list(state.extension.consent.history(ref))
    return customer, history, _consent_states(state, customer)

