"""Any sequence of purchases and partial refunds keeps points and refunds consistent."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import func, select

from flask_loyalty.models import Customer, PointsEntry, Purchase

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("500"), places=2)


def run_machine(make_shop) -> None:
    class CheckoutMachine(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.shop = make_shop(fresh=True)
            self.ctx = self.shop.app.app_context()
            self.ctx.push()
            self.orders: dict[str, tuple[Decimal, Decimal]] = {}   # ref -> (total, refunded)
            self.n = 0

        @rule(total=amounts, customer=st.sampled_from(["c1", "c2"]))
        def buy(self, total: Decimal, customer: str) -> None:
            self.n += 1
            ref = f"o{self.n}"
            p = self.shop.loyalty.record_purchase(ref, customer, total)
            assert p.total == total
            self.orders[ref] = (total, Decimal(0))

        @precondition(lambda self: bool(self.orders))
        @rule(data=st.data(), amount=st.one_of(st.none(), amounts))
        def refund(self, data: st.DataObject, amount: Decimal | None) -> None:
            ref = data.draw(st.sampled_from(sorted(self.orders)))
            total, refunded = self.orders[ref]
            p = self.shop.loyalty.record_refund(ref, amount=amount)
            expected = total if amount is None else min(total, refunded + amount)
            assert p.refunded_total == expected
            self.orders[ref] = (total, expected)

        @precondition(lambda self: bool(self.orders))
        @rule(data=st.data())
        def repeat_purchase(self, data: st.DataObject) -> None:
            ref = data.draw(st.sampled_from(sorted(self.orders)))
            before = self.shop.loyalty.customer("c1"), self.shop.loyalty.customer("c2")
            counts = [c.orders_count if c else 0 for c in before]
            self.shop.loyalty.record_purchase(ref, "c1", "999")
            after = [c.orders_count if (c := self.shop.loyalty.customer(r)) else 0 for r in ("c1", "c2")]
            assert after == counts

        @invariant()
        def points_match_non_refunded_value(self) -> None:
            if not hasattr(self, "shop"):
                return
            session = self.shop.db.session
            for customer in session.execute(select(Customer)).scalars():
                session.refresh(customer)
                expected = 0
                for p in session.execute(select(Purchase).where(Purchase.customer_id == customer.id)).scalars():
                    session.refresh(p)
                    assert Decimal(0) <= p.refunded_total <= p.total
                    expected += int((Decimal(p.points_earned) * (p.total - p.refunded_total) / p.total)
                                    .to_integral_value(rounding=ROUND_FLOOR)) if p.total else 0
                assert customer.points_balance == expected >= 0
                ledger = session.execute(select(func.coalesce(func.sum(PointsEntry.delta), 0))
                                         .where(PointsEntry.customer_id == customer.id)).scalar_one()
                assert ledger == customer.points_balance

        def teardown(self) -> None:
            if hasattr(self, "ctx"):
                self.shop.db.session.remove()
                self.ctx.pop()

    CheckoutMachine.TestCase.settings = settings(
        max_examples=15, stateful_step_count=12, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    CheckoutMachine.TestCase().runTest()


@pytest.mark.slow
def test_purchases_and_refunds_keep_points_consistent(make_shop):
    run_machine(make_shop)
