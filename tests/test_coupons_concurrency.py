"""Coupons and gift cards are never over-spent under concurrency (SQLite file DB and PostgreSQL).

Every thread has its own app context (so its own session and connection)
and all start together at a barrier.  Any exception other than the expected
``CouponError`` fails the test, so "database is locked" can never hide.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from flask_loyalty import CouponError, GiftCardError
from flask_loyalty.models import Coupon, GiftCard, GiftCardMovement, Redemption

pytestmark = pytest.mark.slow

# enough connections for real parallelism on PostgreSQL without exhausting a shared server
POOL = {"SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 8, "max_overflow": 24, "pool_timeout": 120}}


def run_together(shop: Any, n: int, work: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``work(i)`` on ``n`` threads started at one barrier; results and unexpected errors."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    lock = threading.Lock()

    def target(i: int) -> None:
        with shop.app.app_context():
            try:
                barrier.wait(timeout=60)
                results[i] = work(i)
            except CouponError as exc:
                results[i] = exc
            except BaseException as exc:  # anything else fails the test
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors


def outcome(results: list[Any]) -> Counter[str]:
    return Counter("ok" if isinstance(r, Redemption) else f"error:{r.reason}" if isinstance(r, CouponError)
                   else repr(r) for r in results)


def active_redemptions(shop: Any, coupon_id: int) -> int:
    shop.db.session.expire_all()
    return shop.db.session.execute(select(func.count(Redemption.id)).where(
        Redemption.coupon_id == coupon_id, Redemption.released_at.is_(None))).scalar_one()


@pytest.fixture
def cshop(make_shop):
    s = make_shop(**POOL)
    with s.app.app_context():
        yield s


def test_64_threads_one_single_use_code(cshop):
    coupon = cshop.loyalty.coupons.create(kind="fixed", value="10", max_uses=1, max_uses_per_customer=None)
    code, cid = coupon.code, coupon.id
    cshop.db.session.commit()
    results, errors = run_together(cshop, 64, lambda i: cshop.loyalty.coupons.redeem(
        code, customer_ref=f"c{i}", order_ref=f"o{i}", order_total="50"))
    assert errors == []
    counts = outcome(results)
    assert counts == Counter({"ok": 1, "error:exhausted": 63})
    assert active_redemptions(cshop, cid) == 1
    assert cshop.db.session.get(Coupon, cid).uses == 1


def test_max_uses_10_with_100_customers(cshop):
    coupon = cshop.loyalty.coupons.create(kind="percent", value="15", max_uses=10)
    code, cid = coupon.code, coupon.id
    cshop.db.session.commit()
    results, errors = run_together(cshop, 100, lambda i: cshop.loyalty.coupons.redeem(
        code, customer_ref=f"c{i}", order_ref=f"o{i}", order_total="20"))
    assert errors == []
    assert outcome(results) == Counter({"ok": 10, "error:exhausted": 90})
    assert active_redemptions(cshop, cid) == 10
    assert cshop.db.session.get(Coupon, cid).uses == 10


def test_one_customer_32_threads_32_orders(cshop):
    coupon = cshop.loyalty.coupons.create(kind="fixed", value="5", max_uses_per_customer=1)
    code, cid = coupon.code, coupon.id
    cshop.db.session.commit()
    results, errors = run_together(cshop, 32, lambda i: cshop.loyalty.coupons.redeem(
        code, customer_ref="alice", order_ref=f"o{i}", order_total="30"))
    assert errors == []
    assert outcome(results) == Counter({"ok": 1, "error:already_used": 31})
    assert active_redemptions(cshop, cid) == 1


def test_same_order_from_many_threads_is_one_redemption(cshop):
    coupon = cshop.loyalty.coupons.create(kind="fixed", value="5", max_uses=3)
    code, cid = coupon.code, coupon.id
    cshop.db.session.commit()
    results, errors = run_together(cshop, 16, lambda i: cshop.loyalty.coupons.redeem(
        code, customer_ref="alice", order_ref="o1", order_total="30").id)
    assert errors == []
    assert len(set(results)) == 1          # every caller got the same redemption
    assert active_redemptions(cshop, cid) == 1


def test_two_coupons_on_one_order_respect_stacking(cshop):
    codes = [cshop.loyalty.coupons.create(kind="fixed", value="1").code for _ in range(8)]
    cshop.db.session.commit()
    results, errors = run_together(cshop, 8, lambda i: cshop.loyalty.coupons.redeem(
        codes[i], customer_ref="alice", order_ref="o1", order_total="30"))
    assert errors == []
    assert outcome(results) == Counter({"ok": 1, "error:already_used": 7})


def test_gift_card_50_concurrent_charges(cshop):
    card = cshop.loyalty.gift_cards.issue("100")
    code, card_id = card.code, card.id
    cshop.db.session.commit()

    def charge(i: int) -> Decimal:
        return cshop.loyalty.gift_cards.charge(code, "10", order_ref=f"o{i}")

    results, errors = run_together(cshop, 50, charge)
    assert errors == []
    assert sorted(results).count(Decimal("10")) == 10
    assert sum(results) == Decimal("100") and all(r in (Decimal(0), Decimal(10)) for r in results)
    cshop.db.session.expire_all()
    assert cshop.loyalty.gift_cards.balance(code) == Decimal("0")
    moves = cshop.db.session.scalars(select(GiftCardMovement).where(GiftCardMovement.gift_card_id == card_id)).all()
    assert len(moves) == 11 and sum(m.amount for m in moves) == Decimal("0")
    assert -sum(m.amount for m in moves if m.kind == "charge") == Decimal("100")
    assert cshop.db.session.get(GiftCard, card_id).balance == Decimal("0")


def test_gift_card_same_order_charged_once(cshop):
    card = cshop.loyalty.gift_cards.issue("100")
    code = card.code
    cshop.db.session.commit()
    results, errors = run_together(cshop, 16, lambda i: cshop.loyalty.gift_cards.charge(code, "30", order_ref="o1"))
    assert errors == []
    assert set(results) == {Decimal("30")}
    cshop.db.session.expire_all()
    assert cshop.loyalty.gift_cards.balance(code) == Decimal("70")


# --- every exit of redeem / charge ends the transaction with commit=True ---------------------------

@pytest.fixture
def lshop(make_shop):
    """A shop whose SQLite writers give up after 2 s, so a lock left held shows as an error, not a hang."""
    s = make_shop(LOYALTY_SQLITE_BUSY_TIMEOUT=2.0, **POOL)
    with s.app.app_context():
        yield s


def in_other_thread(shop: Any, work: Callable[[], Any]) -> Any:
    """``work()`` in another thread (own session) while this one keeps its session; its result.

    A thread still blocked after 30 s counts as held by a lock of this session:
    the test fails after this session lets go (the timeout only detects a hang).
    """
    out: dict[str, Any] = {}

    def target() -> None:
        with shop.app.app_context():
            try:
                out["result"] = work()
            except BaseException as exc:  # reported to the test
                out["result"] = exc
            finally:
                shop.db.session.remove()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=30)
    blocked = thread.is_alive()
    shop.db.session.rollback()        # let a blocked thread finish
    thread.join(timeout=60)
    assert not blocked, "blocked by a lock this session still held"
    return out.get("result")


def test_repeated_redeem_does_not_keep_the_coupon_locked(lshop):
    lo = lshop.loyalty
    code = lo.coupons.create(kind="fixed", value="5", max_uses=100, max_uses_per_customer=None).code
    first = lo.coupons.redeem(code, customer_ref="c1", order_ref="o-1", order_total="50").id
    again = lo.coupons.redeem(code, customer_ref="c1", order_ref="o-1", order_total="50")   # a retry
    assert not lshop.db.session().in_transaction()
    assert again.id == first
    got = in_other_thread(lshop, lambda: lo.coupons.redeem(
        code, customer_ref="c2", order_ref="o-2", order_total="50").order_ref)
    assert got == "o-2"


def test_refused_redeem_does_not_keep_the_coupon_locked(lshop):
    lo = lshop.loyalty
    code = lo.coupons.create(kind="fixed", value="5", max_uses=100, max_uses_per_customer=None,
                             min_order_total="20").code
    with pytest.raises(CouponError) as refused:      # the use is claimed, then refused
        lo.coupons.redeem(code, customer_ref="c1", order_ref="o-1", order_total="10")
    assert refused.value.reason == "min_total"
    assert not lshop.db.session().in_transaction()
    got = in_other_thread(lshop, lambda: lo.coupons.redeem(
        code, customer_ref="c2", order_ref="o-2", order_total="50").order_ref)
    assert got == "o-2"
    lshop.db.session.expire_all()
    assert lo.coupons.get(code).uses == 1


@pytest.mark.parametrize("case", ["repeat", "empty", "refused"])
def test_every_gift_card_charge_exit_lets_go_of_the_card(lshop, case):
    lo = lshop.loyalty
    card = lo.gift_cards.issue("10.00")
    code = card.code
    assert lo.gift_cards.charge(code, "10.00", order_ref="o-1") == Decimal("10.00")
    if case == "repeat":
        assert lo.gift_cards.charge(code, "10.00", order_ref="o-1") == Decimal("10.00")
    elif case == "empty":
        assert lo.gift_cards.charge(code, "5.00", order_ref="o-2") == Decimal("0")
    else:
        with pytest.raises(GiftCardError):
            lo.gift_cards.charge(code, "5.00", order_ref="o-2", currency="USD")
    assert not lshop.db.session().in_transaction()
    # another checkout gets to the card at once (the refund takes the same lock as a charge)
    assert in_other_thread(lshop, lambda: lo.gift_cards.refund("o-1")) == Decimal("10.00")
