"""Gift cards: issue, balance, charge, refund — a ledger that never goes below zero.

Each card row is locked before its balance changes (``SELECT ... FOR UPDATE``
on PostgreSQL, the database write lock on SQLite), the balance only moves
through ``UPDATE ... WHERE balance >= :amount`` checked by its row count, a
``CHECK (balance >= 0)`` backs that up, and every change is one
:class:`~flask_loyalty.models.GiftCardMovement`.  ``charge`` is idempotent
per ``(code, order_ref)`` through a unique constraint.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm.attributes import set_committed_value

from ..clock import as_deadline, resolve_now, shop_zone
from ..errors import GiftCardError, InvalidInput
from ..models.base import table_of
from ..models.gift_card import GiftCard, GiftCardMovement
from ..schemas import load
from ..schemas.coupon import CODE_MAX, GiftCardChargeSchema, GiftCardIssueSchema, OrderRefSchema
from ..state import LoyaltyState
from ..transaction import abandoned_on_error, begin_write, dialect_name, finish
from . import codes
from .base import Facade

_issue_schema = GiftCardIssueSchema()
_charge_schema = GiftCardChargeSchema()
_order_schema = OrderRefSchema()
_ZERO = Decimal(0)
#: Shortest gift card code (a bearer instrument: at least ~59 bits).
MIN_GIFT_CARD_LENGTH = 12


def _refuse_floats(**values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, float):
            raise TypeError(f"{name}: money must be Decimal, int or str, not float")


def find(state: LoyaltyState, code: object, *, lock: bool = False) -> GiftCard | None:
    """The gift card with ``code`` (case, spaces, dashes and look-alikes ignored), or ``None``."""
    if not isinstance(code, str) or len(code) > CODE_MAX:
        return None
    key = codes.normalize(code)
    if not key or not (key.isascii() and key.isalnum()):
        return None
    query = select(GiftCard).where(GiftCard.code_key == key)
    if lock:
        query = query.execution_options(populate_existing=True)
        if dialect_name(state) == "postgresql":
            query = query.with_for_update()
    return state.session.execute(query).scalar_one_or_none()


def _card_or_error(state: LoyaltyState, code: object, *, lock: bool = False) -> GiftCard:
    card = find(state, code, lock=lock)
    if card is None:
        raise GiftCardError("not_found", "unknown gift card")
    return card


def _move(state: LoyaltyState, card: GiftCard, delta: Decimal, *, kind: str, order_ref: str | None,
          now: datetime) -> GiftCardMovement | None:
    """Change the balance by ``delta`` (conditional update) and write the ledger row."""
    table = table_of(GiftCard)
    stmt = (update(table).where(table.c.id == card.id).values(balance=table.c.balance + delta)
            .returning(table.c.balance))
    if delta < 0:
        stmt = stmt.where(table.c.balance >= -delta)
    row = state.session.execute(stmt).first()
    if row is None:
        return None
    balance = Decimal(row[0])
    set_committed_value(card, "balance", balance)
    movement = GiftCardMovement(gift_card_id=card.id, kind=kind, amount=delta, balance_after=balance,
                                order_ref=order_ref, charge_ref=order_ref if kind == "charge" else None,
                                created_at=now)
    state.session.add(movement)
    return movement


def issue_card(state: LoyaltyState, amount: Any, *, currency: Any = None, customer_ref: Any = None,
               expires_at: Any = None, commit: bool = True) -> GiftCard:
    """See :meth:`GiftCards.issue`."""
    _refuse_floats(amount=amount)
    raw = {"amount": amount, "currency": currency or state.config["LOYALTY_CURRENCY"],
           "customer_ref": customer_ref, "expires_at": expires_at}
    data = load(_issue_schema, {k: v for k, v in raw.items() if v is not None})
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    deadline = as_deadline(data.get("expires_at"), zone, field="expires_at")
    now = resolve_now(None)
    if deadline is not None and deadline <= now:
        raise InvalidInput.field("expires_at", "Must be in the future.")
    length = int(state.config["LOYALTY_GIFT_CARD_CODE_LENGTH"])
    if length < MIN_GIFT_CARD_LENGTH:
        raise InvalidInput.field("LOYALTY_GIFT_CARD_CODE_LENGTH", f"At least {MIN_GIFT_CARD_LENGTH}.")
    begin_write(state)
    from .coupons import _dialect_insert

    for _attempt in range(8):
        display, key = codes.generate(length)
        stmt = _dialect_insert(state, GiftCard).values(
            code=display, code_key=key, currency=data["currency"], initial_amount=data["amount"],
            balance=_ZERO, customer_ref=data.get("customer_ref"), expires_at=deadline, created_at=now,
        ).on_conflict_do_nothing(index_elements=["code_key"]).returning(GiftCard)
        card: GiftCard | None = state.session.scalars(stmt).one_or_none()
        if card is not None:
            break
    else:  # pragma: no cover - 8 collisions in a row of ~78-bit codes
        raise InvalidInput.field("code", "Could not generate a unique gift card code.")
    _move(state, card, data["amount"], kind="issue", order_ref=None, now=now)
    finish(state, commit=commit)
    return card


def charge_card(state: LoyaltyState, code: Any, amount: Any, *, order_ref: Any, currency: Any = None,
                now: datetime | None = None, commit: bool = True) -> Decimal:
    """See :meth:`GiftCards.charge`."""
    _refuse_floats(amount=amount)
    if isinstance(code, str) and len(code) > CODE_MAX:
        raise GiftCardError("not_found", "unknown gift card")
    raw = {"code": code, "amount": amount, "order_ref": order_ref, "currency": currency}
    data = load(_charge_schema, {k: v for k, v in raw.items() if v is not None})
    moment = resolve_now(now)
    begin_write(state)
    with abandoned_on_error(state, commit=commit):     # a refusal writes nothing and keeps no card lock
        charged = _charge_locked(state, data, moment)
    finish(state, commit=commit)
    return charged


def _charge_locked(state: LoyaltyState, data: dict[str, Any], moment: datetime) -> Decimal:
    """The body of :func:`charge_card` after the write began (no commit); what was charged."""
    card = _card_or_error(state, data["code"], lock=True)
    oref = data["order_ref"]
    done = state.session.execute(
        select(GiftCardMovement.amount).where(GiftCardMovement.gift_card_id == card.id,
                                              GiftCardMovement.charge_ref == oref)).first()
    if done is not None:                       # idempotent per (code, order_ref) ...
        refunded = state.session.execute(
            select(GiftCardMovement.id).where(GiftCardMovement.gift_card_id == card.id,
                                              GiftCardMovement.order_ref == oref,
                                              GiftCardMovement.kind == "refund").limit(1)).first()
        if refunded is not None:               # ... but never report a refunded charge as taken
            raise InvalidInput.field("order_ref", "This order's charge on this gift card was refunded; "
                                                  "charge it again under a new order reference.")
        return Decimal(-done[0])
    if card.expires_at is not None and moment > card.expires_at:
        raise GiftCardError("expired", "this gift card has expired")
    if data.get("currency") is not None and data["currency"] != card.currency:
        raise GiftCardError("currency", f"this gift card is in {card.currency}")
    charged: Decimal = min(data["amount"], card.balance)
    if charged <= 0:
        return _ZERO
    movement = _move(state, card, -charged, kind="charge", order_ref=oref, now=moment)
    if movement is None:  # pragma: no cover - the row lock makes this unreachable
        return _ZERO
    return charged


def refund_order(state: LoyaltyState, order_ref: Any, *, now: datetime | None = None,
                 commit: bool = True) -> Decimal:
    """See :meth:`GiftCards.refund`."""
    data = load(_order_schema, {"order_ref": order_ref})
    oref = data["order_ref"]
    moment = resolve_now(now)
    session = state.session
    begin_write(state)
    card_ids = session.scalars(
        select(GiftCardMovement.gift_card_id).where(GiftCardMovement.order_ref == oref)
        .distinct().order_by(GiftCardMovement.gift_card_id)).all()
    credited = _ZERO
    for card_id in card_ids:
        query = select(GiftCard).where(GiftCard.id == card_id).execution_options(populate_existing=True)
        if dialect_name(state) == "postgresql":
            query = query.with_for_update()
        card = session.execute(query).scalar_one()
        net = session.execute(
            select(func.coalesce(func.sum(GiftCardMovement.amount), 0))
            .where(GiftCardMovement.gift_card_id == card_id, GiftCardMovement.order_ref == oref)).scalar_one()
        owed = -Decimal(net)
        if owed > 0:
            _move(state, card, owed, kind="refund", order_ref=oref, now=moment)
            credited += owed
    finish(state, commit=commit)
    return credited


def export_for(state: LoyaltyState, customer_ref: str) -> list[dict[str, Any]]:
    """The gift cards owned by ``customer_ref`` for a data export (codes masked)."""
    cards = state.session.scalars(select(GiftCard).where(GiftCard.customer_ref == customer_ref)
                                  .order_by(GiftCard.id)).all()
    return [{"code": "…" + c.code_key[-4:], "currency": c.currency, "initial_amount": str(c.initial_amount),
             "balance": str(c.balance), "issued_at": c.created_at.isoformat(),
             "expires_at": None if c.expires_at is None else c.expires_at.isoformat()} for c in cards]


class GiftCards(Facade):
    """Gift cards (``loyalty.gift_cards``)."""

    def issue(self, amount: Any, *, currency: str | None = None, customer_ref: str | None = None,
              expires_at: date | datetime | None = None, commit: bool = True) -> GiftCard:
        """Issue a card worth ``amount`` with a fresh secret code (``card.code``).

        A ``date`` for ``expires_at`` means the end of that day in ``LOYALTY_TIMEZONE``.
        """
        return issue_card(self._state, amount, currency=currency, customer_ref=customer_ref,
                          expires_at=expires_at, commit=commit)

    def balance(self, code: str, *, now: datetime | None = None) -> Decimal:
        """What the card can still pay (``0`` once it has expired).

        An unknown code raises :class:`~flask_loyalty.GiftCardError` (``not_found``).
        """
        card = _card_or_error(self._state, code)
        if card.expires_at is not None and resolve_now(now) > card.expires_at:
            return _ZERO
        return card.balance

    def charge(self, code: str, amount: Any, *, order_ref: str, currency: str | None = None,
               now: datetime | None = None, commit: bool = True) -> Decimal:
        """Charge up to ``amount`` to the card for an order; returns what was charged.

        Takes at most the balance (``0`` when empty), never below zero under
        concurrency, and is idempotent per ``(code, order_ref)``: a repeat
        returns the first charge.  Once that charge was refunded, charging the
        same ``(code, order_ref)`` again raises :class:`~flask_loyalty.InvalidInput`
        on ``order_ref`` (use a new reference).  Raises
        :class:`~flask_loyalty.GiftCardError` (``not_found``, ``expired``,
        ``currency``).  A refusal writes nothing.
        """
        return charge_card(self._state, code, amount, order_ref=order_ref, currency=currency, now=now,
                           commit=commit)

    def refund(self, order_ref: str, *, commit: bool = True) -> Decimal:
        """Credit back what gift cards paid for ``order_ref``; returns the amount credited.

        Repeating it credits nothing more.
        """
        return refund_order(self._state, order_ref, commit=commit)

    def get(self, code: str) -> GiftCard | None:
        """The card with ``code``, or ``None``."""
        return find(self._state, code)

    def movements(self, code: str) -> list[GiftCardMovement]:
        """The card's ledger, oldest first."""
        card = _card_or_error(self._state, code)
        return list(self._state.session.scalars(
            select(GiftCardMovement).where(GiftCardMovement.gift_card_id == card.id)
            .order_by(GiftCardMovement.id)).all())
