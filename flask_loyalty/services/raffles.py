"""Raffles with a verifiable draw.

A raffle has an eligibility rule (purchases in a window, an optional segment
and consent purpose), entries per order or per amount spent, a number of
winners and a prize (a reward spec of :mod:`flask_loyalty.services.prizes`:
a coupon, a gift card or points).

The draw is commit-reveal:

1. At creation a random 256-bit ``seed`` is made and only its SHA-256,
   ``seed_hash``, is published (:meth:`Raffles.public`).
2. At the draw, the entries are fixed and published as a list of
   ``(number, tickets)`` (numbers follow the customers' internal order;
   each shopper can look up their own number) together with their SHA-256
   ``entries_digest``; an optional ``public_salt`` (e.g. a lottery result
   announced after the entries closed) is mixed in.
3. The winners are a pure function of ``(seed, entries, winners,
   public_salt)``: :func:`rerun_draw`.  After the draw the seed is revealed,
   so anyone can check ``sha256(seed) == seed_hash`` and re-run the draw with
   the published list (:func:`verify_public`).

:func:`rerun_draw` draws without replacement, each pick weighted by tickets,
from a SHA-256 counter stream with rejection sampling (no modulo bias).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import BigInteger, func, insert, select, type_coerce, update

from flask_loyalty.models.base import table_of

from ..clock import resolve_now, utcnow
from ..errors import InvalidInput, NotFound
from ..models import Customer, Purchase, Raffle, RaffleEntry
from ..money import from_storage
from ..schemas import load
from ..schemas.fields import AwareDateTime, Money
from ..state import LoyaltyState
from ..transaction import PendingSignal, abandon, begin_write, finish, insert_or_none
from .base import Facade
from .prizes import issue_prize, parse_prize

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class _RuleSchema(Schema):
    class Meta:
        unknown = RAISE

    since = AwareDateTime(load_default=None, allow_none=True)
    until = AwareDateTime(load_default=None, allow_none=True)
    min_orders = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=100000))
    segment = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    consent = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))


class _RaffleSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Regexp(
        NAME_PATTERN, error="Lower-case letters, digits, dashes and underscores (at most 64)."))
    title = fields.String(required=True, validate=validate.Length(min=1, max=200))
    rule = fields.Dict(load_default=dict)
    entries_per = fields.String(load_default="order", validate=validate.OneOf(("order", "amount")))
    amount_per_entry = Money(load_default=None, allow_none=True, allow_zero=False)
    winners = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=10000))


_rule_schema = _RuleSchema()
_raffle_schema = _RaffleSchema()


def parse_rule(state: LoyaltyState, rule: object) -> dict[str, Any]:
    """Validate an eligibility rule; returns it JSON-storable (datetimes as ISO strings)."""
    if not isinstance(rule, Mapping):
        raise InvalidInput.field("rule", "Must be an object.")
    try:
        data = load(_rule_schema, dict(rule))
    except InvalidInput as exc:
        raise InvalidInput({"rule": exc.errors}) from None
    if data["since"] and data["until"] and data["since"] >= data["until"]:
        raise InvalidInput({"rule": {"until": ["Must be after since."]}})
    purposes = tuple(state.config.get("LOYALTY_CONSENT_PURPOSES") or ())
    if data["consent"] and purposes and data["consent"] not in purposes:
        raise InvalidInput({"rule": {"consent": ["Unknown consent purpose."]}})
    if data["segment"]:
        _check_segment(state, data["segment"])
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}


def _check_segment(state: LoyaltyState, name: str) -> None:
    hooks = state.hooks.get("segment_exists", ())
    if not hooks:
        raise InvalidInput({"rule": {"segment": ["Segments are not available."]}})
    if not any(hook(state, name=name) for hook in hooks):
        raise InvalidInput({"rule": {"segment": ["Unknown segment."]}})


# --- the verifiable draw (pure functions) -----------------------------------------

def entries_digest(entries: Sequence[tuple[int, int]]) -> str:
    """SHA-256 (hex) of the published entry list: one ``number:tickets`` line per entry, by number."""
    text = "\n".join(f"{number}:{tickets}" for number, tickets in sorted(entries))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seed_hash(seed: str) -> str:
    """The published commitment to a seed: SHA-256 (hex) of its UTF-8 text."""
    return hashlib.sha256(seed.encode("utf-8")).hexdigest()


def _stream(seed: str, digest: str, salt: str) -> Iterator[int]:
    counter = 0
    while True:
        block = hashlib.sha256(f"{seed}|{digest}|{salt}|{counter}".encode()).digest()
        counter += 1
        yield int.from_bytes(block, "big")


def _below(stream: Iterator[int], n: int) -> int:
    """A uniform integer in ``[0, n)`` from 256-bit blocks, rejecting the biased tail."""
    limit = (2**256 // n) * n
    for value in stream:
        if value < limit:
            return value % n
    raise AssertionError("unreachable")  # pragma: no cover


def rerun_draw(seed: str, entries: Sequence[tuple[int, int]], winners: int, public_salt: str = "") -> list[int]:
    """The winning entry numbers, in the order drawn.  Anyone can run this.

    ``entries`` is the published list of ``(number, tickets)``; each pick is
    weighted by tickets and an entry wins at most once.
    """
    remaining = sorted((int(n), int(t)) for n, t in entries if int(t) > 0)
    stream = _stream(seed, entries_digest(remaining), public_salt)
    picked: list[int] = []
    while remaining and len(picked) < winners:
        total = sum(t for _n, t in remaining)
        ticket = _below(stream, total)
        for index, (number, tickets) in enumerate(remaining):
            if ticket < tickets:
                picked.append(number)
                del remaining[index]
                break
            ticket -= tickets
    return picked


def verify_public(record: Mapping[str, Any]) -> bool:
    """Check a published draw (the dict of :meth:`Raffles.public` after the draw)."""
    seed = record.get("seed")
    if not seed or seed_hash(seed) != record["seed_hash"]:
        return False
    entries = [(int(e[0]), int(e[1])) for e in record["entries"]]
    if entries_digest(entries) != record["entries_digest"]:
        return False
    return rerun_draw(seed, entries, int(record["winners_count"]), record.get("public_salt") or "") == [
        int(n) for n in record["winners"]]


# --- service ------------------------------------------------------------------------

def get_raffle(state: LoyaltyState, name: str) -> Raffle:
    """The raffle called ``name`` or :class:`NotFound`.

    A name no raffle can have (see ``NAME_PATTERN``: a NUL byte, which
    PostgreSQL refuses in a query, or anything too long) is not looked up.
    """
    if not isinstance(name, str) or re.fullmatch(NAME_PATTERN, name) is None:
        raise NotFound(f"no raffle named {name!r}")
    raffle = state.session.execute(select(Raffle).where(Raffle.name == name)).scalar_one_or_none()
    if raffle is None:
        raise NotFound(f"no raffle named {name!r}")
    return raffle


def eligible_tickets(state: LoyaltyState, raffle: Raffle) -> list[tuple[int, str, int]]:
    """Eligible ``(customer_id, customer_ref, tickets)`` by customer id.

    One aggregate query over the purchases (net of refunds, erased customers
    left out); then the segment (one ``segments.members`` call) and the
    consent purpose (checked per candidate) filter the rows.
    """
    rule = raffle.rule
    net = type_coerce(Purchase.total, BigInteger) - type_coerce(Purchase.refunded_total, BigInteger)
    query = (select(Purchase.customer_id, Customer.ref, func.count(Purchase.id), func.sum(net))
             .join(Customer, Customer.id == Purchase.customer_id)
             .where(net > 0, Customer.erased_at.is_(None)).group_by(Purchase.customer_id, Customer.ref)
             .having(func.count(Purchase.id) >= int(rule.get("min_orders") or 1))
             .order_by(Purchase.customer_id))
    if rule.get("since"):
        query = query.where(Purchase.placed_at >= datetime.fromisoformat(rule["since"]))
    if rule.get("until"):
        query = query.where(Purchase.placed_at < datetime.fromisoformat(rule["until"]))
    rows = state.session.execute(query).all()
    members: set[str] | None = None
    if rule.get("segment"):
        members = set(state.extension.segments.members(rule["segment"]))
    purpose = rule.get("consent")
    result: list[tuple[int, str, int]] = []
    for customer_id, ref, orders, spent in rows:
        if members is not None and ref not in members:
            continue
        if purpose and not state.extension.consent.has(ref, purpose):
            continue
        if raffle.entries_per == "order":
            tickets = int(orders)
        else:
            assert raffle.amount_per_entry is not None
            tickets = math.floor(from_storage(int(spent)) / raffle.amount_per_entry)
        if tickets > 0:
            result.append((int(customer_id), str(ref), tickets))
    return result


class Raffles(Facade):
    """Raffles drawn verifiably (``loyalty.raffles``)."""

    def create(self, name: str, *, title: str, prize: Mapping[str, Any], rule: Mapping[str, Any] | None = None,
               entries_per: str = "order", amount_per_entry: Any = None, winners: int = 1,
               commit: bool = True) -> Raffle:
        """Create a raffle; its ``seed_hash`` is public from now on.

        ``rule``: ``since``/``until`` (aware datetimes: purchases placed in
        ``[since, until)``), ``min_orders`` (default 1), ``segment`` (a segment
        name) and ``consent`` (a purpose the entrant must have granted at the
        draw).  ``entries_per="amount"`` gives one ticket per whole
        ``amount_per_entry`` of net spend in the window.
        """
        state = self._state
        if isinstance(amount_per_entry, float):
            raise TypeError("amount_per_entry: money must be Decimal, int or str, not float")
        data = load(_raffle_schema, {"name": name, "title": title, "rule": dict(rule or {}),
                                     "entries_per": entries_per, "amount_per_entry": amount_per_entry,
                                     "winners": winners})
        if data["entries_per"] == "amount" and data["amount_per_entry"] is None:
            raise InvalidInput.field("amount_per_entry", "Required when entries are per amount.")
        parsed_rule = parse_rule(state, data["rule"])
        parsed_prize = parse_prize(prize)
        begin_write(state)
        seed = secrets.token_hex(32)
        # ON CONFLICT DO NOTHING: a concurrent create of the same name is InvalidInput, never an IntegrityError
        raffle_id = insert_or_none(state, table_of(Raffle), {
            "name": data["name"], "title": data["title"], "rule": parsed_rule, "entries_per": data["entries_per"],
            "amount_per_entry": data["amount_per_entry"] if data["entries_per"] == "amount" else None,
            "prize": parsed_prize, "winners": data["winners"], "seed": seed, "seed_hash": seed_hash(seed),
            "status": "open", "created_at": utcnow()}, ["name"])
        if raffle_id is None:
            abandon(state, commit=commit)
            raise InvalidInput.field("name", "A raffle with this name exists.")
        raffle = state.session.get_one(Raffle, raffle_id)
        finish(state, commit=commit)
        return raffle

    def draw(self, name: str, *, public_salt: str | None = None, now: datetime | None = None,
             commit: bool = True) -> Raffle:
        """Fix the entries, draw the winners, give them the prize and reveal the seed.

        A raffle is drawn once: a second call (or a concurrent one) raises
        :class:`InvalidInput`.
        """
        state = self._state
        moment = resolve_now(now)
        if public_salt is not None and (not isinstance(public_salt, str) or len(public_salt) > 200):
            raise InvalidInput.field("public_salt", "At most 200 characters of text.")
        begin_write(state)
        raffle = get_raffle(state, name)
        table = table_of(Raffle)
        moved = state.session.execute(
            update(table).where(table.c.id == raffle.id, table.c.status == "open")
            .values(status="drawn", drawn_at=moment, public_salt=public_salt).returning(table.c.id)).first()
        if moved is None:
            raise InvalidInput.field("name", "This raffle was already drawn.")
        state.session.refresh(raffle)
        eligible = eligible_tickets(state, raffle)
        entries = [(number, tickets) for number, (_id, _ref, tickets) in enumerate(eligible, start=1)]
        digest = entries_digest(entries)
        winners = rerun_draw(raffle.seed, entries, raffle.winners, public_salt or "")
        place_of = {number: place for place, number in enumerate(winners, start=1)}
        signals: list[PendingSignal] = []
        rows: list[dict[str, Any]] = []
        for number, (customer_id, _ref, tickets) in enumerate(eligible, start=1):
            place = place_of.get(number)
            code = None
            if place is not None:
                customer = state.session.get(Customer, customer_id)
                assert customer is not None
                code = issue_prize(state, raffle.prize, customer, now=moment, note=f"raffle {raffle.name}",
                                   signals=signals)
            rows.append({"raffle_id": raffle.id, "customer_id": customer_id, "number": number,
                         "tickets": tickets, "place": place, "prize_code": code})
        for start in range(0, len(rows), 5000):
            state.session.execute(insert(table_of(RaffleEntry)), rows[start:start + 5000])
        raffle.entries_digest = digest
        finish(state, commit=commit, signals=signals)
        return raffle

    def public(self, name: str) -> dict[str, Any]:
        """What anyone may see: the seed hash always; after the draw the entries, winners and seed."""
        state = self._state
        raffle = get_raffle(state, name)
        record: dict[str, Any] = {
            "name": raffle.name, "title": raffle.title, "status": raffle.status, "seed_hash": raffle.seed_hash,
            "winners_count": raffle.winners, "entries_per": raffle.entries_per,
            "amount_per_entry": None if raffle.amount_per_entry is None else str(raffle.amount_per_entry),
            "rule": dict(raffle.rule), "prize": dict(raffle.prize),
            "created_at": raffle.created_at.isoformat(),
        }
        if raffle.status == "drawn":
            rows = state.session.execute(select(RaffleEntry).where(RaffleEntry.raffle_id == raffle.id)
                                         .order_by(RaffleEntry.number)).scalars().all()
            record.update(
                seed=raffle.seed, public_salt=raffle.public_salt or "", entries_digest=raffle.entries_digest,
                drawn_at=raffle.drawn_at.isoformat() if raffle.drawn_at else None,
                entries=[[e.number, e.tickets] for e in rows],
                winners=[e.number for e in sorted((e for e in rows if e.place), key=lambda e: e.place or 0)])
        return record

    def verify(self, name: str) -> bool:
        """Re-run the published draw of ``name`` and check it against the stored winners."""
        record = self.public(name)
        return record["status"] == "drawn" and verify_public(record)

    def entry_of(self, name: str, customer_ref: str) -> RaffleEntry | None:
        """A customer's entry in a drawn raffle (their public number, tickets and place), or ``None``."""
        state = self._state
        raffle = get_raffle(state, name)
        return state.session.execute(
            select(RaffleEntry).join(Customer, Customer.id == RaffleEntry.customer_id)
            .where(RaffleEntry.raffle_id == raffle.id, Customer.ref == customer_ref)).scalar_one_or_none()

    def all(self) -> list[Raffle]:
        """Every raffle, newest first."""
        return list(self._state.session.execute(
            select(Raffle).order_by(Raffle.created_at.desc(), Raffle.id.desc())).scalars())


def export(state: LoyaltyState, *, customer: Customer, data: dict[str, Any], **_kwargs: Any) -> None:
    """``export`` hook: the customer's raffle entries."""
    rows = state.session.execute(
        select(RaffleEntry, Raffle.name).join(Raffle, Raffle.id == RaffleEntry.raffle_id)
        .where(RaffleEntry.customer_id == customer.id).order_by(RaffleEntry.id)).all()
    data["raffles"] = [{"raffle": name, "number": e.number, "tickets": e.tickets, "place": e.place,
                        "prize_code": e.prize_code} for e, name in rows]


def erase(state: LoyaltyState, *, customer: Customer, **_kwargs: Any) -> None:
    """``erase`` hook: entries keep their public number and tickets (the draw stays verifiable);
    the prize code is dropped.
    """
    table = table_of(RaffleEntry)
    state.session.execute(update(table).where(table.c.customer_id == customer.id).values(prize_code=None))
