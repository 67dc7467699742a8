"""Delivery through a real SMTP server (aiosmtpd on loopback): the plan over 400 days, SMTP outages,
several dispatcher processes on one PostgreSQL, and a dispatcher killed mid-batch (CONTRACT §7)."""

from __future__ import annotations

import itertools
import multiprocessing
import time
import uuid
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import dispatch_worker
import pytest
from smtp_sink import SMTPSink, free_port
from sqlalchemy import func, insert, select

from flask_loyalty.models import Customer, Message, MessageEvent
from flask_loyalty.models.base import table_of
from flask_loyalty.services.plan import guides

T0 = datetime(2027, 1, 4, 10, 0, tzinfo=timezone.utc)
TEA = {"sku": "TEA-1", "name": "Green tea", "quantity": 1, "unit_price": "12.00", "replenish_after_days": 30}
MUG = {"sku": "MUG-1", "name": "Mug", "quantity": 1, "unit_price": "8.00"}
SOAP = {"sku": "SOAP-1", "name": "Olive soap", "quantity": 2, "unit_price": "4.00", "replenish_after_days": 20}
CONFIRM = {"label": "Newsletter", "confirm_url": "https://shop.test/confirm", "expires_days": 7}


@pytest.fixture
def sink():
    with SMTPSink() as s:
        yield s


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


def days_of(shop, moment):
    return (moment - T0).days


# --------------------------------------------------------------------------- the whole plan
def test_the_whole_plan_over_400_days(make_shop, sink):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_TIMEZONE="Europe/Madrid",
                     LOYALTY_BASE_URL="https://shop.test", **sink.config())

    @guides(shop.app).sku("TEA-1")
    def tea_guide(item, locale):
        return "<p>Brew it at 80°C for three minutes.</p>"

    loyalty = shop.loyalty
    with shop.app.app_context():
        loyalty.upsert_customer("ana", email="ana@example.com", name="Ana", locale="es",
                                birthday=date(1990, 3, 15))
        loyalty.consent.grant("ana", "email_marketing", source="checkout")
        loyalty.consent.grant("ana", "surveys", source="checkout")
        for n in range(401):
            now = day(n)
            if n == 0:
                loyalty.record_purchase("o1", "ana", "20.00", placed_at=now, items=[TEA, MUG])
            elif n == 40:
                loyalty.record_purchase("o2", "ana", "12.00", placed_at=now, items=[TEA])
            elif n == 45:
                loyalty.record_purchase("o3", "ana", "8.00", placed_at=now, items=[SOAP])
            elif n == 46:
                loyalty.record_refund("o3")
            elif n == 200:  # one click on List-Unsubscribe of the last marketing mail (RFC 8058)
                last = [m for m in sink.messages if m["List-Unsubscribe"]][-1]
                url = last["List-Unsubscribe"].split(",")[0].strip("<> ")
                response = shop.client.post(url.replace("https://shop.test", ""),
                                            data={"List-Unsubscribe": "One-Click"})
                assert response.status_code == 200
                assert loyalty.consent.has("ana", "email_marketing") is False
            elif n == 300:
                loyalty.record_purchase("o4", "ana", "8.00", placed_at=now, items=[SOAP])
            loyalty.plan(now=now)
            loyalty.dispatch(now=now)

        messages = loyalty.messages.for_customer("ana")
        story = [(m.kind, m.order_ref, m.status, m.reason.split(";")[0],
                  days_of(shop, m.sent_at) if m.sent_at else None) for m in messages]
        assert story == [
            ("thank_you", "o1", "sent", "consent:email_marketing", 0),
            ("usage_guide", "o1", "sent", "consent:email_marketing", 7),        # deferred by the cap
            ("survey_invite", "o1", "sent", "consent:surveys", 14),             # deferred by the cap
            ("replenish", "o1", "sent", "consent:email_marketing", 27),
            ("replenish", "o3", "cancelled", "order_refunded", None),
            ("replenish", "o2", "sent", "consent:email_marketing", 67),
            ("birthday", None, "sent", "consent:email_marketing", 74),          # deferred by the cap
            ("win_back", None, "sent", "consent:email_marketing", 113),
            ("survey_invite", "o4", "sent", "consent:surveys", 310),            # surveys consent still held
            ("replenish", "o4", "suppressed", "no_consent:email_marketing", None),  # unsubscribed on day 200
        ]
        history = {m.kind + (m.order_ref or ""): [(e.action, e.reason) for e in m.events] for m in messages}
        assert history["usage_guideo1"] == [("scheduled", "guide_for:TEA-1"), ("deferred", "weekly_cap"),
                                            ("sent", "consent:email_marketing; weekly slot 1/1; via smtp")]
        assert ("deferred", "weekly_cap") in history["birthday"]
        # never more than one marketing mail in any 7 days
        sent_days = sorted(days_of(shop, m.sent_at) for m in messages if m.status == "sent" and m.marketing)
        assert all(b - a >= 7 for a, b in itertools.pairwise(sent_days))

    mails = sink.messages
    assert [m["X-Loyalty-Kind"] for m in mails] == [
        "thank_you", "usage_guide", "survey_invite", "replenish", "replenish", "birthday", "win_back",
        "survey_invite"]
    assert len({m["Message-ID"] for m in mails}) == len(mails)
    assert all(m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" for m in mails)
    assert all(m.get_content_type() == "multipart/alternative" for m in mails)
    guide = mails[1].get_body(("plain",)).get_content()
    assert "Brew it at 80°C for three minutes." in guide
    birthday = mails[5]
    assert "Ana" in birthday["Subject"] and "Content-Language" in birthday


# --------------------------------------------------------------------------- outages
def seed(shop, customers: int, per_customer: int, *, due=T0, kind="consent_confirm", payload=CONFIRM):
    """Bulk-insert due messages (transactional by default: no consent or cap involved)."""
    with shop.app.app_context():
        session = shop.db.session
        session.execute(insert(table_of(Customer)), [
            {"ref": f"c{i}", "email": f"c{i}@example.com", "orders_count": 0, "total_spent": 0,
             "points_balance": 0, "created_at": due} for i in range(customers)])
        ids = dict(session.execute(select(Customer.ref, Customer.id)).all())
        session.execute(insert(table_of(Message)), [
            {"customer_id": ids[f"c{i}"], "kind": kind, "purpose": None, "marketing": False, "priority": 100,
             "payload": payload, "status": "scheduled", "due_at": due, "first_due_at": due, "attempts": 0,
             "message_id": f"<{uuid.uuid4().hex}@shop.test>", "created_at": due}
            for i in range(customers) for _ in range(per_customer)])
        session.commit()


def test_smtp_down_loses_nothing_and_recovers(make_shop):
    port = free_port()
    shop = make_shop(LOYALTY_MAIL_TRANSPORT="smtp", LOYALTY_SMTP_HOST="127.0.0.1", LOYALTY_SMTP_PORT=port,
                     LOYALTY_SMTP_TIMEOUT=2.0, LOYALTY_RETRY_BACKOFF=60, LOYALTY_DISPATCH_BATCH=10)
    seed(shop, 10, 3)
    with shop.app.app_context():
        session = shop.db.session
        first = shop.loyalty.dispatch(now=T0)
        # the dispatcher stops claiming once the server is unreachable; what it claimed waits 60 s
        assert first.sent == 0 and first.retried == first.claimed >= 10
        attempts = Counter(session.execute(select(Message.attempts, Message.due_at)).all())
        expected = {(1, T0 + timedelta(seconds=60)): first.claimed, (0, T0): 30 - first.claimed}
        assert attempts == {k: v for k, v in expected.items() if v}
        for k in range(1, 6):  # still down: attempts keep rising, backoff grows, nothing is lost
            report = shop.loyalty.dispatch(now=T0 + timedelta(hours=k))
            assert report.sent == 0 and report.retried == report.claimed >= 10
        rows = session.execute(select(Message.status, Message.attempts, Message.last_error)).all()
        assert len(rows) == 30 and {r.status for r in rows} == {"scheduled"}
        assert max(r.attempts for r in rows) >= 3
        assert all("cannot reach SMTP server" in r.last_error for r in rows if r.attempts)
        tried = sum(r.attempts for r in rows)
        with SMTPSink(port) as sink:
            third = shop.loyalty.dispatch(now=T0 + timedelta(days=1))
            assert (third.sent, third.retried, third.failed) == (30, 0, 0)
            assert sink.count == 30 and len({m["Message-ID"] for m in sink.messages}) == 30
        rows = session.execute(select(Message.status, Message.attempts)).all()
        assert {r.status for r in rows} == {"sent"} and sum(r.attempts for r in rows) == tried + 30
        retries = session.execute(select(func.count()).select_from(MessageEvent)
                                  .where(MessageEvent.action == "retry")).scalar_one()
        assert retries == tried


def test_smtp_temporary_and_permanent_refusals(make_shop, sink):
    shop = make_shop(**sink.config())
    seed(shop, 2, 1)
    with shop.app.app_context():
        shop.db.session.execute(table_of(Customer).update().where(Customer.ref == "c1")
                                .values(email="reject@example.com"))
        shop.db.session.commit()
        sink.handler.temp_fail = True
        report = shop.loyalty.dispatch(now=T0)
        assert (report.retried, report.failed) == (1, 1)   # 451 is retried, 550 fails for good
        sink.handler.temp_fail = False
        assert shop.loyalty.dispatch(now=T0 + timedelta(hours=1)).sent == 1
        statuses = dict(shop.db.session.execute(select(Customer.ref, Message.status).join(Message.customer)).all())
        assert statuses == {"c0": "sent", "c1": "failed"}


# --------------------------------------------------------------------------- scale-out
@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # several dispatchers: a PostgreSQL set-up
def test_four_dispatcher_processes_deliver_2000_messages_exactly_once(make_shop, sink, db_url):
    shop = make_shop(**sink.config())
    seed(shop, 500, 4)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    config = {**sink.config(), "LOYALTY_DISPATCH_BATCH": 50}
    procs = [ctx.Process(target=dispatch_worker.run, args=(db_url, config, T0.isoformat(), start, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    sent = [out.get(timeout=5) for _ in procs]
    assert sum(sent) == 2000
    ids = [m["Message-ID"] for m in sink.messages]
    assert len(ids) == 2000 and len(set(ids)) == 2000
    with shop.app.app_context():
        assert Counter(shop.db.session.execute(select(Message.status, Message.attempts)).all()) == {("sent", 1): 2000}
        sent_events = shop.db.session.execute(
            select(func.count()).select_from(MessageEvent).where(MessageEvent.action == "sent")).scalar_one()
        assert sent_events == 2000


def test_killed_dispatcher_messages_go_out_after_the_lease_none_twice(make_shop, sink, db_url):
    shop = make_shop(**sink.config())
    seed(shop, 20, 1)
    sink.handler.stall_after = 5     # the 6th mail hangs in DATA: the dispatcher is mid-batch
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=dispatch_worker.run, args=(db_url, sink.config(), T0.isoformat()))
    proc.start()
    try:
        assert sink.handler.stalled.wait(60)
        # while it hangs in SMTP, the mails the server accepted are recorded (the recorder is at
        # most two mails behind the sender); then the process dies without any clean-up
        with shop.app.app_context():
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and shop.db.session.execute(
                    select(func.count()).select_from(Message).where(Message.status == "sent")).scalar_one() < 5:
                shop.db.session.rollback()
                time.sleep(0.05)
            shop.db.session.rollback()
    finally:
        proc.kill()
        proc.join(10)
    # A mail the dead process had wholly sent may still wait in its socket; the server would accept it
    # when it reads it (a delivery the dispatcher never recorded: it goes out again after the lease, as
    # documented). This test is about the mails the server did not accept: refuse those connections.
    sink.handler.refuse_open_sessions()
    sink.handler.stall_after = None
    assert sink.count == 5
    with shop.app.app_context():
        leased = shop.db.session.execute(select(func.count()).select_from(Message).where(
            Message.status == "scheduled", Message.lease_owner.is_not(None))).scalar_one()
        assert leased == 15
        lease = shop.app.config["LOYALTY_DISPATCH_LEASE"]
        assert shop.loyalty.dispatch(now=T0 + timedelta(seconds=lease - 1)).claimed == 0  # still leased
        report = shop.loyalty.dispatch(now=T0 + timedelta(seconds=lease + 1))
        assert report.sent == 15
        assert Counter(shop.db.session.execute(select(Message.status)).scalars()) == {"sent": 20}
    ids = [m["Message-ID"] for m in sink.messages]
    assert len(ids) == 20 and len(set(ids)) == 20
