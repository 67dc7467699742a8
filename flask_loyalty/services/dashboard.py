"""Figures for the shop owner's dashboard, computed set-wise in SQL.

Everything here works without a request (the dashboard pages, the CLI or a
notebook can call it) and reads with a handful of aggregate queries whose
cost does not grow with the number of customers shown: no per-customer
Python loops over the whole shop.

Every area is always installed (``extension.AREA_MODULES``), so every
section is always there; a chart is ``None`` only when it has nothing to
show yet (no analytics profiles, no launched campaign).

Definitions (also in the docs):

* **customers** - customers with a first purchase before the period's end;
  **new customers** - those whose first purchase falls in the period.
* **active customers** - customers with at least one order in the period.
* **repeat-purchase rate** - share of the period's buyers who have two or
  more orders by the period's end (a second order in the period, or an
  earlier one; two orders placed at the same instant count as two).
* **purchase frequency** - orders in the period per active customer.
* **average order value** - net revenue (totals minus refunds) per order.
* **revenue from returning customers** - net revenue of orders that were not
  the customer's first (of orders placed at the same instant, the one with
  the lowest id is the first).
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import pairwise
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    and_,
    case,
    distinct,
    func,
    literal,
    or_,
    select,
    text,
    type_coerce,
)

from ..clock import check_date_range, local_date, resolve_now, shop_zone, start_of_local_day
from ..errors import InvalidInput
from ..i18n import N_, gettext
from ..models import (
    Campaign,
    CampaignMember,
    ConsentEvent,
    Coupon,
    Customer,
    CustomerProfile,
    GiftCard,
    GiftCardMovement,
    Message,
    PointsEntry,
    Purchase,
    Redemption,
    SurveyAnswer,
    SurveyResponse,
)
from ..models.base import table_of
from ..models.types import UTCDateTime
from ..money import from_storage
from ..spreadsheet import CsvWriter
from ..state import LoyaltyState
from .analytics import top_buyers

# --------------------------------------------------------------------------- helpers


def area_model(module: str, name: str) -> Any:
    """The mapped class ``flask_loyalty.models.<module>.<name>`` (``None`` for an unknown one).

    Every area ships with the package, so the dashboard no longer needs
    this; it stays for code that looks models up by name.
    """
    try:
        mod = importlib.import_module(f"flask_loyalty.models.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"flask_loyalty.models.{module}":
            raise
        return None
    return getattr(mod, name, None)


def raw(column: Any) -> ColumnElement[int]:
    """A money column as its raw stored integer (1/10,000 units), for exact SQL arithmetic."""
    return type_coerce(column, BigInteger())


def money(value: Any) -> Decimal:
    """A raw stored money sum (or ``None``) as a ``Decimal``."""
    return from_storage(int(value or 0))


def ratio(numerator: Any, denominator: Any) -> Decimal | None:
    """``numerator / denominator`` as a Decimal with 4 places, ``None`` when the denominator is 0."""
    if not denominator:
        return None
    return (Decimal(numerator or 0) / Decimal(denominator)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)


def between(column: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    """``start <= column < end``."""
    return and_(column >= start, column < end)


def count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """``COUNT(CASE WHEN condition THEN 1 END)`` (portable conditional count; 0 without rows).

    Cheaper per row than ``SUM(CASE ... ELSE 0 END)``: no value for the
    rows that do not match, and no ``COALESCE`` for an empty range.
    """
    return func.count(case((condition, 1)))


def sum_if(condition: ColumnElement[bool], value: Any) -> ColumnElement[int]:
    """``SUM(CASE WHEN condition THEN value ELSE 0 END)``."""
    return func.coalesce(func.sum(case((condition, value), else_=0)), 0)


def month_starts(now: datetime, zone_name: str, months: int) -> list[datetime]:
    """The local starts of the last ``months`` calendar months plus the next one's, in UTC (``months + 1`` items)."""
    zone = shop_zone(zone_name)
    today = local_date(now, zone)
    year, month = today.year, today.month
    firsts: list[date] = []
    for back in range(months - 1, -2, -1):
        y, m = divmod((year * 12 + month - 1) - back, 12)
        firsts.append(date(y, m + 1, 1))
    return [start_of_local_day(d, zone) for d in firsts]


def month_key(state: LoyaltyState, column: Any,
              edges: Sequence[datetime]) -> tuple[ColumnElement[Any], Callable[[Any], int]]:
    """An SQL expression naming the shop-local calendar month of ``column``, and a key -> month-index mapper.

    PostgreSQL: ``to_char(timezone(zone, column), 'YYYY-MM')``.  SQLite with
    a UTC shop: the stored text's ``YYYY-MM`` prefix; other zones fall back
    to comparisons with the month starts (:func:`bucket`).  Index ``i``
    means ``edges[i] <= column < edges[i + 1]``.
    """
    zone_name = state.config["LOYALTY_TIMEZONE"]
    dialect = state.session.get_bind().dialect.name
    zone = shop_zone(zone_name)
    labels = {local_date(edge, zone).strftime("%Y-%m"): i for i, edge in enumerate(edges[:-1])}
    if dialect == "postgresql":
        expr: ColumnElement[Any] = func.to_char(func.timezone(zone_name, column), "YYYY-MM")
    elif dialect == "sqlite" and zone_name in ("UTC", "Etc/UTC"):
        expr = func.substr(column, 1, 7)
    else:
        return bucket(column, edges), int
    return expr, lambda key: labels[str(key)]


def bucket(column: Any, edges: Sequence[Any]) -> ColumnElement[int]:
    """Index ``i`` with ``edges[i] <= column < edges[i+1]`` (assumes ``edges[0] <= column < edges[-1]``)."""
    whens = [(column < edge, i) for i, edge in enumerate(edges[1:-1])]
    if not whens:
        return literal(0)
    return case(*whens, else_=len(edges) - 2)


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    """A half-open time range ``[start, end)`` in aware UTC.

    ``zone`` is the shop's time zone (``LOYALTY_TIMEZONE``), in which
    :attr:`previous` counts its days; it takes no part in comparisons.
    """

    start: datetime
    end: datetime
    zone: str = field(default="UTC", compare=False)

    @property
    def previous(self) -> Period:
        """The period of the same length in local wall-clock time right before this one.

        Lengths are measured on the shop's local clock, so the previous
        period of local days ``d1..d2`` is the same number of local days and
        starts at local midnight even when a DST change lies in between.
        """
        zone = shop_zone(self.zone)
        start, end = self.start.astimezone(zone).replace(tzinfo=None), self.end.astimezone(zone).replace(tzinfo=None)
        begin = (start - (end - start)).replace(tzinfo=zone).astimezone(self.start.tzinfo)
        return Period(begin, self.start, self.zone)

    @property
    def last(self) -> datetime:
        """The last instant inside the period (for showing its last day)."""
        return self.end - timedelta(microseconds=1)

    @property
    def days(self) -> int:
        """Length in whole days."""
        return round((self.end - self.start).total_seconds() / 86400)


def period_for(state: LoyaltyState, *, days: int | None = None, start: date | None = None,
               end: date | None = None, now: datetime | None = None) -> Period:
    """The overview period: local days ``start..end`` (inclusive), or the last ``days`` days up to today.

    Days are the shop's local calendar days (``LOYALTY_TIMEZONE``).
    """
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    moment = resolve_now(now)
    if start is not None or end is not None:
        for name, day in (("start", start), ("end", end)):
            if day is not None:
                check_date_range(day, field=name)
        last = end or local_date(moment, zone)
        first = start or last - timedelta(days=int(state.config["LOYALTY_ADMIN_PERIOD_DAYS"]) - 1)
        if first > last:
            raise InvalidInput.field("start", "The start must not be after the end.")
        if (last - first).days > 3660:
            raise InvalidInput.field("start", "At most ten years.")
        return Period(start_of_local_day(first, zone), start_of_local_day(last + timedelta(days=1), zone),
                      state.config["LOYALTY_TIMEZONE"])
    length = int(days if days is not None else state.config["LOYALTY_ADMIN_PERIOD_DAYS"])
    if not 1 <= length <= 3660:
        raise InvalidInput.field("days", "Between 1 and 3660 days.")
    today = local_date(moment, zone)
    return Period(start_of_local_day(today - timedelta(days=length - 1), zone),
                  start_of_local_day(today + timedelta(days=1), zone), state.config["LOYALTY_TIMEZONE"])


# --------------------------------------------------------------------------- metrics

KINDS = ("count", "money", "percent", "number", "nps")


@dataclass
class Metric:
    """One overview figure for the period and the previous period.

    ``kind`` says how to show it: ``count``, ``money`` (Decimal in the shop's
    currency), ``percent`` (a fraction 0..1), ``number`` (a ratio such as
    orders per customer) or ``nps`` (-100..100).  ``better`` is ``"up"`` when
    a larger value is good, ``"down"`` when smaller is good.  ``label`` and
    ``note`` are English msgids, translated where they are shown (``note``
    with the ``%(name)s`` values of ``note_vars``).
    """

    key: str
    label: str
    kind: str
    value: Any
    previous: Any = None
    better: str = "up"
    note: str | None = None
    note_vars: dict[str, Any] = field(default_factory=dict)

    @property
    def change(self) -> Decimal | None:
        """``value - previous`` (``None`` when either is missing)."""
        if self.value is None or self.previous is None:
            return None
        return Decimal(self.value) - Decimal(self.previous)

    @property
    def trend(self) -> str:
        """``"up"``, ``"down"`` or ``"flat"`` (``""`` when there is nothing to compare)."""
        change = self.change
        if change is None:
            return ""
        return "up" if change > 0 else "down" if change < 0 else "flat"


@dataclass
class Overview:
    """The overview page: the period, its metrics grouped by section, and the mail funnel.

    Section titles and funnel steps are English msgids, translated where they are shown.
    """

    period: Period
    currency: str
    sections: dict[str, list[Metric]] = field(default_factory=dict)
    funnel: list[tuple[str, int, int | None]] | None = None

    def metric(self, key: str) -> Metric:
        """The metric named ``key`` (``KeyError`` if absent)."""
        for metrics in self.sections.values():
            for m in metrics:
                if m.key == key:
                    return m
        raise KeyError(key)


def overview(state: LoyaltyState, period: Period) -> Overview:
    """Every overview figure for ``period`` and the period before it.

    Most sections read both periods in one pass: their queries range over
    ``[previous.start, end)`` and split the rows with ``CASE`` at the
    period's start.  The orders are scanned once per period instead (see
    :func:`_orders_in`).  On PostgreSQL the transaction runs without JIT
    (:func:`no_jit`).
    """
    currency = state.config["LOYALTY_CURRENCY"]
    result = Overview(period=period, currency=currency)
    no_jit(state)
    sent, funnel = _mail_counts(state, period)
    result.sections[N_("Customers and orders")] = _purchase_metrics(state, period, currency)
    result.sections[N_("Survey")] = _survey_metrics(state, period, sent)
    result.sections[N_("Coupons")] = _coupon_metrics(state, period)
    result.sections[N_("Outstanding balances")] = _liability_metrics(state, period)
    result.sections[N_("Mail")] = _mail_metrics(state, period, funnel)
    result.funnel = _funnel_steps(funnel)
    return result


def no_jit(state: LoyaltyState) -> None:
    """PostgreSQL: no JIT compilation for the rest of this transaction (``SET LOCAL jit = off``).

    The dashboard's aggregates run for tens to hundreds of milliseconds, but
    their correlated probes give them estimated costs far above PostgreSQL's
    JIT thresholds: compiling them (with inlining and optimization) took up
    to 0.4 s per query, longer than running them.  Other databases: nothing.
    """
    if state.session.get_bind().dialect.name == "postgresql":
        state.session.execute(text("SET LOCAL jit = off"))


def _split(column: Any, period: Period) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """``(in the period, in the previous period)`` for rows already limited to ``[previous.start, end)``."""
    return column >= period.start, column < period.start


def _both(column: Any, period: Period) -> ColumnElement[bool]:
    """``previous.start <= column < end``: the rows of both periods."""
    return between(column, period.previous.start, period.end)


def _pairs(row: Sequence[Any]) -> list[tuple[int, int]]:
    """``[a, b, c, d, ...]`` as ``[(a, b), (c, d), ...]`` of ints (``None`` read as 0)."""
    values = [int(v or 0) for v in row]
    return list(zip(values[::2], values[1::2], strict=True))


def _orders_in(state: LoyaltyState, window: Period, currency: str, up_to_now: bool) -> tuple[int, int, int]:
    """``(orders, distinct customers, net revenue in raw units)`` placed in ``window`` (an index-only scan).

    When no order is placed at or after the window's end (``up_to_now``, the
    usual "up to today" window), the buyers are simply the customers whose
    last purchase is in the window: an index range count instead of a
    DISTINCT over orders.  (Both periods in one scan with ``CASE`` would read
    the same rows and cost more per row, so each window has its own scan.)
    """
    p = table_of(Purchase).c
    c = table_of(Customer).c
    buyers: Any = literal(0) if up_to_now else func.count(distinct(p.customer_id))
    row = state.session.execute(select(
        func.count(), buyers, sum_if(p.currency == currency, raw(p.total) - raw(p.refunded_total)),
    ).where(between(p.placed_at, window.start, window.end))).one()
    active = int(row[1] or 0)
    if up_to_now:
        active = int(state.session.execute(select(func.count()).where(
            between(c.last_purchase_at, window.start, window.end))).scalar_one())
    return int(row[0] or 0), active, int(row[2] or 0)


def _new_in(state: LoyaltyState, window: Period, currency: str) -> tuple[int, int, int | None]:
    """``(new customers, of them with one order only by the window's end, net of their first orders)``.

    New customers come from the first-purchase index, which also holds
    ``orders_count``: a customer with one order has no second one, so only
    the others need a probe of their orders.  On SQLite each new customer's
    first order's net is one covering-index probe; on PostgreSQL it is
    ``None`` here and :func:`_first_nets` joins both periods at once.
    """
    p = table_of(Purchase).c
    c = table_of(Customer).c
    first = c.first_purchase_at
    net = raw(p.total) - raw(p.refunded_total)
    # a second order by the window's end, even one placed at the very instant of the first (an index probe
    # of at most two rows)
    second = (select(literal(1)).where(p.customer_id == c.id, p.placed_at >= first, p.placed_at < window.end)
              .order_by(p.placed_at).limit(1).offset(1).exists())
    single = func.coalesce(func.sum(case((c.orders_count == 1, 1), (second, 0), else_=1)), 0)
    new = between(first, window.start, window.end)
    if state.session.get_bind().dialect.name == "sqlite":
        # the first order is the lowest id among those placed at the first purchase's instant
        first_net = (select(case((p.currency == currency, net), else_=0)).where(
            p.placed_at == first, p.customer_id == c.id).order_by(p.id).limit(1).scalar_subquery())
        row = state.session.execute(select(func.count(), single, func.coalesce(func.sum(first_net), 0))
                                    .where(new)).one()
        return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)
    row = state.session.execute(select(func.count(), single).where(new)).one()
    return int(row[0] or 0), int(row[1] or 0), None


def _first_nets(state: LoyaltyState, period: Period, currency: str) -> tuple[int, int]:
    """Net of the first orders of the customers new in the period and in the previous one (one hash join).

    Of orders placed at the same instant only the lowest id is the first one.
    """
    p = table_of(Purchase).c
    c = table_of(Customer).c
    tie = table_of(Purchase).alias("tie").c
    first = c.first_purchase_at
    net = raw(p.total) - raw(p.refunded_total)
    earlier_tie = select(literal(1)).where(tie.customer_id == p.customer_id, tie.placed_at == p.placed_at,
                                           tie.id < p.id).exists()
    row = state.session.execute(
        select(sum_if(first >= period.start, net), sum_if(first < period.start, net))
        .select_from(table_of(Customer).join(table_of(Purchase), and_(p.customer_id == c.id, p.placed_at == first)))
        .where(_both(first, period), _both(p.placed_at, period), p.currency == currency, ~earlier_tie)).one()
    return _pairs(row)[0]


def _purchase_metrics(state: LoyaltyState, period: Period, currency: str) -> list[Metric]:
    """Order figures of both periods from a few cheap queries per period (no per-order join).

    An active customer is a repeat buyer unless the period holds their very
    first order and they had no other order by the period's end; such
    customers are new in the period, a small set found through the
    first-purchase index.  Likewise revenue from returning customers is the
    period's revenue minus the first orders of its new customers.
    """
    c = table_of(Customer).c
    p = table_of(Purchase).c
    prev = period.previous
    latest = state.session.execute(select(func.max(p.placed_at))).scalar_one()
    orders, active, rev_raw = _orders_in(state, period, currency, latest is None or latest < period.end)
    orders_prev, active_prev, rev_prev_raw = _orders_in(state, prev, currency, latest is None or latest < prev.end)
    new, single, first_now = _new_in(state, period, currency)
    new_prev, single_prev, first_before = _new_in(state, prev, currency)
    if first_now is None or first_before is None:
        first_now, first_before = _first_nets(state, period, currency)
    first_raw, first_prev_raw = first_now, first_before
    customers, customers_prev = _pairs(state.session.execute(
        select(func.count(), count_if(c.first_purchase_at < prev.end))
        .where(c.first_purchase_at < period.end)).one())[0]
    repeat, repeat_prev = active - single, active_prev - single_prev
    rev, rev_prev = money(rev_raw), money(rev_prev_raw)
    ret, ret_prev = money(rev_raw - first_raw), money(rev_prev_raw - first_prev_raw)

    def aov(revenue: Decimal, n: int) -> Decimal | None:
        return (revenue / n).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN) if n else None

    return [
        Metric("customers", N_("Customers"), "count", customers, customers_prev,
               note=N_("customers with a purchase before the period's end")),
        Metric("new_customers", N_("New customers"), "count", new, new_prev),
        Metric("active_customers", N_("Active customers"), "count", active, active_prev,
               note=N_("bought in the period")),
        Metric("repeat_rate", N_("Repeat-purchase rate"), "percent", ratio(repeat, active),
               ratio(repeat_prev, active_prev), note=N_("share of the period's buyers with two or more orders")),
        Metric("orders", N_("Orders"), "count", orders, orders_prev),
        Metric("frequency", N_("Purchase frequency"), "number", ratio(orders, active), ratio(orders_prev, active_prev),
               note=N_("orders per active customer")),
        Metric("revenue", N_("Revenue"), "money", rev, rev_prev, note=N_("net of refunds")),
        Metric("aov", N_("Average order value"), "money", aov(rev, orders), aov(rev_prev, orders_prev)),
        Metric("returning_revenue", N_("Revenue from returning customers"), "money", ret, ret_prev),
        Metric("returning_share", N_("Share of revenue from returning customers"), "percent",
               ratio(rev_raw - first_raw, rev_raw), ratio(rev_prev_raw - first_prev_raw, rev_prev_raw)),
    ]


def points_value(state: LoyaltyState) -> tuple[int, Decimal]:
    """``(points, value)`` of ``LOYALTY_POINTS_REDEMPTION``: how much a number of points is worth."""
    rule = state.config.get("LOYALTY_POINTS_REDEMPTION") or {"points": 100, "value": "5.00"}
    return int(rule["points"]), Decimal(str(rule["value"]))


def _liability_metrics(state: LoyaltyState, period: Period) -> list[Metric]:
    e = table_of(PointsEntry).c
    c = table_of(Customer).c
    # Balances now, minus what changed since each period's end (an index range scan on the ledger's time).
    now_total = int(state.session.execute(select(func.coalesce(func.sum(c.points_balance), 0))).scalar_one())
    since = state.session.execute(select(
        sum_if(e.created_at >= period.end, e.delta), func.coalesce(func.sum(e.delta), 0),
    ).where(e.created_at >= period.previous.end)).one()
    points, points_prev = now_total - int(since[0] or 0), now_total - int(since[1] or 0)
    per, value = points_value(state)

    def worth(n: int) -> Decimal:
        return (Decimal(n) * value / per).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)

    g = table_of(GiftCard).c
    m = table_of(GiftCardMovement).c
    currency = state.config["LOYALTY_CURRENCY"]
    # The movement ledger sums to the balance, so the balance at any moment is a sum of movements.
    row = state.session.execute(
        select(*(sum_if(and_(m.created_at < end, or_(g.expires_at.is_(None), g.expires_at > end)), raw(m.amount))
                 for end in (period.end, period.previous.end)))
        .select_from(table_of(GiftCardMovement).join(table_of(GiftCard), g.id == m.gift_card_id))
        .where(g.currency == currency, or_(g.expires_at.is_(None), g.expires_at > period.previous.end))).one()
    return [
        Metric("points_outstanding", N_("Points outstanding"), "count", points, points_prev, better="down",
               note=N_("at the period's end")),
        Metric("points_liability", N_("Points liability"), "money", worth(points), worth(points_prev), better="down",
               note=N_("points at their redemption value")),
        Metric("gift_card_liability", N_("Gift-card liability"), "money", money(row[0]), money(row[1]),
               better="down", note=N_("unspent, unexpired gift-card balances")),
    ]


def _coupon_metrics(state: LoyaltyState, period: Period) -> list[Metric]:
    cp = table_of(Coupon).c
    r = table_of(Redemption).c
    currency = state.config["LOYALTY_CURRENCY"]
    issued_now, issued_prev = _split(cp.created_at, period)
    # "used by the end of the period it was issued in"
    end = case((issued_now, literal(period.end, UTCDateTime())), else_=literal(period.start, UTCDateTime()))
    used = select(literal(1)).where(r.coupon_id == cp.id, r.released_at.is_(None), r.created_at < end).exists()
    issued = _pairs(state.session.execute(select(
        count_if(issued_now), count_if(issued_prev),
        count_if(and_(issued_now, used)), count_if(and_(issued_prev, used)),
    ).where(_both(cp.created_at, period))).one())
    used_now, used_prev = _split(r.created_at, period)
    # every redemption counts; only those in the shop's currency add to the discount cost
    in_currency = r.currency == currency
    uses = _pairs(state.session.execute(select(
        count_if(used_now), count_if(used_prev),
        sum_if(and_(used_now, in_currency), raw(r.discount)), sum_if(and_(used_prev, in_currency), raw(r.discount)),
    ).where(r.released_at.is_(None), _both(r.created_at, period))).one())
    (n, n_prev), (redeemed, redeemed_prev) = issued
    (u, u_prev), (cost, cost_prev) = uses
    return [
        Metric("coupons_issued", N_("Coupons issued"), "count", n, n_prev),
        Metric("coupon_redemption_rate", N_("Coupon redemption rate"), "percent", ratio(redeemed, n),
               ratio(redeemed_prev, n_prev), note=N_("coupons issued in the period and used by its end")),
        Metric("redemptions", N_("Coupon redemptions"), "count", u, u_prev),
        Metric("discount_cost", N_("Discount cost"), "money", money(cost), money(cost_prev), better="down",
               note=N_("discounts granted on orders in the period")),
    ]


def plus_days(state: LoyaltyState, column: Any, days: int) -> ColumnElement[Any]:
    """``column + days`` in SQL (PostgreSQL interval arithmetic, SQLite ``datetime()``)."""
    if state.session.get_bind().dialect.name == "sqlite":
        shifted: ColumnElement[Any] = func.strftime("%Y-%m-%d %H:%M:%f", column, f"+{int(days)} days")
        return shifted
    moved: ColumnElement[Any] = column + func.make_interval(0, 0, 0, int(days))
    return moved


def nps_of(promoters: int, detractors: int, answers: int) -> int | None:
    """Net Promoter Score -100..100 (rounded half away from zero), ``None`` without answers."""
    if not answers:
        return None
    value = Decimal(100 * (promoters - detractors)) / Decimal(answers)
    return int(value.quantize(Decimal(1), rounding="ROUND_HALF_UP"))


#: ``((marketing mails sent, survey invitations sent), ...)`` as ``(period, previous)`` pairs.
SentCounts = tuple[tuple[int, int], tuple[int, int]]

#: ``((sent, opened, clicked, bought), (the same for the previous period))`` of marketing mails.
FunnelCounts = tuple[tuple[int, ...], tuple[int, ...]]


def _mails_in(state: LoyaltyState, window: Period) -> tuple[int, int, int, int, int]:
    """``(survey invitations, marketing mails, opened, clicked, bought)`` sent in ``window``.

    One range scan of the sent-mail index, which holds each mail's first
    open and first click (kept by tracking), plus one purchase probe per
    clicked marketing mail: "bought" is a purchase by the recipient within
    ``LOYALTY_ADMIN_ATTRIBUTION_DAYS`` after the first click.
    """
    m = table_of(Message).c
    p = table_of(Purchase).c
    days = int(state.config["LOYALTY_ADMIN_ATTRIBUTION_DAYS"])
    marketing = m.marketing.is_(True)
    bought = (select(literal(1)).where(p.customer_id == m.customer_id, p.placed_at >= m.clicked_at,
                                       p.placed_at < plus_days(state, m.clicked_at, days)).exists())
    row = state.session.execute(select(
        count_if(m.kind == "survey_invite"), count_if(marketing),
        count_if(and_(marketing, m.opened_at.is_not(None))), count_if(and_(marketing, m.clicked_at.is_not(None))),
        # CASE stops at the first match, so only clicked marketing mails pay for the probe
        func.count(case((~marketing, None), (m.clicked_at.is_(None), None), (bought, 1))),
    ).where(m.status == "sent", between(m.sent_at, window.start, window.end))).one()
    invites, mails, opened, clicked, buys = (int(v or 0) for v in row)
    return invites, mails, opened, clicked, buys


def _mail_counts(state: LoyaltyState, period: Period) -> tuple[SentCounts, FunnelCounts]:
    """Survey invitations sent and the marketing-mail funnel of the period and the previous one.

    One scan per period (see :func:`_mails_in`): splitting a scan of both
    periods with ``CASE`` costs more per row than the second range scan
    (SQLite, 365 days: 260-300 ms in one scan, 130-145 ms in two).
    """
    now, before = _mails_in(state, period), _mails_in(state, period.previous)
    return ((now[1], before[1]), (now[0], before[0])), (now[1:], before[1:])


def _survey_metrics(state: LoyaltyState, period: Period, sent: SentCounts) -> list[Metric]:
    r = table_of(SurveyResponse).c
    a = table_of(SurveyAnswer).c
    joined = table_of(SurveyResponse).outerjoin(table_of(SurveyAnswer),
                                                and_(a.response_id == r.id, a.question == "recommend"))
    now, prev = _split(r.answered_at, period)
    answered = a.number.is_not(None)
    row = state.session.execute(select(
        count_if(now), count_if(prev), count_if(and_(now, answered)), count_if(and_(prev, answered)),
        count_if(and_(now, a.number >= 9)), count_if(and_(prev, a.number >= 9)),
        count_if(and_(now, a.number <= 6)), count_if(and_(prev, a.number <= 6)),
    ).select_from(joined).where(_both(r.answered_at, period))).one()
    (responses, responses_prev), (n, n_prev), (pro, pro_prev), (det, det_prev) = _pairs(row)
    invites, invites_prev = sent[1]
    return [
        Metric("survey_responses", N_("Survey responses"), "count", responses, responses_prev),
        Metric("nps", N_("Net Promoter Score"), "nps", nps_of(pro, det, n), nps_of(pro_prev, det_prev, n_prev),
               note=N_("% promoters (9-10) minus % detractors (0-6); the arrow is the trend")),
        Metric("response_rate", N_("Survey response rate"), "percent", ratio(responses, invites),
               ratio(responses_prev, invites_prev), note=N_("responses per survey invitation sent in the period")),
    ]


def _mail_metrics(state: LoyaltyState, period: Period, funnel: FunnelCounts) -> list[Metric]:
    (sent, opened, clicked, bought), (sent_p, opened_p, clicked_p, bought_p) = funnel
    e = table_of(ConsentEvent).c
    now, prev = _split(e.created_at, period)
    withdrawn = and_(e.purpose == "email_marketing", e.action == "withdrawn")
    unsubscribes, unsubscribes_prev = _pairs(state.session.execute(select(
        count_if(and_(now, withdrawn)), count_if(and_(prev, withdrawn))).where(_both(e.created_at, period))).one())[0]
    return [
        Metric("mails_sent", N_("Marketing mails sent"), "count", sent, sent_p),
        Metric("open_rate", N_("Open rate"), "percent", ratio(opened, sent), ratio(opened_p, sent_p)),
        Metric("click_rate", N_("Click rate"), "percent", ratio(clicked, sent), ratio(clicked_p, sent_p)),
        Metric("mail_conversion", N_("Bought after a click"), "percent", ratio(bought, sent), ratio(bought_p, sent_p),
               note=N_("a purchase within %(days)d days of the click"),
               note_vars={"days": int(state.config["LOYALTY_ADMIN_ATTRIBUTION_DAYS"])}),
        Metric("unsubscribes", N_("Unsubscribes"), "count", unsubscribes, unsubscribes_prev, better="down",
               note=N_("withdrawals of e-mail marketing consent")),
    ]


def mail_funnel(state: LoyaltyState, period: Period) -> list[tuple[str, int, int | None]]:
    """Marketing mails sent in the period -> opened -> clicked -> bought: ``[(step, count, previous count)]``.

    A click counts as an open too (images are often blocked); "bought" is a
    purchase by the recipient within ``LOYALTY_ADMIN_ATTRIBUTION_DAYS`` after
    their first click.
    """
    no_jit(state)
    return _funnel_steps(_mail_counts(state, period)[1])


def _funnel_steps(counts: FunnelCounts) -> list[tuple[str, int, int | None]]:
    now, before = counts
    steps = (N_("Sent"), N_("Opened"), N_("Clicked"), N_("Bought"))
    return [(step, now[i], before[i]) for i, step in enumerate(steps)]


# --------------------------------------------------------------------------- tables and charts


def cell_text(value: Any) -> str:
    """How a table cell is written, identically in the HTML table and in the CSV file."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def percent(value: Decimal | None) -> str:
    """A fraction as a percentage with one decimal (``"42.5%"``), ``""`` for ``None``."""
    if value is None:
        return ""
    return f"{(value * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN)}%"


@dataclass
class Table:
    """A data table shown under a chart and offered as CSV (the two are always the same cells)."""

    caption: str
    columns: list[str]
    rows: list[list[Any]]

    def text_rows(self) -> list[list[str]]:
        """Every cell as text, as shown and as exported."""
        return [[cell_text(v) for v in row] for row in self.rows]

    def to_csv(self) -> str:
        """The table as CSV (header row first)."""
        buffer = io.StringIO()
        writer = CsvWriter(buffer, lineterminator="\r\n")
        writer.writerow(self.columns)
        writer.writerows(self.text_rows())
        return buffer.getvalue()


@dataclass
class Chart:
    """A chart: its name (URL part), title, a short explanation, SVG markup and the data table."""

    name: str
    title: str
    description: str
    svg: str
    table: Table


ChartBuilder = Callable[[LoyaltyState, datetime], "Chart | None"]


def cohort_chart(state: LoyaltyState, now: datetime, *, months: int = 12) -> Chart:
    """Monthly cohort retention: of the customers who first bought in month M, the share buying in M+k."""
    from . import charts

    edges = month_starts(now, state.config["LOYALTY_TIMEZONE"], months)
    p = table_of(Purchase).c
    c = table_of(Customer).c
    cohort_of, cohort_index = month_key(state, c.first_purchase_at, edges)
    month_of, month_index = month_key(state, p.placed_at, edges)
    sizes = {cohort_index(k): int(n) for k, n in state.session.execute(
        select(cohort_of, func.count()).where(c.first_purchase_at >= edges[0], c.first_purchase_at < edges[-1])
        .group_by(cohort_of)).all()}
    # distinct (customer, month) pairs first: a cheap grouping on the customer's purchase index order
    pairs = (select(p.customer_id.label("cid"), month_of.label("month"))
             .where(p.customer_id.in_(select(c.id).where(c.first_purchase_at >= edges[0],
                                                          c.first_purchase_at < edges[-1])),
                    p.placed_at >= edges[0], p.placed_at < edges[-1])
             .group_by(p.customer_id, month_of).subquery())
    active = state.session.execute(
        select(cohort_of, pairs.c.month, func.count())
        .select_from(pairs.join(table_of(Customer), c.id == pairs.c.cid))
        .group_by(cohort_of, pairs.c.month)).all()
    counts = {(cohort_index(a), month_index(b)): int(n) for a, b, n in active}
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    labels = [local_date(edge, zone).strftime("%Y-%m") for edge in edges[:-1]]
    grid: list[list[Decimal | None]] = []
    rows: list[list[Any]] = []
    for i, label in enumerate(labels):
        size = sizes.get(i, 0)
        shares: list[Decimal | None] = []
        for k in range(months):
            if i + k >= months:
                shares.append(None)
            else:
                shares.append(ratio(counts.get((i, i + k), 0), size) if size else None)
        grid.append(shares)
        rows.append([label, size, *[percent(s) for s in shares]])
    columns = [gettext("Cohort"), gettext("Customers"), *[gettext("Month %(n)d", n=k) for k in range(months)]]
    table = Table(gettext("Share of each monthly cohort buying again in later months"), columns, rows)
    svg = charts.heatmap(labels, [f"+{k}" for k in range(months)], grid,
                         title=gettext("Monthly cohort retention"), x_label=gettext("Months since first purchase"),
                         y_label=gettext("First purchase"))
    return Chart("cohorts", gettext("Cohort retention"),
                 gettext("Each row is the customers who first bought in that month; each cell the share of them "
                         "who bought again k months later."), svg, table)


def pareto_chart(state: LoyaltyState, now: datetime, *, steps: int = 20, mark: Decimal = Decimal("0.3")) -> Chart:
    """Cumulative revenue share of customers ranked by what they spent, with the top-30% mark."""
    from . import charts

    spend = spent_by_customer(state)
    ranked = select(spend.c.spent, func.ntile(steps).over(order_by=spend.c.spent.desc()).label("tile")).subquery()
    rows_db = state.session.execute(
        select(ranked.c.tile, func.count(), func.sum(ranked.c.spent)).group_by(ranked.c.tile)
        .order_by(ranked.c.tile)).all()
    customers = sum(int(r[1]) for r in rows_db)
    revenue = sum(int(r[2] or 0) for r in rows_db)
    points: list[tuple[Decimal, Decimal]] = [(Decimal(0), Decimal(0))]
    rows: list[list[Any]] = []
    seen_customers = 0
    seen_revenue = 0
    for _tile, n, spent in rows_db:
        seen_customers += int(n)
        seen_revenue += int(spent or 0)
        x = ratio(seen_customers, customers) or Decimal(0)
        y = ratio(seen_revenue, revenue) or Decimal(0)
        points.append((x, y))
        rows.append([percent(x), seen_customers, money(seen_revenue), percent(y)])
    mark_share = _share_at(points, mark)
    svg = charts.pareto(points, mark=mark, mark_share=mark_share, title=gettext("Revenue concentration"),
                        x_label=gettext("Share of customers (best first)"))
    table = Table(gettext("Cumulative share of revenue by the top customers (top %(top)s: %(share)s of revenue)",
                          top=percent(mark), share=percent(mark_share)),
                  [gettext("Top customers"), gettext("Customers"), gettext("Revenue"), gettext("Share of revenue")],
                  rows)
    description = gettext("Customers ranked by net spend: how much of the revenue the best customers bring.")
    if _profiles(state) is not None:
        profit_share, revenue_share = top_profit_shares(state, mark)
        description += " " + gettext(
            "Ranked by the profit they brought (analytics profiles), the top %(top)s bring %(profit)s of the "
            "profit and %(revenue)s of the revenue.",
            top=percent(mark), profit=percent(profit_share), revenue=percent(revenue_share))
    return Chart("pareto", gettext("Pareto curve"), description, svg, table)


def spent_by_customer(state: LoyaltyState) -> Any:
    """A subquery ``(customer_id, spent)``: each customer's net spend (raw units) in ``LOYALTY_CURRENCY``.

    Summed from the orders in the shop's currency (``Customer.total_spent``
    adds up every currency), so a customer who only bought in other
    currencies is not in it.  One index-only scan of the purchases' covering
    dashboard index; on SQLite the grouping key is ``customer_id + 0`` so
    that the planner does not walk the per-customer index for its order and
    fetch every order row instead.
    """
    p = table_of(Purchase).c
    key: ColumnElement[Any] = p.customer_id
    if state.session.get_bind().dialect.name == "sqlite":
        key = p.customer_id + 0
    return (select(key.label("customer_id"), func.sum(raw(p.total) - raw(p.refunded_total)).label("spent"))
            .where(p.currency == state.config["LOYALTY_CURRENCY"]).group_by(key).subquery())


def top_profit_shares(state: LoyaltyState, mark: Decimal) -> tuple[Decimal, Decimal]:
    """``(profit share, revenue share)`` of the top ``mark`` of buyers ranked by profit, from the profiles.

    The same buyers, order and rounding as ``analytics.pareto(top_share=mark)``
    (whose shares are floats), without the 100-point curve it also builds,
    which the chart does not show: two aggregates instead of two window passes.
    """
    pc = table_of(CustomerProfile).c
    buyers = pc.frequency > 0
    n, revenue, profit = state.session.execute(
        select(func.count(), func.sum(raw(pc.monetary)), func.sum(raw(pc.historical_clv))).where(buyers)).one()
    count = top_buyers(float(mark), int(n or 0))
    top = (select(raw(pc.monetary).label("revenue"), raw(pc.historical_clv).label("profit")).where(buyers)
           .order_by(pc.historical_clv.desc(), pc.monetary.desc(), pc.customer_id).limit(count).subquery())
    top_revenue, top_profit = state.session.execute(select(func.sum(top.c.revenue), func.sum(top.c.profit))).one()

    def share(part: Any, whole: Any) -> Decimal:
        if whole is None or int(whole) <= 0:
            return Decimal(0)
        value = min(max(Decimal(int(part or 0)) / Decimal(int(whole)), Decimal(0)), Decimal(1))
        return Decimal(str(float(value)))   # as analytics reports it (a float), so both show the same percentage

    return share(top_profit, profit), share(top_revenue, revenue)


def _share_at(points: list[tuple[Decimal, Decimal]], x: Decimal) -> Decimal | None:
    """Linear interpolation of the curve ``points`` at ``x``."""
    if len(points) < 2:
        return None
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 <= x <= x1:
            if x1 == x0:
                return y1
            return (y0 + (y1 - y0) * (x - x0) / (x1 - x0)).quantize(Decimal("0.0001"))
    return points[-1][1]


CLV_EDGES = (0, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def clv_chart(state: LoyaltyState, now: datetime) -> Chart:
    """How many customers fall in each band of lifetime value (predicted when profiles exist, else historical)."""
    from . import charts

    profile = _profiles(state)
    if profile is not None:
        pc = table_of(profile).c
        value_col = raw(pc.total_clv)
        source = select(value_col.label("v")).where(pc.frequency > 0).subquery()
        basis = gettext("lifetime (profit so far + predicted)")
    else:
        spend = spent_by_customer(state)
        source = select(spend.c.spent.label("v")).subquery()
        basis = gettext("historical spend")
    scale = 10_000
    edges = [e * scale for e in CLV_EDGES]
    v = source.c.v
    band = case((v < 0, -1), *[(v < edge, i) for i, edge in enumerate(edges[1:])], else_=len(edges) - 1)
    counts: dict[int, int] = {int(k): int(n) for k, n in state.session.execute(
        select(band, func.count()).group_by(band)).all()}
    currency = state.config["LOYALTY_CURRENCY"]
    labels = [gettext("below 0")] if -1 in counts else []
    for i in range(len(CLV_EDGES)):
        if i + 1 < len(CLV_EDGES):
            labels.append(f"{CLV_EDGES[i]}–{CLV_EDGES[i + 1]}")
        else:
            labels.append(f"{CLV_EDGES[i]}+")
    values = ([counts[-1]] if -1 in counts else []) + [int(counts.get(i, 0)) for i in range(len(CLV_EDGES))]
    total = sum(values)
    rows = [[f"{label} {currency}", n, percent(ratio(n, total))] for label, n in zip(labels, values, strict=True)]
    svg = charts.bars(labels, values,
                      title=gettext("Customer lifetime value (%(basis)s, %(currency)s)", basis=basis,
                                    currency=currency),
                      x_label=gettext("Lifetime value (%(currency)s)", currency=currency),
                      y_label=gettext("Customers"))
    return Chart("clv", gettext("Lifetime value distribution"),
                 gettext("Customers by lifetime value band: %(basis)s.", basis=basis), svg,
                 Table(gettext("Customers by lifetime value: %(basis)s", basis=basis),
                       [gettext("Band"), gettext("Customers"), gettext("Share")], rows))


def funnel_chart(data: Overview) -> Chart | None:
    """The overview's mail funnel (sent -> opened -> clicked -> bought) as a chart with its table."""
    from . import charts

    if not data.funnel:
        return None
    first = data.funnel[0][1]
    rows = [[gettext(step), n, percent(ratio(n, first)), "" if prev is None else prev]
            for step, n, prev in data.funnel]
    svg = charts.funnel([gettext(s) for s, _n, _p in data.funnel], [n for _s, n, _p in data.funnel],
                        title=gettext("Mail funnel"))
    return Chart("funnel", gettext("Mail funnel"),
                 gettext("Marketing mails sent in the period, how many were opened, clicked, and followed by a "
                         "purchase."),
                 svg, Table(gettext("Mail funnel in the period"),
                            [gettext("Step"), gettext("Mails"), gettext("Share of sent"), gettext("Previous period")],
                            rows))


def nps_chart(state: LoyaltyState, now: datetime, *, months: int = 12) -> Chart:
    """Monthly Net Promoter Score over the last ``months`` months."""
    from . import charts

    response, answer = SurveyResponse, SurveyAnswer
    edges = month_starts(now, state.config["LOYALTY_TIMEZONE"], months)
    r = table_of(response).c
    a = table_of(answer).c
    month, month_index = month_key(state, r.answered_at, edges)
    rows_db = state.session.execute(
        select(month, func.count(), count_if(a.number >= 9), count_if(a.number <= 6))
        .select_from(table_of(answer).join(table_of(response), r.id == a.response_id))
        .where(a.question == "recommend", a.number.is_not(None), r.answered_at >= edges[0], r.answered_at < edges[-1])
        .group_by(month)).all()
    by_month = {month_index(k): (int(n), int(pro), int(det)) for k, n, pro, det in rows_db}
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    labels = [local_date(edge, zone).strftime("%Y-%m") for edge in edges[:-1]]
    values: list[int | None] = []
    rows: list[list[Any]] = []
    for i, label in enumerate(labels):
        n, pro, det = by_month.get(i, (0, 0, 0))
        score = nps_of(pro, det, n)
        values.append(score)
        rows.append([label, n, pro, n - pro - det, det, "" if score is None else score])
    svg = charts.line([lb[2:] for lb in labels], values, title=gettext("Net Promoter Score by month"), y_min=-100,
                      y_max=100, y_format="{:+.0f}", y_label="NPS")
    return Chart("nps", gettext("NPS over time"),
                 gettext("Net Promoter Score of each month's survey answers (-100 to +100)."), svg,
                 Table(gettext("Net Promoter Score by month"),
                       [gettext("Month"), gettext("Answers"), gettext("Promoters"), gettext("Passives"),
                        gettext("Detractors"), "NPS"], rows))


def _profiles(state: LoyaltyState) -> Any:
    """The profile model once analytics has computed at least one profile (else ``None``)."""
    if state.session.execute(select(literal(1)).select_from(table_of(CustomerProfile)).limit(1)).first() is None:
        return None
    return CustomerProfile


def rfm_chart(state: LoyaltyState, now: datetime) -> Chart | None:
    """Customers by recency score (rows) and frequency score (columns), from the analytics profiles."""
    from . import charts

    profile = _profiles(state)
    if profile is None:
        return None
    pc = table_of(profile).c
    rows_db = state.session.execute(
        select(pc.r_score, pc.f_score, func.count(), func.sum(raw(pc.monetary)))
        .where(pc.r_score.is_not(None), pc.f_score.is_not(None)).group_by(pc.r_score, pc.f_score)).all()
    counts = {(int(r), int(f)): (int(n), int(m or 0)) for r, f, n, m in rows_db}
    top = max((n for n, _m in counts.values()), default=0)
    r_scores, f_scores = [5, 4, 3, 2, 1], [1, 2, 3, 4, 5]
    grid = [[ratio(counts.get((r, f), (0, 0))[0], top) if top else Decimal(0) for f in f_scores] for r in r_scores]
    cell_labels = [[str(counts.get((r, f), (0, 0))[0]) for f in f_scores] for r in r_scores]
    rows = [[f"R{r}", *[counts.get((r, f), (0, 0))[0] for f in f_scores]] for r in r_scores]
    svg = charts.heatmap([f"R{r}" for r in r_scores], [f"F{f}" for f in f_scores], grid, cell_labels=cell_labels,
                         title=gettext("Customers by recency (R) and frequency (F) score"),
                         x_label=gettext("Frequency score (5 = most orders)"), y_label=gettext("Recency"))
    segs = state.session.execute(select(pc.segment, func.count()).where(pc.segment.is_not(None))
                                 .group_by(pc.segment).order_by(func.count().desc())).all()
    summary = ", ".join(f"{name}: {n}" for name, n in segs)
    return Chart("rfm", gettext("RFM segment grid"),
                 gettext("Recency score 5 bought most recently; frequency score 5 buys most often. Segments: "
                         "%(segments)s", segments=summary),
                 svg, Table(gettext("Customers by recency and frequency score"),
                            [gettext("Recency"), *[f"F{f}" for f in f_scores]], rows))


STAGES = ("trust", "relationship", "reward")
#: How the stage funnel names each stage (English msgids).
STAGE_NAMES = {"trust": N_("Trust"), "relationship": N_("Relationship"), "reward": N_("Reward")}


def stage_chart(state: LoyaltyState, now: datetime) -> Chart | None:
    """The loyalty stage funnel: customers who reached trust, then relationship, then reward."""
    from . import charts

    profile = _profiles(state)
    if profile is None:
        return None
    pc = table_of(profile).c
    counts = {str(k): int(n) for k, n in state.session.execute(
        select(pc.stage, func.count()).group_by(pc.stage)).all()}
    at = [counts.get(stage, 0) for stage in STAGES]
    reached = [sum(at[i:]) for i in range(len(STAGES))]
    total = reached[0]
    rows = [[stage, at[i], reached[i], percent(ratio(reached[i], total))] for i, stage in enumerate(STAGES)]
    svg = charts.funnel([gettext(STAGE_NAMES[s]) for s in STAGES], reached, title=gettext("Loyalty stages"))
    return Chart("stages", gettext("Stage funnel"),
                 gettext("Earn trust, deepen the relationship, then reward: how many customers reached each stage."),
                 svg, Table(gettext("Customers by loyalty stage"),
                            [gettext("Stage"), gettext("At this stage"), gettext("Reached"), gettext("Share reached")],
                            rows))


def uplift_chart(state: LoyaltyState, now: datetime, *, limit: int = 8) -> Chart | None:
    """Purchase rate of each launched campaign's offered group against its random holdout, in the campaign window."""
    from . import charts

    campaign, member = Campaign, CampaignMember
    c = table_of(campaign).c
    cm = table_of(member).c
    p = table_of(Purchase).c
    latest = select(c.id).where(c.status == "launched").order_by(c.starts_at.desc(), c.id.desc()).limit(limit)
    ids = [int(i) for i in state.session.execute(latest).scalars()]
    if not ids:
        return None
    start = func.coalesce(c.launched_at, c.starts_at)
    bought = (select(literal(1)).where(p.customer_id == cm.customer_id, p.placed_at >= start,
                                       p.placed_at < c.ends_at).exists())
    rows_db = state.session.execute(
        select(c.id, c.name, cm.grp, func.count(), count_if(bought))
        .select_from(table_of(member).join(table_of(campaign), c.id == cm.campaign_id))
        .where(cm.campaign_id.in_(ids)).group_by(c.id, c.name, cm.grp)).all()
    stats: dict[int, dict[str, Any]] = {}
    for cid, name, grp, n, b in rows_db:
        stats.setdefault(int(cid), {"name": name})[str(grp)] = (int(n), int(b))
    names: list[str] = []
    treated: list[Decimal] = []
    held: list[Decimal] = []
    rows: list[list[Any]] = []
    for cid in reversed(ids):
        if cid not in stats:
            continue
        entry = stats[cid]
        tn, tb = entry.get("treatment", (0, 0))
        hn, hb = entry.get("holdout", (0, 0))
        rt, rh = ratio(tb, tn), ratio(hb, hn)
        names.append(str(entry["name"]))
        treated.append((rt or Decimal(0)) * 100)
        held.append((rh or Decimal(0)) * 100)
        uplift = None if rt is None or rh is None else rt - rh
        rows.append([entry["name"], tn, tb, percent(rt), hn, hb, percent(rh),
                     "" if uplift is None else f"{(uplift * 100).quantize(Decimal('0.1'))} pp"])
    top = max([float(v) for v in treated + held] + [1.0])
    svg = charts.grouped_bars(names, [(gettext("Offered"), treated), (gettext("Holdout"), held)],
                              title=gettext("Purchase rate during the campaign: offered vs holdout"),
                              y_max=min(100.0, max(10.0, top * 1.2)), y_format="{:.0f}%", value_format="{:.1f}%")
    return Chart("uplift", gettext("Campaign uplift vs holdout"),
                 gettext("Share of each group that bought during the campaign; the difference is what the campaign "
                         "added."),
                 svg, Table(gettext("Campaign purchase rates, offered group against holdout"),
                            [gettext("Campaign"), gettext("Offered"), gettext("Offered who bought"),
                             gettext("Offered rate"), gettext("Holdout"), gettext("Holdout who bought"),
                             gettext("Holdout rate"), gettext("Uplift")], rows))


def chart_builders() -> dict[str, ChartBuilder]:
    """Every chart the dashboard knows, by URL name, in display order."""
    return {
        "cohorts": cohort_chart,
        "nps": nps_chart,
        "pareto": pareto_chart,
        "clv": clv_chart,
        "rfm": rfm_chart,
        "stages": stage_chart,
        "uplift": uplift_chart,
    }


#: What each chart shows, for the chart index (title, one line; English msgids translated where shown).
CHART_TITLES: dict[str, tuple[str, str]] = {
    "cohorts": (N_("Cohort retention"),
        N_("Monthly cohorts: who keeps buying, month after month.")),
    "nps": (N_("NPS over time"),
        N_("Net Promoter Score of each month's survey answers.")),
    "pareto": (N_("Pareto curve"),
        N_("How much of the revenue the best 30% of customers bring.")),
    "clv": (N_("Lifetime value distribution"),
        N_("Customers by lifetime value band.")),
    "rfm": (N_("RFM segment grid"),
        N_("Customers by recency and frequency score, and the named segments.")),
    "stages": (N_("Stage funnel"),
        N_("Trust, relationship, reward: how many customers reached each stage.")),
    "uplift": (N_("Campaign uplift vs holdout"),
        N_("Did the offer make people buy? Offered group against holdout.")),
}


def available_charts() -> list[str]:
    """Every chart's URL name, in display order (cheap: no query)."""
    return list(chart_builders())


def build_chart(state: LoyaltyState, name: str, *, now: datetime | None = None) -> Chart | None:
    """The chart ``name`` (``None`` when it has nothing to show yet); ``KeyError`` for an unknown name."""
    builder = chart_builders()[name]
    return builder(state, resolve_now(now))


def build_charts(state: LoyaltyState, *, now: datetime | None = None) -> list[Chart]:
    """Every available chart."""
    moment = resolve_now(now)
    built = (builder(state, moment) for builder in chart_builders().values())
    return [chart for chart in built if chart is not None]


__all__ = ["Chart", "Metric", "Overview", "Period", "Table", "area_model", "build_chart", "build_charts",
           "overview", "period_for"]
