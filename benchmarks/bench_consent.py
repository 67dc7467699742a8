"""Consent cost per call: grant, has, capture, one-click unsubscribe, export, erase.

    python benchmarks/bench_consent.py [--customers 300] [--postgres URL]

For each database (a SQLite file, and PostgreSQL when ``--postgres`` or
``LOYALTY_TEST_POSTGRES_URL`` is given) it prints the median milliseconds per
call, each committing, over ``--customers`` customers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_loyalty import Loyalty
from flask_loyalty.models import metadata


def build(url: str) -> tuple[Flask, SQLAlchemy, Loyalty]:
    db = SQLAlchemy()
    app = Flask("bench")
    app.config.update(SECRET_KEY="bench", SQLALCHEMY_DATABASE_URI=url, LOYALTY_BASE_URL="http://bench.test")
    db.init_app(app)
    loyalty = Loyalty(app, db)
    with app.app_context():
        if url.startswith("postgresql"):
            with db.engine.begin() as conn:
                names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
                conn.execute(text(f"DROP TABLE IF EXISTS {names} CASCADE"))
        loyalty.create_all()
    return app, db, loyalty


def timed(fn: Callable[[int], object], n: int) -> float:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run(url: str, n: int) -> None:
    app, db, loyalty = build(url)
    with app.app_context():
        for i in range(n):
            loyalty.upsert_customer(f"c{i}", email=f"shopper{i}@example.com")
        c = loyalty.consent
        results = {
            "grant (no double opt-in)": timed(lambda i: c.grant(f"c{i}", "surveys", source="bench"), n),
            "grant (double opt-in, queues mail)": timed(
                lambda i: c.grant(f"c{i}", "email_marketing", source="bench"), n),
            "grant repeated (no-op)": timed(lambda i: c.grant(f"c{i}", "surveys", source="bench"), n),
            "has": timed(lambda i: c.has(f"c{i}", "surveys"), n),
        }
        form = {"loyalty_consent": ["postal_mail", "personalization"]}
        results["capture (2 boxes)"] = timed(lambda i: c.capture(f"c{i}", form), n)
        client = app.test_client()
        links = [loyalty.links.unsubscribe(f"c{i}", "surveys").replace("http://bench.test", "") for i in range(n)]
        results["one-click unsubscribe (HTTP)"] = timed(
            lambda i: client.post(links[i], data={"List-Unsubscribe": "One-Click"}), n)
        results["export"] = timed(lambda i: c.export(f"c{i}"), n)
        results["erase"] = timed(lambda i: c.erase(f"c{i}"), n)
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()
    name = "postgresql" if url.startswith("postgresql") else "sqlite"
    print(f"{name}: median ms per call over {n} customers")
    for label, ms in results.items():
        print(f"  {label:38s} {ms:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--postgres", default=os.environ.get("LOYALTY_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{tmp}/bench.db", args.customers)
    if args.postgres:
        run(args.postgres, args.customers)


if __name__ == "__main__":
    main()
