"""Referrals: a code and link per customer, a welcome reward for the friend, a later one for the advocate.

Flow:

1. A customer's code (:meth:`Referrals.code_for`) is shown in the wallet with
   the link ``<prefix>/r/<code>``; the landing page keeps the code in a
   cookie (``LOYALTY_REFERRAL_COOKIE``) and sends the visitor to the shop.
2. The host passes it on: ``record_purchase(..., referral_code=code)``.  The
   ``purchase`` hook records a :class:`~flask_loyalty.models.Referral` for the
   order and checks the fraud rules.  Each rule that fires is kept in
   ``reasons`` and the referral is ``rejected``:

   - ``unknown_code`` - no customer has this code;
   - ``self_referral`` - the advocate used their own code;
   - ``not_first_order`` - the buyer had ordered before;
   - ``same_email`` - the buyer's e-mail is the advocate's (case, dots of
     Gmail addresses and ``+tags`` ignored);
   - ``same_name`` - the buyer's name is the advocate's (case and spacing ignored);
   - ``ip_limit`` - ``LOYALTY_REFERRAL_MAX_PER_IP_PER_WEEK`` referred orders
     already came from the buyer's IP address in the 7 days before.

   Otherwise the friend gets ``LOYALTY_REFERRAL_FRIEND_REWARD`` at once (a
   ``referral_reward`` mail tells them) and the referral is ``pending``.
3. Once the order is ``LOYALTY_REFERRAL_REFUND_WINDOW_DAYS`` old, the plan
   tick (:func:`process_matured`) rewards the advocate with
   ``LOYALTY_REFERRAL_ADVOCATE_REWARD`` - unless the order was refunded in
   full by then (``cancelled``, reason ``refunded``).

The buyer's IP address comes from the ``client_ip`` hooks (``fn(state) ->
str | None``); the web layer registers one that reads the current request.
Only a salted hash of it is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from flask_loyalty.models.base import table_of

from ..clock import resolve_now, utcnow
from ..errors import InvalidInput
from ..models import Customer, Purchase, Referral, ReferralCode
from ..state import LoyaltyState
from ..transaction import PendingSignal, advisory_lock, begin_write, dialect_name, finish, insert_ignore
from .base import Facade
from .prizes import issue_prize, parse_prize, prize_payload
from .purchases import get_customer

#: Symbols of referral codes (no look-alikes: no 0/O, 1/I/L, no U).
ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 10
FRAUD_REASONS = ("unknown_code", "self_referral", "not_first_order", "same_email", "same_name", "ip_limit")


def normalize_code(code: str) -> str:
    """The lookup form of a code: upper case without spaces or dashes."""
    return "".join(ch for ch in code.upper() if ch not in " -_\t.")


def new_code() -> str:
    """A random referral code (10 symbols, about 49 bits)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def hash_ip(state: LoyaltyState, ip: str) -> str:
    """Salted SHA-256 of an IP address (``LOYALTY_IP_HASH_SALT`` or derived from ``SECRET_KEY``)."""
    salt = state.config.get("LOYALTY_IP_HASH_SALT") or f"ip:{state.config.get('SECRET_KEY')}"
    return hmac.new(str(salt).encode(), ip.strip().encode(), hashlib.sha256).hexdigest()


def _email_key(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in ("gmail.com", "googlemail.com"):
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


def _name_key(name: str | None) -> str | None:
    if not name:
        return None
    key = " ".join(name.casefold().split())
    return key or None


def check_config(config: Any) -> None:
    """Validate the referral settings at set-up."""
    parse_prize(config["LOYALTY_REFERRAL_FRIEND_REWARD"], field="LOYALTY_REFERRAL_FRIEND_REWARD")
    parse_prize(config["LOYALTY_REFERRAL_ADVOCATE_REWARD"], field="LOYALTY_REFERRAL_ADVOCATE_REWARD")
    for key in ("LOYALTY_REFERRAL_REFUND_WINDOW_DAYS", "LOYALTY_REFERRAL_MAX_PER_IP_PER_WEEK"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput.field(key, "Must be a whole number >= 0.")


def code_for(state: LoyaltyState, customer: Customer) -> str:
    """The customer's referral code, created on first use (race-free; no commit)."""
    existing = state.session.execute(
        select(ReferralCode.code).where(ReferralCode.customer_id == customer.id)).scalar_one_or_none()
    if existing is not None:
        return existing
    insert_ignore(state, table_of(ReferralCode),
                  {"customer_id": customer.id, "code": new_code(), "created_at": utcnow()}, ["customer_id"])
    return state.session.execute(
        select(ReferralCode.code).where(ReferralCode.customer_id == customer.id)).scalar_one()


def owner_of(state: LoyaltyState, code: str) -> Customer | None:
    """The customer whose referral code is ``code`` (any case, spaces and dashes ignored)."""
    key = normalize_code(code)
    if not key:
        return None
    return state.session.execute(
        select(Customer).join(ReferralCode, ReferralCode.customer_id == Customer.id)
        .where(ReferralCode.code == key)).scalar_one_or_none()


def client_ip(state: LoyaltyState) -> str | None:
    """The buyer's IP address from the ``client_ip`` hooks (first non-empty answer)."""
    for hook in state.hooks.get("client_ip", ()):
        value = hook(state)
        if value:
            return str(value)
    return None


def fraud_reasons(state: LoyaltyState, *, advocate: Customer | None, friend: Customer, first: bool,
                  email: str | None, ip_hash: str | None, placed_at: datetime) -> list[str]:
    """The fraud rules that fire for a referred order (empty: accepted)."""
    if advocate is None:
        return ["unknown_code"]
    reasons: list[str] = []
    if advocate.id == friend.id:
        reasons.append("self_referral")
    if not first:
        reasons.append("not_first_order")
    adv_email = _email_key(advocate.email)
    if adv_email and adv_email in {_email_key(email), _email_key(friend.email)}:
        reasons.append("same_email")
    adv_name = _name_key(advocate.name)
    if adv_name and adv_name == _name_key(friend.name):
        reasons.append("same_name")
    limit = int(state.config["LOYALTY_REFERRAL_MAX_PER_IP_PER_WEEK"])
    if ip_hash is not None:
        # one referred order of this IP at a time counts and inserts (the referral row is written in the
        # same transaction), so concurrent checkouts cannot all pass the weekly limit
        advisory_lock(state, f"referral-ip:{ip_hash}")
        # within a week either side: concurrent checkouts take the lock in any order of their placed_at,
        # so an upper bound of placed_at would let a later lock holder with an earlier time pass too
        week = timedelta(days=7)
        recent = state.session.execute(
            select(func.count(Referral.id)).where(
                Referral.ip_hash == ip_hash, Referral.placed_at > placed_at - week,
                Referral.placed_at < placed_at + week)).scalar_one()
        if recent >= limit:
            reasons.append("ip_limit")
    return reasons


def on_purchase(state: LoyaltyState, *, purchase: Purchase, customer: Customer, first: bool,
                signals: list[PendingSignal], **_kwargs: Any) -> None:
    """``purchase`` hook: record a referred order, check the fraud rules, reward the friend."""
    if not purchase.referral_code or not state.config["LOYALTY_REFERRAL_ENABLED"]:
        return
    code = normalize_code(purchase.referral_code)
    advocate = owner_of(state, code)
    ip = client_ip(state)
    ip_hash = hash_ip(state, ip) if ip else None
    reasons = fraud_reasons(state, advocate=advocate, friend=customer, first=first, email=customer.email,
                            ip_hash=ip_hash, placed_at=purchase.placed_at)
    now = utcnow()
    inserted = insert_ignore(state, table_of(Referral), {
        "purchase_id": purchase.id, "code": code[:64], "advocate_id": advocate.id if advocate else None,
        "friend_id": customer.id, "status": "rejected" if reasons else "pending", "reasons": reasons,
        "ip_hash": ip_hash, "placed_at": purchase.placed_at, "created_at": now}, ["purchase_id"])
    if not inserted or reasons:
        return
    spec = parse_prize(state.config["LOYALTY_REFERRAL_FRIEND_REWARD"])
    reward = issue_prize(state, spec, customer, now=now, note="referral welcome", signals=signals)
    table = table_of(Referral)
    state.session.execute(update(table).where(table.c.purchase_id == purchase.id).values(friend_coupon=reward))
    from . import outbox

    outbox.enqueue(state, "referral_reward", customer, order_ref=purchase.order_ref, due_at=purchase.placed_at,
                   payload={"role": "friend", **prize_payload(state, spec, reward, now=now)},
                   dedupe_key=f"referral_reward:friend:{purchase.id}")


def on_refund(state: LoyaltyState, *, purchase: Purchase, full: bool, **_kwargs: Any) -> None:
    """``refund`` hook: a full refund of a pending referred order cancels the advocate's reward."""
    if not full:
        return
    table = table_of(Referral)
    state.session.execute(update(table).where(table.c.purchase_id == purchase.id, table.c.status == "pending")
                          .values(status="cancelled", reasons=["refunded"]))


def process_matured(state: LoyaltyState, *, now: datetime | None = None) -> int:
    """Reward advocates whose friend's order is past the refund window; returns how many.

    Runs in the caller's transaction.  Each referral moves from ``pending``
    with one conditional update, so concurrent plan ticks reward it once.
    """
    moment = resolve_now(now)
    window = int(state.config["LOYALTY_REFERRAL_REFUND_WINDOW_DAYS"])
    begin_write(state)
    query = (select(Referral.id).where(Referral.status == "pending",
                                       Referral.placed_at <= moment - timedelta(days=window))
             .order_by(Referral.id))
    if dialect_name(state) == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = state.session.execute(query).scalars().all()
    spec = parse_prize(state.config["LOYALTY_REFERRAL_ADVOCATE_REWARD"])
    table = table_of(Referral)
    rewarded = 0
    signals: list[PendingSignal] = []
    for referral_id in ids:
        referral = state.session.get(Referral, referral_id)
        assert referral is not None
        purchase = state.session.get(Purchase, referral.purchase_id)
        advocate = state.session.get(Customer, referral.advocate_id) if referral.advocate_id else None
        if purchase is None or purchase.net_total <= 0:
            outcome, reasons = "cancelled", ["refunded"]
        elif advocate is None or advocate.erased_at is not None:
            outcome, reasons = "cancelled", ["advocate_gone"]
        else:
            outcome, reasons = "rewarded", []
        moved = state.session.execute(
            update(table).where(table.c.id == referral_id, table.c.status == "pending")
            .values(status=outcome, reasons=reasons, rewarded_at=moment if outcome == "rewarded" else None)
            .returning(table.c.id)).first()
        if moved is None or outcome != "rewarded":
            continue
        assert advocate is not None and purchase is not None
        reward = issue_prize(state, spec, advocate, now=moment, note="referral", signals=signals)
        state.session.execute(update(table).where(table.c.id == referral_id).values(advocate_coupon=reward))
        from . import outbox

        outbox.enqueue(state, "referral_reward", advocate, due_at=moment,
                       payload={"role": "advocate", **prize_payload(state, spec, reward, now=moment)},
                       dedupe_key=f"referral_reward:advocate:{referral_id}")
        rewarded += 1
    state.session.flush()
    for signal, kwargs in signals:
        signal.send(state.app, **kwargs)
    return rewarded


def erase(state: LoyaltyState, *, customer: Customer, **_kwargs: Any) -> None:
    """``erase`` hook: drop the IP hashes of the customer's referrals and retire their code."""
    table = table_of(Referral)
    state.session.execute(update(table).where(table.c.friend_id == customer.id).values(ip_hash=None))
    state.session.execute(table_of(ReferralCode).delete().where(table_of(ReferralCode).c.customer_id == customer.id))


def export(state: LoyaltyState, *, customer: Customer, data: dict[str, Any], **_kwargs: Any) -> None:
    """``export`` hook: the customer's code and the referrals they made or came through."""
    code = state.session.execute(
        select(ReferralCode.code).where(ReferralCode.customer_id == customer.id)).scalar_one_or_none()
    rows = state.session.execute(select(Referral).where(
        (Referral.advocate_id == customer.id) | (Referral.friend_id == customer.id)).order_by(Referral.id)).scalars()
    entries = []
    for r in rows:
        mine = r.advocate_id == customer.id
        entry = {"role": "advocate" if mine else "friend", "status": r.status, "reasons": list(r.reasons),
                 "placed_at": r.placed_at.isoformat(), "reward": r.advocate_coupon if mine else r.friend_coupon}
        if not mine:
            # the hashed IP of the friend's own order is data held on the friend (never shown to the advocate)
            entry["ip_hash"] = r.ip_hash
        entries.append(entry)
    data["referrals"] = {"code": code, "referrals": entries}


class Referrals(Facade):
    """Referral codes, links and outcomes (``loyalty.referrals``)."""

    def code_for(self, customer_ref: str, *, commit: bool = True) -> str:
        """The customer's referral code (created the first time it is asked for)."""
        state = self._state
        customer = get_customer(state, customer_ref)
        if customer is None:
            raise InvalidInput.field("customer_ref", "Unknown customer.")
        existing = state.session.execute(
            select(ReferralCode.code).where(ReferralCode.customer_id == customer.id)).scalar_one_or_none()
        if existing is not None:
            return existing
        begin_write(state)
        code = code_for(state, customer)
        finish(state, commit=commit)
        return code

    def link(self, customer_ref: str, *, commit: bool = True) -> str:
        """The absolute referral link ``<base>/<prefix>/r/<code>`` to share with friends."""
        from .links import absolute

        return absolute(self._state, f"/r/{self.code_for(customer_ref, commit=commit)}")

    def owner(self, code: str) -> str | None:
        """The customer reference behind a code, or ``None``."""
        customer = owner_of(self._state, code)
        return customer.ref if customer else None

    def of_order(self, order_ref: str) -> Referral | None:
        """The referral recorded for an order (``None`` when the order had no code)."""
        return self._state.session.execute(
            select(Referral).join(Purchase, Purchase.id == Referral.purchase_id)
            .where(Purchase.order_ref == order_ref)).scalar_one_or_none()

    def made_by(self, customer_ref: str) -> list[Referral]:
        """Referrals where the customer is the advocate, oldest first."""
        return list(self._state.session.execute(
            select(Referral).join(Customer, Customer.id == Referral.advocate_id)
            .where(Customer.ref == customer_ref).order_by(Referral.id)).scalars())

    def process(self, *, now: datetime | None = None, commit: bool = True) -> int:
        """Reward advocates whose referral is past the refund window (the plan tick does this too)."""
        state = self._state
        count = process_matured(state, now=now)
        finish(state, commit=commit)
        return count
