"""Hypothesis stateful test: coupons and gift cards against a plain in-memory model."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import delete, func, select

from flask_loyalty import CouponError, InvalidInput
from flask_loyalty.models import Coupon, GiftCard, GiftCardMovement, Redemption

CUSTOMERS = st.sampled_from(["c0", "c1", "c2"])
ORDERS = st.sampled_from([f"o{i}" for i in range(6)])
AMOUNTS = st.integers(min_value=1, max_value=6000).map(lambda cents: Decimal(cents).scaleb(-2))


def test_coupons_and_gift_cards_match_model(shop):
    loyalty, session = shop.loyalty, shop.db.session

    class Machine(RuleBasedStateMachine):
        coupons = Bundle("coupons")
        cards = Bundle("cards")

        def __init__(self) -> None:
            super().__init__()
            for model in (Redemption, Coupon, GiftCardMovement, GiftCard):
                session.execute(delete(model))
            session.commit()
            # coupon model
            self.limits: dict[str, tuple[int | None, int | None]] = {}
            self.active: dict[tuple[str, str], tuple[str, int]] = {}   # (code, order) -> (customer, id)
            # gift card model
            self.balance: dict[str, Decimal] = {}
            self.charged: dict[tuple[str, str], Decimal] = {}
            self.refunded: dict[tuple[str, str], Decimal] = defaultdict(Decimal)

        # --- coupons ---
        @rule(target=coupons, max_uses=st.one_of(st.none(), st.integers(1, 3)),
              per_customer=st.one_of(st.none(), st.integers(1, 2)))
        def create(self, max_uses, per_customer):
            c = loyalty.coupons.create(kind="fixed", value="5", max_uses=max_uses,
                                       max_uses_per_customer=per_customer)
            self.limits[c.code] = (max_uses, per_customer)
            return c.code

        @rule(code=coupons, customer=CUSTOMERS, order=ORDERS)
        def redeem(self, code, customer, order):
            max_uses, per_customer = self.limits[code]
            uses = sum(1 for (c, _o) in self.active if c == code)
            mine = sum(1 for (c, _o), (cust, _i) in self.active.items() if c == code and cust == customer)
            order_busy = any(o == order for (_c, o) in self.active)
            if (code, order) in self.active:
                expected = "same"
            elif max_uses is not None and uses >= max_uses:
                expected = "exhausted"
            elif per_customer is not None and mine >= per_customer:
                expected = "already_used"
            elif order_busy:
                expected = "already_used"      # LOYALTY_COUPONS_PER_ORDER = 1
            else:
                expected = "ok"
            try:
                r = loyalty.coupons.redeem(code.lower(), customer_ref=customer, order_ref=order, order_total="20")
            except CouponError as exc:
                assert exc.reason == expected
                return
            if expected == "same":
                assert r.id == self.active[(code, order)][1]
            else:
                assert expected == "ok"
                assert r.discount == Decimal("5")
                self.active[(code, order)] = (customer, r.id)

        @rule(order=ORDERS)
        def release(self, order):
            expected = [k for k in self.active if k[1] == order]
            assert loyalty.coupons.release(order) == len(expected)
            for k in expected:
                del self.active[k]

        @rule(code=coupons, customer=CUSTOMERS)
        def validate(self, code, customer):
            max_uses, per_customer = self.limits[code]
            uses = sum(1 for (c, _o) in self.active if c == code)
            mine = sum(1 for (c, _o), (cust, _i) in self.active.items() if c == code and cust == customer)
            q = loyalty.coupons.validate(code, customer_ref=customer, order_total="3")
            if max_uses is not None and uses >= max_uses:
                assert q.reason == "exhausted"
            elif per_customer is not None and mine >= per_customer:
                assert q.reason == "already_used"
            else:
                assert q.valid and q.discount == Decimal("3")

        # --- gift cards ---
        @rule(target=cards, amount=AMOUNTS)
        def issue(self, amount):
            card = loyalty.gift_cards.issue(amount)
            self.balance[card.code] = amount
            return card.code

        @rule(code=cards, amount=AMOUNTS, order=ORDERS)
        def charge(self, code, amount, order):
            if self.refunded[(code, order)] > 0:     # charged, then refunded: a new reference is needed
                with pytest.raises(InvalidInput):
                    loyalty.gift_cards.charge(code, amount, order_ref=order)
                return
            got = loyalty.gift_cards.charge(code, amount, order_ref=order)
            if (code, order) in self.charged:
                assert got == self.charged[(code, order)]
                return
            expected = min(amount, self.balance[code])
            assert got == expected
            if expected > 0:
                self.charged[(code, order)] = expected
                self.balance[code] -= expected

        @rule(order=ORDERS)
        def refund(self, order):
            expected = Decimal(0)
            for (code, o), amount in self.charged.items():
                if o == order:
                    owed = amount - self.refunded[(code, o)]
                    self.refunded[(code, o)] += owed
                    self.balance[code] += owed
                    expected += owed
            assert loyalty.gift_cards.refund(order) == expected

        # --- invariants ---
        @invariant()
        def counters_match(self):
            session.expire_all()
            for code, (max_uses, _per) in self.limits.items():
                coupon = loyalty.coupons.get(code)
                model_uses = sum(1 for (c, _o) in self.active if c == code)
                assert coupon.uses == model_uses
                assert max_uses is None or coupon.uses <= max_uses

        @invariant()
        def balances_match_ledger(self):
            for code, balance in self.balance.items():
                assert loyalty.gift_cards.balance(code) == balance
                card = loyalty.gift_cards.get(code)
                total = session.execute(select(func.sum(GiftCardMovement.amount))
                                        .where(GiftCardMovement.gift_card_id == card.id)).scalar_one()
                assert total == balance >= 0

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=20, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]))
