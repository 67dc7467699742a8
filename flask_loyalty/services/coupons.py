"""Coupons: create, validate, redeem, release, and a customer's usable coupons.

How a coupon is never over-spent, under any number of concurrent callers:

1. ``redeem`` locks the coupon row first (``SELECT ... FOR UPDATE`` on
   PostgreSQL; on SQLite :func:`~flask_loyalty.transaction.begin_write` takes
   the database write lock, ``BEGIN IMMEDIATE`` style), so redemptions of one
   coupon run one after the other and each sees the ones before it;
2. the redemption row takes a per-customer slot and a per-order slot guarded
   by unique constraints (inserted with ``ON CONFLICT DO NOTHING``, which never
   aborts the host's PostgreSQL transaction);
3. the use counter only moves through ``UPDATE ... WHERE uses < max_uses``
   checked by its row count, and a ``CHECK`` constraint backs it up.

Hooks registered by :func:`setup`: ``refund`` (a full refund releases the
order's redemptions when ``LOYALTY_RELEASE_COUPONS_ON_REFUND``), ``erase``
(revokes the customer's personal coupons, forgets gift card owners) and
``export`` (adds ``data["coupons"]`` and ``data["gift_cards"]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from babel.dates import format_time
from babel.numbers import format_percent
from sqlalchemy import String, and_, bindparam, cast, func, inspect, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import configure_mappers, contains_eager, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state, set_committed_value

from ..clock import as_deadline, as_start, resolve_now, shop_zone
from ..errors import CouponError, InvalidInput
from ..models import Customer, Purchase
from ..models.base import table_of
from ..models.coupon import Coupon, Redemption
from ..money import round_money
from ..schemas import load
from ..schemas.coupon import (
    CODE_MAX,
    BatchSchema,
    CouponRulesSchema,
    OrderRefSchema,
    QuoteRequestSchema,
    RedeemSchema,
)
from ..schemas.fields import is_ref
from ..signals import coupon_redeemed, coupon_released
from ..state import LoyaltyState
from ..transaction import PendingSignal, abandoned_on_error, begin_write, dialect_name, finish, session_of
from . import codes
from .activity import touch_order
from .base import Facade
from .purchases import get_customer

if TYPE_CHECKING:
    from ..i18n import Translator

ModelT = TypeVar("ModelT")
_rules_schema = CouponRulesSchema()
_batch_schema = BatchSchema()
_quote_schema = QuoteRequestSchema()
_redeem_schema = RedeemSchema()
_order_schema = OrderRefSchema()

#: Rows per INSERT statement in ``create_batch``.
BATCH_CHUNK = 5000
_ZERO = Decimal(0)


@dataclass(frozen=True)
class Quote:
    """What a coupon would do for an order.

    ``valid`` and ``discount`` (a ``Decimal`` in the order's currency, never
    above the order total; ``0`` for free-shipping and gift coupons, whose
    benefit the shop applies itself) and, when not valid, ``reason`` (one of
    :attr:`flask_loyalty.CouponError.REASONS`).  ``kind``, ``currency``,
    ``free_shipping`` and ``gift_name`` describe a valid coupon for a shop
    front-end.
    """

    valid: bool
    discount: Decimal
    reason: str | None = None
    kind: str | None = None
    currency: str | None = None
    free_shipping: bool = False
    gift_name: str | None = None
    coupon: Coupon | None = field(default=None, repr=False, compare=False)

    @classmethod
    def rejected(cls, reason: str) -> Quote:
        """An invalid quote with ``reason``."""
        return cls(False, _ZERO, reason)

    def as_json(self) -> dict[str, Any]:
        """A JSON-able dict (money as strings) for the API."""
        return {"valid": self.valid, "discount": str(self.discount), "reason": self.reason,
                "kind": self.kind, "currency": self.currency, "free_shipping": self.free_shipping,
                "gift_name": self.gift_name}


# --- helpers -------------------------------------------------------------------

def _drop_none(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def _refuse_floats(**values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, float):
            raise TypeError(f"{name}: money must be Decimal, int or str, not float")


def lookup_key(code: object) -> str | None:
    """The normalised key of a shopper-typed code, or ``None`` when it cannot be a code.

    Codes longer than :data:`~flask_loyalty.schemas.coupon.CODE_MAX` characters
    are refused here, before any query.
    """
    if not isinstance(code, str) or len(code) > CODE_MAX:
        return None
    key = codes.normalize(code)
    if not key or len(key) > CODE_MAX or not (key.isascii() and key.isalnum()):
        return None
    return key


def find(state: LoyaltyState, code: str, *, lock: bool = False) -> Coupon | None:
    """The coupon with ``code`` (any case, spaces, dashes, look-alikes), or ``None``.

    ``lock=True`` locks the row for the rest of the transaction on PostgreSQL
    and reloads it, so the caller sees the latest committed counters.
    """
    key = lookup_key(code)
    if key is None:
        return None
    query = select(Coupon).where(Coupon.code_key == key)
    if lock:
        query = query.execution_options(populate_existing=True)
        if dialect_name(state) == "postgresql":
            query = query.with_for_update()
    return state.session.execute(query).scalar_one_or_none()


def _dialect_insert(state: LoyaltyState, model: Any) -> Any:
    name = dialect_name(state)
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise InvalidInput.field("database", f"flask_loyalty supports SQLite and PostgreSQL, not {name}.")


def percent_of(total: Decimal, percent: Decimal, currency: str) -> Decimal:
    """``percent`` % of ``total`` rounded half-even to the currency's minor unit, at most ``total``."""
    return min(round_money(total * percent / Decimal(100), currency), total)


def discount_for(coupon: Coupon, order_total: Decimal, currency: str) -> Decimal:
    """The amount ``coupon`` takes off an order of ``order_total`` (never more than the total)."""
    if coupon.kind == "percent":
        assert coupon.value is not None
        return percent_of(order_total, coupon.value, currency)
    if coupon.kind == "fixed":
        assert coupon.value is not None
        return min(coupon.value, order_total)
    return _ZERO


class _Usage:
    """Active redemptions relevant to one redeem/validate call, fetched in one query."""

    def __init__(self, rows: Sequence[Any], coupon_id: int, customer_ref: str | None,
                 order_ref: str | None) -> None:
        self.same_order: int | None = None   # id of an active redemption of this coupon on this order
        self.customer_slots: set[int] = set()
        self.customer_uses = 0
        self.order_slots: set[int] = set()
        for rid, cid, cref, oref, cslot, oslot in rows:
            if cid == coupon_id and order_ref is not None and oref == order_ref:
                self.same_order = rid
            if cid == coupon_id and cref == customer_ref:
                self.customer_uses += 1
                if cslot is not None:
                    self.customer_slots.add(cslot)
            if order_ref is not None and oref == order_ref and oslot is not None:
                self.order_slots.add(oslot)


_R = table_of(Redemption)
_C = table_of(Coupon)
#: Prebuilt statements of the redeem path (building a statement costs more CPU than running it).
_USAGE = (select(_R.c.id, _R.c.coupon_id, _R.c.customer_ref, _R.c.order_ref, _R.c.customer_slot, _R.c.order_slot)
          .where(_R.c.released_at.is_(None),
                 or_(and_(_R.c.coupon_id == bindparam("cid"), _R.c.customer_ref == bindparam("cref")),
                     _R.c.order_ref == bindparam("oref"))))
_CLAIM = (update(_C).where(_C.c.code_key == bindparam("key"), _C.c.revoked_at.is_(None),
                           or_(_C.c.max_uses.is_(None), _C.c.uses < _C.c.max_uses))
          .values(uses=_C.c.uses + 1).returning(*_C.c))
_GIVE_BACK = update(_C).where(_C.c.id == bindparam("cid"), _C.c.uses > 0).values(uses=_C.c.uses - 1)
_INSERT_REDEMPTION = {
    "postgresql": postgresql.insert(_R).on_conflict_do_nothing().returning(_R.c.id),
    "sqlite": sqlite.insert(_R).on_conflict_do_nothing().returning(_R.c.id),
}


def _usage(state: LoyaltyState, coupon: Coupon, customer_ref: str | None, order_ref: str | None) -> _Usage:
    if customer_ref is None and order_ref is None:
        return _Usage([], coupon.id, customer_ref, order_ref)
    rows = state.session.execute(_USAGE, {"cid": coupon.id, "cref": customer_ref, "oref": order_ref}).all()
    return _Usage(rows, coupon.id, customer_ref, order_ref)


def _is_first_order(state: LoyaltyState, customer: Customer | None, order_ref: str | None) -> bool:
    if customer is None:
        return True
    query = select(func.count(Purchase.id)).where(Purchase.customer_id == customer.id)
    if order_ref is not None:
        query = query.where(Purchase.order_ref != order_ref)
    return int(state.session.execute(query).scalar_one()) == 0


def _segment_member(state: LoyaltyState, name: str, customer: Customer | None) -> bool:
    hooks = state.hooks.get("segment_member", ())
    if not hooks:
        return False
    return all(bool(hook(state, name=name, customer=customer)) for hook in hooks)


def _customer(state: LoyaltyState, customer_ref: str | None) -> Customer | None:
    return None if customer_ref is None else get_customer(state, customer_ref)


def evaluate(state: LoyaltyState, coupon: Coupon | None, *, customer_ref: str | None,
             order_total: Decimal | None, currency: str | None, now: datetime,
             order_ref: str | None = None, usage: _Usage | None = None, claimed: bool = False) -> Quote:
    """Check every rule of ``coupon`` for this customer and order; a :class:`Quote`.

    The order of the checks never reveals a personal coupon to someone else:
    ``not_yours`` comes before anything about the coupon's state.
    ``order_total=None`` skips the minimum-total check (used by the wallet).
    """
    if coupon is None or coupon.revoked_at is not None:
        return Quote.rejected("not_found")
    if coupon.customer_ref is not None and coupon.customer_ref != customer_ref:
        return Quote.rejected("not_yours")
    if coupon.starts_at is not None and now < coupon.starts_at:
        return Quote.rejected("not_started")
    if coupon.expires_at is not None and now > coupon.expires_at:
        return Quote.rejected("expired")
    order_currency = currency or coupon.currency
    if order_currency != coupon.currency and (coupon.kind == "fixed" or coupon.min_order_total is not None):
        return Quote.rejected("currency")
    if not claimed and coupon.max_uses is not None and coupon.uses >= coupon.max_uses:
        return Quote.rejected("exhausted")   # (``claimed``: the caller already took a use with its UPDATE)
    if usage is None:
        usage = _usage(state, coupon, customer_ref, order_ref)
    if (coupon.max_uses_per_customer is not None and customer_ref is not None
            and usage.customer_uses >= coupon.max_uses_per_customer):
        return Quote.rejected("already_used")
    customer = None
    if coupon.first_order_only or coupon.segment is not None:
        customer = _customer(state, customer_ref)
    if coupon.first_order_only and not _is_first_order(state, customer, order_ref):
        return Quote.rejected("first_order_only")
    if coupon.segment is not None and not _segment_member(state, coupon.segment, customer):
        return Quote.rejected("segment")
    if order_total is not None and coupon.min_order_total is not None and order_total < coupon.min_order_total:
        return Quote.rejected("min_total")
    discount = discount_for(coupon, order_total, order_currency) if order_total is not None else _ZERO
    return Quote(True, discount, None, kind=coupon.kind, currency=order_currency,
                 free_shipping=coupon.kind == "free_shipping", gift_name=coupon.gift_name, coupon=coupon)


# --- creation --------------------------------------------------------------------

def _rules(state: LoyaltyState, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate coupon rules; returns the column values (without code)."""
    _refuse_floats(value=raw.get("value"), min_order_total=raw.get("min_order_total"))
    value = raw.get("value")
    if raw.get("kind") == "gift" and raw.get("gift_name") is None and isinstance(value, str):
        try:
            Decimal(value.strip())
        except ArithmeticError:
            raw["gift_name"], raw["value"] = value, None   # kind="gift", value="Tea mug"
    if raw.get("currency") is None:
        raw["currency"] = state.config["LOYALTY_CURRENCY"]
    data = load(_rules_schema, _drop_none(**raw))
    segment = data.get("segment")
    if segment is not None:
        exists_hooks = state.hooks.get("segment_exists", ())
        if not exists_hooks:
            raise InvalidInput.field("segment", "Segments are not available: define segments before "
                                                "creating segment coupons.")
        if not any(hook(state, name=segment) for hook in exists_hooks):
            raise InvalidInput.field("segment", "Unknown segment.")
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    starts_at = as_start(data.get("starts_at"), zone, field="starts_at")
    expires_at = as_deadline(data.get("expires_at"), zone, field="expires_at")
    if starts_at is not None and expires_at is not None and expires_at <= starts_at:
        raise InvalidInput.field("expires_at", "Must be after starts_at.")
    return {
        "kind": data["kind"], "value": data.get("value"), "gift_name": data.get("gift_name"),
        "currency": data["currency"], "max_uses": data.get("max_uses"),
        "max_uses_per_customer": data.get("max_uses_per_customer"),
        "min_order_total": data.get("min_order_total"), "starts_at": starts_at, "expires_at": expires_at,
        "customer_ref": data.get("customer_ref"), "segment": segment,
        "first_order_only": bool(data.get("first_order_only")), "campaign": data.get("campaign"),
        "uses": 0,
    }


def _insert_coupons(state: LoyaltyState, rows: list[dict[str, Any]]) -> list[Coupon]:
    """Insert coupon rows, skipping code collisions; returns the coupons inserted."""
    if not rows:
        return []
    stmt = _dialect_insert(state, Coupon).on_conflict_do_nothing(index_elements=["code_key"]).returning(Coupon)
    if len(rows) == 1:
        return list(state.session.scalars(stmt.values(**rows[0])).all())
    return list(state.session.scalars(stmt, rows).all())


def create_coupon(state: LoyaltyState, *, commit: bool = True, **raw: Any) -> Coupon:
    """Create one coupon (see :meth:`Coupons.create`)."""
    code = raw.pop("code", None)
    length = int(state.config["LOYALTY_COUPON_CODE_LENGTH"])
    if code is None and length < codes.MIN_LENGTH:
        raise InvalidInput.field("LOYALTY_COUPON_CODE_LENGTH", f"At least {codes.MIN_LENGTH}.")
    if raw.get("segment") is not None:
        begin_write(state)   # segment hooks read; take the SQLite write lock before any read
    row = _rules(state, raw)
    now = resolve_now(None)
    begin_write(state)
    if code is not None:
        display, key = codes.check_code(code)
        inserted = _insert_coupons(state, [{**row, "code": display, "code_key": key, "created_at": now}])
        if not inserted:
            raise InvalidInput.field("code", "A coupon with this code already exists.")
    else:
        prefix = codes.check_prefix(state.config["LOYALTY_COUPON_CODE_PREFIX"], field="LOYALTY_COUPON_CODE_PREFIX")
        for _attempt in range(8):
            display, key = codes.generate(length, prefix)
            inserted = _insert_coupons(state, [{**row, "code": display, "code_key": key, "created_at": now}])
            if inserted:
                break
        else:  # pragma: no cover - 8 collisions in a row of ~59-bit codes
            raise InvalidInput.field("code", "Could not generate a unique code; use a longer code length.")
    coupon = inserted[0]
    finish(state, commit=commit)
    return coupon


def _bulk_insert_codes(state: LoyaltyState, row: dict[str, Any],
                       pairs: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """Insert coupons that share ``row``'s rules, one per ``(code, key)``; skips keys already taken.

    Returns ``(id, code, key)`` of the rows inserted.  One ``INSERT ... SELECT``
    per chunk whatever its size: from ``unnest(codes, keys)`` (two array
    parameters) on PostgreSQL, from ``json_each(pairs)`` on SQLite.
    """
    table = table_of(Coupon)
    names = [name for name in row if name not in ("code", "code_key")]
    postgres = dialect_name(state) == "postgresql"
    # PostgreSQL needs the parameters' types spelt out in a SELECT list; SQLite must not get a CAST
    # (CAST(... AS DATETIME) would turn the stored text into a number)
    consts = [(cast(bindparam(None, row[name], type_=table.c[name].type), table.c[name].type) if postgres
               else bindparam(None, row[name], type_=table.c[name].type)).label(name) for name in names]
    if postgres:
        source = func.unnest(
            cast(bindparam("codes", [p[0] for p in pairs], type_=postgresql.ARRAY(String)),
                 postgresql.ARRAY(String)),
            cast(bindparam("keys", [p[1] for p in pairs], type_=postgresql.ARRAY(String)),
                 postgresql.ARRAY(String))).table_valued("code", "code_key").render_derived()
        rows = select(source.c.code, source.c.code_key, *consts)
        stmt: Any = postgresql.insert(table)
    else:   # SQLite: one JSON parameter, json_each() unpacks it
        items = func.json_each(bindparam("pairs", json.dumps(pairs), type_=String)).table_valued("value")
        rows = select(func.json_extract(items.c.value, "$[0]"), func.json_extract(items.c.value, "$[1]"),
                      *consts).where(true())   # WHERE: SQLite's parser needs it before ON CONFLICT
        stmt = sqlite.insert(table)
    stmt = (stmt.from_select(["code", "code_key", *names], rows)
            .on_conflict_do_nothing(index_elements=["code_key"])
            .returning(table.c.id, table.c.code, table.c.code_key))
    return [(int(i), c, k) for i, c, k in state.session.execute(stmt).all()]


def _detached_coupon(values: dict[str, Any]) -> Coupon:
    """A ``Coupon`` built from known column values (as if loaded), detached from any session.

    Detached objects keep their values after the caller's commit, so reading
    ``code`` from 100,000 of them never goes back to the database.  This is
    what :func:`sqlalchemy.orm.make_transient_to_detached` does, minus its
    per-object bookkeeping for pending changes (there are none here).
    """
    mapper = inspect(Coupon)
    coupon: Coupon = mapper.class_manager.new_instance()
    coupon.__dict__.update(values)
    instance_state(coupon).key = mapper.identity_key_from_primary_key((values["id"],))
    return coupon


def create_batch(state: LoyaltyState, count: int, *, prefix: str = "", commit: bool = True,
                 **raw: Any) -> list[Coupon]:
    """Create ``count`` coupons with the same rules and unique generated codes.

    The coupons come back detached from the session (their values stay
    readable after the commit without a query per coupon).
    """
    if "code" in raw:
        raise InvalidInput.field("code", "A batch generates its codes; do not pass code=.")
    data = load(_batch_schema, {"count": count, "prefix": prefix if prefix is not None else ""})
    prefix_key = codes.check_prefix(data["prefix"] or state.config["LOYALTY_COUPON_CODE_PREFIX"])
    length = int(state.config["LOYALTY_COUPON_CODE_LENGTH"])
    if length < codes.MIN_LENGTH:
        raise InvalidInput.field("LOYALTY_COUPON_CODE_LENGTH", f"At least {codes.MIN_LENGTH}.")
    if raw.get("segment") is not None:
        begin_write(state)
    row = _rules(state, raw)
    configure_mappers()   # _detached_coupon builds instances without a query having configured them
    row["created_at"] = resolve_now(None)
    row["revoked_at"] = None
    begin_write(state)
    made: list[Coupon] = []
    wanted = data["count"]
    seen: set[str] = set()
    while len(made) < wanted:
        pairs = []
        for display, key in codes.generate_many(min(BATCH_CHUNK, wanted - len(made)), length, prefix_key):
            if key not in seen:
                seen.add(key)
                pairs.append((display, key))
        for cid, display, key in _bulk_insert_codes(state, row, pairs):   # a key already taken is skipped
            made.append(_detached_coupon({**row, "id": cid, "code": display, "code_key": key}))
    finish(state, commit=commit)
    return made


# --- redemption --------------------------------------------------------------------

def validate_code(state: LoyaltyState, code: Any, *, customer_ref: Any = None, order_total: Any,
                  currency: Any = None, now: datetime | None = None) -> Quote:
    """See :meth:`Coupons.validate`."""
    _refuse_floats(order_total=order_total)
    if isinstance(code, str) and len(code) > CODE_MAX:
        return Quote.rejected("not_found")
    data = load(_quote_schema, _drop_none(code=code, customer_ref=customer_ref, order_total=order_total,
                                          currency=currency))
    moment = resolve_now(now)
    coupon = find(state, data["code"])
    return evaluate(state, coupon, customer_ref=data.get("customer_ref"), order_total=data["order_total"],
                    currency=data.get("currency"), now=moment)


def redeem_code(state: LoyaltyState, code: Any, *, customer_ref: Any, order_ref: Any, order_total: Any,
                currency: Any = None, now: datetime | None = None, commit: bool = True) -> Redemption:
    """See :meth:`Coupons.redeem`."""
    _refuse_floats(order_total=order_total)
    if isinstance(code, str) and len(code) > CODE_MAX:
        raise CouponError("not_found")
    data = load(_redeem_schema, _drop_none(code=code, customer_ref=customer_ref, order_ref=order_ref,
                                           order_total=order_total, currency=currency))
    moment = resolve_now(now)
    cref, oref, total = data["customer_ref"], data["order_ref"], data["order_total"]
    key = lookup_key(data["code"])
    if key is None:
        raise CouponError("not_found")
    begin_write(state)
    # a refusal (or any failure) writes nothing and, with commit=True, keeps no claim lock for the session
    with abandoned_on_error(state, commit=commit):
        touch_order(state, oref)      # an order already recorded: its customer's discounts change
        redemption, signals = _redeem_claimed(state, key, cref, oref, total, data.get("currency"), moment)
    finish(state, commit=commit, signals=signals)
    return redemption


def _redeem_claimed(state: LoyaltyState, key: str, cref: str, oref: str, total: Decimal, currency: str | None,
                    moment: datetime) -> tuple[Redemption, list[PendingSignal]]:
    """The body of :func:`redeem_code` after the write began: the redemption and the signals to send.

    A repeat for the same order returns the stored redemption and no signal.
    Refusals raise :class:`CouponError` after giving back the claimed use, so
    with ``commit=False`` the host's transaction holds no net change either.
    """
    session = state.session
    # Claim one use first.  This conditional UPDATE takes the coupon's row lock (concurrent
    # redeemers of the same code queue here and re-check the condition against the committed
    # row) and succeeds only while uses < max_uses.  Every later refusal gives the use back.
    claimed_row = session.execute(_CLAIM, {"key": key}).mappings().first()
    coupon = None if claimed_row is None else _as_loaded(state, Coupon, dict(claimed_row))
    if coupon is None:                      # unknown, revoked or used up: find out which
        coupon = find(state, key)
        if coupon is None or coupon.revoked_at is not None:
            raise CouponError("not_found")
        usage = _usage(state, coupon, cref, oref)
        if usage.same_order is not None:   # idempotent per (code, order_ref)
            return _redemption(state, usage.same_order), []
        quote = evaluate(state, coupon, customer_ref=cref, order_total=total, currency=currency,
                         now=moment, order_ref=oref, usage=usage)
        raise CouponError(quote.reason or "exhausted")
    claimed = coupon

    def give_back() -> None:
        session.execute(_GIVE_BACK, {"cid": claimed.id})
        set_committed_value(claimed, "uses", claimed.uses - 1)

    def refuse(reason: str, message: str | None = None) -> CouponError:
        give_back()
        return CouponError(reason, message)

    usage = _usage(state, coupon, cref, oref)
    if usage.same_order is not None:       # idempotent per (code, order_ref)
        give_back()
        return _redemption(state, usage.same_order), []
    quote = evaluate(state, coupon, customer_ref=cref, order_total=total, currency=currency,
                     now=moment, order_ref=oref, usage=usage, claimed=True)
    if not quote.valid:
        raise refuse(quote.reason or "not_found")
    per_order = int(state.config["LOYALTY_COUPONS_PER_ORDER"])
    order_slot = next((s for s in range(per_order) if s not in usage.order_slots), None)
    if order_slot is None:
        raise refuse("already_used", f"this order already uses {per_order} coupon(s)")
    customer_slot = None
    if coupon.max_uses_per_customer is not None:
        customer_slot = next(s for s in range(coupon.max_uses_per_customer) if s not in usage.customer_slots)
    values = {"coupon_id": coupon.id, "order_ref": oref, "customer_ref": cref, "order_total": total,
              "discount": quote.discount, "currency": quote.currency, "customer_slot": customer_slot,
              "order_slot": order_slot, "created_at": moment, "released_at": None}
    inserted = session.execute(_INSERT_REDEMPTION[dialect_name(state)], values).first()
    if inserted is None:   # a concurrent redemption of another coupon took the order's slot first
        raise refuse("already_used")
    redemption = _as_loaded(state, Redemption, {**values, "id": int(inserted[0])})
    redemption.__dict__["coupon"] = coupon
    return redemption, [(coupon_redeemed, {"redemption": redemption, "coupon": coupon})]


def _as_loaded(state: LoyaltyState, model: type[ModelT], values: dict[str, Any]) -> ModelT:
    """An ORM object of ``model`` holding ``values`` (all its columns) as if loaded by a query.

    The object already in the session's identity map is updated and returned
    when there is one; otherwise a new instance is put in the identity map as
    persistent and clean (it refreshes after a commit like any loaded object).
    Core DML plus this costs a fraction of the CPU of ORM-enabled
    ``UPDATE/INSERT ... RETURNING`` on the hot redeem path.
    """
    mapper = inspect(model)
    key = mapper.identity_key_from_primary_key((values["id"],))
    session = session_of(state)
    existing = session.identity_map.get(key)
    if existing is not None:
        for name, value in values.items():
            set_committed_value(existing, name, value)
        return existing  # type: ignore[no-any-return]
    obj: ModelT = mapper.class_manager.new_instance()
    obj.__dict__.update(values)
    make_transient_to_detached(obj)
    session.add(obj)        # detached -> persistent, no SQL
    return obj


def _redemption(state: LoyaltyState, redemption_id: int) -> Redemption:
    existing = state.session.get(Redemption, redemption_id)
    assert existing is not None
    return existing


def release_order(state: LoyaltyState, order_ref: str, *, now: datetime | None = None) -> list[PendingSignal]:
    """Release the active redemptions of ``order_ref`` (no commit); the signals to send."""
    session = state.session
    moment = resolve_now(now)
    begin_write(state)
    touch_order(state, order_ref)
    rtable = table_of(Redemption)
    released = session.execute(
        update(rtable).where(rtable.c.order_ref == order_ref, rtable.c.released_at.is_(None))
        .values(released_at=moment, customer_slot=None, order_slot=None)
        .returning(rtable.c.id, rtable.c.coupon_id)).all()
    if not released:
        return []
    ctable = table_of(Coupon)
    for _rid, coupon_id in released:
        session.execute(update(ctable).where(ctable.c.id == coupon_id, ctable.c.uses > 0)
                        .values(uses=ctable.c.uses - 1))
    ids = [rid for rid, _cid in released]
    rows = session.scalars(
        select(Redemption).join(Redemption.coupon).options(contains_eager(Redemption.coupon))
        .where(Redemption.id.in_(ids)).order_by(Redemption.id)
        .execution_options(populate_existing=True)).all()
    return [(coupon_released, {"redemption": r, "coupon": r.coupon}) for r in rows]


def usable_for(state: LoyaltyState, customer_ref: str, *, now: datetime | None = None) -> list[Coupon]:
    """See :meth:`Coupons.for_customer`."""
    if not is_ref(customer_ref):
        return []                           # no customer has such a reference
    moment = resolve_now(now)
    live = and_(Coupon.revoked_at.is_(None),
                or_(Coupon.starts_at.is_(None), Coupon.starts_at <= moment),
                or_(Coupon.expires_at.is_(None), Coupon.expires_at >= moment),
                or_(Coupon.max_uses.is_(None), Coupon.uses < Coupon.max_uses))
    mine = Coupon.customer_ref == customer_ref
    if state.hooks.get("segment_member"):
        mine = or_(mine, and_(Coupon.customer_ref.is_(None), Coupon.segment.is_not(None)))
    candidates = state.session.scalars(
        select(Coupon).where(live, mine)
        .order_by(Coupon.expires_at.is_(None), Coupon.expires_at, Coupon.id)).all()
    if not candidates:
        return []
    used = dict(state.session.execute(
        select(Redemption.coupon_id, func.count(Redemption.id))
        .where(Redemption.customer_ref == customer_ref, Redemption.released_at.is_(None),
               Redemption.coupon_id.in_([c.id for c in candidates]))
        .group_by(Redemption.coupon_id)).all())
    result = []
    for coupon in candidates:
        usage = _Usage([], coupon.id, customer_ref, None)
        usage.customer_uses = int(used.get(coupon.id, 0))
        quote = evaluate(state, coupon, customer_ref=customer_ref, order_total=None, currency=None,
                         now=moment, usage=usage)
        if quote.valid:
            result.append(coupon)
    return result


# --- the facade ---------------------------------------------------------------------

class Coupons(Facade):
    """Coupons that never over-spend (``loyalty.coupons``)."""

    def create(self, *, kind: str, value: Any = None, code: str | None = None, currency: str | None = None,
               max_uses: int | None = None, max_uses_per_customer: int | None = 1,
               min_order_total: Any = None, starts_at: date | datetime | None = None,
               expires_at: date | datetime | None = None, customer_ref: str | None = None,
               segment: str | None = None, first_order_only: bool = False, campaign: str | None = None,
               gift_name: str | None = None, commit: bool = True) -> Coupon:
        """Create a coupon.

        ``kind``: ``"percent"`` (``value`` 0–100), ``"fixed"`` (``value`` an
        amount in ``currency``), ``"free_shipping"`` or ``"gift"`` (a named
        free item: ``gift_name=``, or the name as ``value``).  ``code`` is
        generated (``LOYALTY_COUPON_CODE_LENGTH`` symbols without look-alikes,
        ``LOYALTY_COUPON_CODE_PREFIX``) unless the host chooses one; codes are
        unique case-insensitively.  A ``date`` for ``expires_at`` means the end
        of that day in ``LOYALTY_TIMEZONE`` (``starts_at``: its start).
        ``max_uses=None`` is unlimited; ``max_uses_per_customer=None`` too.
        ``customer_ref`` makes the coupon personal; ``segment`` limits it to a
        segment's members (needs segments to exist).
        """
        return create_coupon(
            self._state, commit=commit, kind=kind, value=value, code=code, currency=currency,
            max_uses=max_uses, max_uses_per_customer=max_uses_per_customer, min_order_total=min_order_total,
            starts_at=starts_at, expires_at=expires_at, customer_ref=customer_ref, segment=segment,
            first_order_only=first_order_only, campaign=campaign, gift_name=gift_name)

    def create_batch(self, count: int, *, prefix: str = "", **rules: Any) -> list[Coupon]:
        """Create ``count`` coupons with the rules of :meth:`create` and unique generated codes.

        ``prefix`` goes in front of every code (default ``LOYALTY_COUPON_CODE_PREFIX``);
        ``commit=`` is honoured as everywhere.
        """
        commit = bool(rules.pop("commit", True))
        rules.setdefault("max_uses_per_customer", 1)
        return create_batch(self._state, count, prefix=prefix, commit=commit, **rules)

    def validate(self, code: str, *, customer_ref: str | None = None, order_total: Any,
                 currency: str | None = None, now: datetime | None = None) -> Quote:
        """What ``code`` would take off an order of ``order_total``; never writes.

        Returns a :class:`Quote`; an unknown code is ``Quote(False, 0, "not_found")``.
        ``currency`` is the order's currency (default: the coupon's).
        """
        return validate_code(self._state, code, customer_ref=customer_ref, order_total=order_total,
                             currency=currency, now=now)

    def redeem(self, code: str, *, customer_ref: str, order_ref: str, order_total: Any,
               currency: str | None = None, now: datetime | None = None, commit: bool = True) -> Redemption:
        """Use ``code`` on an order; atomic and idempotent per ``(code, order_ref)``.

        Raises :class:`~flask_loyalty.CouponError` with ``.reason`` when the
        coupon cannot be used (``already_used`` also when the order already
        holds ``LOYALTY_COUPONS_PER_ORDER`` coupons).  Sends ``coupon_redeemed``.
        """
        return redeem_code(self._state, code, customer_ref=customer_ref, order_ref=order_ref,
                           order_total=order_total, currency=currency, now=now, commit=commit)

    def release(self, order_ref: str, *, commit: bool = True) -> int:
        """Release the coupons an order used (order cancelled); returns how many.

        Released coupons count as unused again.  Sends ``coupon_released`` for each.
        """
        state = self._state
        data = load(_order_schema, {"order_ref": order_ref})
        signals = release_order(state, data["order_ref"])
        finish(state, commit=commit, signals=signals)
        return len(signals)

    def for_customer(self, customer_ref: str, *, now: datetime | None = None) -> list[Coupon]:
        """The coupons ``customer_ref`` can use now: personal ones and their segments' ones.

        Soonest expiry first.  Orders of the customer that the plan has not
        read yet are planned first (their welcome coupon included), in the
        caller's transaction: commit it, or the next dispatch plans them
        again with new codes.
        """
        if not isinstance(customer_ref, str):
            raise InvalidInput.field("customer_ref", "Not a valid reference.")
        from .plan import plan_customer

        plan_customer(self._state, customer_ref)
        return usable_for(self._state, customer_ref, now=now)

    def get(self, code: str) -> Coupon | None:
        """The coupon with ``code`` (lookup rules as for redeem), or ``None``."""
        return find(self._state, code)

    def redemptions(self, order_ref: str) -> list[Redemption]:
        """The redemptions of an order, oldest first (released ones included)."""
        return list(self._state.session.scalars(
            select(Redemption).where(Redemption.order_ref == order_ref).order_by(Redemption.id)).all())


# --- hooks -------------------------------------------------------------------------

def _on_refund(state: LoyaltyState, *, purchase: Purchase, full: bool, signals: list[PendingSignal],
               **_: Any) -> None:
    if full and state.config["LOYALTY_RELEASE_COUPONS_ON_REFUND"]:
        signals.extend(release_order(state, purchase.order_ref))


def _on_erase(state: LoyaltyState, *, customer: Customer, **_: Any) -> None:
    moment = resolve_now(None)
    ctable = table_of(Coupon)
    state.session.execute(update(ctable).where(ctable.c.customer_ref == customer.ref,
                                               ctable.c.revoked_at.is_(None)).values(revoked_at=moment))
    from ..models.gift_card import GiftCard

    gtable = table_of(GiftCard)
    state.session.execute(update(gtable).where(gtable.c.customer_ref == customer.ref).values(customer_ref=None))


def _coupon_json(coupon: Coupon) -> dict[str, Any]:
    return {"code": coupon.code, "kind": coupon.kind,
            "value": None if coupon.value is None else str(coupon.value), "gift_name": coupon.gift_name,
            "currency": coupon.currency,
            "expires_at": None if coupon.expires_at is None else coupon.expires_at.isoformat(),
            "revoked": coupon.revoked_at is not None}


def _on_export(state: LoyaltyState, *, customer: Customer, data: dict[str, Any], **_: Any) -> None:
    session = state.session
    personal = session.scalars(select(Coupon).where(Coupon.customer_ref == customer.ref)
                               .order_by(Coupon.id)).all()
    redemptions = session.scalars(select(Redemption).where(Redemption.customer_ref == customer.ref)
                                  .order_by(Redemption.id)).all()
    data["coupons"] = {
        "personal": [_coupon_json(c) for c in personal],
        "redemptions": [{"code": r.coupon.code, "order_ref": r.order_ref, "discount": str(r.discount),
                         "currency": r.currency, "redeemed_at": r.created_at.isoformat(),
                         "released_at": None if r.released_at is None else r.released_at.isoformat()}
                        for r in redemptions],
    }
    from .gift_cards import export_for

    data["gift_cards"] = export_for(state, customer.ref)


def setup(state: LoyaltyState) -> None:
    """Register the coupons' hooks (refund, erase, export) and CLI commands."""
    if int(state.config["LOYALTY_COUPONS_PER_ORDER"]) < 1:
        raise InvalidInput.field("LOYALTY_COUPONS_PER_ORDER", "At least 1.")
    length = int(state.config["LOYALTY_COUPON_CODE_LENGTH"])
    if length < codes.MIN_LENGTH:
        raise InvalidInput.field("LOYALTY_COUPON_CODE_LENGTH", f"At least {codes.MIN_LENGTH}.")
    codes.check_prefix(state.config["LOYALTY_COUPON_CODE_PREFIX"], field="LOYALTY_COUPON_CODE_PREFIX")
    state.add_hook("refund", _on_refund)
    state.add_hook("erase", _on_erase)
    state.add_hook("export", _on_export)



# --- how a coupon reads to a shopper ---------------------------------------------------

@dataclass(frozen=True)
class CouponText:
    """A coupon described in a shopper's language: value, conditions and expiry."""

    value: str
    conditions: list[str]
    expiry: str


def describe(coupon: Coupon, tr: Translator) -> CouponText:
    """Describe ``coupon`` with ``tr``'s locale (Babel) and the shop's time zone."""
    _ = tr.gettext
    if coupon.kind == "percent":
        assert coupon.value is not None
        percent = format_percent(coupon.value / Decimal(100), locale=tr.locale, decimal_quantization=False)
        value = _("%(percent)s off", percent=percent)
    elif coupon.kind == "fixed":
        assert coupon.value is not None
        value = _("%(amount)s off", amount=tr.money(coupon.value, coupon.currency))
    elif coupon.kind == "free_shipping":
        value = _("Free shipping")
    else:
        value = _("Free gift: %(item)s", item=coupon.gift_name or "")
    conditions = []
    if coupon.min_order_total is not None and coupon.min_order_total > 0:
        conditions.append(_("On orders of %(amount)s or more",
                            amount=tr.money(coupon.min_order_total, coupon.currency)))
    if coupon.first_order_only:
        conditions.append(_("On your first order"))
    if coupon.customer_ref is not None:
        conditions.append(_("Personal: only for you"))
    if coupon.max_uses_per_customer == 1:
        conditions.append(_("One use per customer"))
    if coupon.expires_at is None:
        expiry = _("No expiry date")
    else:
        local = coupon.expires_at.astimezone(shop_zone(tr.timezone))
        if (local.hour, local.minute) == (23, 59):
            expiry = _("Valid until %(date)s", date=tr.date(coupon.expires_at))
        else:
            expiry = _("Valid until %(date)s, %(time)s", date=tr.date(coupon.expires_at),
                       time=format_time(local, "short", locale=tr.locale))
    return CouponText(value, conditions, expiry)
