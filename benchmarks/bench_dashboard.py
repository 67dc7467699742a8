"""Dashboard page times with 100,000 customers and 500,000 purchases.

    python benchmarks/bench_dashboard.py [--customers 100000] [--purchases 500000]
                                         [--postgres URL] [--sqlite-only] [--repeat 3]

For each database (a SQLite file, and PostgreSQL when ``--postgres`` or
``LOYALTY_TEST_POSTGRES_URL`` is given; the PostgreSQL database is emptied
first) it bulk-loads a shop: customers and purchases spread over three
years with a skewed number of orders per customer, their points ledger,
coupons and redemptions, gift cards, sent mails with opens and clicks,
survey answers, consent events, computed profiles and two campaigns with a
holdout.  Then it renders every dashboard page through the Flask test
client (one warm-up, then the median of ``--repeat`` runs) and prints each
page's time next to a bare baseline measured in the same run: a page that
only runs ``SELECT count(*) FROM loyalty_customer``.  Goal: every page
under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Boolean, DateTime, Integer, String, Table, inspect, text
from sqlalchemy.orm import DeclarativeBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_loyalty import Loyalty
from flask_loyalty.models import metadata
from flask_loyalty.models.types import Money, UTCDateTime

UTC = timezone.utc
NOW = datetime.now(UTC).replace(microsecond=0)
YEARS = 3
SEGMENTS = ("champions", "loyal", "potential", "new", "at_risk", "hibernating", "lost")
STAGES = ("trust", "relationship", "reward")


def build(url: str, *, reuse: bool = False) -> tuple[Flask, SQLAlchemy, Loyalty]:
    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)
    app = Flask("bench_dashboard")
    app.config.update(SECRET_KEY="bench", SQLALCHEMY_DATABASE_URI=url, LOYALTY_BASE_URL="http://bench.test",
                      LOYALTY_ADMIN_IDENTITY=lambda: "bench")
    db.init_app(app)
    loyalty = Loyalty(app, db)
    loyalty.admin_guard(lambda: True)

    @app.get("/baseline")
    def baseline() -> str:
        n = db.session.execute(text("SELECT count(*) FROM loyalty_customer")).scalar_one()
        return f"<p>{n} customers</p>"

    with app.app_context():
        if url.startswith("postgresql") and not reuse:
            # dropped, not emptied: tables left by an older version may lack columns of this one
            metadata.drop_all(db.engine)
        loyalty.create_all()
    return app, db, loyalty


# --------------------------------------------------------------------------- data generation


def _default(column: Any) -> Any:
    kind = column.type
    if isinstance(kind, (Money, Integer)):
        return 0
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, (UTCDateTime, DateTime)):
        return NOW
    if isinstance(kind, String):
        return ""
    if kind.__class__.__name__ == "JSON":
        return []
    if kind.__class__.__name__ == "Float":
        return 0.0
    return None


class Loader:
    """Bulk insert: COPY on PostgreSQL, executemany on SQLite, raw column values (money in 1/10,000)."""

    def __init__(self, db: SQLAlchemy) -> None:
        self.db = db
        self.dialect = db.engine.dialect.name

    def _value(self, column: Any, value: Any) -> Any:
        if value is None:
            return None
        kind = column.type
        if isinstance(kind, Money):
            return int(value)
        if isinstance(kind, (UTCDateTime, DateTime)):
            if self.dialect == "sqlite":
                return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
            return value
        if kind.__class__.__name__ == "JSON":
            return json.dumps(value)
        if isinstance(kind, Boolean) and self.dialect == "sqlite":
            return int(value)
        return value

    def load(self, table: Table, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        columns = [c for c in table.columns if c.name in rows[0] or (not c.nullable and c.name != "id"
                                                                     and not c.primary_key)]
        names = [c.name for c in columns]
        defaults = {c.name: _default(c) for c in columns}
        data = [tuple(self._value(c, row.get(c.name, defaults[c.name])) for c in columns) for row in rows]
        raw = self.db.engine.raw_connection()
        try:
            cur = raw.cursor()
            if self.dialect == "postgresql":
                with cur.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for row in data:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" for _ in names)
                cur.executemany(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks})", data)
            raw.commit()
        finally:
            raw.close()
        return len(rows)


def finalize(db: SQLAlchemy) -> None:
    """Refresh the planner statistics (PostgreSQL: VACUUM too, as autovacuum would, so index-only
    scans work) and move id sequences past the loaded rows."""
    if db.engine.dialect.name != "postgresql":
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        return
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        present = set(inspect(conn).get_table_names())
        for table in metadata.sorted_tables:
            if table.name not in present:
                continue
            conn.execute(text(f"VACUUM ANALYZE {table.name}"))
            if "id" in table.columns:
                seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table.name}).scalar()
                if seq:
                    conn.execute(text(f"SELECT setval('{seq}', (SELECT coalesce(max(id), 1) FROM {table.name}))"))


def generate(db: SQLAlchemy, customers: int, purchases: int, seed: int = 7) -> dict[str, Any]:
    rnd = random.Random(seed)
    t = metadata.tables
    loader = Loader(db)
    start = NOW - timedelta(days=365 * YEARS)
    span = (NOW - start).total_seconds()
    # every customer buys once; the rest goes to a skewed few (a Pareto-like shop)
    owners = list(range(1, customers + 1))
    weights = [1.0 / (i ** 0.9) for i in range(1, customers + 1)]
    owners += rnd.choices(range(1, customers + 1), weights=weights, k=purchases - customers)
    first_at = {cid: start + timedelta(seconds=rnd.random() * span * 0.95) for cid in range(1, customers + 1)}
    orders: list[dict[str, Any]] = []
    per_customer: dict[int, list[tuple[datetime, int]]] = {}
    seen: set[int] = set()
    for n, cid in enumerate(owners, 1):
        if cid in seen:
            first = first_at[cid]
            placed = first + timedelta(seconds=rnd.random() * (NOW - first).total_seconds())
        else:
            seen.add(cid)
            placed = first_at[cid]
        total = rnd.randint(500, 20000) * 100   # 5.00 .. 200.00
        refunded = total if rnd.random() < 0.02 else (total // 4 if rnd.random() < 0.03 else 0)
        points = total // 10000
        orders.append({"id": n, "order_ref": f"o{n:07d}", "customer_id": cid, "total": total,
                       "refunded_total": refunded, "currency": "EUR", "placed_at": placed,
                       "channel": rnd.choice(("online", "online", "online", "store", "catalog", "phone")),
                       "points_earned": points, "points_reversed": points if refunded == total else 0,
                       "created_at": placed, "planned_at": placed})   # history: its mails were planned
        per_customer.setdefault(cid, []).append((placed, total - refunded))
    rows = []
    for cid in range(1, customers + 1):
        mine = per_customer[cid]
        rows.append({"id": cid, "ref": f"c{cid:06d}", "email": f"c{cid:06d}@example.com", "name": f"Customer {cid}",
                     "locale": rnd.choice(("en", "es", "ro", "ru")), "first_purchase_at": min(m[0] for m in mine),
                     "last_purchase_at": max(m[0] for m in mine), "orders_count": len(mine),
                     "total_spent": sum(m[1] for m in mine), "points_balance": 0, "created_at": first_at[cid]})
    points: list[dict[str, Any]] = []
    balance: dict[int, int] = {}
    for o in sorted(orders, key=lambda o: o["placed_at"]):
        earned = o["points_earned"] - o["points_reversed"]
        if earned:
            balance[o["customer_id"]] = balance.get(o["customer_id"], 0) + earned
            points.append({"customer_id": o["customer_id"], "delta": earned, "reason": "earn",
                           "balance_after": balance[o["customer_id"]], "purchase_id": o["id"],
                           "created_at": o["placed_at"]})
    for row in rows:
        row["points_balance"] = balance.get(row["id"], 0)
    counts = {"customers": loader.load(t["loyalty_customer"], rows),
              "purchases": loader.load(t["loyalty_purchase"], orders),
              "points entries": loader.load(t["loyalty_points_entry"], points)}
    recent = [o for o in orders if o["placed_at"] > NOW - timedelta(days=400)]

    if "loyalty_coupon" in t:
        coupons, redemptions = [], []
        for i in range(1, customers // 2 + 1):
            cid = rnd.randint(1, customers)
            created = start + timedelta(seconds=rnd.random() * span)
            coupons.append({"id": i, "code": f"BENCH-{i:06d}", "code_key": f"BENCH{i:06d}",
                            "kind": rnd.choice(("percent", "fixed")), "value": 100000, "currency": "EUR",
                            "max_uses": 1, "max_uses_per_customer": 1, "uses": 0,
                            "customer_ref": f"c{cid:06d}" if i % 3 else None, "first_order_only": False,
                            "campaign": "postal" if i <= 500 else ("welcome" if i % 2 else None),
                            "expires_at": created + timedelta(days=90), "created_at": created})
        for i, o in enumerate(rnd.sample(recent, min(customers // 5, len(recent))), 1):
            coupons[i - 1]["uses"] = 1
            redemptions.append({"coupon_id": i, "order_ref": o["order_ref"], "customer_ref": f"c{o['customer_id']:06d}",
                                "order_total": o["total"], "discount": 50000, "currency": "EUR", "customer_slot": 0,
                                "order_slot": 0, "created_at": o["placed_at"]})
        counts["coupons"] = loader.load(t["loyalty_coupon"], coupons)
        counts["redemptions"] = loader.load(t["loyalty_redemption"], redemptions)
    if "loyalty_gift_card" in t:
        cards, moves = [], []
        for i in range(1, customers // 20 + 1):
            created = start + timedelta(seconds=rnd.random() * span)
            amount = rnd.choice((250000, 500000, 1000000))
            left = amount // rnd.choice((1, 2, 4))
            cards.append({"id": i, "code": f"GIFT-{i:08d}", "code_key": f"GIFT{i:08d}", "currency": "EUR",
                          "initial_amount": amount, "balance": left, "created_at": created})
            moves.append({"gift_card_id": i, "kind": "issue", "amount": amount, "balance_after": amount,
                          "created_at": created})
            if left != amount:
                moves.append({"gift_card_id": i, "kind": "charge", "amount": left - amount, "balance_after": left,
                              "order_ref": f"g{i}", "charge_ref": f"g{i}", "created_at": created + timedelta(days=3)})
        counts["gift cards"] = loader.load(t["loyalty_gift_card"], cards)
        loader.load(t["loyalty_gift_card_movement"], moves)
    if "loyalty_message" in t:
        messages, events, engagement = [], [], []
        kinds = ("thank_you", "usage_guide", "survey_invite", "replenish", "win_back", "campaign", "birthday")
        for i in range(1, 3 * customers + 1):
            cid = rnd.randint(1, customers)
            due = NOW - timedelta(seconds=rnd.random() * 400 * 86400)
            status = rnd.choices(("sent", "scheduled", "suppressed", "cancelled", "failed"), (80, 8, 7, 4, 1))[0]
            messages.append({"id": i, "customer_id": cid, "kind": rnd.choice(kinds), "purpose": "email_marketing",
                             "marketing": True, "priority": 0, "payload": {}, "status": status,
                             "reason": None if status in ("sent", "scheduled") else "weekly_cap", "due_at": due,
                             "first_due_at": due, "sent_at": due if status == "sent" else None, "attempts": 1,
                             "message_id": f"<m{i}@bench>", "locale": "en", "created_at": due})
            events.append({"message_id": i, "at": due, "action": status, "reason": messages[-1]["reason"]})
            messages[-1].update(opened_at=None, clicked_at=None)
            if status == "sent" and rnd.random() < 0.4:
                engagement.append({"customer_id": cid, "message_id": i, "kind": messages[-1]["kind"], "event": "open",
                                   "at": due + timedelta(hours=3), "hour": 10})
                messages[-1]["opened_at"] = due + timedelta(hours=3)
                if rnd.random() < 0.3:
                    engagement.append({"customer_id": cid, "message_id": i, "kind": messages[-1]["kind"],
                                       "event": "click", "at": due + timedelta(hours=4), "hour": 11})
                    messages[-1]["clicked_at"] = due + timedelta(hours=4)
        counts["messages"] = loader.load(t["loyalty_message"], messages)
        loader.load(t["loyalty_message_event"], events)
        counts["opens/clicks"] = loader.load(t["loyalty_engagement"], engagement)
    if "loyalty_survey_response" in t:
        responses, answers = [], []
        for i, o in enumerate(rnd.sample(orders, purchases // 10), 1):
            at = o["placed_at"] + timedelta(days=8)
            responses.append({"id": i, "purchase_id": o["id"], "customer_id": o["customer_id"], "answered_at": at,
                              "updated_at": at, "completed_at": at, "channel": "page", "created_at": at})
            answers.append({"response_id": i, "question": "recommend", "type": "scale", "number": rnd.randint(0, 10)})
            answers.append({"response_id": i, "question": "source", "type": "choice",
                            "choice": rnd.choice(("search", "friend", "social", "ad", "store"))})
            if rnd.random() < 0.3:
                answers.append({"response_id": i, "question": "comment", "type": "text", "text": "Fine, thanks."})
        counts["survey responses"] = loader.load(t["loyalty_survey_response"], responses)
        loader.load(t["loyalty_survey_answer"], answers)
    if "loyalty_consent_event" in t:
        consent, status_rows = [], []
        for cid in range(1, customers + 1):
            at = first_at[cid]
            consent.append({"customer_id": cid, "purpose": "email_marketing", "action": "granted",
                            "source": "checkout", "method": "checkbox", "created_at": at})
            state = "granted"
            if rnd.random() < 0.05:
                consent.append({"customer_id": cid, "purpose": "email_marketing", "action": "withdrawn",
                                "source": "unsubscribe", "method": "one_click",
                                "created_at": at + timedelta(seconds=rnd.random() * (NOW - at).total_seconds())})
                state = "withdrawn"
            status_rows.append({"customer_id": cid, "purpose": "email_marketing", "status": state, "confirm_sends": 0})
        counts["consent events"] = loader.load(t["loyalty_consent_event"], consent)
        loader.load(t["loyalty_consent_status"], status_rows)
    if "loyalty_customer_profile" in t:
        profiles = []
        for row in rows:
            r, f, m = rnd.randint(1, 5), rnd.randint(1, 5), rnd.randint(1, 5)
            clv = row["total_spent"] // 3 + rnd.randint(0, 500000)
            profiles.append({"customer_id": row["id"], "frequency": row["orders_count"], "monetary": row["total_spent"],
                             "r_score": r, "f_score": f, "m_score": m, "rfm": f"{r}{f}{m}",
                             "segment": rnd.choice(SEGMENTS), "historical_clv": row["total_spent"] // 3,
                             "predicted_clv": clv - row["total_spent"] // 3, "total_clv": clv,
                             "stage": rnd.choices(STAGES, (60, 30, 10))[0], "stage_reasons": ["bench"],
                             "computed_at": NOW})
        counts["profiles"] = loader.load(t["loyalty_customer_profile"], profiles)
    if "loyalty_campaign" in t:
        campaigns, members = [], []
        for i in (1, 2):
            starts = NOW - timedelta(days=60 * i)
            campaigns.append({"id": i, "name": f"spring-{i}", "segment": "loyal", "offer": {}, "message": {},
                              "starts_at": starts, "ends_at": starts + timedelta(days=30), "holdout_share": 0.1,
                              "seed": "x", "status": "launched", "launched_at": starts, "created_at": starts})
            for cid in rnd.sample(range(1, customers + 1), customers // 10):
                members.append({"campaign_id": i, "customer_id": cid,
                                "grp": "holdout" if rnd.random() < 0.1 else "treatment"})
        loader.load(t["loyalty_campaign"], campaigns)
        counts["campaign members"] = loader.load(t["loyalty_campaign_member"], members)
    finalize(db)
    heavy = max(per_customer, key=lambda c: len(per_customer[c]))
    return {"counts": counts, "heavy": f"c{heavy:06d}", "orders_of_heavy": len(per_customer[heavy])}


# --------------------------------------------------------------------------- timing


def pages(info: dict[str, Any], app: Flask, customers: int) -> list[str]:
    prefix = "/loyalty/admin"
    urls = [f"{prefix}/", f"{prefix}/?days=7", f"{prefix}/?days=90", f"{prefix}/?days=365", f"{prefix}/charts"]
    from flask_loyalty.services.dashboard import available_charts

    for name in available_charts():
        urls += [f"{prefix}/charts/{name}", f"{prefix}/charts/{name}.csv"]
    urls += [f"{prefix}/customers", f"{prefix}/customers?q=c00012", f"{prefix}/customers/{info['heavy']}",
             f"{prefix}/customers/c{customers - 1:06d}", f"{prefix}/audit"]
    have = {rule.endpoint for rule in app.url_map.iter_rules()}
    if "loyalty_admin.outbox" in have:
        urls += [f"{prefix}/outbox", f"{prefix}/outbox?status=failed", f"{prefix}/outbox?kind=birthday&status=sent",
                 f"{prefix}/outbox?customer={info['heavy']}", f"{prefix}/outbox/{customers + 1}?locale=es"]
    if "loyalty_admin.coupons" in have:
        urls += [f"{prefix}/coupons", f"{prefix}/coupons?status=active", f"{prefix}/coupons?q=BENCH-0499",
                 f"{prefix}/coupons/export.csv?campaign=postal", f"{prefix}/gift-cards"]
    if "loyalty_admin.surveys" in have:
        urls += [f"{prefix}/surveys", f"{prefix}/surveys?group=promoters&comments=true",
                 f"{prefix}/surveys?source=friend"]
    if "loyalty_admin.consent" in have:
        urls += [f"{prefix}/consent?ref={info['heavy']}", f"{prefix}/consent/c000042/erase"]
    return urls


def timed(client: Any, url: str, repeat: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of this process (SQLite runs in-process; PostgreSQL's server does not)."""
    response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"{url}: HTTP {response.status_code}\n{response.get_data(as_text=True)[:2000]}")
    times, cpu = [], []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        client.get(url)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return statistics.median(times), statistics.median(cpu)


def existing(db: SQLAlchemy) -> dict[str, Any] | None:
    """What an already loaded database holds (``--reuse``), or ``None`` when it is empty."""
    n = db.session.execute(text("SELECT count(*) FROM loyalty_customer")).scalar_one()
    if not n:
        return None
    heavy = db.session.execute(text("SELECT ref, orders_count FROM loyalty_customer "
                                    "ORDER BY orders_count DESC, id LIMIT 1")).one()
    purchases = db.session.execute(text("SELECT count(*) FROM loyalty_purchase")).scalar_one()
    return {"counts": {"customers": n, "purchases": purchases}, "heavy": heavy[0], "orders_of_heavy": heavy[1]}


def run(label: str, url: str, customers: int, purchases: int, repeat: int, *,
        reuse: bool = False, only: str | None = None) -> list[tuple[str, float]]:
    app, db, _loyalty = build(url, reuse=reuse)
    started = time.perf_counter()
    with app.app_context():
        info = existing(db) if reuse else None
        if info is not None:
            finalize(db)
        else:
            info = generate(db, customers, purchases)
    load_time = time.perf_counter() - started
    print(f"\n== {label}: loaded in {load_time:.1f} s: "
          + ", ".join(f"{n:,} {k}" for k, n in info["counts"].items()))
    client = app.test_client()
    base, base_cpu = timed(client, "/baseline", max(repeat, 5))
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'page':<58} {'median':>9} {'ratio':>8} {'cpu':>9}")
    print(f"{'baseline (SELECT count(*) FROM loyalty_customer)':<58} {base * 1000:8.1f}ms {1.0:8.1f} "
          f"{base_cpu * 1000:8.1f}ms")
    results = []
    for page in pages(info, app, customers):
        if only and only not in page:
            continue
        took, cpu = timed(client, page, repeat)
        results.append((page, took))
        flag = "" if took < 1.0 else "  <-- over 1 s"
        print(f"{page:<58} {took * 1000:8.1f}ms {took / base:8.1f} {cpu * 1000:8.1f}ms{flag}")
    worst = max(results, key=lambda r: r[1])
    print(f"slowest: {worst[0]} {worst[1] * 1000:.0f} ms; pages over 1 s: {sum(1 for _p, t in results if t >= 1.0)}; "
          f"load average now: {os.getloadavg()[0]:.1f}")
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--purchases", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("LOYALTY_BENCH_POSTGRES_URL"))
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--postgres-only", action="store_true")
    parser.add_argument("--sqlite-path", help="keep the SQLite database in this file (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="reuse already loaded data (with --sqlite-path / "
                        "--postgres) instead of loading it again")
    parser.add_argument("--only", help="time only the pages whose URL contains this text")
    args = parser.parse_args()
    if not args.postgres_only:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.sqlite_path or f"{tmp}/bench.db"
            if not args.reuse and os.path.exists(path):
                os.remove(path)   # a fresh load needs an empty file
            run("SQLite", f"sqlite:///{path}", args.customers, args.purchases, args.repeat, reuse=args.reuse,
                only=args.only)
    if args.postgres and not args.sqlite_only:
        run("PostgreSQL", args.postgres, args.customers, args.purchases, args.repeat, reuse=args.reuse,
            only=args.only)


if __name__ == "__main__":
    main()
