"""Campaigns with a holdout: an offer to a segment, and what it really brought.

:meth:`Campaigns.create` stores the offer (a coupon rule: ``fixed``,
``percent`` or ``free_shipping`` with a value and an optional minimum order)
and the mail text; :meth:`Campaigns.launch` takes the segment's members at
that moment, puts a random ``holdout_share`` of them (exactly
``round(n × share)``, drawn with a per-campaign seed so the split can be
re-derived) in the holdout, which gets nothing, and gives everyone else a
personal coupon valid in the campaign's window plus a ``campaign`` mail
through the outbox - so consent and the weekly marketing cap are applied by
the dispatcher at send time.

:meth:`Campaigns.report` compares both groups over the window (purchases
placed in ``[starts_at, min(ends_at, now)]``, net of refunds):

- conversion (share of members who bought) per group with Wilson score
  intervals, and the uplift ``p_t - p_h`` with Newcombe's hybrid score
  interval (Newcombe 1998, method 10);
- revenue per member (non-buyers count as 0) per group, and the uplift of
  the means with a Welch (unequal variances) normal-approximation interval;
- incremental revenue = uplift per member × treatment size, with the same
  interval scaled.

Members count in their group whether or not the mail could be sent
(intention to treat), which keeps the comparison unbiased.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from statistics import NormalDist
from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import BigInteger, and_, func, select, type_coerce, update

from flask_loyalty.models.base import table_of

from ..clock import resolve_now, utcnow
from ..errors import InvalidInput, NotFound
from ..models import Campaign, CampaignMember, Customer, Purchase
from ..money import from_storage
from ..schemas import load
from ..schemas.fields import AwareDateTime
from ..state import LoyaltyState
from ..transaction import abandon, abandoned_on_error, begin_write, finish, insert_or_none
from .base import Facade
from .prizes import parse_prize

COUPON_OFFER_KINDS = ("fixed", "percent", "free_shipping")


class _CampaignSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z0-9][a-z0-9_-]{0,63}$", error="Lower-case letters, digits, dashes and underscores (at most 64)."))
    segment = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    customer_refs = fields.List(fields.String(validate=validate.Length(min=1, max=64)), load_default=None,
                                allow_none=True)
    starts_at = AwareDateTime(required=True)
    ends_at = AwareDateTime(required=True)
    holdout_share = fields.Float(required=True, validate=validate.Range(min=0, max=1, max_inclusive=False))
    subject = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    headline = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    body = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=5000))


_schema = _CampaignSchema()


@dataclass(frozen=True)
class GroupStats:
    """One group's figures: members, buyers, conversion (with its Wilson interval), revenue."""

    members: int
    converters: int
    conversion: float | None
    conversion_ci: tuple[float, float] | None
    revenue: Decimal
    revenue_per_member: Decimal | None


@dataclass(frozen=True)
class CampaignReport:
    """What a campaign brought compared with its holdout (see the module docstring).

    Every ``*_ci`` is a ``(low, high)`` interval at ``confidence``, or
    ``None`` when a group is empty.  Money is ``Decimal`` (rounded to cents);
    :meth:`to_dict` gives a JSON-able form for charts.
    """

    campaign: str
    starts_at: datetime
    ends_at: datetime
    measured_until: datetime
    confidence: float
    treatment: GroupStats
    holdout: GroupStats
    conversion_uplift: float | None
    conversion_uplift_ci: tuple[float, float] | None
    relative_conversion_lift: float | None
    revenue_per_member_uplift: Decimal | None
    revenue_per_member_uplift_ci: tuple[Decimal, Decimal] | None
    incremental_revenue: Decimal | None
    incremental_revenue_ci: tuple[Decimal, Decimal] | None
    conversion_method: str = "Newcombe hybrid score (Wilson) interval"
    revenue_method: str = "Welch standard error, normal approximation"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: datetimes as ISO strings, Decimals as strings."""
        def convert(value: Any) -> Any:
            if isinstance(value, Decimal):
                return str(value)
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, (list, tuple)):
                return [convert(v) for v in value]
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value
        return {k: convert(v) for k, v in asdict(self).items()}


# --- statistics (pure functions) ------------------------------------------------------

def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n <= 0:
        raise ValueError("n must be positive")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def newcombe_interval(s1: int, n1: int, s0: int, n0: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``s1/n1 - s0/n0`` (1998, method 10)."""
    p1, p0 = s1 / n1, s0 / n0
    l1, u1 = wilson_interval(s1, n1, confidence)
    l0, u0 = wilson_interval(s0, n0, confidence)
    diff = p1 - p0
    low = diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return low, high


def welch_interval(treated: Sequence[float], control: Sequence[float],
                   confidence: float = 0.95) -> tuple[float, float, float]:
    """``(difference of means, low, high)`` with the Welch standard error and a normal quantile."""
    n1, n0 = len(treated), len(control)
    if n1 < 2 or n0 < 2:
        raise ValueError("each group needs at least two values")
    m1, m0 = sum(treated) / n1, sum(control) / n0
    v1 = sum((x - m1) ** 2 for x in treated) / (n1 - 1)
    v0 = sum((x - m0) ** 2 for x in control) / (n0 - 1)
    se = math.sqrt(v1 / n1 + v0 / n0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    diff = m1 - m0
    return diff, diff - z * se, diff + z * se


def split_holdout(customer_ids: Iterable[int], share: float, seed: str) -> set[int]:
    """The holdout: exactly ``round(n × share)`` of the ids, chosen with ``random.Random(seed)``."""
    ordered = sorted(set(customer_ids))
    size = int(Decimal(len(ordered) * share).to_integral_value(rounding="ROUND_HALF_UP"))
    rng = random.Random(seed)
    return set(rng.sample(ordered, size)) if size else set()


def _cents(value: float) -> Decimal:
    """A statistic computed in floats (a confidence bound) as an amount in cents."""
    return Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def _money_cents(value: Decimal) -> Decimal:
    """An exact money figure rounded once, half-even, to cents."""
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


# --- service ---------------------------------------------------------------------------

def get_campaign(state: LoyaltyState, name: str) -> Campaign:
    """The campaign called ``name`` or :class:`NotFound`."""
    campaign = state.session.execute(select(Campaign).where(Campaign.name == name)).scalar_one_or_none()
    if campaign is None:
        raise NotFound(f"no campaign named {name!r}")
    return campaign


def _audience(state: LoyaltyState, campaign: Campaign) -> list[str]:
    if campaign.segment is None:
        return list(campaign.audience or [])
    return list(state.extension.segments.members(campaign.segment))


class Campaigns(Facade):
    """Offers to a segment with a random holdout, and their measured effect (``loyalty.campaigns``)."""

    def create(self, name: str, *, offer: Mapping[str, Any], starts_at: datetime, ends_at: datetime,
               segment: str | None = None, customer_refs: Sequence[str] | None = None,
               holdout_share: float | None = None, subject: str | None = None, headline: str | None = None,
               body: str | None = None, commit: bool = True) -> Campaign:
        """Define a campaign (nothing is sent until :meth:`launch`).

        ``offer``: a coupon rule ``{"kind": "percent"|"fixed"|"free_shipping",
        "value": ..., "min_order_total": ...}``; the coupons are valid from
        ``starts_at`` to ``ends_at``.  The audience is a ``segment`` name or an
        explicit list of ``customer_refs``.  ``subject``/``headline``/``body``
        replace the default wording of the ``campaign`` mail.
        ``holdout_share`` defaults to ``LOYALTY_CAMPAIGN_HOLDOUT_SHARE`` (0.1).
        """
        state = self._state
        share = state.config["LOYALTY_CAMPAIGN_HOLDOUT_SHARE"] if holdout_share is None else holdout_share
        if isinstance(share, Decimal):
            share = float(share)
        data = load(_schema, {"name": name, "segment": segment,
                              "customer_refs": list(customer_refs) if customer_refs is not None else None,
                              "starts_at": starts_at, "ends_at": ends_at, "holdout_share": share,
                              "subject": subject, "headline": headline, "body": body})
        if (data["segment"] is None) == (data["customer_refs"] is None):
            raise InvalidInput.field("segment", "Give either a segment or customer_refs.")
        if data["starts_at"] >= data["ends_at"]:
            raise InvalidInput.field("ends_at", "Must be after starts_at.")
        parsed = parse_prize(offer, field="offer")
        if parsed["kind"] not in COUPON_OFFER_KINDS:
            raise InvalidInput.field("offer", "A campaign offers a coupon: fixed, percent or free_shipping.")
        if data["segment"] is not None:
            hooks = state.hooks.get("segment_exists", ())
            if not any(hook(state, name=data["segment"]) for hook in hooks):
                raise InvalidInput.field("segment", "Unknown segment." if hooks else "Segments are not available.")
        begin_write(state)
        # ON CONFLICT DO NOTHING: a concurrent create of the same name is InvalidInput, never an IntegrityError
        campaign_id = insert_or_none(state, table_of(Campaign), {
            "name": data["name"], "segment": data["segment"], "offer": parsed,
            "audience": sorted(set(data["customer_refs"])) if data["customer_refs"] is not None else None,
            "message": {k: data[k] for k in ("subject", "headline", "body") if data[k]},
            "starts_at": data["starts_at"], "ends_at": data["ends_at"], "holdout_share": float(share),
            "seed": secrets.token_hex(16), "status": "draft", "created_at": utcnow()}, ["name"])
        if campaign_id is None:
            abandon(state, commit=commit)
            raise InvalidInput.field("name", "A campaign with this name exists.")
        campaign = state.session.get_one(Campaign, campaign_id)
        finish(state, commit=commit)
        return campaign

    def launch(self, name: str, *, now: datetime | None = None, commit: bool = True) -> Campaign:
        """Split the audience, give the treatment group coupons and schedule their mails (once).

        Everything is checked before the first write: a campaign whose window
        is over, that was launched already or whose stored offer cannot be
        issued raises :class:`InvalidInput` and writes nothing (with
        ``commit=True`` the session is rolled back).
        """
        state = self._state
        moment = resolve_now(now)
        begin_write(state)
        with abandoned_on_error(state, commit=commit):
            campaign = self._launch(name, moment)
        finish(state, commit=commit)
        return campaign

    def _launch(self, name: str, moment: datetime) -> Campaign:
        """The body of :meth:`launch` after the write began (no commit)."""
        state = self._state
        campaign = get_campaign(state, name)
        if campaign.ends_at <= moment:
            raise InvalidInput.field("name", "This campaign's window is over.")
        # a campaign stored by an older version may hold an offer coupons.create refuses: check it first
        offer = parse_prize(campaign.offer, field="offer")
        if offer["kind"] not in COUPON_OFFER_KINDS:
            raise InvalidInput.field("offer", "A campaign offers a coupon: fixed, percent or free_shipping.")
        table = table_of(Campaign)
        moved = state.session.execute(
            update(table).where(table.c.id == campaign.id, table.c.status == "draft")
            .values(status="launched", launched_at=moment).returning(table.c.id)).first()
        if moved is None:
            raise InvalidInput.field("name", "This campaign was already launched.")
        state.session.refresh(campaign)
        refs = _audience(state, campaign)
        customers: list[Customer] = []
        for start in range(0, len(refs), 500):   # bounded IN lists on every database
            customers += state.session.execute(
                select(Customer).where(Customer.ref.in_(refs[start:start + 500]), Customer.erased_at.is_(None))
            ).scalars().all()
        customers.sort(key=lambda c: c.id)
        holdout = split_holdout((c.id for c in customers), campaign.holdout_share, campaign.seed)
        from . import outbox

        value = Decimal(offer["value"]) if offer.get("value") is not None else None
        min_total = Decimal(offer["min_order_total"]) if offer.get("min_order_total") is not None else None
        due = max(campaign.starts_at, moment)
        rows = []
        for customer in customers:
            if customer.id in holdout:
                rows.append({"campaign_id": campaign.id, "customer_id": customer.id, "grp": "holdout",
                             "coupon_code": None})
                continue
            coupon = state.extension.coupons.create(
                kind=offer["kind"], value=value, customer_ref=customer.ref, max_uses=1,
                min_order_total=min_total, starts_at=campaign.starts_at, expires_at=campaign.ends_at,
                campaign=campaign.name, commit=False)
            rows.append({"campaign_id": campaign.id, "customer_id": customer.id, "grp": "treatment",
                         "coupon_code": str(coupon.code)})
            payload: dict[str, Any] = {"campaign": campaign.name, "coupon_code": str(coupon.code),
                                       "coupon_kind": offer["kind"], "coupon_currency": str(coupon.currency),
                                       "coupon_expires_at": campaign.ends_at.isoformat(), **campaign.message}
            if value is not None:
                payload["coupon_value"] = str(value)
            if min_total is not None:
                payload["min_order_total"] = str(min_total)
            outbox.enqueue(state, "campaign", customer, due_at=due, payload=payload,
                           dedupe_key=f"campaign:{campaign.id}:{customer.id}", reason=f"campaign {campaign.name}")
        if rows:
            state.session.execute(table_of(CampaignMember).insert(), rows)
        return campaign

    def members(self, name: str, group: str | None = None) -> list[str]:
        """Customer refs of a launched campaign, optionally of one group (``treatment``/``holdout``)."""
        state = self._state
        campaign = get_campaign(state, name)
        query = (select(Customer.ref).join(CampaignMember, CampaignMember.customer_id == Customer.id)
                 .where(CampaignMember.campaign_id == campaign.id).order_by(Customer.id))
        if group is not None:
            query = query.where(CampaignMember.grp == group)
        return list(state.session.execute(query).scalars())

    def all(self) -> list[Campaign]:
        """Every campaign, newest first."""
        return list(self._state.session.execute(
            select(Campaign).order_by(Campaign.created_at.desc(), Campaign.id.desc())).scalars())

    def report(self, name: str, *, confidence: float = 0.95, now: datetime | None = None) -> CampaignReport:
        """Incremental conversion and revenue of the treatment group over the holdout."""
        if not 0 < confidence < 1:
            raise InvalidInput.field("confidence", "Must be between 0 and 1.")
        state = self._state
        moment = resolve_now(now)
        campaign = get_campaign(state, name)
        until = min(campaign.ends_at, moment)
        net = type_coerce(Purchase.total, BigInteger) - type_coerce(Purchase.refunded_total, BigInteger)
        rows = state.session.execute(
            select(CampaignMember.grp, CampaignMember.customer_id,
                   func.count(Purchase.id), func.coalesce(func.sum(net), 0))
            .outerjoin(Purchase, and_(Purchase.customer_id == CampaignMember.customer_id,
                                      Purchase.placed_at >= campaign.starts_at, Purchase.placed_at <= until,
                                      net > 0))
            .where(CampaignMember.campaign_id == campaign.id)
            .group_by(CampaignMember.grp, CampaignMember.customer_id)).all()
        values: dict[str, list[float]] = {"treatment": [], "holdout": []}
        buyers = {"treatment": 0, "holdout": 0}
        totals = {"treatment": Decimal(0), "holdout": Decimal(0)}
        for grp, _cid, orders, spent in rows:
            amount = from_storage(int(spent))
            values[grp].append(float(amount))
            totals[grp] += amount
            buyers[grp] += 1 if orders else 0

        def stats(grp: str) -> GroupStats:
            n = len(values[grp])
            return GroupStats(
                members=n, converters=buyers[grp], conversion=buyers[grp] / n if n else None,
                conversion_ci=wilson_interval(buyers[grp], n, confidence) if n else None,
                revenue=totals[grp].quantize(Decimal("0.01")),
                revenue_per_member=(totals[grp] / n).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
                if n else None)

        treated, control = stats("treatment"), stats("holdout")
        uplift = uplift_ci = relative = None
        rev_uplift = rev_ci = incr = incr_ci = None
        if treated.members and control.members:
            assert treated.conversion is not None and control.conversion is not None
            uplift = treated.conversion - control.conversion
            uplift_ci = newcombe_interval(treated.converters, treated.members, control.converters,
                                          control.members, confidence)
            relative = uplift / control.conversion if control.conversion else None
            n1, n0 = len(values["treatment"]), len(values["holdout"])
            # money in Decimal, rounded once; floats only for the confidence intervals below
            mean_diff = totals["treatment"] / n1 - totals["holdout"] / n0
            rev_uplift = _money_cents(mean_diff)
            incr = _money_cents(mean_diff * n1)
            if n1 >= 2 and n0 >= 2:
                _diff, low, high = welch_interval(values["treatment"], values["holdout"], confidence)
                rev_ci = (_cents(low), _cents(high))
                incr_ci = (_cents(low * n1), _cents(high * n1))
        return CampaignReport(
            campaign=campaign.name, starts_at=campaign.starts_at, ends_at=campaign.ends_at, measured_until=until,
            confidence=confidence, treatment=treated, holdout=control, conversion_uplift=uplift,
            conversion_uplift_ci=uplift_ci, relative_conversion_lift=relative,
            revenue_per_member_uplift=rev_uplift, revenue_per_member_uplift_ci=rev_ci,
            incremental_revenue=incr, incremental_revenue_ci=incr_ci)


def export(state: LoyaltyState, *, customer: Customer, data: dict[str, Any], **_kwargs: Any) -> None:
    """``export`` hook: the campaigns the customer was part of and their group."""
    rows = state.session.execute(
        select(Campaign.name, CampaignMember.grp, CampaignMember.coupon_code)
        .join(CampaignMember, CampaignMember.campaign_id == Campaign.id)
        .where(CampaignMember.customer_id == customer.id).order_by(Campaign.id)).all()
    data["campaigns"] = [{"campaign": name, "group": grp, "coupon": code} for name, grp, code in rows]
