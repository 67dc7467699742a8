"""The :class:`Loyalty` Flask extension."""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app, has_app_context
from sqlalchemy import select

from flask_loyalty.models.base import table_of

from .clock import shop_zone
from .config import apply_defaults
from .errors import LoyaltyError
from .models import Customer, Purchase, metadata
from .models.lock import WriteLock
from .money import check_currency
from .services import purchases
from .state import EXTENSION_KEY, LoyaltyState, get_state
from .transaction import configure_engine, insert_ignore

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    from .services.analytics import Analytics
    from .services.campaigns import Campaigns
    from .services.consent import Consent
    from .services.coupons import Coupons
    from .services.dispatch import DispatchReport
    from .services.gift_cards import GiftCards
    from .services.links import Links
    from .services.outbox import Messages
    from .services.points import Points
    from .services.raffles import Raffles
    from .services.referrals import Referrals
    from .services.segments import Segments
    from .services.surveys import Surveys
    from .services.tiers import Tiers

GuardT = TypeVar("GuardT", bound=Callable[[], bool])

#: Modules whose ``setup(state)`` runs at ``init_app``, in this order: services
#: register their in-transaction hooks and check their config; web modules
#: register their blueprints.
AREA_MODULES: tuple[str, ...] = (
    "flask_loyalty.services.coupons",
    "flask_loyalty.services.consent",
    "flask_loyalty.services.surveys",
    "flask_loyalty.services.plan",
    "flask_loyalty.services.analytics",
    "flask_loyalty.services.rewards",
    "flask_loyalty.web.wallet",
    "flask_loyalty.web.api",
    "flask_loyalty.web.consent",
    "flask_loyalty.web.survey",
    "flask_loyalty.web.tracking",
    "flask_loyalty.web.admin",
    "flask_loyalty.web.rewards",
)


class Loyalty:
    """The flask_loyalty extension.

    ``Loyalty(app, db)`` or ``Loyalty()`` followed by ``init_app(app, db)``
    (app factory).  Per-app state lives in ``app.extensions["loyalty"]``; this
    object only holds the facades, so one instance can serve several apps.
    """

    def __init__(self, app: Flask | None = None, db: SQLAlchemy | None = None) -> None:
        #: A guard registered before any ``init_app``: the default of every app set up
        #: afterwards (copied into its state; its own ``LOYALTY_ADMIN_GUARD`` wins).
        self._default_admin_guard: Callable[[], bool] | None = None
        #: The app most recently set up with this object (where ``admin_guard`` goes
        #: outside an app context: the app-factory pattern), held weakly.
        self._last_app: weakref.ref[Flask] | None = None
        if app is not None:
            if db is None:
                raise LoyaltyError("Loyalty(app, db): pass the host's flask_sqlalchemy.SQLAlchemy too")
            self.init_app(app, db)

    # --- set-up -----------------------------------------------------------
    def init_app(self, app: Flask, db: SQLAlchemy) -> None:
        """Register the extension on ``app`` using the host's ``db``."""
        if EXTENSION_KEY in app.extensions:
            raise LoyaltyError(f"flask_loyalty is already registered on app {app.name!r}")
        if "sqlalchemy" not in app.extensions:
            raise LoyaltyError("call db.init_app(app) before loyalty.init_app(app, db)")
        apply_defaults(app.config)
        shop_zone(app.config["LOYALTY_TIMEZONE"])
        check_currency(app.config["LOYALTY_CURRENCY"], field="LOYALTY_CURRENCY")
        state = LoyaltyState(app=app, db=db, extension=self, default_admin_guard=self._default_admin_guard)
        app.extensions[EXTENSION_KEY] = state
        self._last_app = weakref.ref(app)
        with app.app_context():
            for engine in db.engines.values():
                configure_engine(engine, float(app.config["LOYALTY_SQLITE_BUSY_TIMEOUT"]))
        for name in AREA_MODULES:
            importlib.import_module(name).setup(state)
        from .web import register_blueprints

        register_blueprints(app, state)
        from .cli import loyalty_cli

        app.cli.add_command(loyalty_cli)

    def create_all(self) -> None:
        """Create the ``loyalty_*`` tables that do not exist yet (idempotent)."""
        state = get_state()
        engine = state.db.engine
        metadata.create_all(bind=engine)
        with state.app.app_context():
            insert_ignore(state, table_of(WriteLock), {"id": 1, "counter": 0}, ["id"])
            state.session.commit()

    def admin_guard(self, fn: GuardT, *, app: Flask | None = None) -> GuardT:
        """Register ``fn()`` deciding whether the current request may see the dashboard.

        Usable as a decorator.  Until a guard is registered (here or with
        ``LOYALTY_ADMIN_GUARD``), every admin URL answers 403.

        The guard belongs to one app (it is kept in ``app.extensions["loyalty"]``):
        ``app`` if given, else the current app when called inside its app context,
        else the app this object was most recently set up on (``init_app`` then
        ``admin_guard`` in an app factory).  For that app it wins over
        ``LOYALTY_ADMIN_GUARD``.  Registered before any ``init_app``, it becomes the
        default of every app set up afterwards, used only where the app's own
        ``LOYALTY_ADMIN_GUARD`` is not set.
        """
        if not callable(fn):
            raise TypeError("admin_guard needs a callable returning bool")
        target = app
        if target is None and has_app_context():
            current = current_app._get_current_object()  # type: ignore[attr-defined]
            state = current.extensions.get(EXTENSION_KEY)
            if isinstance(state, LoyaltyState) and state.extension is self:
                target = current
        if target is None and self._last_app is not None:
            target = self._last_app()
        if target is None:
            self._default_admin_guard = fn
            return fn
        state = get_state(target)
        if state.extension is not self:
            raise LoyaltyError(f"app {target.name!r} is set up with another Loyalty object")
        state.admin_guard = fn
        return fn

    # --- the checkout hook ---------------------------------------------------
    def upsert_customer(self, customer_ref: str, *, email: str | None = None,
                        name: str | None = None, locale: str | None = None,
                        birthday: Any = None, clear: Iterable[str] = (), commit: bool = True) -> Customer:
        """Create or update a customer (``None`` leaves a field as it is).

        ``clear`` names fields to remove, since ``None`` cannot: ``clear=("birthday",)``
        forgets the birthday (the only clearable field), e.g. when the customer empties
        it in their profile.
        """
        return purchases.upsert_customer(get_state(), customer_ref, email=email, name=name,
                                         locale=locale, birthday=birthday, clear=clear, commit=commit)

    def record_purchase(self, order_ref: str, customer_ref: str, total: Any, *,
                        currency: str | None = None, email: str | None = None,
                        placed_at: datetime | None = None,
                        items: Iterable[Mapping[str, Any]] = (), channel: str = "online",
                        referral_code: str | None = None, commit: bool = True) -> Purchase:
        """Record an order from the checkout; idempotent on ``order_ref``."""
        return purchases.record_purchase(
            get_state(), order_ref, customer_ref, total, currency=currency, email=email,
            placed_at=placed_at, items=items, channel=channel, referral_code=referral_code,
            commit=commit)

    def record_refund(self, order_ref: str, *, amount: Any = None, commit: bool = True) -> Purchase:
        """Refund an order in whole (``amount=None``) or part; never past its total."""
        return purchases.record_refund(get_state(), order_ref, amount=amount, commit=commit)

    def customer(self, customer_ref: str) -> Customer | None:
        """The stored customer with the host's reference, or ``None``."""
        return get_state().session.execute(
            select(Customer).where(Customer.ref == customer_ref)).scalar_one_or_none()

    def purchase(self, order_ref: str) -> Purchase | None:
        """The stored purchase with ``order_ref``, or ``None``."""
        return purchases.get_purchase(get_state(), order_ref)

    # --- facades (one object per area, bound to the current app on each call) ---
    @cached_property
    def links(self) -> Links:
        """Signed links shoppers follow: survey, preferences, unsubscribe, wallet."""
        from .services.links import Links

        return Links(self)

    @cached_property
    def coupons(self) -> Coupons:
        """Coupons: create, validate, redeem, release, a customer's usable coupons."""
        from .services.coupons import Coupons

        return Coupons(self)

    @cached_property
    def gift_cards(self) -> GiftCards:
        """Gift cards: issue, balance, charge, refund."""
        from .services.gift_cards import GiftCards

        return GiftCards(self)

    @cached_property
    def consent(self) -> Consent:
        """Per-purpose consent with an append-only proof ledger, export and erasure."""
        from .services.consent import Consent

        return Consent(self)

    @cached_property
    def surveys(self) -> Surveys:
        """The post-purchase survey and its figures."""
        from .services.surveys import Surveys

        return Surveys(self)

    @cached_property
    def messages(self) -> Messages:
        """The outbox: messages scheduled, sent, deferred or suppressed per customer."""
        from .services.outbox import Messages

        return Messages(self)

    @cached_property
    def analytics(self) -> Analytics:
        """Customer value: RFM, lifetime value, Pareto report, loyalty stage."""
        from .services.analytics import Analytics

        return Analytics(self)

    @cached_property
    def points(self) -> Points:
        """Points balance and redemption into coupons."""
        from .services.points import Points

        return Points(self)

    @cached_property
    def tiers(self) -> Tiers:
        """Tiers of the cumulative programme and their standing discount."""
        from .services.tiers import Tiers

        return Tiers(self)

    @cached_property
    def referrals(self) -> Referrals:
        """Referral codes and links, and the outcome of referred orders."""
        from .services.referrals import Referrals

        return Referrals(self)

    @cached_property
    def raffles(self) -> Raffles:
        """Raffles with a verifiable draw (seed hash published before, seed after)."""
        from .services.raffles import Raffles

        return Raffles(self)

    @cached_property
    def campaigns(self) -> Campaigns:
        """Offers to a segment with a random holdout, and their incremental effect."""
        from .services.campaigns import Campaigns

        return Campaigns(self)

    @cached_property
    def segments(self) -> Segments:
        """Named customer segments defined by JSON rules."""
        from .services.segments import Segments

        return Segments(self)

    def plan(self, *, now: datetime | None = None) -> int:
        """Schedule the time-based steps of the plan (birthday, replenish, win-back ...)."""
        from .services.plan import run_plan

        return run_plan(get_state(), now=now)

    def dispatch(self, *, limit: int | None = None, now: datetime | None = None) -> DispatchReport:
        """Send the messages that are due; safe with several dispatchers at once."""
        from .services.dispatch import dispatch

        return dispatch(get_state(), limit=limit, now=now)

    @property
    def state(self) -> LoyaltyState:
        """The current app's loyalty state (raises when ``init_app`` was not called)."""
        return get_state()
