"""Benchmark ``loyalty.analytics.recompute()`` against the bare per-customer GROUP BY.

Generates customers and purchases inside the database (``generate_series`` on
PostgreSQL, a recursive CTE on SQLite), then times, in the same run:

* the bare aggregate: ``SELECT customer_id, SUM(total) FROM loyalty_purchase
  GROUP BY customer_id`` — consumed inside the database (wrapped in a
  count; the median of three runs), and also fetched to Python, for
  reference;
* ``recompute()`` twice: the first run inserts every profile, the second
  updates them (the steady state of a nightly job).

Prints both times, the ratio, and the peak memory of this Python process
(``resource.getrusage``).  Goal: recompute <= 5x the bare aggregate, peak
memory < 2 GB.

    python benchmarks/bench_value.py --postgres postgresql+psycopg://postgres@127.0.0.1/loyalty_value_bench
    python benchmarks/bench_value.py --sqlite /tmp/bench_value.db --customers 100000 --purchases 500000
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from datetime import datetime, timezone

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_loyalty import Loyalty
from flask_loyalty.models import metadata

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def generate_postgres(db: SQLAlchemy, customers: int, purchases: int) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(text("""
            INSERT INTO loyalty_customer (id, ref, created_at, orders_count, total_spent, points_balance)
            SELECT g, 'c' || g, TIMESTAMPTZ '2024-01-01 00:00:00+00', 0, 0, 0
            FROM generate_series(1, :n) g"""), {"n": customers})
        # skewed: low ids buy much more often (a few heavy buyers, many one-time buyers); each customer
        # buys within their own active window (start 30-730 days ago, lasting 0-1000 days: dropout);
        # totals long-tailed 5..505; 3% partly refunded; channels weighted online > store > catalog > phone
        conn.execute(text("""
            INSERT INTO loyalty_purchase (id, order_ref, customer_id, total, refunded_total, currency, placed_at,
                                          channel, points_earned, points_reversed, created_at,
                                          known_margin, uncosted_total)
            SELECT g, 'o' || g, c, t, CASE WHEN r < 0.03 THEN t / 2 ELSE 0 END, 'EUR',
                   TIMESTAMPTZ '2026-06-01 00:00:00+00'
                     - (start_back - u * LEAST(life, start_back)) * INTERVAL '1 day',
                   CASE WHEN r2 < 0.7 THEN 'online' WHEN r2 < 0.9 THEN 'store'
                        WHEN r2 < 0.97 THEN 'catalog' ELSE 'phone' END,
                   0, 0, TIMESTAMPTZ '2026-06-01 00:00:00+00',
                   -- what the checkout stores for the one costed item of every fifth purchase (below)
                   CASE WHEN g % 5 = 0 THEN t - t * 6 / 10 ELSE 0 END, CASE WHEN g % 5 = 0 THEN 0 END
            FROM (SELECT g,
                         CASE WHEN g <= :n THEN g ELSE 1 + floor(power(random(), 2) * :n)::int END AS c,
                         (50000 + floor(power(random(), 3) * 5000000))::bigint AS t,
                         random() AS r, random() AS r2, random() AS u
                  FROM generate_series(1, :m) g) s0,
                 LATERAL (SELECT 30 + (s0.c::bigint * 7919) % 700 AS start_back,
                                 (s0.c::bigint * 104729) % 1000 AS life) w"""), {"n": customers, "m": purchases})
        # one item with a unit cost on every fifth purchase
        conn.execute(text("""
            INSERT INTO loyalty_purchase_item (purchase_id, sku, name, quantity, unit_price, unit_cost)
            SELECT p.id, 'SKU', 'Item', 1, p.total, p.total * 6 / 10
            FROM loyalty_purchase p WHERE p.id % 5 = 0"""))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def generate_sqlite(db: SQLAlchemy, customers: int, purchases: int) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("""
            WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < :n)
            INSERT INTO loyalty_customer (id, ref, created_at, orders_count, total_spent, points_balance)
            SELECT x, 'c' || x, '2024-01-01 00:00:00.000000', 0, 0, 0 FROM g"""), {"n": customers})
        conn.execute(text("""
            WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < :m),
            s AS MATERIALIZED (SELECT x,
                         CASE WHEN x <= :n THEN x
                              ELSE 1 + CAST((abs(random()) % 1000000) / 1000000.0
                                            * (abs(random()) % 1000000) / 1000000.0 * :n AS INTEGER) END AS c,
                         50000 + CAST(power((abs(random()) % 1000000) / 1000000.0, 3) * 5000000 AS INTEGER) AS t,
                         (abs(random()) % 1000) / 1000.0 AS r,
                         (abs(random()) % 1000) / 1000.0 AS r2,
                         (abs(random()) % 1000000) / 1000000.0 AS u
                  FROM g),
            w AS (SELECT s.*, 30 + (c * 7919) % 700 AS start_back, (c * 104729) % 1000 AS life FROM s)
            INSERT INTO loyalty_purchase (id, order_ref, customer_id, total, refunded_total, currency, placed_at,
                                          channel, points_earned, points_reversed, created_at,
                                          known_margin, uncosted_total)
            SELECT x, 'o' || x, c, t, CASE WHEN r < 0.03 THEN t / 2 ELSE 0 END, 'EUR',
                   strftime('%Y-%m-%d %H:%M:%S', julianday('2026-06-01') - (start_back - u * min(life, start_back))),
                   CASE WHEN r2 < 0.7 THEN 'online' WHEN r2 < 0.9 THEN 'store'
                        WHEN r2 < 0.97 THEN 'catalog' ELSE 'phone' END,
                   0, 0, '2026-06-01 00:00:00.000000',
                   CASE WHEN x % 5 = 0 THEN t - t * 6 / 10 ELSE 0 END, CASE WHEN x % 5 = 0 THEN 0 END
            FROM w"""), {"n": customers, "m": purchases})
        conn.execute(text("""
            INSERT INTO loyalty_purchase_item (purchase_id, sku, name, quantity, unit_price, unit_cost)
            SELECT p.id, 'SKU', 'Item', 1, p.total, p.total * 6 / 10
            FROM loyalty_purchase p WHERE p.id % 5 = 0"""))
        conn.execute(text("ANALYZE"))


BARE = "SELECT customer_id, SUM(total) AS s FROM loyalty_purchase GROUP BY customer_id"


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--postgres", help="SQLAlchemy URL of a scratch PostgreSQL database (tables are dropped)")
    where.add_argument("--sqlite", help="path of a scratch SQLite file (overwritten)")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--purchases", type=int, default=5_000_000)
    parser.add_argument("--keep", action="store_true",
                        help="reuse the customers and purchases generated by a previous run (generating a million "
                             "customers takes about ten minutes); the profiles and model fits of earlier runs are "
                             "deleted first, so the first recompute still inserts every profile")
    args = parser.parse_args()

    if args.sqlite:
        if not args.keep and os.path.exists(args.sqlite):
            os.remove(args.sqlite)
        url = f"sqlite:///{args.sqlite}"
    else:
        url = args.postgres
    app = Flask("bench_value")
    app.config.update(SQLALCHEMY_DATABASE_URI=url, SECRET_KEY="bench")
    db = SQLAlchemy()
    db.init_app(app)
    loyalty = Loyalty(app, db)
    with app.app_context():
        dialect = db.engine.dialect.name
        if not args.keep:
            metadata.drop_all(db.engine)
            loyalty.create_all()
            seconds, _ = timed(lambda: (generate_postgres if dialect == "postgresql" else generate_sqlite)(
                db, args.customers, args.purchases))
            print(f"generated {args.customers:,} customers and {args.purchases:,} purchases "
                  f"(+ {args.purchases // 5:,} items) in {seconds:.1f} s on {dialect}")
        else:
            with db.engine.begin() as conn:
                counts = conn.execute(text("SELECT (SELECT count(*) FROM loyalty_customer), "
                                           "(SELECT count(*) FROM loyalty_purchase)")).one()
                for table in ("loyalty_customer_profile", "loyalty_model_fit"):
                    conn.execute(text(f"TRUNCATE {table}" if dialect == "postgresql" else f"DELETE FROM {table}"))
            print(f"reusing {counts[0]:,} customers and {counts[1]:,} purchases on {dialect} "
                  "(profiles and model fits of earlier runs deleted)")
        print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        with db.engine.connect() as conn:
            conn.execute(text(f"SELECT count(*), sum(s) FROM ({BARE}) t")).one()      # warm the cache
            # the median of three: one run of the baseline moved by up to 30% on a shared machine
            runs = sorted(timed(lambda: conn.execute(text(f"SELECT count(*), sum(s) FROM ({BARE}) t")).one())[0]
                          for _ in range(3))
            bare = runs[1]
            fetched, rows = timed(lambda: conn.execute(text(BARE)).all())
            del rows
        print(f"bare GROUP BY (in the database):      {bare:8.2f} s  (median of "
              + ", ".join(f"{x:.2f}" for x in runs) + ")")
        print(f"bare GROUP BY (rows fetched to Python): {fetched:6.2f} s")
        first, scored = timed(lambda: loyalty.analytics.recompute(now=NOW))
        fit = loyalty.analytics.model()
        print(f"recompute, first run (insert):  {first:8.2f} s  ({scored:,} customers scored; "
              f"model: {fit.method if fit else None}{'' if not fit or not fit.reason else ' - ' + fit.reason})")
        second, _ = timed(lambda: loyalty.analytics.recompute(now=NOW))
        print(f"recompute, second run (update): {second:8.2f} s")
        params = loyalty.analytics.model_params()
        if params:
            print("model parameters: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
        report = loyalty.analytics.pareto()
        print(f"pareto: top 30% ({report.customers:,} buyers) bring {report.revenue_share:.1%} of revenue "
              f"and {report.profit_share:.1%} of profit")
        print(f"ratio recompute / bare GROUP BY: first {first / bare:.1f}x, second {second / bare:.1f}x "
              f"(against the fetched GROUP BY: {first / fetched:.1f}x, {second / fetched:.1f}x)")
        print(f"peak memory of this process: {peak_mb():.0f} MB")
        print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
