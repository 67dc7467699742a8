"""Rewards at shop scale: checkout overhead of tiers, raffle draw, campaign launch and report.

    python benchmarks/bench_rewards.py [--customers 20000] [--audience 5000] [--postgres URL]

For each database (a SQLite file, and PostgreSQL when ``--postgres`` or
``LOYALTY_TEST_POSTGRES_URL`` is given) it seeds ``--customers`` customers
with three purchases each (bulk Core inserts), then times:

* ``record_purchase`` median per call without tiers and with three tiers
  (one lifetime, one rolling) - the tier hook's cost on the checkout;
* ``raffles.draw`` over every customer (eligibility aggregate, entries,
  10 winners with coupons);
* ``campaigns.launch`` for ``--audience`` customers (coupons + outbox rows
  for the treatment group) and ``campaigns.report`` on it;
* 20 threads redeeming 100 points from a balance of 500 (exactly 5 succeed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import insert, inspect, text
from sqlalchemy.orm import DeclarativeBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_loyalty import Loyalty
from flask_loyalty.models import Customer, Purchase, metadata
from flask_loyalty.models.base import table_of
from flask_loyalty.services.points import NotEnoughPoints

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIERS = [{"name": "Silver", "min_spend": "100"}, {"name": "Gold", "min_spend": "500", "discount_percent": "5"},
         {"name": "VIP", "min_spend": "300", "window_days": 90, "points_multiplier": "2"}]


def build(url: str, **config: object) -> tuple[Flask, SQLAlchemy, Loyalty]:
    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)
    app = Flask("bench")
    app.config.update(SECRET_KEY="bench", SQLALCHEMY_DATABASE_URI=url, LOYALTY_BASE_URL="http://bench.test")
    app.config.update(config)
    db.init_app(app)
    loyalty = Loyalty(app, db)
    return app, db, loyalty


def reset(app: Flask, db: SQLAlchemy, loyalty: Loyalty) -> None:
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            with db.engine.begin() as conn:
                present = set(inspect(conn).get_table_names())
                names = [t.name for t in metadata.sorted_tables if t.name in present]
                if names:
                    conn.execute(text("TRUNCATE " + ", ".join(names) + " RESTART IDENTITY CASCADE"))
        loyalty.create_all()


def seed(app: Flask, db: SQLAlchemy, customers: int) -> None:
    with app.app_context():
        now = datetime.now(UTC)
        ctable, ptable = table_of(Customer), table_of(Purchase)
        for start in range(0, customers, 5000):
            batch = range(start, min(start + 5000, customers))
            db.session.execute(insert(ctable), [
                {"ref": f"c{i}", "created_at": now, "orders_count": 3, "total_spent": Decimal(90),
                 "points_balance": 90, "first_purchase_at": T0, "last_purchase_at": T0 + timedelta(days=20)}
                for i in batch])
            ids = dict(db.session.execute(text("SELECT ref, id FROM loyalty_customer WHERE id > :lo"),
                                          {"lo": start}).all())
            db.session.execute(insert(ptable), [
                {"order_ref": f"o{i}-{k}", "customer_id": ids[f"c{i}"], "total": Decimal(30),
                 "refunded_total": Decimal(0), "currency": "EUR", "placed_at": T0 + timedelta(days=10 * k),
                 "channel": "online", "points_earned": 30, "points_reversed": 0, "created_at": now}
                for i in batch for k in range(3)])
            db.session.commit()


def checkout_median(url: str, tiers: list[dict[str, str]], n: int = 300) -> float:
    app, db, loyalty = build(url, LOYALTY_TIERS=tiers)
    reset(app, db, loyalty)
    times = []
    tag = "t" if tiers else "p"      # fresh orders even when the SQLite file is reused
    with app.app_context():
        for i in range(n):
            start = time.perf_counter()
            loyalty.record_purchase(f"{tag}{i}", f"{tag}{i % 50}", "40.00")
            times.append(time.perf_counter() - start)
        db.session.remove()
        db.engine.dispose()
    return statistics.median(times) * 1000


def run(url: str, customers: int, audience: int) -> None:
    print(f"== {url.split('@')[-1] if '@' in url else url}")
    plain = checkout_median(url, [])
    tiered = checkout_median(url, TIERS)
    print(f"record_purchase median: {plain:.2f} ms without tiers, {tiered:.2f} ms with 3 tiers "
          f"(ratio {tiered / plain:.2f})")

    app, db, loyalty = build(url)
    reset(app, db, loyalty)
    start = time.perf_counter()
    seed(app, db, customers)
    print(f"seeded {customers} customers / {3 * customers} purchases in {time.perf_counter() - start:.1f} s")
    with app.app_context():
        loyalty.raffles.create("bench", title="Bench", winners=10, prize={"kind": "fixed", "value": "5"},
                               rule={"since": T0, "until": T0 + timedelta(days=60)})
        start = time.perf_counter()
        loyalty.raffles.draw("bench")
        draw = time.perf_counter() - start
        record = loyalty.raffles.public("bench")
        start = time.perf_counter()
        assert loyalty.raffles.verify("bench")
        verify = time.perf_counter() - start
        print(f"raffles.draw over {len(record['entries'])} entrants: {draw:.2f} s; verify: {verify:.2f} s")

        refs = [f"c{i}" for i in range(audience)]
        loyalty.campaigns.create("bench", customer_refs=refs, offer={"kind": "fixed", "value": "5"},
                                 starts_at=T0 + timedelta(days=30), ends_at=T0 + timedelta(days=60))
        start = time.perf_counter()
        loyalty.campaigns.launch("bench", now=T0 + timedelta(days=29))
        launch = time.perf_counter() - start
        start = time.perf_counter()
        report = loyalty.campaigns.report("bench", now=T0 + timedelta(days=60))
        took = time.perf_counter() - start
        print(f"campaigns.launch for {audience} customers: {launch:.2f} s "
              f"({launch / audience * 1000:.2f} ms per member); report: {took:.2f} s "
              f"(treatment {report.treatment.members}, holdout {report.holdout.members})")
        db.session.execute(text("UPDATE loyalty_customer SET points_balance = 500 WHERE ref = 'c0'"))
        db.session.commit()

    barrier = threading.Barrier(20)
    results: list[str] = []

    def worker() -> None:
        with app.app_context():
            barrier.wait()
            try:
                loyalty.points.redeem("c0", 100)
                results.append("ok")
            except NotEnoughPoints:
                results.append("refused")
            finally:
                db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(20)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"20 concurrent redeems of 100 from 500: {results.count('ok')} ok, {results.count('refused')} refused "
          f"in {time.perf_counter() - start:.2f} s")
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--audience", type=int, default=5000)
    parser.add_argument("--postgres", default=os.environ.get("LOYALTY_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{tmp}/bench.db", args.customers, args.audience)
    if args.postgres:
        run(args.postgres, args.customers, args.audience)


if __name__ == "__main__":
    main()
