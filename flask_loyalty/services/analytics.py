"""Customer value: RFM, lifetime value, the Pareto report and the loyalty stage.

``loyalty.analytics.recompute()`` rewrites the profile table
(:class:`~flask_loyalty.models.profile.CustomerProfile`) in three steps:

1. **Aggregate in SQL**: one ``GROUP BY`` over the purchases (with their
   coupon discounts; each purchase carries its items' known margin and
   uncosted amount, written by the checkout) gives, per customer, the orders
   kept, net revenue, refunds, margin parts, discounts, first/last purchase,
   distinct purchase days, the value of the first day and orders per channel.
   The result is kept in :class:`~flask_loyalty.models.PurchaseSummary`;
   after the first run only the customers whose ``activity_version`` moved
   are aggregated again (see :func:`_aggregate`; on PostgreSQL a first run
   or a rebuild shares the work between connections, :func:`_rebuild_in_parts`).
2. **Fit the value model** (when numpy/scipy are installed and there is
   enough history): one pass over the aggregated rows (not one query per
   customer) fits BG/NBD and Gamma-Gamma and computes each buyer's
   probability of being alive, expected purchases and predicted value; the
   results go back in bulk (``COPY`` on PostgreSQL).
3. **Score, segment, stage in SQL**: one statement ranks customers into
   quintiles (in the model step, or window functions), names the RFM
   segment, joins engagement, survey and consent, computes historical and
   predicted value (or the heuristic) and the loyalty stage with its reasons,
   and writes every profile (``INSERT ... ON CONFLICT DO UPDATE``; on
   PostgreSQL ``UPDATE ... FROM`` for the profiles that exist, and a first
   run's inserts shared between connections, :func:`_insert_in_parts`).

Definitions (all documented in ``docs/value.md``):

* A purchase is *kept* unless fully refunded.  Recency is in whole UTC days
  since the last kept purchase; frequency counts kept orders; monetary is the
  net revenue (totals minus refunds).
* Scores 1-5: ``1 + 5 * (rank - 1) // buyers`` with ``rank`` the SQL
  ``RANK()`` (ties share the lower score) by last purchase day (R), kept
  orders (F) and net revenue (M); exactly quintiles when values are distinct.
* Named segments: :data:`RFM_SEGMENTS` on R and ``FM = (F + M + 1) // 2``.
* Historical value: the margin on what was kept (items' ``unit_price -
  unit_cost``; ``LOYALTY_DEFAULT_MARGIN`` of the price without a cost, and of
  the total for orders without items, applied at recompute time; scaled by
  the share not refunded)
  minus the coupon discounts on the customer's orders.
* Predicted value: discounted expected purchases over
  ``LOYALTY_CLV_HORIZON_DAYS`` times the expected order value times the
  customer's own profit rate (historical value / revenue, clamped to 0-1).
* Heuristic (too little history, or numpy/scipy missing):
  ``p_alive = 1`` while the days since the last purchase do not exceed the
  customer's usual interval (the horizon for one-day buyers), then
  ``interval / recency``; expected purchases = ``p_alive * purchase days /
  max(tenure, horizon) * horizon``; value per purchase day = revenue / days;
  discounted once at mid-horizon.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from marshmallow import Schema, fields, validate
from sqlalchemy import Float, Integer, bindparam, delete, desc, func, or_, select, text
from sqlalchemy.pool import AssertionPool, SingletonThreadPool, StaticPool
from sqlalchemy.sql.elements import TextClause

from ..clock import resolve_now
from ..errors import InvalidInput, NotFound
from ..i18n import N_
from ..models import Customer, CustomerProfile, ModelFit, Purchase, PurchaseSummary, metadata
from ..models.base import table_of
from ..models.types import UTCDateTime
from ..schemas import load
from ..schemas.fields import AwareDateTime
from ..state import LoyaltyState
from ..transaction import advisory_lock, begin_write, dialect_name, finish
from .base import Facade

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from ..models import Customer as CustomerModel

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: RFM segment -> (label, rule on R and FM = (F + M + 1) // 2), checked top to bottom.
RFM_SEGMENTS: dict[str, tuple[str, str]] = {
    "champions": (N_("Champions"), "R = 5 and FM >= 4"),
    "loyal": (N_("Loyal"), "R in 3-4 and FM >= 4"),
    "potential_loyalists": (N_("Potential loyalists"), "R >= 4 and FM in 2-3"),
    "new": (N_("New"), "R = 5 and FM = 1"),
    "promising": (N_("Promising"), "R = 4 and FM = 1"),
    "need_attention": (N_("Need attention"), "R = 3 and FM = 3"),
    "about_to_sleep": (N_("About to sleep"), "R = 3 and FM <= 2"),
    "cant_lose": (N_("Can't lose"), "R <= 2 and FM = 5"),
    "at_risk": (N_("At risk"), "R <= 2 and FM in 3-4"),
    "hibernating": (N_("Hibernating"), "R = 2 and FM <= 2"),
    "lost": (N_("Lost"), "R = 1 and FM <= 2"),
}

#: Loyalty stages, in the order a shop should act on them.
STAGES: dict[str, str] = {
    "trust": N_("Trust"),
    "relationship": N_("Relationship"),
    "reward": N_("Reward"),
}

#: Reason codes kept in ``stage_reasons`` with their labels.
STAGE_REASONS: dict[str, str] = {
    "no_purchase": N_("No purchase yet"),
    "first_purchase": N_("Bought only once"),
    "dissatisfied": N_("Unhappy in the survey (recommend 0-6 or experience 1-2)"),
    "lapsed": N_("Lapsed (RFM segment hibernating or lost)"),
    "top_value": N_("Among the most valuable customers"),
    "promoter": N_("Would recommend the shop (9-10)"),
    "happy_experience": N_("Rated the experience 4-5"),
    "recent_repeat_buyer": N_("Buys again and bought recently"),
    "repeat_buyer": N_("Has bought more than once"),
    "engaged": N_("Opens or clicks the shop's mails"),
    "subscribed": N_("Subscribed to marketing mails"),
    "loyal_indicator": N_("Subscribed for over six months and bought in that time"),
    "not_top_value": N_("Not yet among the most valuable customers"),
    "satisfaction_unknown": N_("No sign of satisfaction yet"),
}

_SATISFIED = ("(COALESCE(s.survey_recommend, -1) >= 9"
              " OR (s.survey_recommend IS NULL AND COALESCE(s.survey_experience, -1) >= 4)"
              " OR (s.survey_recommend IS NULL AND s.survey_experience IS NULL"
              " AND s.frequency >= 2 AND COALESCE(s.r_score, 0) >= 3))")

#: Stage rules: (stage, gate) checked in order; the first whose gate holds wins.
#: Each stage keeps every one of its reasons whose condition holds.
STAGE_RULES: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("trust",
     "(s.buyer = 0 OR s.frequency = 1 OR s.survey_recommend <= 6 OR s.survey_experience <= 2"
     " OR s.segment IN ('hibernating', 'lost'))",
     [("no_purchase", "s.buyer = 0"),
      ("first_purchase", "s.frequency = 1"),
      ("dissatisfied", "(s.survey_recommend <= 6 OR s.survey_experience <= 2)"),
      ("lapsed", "s.segment IN ('hibernating', 'lost')")]),
    ("reward",
     f"(s.clv_top_share < :top_share AND {_SATISFIED})",
     [("top_value", "s.clv_top_share < :top_share"),
      ("promoter", "s.survey_recommend >= 9"),
      ("happy_experience", "(s.survey_recommend IS NULL AND s.survey_experience >= 4)"),
      ("recent_repeat_buyer", "(s.frequency >= 2 AND s.r_score >= 3)"),
      ("loyal_indicator", "s.loyal_indicator")]),
    ("relationship",
     "(1 = 1)",
     [("repeat_buyer", "s.frequency >= 2"),
      ("engaged", "(COALESCE(s.opens, 0) + COALESCE(s.clicks, 0) > 0)"),
      ("subscribed", "s.consent"),
      ("loyal_indicator", "s.loyal_indicator"),
      ("not_top_value", "s.clv_top_share >= :top_share"),
      ("satisfaction_unknown", f"(s.clv_top_share < :top_share AND NOT {_SATISFIED})")]),
]

PROFILE_COLUMNS = (
    "customer_id", "recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "rfm", "segment",
    "first_purchase_at", "last_purchase_at", "avg_interval_days", "repeat_purchases", "tenure_days",
    "orders_online", "orders_store", "orders_catalog", "orders_phone", "main_channel",
    "opens", "clicks", "reading_hour", "survey_recommend", "survey_experience", "consent", "loyal_indicator",
    "refunds", "discounts", "margin", "historical_clv", "predicted_clv", "total_clv", "clv_top_share",
    "p_alive", "expected_purchases", "expected_order_value", "clv_method", "stage", "stage_reasons",
    "computed_at",
)

_AGG = "loyalty_tmp_value_agg"
_PRED = "loyalty_tmp_value_pred"
_EPOCH_DAY = 86400


@dataclass(frozen=True)
class ParetoPoint:
    """One point of the Pareto curve: the top ``customer_share`` bring these shares."""

    customer_share: float
    revenue_share: float
    profit_share: float


@dataclass(frozen=True)
class ParetoReport:
    """How much of revenue and profit the most valuable customers bring.

    Buyers are ranked by historical lifetime value (profit), then net revenue.
    ``customers`` is how many make up the top ``top_share``; the shares are
    fractions in ``[0, 1]`` (``profit_share`` is 0 when the shop made no
    profit, and capped at 1 when the others lost money).
    """

    top_share: float
    customers: int
    revenue_share: float
    profit_share: float
    buyers: int
    revenue: Decimal
    profit: Decimal
    top_revenue: Decimal
    top_profit: Decimal
    curve: list[ParetoPoint] = field(default_factory=list)


class _RecomputeSchema(Schema):
    now = AwareDateTime(allow_none=True, load_default=None)
    rebuild = fields.Boolean(load_default=False)


class _ParetoSchema(Schema):
    top_share = fields.Float(required=True, validate=validate.Range(min=0, max=1, min_inclusive=False),
                             allow_nan=False)


def _fraction(state: LoyaltyState, key: str, *, upper: float | None = 1.0) -> float:
    raw = state.config[key]
    if isinstance(raw, bool):
        raise InvalidInput.field(key, "Must be a number.")
    try:
        value = float(Decimal(str(raw)))
    except ArithmeticError:
        raise InvalidInput.field(key, "Must be a number.") from None
    if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
        raise InvalidInput.field(key, f"Must be between 0 and {upper}." if upper else "Must not be negative.")
    return value


def _positive_int(state: LoyaltyState, key: str) -> int:
    value = state.config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput.field(key, "Must be a whole number of at least 1.")
    return value


@dataclass(frozen=True)
class _Settings:
    margin: float
    horizon: int
    discount_rate: float
    min_customers: int
    min_repeat: int
    fit_sample: int
    top_share: float
    loyal_days: int
    work_mem: str | None
    connections: int


def _settings(state: LoyaltyState) -> _Settings:
    work_mem = state.config["LOYALTY_RECOMPUTE_WORK_MEM"]
    if work_mem is not None and (not isinstance(work_mem, str) or not work_mem.replace(" ", "").isalnum()):
        raise InvalidInput.field("LOYALTY_RECOMPUTE_WORK_MEM", "Must be like '256MB' or None.")
    return _Settings(
        margin=_fraction(state, "LOYALTY_DEFAULT_MARGIN"),
        horizon=_positive_int(state, "LOYALTY_CLV_HORIZON_DAYS"),
        discount_rate=_fraction(state, "LOYALTY_CLV_DISCOUNT_RATE", upper=None),
        min_customers=_positive_int(state, "LOYALTY_CLV_MIN_CUSTOMERS"),
        min_repeat=_positive_int(state, "LOYALTY_CLV_MIN_REPEAT_CUSTOMERS"),
        fit_sample=_positive_int(state, "LOYALTY_CLV_FIT_SAMPLE"),
        top_share=_fraction(state, "LOYALTY_REWARD_TOP_SHARE"),
        loyal_days=_positive_int(state, "LOYALTY_LOYAL_SUBSCRIBED_DAYS"),
        work_mem=work_mem,
        connections=_positive_int(state, "LOYALTY_RECOMPUTE_CONNECTIONS"),
    )


# --- SQL building blocks ----------------------------------------------------
def _has_columns(table: str, *columns: str) -> bool:
    found = metadata.tables.get(table)
    return found is not None and all(c in found.c for c in columns)


def _day(dialect: str, column: str) -> str:
    """Whole UTC days since 1970-01-01 of a stored datetime column."""
    if dialect == "postgresql":
        return f"(CAST({column} AT TIME ZONE 'UTC' AS DATE) - DATE '1970-01-01')"
    return f"CAST(julianday({column}) - 2440587.5 AS INTEGER)"


#: The purchase aggregates per customer: the columns of :class:`~flask_loyalty.models.PurchaseSummary`
#: but the ``version`` it was computed from.
_AGGREGATES = tuple(c.name for c in table_of(PurchaseSummary).columns if c.name != "version")


def _aggregate_sql(dialect: str, *, until_now: bool = False, customers: str | None = None,
                   few: bool = True, part: tuple[int, int] | None = None) -> str:
    """SELECT of one row of purchase aggregates per customer (the columns of :data:`_AGGREGATES`).

    ``until_now`` leaves out the purchases placed after ``:now``; ``customers``
    names a table whose ``customer_id`` column limits the customers; ``few``
    says they are few enough to read their purchases through the customer
    index (PostgreSQL; else the planner chooses); ``part`` ``(k, n)`` keeps
    the customers whose id is ``k`` modulo ``n``.
    """
    def kept_in(alias: str) -> str:
        return f"({alias}.refunded_total < {alias}.total OR {alias}.total = 0)"

    kept = kept_in("p")
    day = _day(dialect, "p.placed_at")
    kept_share = "CAST(p.total - p.refunded_total AS DOUBLE PRECISION) / p.total"
    discounts_join = ""
    discount = "0"
    if _has_columns("loyalty_redemption", "order_ref", "discount", "released_at"):
        if customers is None:
            discounts_join = ("LEFT JOIN (SELECT r.order_ref AS order_ref, SUM(r.discount) AS discount "
                              "FROM loyalty_redemption r WHERE r.released_at IS NULL GROUP BY r.order_ref) d "
                              "ON d.order_ref = p.order_ref")
            discount = "COALESCE(d.discount, 0)"
        else:   # a few customers: look their orders' redemptions up instead of grouping them all
            discount = ("COALESCE((SELECT SUM(r.discount) FROM loyalty_redemption r "
                        "WHERE r.order_ref = p.order_ref AND r.released_at IS NULL), 0)")
    # SQLite would walk the (customer_id, placed_at) index for the window's order and look every
    # purchase up in the table; reading the table in its own order and sorting is faster
    # (100,000 customers: 4.1 s instead of 5.2-5.7 s for this statement)
    scan_hint = "NOT INDEXED" if dialect == "sqlite" and customers is None else ""
    conditions = []
    purchases = "loyalty_purchase p"
    if until_now:
        conditions.append("p.placed_at <= :now")
    if part is not None:
        conditions.append(_remainder("p.customer_id", part))
    if customers is not None and dialect == "postgresql" and few:
        # each customer's purchases through the customer index (OFFSET 0 keeps the planner from
        # turning this back into a join that scans every purchase, which it prices as cheaper)
        purchases = (f"{customers} t CROSS JOIN LATERAL (SELECT p0.* FROM loyalty_purchase p0 "
                     "WHERE p0.customer_id = t.customer_id OFFSET 0) p")
    elif customers is not None:
        conditions.append(f"p.customer_id IN (SELECT t.customer_id FROM {customers} t)")
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    channels = ", ".join(
        f"SUM(CASE WHEN o.kept = 1 AND o.channel = '{name}' THEN 1 ELSE 0 END) AS orders_{name}"
        for name in ("online", "store", "catalog", "phone"))
    if dialect == "sqlite":
        # The first purchase day's value without a window: SQLite sorts every purchase for a window and
        # then again for the grouping; instead, each customer's first kept day is read back through the
        # (customer_id, placed_at) index (100,000 customers: 1.4 s instead of 1.7 s for this statement).
        first_day = "MIN(CASE WHEN o.kept = 1 THEN o.day END) AS first_day,"
        first_day_value = ""
        window = ""
    else:
        first_day = "MIN(o.first_day) AS first_day,"
        first_day_value = ("SUM(CASE WHEN o.kept = 1 AND o.day = o.first_day THEN o.total - o.refunded_total "
                           "ELSE 0 END)\n         AS first_day_value,")
        window = f",\n         MIN(CASE WHEN {kept} THEN {day} END) OVER (PARTITION BY p.customer_id) AS first_day"
    grouped = f"""
SELECT o.customer_id AS customer_id,
       SUM(o.kept) AS frequency,
       SUM(o.total - o.refunded_total) AS revenue,
       SUM(o.refunded_total) AS refunds,
       SUM(o.known_margin) AS kept_known_margin,
       SUM(o.uncosted) AS kept_uncosted,
       SUM(o.discount) AS discounts,
       {first_day}
       MAX(CASE WHEN o.kept = 1 THEN o.day END) AS last_day,
       COUNT(DISTINCT CASE WHEN o.kept = 1 THEN o.day END) AS days,
       {first_day_value}
       {channels},
       MIN(CASE WHEN o.kept = 1 THEN o.placed_at END) AS first_at,
       MAX(CASE WHEN o.kept = 1 THEN o.placed_at END) AS last_at
FROM (
  SELECT p.customer_id AS customer_id, p.placed_at AS placed_at, p.channel AS channel,
         p.total AS total, p.refunded_total AS refunded_total,
         {day} AS day,
         CASE WHEN {kept} THEN 1 ELSE 0 END AS kept,
         CASE WHEN p.total > 0 THEN p.known_margin * {kept_share} ELSE 0 END AS known_margin,
         CASE WHEN p.total > 0 THEN COALESCE(p.uncosted_total, p.total) * {kept_share} ELSE 0 END AS uncosted,
         {discount} AS discount{window}
  FROM {purchases} {scan_hint}
  {discounts_join}
  {where}
) o
GROUP BY o.customer_id
"""
    if dialect != "sqlite":
        return grouped
    # the kept purchases of the first kept day: placed_at is stored as naive UTC text (as the library
    # writes it), so that day is a range of the (customer_id, placed_at) index
    until = " AND f.placed_at <= :now" if until_now else ""
    return f"""
SELECT g.*, COALESCE((SELECT SUM(f.total - f.refunded_total) FROM loyalty_purchase f
                      WHERE f.customer_id = g.customer_id AND f.placed_at >= date(g.first_at)
                        AND f.placed_at < date(g.first_at, '+1 day')
                        AND {kept_in("f")}{until}), 0) AS first_day_value
FROM ({grouped}) g
"""


def _remainder(column: str, part: tuple[int, int]) -> str:
    """``column % n = k`` for ``part`` ``(k, n)``: the customers of one remainder of the id."""
    return f"{column} % {int(part[1])} = {int(part[0])}"


def _part_filter(column: str, part: tuple[int, int] | None) -> str:
    """`` AND`` :func:`_remainder` for ``part``, or nothing."""
    return "" if part is None else f" AND {_remainder(column, part)}"


def _source_sql(table: str, part: tuple[int, int] | None = None, *, customers: str | None = None) -> str:
    """The aggregates of ``table`` (summary or temporary) as the profile reads them: the margin applied.

    ``part`` limits them to one remainder of the id (see :func:`_part_filter`),
    ``customers`` to the ids in the ``customer_id`` column of that table.
    """
    columns = ", ".join(f"x.{c} AS {c}" for c in _AGGREGATES
                        if c not in ("kept_known_margin", "kept_uncosted"))
    among = "" if customers is None else f" AND x.customer_id IN (SELECT t.customer_id FROM {customers} t)"
    return (f"(SELECT {columns}, x.kept_known_margin + :margin * x.kept_uncosted AS margin FROM {table} x "
            f"WHERE 1 = 1{_part_filter('x.customer_id', part)}{among})")


def _model_input_sql(source: str) -> str:
    """Per buyer, what the model and the ranks are computed from (no NULLs).

    Id, first and last purchase day, distinct purchase days, kept orders,
    net revenue and historical value (raw units), mean repeat day value
    (currency units) and profit rate.  The BG/NBD inputs x, t_x and T follow
    from the days in numpy (:func:`_read_model_input`); the RFM scores and
    the value rank from the rest (:func:`_ranks`), so they need no window
    sorts in SQL.
    """
    return f"""
SELECT CAST(a.customer_id AS INTEGER) AS customer_id,
       CAST(a.first_day AS INTEGER) AS first_day,
       CAST(a.last_day AS INTEGER) AS last_day,
       CAST(a.days AS INTEGER) AS days,
       CAST(a.frequency AS INTEGER) AS frequency,
       CAST(a.revenue AS BIGINT) AS revenue,
       CAST(ROUND(a.margin) AS BIGINT) - CAST(a.discounts AS BIGINT) AS historical,
       CAST(CASE WHEN a.days > 1
                 THEN CAST(a.revenue - a.first_day_value AS DOUBLE PRECISION) / (10000.0 * (a.days - 1))
                 ELSE 0 END AS DOUBLE PRECISION) AS m,
       CAST(CASE WHEN a.revenue > 0 THEN (a.margin - a.discounts) / CAST(a.revenue AS DOUBLE PRECISION)
                 ELSE :margin END AS DOUBLE PRECISION) AS rate
FROM {source} a WHERE a.frequency > 0
"""


def _sources(dialect: str, part: tuple[int, int] | None = None) -> tuple[str, dict[str, str]]:
    """LEFT JOINs of the optional areas (engagement, survey, consent) and their column expressions.

    ``part`` limits each area to the customers of one remainder (see :func:`_part_filter`).
    """
    joins: list[str] = []
    cols = {"opens": "CAST(NULL AS INTEGER)", "clicks": "CAST(NULL AS INTEGER)",
            "reading_hour": "CAST(NULL AS INTEGER)", "survey_recommend": "CAST(NULL AS INTEGER)",
            "survey_experience": "CAST(NULL AS INTEGER)", "consent": "CAST(NULL AS BOOLEAN)", "loyal": "FALSE"}
    if _has_columns("loyalty_engagement", "customer_id", "event", "hour", "at"):
        # one join for the counts and the usual hour: every join here is probed by every customer
        joins.append(f"""
LEFT JOIN (SELECT h.customer_id AS customer_id, SUM(h.opens) AS opens, SUM(h.clicks) AS clicks,
                  MAX(CASE WHEN h.rn = 1 THEN h.hour END) AS hour
           FROM (SELECT e.customer_id AS customer_id, e.hour AS hour,
                        SUM(CASE WHEN e.event = 'open' THEN 1 ELSE 0 END) AS opens,
                        SUM(CASE WHEN e.event = 'click' THEN 1 ELSE 0 END) AS clicks,
                        ROW_NUMBER() OVER (PARTITION BY e.customer_id ORDER BY COUNT(*) DESC, e.hour) AS rn
                 FROM loyalty_engagement e WHERE e.at <= :now{_part_filter("e.customer_id", part)}
                 GROUP BY e.customer_id, e.hour) h
           GROUP BY h.customer_id) eng
  ON eng.customer_id = c.id""")
        cols.update(opens="COALESCE(eng.opens, 0)", clicks="COALESCE(eng.clicks, 0)", reading_hour="eng.hour")
    if (_has_columns("loyalty_survey_answer", "response_id", "question", "number")
            and _has_columns("loyalty_survey_response", "id", "customer_id", "answered_at")):
        joins.append(f"""
LEFT JOIN (SELECT x.customer_id AS customer_id,
                  MAX(CASE WHEN x.question = 'recommend' THEN x.number END) AS recommend,
                  MAX(CASE WHEN x.question = 'experience' THEN x.number END) AS experience
           FROM (SELECT r.customer_id AS customer_id, a.question AS question, a.number AS number,
                        ROW_NUMBER() OVER (PARTITION BY r.customer_id, a.question
                                           ORDER BY r.answered_at DESC, r.id DESC) AS rn
                 FROM loyalty_survey_answer a JOIN loyalty_survey_response r ON r.id = a.response_id
                 WHERE a.question IN ('recommend', 'experience') AND a.number IS NOT NULL
                   AND r.answered_at <= :now{_part_filter("r.customer_id", part)}) x
           WHERE x.rn = 1 GROUP BY x.customer_id) sv
  ON sv.customer_id = c.id""")
        cols.update(survey_recommend="sv.recommend", survey_experience="sv.experience")
    if _has_columns("loyalty_consent_status", "customer_id", "purpose", "status", "since"):
        joins.append(f"""
LEFT JOIN (SELECT cs.customer_id AS customer_id, cs.since AS since FROM loyalty_consent_status cs
           WHERE cs.purpose = 'email_marketing' AND cs.status = 'granted'{_part_filter("cs.customer_id", part)}) con
  ON con.customer_id = c.id""")
        cols.update(
            consent="CASE WHEN con.customer_id IS NOT NULL THEN TRUE ELSE FALSE END",
            loyal="CASE WHEN con.since <= :loyal_cutoff AND a.last_at >= :loyal_cutoff THEN TRUE ELSE FALSE END")
    return "\n".join(joins), cols


#: Stage codes: ``stage index * _STAGE_SPAN + bit mask of the stage's reasons that hold``.
_STAGE_SPAN = 64


def _stage_code_sql() -> str:
    """One integer per scored row ``s``: which stage's gate holds first, and which of its reasons hold.

    Integer arithmetic only; :func:`_stage_lookup_sql` turns codes into the
    stage name and its JSON array of reasons, built once per possible code
    instead of by string concatenation and JSON parsing for every customer
    (a million customers: about 2-3 s less).
    """
    assert all(len(reasons) < 7 for _name, _gate, reasons in STAGE_RULES)
    parts = []
    for index, (_name, gate, reasons) in enumerate(STAGE_RULES):
        bits = " + ".join(f"CASE WHEN {cond} THEN {1 << bit} ELSE 0 END" for bit, (_code, cond) in enumerate(reasons))
        parts.append(f"WHEN {gate} THEN {index * _STAGE_SPAN} + {bits}")
    return "CASE " + " ".join(parts) + " END"


def _lookup_sql(alias: str, columns: tuple[str, ...], rows: list[str]) -> str:
    """A ``VALUES`` list of SQL row literals as the relation ``alias`` with named ``columns``.

    ``column1``, ``column2`` ... are the names both PostgreSQL and SQLite give a ``VALUES`` list's columns.
    """
    names = ", ".join(f"v.column{i} AS {name}" for i, name in enumerate(columns, start=1))
    return f"(SELECT {names} FROM (VALUES {', '.join(rows)}) AS v) {alias}"


def _stage_lookup_sql(dialect: str) -> str:
    """``sr (code, stage, reasons)``: every possible stage code with its stage and reasons (a ``VALUES`` list)."""
    rows = []
    for index, (name, _gate, reasons) in enumerate(STAGE_RULES):
        for mask in range(1 << len(reasons)):
            codes = [code for bit, (code, _cond) in enumerate(reasons) if mask & (1 << bit)]
            array = "[" + ",".join(f'"{code}"' for code in codes) + "]"
            value = f"CAST('{array}' AS JSON)" if dialect == "postgresql" else f"'{array}'"
            rows.append(f"({index * _STAGE_SPAN + mask}, '{name}', {value})")
    return _lookup_sql("sr", ("code", "stage", "reasons"), rows)


def rfm_segment(r_score: int, f_score: int, m_score: int) -> str:
    """The named RFM segment of a buyer's R, F and M scores (1-5), by the rules of :data:`RFM_SEGMENTS`."""
    r, fm = r_score, (f_score + m_score + 1) // 2
    if r == 5 and fm >= 4:
        return "champions"
    if r in (3, 4) and fm >= 4:
        return "loyal"
    if r >= 4 and fm in (2, 3):
        return "potential_loyalists"
    if r == 5 and fm == 1:
        return "new"
    if r == 4 and fm == 1:
        return "promising"
    if r == 3 and fm == 3:
        return "need_attention"
    if r == 3 and fm <= 2:
        return "about_to_sleep"
    if r <= 2 and fm == 5:
        return "cant_lose"
    if r <= 2 and fm >= 3:
        return "at_risk"
    return "hibernating" if r == 2 else "lost"


def _rfm_lookup_sql() -> str:
    """``sg (code, r_score, f_score, m_score, rfm, segment)``: the 125 score triples, each with its segment.

    ``code`` is ``R * 100 + F * 10 + M`` (the model step writes it per buyer).

    Joined once per customer instead of a ``CASE`` over the scores and a
    string concatenation for every one of them.
    """
    rows = [f"({r * 100 + f * 10 + m}, {r}, {f}, {m}, '{r}{f}{m}', '{rfm_segment(r, f, m)}')"
            for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)]
    return _lookup_sql("sg", ("code", "r_score", "f_score", "m_score", "rfm", "segment"), rows)


def _score(column: str) -> str:
    """RFM score 1-5 among buyers: ``1 + 5 * (rank - 1) // buyers`` (ties share the lower score)."""
    return f"1 + (5 * (RANK() OVER (ORDER BY {column}) - 1)) / COUNT(*) OVER ()"


def _profile_sql(dialect: str, source: str, *, with_model: bool, write: str = "upsert",
                 part: tuple[int, int] | None = None) -> str:
    """The statement computing and writing every profile.

    ``write`` is ``"upsert"`` (``INSERT ... SELECT ... ON CONFLICT DO
    UPDATE``: every customer), ``"insert"`` (the same without the conflict
    clause, into an empty table), ``"update"`` (PostgreSQL: ``UPDATE ...
    FROM`` the computed rows: the customers who have a profile) or
    ``"missing"`` (the upsert of the customers who have none).  ``part``
    limits it to the customers of one remainder of the id (``source`` must be
    limited the same way, see :func:`_source_sql`).
    """
    joins, src = _sources(dialect, part)
    greatest_tenure = ("CASE WHEN :now_day - a.first_day > :horizon THEN :now_day - a.first_day "
                       "ELSE :horizon END")
    interval = ("CASE WHEN a.days > 1 THEN CAST(a.last_day - a.first_day AS DOUBLE PRECISION) / (a.days - 1) "
                "ELSE CAST(:horizon AS DOUBLE PRECISION) END")
    recency = "(:now_day - a.last_day)"
    h_alive = f"CASE WHEN {recency} <= {interval} THEN 1.0 ELSE {interval} / {recency} END"
    h_expected = f"({h_alive}) * a.days * CAST(:horizon AS DOUBLE PRECISION) / ({greatest_tenure})"
    h_value = "CAST(a.revenue AS DOUBLE PRECISION) / a.days"
    rate = ("CASE WHEN a.revenue > 0 THEN CASE WHEN a.margin - a.discounts <= 0 THEN 0.0 "
            "WHEN a.margin - a.discounts >= a.revenue THEN 1.0 "
            "ELSE (a.margin - a.discounts) / CAST(a.revenue AS DOUBLE PRECISION) END ELSE :margin END")
    h_clv = f"({h_expected}) * ({h_value}) * ({rate}) * :half_discount"
    if with_model:
        pred_join = f"LEFT JOIN {_PRED} pr ON pr.customer_id = c.id"
        p_alive, expected = "pr.p_alive", "pr.expected_purchases"
        order_value, predicted, method = "pr.expected_order_value", "pr.predicted_clv", "'bgnbd'"
    else:
        pred_join = ""
        p_alive, expected = h_alive, h_expected
        order_value = f"CAST(ROUND({h_value}) AS BIGINT)"
        predicted, method = f"CAST(ROUND({h_clv}) AS BIGINT)", "'heuristic'"
    main_channel = ("CASE WHEN a.frequency IS NULL OR a.frequency = 0 THEN NULL "
                    "WHEN a.orders_online >= a.orders_store AND a.orders_online >= a.orders_catalog "
                    "AND a.orders_online >= a.orders_phone THEN 'online' "
                    "WHEN a.orders_store >= a.orders_catalog AND a.orders_store >= a.orders_phone THEN 'store' "
                    "WHEN a.orders_catalog >= a.orders_phone THEN 'catalog' ELSE 'phone' END")
    fence = "OFFSET 0" if dialect == "postgresql" else "LIMIT -1 OFFSET 0"
    # sorted only where the joins would not already yield customer order (see below)
    order = "ORDER BY s.customer_id" if dialect == "postgresql" and not with_model and write != "update" else ""
    updates = ", ".join(f"{c} = excluded.{c}" for c in PROFILE_COLUMNS if c != "customer_id")
    missing = ("AND NOT EXISTS (SELECT 1 FROM loyalty_customer_profile p0 WHERE p0.customer_id = c.id)"
               if write == "missing" else "")
    # Ranks are computed over narrow rows of the buyers only (b, rk), so the sorts stay small;
    # the wide per-customer row (u) is then only joined and projected.  OFFSET 0 keeps the
    # subqueries from being flattened, so their CASE expressions are computed once per row instead
    # of being inlined into every reference of the stage rules.  The rows are written in customer
    # order: the profile table then stays in that order, and each recompute updates (or checks the
    # foreign key of) neighbouring rows together instead of dirtying pages at random.  With the model,
    # the joins already yield that order (the hash joins are probed by the aggregate, which GROUP BY
    # wrote in customer order; SQLite's plan walks the customers' primary key), so a sort of every wide
    # row would only cost time (1.5 s for a million customers).  Without the model the joins come
    # out in rank order on PostgreSQL, hence the ORDER BY there.
    if with_model:
        # the model step computed the ranks with the predictions (:func:`_ranks`)
        ranks, rank_join = "", ""
        r_score, f_score, m_score, top_share = "sg.r_score", "sg.f_score", "sg.m_score", "pr.clv_top_share"
        rfm_code = "pr.rfm_code"
    else:
        ranks = f"""WITH b AS (
  SELECT a.customer_id AS customer_id, a.last_day AS last_day, a.frequency AS frequency, a.revenue AS revenue,
         CAST(ROUND(a.margin) AS BIGINT) - a.discounts + COALESCE({predicted}, 0) AS total_clv
  FROM {source} a
  WHERE a.frequency > 0
),
rk AS (
  SELECT b.customer_id AS customer_id,
         {_score("b.last_day")} AS r_score,
         {_score("b.frequency")} AS f_score,
         {_score("b.revenue")} AS m_score,
         CAST(RANK() OVER (ORDER BY b.total_clv DESC) - 1 AS DOUBLE PRECISION) / COUNT(*) OVER ()
           AS clv_top_share
  FROM b
)"""
        rank_join = "LEFT JOIN rk ON rk.customer_id = c.id"
        r_score, f_score, m_score, top_share = "rk.r_score", "rk.f_score", "rk.m_score", "rk.clv_top_share"
        rfm_code = "rk.r_score * 100 + rk.f_score * 10 + rk.m_score"
    select = f"""
{ranks}
SELECT s.customer_id, s.recency_days, s.frequency, s.monetary, s.r_score, s.f_score, s.m_score,
       s.rfm, s.segment, s.first_purchase_at, s.last_purchase_at, s.avg_interval_days, s.repeat_purchases,
       s.tenure_days, s.orders_online, s.orders_store, s.orders_catalog, s.orders_phone, s.main_channel,
       s.opens, s.clicks, s.reading_hour, s.survey_recommend, s.survey_experience, s.consent, s.loyal_indicator,
       s.refunds, s.discounts, s.margin, s.historical_clv, s.predicted_clv,
       s.historical_clv + s.predicted_clv AS total_clv, s.clv_top_share,
       s.p_alive, s.expected_purchases, s.expected_order_value, s.clv_method,
       sr.stage AS stage, sr.reasons AS stage_reasons, :computed_at AS computed_at
FROM (
 SELECT s.*, {_stage_code_sql()} AS stage_code
 FROM (
    SELECT c.id AS customer_id,
           CASE WHEN COALESCE(a.frequency, 0) > 0 THEN 1 ELSE 0 END AS buyer,
           {r_score} AS r_score, {f_score} AS f_score, {m_score} AS m_score, {top_share} AS clv_top_share,
           sg.rfm AS rfm, sg.segment AS segment,
           CASE WHEN a.frequency > 0 THEN {recency} END AS recency_days,
           COALESCE(a.frequency, 0) AS frequency,
           COALESCE(a.revenue, 0) AS monetary,
           a.first_at AS first_purchase_at, a.last_at AS last_purchase_at,
           CASE WHEN a.days > 1 THEN {interval} END AS avg_interval_days,
           CASE WHEN a.frequency > 0 THEN a.days - 1 ELSE 0 END AS repeat_purchases,
           CASE WHEN a.frequency > 0 THEN :now_day - a.first_day END AS tenure_days,
           COALESCE(a.orders_online, 0) AS orders_online, COALESCE(a.orders_store, 0) AS orders_store,
           COALESCE(a.orders_catalog, 0) AS orders_catalog, COALESCE(a.orders_phone, 0) AS orders_phone,
           {main_channel} AS main_channel,
           {src["opens"]} AS opens, {src["clicks"]} AS clicks, {src["reading_hour"]} AS reading_hour,
           {src["survey_recommend"]} AS survey_recommend, {src["survey_experience"]} AS survey_experience,
           {src["consent"]} AS consent, {src["loyal"]} AS loyal_indicator,
           COALESCE(a.refunds, 0) AS refunds, COALESCE(a.discounts, 0) AS discounts,
           CAST(ROUND(COALESCE(a.margin, 0)) AS BIGINT) AS margin,
           CAST(ROUND(COALESCE(a.margin, 0)) AS BIGINT) - COALESCE(a.discounts, 0) AS historical_clv,
           CASE WHEN a.frequency > 0 THEN COALESCE({predicted}, 0) ELSE 0 END AS predicted_clv,
           CASE WHEN a.frequency > 0 THEN {p_alive} END AS p_alive,
           CASE WHEN a.frequency > 0 THEN {expected} END AS expected_purchases,
           CASE WHEN a.frequency > 0 THEN {order_value} END AS expected_order_value,
           CASE WHEN a.frequency > 0 THEN {method} END AS clv_method
    FROM loyalty_customer c
    LEFT JOIN {source} a ON a.customer_id = c.id
    {rank_join}
    {pred_join}
    LEFT JOIN {_rfm_lookup_sql()} ON sg.code = {rfm_code}
    {joins}
    WHERE c.erased_at IS NULL {missing}{_part_filter("c.id", part)}
    {fence}
 ) s
 {fence}
) s
JOIN {_stage_lookup_sql(dialect)} ON sr.code = s.stage_code
WHERE 1 = 1
{order}
"""
    if write == "update":
        # A plain UPDATE of the rows that exist costs less than the upsert's per-row conflict
        # handling (speculative insertion, then lock and update): a million profiles, 13.3-14.1 s
        # instead of 15.9-18.0 s for the whole statement.
        assignments = ", ".join(f"{c} = v.{c}" for c in PROFILE_COLUMNS if c != "customer_id")
        return (f"UPDATE loyalty_customer_profile AS p SET {assignments} "
                f"FROM ({select}) AS v ({', '.join(PROFILE_COLUMNS)}) WHERE p.customer_id = v.customer_id")
    # "insert": the table is empty (and only a recompute, one at a time, writes it), so no conflict
    # handling: a million profiles, 1-2 s less than the upsert's speculative insertion
    conflict = "" if write == "insert" else f"ON CONFLICT (customer_id) DO UPDATE SET {updates}"
    return f"""
INSERT INTO loyalty_customer_profile ({", ".join(PROFILE_COLUMNS)})
{select}
{conflict}
"""


def _text(sql: str, **types: Any) -> TextClause:
    clause = text(sql)
    binds = [bindparam(name, type_=type_) for name, type_ in types.items() if f":{name}" in sql]
    return clause.bindparams(*binds) if binds else clause


# --- the value model (numpy/scipy) -------------------------------------------
@dataclass
class _Fit:
    method: str
    reason: str | None
    params: dict[str, float] | None
    customers: int
    repeat_customers: int
    log_likelihood: float | None
    #: The columns of :data:`_PREDICTIONS` as numpy arrays (one element per buyer), when the model was fitted.
    predictions: dict[str, Any] | None = None


#: The model input columns and their numpy types (integers stay exact).
_MODEL_INPUT = {"customer_id": "i4", "first_day": "i4", "last_day": "i4", "days": "i4", "frequency": "i4",
                "revenue": "i8", "historical": "i8", "m": "f8", "rate": "f8"}


def _ranks(data: Any, predicted: Any) -> dict[str, Any]:
    """The buyers' R, F and M scores and value-rank share, exactly as the SQL window functions give them.

    ``RANK()`` is 1 + the number of buyers with a smaller value (ties share
    the lower rank), which is the position of a value's first equal in the
    sorted values: score ``1 + 5 * (rank - 1) // buyers``; ``clv_top_share``
    is the share of buyers with a larger total value (historical + predicted,
    raw units), the same count over the negated totals.
    """
    import numpy as np

    buyers = len(data["customer_id"])

    def below(values: Any) -> Any:
        # one sort; within a run of equal values every element gets the run's first position
        order = np.argsort(values)
        ordered = values[order]
        starts = np.ones(buyers, dtype=bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        first = np.maximum.accumulate(np.where(starts, np.arange(buyers), 0))
        counts = np.empty(buyers, dtype=np.int64)
        counts[order] = first
        return counts

    total = data["historical"] + predicted
    above = below(-total)
    r_score = 1 + (5 * below(data["last_day"])) // max(buyers, 1)
    f_score = 1 + (5 * below(data["frequency"])) // max(buyers, 1)
    m_score = 1 + (5 * below(data["revenue"])) // max(buyers, 1)
    return {"rfm_code": r_score * 100 + f_score * 10 + m_score,
            "clv_top_share": above / float(max(buyers, 1))}


def _read_packed(raw: Any, source: str, margin: float) -> dict[str, Any]:
    """PostgreSQL: the model input columns of ``source`` on the DBAPI connection ``raw``, as numpy arrays.

    One row holding each column as a bytea of packed big-endian values: a
    binary ``COPY`` hands every row to Python separately (a million generator
    steps), this is a few large buffers; the aggregates of one query consume
    the rows in the same order, so the columns line up.
    """
    import numpy as np

    # the parameter is a float we computed: inlined as a literal
    literal = _model_input_sql(source).replace(":margin", repr(float(margin)))
    sends = {"i4": "int4send", "i8": "int8send", "f8": "float8send"}
    packed = ", ".join(f"string_agg({sends[kind]}(i.{name}), ''::bytea) AS {name}"
                       for name, kind in _MODEL_INPUT.items())
    with raw.cursor() as cur:
        cur.execute(f"SELECT {packed} FROM ({literal}) i", binary=True)
        row = cur.fetchone()
    assert row is not None
    return {name: np.frombuffer(value or b"", dtype=">" + kind).astype(kind)
            for (name, kind), value in zip(_MODEL_INPUT.items(), row, strict=True)}


def _read_model_input(state: LoyaltyState, dialect: str, source: str, now_day: int, margin: float,
                      pieces: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The buyers' model inputs: name -> numpy array (read as packed binary columns on PostgreSQL).

    Besides the columns of :data:`_MODEL_INPUT`: the BG/NBD inputs ``x``
    (repeat purchase days), ``t_x`` (days from the first to the last) and
    ``big_t`` (days from the first to ``now_day``, at least ``t_x``), as
    floats.  ``pieces``: the model input already read, one piece per
    remainder of the customer id, by the connections that rebuilt the
    summary (:func:`_rebuild_in_parts`).
    """
    import numpy as np

    names = list(_MODEL_INPUT)
    data: dict[str, Any] = {}
    raw = state.session.connection().connection.dbapi_connection
    assert raw is not None
    if pieces is not None:
        data = {name: np.concatenate([piece[name] for piece in pieces]) for name in names}
    elif dialect == "postgresql":
        data = _read_packed(raw, source, margin)
    else:
        literal = _model_input_sql(source).replace(":margin", repr(float(margin)))
        cursor = raw.cursor()
        try:
            cursor.execute(literal)
            chunks = []
            while True:
                batch = cursor.fetchmany(100000)
                if not batch:
                    break
                # float64 holds the integer columns exactly (money in raw units stays far below 2**53)
                chunks.append(np.array(batch, dtype=np.float64))
        finally:
            cursor.close()
        matrix = np.concatenate(chunks) if chunks else np.zeros((0, len(names)))
        for i, name in enumerate(names):
            data[name] = matrix[:, i].astype(_MODEL_INPUT[name])
    ids = data["customer_id"]
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        # in customer order, whatever the summary's physical order (rebuilt by several connections,
        # or moved by updates): the fit's sample and its sums are then the same from run to run
        order = np.argsort(ids, kind="stable")
        data = {name: values[order] for name, values in data.items()}
    first, last = data["first_day"].astype(np.float64), data["last_day"].astype(np.float64)
    data["x"] = data["days"].astype(np.float64) - 1.0
    data["t_x"] = last - first
    data["big_t"] = np.maximum(float(now_day) - first, data["t_x"])
    return data


#: The predictions table: column -> (PostgreSQL type, SQLite type, binary COPY type).
_PREDICTIONS = {
    "customer_id": ("INTEGER NOT NULL", "INTEGER PRIMARY KEY", ">i4"),
    "p_alive": ("DOUBLE PRECISION", "REAL", ">f8"),
    "expected_purchases": ("DOUBLE PRECISION", "REAL", ">f8"),
    "expected_order_value": ("BIGINT", "INTEGER", ">i8"),
    "predicted_clv": ("BIGINT", "INTEGER", ">i8"),
    "rfm_code": ("INTEGER", "INTEGER", ">i4"),     # R * 100 + F * 10 + M
    "clv_top_share": ("DOUBLE PRECISION", "REAL", ">f8"),
}


def _write_predictions(conn: Connection, dialect: str, columns: dict[str, Any]) -> None:
    """Create the temporary predictions table (every column of :data:`_PREDICTIONS`) on ``conn``; fill it in bulk."""
    import numpy as np

    names = list(_PREDICTIONS)
    if dialect == "postgresql":
        # no primary key: the ids come from the aggregate, unique already, and the profile statement
        # hash-joins this table, so an index would only be built to be ignored
        conn.execute(text(f"CREATE TEMP TABLE {_PRED} ("
                          + ", ".join(f"{n} {_PREDICTIONS[n][0]}" for n in names) + ") ON COMMIT DROP"))
        # binary COPY rows: a field count, then each field's byte length and big-endian value
        fields: list[tuple[str, str]] = [("n", ">i2")]
        for name in names:
            fields += [(f"len_{name}", ">i4"), (name, _PREDICTIONS[name][2])]
        record = np.dtype(fields)
        header = np.zeros((), dtype=record)
        header["n"] = len(names)
        for name in names:
            header[f"len_{name}"] = np.dtype(_PREDICTIONS[name][2]).itemsize
        rows = np.empty(len(columns["customer_id"]), dtype=record)
        rows[...] = header          # the counts and lengths in one pass
        for name in names:
            rows[name] = columns[name]
        payload = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + rows.tobytes() + b"\xff\xff"
        raw = conn.connection.dbapi_connection
        assert raw is not None
        with raw.cursor() as cur, cur.copy(  # type: ignore[attr-defined]
                f"COPY {_PRED} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy:
            view = memoryview(payload)
            for start in range(0, len(payload), 1 << 22):
                copy.write(view[start:start + (1 << 22)])
        conn.execute(text(f"ANALYZE {_PRED}"))
        return
    conn.execute(text(f"CREATE TEMP TABLE {_PRED} ("
                      + ", ".join(f"{n} {_PREDICTIONS[n][1]}" for n in names) + ")"))
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        cursor.executemany(f"INSERT INTO {_PRED} VALUES ({', '.join('?' for _ in names)})",
                           list(zip(*(np.asarray(columns[n]).tolist() for n in names), strict=True)))
    finally:
        cursor.close()


def _import_model_early() -> None:
    """Start importing the value model (numpy, scipy) on a thread of its own, unless it is imported already.

    Importing scipy's optimizers and special functions takes 0.3-0.4 s, once
    per process, and a nightly job is often a process of its own.  The
    recompute starts the import here, so that it runs while the database
    aggregates the purchases; :func:`_fit_model` imports the same module
    later, waiting for this import if it has not finished, and reports a
    missing library itself.
    """
    if f"{__package__}.clv" in sys.modules:
        return

    def load() -> None:
        try:
            from . import clv  # noqa: F401
        except Exception:   # ImportError and the like: _fit_model's own import says why
            return

    threading.Thread(target=load, name="loyalty-import-model", daemon=True).start()


def _fit_model(state: LoyaltyState, dialect: str, source: str, settings: _Settings, now_day: int,
               pieces: list[dict[str, Any]] | None = None) -> _Fit:
    """Fit BG/NBD + Gamma-Gamma and predict every buyer (``predictions``), or say why the heuristic is used."""
    try:
        import numpy as np

        from . import clv
    except ImportError:
        return _Fit("heuristic", "numpy/scipy are not installed: pip install 'flask-loyalty[value]'",
                    None, 0, 0, None)
    data = _read_model_input(state, dialect, source, now_day, settings.margin, pieces)
    buyers = len(data["customer_id"])
    repeat = int(np.count_nonzero(data["x"] > 0)) if buyers else 0
    if buyers < settings.min_customers or repeat < settings.min_repeat:
        return _Fit("heuristic", f"too little history: {buyers} buyers ({settings.min_customers} needed), "
                                 f"{repeat} repeat buyers ({settings.min_repeat} needed)", None, buyers, repeat, None)
    x, t_x, big_t, m = data["x"], data["t_x"], data["big_t"], data["m"]
    sample = np.arange(buyers)
    if buyers > settings.fit_sample:
        sample = np.sort(np.random.default_rng(0).choice(buyers, settings.fit_sample, replace=False))
    try:
        bg = clv.fit_bgnbd(x[sample], t_x[sample], big_t[sample])
        gg = clv.fit_gamma_gamma(x[sample], m[sample])
    except clv.FitError as exc:
        return _Fit("heuristic", f"the model fit failed: {exc}", None, buyers, repeat, None)
    p_alive = clv.probability_alive(bg, x, t_x, big_t)
    expected, discounted = clv.discounted_purchases(bg, float(settings.horizon), settings.discount_rate,
                                                    x, t_x, big_t)
    spend = clv.expected_spend(gg, x, m)
    rate = np.clip(data["rate"], 0.0, 1.0)
    predicted = discounted * spend * rate
    if not (np.all(np.isfinite(p_alive)) and np.all(np.isfinite(predicted)) and np.all(np.isfinite(spend))):
        return _Fit("heuristic", "the fitted model gave non-finite predictions", None, buyers, repeat, None)
    scale = 10_000.0
    predicted_raw = np.rint(predicted * scale).astype(np.int64)
    predictions = {
        "customer_id": data["customer_id"], "p_alive": p_alive, "expected_purchases": expected,
        "expected_order_value": np.rint(spend * scale).astype(np.int64), "predicted_clv": predicted_raw,
        **_ranks(data, predicted_raw)}
    params = {"r": bg.r, "alpha": bg.alpha, "a": bg.a, "b": bg.b, "p": gg.p, "q": gg.q, "gamma": gg.gamma}
    return _Fit("bgnbd_gamma_gamma", None, params, buyers, repeat, bg.log_likelihood, predictions)


# --- the purchase aggregates -------------------------------------------------
_SUMMARY = table_of(PurchaseSummary).name
_DIRTY = "loyalty_tmp_value_dirty"

#: PostgreSQL: up to this many changed customers (or a fifth of all) are read through the customer index.
_FEW_CUSTOMERS = 200

#: The aggregates that are never NULL (0 for a customer without purchases).
_ZERO_WITHOUT_PURCHASES = tuple(c.name for c in table_of(PurchaseSummary).columns
                                if not c.nullable and c.name in _AGGREGATES and c.name != "customer_id")


@dataclass(frozen=True)
class _Aggregates:
    source: str          # the SQL relation the profile is computed from
    how: str             # ModelFit.aggregates
    customers: int       # how many customers' purchases were aggregated
    shared: bool = False  # the summary was rebuilt and committed by other connections (they can read it)
    #: the buyers' model input, one piece per remainder, read by those connections (:func:`_rebuild_in_parts`)
    model_input: list[dict[str, Any]] | None = None


def _full_scan(state: LoyaltyState, dialect: str, statement: TextClause, params: dict[str, Any], jit: str) -> int:
    """Run an aggregate over every purchase (PostgreSQL: as a full scan, with JIT); the row count."""
    session = state.session
    if dialect != "postgresql":
        return int(session.execute(statement, params).rowcount or 0)  # type: ignore[attr-defined]
    # The aggregate reads every purchase.  When no join makes that path look expensive, the planner
    # may walk the (customer_id, placed_at) index to skip the sort, fetching every purchase in random
    # heap order: 21 s instead of 9 s for five million purchases.  A (parallel) full scan and sort is
    # always the better plan here, so index scans are off for this one statement.  JIT compilation (as
    # the server configures it) pays off here, where expressions are evaluated for every purchase
    # (five million purchases: 7.3 s instead of 8.4 s, compiling included); it is off for the rest of
    # the recompute (``jit`` is the server's own setting).
    previous = session.execute(text("SELECT current_setting('enable_indexscan')")).scalar_one()
    session.execute(text("SELECT set_config('enable_indexscan', 'off', true), set_config('jit', :jit, true)"),
                    {"jit": jit})
    rows = int(session.execute(statement, params).rowcount or 0)  # type: ignore[attr-defined]
    session.execute(text("SELECT set_config('enable_indexscan', :value, true), set_config('jit', 'off', true)"),
                    {"value": previous})
    return rows


def _summary_rows_sql(dialect: str, part: tuple[int, int] | None = None) -> str:
    """The summary rows (aggregates and version) of every customer who is not erased, or of ``part``."""
    return (f"SELECT {', '.join('a.' + c for c in _AGGREGATES)}, c.activity_version AS version "
            f"FROM ({_aggregate_sql(dialect, part=part)}) a JOIN loyalty_customer c ON c.id = a.customer_id "
            f"WHERE c.erased_at IS NULL{_part_filter('c.id', part)}")


def _can_share(state: LoyaltyState) -> bool:
    """PostgreSQL: whether other connections may do part of this transaction's work.

    Only while it has written nothing (it has no transaction id yet: they
    would not see its rows, and a row it locked would make them wait for a
    commit that waits for them), and only at ``READ COMMITTED`` (its later
    statements then see what they committed; a ``REPEATABLE READ`` snapshot
    would keep reading the summary as it was).  Never with a pool that hands
    out one shared connection (``StaticPool``, ``SingletonThreadPool``,
    ``AssertionPool``): another "connection" would then be this one, and its
    commit would end this transaction, advisory lock included.
    """
    pool = state.session.connection().engine.pool
    if isinstance(pool, (StaticPool, SingletonThreadPool, AssertionPool)):
        return False
    return bool(state.session.execute(text(
        "SELECT pg_current_xact_id_if_assigned() IS NULL "
        "AND current_setting('transaction_isolation') = 'read committed'")).scalar_one())


def _in_parts(state: LoyaltyState, settings: _Settings, work: Callable[[Connection, tuple[int, int]], _T]) -> list[_T]:
    """Run ``work(conn, (k, n))`` for each remainder ``k`` of ``n = settings.connections`` at once.

    Each call gets a connection of its own from the session's engine, in a
    transaction (with ``LOYALTY_RECOMPUTE_WORK_MEM``) that commits when it
    returns; the results come back in the order of the remainders, and the
    first error is raised once every call has ended.
    """
    engine = state.session.connection().engine
    parts = settings.connections

    def run(part: int) -> _T:
        with engine.connect() as conn, conn.begin():
            if settings.work_mem:
                conn.execute(text(f"SET LOCAL work_mem = '{settings.work_mem}'"))
            return work(conn, (part, parts))

    with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="loyalty-recompute") as pool:
        futures = [pool.submit(run, part) for part in range(parts)]
        return [future.result() for future in futures]


def _rebuild_in_parts(state: LoyaltyState, settings: _Settings, jit: str, *,
                      repair: bool) -> tuple[int, list[dict[str, Any]] | None]:
    """PostgreSQL: rebuild the summary over ``settings.connections`` connections at once.

    Returns the customers aggregated and the buyers' model input (one piece
    per remainder, see :func:`_read_model_input`; None without numpy and scipy).

    PostgreSQL runs the window and the grouping of one statement in a single
    process, whatever its parallel workers do below them; for five million
    purchases that is most of the aggregation.  Here each connection takes
    the customers whose id has one remainder modulo the number of
    connections: it deletes their summary rows, aggregates their purchases
    (a scan of every purchase, a sort of its share), reads its buyers' model
    input back and commits.  Two connections on two cores: 12 s instead of
    17.6 s for the aggregation of five million purchases, and the summary
    rows are written at the same time.  Reading the model input there, while
    the other connection may still be aggregating, instead of in a step of
    its own once both have committed, saves another 0.3-0.4 s of a million
    customers' first run.

    The parts commit on their own, before the recompute does.  That is safe
    because the summary is a cache: each row holds its customer's
    ``activity_version`` read in the same statement as the purchases, and a
    run that fails leaves no model record saying the summary was built, so
    the next run rebuilds it.  The caller makes sure its own transaction has
    written nothing yet (the other connections would not see it, and a row it
    locked would make them wait for a commit that waits for them).

    ``repair`` (the summary has rows: ``rebuild=True``, or the model records
    were lost): each connection aggregates its customers into a temporary
    table, then deletes and writes again only the summary rows that differ
    from it (:func:`_repair_summary`).  A summary that was right is then
    read, not rewritten: a million customers' rebuild spent 7.6-7.9 s in
    this step before, 6.4-6.8 s since.
    """
    columns = f"{', '.join(_AGGREGATES)}, version"
    # the model input is read into numpy arrays (without waiting here for the early import to finish)
    read = _model_installed()

    def rebuild(conn: Connection, part: tuple[int, int]) -> tuple[int, dict[str, Any] | None]:
        # as in _full_scan: a scan and a sort of every purchase, never a walk of the customer index;
        # and no nested loop: PostgreSQL estimates "customer_id % n = k" at 0.5% of the rows, and
        # would loop over the orders' coupon discounts once per purchase of a part it thinks is small
        conn.execute(text("SELECT set_config('enable_indexscan', 'off', true), set_config('jit', :jit, true), "
                          "set_config('enable_nestloop', 'off', true)"), {"jit": jit})
        if repair:
            count = _repair_summary(conn, part)
            source = _source_sql(_FRESH)
        else:   # the table is empty (a first run)
            count = int(conn.execute(text(
                f"INSERT INTO {_SUMMARY} ({columns}) {_summary_rows_sql('postgresql', part)}")).rowcount or 0)
            source = _source_sql(_SUMMARY, part)
        piece = None
        if read:
            conn.execute(text("SELECT set_config('jit', 'off', true)"))
            piece = _read_packed(conn.connection.dbapi_connection, source, settings.margin)
        return count, piece

    done = _in_parts(state, settings, rebuild)
    pieces = [piece for _, piece in done if piece is not None]
    return sum(count for count, _ in done), (pieces if read else None)


_FRESH = "loyalty_tmp_value_fresh"
_DIFF = "loyalty_tmp_value_diff"


def _repair_summary(conn: Connection, part: tuple[int, int]) -> int:
    """PostgreSQL: make the summary rows of ``part`` equal to a fresh aggregation; the customers aggregated.

    The fresh rows go to a temporary table (dropped at commit), which the
    caller may read from.  One full join with the summary rows of ``part``
    finds the customers whose row differs, is missing or is left over; only
    their rows are deleted and inserted again.
    """
    count = int(conn.execute(text(
        f"CREATE TEMP TABLE {_FRESH} ON COMMIT DROP AS {_summary_rows_sql('postgresql', part)}")).rowcount or 0)
    conn.execute(text(f"ANALYZE {_FRESH}"))
    values = [c for c in (*_AGGREGATES, "version") if c != "customer_id"]
    differs = (f"({', '.join('s.' + c for c in values)}) IS DISTINCT FROM "
               f"({', '.join('f.' + c for c in values)})")
    conn.execute(text(
        f"CREATE TEMP TABLE {_DIFF} ON COMMIT DROP AS SELECT COALESCE(f.customer_id, s.customer_id) AS customer_id "
        f"FROM {_FRESH} f FULL JOIN (SELECT * FROM {_SUMMARY} x WHERE {_remainder('x.customer_id', part)}) s "
        f"ON s.customer_id = f.customer_id WHERE f.customer_id IS NULL OR s.customer_id IS NULL OR {differs}"))
    changed = conn.execute(text(
        f"DELETE FROM {_SUMMARY} WHERE customer_id IN (SELECT d.customer_id FROM {_DIFF} d)")).rowcount
    written = conn.execute(text(
        f"INSERT INTO {_SUMMARY} (customer_id, {', '.join(values)}) SELECT f.customer_id, "
        f"{', '.join('f.' + c for c in values)} FROM {_FRESH} f "
        f"WHERE f.customer_id IN (SELECT d.customer_id FROM {_DIFF} d)")).rowcount
    log.debug("flask_loyalty recompute: summary of remainder %d/%d repaired: %d rows deleted, %d written",
              part[0], part[1], changed, written)
    return count


def _model_installed() -> bool:
    """Whether the value model's libraries (numpy, scipy) can be imported, without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("numpy", "scipy"))


def _read_early(state: LoyaltyState, settings: _Settings) -> Future[dict[str, Any]]:
    """PostgreSQL, a nightly run: start reading every buyer's model input from the committed summary.

    The read (a million customers: 1.7 s of the database's time) runs on a
    connection of its own while this transaction refreshes the summary rows
    of the customers whose activity moved; :func:`_merge_early` then replaces
    those customers' rows with what this transaction aggregated.
    """
    engine = state.session.connection().engine

    def read() -> dict[str, Any]:
        with engine.connect() as conn, conn.begin():
            # The run waits for this read while it holds a lock on the summary.  Should a statement
            # wanting the summary to itself (ALTER TABLE, VACUUM FULL ...) queue up between the two,
            # this read would wait for it, and it for the run, unseen by PostgreSQL's deadlock
            # detector: give up after a second instead (the run then reads the input itself).
            conn.execute(text("SELECT set_config('jit', 'off', true), set_config('lock_timeout', '1s', true)"))
            raw = conn.connection.dbapi_connection
            assert raw is not None
            return _read_packed(raw, _source_sql(_SUMMARY), settings.margin)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loyalty-recompute")
    try:
        return pool.submit(read)
    finally:
        pool.shutdown(wait=False)   # the thread ends with its read


def _merge_early(state: LoyaltyState, early: Future[dict[str, Any]], margin: float) -> list[dict[str, Any]] | None:
    """The model input of :func:`_read_early`, brought up to this transaction's summary; None if the read failed.

    The rows of the customers in the dirty table (aggregated again, or
    deleted) are dropped from what the other connection read, and this
    transaction's rows of those customers are read instead.  The other rows
    are what this transaction sees too: only a recompute writes the summary,
    one at a time, and it had committed before the read began.  A customer
    erased meanwhile may still count in this run's fit and ranks, as one
    erased between the model step and the profile step always could; no
    profile is written for them.
    """
    import numpy as np

    try:
        piece = early.result()
    except Exception:   # e.g. no connection to be had: this transaction reads it all instead
        log.warning("flask_loyalty recompute: reading the model input on another connection failed; "
                    "reading it here", exc_info=True)
        return None
    packed = state.session.execute(text(
        f"SELECT string_agg(int4send(d.customer_id), ''::bytea) FROM {_DIRTY} d")).scalar()
    dirty = np.frombuffer(bytes(packed or b""), dtype=">i4").astype("i4")
    kept = ~np.isin(piece["customer_id"], dirty)
    raw = state.session.connection().connection.dbapi_connection
    fresh = _read_packed(raw, _source_sql(_SUMMARY, customers=_DIRTY), margin)
    return [{name: values[kept] for name, values in piece.items()}, fresh]


def _aggregate(state: LoyaltyState, dialect: str, moment: datetime, settings: _Settings, *, rebuild: bool,
               jit: str, parallel: bool) -> _Aggregates:
    """Bring the purchase aggregates up to ``moment`` and say where the profile reads them from.

    * A purchase placed after ``moment`` (a recompute "as of" a past date):
      every purchase up to ``moment`` is aggregated into a temporary table;
      the summary is not touched.
    * No summary yet (or ``rebuild``): the summary is rebuilt from every
      purchase (with ``parallel``: by ``LOYALTY_RECOMPUTE_CONNECTIONS``
      connections at once, see :func:`_rebuild_in_parts`).
    * Otherwise only the customers whose ``activity_version`` differs from
      their summary row's are aggregated again, through the purchases'
      customer index.  The versions are read before the purchases, so an
      order committed in between is at worst aggregated twice (its version
      moved, so the next run refreshes the customer again), never missed.
      The rows of customers deleted outside the library are dropped.  On
      PostgreSQL (with ``parallel``) another connection reads every buyer's
      model input meanwhile (:func:`_read_early`, :func:`_merge_early`).
    """
    session = state.session
    purchases = table_of(Purchase)
    latest = session.execute(select(func.max(purchases.c.placed_at))).scalar()
    aggregates = ", ".join(_AGGREGATES)
    if latest is not None and latest > moment:
        count = _full_scan(state, dialect, _text(
            f"CREATE TEMP TABLE {_AGG} AS {_aggregate_sql(dialect, until_now=True)}", now=UTCDateTime()),
            {"now": moment}, jit)
        if dialect == "postgresql":
            session.execute(text(f"ANALYZE {_AGG}"))
        return _Aggregates(_source_sql(_AGG), "as_of", count)
    built = not rebuild and session.execute(
        select(ModelFit.id).where(ModelFit.aggregates.in_(("rebuilt", "refreshed"))).limit(1)).first() is not None
    if not built:
        model_input = None
        if parallel:
            repair = session.execute(select(table_of(PurchaseSummary).c.customer_id).limit(1)).first() is not None
            count, model_input = _rebuild_in_parts(state, settings, jit, repair=repair)
        else:
            session.execute(delete(table_of(PurchaseSummary)))
            rows = _summary_rows_sql(dialect)
            if dialect == "postgresql":
                # PostgreSQL 15 plans no INSERT ... SELECT in parallel, but a CREATE TABLE ... AS: the scan
                # and sort of every purchase then run in the parallel workers (1-2 s less for five million)
                _full_scan(state, dialect, text(f"CREATE TEMP TABLE {_AGG} AS {rows}"), {}, jit)
                rows = f"SELECT {aggregates}, version FROM {_AGG}"
            result = session.execute(text(f"INSERT INTO {_SUMMARY} ({aggregates}, version) {rows}"))
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if dialect == "postgresql":
            session.execute(text(f"ANALYZE {_SUMMARY}"))
        return _Aggregates(_source_sql(_SUMMARY), "rebuilt", count, shared=parallel, model_input=model_input)
    # a nightly run on PostgreSQL reads the model input on another connection meanwhile (the same
    # conditions as a shared rebuild: this transaction has written nothing, and sees what commits)
    early = _read_early(state, settings) if parallel and _model_installed() else None
    # The changed customers, and (version NULL) the summary rows of customers deleted outside the
    # library (the summary has no foreign key): PostgreSQL finds both in one full join, about 0.2 s
    # more than the left join for a million customers; SQLite before 3.39 has no full join.
    changed = "c.erased_at IS NULL AND c.activity_version <> COALESCE(s.version, 0)"
    if dialect == "postgresql":
        dirty_sql = (f"SELECT COALESCE(c.id, s.customer_id) AS customer_id, c.activity_version AS version "
                     f"FROM loyalty_customer c FULL JOIN {_SUMMARY} s ON s.customer_id = c.id "
                     f"WHERE c.id IS NULL OR ({changed})")
    else:
        dirty_sql = (f"SELECT c.id AS customer_id, c.activity_version AS version "
                     f"FROM loyalty_customer c LEFT JOIN {_SUMMARY} s ON s.customer_id = c.id WHERE {changed} "
                     f"UNION ALL SELECT s.customer_id, NULL FROM {_SUMMARY} s "
                     "WHERE NOT EXISTS (SELECT 1 FROM loyalty_customer c WHERE c.id = s.customer_id)")
    dirty = session.execute(text(f"CREATE TEMP TABLE {_DIRTY} AS {dirty_sql}")).rowcount  # type: ignore[attr-defined]
    few = True
    if dialect == "postgresql":
        session.execute(text(f"ANALYZE {_DIRTY}"))
        known = session.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'loyalty_customer'::regclass"))
        # per-customer index reads win up to about a fifth of the customers (five million
        # purchases: 5,000 changed customers 0.5 s through the index, 1.8 s by a scan of every purchase)
        few = dirty <= max(float(known.scalar_one() or 0) / 5, _FEW_CUSTOMERS)
    session.execute(text(f"DELETE FROM {_SUMMARY} WHERE customer_id IN (SELECT d.customer_id FROM {_DIRTY} d)"))
    values = ", ".join(f"COALESCE(a.{c}, 0)" if c in _ZERO_WITHOUT_PURCHASES else f"a.{c}"
                       for c in _AGGREGATES if c != "customer_id")
    count = int(session.execute(text(
        f"INSERT INTO {_SUMMARY} ({aggregates}, version) SELECT d.customer_id, {values}, d.version "
        f"FROM {_DIRTY} d LEFT JOIN ({_aggregate_sql(dialect, customers=_DIRTY, few=few)}) a "
        "ON a.customer_id = d.customer_id WHERE d.version IS NOT NULL")).rowcount or 0)  # type: ignore[attr-defined]
    model_input = _merge_early(state, early, settings.margin) if early is not None else None
    return _Aggregates(_source_sql(_SUMMARY), "refreshed", count, model_input=model_input)


def _profile_statement(sql: str) -> TextClause:
    """A profile statement of :func:`_profile_sql` with its parameters typed."""
    return _text(sql, now=UTCDateTime(), computed_at=UTCDateTime(), loyal_cutoff=UTCDateTime(), now_day=Integer(),
                 horizon=Integer(), margin=Float(), half_discount=Float(), top_share=Float())


def _insert_in_parts(state: LoyaltyState, settings: _Settings, predictions: dict[str, Any],
                     params: dict[str, Any]) -> int:
    """PostgreSQL, first run: insert the profiles over ``settings.connections`` connections; how many.

    Like :func:`_rebuild_in_parts`, each connection takes the customers of
    one remainder of the id: it copies their predictions into a temporary
    table of its own, inserts their profiles and commits.  The profile
    statement runs in one process (PostgreSQL plans no writing statement in
    parallel), so this is what lets a second core compute and write half of
    them.  Only for a first run: the table was empty, so nobody could read an
    older profile, and a run that fails half-way leaves profiles that the
    next run updates like any others.  The summary they read was committed by
    :func:`_rebuild_in_parts` in the same run.
    """
    import numpy as np

    remainders = np.asarray(predictions["customer_id"]) % settings.connections

    def insert(conn: Connection, part: tuple[int, int]) -> int:
        mine = remainders == part[0]
        # no nested loop: PostgreSQL estimates "id % n = k" at 0.5% of the customers and would look each
        # of them up in the summary's primary key (500,000 lookups per connection) instead of hashing
        # the summary rows of the part: the profile step of a million customers' first run took
        # 7.5-10.0 s with the lookups, 6.4-8.4 s without them
        conn.execute(text("SELECT set_config('jit', 'off', true), set_config('enable_nestloop', 'off', true)"))
        _write_predictions(conn, "postgresql", {name: np.asarray(values)[mine] for name, values in predictions.items()})
        sql = _profile_sql("postgresql", _source_sql(_SUMMARY, part), with_model=True, write="insert", part=part)
        return int(conn.execute(_profile_statement(sql), params).rowcount or 0)

    return sum(_in_parts(state, settings, insert))


def _write_profiles(state: LoyaltyState, dialect: str, aggregates: _Aggregates, fit: _Fit, settings: _Settings, *,
                    params: dict[str, Any], previous: datetime | None) -> int:
    """Compute and write every profile, delete the stale ones; how many were written.

    No profiles yet: one plain ``INSERT`` (PostgreSQL, when the summary was
    rebuilt by several connections and the model fitted: shared by them too,
    :func:`_insert_in_parts`).  PostgreSQL with profiles already there: an
    ``UPDATE`` of those, then the upsert of the customers who have none yet
    (skipped when the update reached every customer who is not erased).
    SQLite with profiles there: one upsert.  Then the profiles this run did
    not write (customers erased or deleted since) are deleted; ``previous``
    is the moment of the run before.
    """
    session = state.session
    source, with_model = aggregates.source, fit.predictions is not None
    profile = table_of(CustomerProfile)
    empty = session.execute(select(profile.c.customer_id).limit(1)).first() is None
    if empty and aggregates.shared and fit.predictions is not None:
        return _insert_in_parts(state, settings, fit.predictions, params)
    if fit.predictions is not None:
        _write_predictions(session.connection(), dialect, fit.predictions)

    def run(write: str) -> int:
        sql = _profile_sql(dialect, source, with_model=with_model, write=write)
        return int(session.execute(_profile_statement(sql), params).rowcount or 0)  # type: ignore[attr-defined]

    if empty:
        return run("insert")            # nothing stale in a table that was empty
    customers = table_of(Customer)
    if dialect != "postgresql":
        written = run("upsert")
    else:
        written = run("update")
        living = session.execute(select(func.count()).select_from(customers)
                                 .where(customers.c.erased_at.is_(None))).scalar_one()
        written += run("missing") if written < living else 0
    moment = params["computed_at"]
    stale = profile.c.computed_at != moment
    if previous is None or previous == moment:
        # Rows of customers deleted outside the library (the table has no foreign key) still carry
        # the moment of the run before; only when that was this same moment do they need a lookup.
        stale = or_(stale, profile.c.customer_id.not_in(select(customers.c.id)))
    session.execute(delete(profile).where(stale))
    return written


# --- the service ------------------------------------------------------------
def recompute(state: LoyaltyState, *, now: datetime | None = None, rebuild: bool = False) -> int:
    """See :meth:`Analytics.recompute`."""
    data = load(_RecomputeSchema(), {"now": now, "rebuild": rebuild})
    moment = resolve_now(data["now"])
    settings = _settings(state)
    session = state.session
    dialect = dialect_name(state)
    _import_model_early()
    begin_write(state)
    advisory_lock(state, "analytics-recompute")   # one recompute at a time (the summary is shared)
    if dialect == "postgresql" and settings.work_mem:
        session.execute(text(f"SET LOCAL work_mem = '{settings.work_mem}'"))
    now_day = math.floor(moment.timestamp() / _EPOCH_DAY)
    steps: list[tuple[str, float]] = []
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        steps.append((name, time.perf_counter() - clock))
        clock = time.perf_counter()

    for name in (_AGG, _PRED, _DIRTY):
        session.execute(text(f"DROP TABLE IF EXISTS {name}"))
    last = latest_fit(state)
    previous = last.fitted_at if last is not None else None
    jit = "off"
    if dialect == "postgresql":
        # the statements after the full aggregate handle one row per customer, where compiling
        # only costs time (1.2 s of it for the profile statement)
        jit = session.execute(text("SELECT current_setting('jit')")).scalar_one()
        session.execute(text("SET LOCAL jit = off"))
    # other connections share the full aggregation (and then a first run's profiles) only while this
    # transaction has written nothing they would not see, and sees what they commit
    parallel = dialect == "postgresql" and settings.connections > 1 and _can_share(state)
    aggregates = _aggregate(state, dialect, moment, settings, rebuild=data["rebuild"], jit=jit, parallel=parallel)
    step(f"aggregate ({aggregates.how}, {aggregates.customers} customers)")
    fit = _fit_model(state, dialect, aggregates.source, settings, now_day, aggregates.model_input)
    aggregates = replace(aggregates, model_input=None)   # read into the fit: not kept through the profile step
    step("model")
    half_discount = (1.0 + settings.discount_rate) ** (-(settings.horizon / 365.0) / 2.0)
    params = {"now": moment, "now_day": now_day, "margin": settings.margin, "horizon": settings.horizon,
              "half_discount": half_discount, "top_share": settings.top_share, "computed_at": moment,
              "loyal_cutoff": moment - timedelta(days=settings.loyal_days)}
    scored = _write_profiles(state, dialect, aggregates, fit, settings, params=params, previous=previous)
    step("profiles")
    for name in (_AGG, _PRED, _DIRTY):
        session.execute(text(f"DROP TABLE IF EXISTS {name}"))
    session.add(ModelFit(method=fit.method, reason=fit.reason, params=fit.params, customers=fit.customers,
                         repeat_customers=fit.repeat_customers, log_likelihood=fit.log_likelihood,
                         horizon_days=settings.horizon, discount_rate=settings.discount_rate, fitted_at=moment,
                         aggregates=aggregates.how, aggregated_customers=aggregates.customers))
    finish(state, commit=True)
    step("cleanup and commit")
    log.info("flask_loyalty recompute: %d customers; %s", scored,
             ", ".join(f"{name} {seconds:.2f}s" for name, seconds in steps))
    if fit.reason:
        log.info("flask_loyalty recompute used the heuristic: %s", fit.reason)
    return scored


def get_profile(state: LoyaltyState, customer_ref: str) -> CustomerProfile:
    """See :meth:`Analytics.profile`."""
    if not isinstance(customer_ref, str) or not customer_ref:
        raise InvalidInput.field("customer_ref", "Not a valid customer reference.")
    found = state.session.execute(
        select(CustomerProfile).join(Customer, Customer.id == CustomerProfile.customer_id)
        .where(Customer.ref == customer_ref)).unique().scalar_one_or_none()
    if found is None:
        raise NotFound(f"no profile for customer {customer_ref!r}: unknown customer, or run recompute first")
    return found


def pareto(state: LoyaltyState, *, top_share: float = 0.3) -> ParetoReport:
    """See :meth:`Analytics.pareto`."""
    if isinstance(top_share, bool) or not isinstance(top_share, (int, float, Decimal)):
        raise InvalidInput.field("top_share", "Not a valid number.")
    share = float(load(_ParetoSchema(), {"top_share": float(top_share)})["top_share"])
    profile = table_of(CustomerProfile)
    raw_money = {"monetary": profile.c.monetary, "profit": profile.c.historical_clv}
    buyers_filter = profile.c.frequency > 0
    totals = state.session.execute(
        select(func.count(), func.sum(raw_money["monetary"]), func.sum(raw_money["profit"]))
        .where(buyers_filter)).one()
    buyers = int(totals[0] or 0)
    revenue = totals[1] if totals[1] is not None else Decimal(0)
    profit = totals[2] if totals[2] is not None else Decimal(0)
    order = (desc(profile.c.historical_clv), desc(profile.c.monetary), profile.c.customer_id)
    top_count = top_buyers(share, buyers)
    top = select(profile.c.monetary, profile.c.historical_clv).where(buyers_filter).order_by(*order) \
        .limit(top_count).subquery()
    top_totals = state.session.execute(select(func.sum(top.c.monetary), func.sum(top.c.historical_clv))).one()
    top_revenue = top_totals[0] if top_totals[0] is not None else Decimal(0)
    top_profit = top_totals[1] if top_totals[1] is not None else Decimal(0)
    curve = _curve(state, buyers, revenue, profit, order)
    return ParetoReport(top_share=share, customers=top_count,
                        revenue_share=_share(top_revenue, revenue), profit_share=_share(top_profit, profit),
                        buyers=buyers, revenue=revenue, profit=profit, top_revenue=top_revenue,
                        top_profit=top_profit, curve=curve)


def top_buyers(top_share: float, buyers: int) -> int:
    """How many buyers the top ``top_share`` of ``buyers`` is: ``ceil(top_share * buyers)``, at most ``buyers``.

    Computed on the share as written (``repr`` of the float, so 0.6 of 5 buyers
    is 3, not the 4 of the float product 3.0000000000000004); any positive
    share of one or more buyers is at least one buyer.
    """
    return min(buyers, math.ceil(Decimal(repr(float(top_share))) * buyers))


def _share(part: Decimal, whole: Decimal) -> float:
    if whole <= 0:
        return 0.0
    return float(min(max(part / whole, Decimal(0)), Decimal(1)))


def _curve(state: LoyaltyState, buyers: int, revenue: Decimal, profit: Decimal, order: Any) -> list[ParetoPoint]:
    """Cumulative shares at (up to) 100 evenly sized groups of buyers, best first."""
    if buyers == 0:
        return []
    profile = table_of(CustomerProfile)
    buckets = min(100, buyers)
    ranked = select(profile.c.monetary.label("monetary"), profile.c.historical_clv.label("profit"),
                    func.ntile(buckets).over(order_by=order).label("bucket")) \
        .where(profile.c.frequency > 0).subquery()
    rows = state.session.execute(
        select(ranked.c.bucket, func.count(), func.sum(ranked.c.monetary), func.sum(ranked.c.profit))
        .group_by(ranked.c.bucket).order_by(ranked.c.bucket)).all()
    points = [ParetoPoint(0.0, 0.0, 0.0)]
    count, rev, prof = 0, Decimal(0), Decimal(0)
    for _bucket, n, r, p in rows:
        count += int(n)
        rev += r if r is not None else Decimal(0)
        prof += p if p is not None else Decimal(0)
        points.append(ParetoPoint(count / buyers, _share(rev, revenue), _share(prof, profit)))
    return points


def model_params(state: LoyaltyState) -> dict[str, float] | None:
    """See :meth:`Analytics.model_params`."""
    latest = state.session.execute(select(ModelFit).order_by(ModelFit.id.desc()).limit(1)).scalar_one_or_none()
    if latest is None or latest.params is None:
        return None
    return {key: float(latest.params[key]) for key in ("r", "alpha", "a", "b", "p", "q", "gamma")}


def latest_fit(state: LoyaltyState) -> ModelFit | None:
    """The latest recompute's model record (method, reason, parameters)."""
    return state.session.execute(select(ModelFit).order_by(ModelFit.id.desc()).limit(1)).scalar_one_or_none()


class Analytics(Facade):
    """Customer value: profiles (RFM, lifetime value, stage), the Pareto report and the value model."""

    def recompute(self, *, now: datetime | None = None, rebuild: bool = False) -> int:
        """Rewrite every customer's profile as of ``now``; returns how many customers were scored.

        Set-wise: the purchase aggregates are computed by the database, the
        value model is fitted in one pass over the aggregated rows, and the
        profiles are written with one ``INSERT ... SELECT ... ON CONFLICT DO
        UPDATE``.  The aggregates are kept between runs
        (:class:`~flask_loyalty.models.PurchaseSummary`): a run aggregates
        again only the customers who bought, were refunded or redeemed a
        coupon since the last one.  ``rebuild=True`` aggregates every
        purchase again (after purchases were changed outside the library,
        say).  Purchases placed after ``now`` are ignored (a ``now`` before
        the latest purchase aggregates every purchase up to it, without
        touching the kept aggregates).  Commits.
        """
        return recompute(self._state, now=now, rebuild=rebuild)

    def profile(self, customer_ref: str) -> CustomerProfile:
        """The customer's profile as of the last recompute (:class:`NotFound` when there is none)."""
        return get_profile(self._state, customer_ref)

    def pareto(self, *, top_share: float = 0.3) -> ParetoReport:
        """Share of revenue and profit that the top ``top_share`` of buyers bring, plus the whole curve."""
        return pareto(self._state, top_share=top_share)

    def model_params(self) -> dict[str, float] | None:
        """BG/NBD ``r, alpha (days), a, b`` and Gamma-Gamma ``p, q, gamma`` of the last recompute.

        ``None`` before the first recompute and when the last one used the
        heuristic (too little history, or numpy/scipy not installed).
        """
        return model_params(self._state)

    def model(self) -> ModelFit | None:
        """The last recompute's model record, including why the heuristic was used."""
        return latest_fit(self._state)


# --- hooks -------------------------------------------------------------------
def _erase(state: LoyaltyState, *, customer: CustomerModel, **_: Any) -> None:
    for model in (CustomerProfile, PurchaseSummary):
        table = table_of(model)
        state.session.execute(delete(table).where(table.c.customer_id == customer.id))


def _export(state: LoyaltyState, *, customer: CustomerModel, data: dict[str, Any], **_: Any) -> None:
    found = state.session.execute(
        select(CustomerProfile).where(CustomerProfile.customer_id == customer.id)).unique().scalar_one_or_none()
    data["value"] = found.as_dict() if found is not None else None


def setup(state: LoyaltyState) -> None:
    """Check the value settings, register segment, erase and export hooks and the CLI commands."""
    _settings(state)
    from . import segments

    segments.register_hooks(state)
    state.add_hook("erase", _erase)
    state.add_hook("export", _export)


__all__ = ["RFM_SEGMENTS", "STAGES", "STAGE_REASONS", "STAGE_RULES", "Analytics", "ParetoPoint", "ParetoReport",
           "setup"]
