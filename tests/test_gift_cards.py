"""Gift cards: issue, balance, charge, refund, the ledger (CONTRACT §4)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError

from flask_loyalty import InvalidInput, LoyaltyError
from flask_loyalty.errors import GiftCardError
from flask_loyalty.models import GiftCard, GiftCardMovement
from flask_loyalty.models.base import table_of
from flask_loyalty.services import codes

UTC = timezone.utc


def test_issue_and_balance(shop):
    card = shop.loyalty.gift_cards.issue("50.00", customer_ref="c1", currency="usd")
    assert card.currency == "USD" and card.customer_ref == "c1"
    assert len(card.code_key) >= 16 and set(card.code_key) <= set(codes.ALPHABET)
    assert shop.loyalty.gift_cards.balance(card.code) == Decimal("50.00")
    assert shop.loyalty.gift_cards.balance(card.code.lower().replace("-", " ")) == Decimal("50")
    [issue] = shop.loyalty.gift_cards.movements(card.code)
    assert (issue.kind, issue.amount, issue.balance_after) == ("issue", Decimal("50"), Decimal("50"))


@pytest.mark.parametrize("kwargs,field", [
    ({"amount": "0"}, "amount"),
    ({"amount": "-5"}, "amount"),
    ({"amount": "abc"}, "amount"),
    ({"amount": "5", "currency": "EURO"}, "currency"),
    ({"amount": "5", "expires_at": datetime(2030, 1, 1)}, "expires_at"),
    ({"amount": "5", "expires_at": date(2000, 1, 1)}, "expires_at"),
    ({"amount": "5", "customer_ref": "x" * 65}, "customer_ref"),
    ({"amount": "5", "expires_at": date(9999, 12, 31)}, "expires_at"),      # end of local day overflowed
    ({"amount": "5", "expires_at": date(1, 1, 1)}, "expires_at"),
    ({"amount": "5", "expires_at": datetime(9999, 12, 31, 22, tzinfo=timezone(timedelta(hours=-5)))}, "expires_at"),
    ({"amount": "1e30"}, "amount"),                                        # quantize() raised InvalidOperation
])
def test_issue_bad_input(shop, kwargs, field):
    kwargs = dict(kwargs)
    amount = kwargs.pop("amount")
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.gift_cards.issue(amount, **kwargs)
    assert field in info.value.errors
    assert shop.db.session.execute(select(func.count(GiftCard.id))).scalar_one() == 0


def test_float_refused(shop):
    with pytest.raises(TypeError):
        shop.loyalty.gift_cards.issue(10.0)
    card = shop.loyalty.gift_cards.issue(10)
    with pytest.raises(TypeError):
        shop.loyalty.gift_cards.charge(card.code, 1.5, order_ref="o1")


def test_charge_takes_at_most_the_balance_and_is_idempotent(shop):
    gc = shop.loyalty.gift_cards
    card = gc.issue("25")
    assert gc.charge(card.code, "10", order_ref="o1") == Decimal("10")
    assert gc.charge(card.code, "10", order_ref="o1") == Decimal("10")   # repeat: same answer, no charge
    assert gc.balance(card.code) == Decimal("15")
    assert gc.charge(card.code, "40", order_ref="o2") == Decimal("15")
    assert gc.balance(card.code) == Decimal("0")
    assert gc.charge(card.code, "5", order_ref="o3") == Decimal("0")
    kinds = [(m.kind, m.amount, m.order_ref) for m in gc.movements(card.code)]
    assert kinds == [("issue", Decimal("25"), None), ("charge", Decimal("-10"), "o1"),
                     ("charge", Decimal("-15"), "o2")]


def test_refund_credits_back_once(shop):
    gc = shop.loyalty.gift_cards
    a, b = gc.issue("30"), gc.issue("30")
    gc.charge(a.code, "30", order_ref="o1")
    gc.charge(b.code, "12.50", order_ref="o1")
    gc.charge(b.code, "5", order_ref="o2")
    assert gc.refund("o1") == Decimal("42.50")
    assert gc.refund("o1") == Decimal("0")
    assert gc.balance(a.code) == Decimal("30") and gc.balance(b.code) == Decimal("25")
    assert gc.refund("unknown-order") == Decimal("0")
    # no second charge for o1 after the refund, and none reported: a new reference is needed
    with pytest.raises(InvalidInput) as info:
        gc.charge(a.code, "30", order_ref="o1")
    assert "order_ref" in info.value.errors
    assert gc.balance(a.code) == Decimal("30")


def test_errors(shop):
    gc = shop.loyalty.gift_cards
    with pytest.raises(GiftCardError) as info:
        gc.balance("NOPE-NOPE")
    assert info.value.reason == "not_found" and isinstance(info.value, LoyaltyError)
    with pytest.raises(GiftCardError):
        gc.charge("Z" * 80, "1", order_ref="o1")
    card = gc.issue("10", currency="EUR")
    with pytest.raises(GiftCardError) as info:
        gc.charge(card.code, "1", order_ref="o1", currency="USD")
    assert info.value.reason == "currency"
    with pytest.raises(InvalidInput):
        gc.charge(card.code, "0", order_ref="o1")
    with pytest.raises(InvalidInput):
        gc.charge(card.code, "1", order_ref="")


def test_expiry_is_end_of_local_day(make_shop):
    s = make_shop(LOYALTY_TIMEZONE="America/New_York")
    with s.app.app_context():
        gc = s.loyalty.gift_cards
        day = date.today() + timedelta(days=30)
        card = gc.issue("10", expires_at=day)
        end = card.expires_at
        assert end.astimezone(UTC).tzinfo is not None
        assert gc.charge(card.code, "1", order_ref="o1", now=end) == Decimal("1")
        with pytest.raises(GiftCardError) as info:
            gc.charge(card.code, "1", order_ref="o2", now=end + timedelta(microseconds=1))
        assert info.value.reason == "expired"
        assert gc.balance(card.code, now=end + timedelta(seconds=1)) == Decimal("0")
        assert gc.balance(card.code, now=end) == Decimal("9")


def test_balance_check_constraint(shop):
    card = shop.loyalty.gift_cards.issue("10")
    table = table_of(GiftCard)
    with pytest.raises(IntegrityError):
        shop.db.session.execute(update(table).where(table.c.id == card.id).values(balance=Decimal("-1")))
        shop.db.session.flush()
    shop.db.session.rollback()


def test_commit_false(shop):
    card = shop.loyalty.gift_cards.issue("10", commit=False)
    code = card.code
    shop.db.session.rollback()
    assert shop.loyalty.gift_cards.get(code) is None
    card = shop.loyalty.gift_cards.issue("10")
    shop.loyalty.gift_cards.charge(card.code, "4", order_ref="o1", commit=False)
    shop.db.session.rollback()
    assert shop.loyalty.gift_cards.balance(card.code) == Decimal("10")


def test_charge_after_its_refund_is_refused_never_reported_as_taken(shop):
    gc = shop.loyalty.gift_cards
    card = gc.issue("50.00")
    assert gc.charge(card.code, "30.00", order_ref="o-1") == Decimal("30.00")
    assert gc.refund("o-1") == Decimal("30.00")
    shop.db.session.add(shop.host_order(ref="host-1"))       # the host's pending write
    with pytest.raises(InvalidInput) as info:                # the order is checked out again
        gc.charge(card.code, "30.00", order_ref="o-1")
    assert list(info.value.errors) == ["order_ref"]
    assert not shop.db.session().in_transaction()
    assert gc.balance(card.code) == Decimal("50.00")
    assert [m.kind for m in gc.movements(card.code)] == ["issue", "charge", "refund"]
    assert gc.charge(card.code, "30.00", order_ref="o-1-retry") == Decimal("30.00")   # a new reference
    assert gc.balance(card.code) == Decimal("20.00")


def test_charge_on_an_empty_card_or_a_repeat_commits_like_every_write_call(shop):
    gc, db = shop.loyalty.gift_cards, shop.db
    card = gc.issue("10.00")
    assert gc.charge(card.code, "10.00", order_ref="o-1") == Decimal("10.00")
    db.session.add(shop.host_order(ref="host-1"))
    assert gc.charge(card.code, "5.00", order_ref="o-2", commit=True) == Decimal("0")     # empty card
    assert not db.session().in_transaction()
    db.session.add(shop.host_order(ref="host-2"))
    assert gc.charge(card.code, "10.00", order_ref="o-1", commit=True) == Decimal("10.00")   # a repeat
    assert not db.session().in_transaction()
    db.session.remove()                                        # end of the request
    assert sorted(db.session.execute(select(shop.host_order.ref)).scalars()) == ["host-1", "host-2"]


def test_refused_charge_with_commit_true_rolls_back_and_writes_nothing(shop):
    gc, db = shop.loyalty.gift_cards, shop.db
    code = gc.issue("10.00", currency="EUR").code
    db.session.add(shop.host_order(ref="host-1"))
    with pytest.raises(GiftCardError):
        gc.charge(code, "5.00", order_ref="o-1", currency="USD")
    assert not db.session().in_transaction()
    db.session.remove()
    assert db.session.execute(select(shop.host_order.ref)).scalars().all() == []
    assert gc.balance(code) == Decimal("10.00") and len(gc.movements(code)) == 1


def test_ledger_sums_to_balance_in_sql(shop):
    gc = shop.loyalty.gift_cards
    card = gc.issue("100")
    for i in range(7):
        gc.charge(card.code, "9.99", order_ref=f"o{i}")
    gc.refund("o3")
    total = shop.db.session.execute(select(func.sum(GiftCardMovement.amount))
                                    .where(GiftCardMovement.gift_card_id == card.id)).scalar_one()
    assert total == gc.balance(card.code) == Decimal("100") - 6 * Decimal("9.99")
    assert shop.db.session.execute(text("SELECT 1")).scalar_one() == 1
