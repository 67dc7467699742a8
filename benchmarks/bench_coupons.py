"""Coupon benchmarks: redeem throughput on PostgreSQL and create_batch(100_000).

    .venv/bin/python benchmarks/bench_coupons.py [--postgres URL] [--threads 8] [--per-thread 250]
                                                 [--batch 100000] [--skip-batch] [--skip-redeem]

1. Redeem throughput: THREADS threads (each with its own app context, so
   its own session and connection) redeem distinct codes, one
   ``loyalty.coupons.redeem(...)`` with its commit per order.  Baseline: the
   same threads doing plain single-row ``INSERT`` + ``COMMIT`` through the
   same ``db.session``.  Reported: both rates and their ratio (goal <= 3.0).
2. ``create_batch(100_000)`` on PostgreSQL and SQLite, each in a fresh child
   process: wall time and peak memory (peak RSS growth during the call;
   goals < 20 s and < 200 MB).

The PostgreSQL database (default ``LOYALTY_BENCH_POSTGRES_URL`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench``) is emptied
of loyalty tables first; use a scratch database.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, String, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_loyalty import Loyalty
from flask_loyalty.models import metadata as loyalty_metadata

DEFAULT_PG = os.environ.get("LOYALTY_BENCH_POSTGRES_URL",
                            "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench")


class Base(DeclarativeBase):
    pass


def make_app(url: str, pool: int = 8) -> tuple[Flask, SQLAlchemy, Loyalty, Any]:
    db = SQLAlchemy(model_class=Base)

    class PlainRow(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_plain_row"
        id: Mapped[int] = mapped_column(primary_key=True)
        ref: Mapped[str] = mapped_column(String(64), unique=True)
        amount: Mapped[int] = mapped_column(BigInteger)

    app = Flask("bench")
    engine_options = {"pool_size": pool, "max_overflow": 4} if url.startswith("postgresql") else {}
    app.config.update(SECRET_KEY="bench", SQLALCHEMY_DATABASE_URI=url, SQLALCHEMY_ENGINE_OPTIONS=engine_options,
                      LOYALTY_BASE_URL="http://bench.test")
    db.init_app(app)
    loyalty = Loyalty(app, db)
    with app.app_context():
        loyalty_metadata.drop_all(db.engine)
        db.drop_all()
        db.create_all()
        loyalty.create_all()
    return app, db, loyalty, PlainRow


def run_threads(app: Flask, threads: int, work: Any) -> float:
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        with app.app_context():
            barrier.wait()
            try:
                work(i)
            except BaseException as exc:  # reported below
                errors.append(exc)

    pool = [threading.Thread(target=target, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def bench_redeem(url: str, threads: int, per_thread: int, rounds: int) -> None:
    app, db, loyalty, plain_row = make_app(url, pool=threads)
    total = threads * per_thread
    print(f"== redeem throughput on PostgreSQL, {threads} threads x {per_thread} orders, best of {rounds}")
    best_plain = best_redeem = float("inf")
    for rnd in range(rounds):
        with app.app_context():
            codes = [c.code for c in loyalty.coupons.create_batch(total, kind="percent", value="10",
                                                                  max_uses=1, campaign=f"bench{rnd}")]

        def plain(i: int, rnd: int = rnd) -> None:
            for n in range(per_thread):
                db.session.execute(insert(plain_row).values(ref=f"r{rnd}-{i}-{n}", amount=n))
                db.session.commit()

        def redeem(i: int, rnd: int = rnd, codes: list[str] = codes) -> None:
            for n in range(per_thread):
                loyalty.coupons.redeem(codes[i * per_thread + n], customer_ref=f"c{i}-{n}",
                                       order_ref=f"o{rnd}-{i}-{n}", order_total=Decimal("59.90"))

        best_plain = min(best_plain, run_threads(app, threads, plain))
        best_redeem = min(best_redeem, run_threads(app, threads, redeem))
    with app.app_context():
        from sqlalchemy import func, select

        from flask_loyalty.models import Coupon, Redemption

        used = db.session.execute(select(func.sum(Coupon.uses))).scalar_one()
        redemptions = db.session.execute(select(func.count(Redemption.id))).scalar_one()
        assert used == redemptions == total * rounds, (used, redemptions)
    plain_rate, redeem_rate = total / best_plain, total / best_redeem
    ratio = best_redeem / best_plain
    print(f"  baseline: plain single-row INSERT + COMMIT  {plain_rate:8.0f} rows/s   ({best_plain:.2f} s)")
    print(f"  coupons.redeem (lock, checks, insert, update, commit)"
          f"  {redeem_rate:8.0f} redemptions/s   ({best_redeem:.2f} s)")
    print(f"  ratio redeem/baseline time: {ratio:.2f}   (goal <= 3.0: {'met' if ratio <= 3.0 else 'NOT met'})")
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def batch_child(url: str, count: int) -> None:
    """Runs in a fresh process: create_batch(count), print JSON with seconds and peak RSS growth."""
    app, _db, loyalty, _plain = make_app(url)
    with app.app_context():
        loyalty.coupons.create(kind="fixed", value="1")        # warm up imports, statement caches
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        made = loyalty.coupons.create_batch(count, kind="fixed", value="5", campaign="batch")
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert len(made) == count and len({c.code_key for c in made}) == count
        print(json.dumps({"seconds": elapsed, "peak_mb": (peak - before) / 1024, "count": len(made)}))


def bench_batch(url: str, label: str, count: int) -> None:
    out = subprocess.run([sys.executable, __file__, "--batch-child", url, "--batch", str(count)],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    secs, mb = result["seconds"], result["peak_mb"]
    print(f"  {label:<10} create_batch({count:_}): {secs:6.2f} s  (goal < 20 s: {'met' if secs < 20 else 'NOT met'}),"
          f" peak memory +{mb:5.0f} MB  (goal < 200 MB: {'met' if mb < 200 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=DEFAULT_PG)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--per-thread", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-redeem", action="store_true")
    parser.add_argument("--batch-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_child:
        batch_child(args.batch_child, args.batch)
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if not args.skip_redeem:
        bench_redeem(args.postgres, args.threads, args.per_thread, args.rounds)
    if not args.skip_batch:
        print("== create_batch, each in a fresh process")
        bench_batch(args.postgres, "PostgreSQL", args.batch)
        with tempfile.TemporaryDirectory() as tmp:
            bench_batch(f"sqlite:///{tmp}/bench.db", "SQLite", args.batch)


if __name__ == "__main__":
    main()
