"""Customer profiles computed by ``loyalty.analytics.recompute()`` and the fitted value model.

Derived tables have no foreign key to the customer
--------------------------------------------------
:class:`CustomerProfile` and :class:`PurchaseSummary` hold derived data
that ``analytics.recompute()`` writes in bulk: a million rows each for a
million customers on a first run or a rebuild.  A foreign key would make
PostgreSQL check every written row by locking the customer's row
(``SELECT ... FOR KEY SHARE``), which dirties every page of the customer
table: measured at 7 to 20 seconds per million rows, close to half of a
first run.  Nothing depends on it: every recompute deletes the profiles it
did not compute and drops the summary rows of customers who no longer
exist, erasure deletes both rows of the customer, and the profile's
``customer`` relationship is an inner join, so a row left behind by a
customer deleted outside the library is never read through it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DDL, JSON, BigInteger, Boolean, Float, Integer, SmallInteger, String, event
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, CreatedAt
from .customer import Customer
from .purchase import CHANNELS
from .types import Money, UTCDateTime


class CustomerProfile(Base):
    """One row per customer: RFM, lifetime value, engagement, loyalty stage.

    Rewritten as a whole by every recompute (set-wise, in SQL); read by the
    dashboard, segments and the plan.  Money columns are exact
    :class:`~decimal.Decimal`; day counts are whole UTC days.
    """

    __tablename__ = "loyalty_customer_profile"
    # No secondary indexes on purpose: the table is rewritten as a whole by every recompute (each
    # index would slow that down), and segment queries read a large share of it anyway.
    # PostgreSQL: the table's fillfactor is 45 (see PROFILE_FILLFACTOR below).
    # No foreign key to the customer either (nor on the purchase summary): see the module docstring.

    # Column order matters on PostgreSQL: what a nightly recompute leaves unchanged comes first, what
    # changes every night (the day counts, scores, predictions, computed_at) next, and the rarely
    # changing segment and stage last.  An update that keeps its row on the same page writes only the
    # bytes between an unchanged prefix and an unchanged suffix to the write-ahead log: about a
    # third less log per recompute than with the changing columns at both ends.

    #: ``Customer.id`` (no foreign key: see the module docstring).
    customer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    #: Orders kept (not fully refunded).
    frequency: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: Net revenue: order totals minus refunds.
    monetary: Mapped[Decimal] = mapped_column(Money(), nullable=False, default=Decimal(0))
    first_purchase_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_purchase_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Mean days between distinct purchase days; ``None`` with fewer than two.
    avg_interval_days: Mapped[float | None] = mapped_column(Float)
    #: BG/NBD input: repeat purchases (distinct purchase days after the first).
    repeat_purchases: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    orders_online: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    orders_store: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    orders_catalog: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    orders_phone: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: The channel of most orders (ties: online, store, catalog, phone).
    main_channel: Mapped[str | None] = mapped_column(String(16))
    #: Mail engagement once delivery records it (``None`` when not tracked).
    opens: Mapped[int | None] = mapped_column(Integer)
    clicks: Mapped[int | None] = mapped_column(Integer)
    #: Usual hour (0-23, shop time zone) at which the customer opens mails.
    reading_hour: Mapped[int | None] = mapped_column(SmallInteger)
    #: Latest survey answers (``None`` when never answered or surveys are not installed).
    survey_recommend: Mapped[int | None] = mapped_column(SmallInteger)
    survey_experience: Mapped[int | None] = mapped_column(SmallInteger)
    #: Marketing consent (``email_marketing``) at recompute time; ``None`` when consent is not installed.
    consent: Mapped[bool | None] = mapped_column(Boolean)
    refunds: Mapped[Decimal] = mapped_column(Money(), nullable=False, default=Decimal(0))
    discounts: Mapped[Decimal] = mapped_column(Money(), nullable=False, default=Decimal(0))
    #: Margin on what was kept, before discounts.
    margin: Mapped[Decimal] = mapped_column(Money(), nullable=False, default=Decimal(0))
    #: Margin minus discounts: the profit the customer brought so far.
    historical_clv: Mapped[Decimal] = mapped_column(Money(), nullable=False, default=Decimal(0))
    #: ``"bgnbd"`` (fitted model) or ``"heuristic"``.
    clv_method: Mapped[str | None] = mapped_column(String(16))

    #: Days since the last purchase kept (not fully refunded); ``None`` without one.
    recency_days: Mapped[int | None] = mapped_column(Integer)
    #: Days since the first purchase (BG/NBD's customer age T); ``None`` without one.
    tenure_days: Mapped[int | None] = mapped_column(Integer)
    r_score: Mapped[int | None] = mapped_column(SmallInteger)
    f_score: Mapped[int | None] = mapped_column(SmallInteger)
    m_score: Mapped[int | None] = mapped_column(SmallInteger)
    #: The three scores as a string, e.g. ``"545"``.
    rfm: Mapped[str | None] = mapped_column(String(3))
    p_alive: Mapped[float | None] = mapped_column(Float)
    #: Purchases expected over the horizon (undiscounted).
    expected_purchases: Mapped[float | None] = mapped_column(Float)
    #: Expected value of one future order.
    expected_order_value: Mapped[Decimal | None] = mapped_column(Money())
    #: Discounted profit expected over ``LOYALTY_CLV_HORIZON_DAYS``.
    predicted_clv: Mapped[Decimal] = mapped_column(Money(), nullable=False, default=Decimal(0))
    #: ``historical_clv + predicted_clv``: what the customer is worth over the whole relationship.
    total_clv: Mapped[Decimal] = mapped_column(Money(), nullable=False, default=Decimal(0))
    #: Share of buyers ranked above this one by ``total_clv`` (0 = the most valuable).
    clv_top_share: Mapped[float | None] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    #: Subscribed for more than six months and bought in that time.
    loyal_indicator: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)

    #: Named RFM segment (``champions``, ``loyal`` ... see ``analytics.RFM_SEGMENTS``).
    segment: Mapped[str | None] = mapped_column(String(32))
    #: ``"trust"``, ``"relationship"`` or ``"reward"``.
    stage: Mapped[str] = mapped_column(String(16), nullable=False)
    #: Reason codes behind the stage (see ``analytics.STAGE_REASONS``).
    stage_reasons: Mapped[list[str]] = mapped_column(JSON, nullable=False)

    customer: Mapped[Customer] = relationship(
        primaryjoin=lambda: CustomerProfile.customer_id == Customer.id,
        foreign_keys=lambda: [CustomerProfile.customer_id], lazy="joined", innerjoin=True, viewonly=True)

    @property
    def customer_ref(self) -> str:
        """The host's reference of the customer."""
        return self.customer.ref

    @property
    def channel_mix(self) -> dict[str, int]:
        """Orders per channel, e.g. ``{"online": 3, "store": 1, "catalog": 0, "phone": 0}``."""
        return {name: int(getattr(self, f"orders_{name}")) for name in CHANNELS}

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view (money as strings), for export and the API."""
        data: dict[str, Any] = {"customer_ref": self.customer_ref}
        for column in self.__table__.columns:
            if column.key == "customer_id":
                continue
            value = getattr(self, column.key)
            if isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            data[column.key] = value
        data["channel_mix"] = self.channel_mix
        return data

    def __repr__(self) -> str:
        return f"<CustomerProfile {self.customer_id} {self.rfm} {self.segment} {self.stage}>"


#: PostgreSQL: profile pages are filled to 45% only, so the new version of every row fits on its own
#: page and each recompute's update is a heap-only (HOT) update: no new index entry, no heap visit for
#: the uniqueness check, and the space of the previous versions is reused instead of growing the table.
#: A million profiles: 675 MB that stay 675 MB, and 2.8 s instead of 8.6 s for rewriting every row.
#: Set when the table is created (a DDL event, which every SQLAlchemy 2.x accepts).
PROFILE_FILLFACTOR = 45

_set_fillfactor = DDL(f"ALTER TABLE %(table)s SET (fillfactor = {PROFILE_FILLFACTOR})")  # type: ignore[no-untyped-call]
event.listen(CustomerProfile.__table__, "after_create", _set_fillfactor.execute_if(dialect="postgresql"))


class PurchaseSummary(Base):
    """Per-customer purchase aggregates kept between recomputes: what a profile is computed from.

    ``analytics.recompute()`` builds it once from every purchase, then
    re-aggregates only the customers whose ``Customer.activity_version``
    moved since (the checkout, refunds and coupon redemptions bump it), so a
    nightly run does not read the whole purchase history again.  Nothing
    here depends on the date or on settings: days are whole UTC days since
    1970-01-01, and the margin is kept in two parts so that
    ``LOYALTY_DEFAULT_MARGIN`` is applied at recompute time.  Money columns
    are exact :class:`~decimal.Decimal`.
    """

    __tablename__ = "loyalty_purchase_summary"

    #: ``Customer.id`` (no foreign key: see the module docstring).
    customer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    #: The ``Customer.activity_version`` these aggregates were computed from.
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: Orders kept (not fully refunded).
    frequency: Mapped[int] = mapped_column(Integer, nullable=False)
    #: Order totals minus refunds.
    revenue: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    refunds: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    #: Known item margins, scaled by the share of each order not refunded (1/10,000 units).
    kept_known_margin: Mapped[float] = mapped_column(Float, nullable=False)
    #: Amounts without a known cost, scaled the same way; the default margin applies to them.
    kept_uncosted: Mapped[float] = mapped_column(Float, nullable=False)
    #: Coupon discounts on the customer's orders (redemptions not released).
    discounts: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    #: First and last UTC day with a kept order, and how many distinct days had one.
    first_day: Mapped[int | None] = mapped_column(Integer)
    last_day: Mapped[int | None] = mapped_column(Integer)
    days: Mapped[int] = mapped_column(Integer, nullable=False)
    #: Net revenue of the kept orders of the first day (the BG/NBD spend model leaves it out).
    first_day_value: Mapped[Decimal] = mapped_column(Money(), nullable=False)
    orders_online: Mapped[int] = mapped_column(Integer, nullable=False)
    orders_store: Mapped[int] = mapped_column(Integer, nullable=False)
    orders_catalog: Mapped[int] = mapped_column(Integer, nullable=False)
    orders_phone: Mapped[int] = mapped_column(Integer, nullable=False)
    first_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<PurchaseSummary {self.customer_id} v{self.version} {self.frequency} orders>"


class ModelFit(CreatedAt, Base):
    """One recompute's value model: the fitted parameters, or why the heuristic was used."""

    __tablename__ = "loyalty_model_fit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``"bgnbd_gamma_gamma"`` or ``"heuristic"``.
    method: Mapped[str] = mapped_column(String(32), nullable=False)
    #: Why the heuristic was used (too little history, fit failed, numpy/scipy missing).
    reason: Mapped[str | None] = mapped_column(String(300))
    #: ``{"r", "alpha", "a", "b", "p", "q", "gamma"}`` when fitted, else ``None``.
    params: Mapped[dict[str, float] | None] = mapped_column(JSON)
    customers: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    repeat_customers: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    log_likelihood: Mapped[float | None] = mapped_column(Float)
    horizon_days: Mapped[int] = mapped_column(Integer, nullable=False)
    discount_rate: Mapped[float] = mapped_column(Float, nullable=False)
    fitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    #: Where the purchase aggregates came from: ``"rebuilt"`` (every purchase, into the summary),
    #: ``"refreshed"`` (the summary, re-aggregating changed customers only) or ``"as_of"`` (every
    #: purchase up to a ``now`` in the past, the summary untouched).  ``None`` for older records.
    aggregates: Mapped[str | None] = mapped_column(String(16))
    #: How many customers' purchases were aggregated again.
    aggregated_customers: Mapped[int | None] = mapped_column(Integer)
