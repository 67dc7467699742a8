"""Checkout hook cost: ``record_purchase`` vs. a bare insert of the same order row.

    python benchmarks/bench_checkout.py [--orders 2000] [--postgres URL]

For each database (a SQLite file, and PostgreSQL when ``--postgres`` or
``LOYALTY_TEST_POSTGRES_URL`` is given) it times, per call:

* baseline: insert the order into a plain host table and commit;
* loyalty: ``loyalty.record_purchase`` with three items, committing.

and prints the medians and their ratio (goal: ratio <= 3.0).  It runs twice:
with the default communication plan and with the plan's order-driven steps
switched off.  The checkout writes the same rows either way (customer,
purchase, items, points); with the plan on, the order's mails (thank-you with
its welcome coupon, survey invitation, replenishment) are planned from the
purchase rows by the next dispatch, so that work is timed too, after the
loop: ``plan_new_orders`` over all the orders, reported per order.  One
customer in four is new, as in a shop with some repeat business.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Integer, Numeric, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_loyalty import Loyalty
from flask_loyalty.models import metadata
from flask_loyalty.services.dispatch import plan_new_orders

ITEMS = [
    {"sku": "TEA-1", "name": "Green tea", "quantity": 2, "unit_price": "12.50", "category": "tea"},
    {"sku": "MUG-1", "name": "Mug", "quantity": 1, "unit_price": "9.90", "unit_cost": "4.00"},
    {"sku": "HON-1", "name": "Honey", "quantity": 1, "unit_price": "7.10", "replenish_after_days": 30},
]


NO_PLAN = {"thank_you": False, "usage_guide": False, "survey_invite": False, "replenish": False}


def build(url: str, **config: object) -> tuple[Flask, SQLAlchemy, Loyalty, type]:
    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)

    class BenchOrder(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_order"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        ref: Mapped[str] = mapped_column(String(64), unique=True)
        customer: Mapped[str] = mapped_column(String(64))
        total: Mapped[Decimal] = mapped_column(Numeric(12, 2))

    app = Flask("bench")
    app.config.update(SECRET_KEY="bench", SQLALCHEMY_DATABASE_URI=url, LOYALTY_BASE_URL="http://bench.test")
    app.config.update(config)
    db.init_app(app)
    loyalty = Loyalty(app, db)
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_order"))
        metadata.drop_all(db.engine)
        db.create_all()
        loyalty.create_all()
    return app, db, loyalty, BenchOrder


def run(url: str, orders: int, **config: object) -> tuple[float, float, float | None]:
    app, db, loyalty, bench_order = build(url, **config)
    customers = max(orders // 4, 1)
    base_times: list[float] = []
    loyalty_times: list[float] = []
    with app.app_context():
        for i in range(orders):
            # interleave both so machine noise hits them alike
            t0 = time.perf_counter()
            db.session.add(bench_order(ref=f"b{i}", customer=f"c{i % customers}", total=Decimal("42.00")))
            db.session.commit()
            base_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loyalty.record_purchase(f"o{i}", f"c{i % customers}", Decimal("42.00"), items=ITEMS)
            loyalty_times.append(time.perf_counter() - t0)
            db.session.expunge_all()
        t0 = time.perf_counter()
        planned = plan_new_orders(loyalty.state)
        planning = (time.perf_counter() - t0) / planned if planned else None
        db.session.remove()
        db.engine.dispose()
    return statistics.median(base_times), statistics.median(loyalty_times), planning


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--postgres", default=os.environ.get("LOYALTY_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    targets = []
    with tempfile.TemporaryDirectory() as tmp:
        targets.append(("SQLite file", f"sqlite:///{tmp}/bench.db"))
        if args.postgres:
            targets.append(("PostgreSQL", args.postgres))
        print(f"{args.orders} orders, 3 items each, one transaction per call")
        print(f"{'database':<12} {'plan':<8} {'baseline ms':>12} {'loyalty ms':>12} {'ratio':>7}  goal <= 3.0"
              "   then, at dispatch: planning ms/order")
        for name, url in targets:
            for label, config in (("default", {}), ("off", {"LOYALTY_PLAN": NO_PLAN})):
                base, ours, planning = run(url, args.orders, **config)
                ratio = ours / base
                later = f"{planning * 1000:.3f}" if planning is not None else "-"
                print(f"{name:<12} {label:<8} {base * 1000:>12.3f} {ours * 1000:>12.3f} {ratio:>7.2f}  "
                      f"{'ok' if ratio <= 3.0 else 'ABOVE GOAL':<10}   {later:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
