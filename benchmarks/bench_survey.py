"""Survey cost: answering through the service, and the figures over many responses.

    python benchmarks/bench_survey.py [--answers 300] [--responses 50000] [--postgres URL]

For each database (a SQLite file, and PostgreSQL when ``--postgres`` or
``LOYALTY_TEST_POSTGRES_URL`` is given) it prints:

* answer: median time of ``loyalty.surveys.answer`` completing a 5-question
  survey and committing (a fresh order each time);
* stats / series: time of ``surveys.stats()`` and ``surveys.series(period="week")``
  over ``--responses`` stored responses (bulk-loaded, 4 answers each).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import insert, text
from sqlalchemy.orm import DeclarativeBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_loyalty import Loyalty
from flask_loyalty.models import Customer, Purchase, SurveyAnswer, SurveyResponse, metadata
from flask_loyalty.models.base import table_of

T0 = datetime(2025, 1, 6, tzinfo=timezone.utc)


def build(url: str) -> tuple[Flask, SQLAlchemy, Loyalty]:
    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)
    app = Flask("bench_survey")
    app.config.update(SECRET_KEY="bench", SQLALCHEMY_DATABASE_URI=url, LOYALTY_BASE_URL="http://bench.test",
                      LOYALTY_PLAN={"thank_you": False, "usage_guide": False, "survey_invite": False,
                                    "replenish": False, "birthday": False, "win_back": False})
    db.init_app(app)
    loyalty = Loyalty(app, db)
    with app.app_context():
        if url.startswith("postgresql"):
            with db.engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        else:
            metadata.drop_all(db.engine)
        loyalty.create_all()
    return app, db, loyalty


def bench_answers(app: Flask, loyalty: Loyalty, n: int) -> float:
    with app.app_context():
        for i in range(n):
            loyalty.record_purchase(f"a{i}", f"ca{i}", "10.00")
        times = []
        for i in range(n):
            start = time.perf_counter()
            loyalty.surveys.answer(f"a{i}", {"source": "advert", "experience": 4, "ease": 5,
                                             "recommend": i % 11, "comment": "fine"})
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_responses(app: Flask, db: SQLAlchemy, n: int) -> None:
    rng = random.Random(5)
    with app.app_context():
        session = db.session
        session.execute(insert(table_of(Customer)), [
            {"id": 1_000_000 + i, "ref": f"bc{i}", "orders_count": 1, "total_spent": Decimal(10),
             "points_balance": 0, "created_at": T0} for i in range(n)])
        session.execute(insert(table_of(Purchase)), [
            {"id": 1_000_000 + i, "order_ref": f"b{i}", "customer_id": 1_000_000 + i, "total": Decimal(10),
             "refunded_total": Decimal(0), "currency": "EUR", "placed_at": T0, "channel": "online",
             "points_earned": 0, "points_reversed": 0, "created_at": T0} for i in range(n)])
        session.execute(insert(table_of(SurveyResponse)), [
            {"id": 1_000_000 + i, "purchase_id": 1_000_000 + i, "customer_id": 1_000_000 + i,
             "answered_at": T0 + timedelta(minutes=15 * i), "updated_at": T0, "completed_at": T0,
             "channel": "page", "created_at": T0} for i in range(n)])
        rows = []
        sources = ["search_engine", "social_network", "friend_family", "newsletter", "advert", "other"]
        for i in range(n):
            rid = 1_000_000 + i
            rows += [
                {"response_id": rid, "question": "recommend", "type": "scale", "number": rng.randint(0, 10),
                 "choice": None},
                {"response_id": rid, "question": "experience", "type": "scale", "number": rng.randint(1, 5),
                 "choice": None},
                {"response_id": rid, "question": "ease", "type": "scale", "number": rng.randint(1, 5), "choice": None},
                {"response_id": rid, "question": "source", "type": "choice", "number": None,
                 "choice": rng.choice(sources)}]
        for chunk in range(0, len(rows), 20000):
            session.execute(insert(table_of(SurveyAnswer)), rows[chunk:chunk + 20000])
        session.commit()


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=300)
    parser.add_argument("--responses", type=int, default=50000)
    parser.add_argument("--postgres", default=os.environ.get("LOYALTY_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    urls = [("sqlite", f"sqlite:///{tempfile.mkdtemp()}/bench_survey.db")]
    if args.postgres:
        urls.append(("postgresql", args.postgres))
    for name, url in urls:
        app, db, loyalty = build(url)
        per_answer = bench_answers(app, loyalty, args.answers)
        load_responses(app, db, args.responses)
        with app.app_context():
            st = loyalty.surveys.stats()
            t_stats = min(timed(loyalty.surveys.stats) for _ in range(3))
            t_series = min(timed(partial(loyalty.surveys.series, period="week")) for _ in range(3))
        print(f"{name:10s} answer: median {per_answer * 1000:.2f} ms/answer ({1 / per_answer:.0f}/s); "
              f"stats over {st.responses} responses: {t_stats * 1000:.0f} ms (NPS {st.nps}); "
              f"weekly series: {t_series * 1000:.0f} ms")


if __name__ == "__main__":
    main()
