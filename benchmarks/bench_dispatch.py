"""Dispatcher throughput into a local SMTP sink vs. a bare smtplib loop.

    python benchmarks/bench_dispatch.py [--messages 2000] [--postgres URL]

An aiosmtpd sink runs in its own process on loopback and accepts every mail.
On PostgreSQL (``--postgres`` or ``LOYALTY_TEST_POSTGRES_URL``; default
``postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench``, created when
missing) it seeds N customers with marketing consent and one due
``thank_you`` mail each (with a coupon code in the payload), then measures:

* 1 dispatcher: ``loyalty.dispatch()`` in this process: claim, send-time
  rules (consent, cap, ...), render from the templates (text + HTML, link
  tracking, List-Unsubscribe), send over one SMTP connection, and record
  each outcome with its history row;
* bare: one smtplib connection sending the very same mails, already
  rendered and serialised to bytes (what the dispatcher produced), in a loop;
* 4 dispatchers: four processes sharing the outbox (``SKIP LOCKED``).

It prints messages/s of each and the ratio dispatcher/bare (goal >= 0.5
with one dispatcher).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import smtplib
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench"
NOW = datetime(2027, 1, 4, 10, 0, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the sink
def _sink(port: int, ready: Any, count: Any) -> None:
    import asyncio

    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            with count.get_lock():
                count.value += 1
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    try:
        asyncio.run(asyncio.sleep(10**6))
    finally:
        controller.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the shop
def make_app(url: str, port: int) -> Any:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_loyalty import Loyalty

    db = SQLAlchemy()
    app = Flask("bench")
    app.config.update(SECRET_KEY="bench", SQLALCHEMY_DATABASE_URI=url, LOYALTY_BASE_URL="https://shop.test",
                      LOYALTY_MAIL_TRANSPORT="smtp", LOYALTY_SMTP_HOST="127.0.0.1", LOYALTY_SMTP_PORT=port,
                      LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_SENDER="Shop <shop@shop.test>")
    db.init_app(app)
    loyalty = Loyalty(app, db)
    return app, db, loyalty


def ensure_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                            {"n": target.database}).first():
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def seed(url: str, port: int, n: int) -> None:
    from sqlalchemy import text

    from flask_loyalty.models import metadata
    from flask_loyalty.services import outbox

    app, db, loyalty = make_app(url, port)
    with app.app_context():
        metadata.create_all(db.engine)
        with db.engine.begin() as conn:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
                              + " RESTART IDENTITY CASCADE"))
        loyalty.create_all()
        for i in range(n):
            loyalty.upsert_customer(f"c{i}", email=f"customer{i}@example.com", name=f"Customer {i}",
                                    locale=("en", "es", "ro", "ru")[i % 4], commit=False)
            loyalty.consent.grant(f"c{i}", "email_marketing", source="bench", commit=False)
            outbox.enqueue(loyalty.state, "thank_you", loyalty.customer(f"c{i}"), due_at=NOW,
                           order_ref=f"o{i}", payload={"order_ref": f"o{i}", "coupon_code": uuid.uuid4().hex[:12],
                                                       "coupon_kind": "percent", "coupon_value": "10"})
            if i % 200 == 199:
                db.session.commit()
        db.session.commit()


def reset(url: str, port: int) -> None:
    """Everything back to due and not rendered (the next run renders again)."""
    from sqlalchemy import delete, update

    from flask_loyalty.models import Message, MessageEvent

    app, db, _ = make_app(url, port)
    with app.app_context():
        db.session.execute(update(Message).values(
            status="scheduled", sent_at=None, counted_at=None, attempts=0, due_at=NOW, body_text=None,
            body_html=None, subject=None, lease_owner=None, lease_until=None, reason=None))
        db.session.execute(delete(MessageEvent).where(MessageEvent.action != "scheduled"))
        db.session.commit()
        db.engine.dispose()


def rendered_mails(url: str, port: int) -> list[tuple[str, list[str], bytes]]:
    """The very mails the dispatcher sent (same bytes, envelope): the bare loop's input."""
    from sqlalchemy import select

    from flask_loyalty.models import Message
    from flask_loyalty.services.mail import build_mail

    app, db, loyalty = make_app(url, port)
    mails = []
    with app.app_context():
        for m in db.session.execute(select(Message).order_by(Message.id)).unique().scalars():
            mail = build_mail(loyalty.state, now=NOW, message_id=m.message_id, kind=m.kind,
                              marketing=m.marketing, purpose=m.purpose, customer_ref=m.customer.ref,
                              locale=m.locale, to_address=m.to_address, from_address=m.from_address,
                              subject=m.subject, body_text=m.body_text, body_html=m.body_html)
            mails.append((mail.sender, mail.recipients, mail.data))
    return mails


def _worker(url: str, port: int, ready: Any, start: Any, out: Any) -> None:
    from sqlalchemy import text

    app, db, loyalty = make_app(url, port)
    with app.app_context():
        db.session.execute(text("SELECT 1"))    # imported, connected and warm
        db.session.rollback()
        ready.put(1)
        start.wait()
        report = loyalty.dispatch(now=NOW)
        out.put(report.sent)


def run_dispatchers(url: str, port: int, count: int) -> tuple[int, float]:
    ctx = multiprocessing.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, port, ready, start, out)) for _ in range(count)]
    for p in procs:
        p.start()
    for _ in procs:  # every process has imported and connected before the clock starts
        ready.get(timeout=300)
    began = time.perf_counter()
    start.set()
    sent = sum(out.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - began
    for p in procs:
        p.join()
    return sent, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--postgres", default=os.environ.get("LOYALTY_BENCH_POSTGRES_URL", DEFAULT_URL))
    args = parser.parse_args()
    ensure_database(args.postgres)
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready, count = ctx.Event(), ctx.Value("i", 0)
    sink = ctx.Process(target=_sink, args=(port, ready, count), daemon=True)
    sink.start()
    ready.wait(30)
    try:
        print(f"seeding {args.messages} customers with a due thank_you mail on {args.postgres.split('@')[-1]} ...")
        seed(args.postgres, port, args.messages)

        sent1, t1 = run_dispatchers(args.postgres, port, 1)
        mails = rendered_mails(args.postgres, port)
        conn = smtplib.SMTP("127.0.0.1", port)
        began = time.perf_counter()
        for sender, recipients, data in mails:
            conn.sendmail(sender, recipients, data)
        bare_t = time.perf_counter() - began
        conn.quit()
        reset(args.postgres, port)
        sent4, t4 = run_dispatchers(args.postgres, port, 4)
        assert sent1 == sent4 == len(mails) == args.messages, (sent1, sent4, len(mails))
        assert count.value == 3 * args.messages, count.value
    finally:
        sink.terminate()
    rate1, rate4, bare = sent1 / t1, sent4 / t4, len(mails) / bare_t
    print(f"{'':28}{'messages':>10}{'seconds':>10}{'msg/s':>10}")
    print(f"{'bare smtplib loop':28}{len(mails):>10}{bare_t:>10.2f}{bare:>10.0f}")
    print(f"{'1 dispatcher':28}{sent1:>10}{t1:>10.2f}{rate1:>10.0f}")
    print(f"{'4 dispatchers (processes)':28}{sent4:>10}{t4:>10.2f}{rate4:>10.0f}")
    print(f"ratio 1 dispatcher / bare: {rate1 / bare:.2f} (goal >= 0.5); "
          f"4 dispatchers / 1: {rate4 / rate1:.2f} on {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main()
