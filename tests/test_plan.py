"""The communication plan and the dispatcher's send-time rules (CONTRACT §5, §7, §8)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from conftest import run_together
from jinja2 import ChoiceLoader, DictLoader
from sqlalchemy import func, select

from flask_loyalty import InvalidInput, Loyalty
from flask_loyalty.models import Coupon, Engagement, Message, Purchase
from flask_loyalty.services import outbox
from flask_loyalty.services.dispatch import backoff
from flask_loyalty.services.mail import track_url
from flask_loyalty.services.plan import expand_pending, guides
from flask_loyalty.signals import message_failed, message_sent

T0 = datetime(2027, 1, 4, 10, 0, tzinfo=timezone.utc)
TEA = {"sku": "TEA-1", "name": "Green tea", "quantity": 1, "unit_price": "12.00", "category": "tea",
       "replenish_after_days": 30}
CONFIRM = {"label": "Newsletter", "confirm_url": "https://shop.test/confirm", "expires_days": 7}
MUG = {"sku": "MUG-1", "name": "Mug", "quantity": 1, "unit_price": "8.00"}


class Capture:
    """A host transport callable that keeps the mails (or fails on demand).

    ``on_send(mail, n)``, when set, runs as the n-th mail is handed over (before it is kept).
    """

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.fail = False
        self.on_send = None

    def __call__(self, mail: EmailMessage) -> None:
        if self.on_send is not None:
            self.on_send(mail, len(self.mails))
        if self.fail:
            raise ConnectionError("mail relay is down")
        self.mails.append(mail)

    def to(self) -> list[str]:
        return [m["To"].addresses[0].addr_spec for m in self.mails]


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def plan_shop(make_shop, capture):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture,
                     LOYALTY_TIMEZONE="Europe/Madrid", LOYALTY_MAIL_SENDER="Shop <shop@shop.test>",
                     LOYALTY_MARKETING_SENDER="Shop news <news@shop.test>",
                     LOYALTY_UNSUBSCRIBE_MAILTO="unsubscribe@shop.test")
    with shop.app.app_context():
        yield shop


def customer(shop, ref="c1", *, consent=("email_marketing", "surveys"), **fields):
    fields.setdefault("email", f"{ref}@example.com")
    shop.loyalty.upsert_customer(ref, **fields)
    for purpose in consent:
        shop.loyalty.consent.grant(ref, purpose, source="test")
    return shop.loyalty.customer(ref)


def together(shop, n, work):
    """Run ``work(i)`` for i < n in n threads that start at once, each in its own app context.

    Returns the results by ``i``; fails the test on any exception in a thread.
    """
    results = run_together(shop, n, work)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results


def kinds(shop, ref="c1"):
    return [(m.kind, m.status) for m in shop.loyalty.messages.for_customer(ref)]


def by_kind(shop, kind, ref="c1"):
    return [m for m in shop.loyalty.messages.for_customer(ref) if m.kind == kind]


# --------------------------------------------------------------------------- outbox
def test_enqueue_is_idempotent_and_checks_kind(plan_shop):
    c = customer(plan_shop)
    state = plan_shop.loyalty.state
    first = outbox.enqueue(state, "campaign", c, due_at=T0, payload={"x": "1"}, dedupe_key="k")
    assert first is not None and first.status == "scheduled" and first.message_id.startswith("<")
    assert outbox.enqueue(state, "campaign", c, due_at=T0, dedupe_key="k") is None
    with pytest.raises(InvalidInput):
        outbox.enqueue(state, "no_such_kind", c)
    with pytest.raises(InvalidInput):
        outbox.enqueue(state, "campaign", c, due_at=datetime(2027, 1, 1))
    plan_shop.db.session.commit()
    assert kinds(plan_shop) == [("campaign", "scheduled")]
    assert plan_shop.loyalty.messages.for_customer("nobody") == []
    [m] = plan_shop.loyalty.messages.for_customer("c1")
    assert [e.action for e in plan_shop.loyalty.messages.history(m.id)] == ["scheduled"]


def test_register_kind_validates_name():
    with pytest.raises(ValueError):
        outbox.register_kind("bad kind!", outbox.MessageKind(None, False, 0, None))


# --------------------------------------------------------------------------- order-driven steps
def test_first_purchase_schedules_thank_you_with_welcome_coupon(plan_shop):
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20.00", placed_at=T0, items=[TEA, MUG])
    [thanks] = by_kind(plan_shop, "thank_you")
    assert thanks.due_at == T0 and thanks.order_ref == "o1"
    code = thanks.payload["coupon_code"]
    assert thanks.payload["coupon_kind"] == "percent"
    # valid 60 days: to the end of the shop's local day (Madrid, CET) 60 days after the order's day
    expires = datetime(2027, 3, 5, 22, 59, 59, 999999, tzinfo=timezone.utc)
    assert datetime.fromisoformat(thanks.payload["coupon_expires_at"]) == expires
    coupon = next(c for c in plan_shop.loyalty.coupons.for_customer("c1") if c.code == code)
    assert coupon is not None
    plan_shop.loyalty.record_purchase("o2", "c1", "20.00", placed_at=T0 + timedelta(days=1))
    assert len(by_kind(plan_shop, "thank_you")) == 1
    assert [m.due_at for m in by_kind(plan_shop, "survey_invite")] == [T0 + timedelta(days=10)]
    assert [m.due_at for m in by_kind(plan_shop, "replenish")] == [T0 + timedelta(days=27)]


def test_commit_false_rollback_leaves_no_message(plan_shop):
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20.00", placed_at=T0, commit=False)
    plan_shop.db.session.rollback()
    assert kinds(plan_shop) == []


def test_checkout_writes_no_message_and_the_order_is_planned_once(plan_shop):
    customer(plan_shop)
    purchase = plan_shop.loyalty.record_purchase("o1", "c1", "20.00", placed_at=T0, items=[TEA])
    assert purchase.planned_at is None
    session = plan_shop.db.session
    assert session.execute(select(func.count()).select_from(Message)).scalar_one() == 0
    # the next dispatch plans the order first, so a thank-you due now leaves in the same run
    assert plan_shop.loyalty.dispatch(now=T0).sent == 1
    assert sorted(kinds(plan_shop)) == [("replenish", "scheduled"), ("survey_invite", "scheduled"),
                                        ("thank_you", "sent")]
    session.expire_all()
    assert session.execute(select(Purchase.planned_at)).scalar_one() is not None
    assert expand_pending(plan_shop.loyalty.state) == 0    # planned once, never again
    assert len(kinds(plan_shop)) == 3


def test_orders_without_order_steps_are_born_planned(make_shop):
    shop = make_shop(LOYALTY_PLAN={"thank_you": False, "usage_guide": False, "survey_invite": False,
                                   "replenish": False})
    with shop.app.app_context():
        assert shop.loyalty.record_purchase("o1", "c1", "20", items=[TEA]).planned_at is not None


def test_concurrent_dispatchers_plan_every_order_once(make_shop, capture):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture)
    with shop.app.app_context():
        for i in range(30):
            customer(shop, f"c{i}")
            shop.loyalty.record_purchase(f"o{i}", f"c{i}", "20", placed_at=T0, items=[TEA])
    together(shop, 6, lambda _i: shop.loyalty.dispatch(now=T0))
    with shop.app.app_context():
        counts = dict(shop.db.session.execute(
            select(Message.kind, func.count()).group_by(Message.kind)).all())
        assert counts == {"thank_you": 30, "survey_invite": 30, "replenish": 30}
        # planned twice, an order would make a second welcome coupon (made before its message)
        assert shop.db.session.execute(select(func.count()).select_from(Coupon)
                                       .where(Coupon.campaign == "welcome")).scalar_one() == 30
        assert shop.db.session.execute(select(func.count()).select_from(Purchase)
                                       .where(Purchase.planned_at.is_(None))).scalar_one() == 0
    assert len(capture.mails) == 30 and len({m["Message-ID"] for m in capture.mails}) == 30


def test_usage_guide_from_registry_and_templates(plan_shop):
    app = plan_shop.app
    app.jinja_env.loader = ChoiceLoader([
        DictLoader({"loyalty/guides/category/mugs.html": "<p>Hand wash {{ item.name }}.</p>"}),
        app.jinja_env.loader])

    @guides(app).sku("TEA-1")
    def tea(item, locale):
        return {"html": "<p>Brew at <b>80°C</b>.</p>", "text": "Brew at 80°C."}

    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[
        TEA, {**MUG, "category": "mugs"}, {"sku": "X", "name": "No guide", "quantity": 1, "unit_price": "1"}])
    [guide] = by_kind(plan_shop, "usage_guide")
    assert guide.due_at == T0 + timedelta(days=3)
    assert [i["sku"] for i in guide.payload["items"]] == ["TEA-1", "MUG-1"]
    # the same SKU bought again gets no second guide; an order without guides gets none
    plan_shop.loyalty.record_purchase("o2", "c1", "20", placed_at=T0 + timedelta(days=1), items=[TEA])
    assert len(by_kind(plan_shop, "usage_guide")) == 1
    assert plan_shop.loyalty.dispatch(now=T0).sent == 1                       # the thank-you
    assert plan_shop.loyalty.dispatch(now=T0 + timedelta(days=3)).deferred == 1  # the weekly cap
    assert plan_shop.loyalty.dispatch(now=T0 + timedelta(days=7)).sent == 1
    guide = by_kind(plan_shop, "usage_guide")[0]
    assert guide.status == "sent"
    assert "Brew at 80°C." in guide.body_text and "Hand wash Mug." in guide.body_text
    assert "<b>80°C</b>" in guide.body_html


def test_no_guide_means_no_usage_guide(plan_shop):
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[MUG])
    assert by_kind(plan_shop, "usage_guide") == []


def test_a_broken_host_guide_counts_as_no_guide_and_blocks_nothing(plan_shop, capture):
    """A guide template with a syntax error, or a guide callback that raises, is logged and treated
    as no guide for that item: every dispatch still plans the orders and sends the other mails."""
    app = plan_shop.app
    app.jinja_env.loader = ChoiceLoader([
        DictLoader({"loyalty/guides/TEA-1.html": "<p>{% if %}broken</p>"}), app.jinja_env.loader])

    @guides(app).sku("MUG-1")
    def mug_guide(item, locale):
        raise RuntimeError("guide service down")

    customer(plan_shop, "c1")
    customer(plan_shop, "c2")
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[TEA])
    plan_shop.loyalty.record_purchase("o2", "c2", "20", placed_at=T0, items=[MUG])
    plan_shop.loyalty.record_purchase("o3", "c3", "20", placed_at=T0, email="c3@example.com")
    plan_shop.loyalty.consent.grant("c3", "email_marketing", source="test")
    for _ in range(2):
        plan_shop.loyalty.dispatch(now=T0)
    sent = sorted(m["To"].addresses[0].addr_spec for m in capture.mails)
    assert sent == ["c1@example.com", "c2@example.com", "c3@example.com"]   # the thank-yous
    assert by_kind(plan_shop, "usage_guide", "c1") == []
    # the callback's guide was planned (it is registered); at send time it cannot be rendered:
    # only that mail fails
    [guide] = by_kind(plan_shop, "usage_guide", "c2")
    report = plan_shop.loyalty.dispatch(now=T0 + timedelta(days=7, hours=1))
    plan_shop.db.session.expire_all()
    assert (guide.status, guide.reason) == ("failed", "render_error") and report.failed == 1


def test_plan_steps_can_be_switched_off(make_shop):
    shop = make_shop(LOYALTY_PLAN={"thank_you": False, "survey_invite": False, "replenish": False},
                     LOYALTY_DOUBLE_OPT_IN=False)
    with shop.app.app_context():
        customer(shop)
        shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[TEA])
        assert kinds(shop) == []


def test_unknown_plan_step_is_refused(make_shop):
    with pytest.raises(InvalidInput):
        make_shop(LOYALTY_PLAN={"carrier_pigeon": {}})


def test_full_refund_cancels_pending_messages_of_the_order(plan_shop):
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[TEA])
    plan_shop.loyalty.dispatch(now=T0)  # the thank-you goes out
    plan_shop.loyalty.record_refund("o1", amount="5")
    assert ("survey_invite", "scheduled") in kinds(plan_shop)
    plan_shop.loyalty.record_refund("o1")
    assert sorted(kinds(plan_shop)) == [("replenish", "cancelled"), ("survey_invite", "cancelled"),
                                        ("thank_you", "sent")]
    assert {m.reason for m in plan_shop.loyalty.messages.for_customer("c1") if m.status == "cancelled"} \
        == {"order_refunded"}


def test_rebought_item_cancels_replenish(plan_shop, capture):
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[TEA])
    plan_shop.loyalty.record_purchase("o2", "c1", "20", placed_at=T0 + timedelta(days=20), items=[TEA])
    first, second = by_kind(plan_shop, "replenish")
    assert second.status == "scheduled" and second.due_at == T0 + timedelta(days=47)
    # the earlier reminder is cancelled when it comes due (the re-buy still stands)
    plan_shop.loyalty.dispatch(now=T0 + timedelta(days=27))
    plan_shop.db.session.expire_all()
    assert (first.status, first.reason) == ("cancelled", "bought_again")
    assert "replenish" not in [m["X-Loyalty-Kind"] for m in capture.mails]


def test_a_fully_refunded_rebuy_does_not_cancel_the_earlier_replenish_reminder(plan_shop, capture):
    """o2 re-buys the tea and is then fully refunded: the customer's only real tea purchase is o1,
    so o1's reminder goes out when due (and o2's was cancelled with the refund)."""
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[TEA])
    plan_shop.loyalty.dispatch(now=T0)
    plan_shop.loyalty.record_purchase("o2", "c1", "20", placed_at=T0 + timedelta(days=20), items=[TEA])
    plan_shop.loyalty.dispatch(now=T0 + timedelta(days=20))
    plan_shop.loyalty.record_refund("o2")
    for d in range(21, 60):
        now = T0 + timedelta(days=d)
        plan_shop.loyalty.plan(now=now)
        plan_shop.loyalty.dispatch(now=now)
    reminders = {m.order_ref: (m.status, m.reason) for m in by_kind(plan_shop, "replenish")}
    assert reminders["o2"] == ("cancelled", "order_refunded")
    assert reminders["o1"][0] == "sent"
    assert [m["X-Loyalty-Kind"] for m in capture.mails].count("replenish") == 1


def test_send_time_check_cancels_replenish_after_rebuy(plan_shop):
    """A re-buy recorded while the replenish step was off still stops the reminder at send time."""
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[TEA])
    plan_shop.app.config["LOYALTY_PLAN"] = {"replenish": False}
    plan_shop.loyalty.record_purchase("o2", "c1", "20", placed_at=T0 + timedelta(days=20), items=[TEA])
    plan_shop.app.config["LOYALTY_PLAN"] = {}
    plan_shop.loyalty.dispatch(now=T0 + timedelta(days=27))
    [first] = [m for m in by_kind(plan_shop, "replenish") if m.order_ref == "o1"]
    assert (first.status, first.reason) == ("cancelled", "bought_again")


# --------------------------------------------------------------------------- send-time rules
def test_weekly_cap_defers_to_next_free_slot_by_priority(plan_shop, capture):
    c = customer(plan_shop)
    state = plan_shop.loyalty.state
    outbox.enqueue(state, "win_back", c, due_at=T0, dedupe_key="a")          # priority 30
    outbox.enqueue(state, "birthday", c, due_at=T0, dedupe_key="b")          # priority 70
    outbox.enqueue(state, "consent_confirm", c, due_at=T0, dedupe_key="t",   # transactional: exempt
                   payload=CONFIRM)
    plan_shop.db.session.commit()
    report = plan_shop.loyalty.dispatch(now=T0)
    assert (report.sent, report.deferred) == (2, 1)
    status = {m.kind: m for m in plan_shop.loyalty.messages.for_customer("c1")}
    assert status["birthday"].status == "sent" and status["consent_confirm"].status == "sent"
    deferred = status["win_back"]
    assert deferred.status == "scheduled" and deferred.reason == "weekly_cap"
    assert deferred.due_at == T0 + timedelta(days=7)
    assert [e.action for e in deferred.events] == ["scheduled", "deferred"]
    # nothing more inside the week; the slot opens after 7 days
    assert plan_shop.loyalty.dispatch(now=T0 + timedelta(days=6)).sent == 0
    assert plan_shop.loyalty.dispatch(now=T0 + timedelta(days=7)).sent == 1
    assert len(capture.mails) == 3


def test_weekly_cap_is_configurable(make_shop, capture):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture,
                     LOYALTY_MAX_MARKETING_PER_WEEK=2)
    with shop.app.app_context():
        c = customer(shop)
        for key in "abc":
            outbox.enqueue(shop.loyalty.state, "win_back", c, due_at=T0, dedupe_key=key)
        shop.db.session.commit()
        report = shop.loyalty.dispatch(now=T0)
        assert (report.sent, report.deferred) == (2, 1)


def test_stale_message_is_suppressed_with_reason(plan_shop):
    c = customer(plan_shop)
    outbox.enqueue(plan_shop.loyalty.state, "birthday", c, due_at=T0)
    plan_shop.db.session.commit()
    report = plan_shop.loyalty.dispatch(now=T0 + timedelta(days=8))
    assert report.suppressed == 1 and report.reasons == {"stale": 1}
    [m] = plan_shop.loyalty.messages.for_customer("c1")
    assert (m.status, m.reason) == ("suppressed", "stale")


def test_no_consent_at_send_time_suppresses(plan_shop, capture):
    c = customer(plan_shop, consent=("email_marketing",))
    state = plan_shop.loyalty.state
    outbox.enqueue(state, "win_back", c, due_at=T0)
    outbox.enqueue(state, "survey_invite", c, due_at=T0, payload={"order_ref": "o9"})
    plan_shop.db.session.commit()
    plan_shop.loyalty.consent.withdraw("c1", "email_marketing", source="test")
    report = plan_shop.loyalty.dispatch(now=T0)
    assert report.suppressed == 2 and capture.mails == []
    assert {m.reason for m in plan_shop.loyalty.messages.for_customer("c1")} == {
        "no_consent:email_marketing", "no_consent:surveys"}


def test_uses_the_real_consent_service(plan_shop):
    from flask_loyalty.services.consent import Consent

    assert isinstance(plan_shop.loyalty.consent, Consent)


def test_erased_customer_gets_nothing_and_data_is_scrubbed(plan_shop, capture):
    customer(plan_shop, name="Ana")
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[TEA])
    plan_shop.loyalty.dispatch(now=T0)
    exported = plan_shop.loyalty.consent.export("c1")
    assert [m["kind"] for m in exported["messages"]][:1] == ["thank_you"]
    assert exported["messages"][0]["subject"] and exported["messages"][0]["history"]
    plan_shop.loyalty.consent.erase("c1")
    messages = plan_shop.loyalty.messages.for_customer("c1")
    assert {m.status for m in messages} == {"sent", "cancelled"}
    assert all(m.body_text is None and m.to_address is None and m.payload == {} for m in messages)
    # a message scheduled for an erased customer by someone else is suppressed at send time
    outbox.enqueue(plan_shop.loyalty.state, "consent_confirm", plan_shop.loyalty.customer("c1"), due_at=T0,
                   payload=CONFIRM)
    plan_shop.db.session.commit()
    report = plan_shop.loyalty.dispatch(now=T0 + timedelta(days=1))
    assert report.reasons == {"erased": 1} and len(capture.mails) == 1


def test_erasure_clears_transport_error_texts_in_the_message_history(make_shop):
    """A failed send's error text can quote the address and name: erasure clears it in
    ``last_error`` and in every history event's ``detail`` of that customer (others keep theirs)."""
    def send(message):
        raise RuntimeError(f"mailbox {message['To']} is unavailable")

    shop = make_shop(LOYALTY_MAIL_TRANSPORT=send)
    with shop.app.app_context():
        lo = shop.loyalty
        for ref, name in (("c1", "Alice"), ("c2", "Bob")):
            lo.upsert_customer(ref, email=f"{name.lower()}@example.com", name=name)
            lo.consent.grant(ref, "email_marketing", source="signup")   # double opt-in: a confirm mail
        assert lo.dispatch(now=datetime.now(timezone.utc)).sent == 0
        lo.consent.erase("c1")

        def details(ref):
            return [e.detail for m in lo.messages.for_customer(ref) for e in m.events if e.detail]

        erased = lo.messages.for_customer("c1")
        assert erased and all(m.last_error is None for m in erased)
        assert all(m.events for m in erased)                     # the history itself stays
        assert not [d for d in details("c1") if "alice@example.com" in d or "Alice" in d], details("c1")
        assert [d for d in details("c2") if "bob@example.com" in d]


def test_no_address_is_suppressed(plan_shop):
    plan_shop.loyalty.upsert_customer("c1")
    outbox.enqueue(plan_shop.loyalty.state, "consent_confirm", plan_shop.loyalty.customer("c1"), due_at=T0,
                   payload=CONFIRM)
    plan_shop.db.session.commit()
    assert plan_shop.loyalty.dispatch(now=T0).reasons == {"no_address": 1}


# --------------------------------------------------------------------------- delivery
def test_marketing_mail_headers_and_multipart(plan_shop, capture):
    customer(plan_shop, name="Ana María", locale="es")
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
    c = plan_shop.loyalty.customer("c1")
    outbox.enqueue(plan_shop.loyalty.state, "consent_confirm", c, due_at=T0,
                   payload=CONFIRM)
    plan_shop.db.session.commit()
    plan_shop.loyalty.dispatch(now=T0)
    marketing = next(m for m in capture.mails if m["X-Loyalty-Kind"] == "thank_you")
    transactional = next(m for m in capture.mails if m["X-Loyalty-Kind"] == "consent_confirm")
    [thanks] = by_kind(plan_shop, "thank_you")
    assert marketing["Message-ID"] == thanks.message_id
    assert marketing["From"] == "Shop news <news@shop.test>"
    assert transactional["From"] == "Shop <shop@shop.test>"
    assert marketing["To"].addresses[0].addr_spec == "c1@example.com"
    assert marketing["To"].addresses[0].display_name == "Ana María"
    unsubscribe = marketing["List-Unsubscribe"]
    assert "<http://shop.test/loyalty/unsubscribe/" in unsubscribe
    assert "<mailto:unsubscribe@shop.test?subject=unsubscribe>" in unsubscribe
    assert marketing["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert transactional["List-Unsubscribe"] is None and transactional["List-Unsubscribe-Post"] is None
    assert marketing.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in marketing.iter_parts()] == ["text/plain", "text/html"]
    assert marketing["Content-Language"] == "es"
    text = marketing.get_body(("plain",)).get_content()
    assert thanks.payload["coupon_code"] in text
    # the link in List-Unsubscribe works with the RFC 8058 one-click POST
    url = unsubscribe.split(",")[0].strip("<> ")
    path = url.replace("http://shop.test", "")
    response = plan_shop.client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert plan_shop.loyalty.consent.has("c1", "email_marketing") is False


def test_message_sent_signal_and_stable_message_id(plan_shop, capture):
    sent = []
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
    with message_sent.connected_to(lambda app, **kw: sent.append(kw["message"]), plan_shop.app):
        plan_shop.loyalty.dispatch(now=T0)
    assert [m.kind for m in sent] == ["thank_you"] and sent[0].status == "sent"
    assert sent[0].sent_at == T0 and sent[0].attempts == 1


def test_retries_with_backoff_then_failed(make_shop, capture):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture, LOYALTY_MAX_ATTEMPTS=3,
                     LOYALTY_RETRY_BACKOFF=60)
    failed = []
    with shop.app.app_context():
        c = customer(shop)
        outbox.enqueue(shop.loyalty.state, "consent_confirm", c, due_at=T0,
                       payload=CONFIRM)
        shop.db.session.commit()
        capture.fail = True
        assert shop.loyalty.dispatch(now=T0).retried == 1
        [m] = shop.loyalty.messages.for_customer("c1")
        assert m.attempts == 1 and m.due_at == T0 + timedelta(seconds=60) and "relay is down" in m.last_error
        assert shop.loyalty.dispatch(now=T0 + timedelta(seconds=59)).claimed == 0
        assert shop.loyalty.dispatch(now=T0 + timedelta(seconds=60)).retried == 1
        [m] = shop.loyalty.messages.for_customer("c1")
        assert m.due_at == T0 + timedelta(seconds=60 + 120)
        with message_failed.connected_to(lambda app, **kw: failed.append(kw), shop.app):
            report = shop.loyalty.dispatch(now=T0 + timedelta(seconds=180))
        assert report.failed == 1
        [m] = shop.loyalty.messages.for_customer("c1")
        assert (m.status, m.reason, m.attempts) == ("failed", "max_attempts", 3)
        assert failed[0]["message"].id == m.id and "relay is down" in failed[0]["error"]
        assert [e.action for e in m.events] == ["scheduled", "retry", "retry", "failed"]
        assert backoff(shop.loyalty.state, 30) == timedelta(seconds=shop.app.config["LOYALTY_RETRY_MAX_BACKOFF"])


def test_outbox_transport_keeps_rendered_mail(make_shop):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False)
    with shop.app.app_context():
        assert shop.app.config["LOYALTY_MAIL_TRANSPORT"] == "outbox"
        customer(shop)
        shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
        assert shop.loyalty.dispatch(now=T0).sent == 1
        [m] = shop.loyalty.messages.outbox()
        assert m.status == "sent" and m.subject and "<html" in m.body_html and m.reason.endswith("via outbox")


def test_missing_template_fails_only_that_message(plan_shop, capture):
    outbox.register_kind("plan_test_kind", outbox.MessageKind(None, False, 5, None))
    c = customer(plan_shop)
    outbox.enqueue(plan_shop.loyalty.state, "plan_test_kind", c, due_at=T0)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
    report = plan_shop.loyalty.dispatch(now=T0)
    assert (report.sent, report.failed) == (1, 1)
    [m] = by_kind(plan_shop, "plan_test_kind")
    assert (m.status, m.reason) == ("failed", "render_error")


def test_an_address_that_cannot_be_sent_to_fails_only_its_own_mail(plan_shop, capture):
    """A non-ASCII mailbox name (needs SMTPUTF8, not supported) is suppressed with a reason; an
    internationalised domain goes out in IDNA form; the other mails of the batch go out."""
    customer(plan_shop, "jorg", email="jörg@example.com")
    customer(plan_shop, "idn", email="ana@exämple.com")
    customer(plan_shop, "ok")
    for ref in ("jorg", "idn", "ok"):
        plan_shop.loyalty.record_purchase(f"o-{ref}", ref, "20", placed_at=T0)
    report = plan_shop.loyalty.dispatch(now=T0)
    assert sorted(capture.to()) == ["ana@xn--exmple-cua.com", "ok@example.com"]
    assert (report.sent, report.suppressed, report.reasons) == (2, 1, {"unsupported_address": 1})
    [m] = by_kind(plan_shop, "thank_you", "jorg")
    assert (m.status, m.reason) == ("suppressed", "unsupported_address") and "SMTPUTF8" in m.last_error
    assert plan_shop.loyalty.dispatch(now=T0 + timedelta(hours=1)).claimed == 0


def test_a_long_display_name_is_not_stored_and_a_value_too_long_fails_only_its_mail(plan_shop, capture):
    """The stored ``to_address`` is the bare address (the name goes only into the header), so a
    200-character name fits; a rendered value too long for its column (here a long marketing
    sender) fails that mail alone instead of the whole batch's update (PostgreSQL)."""
    name = "A" * 200
    customer(plan_shop, "long", name=name, email="someone.with.a.really.rather.long.mailbox.name@example.com")
    customer(plan_shop, "c2")
    plan_shop.loyalty.record_purchase("o1", "long", "20", placed_at=T0)
    assert plan_shop.loyalty.dispatch(now=T0).sent == 1
    [mail] = capture.mails
    assert mail["To"].addresses[0].display_name == name
    [m] = by_kind(plan_shop, "thank_you", "long")
    assert m.to_address == "someone.with.a.really.rather.long.mailbox.name@example.com"

    plan_shop.app.config["LOYALTY_MARKETING_SENDER"] = "N" * 250 + " <news@shop.test>"
    state = plan_shop.loyalty.state
    c2 = plan_shop.loyalty.customer("c2")
    outbox.enqueue(state, "win_back", c2, due_at=T0, dedupe_key="long-sender")
    outbox.enqueue(state, "consent_confirm", c2, due_at=T0, dedupe_key="short-sender", payload=CONFIRM)
    plan_shop.db.session.commit()
    report = plan_shop.loyalty.dispatch(now=T0)
    assert (report.sent, report.failed) == (1, 1)
    assert capture.mails[-1]["X-Loyalty-Kind"] == "consent_confirm"
    [m] = by_kind(plan_shop, "win_back", "c2")
    assert (m.status, m.reason) == ("failed", "render_error") and "from_address" in m.last_error


def _meanwhile(shop, action):
    """``on_send`` hook: as the first mail leaves, ``action(other)`` on the *other* customer of the
    batch (c1/c2), in its own app context, as another request of the shop would."""
    def on_send(mail, n):
        if n == 0:
            first = mail["To"].addresses[0].addr_spec.split("@")[0]
            on_send.target = "c2" if first == "c1" else "c1"
            with shop.app.app_context():
                action(on_send.target)
                shop.db.session.remove()
    on_send.target = None
    return on_send


def test_no_marketing_mail_after_consent_withdrawn_while_its_batch_is_sent(plan_shop, capture):
    customer(plan_shop, "c1")
    customer(plan_shop, "c2")
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
    plan_shop.loyalty.record_purchase("o2", "c2", "20", placed_at=T0)
    capture.on_send = hook = _meanwhile(
        plan_shop, lambda ref: plan_shop.loyalty.consent.withdraw(ref, "email_marketing", source="test"))
    report = plan_shop.loyalty.dispatch(now=T0)
    assert hook.target is not None and len(capture.mails) == 1
    assert f"{hook.target}@example.com" not in capture.to()
    assert (report.sent, report.suppressed, report.reasons) == (1, 1, {"no_consent:email_marketing": 1})
    [m] = by_kind(plan_shop, "thank_you", hook.target)
    assert (m.status, m.reason, m.lease_owner) == ("suppressed", "no_consent:email_marketing", None)


def test_no_mail_to_a_customer_erased_while_its_batch_is_sent(plan_shop, capture):
    customer(plan_shop, "c1")
    customer(plan_shop, "c2")
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
    plan_shop.loyalty.record_purchase("o2", "c2", "20", placed_at=T0)
    capture.on_send = hook = _meanwhile(plan_shop, lambda ref: plan_shop.loyalty.consent.erase(ref))
    report = plan_shop.loyalty.dispatch(now=T0)
    assert hook.target is not None and len(capture.mails) == 1
    assert f"{hook.target}@example.com" not in capture.to() and report.sent == 1
    plan_shop.db.session.expire_all()
    [m] = plan_shop.db.session.execute(select(Message).where(
        Message.customer.has(ref=hook.target), Message.kind == "thank_you")).unique().scalars()
    assert (m.status, m.reason, m.sent_at) == ("cancelled", "erased", None)   # as erasure left it


def test_a_mail_cancelled_as_it_is_handed_over_is_recorded_as_sent(plan_shop, capture):
    """A refund landing between the send-time re-check and the transport cannot stop the mail;
    the row must then say what happened (sent), not "cancelled"."""
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)

    def refund(mail, n):
        with plan_shop.app.app_context():
            plan_shop.loyalty.record_refund("o1")
            plan_shop.db.session.remove()

    capture.on_send = refund
    assert plan_shop.loyalty.dispatch(now=T0).sent == 1
    plan_shop.db.session.expire_all()
    [m] = by_kind(plan_shop, "thank_you")
    assert (m.status, m.lease_owner) == ("sent", None) and m.sent_at == T0
    assert [e.action for e in m.events] == ["scheduled", "cancelled", "sent"]


def test_a_retry_goes_to_the_current_address_with_the_same_message_id(plan_shop, capture):
    customer(plan_shop, "c1", email="old@example.com", name="Ana")
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
    tried = []
    capture.on_send = lambda mail, n: tried.append((mail["To"].addresses[0].addr_spec, mail["Message-ID"]))
    capture.fail = True
    assert plan_shop.loyalty.dispatch(now=T0).retried == 1
    capture.fail = False
    plan_shop.loyalty.upsert_customer("c1", email="new@example.com")
    assert plan_shop.loyalty.dispatch(now=T0 + timedelta(hours=1)).sent == 1
    assert [to for to, _ in tried] == ["old@example.com", "new@example.com"]
    assert tried[0][1] == tried[1][1]
    assert capture.mails[0]["To"].addresses[0].display_name == "Ana"
    [m] = by_kind(plan_shop, "thank_you")
    assert (m.status, m.to_address) == ("sent", "new@example.com")


def test_concurrent_dispatchers_on_one_database_send_each_once(make_shop, capture):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture, LOYALTY_DISPATCH_BATCH=7)
    with shop.app.app_context():
        for i in range(40):
            c = customer(shop, f"c{i}", consent=())
            outbox.enqueue(shop.loyalty.state, "consent_confirm", c, due_at=T0,
                           payload=CONFIRM)
        shop.db.session.commit()
    together(shop, 4, lambda _i: shop.loyalty.dispatch(now=T0))
    ids = [m["Message-ID"] for m in capture.mails]
    assert len(ids) == 40 and len(set(ids)) == 40
    with shop.app.app_context():
        assert shop.db.session.execute(select(func.count()).select_from(Message)
                                       .where(Message.status == "sent")).scalar_one() == 40


def test_dispatch_claims_no_more_than_the_limit_and_the_batch_size(make_shop, capture):
    """``dispatch(limit=n)`` leases and sends at most n mails, and one claim takes at most
    ``LOYALTY_DISPATCH_BATCH`` rows (PostgreSQL: the ids are picked once, not per outer row)."""
    from flask_loyalty.services.dispatch import claim

    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture, LOYALTY_DISPATCH_BATCH=2)
    with shop.app.app_context():
        state = shop.loyalty.state
        for i in range(7):
            c = customer(shop, f"c{i}")
            outbox.enqueue(state, "win_back", c, due_at=T0, dedupe_key=f"limit-w{i}")
        shop.db.session.commit()
        report = shop.loyalty.dispatch(now=T0, limit=1)
        assert (report.claimed, report.sent, len(capture.mails)) == (1, 1, 1)
        leased = select(func.count()).select_from(Message).where(Message.lease_owner.is_not(None))
        assert shop.db.session.execute(leased).scalar_one() == 0
        report = shop.loyalty.dispatch(now=T0, limit=3)   # batches of 2, then 1
        assert (report.claimed, report.sent, len(capture.mails)) == (3, 3, 4)
        assert len(claim(state, "test-owner", 2, T0)) == 2
        assert shop.db.session.execute(leased).scalar_one() == 2
        assert shop.loyalty.dispatch(now=T0).claimed == 1   # the last one; the 2 stay leased
        assert len(capture.mails) == 5


def test_expand_pending_claims_no_more_than_its_batch(make_shop):
    """Each planning round claims at most ``batch`` orders (PostgreSQL: the ids are picked once).

    A round stamps the orders it claimed with one ``planned_at``, so the rounds can be counted.
    """
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False)
    with shop.app.app_context():
        for i in range(5):
            shop.loyalty.record_purchase(f"b-o{i}", f"b-c{i}", "12.00")
        assert expand_pending(shop.loyalty.state, batch=2) == 5
        rounds = shop.db.session.execute(
            select(func.count()).select_from(Purchase).group_by(Purchase.planned_at)).scalars().all()
        assert sorted(rounds) == [1, 2, 2], rounds


# --------------------------------------------------------------------------- time-based steps
def test_birthday_once_a_year_in_shop_time_zone_with_coupon(plan_shop):
    customer(plan_shop, birthday=date(1990, 3, 15))
    # 23:30 UTC on 14 March is already 15 March in Madrid
    eve = datetime(2027, 3, 14, 23, 30, tzinfo=timezone.utc)
    assert plan_shop.loyalty.plan(now=eve - timedelta(hours=1)) == 0
    assert plan_shop.loyalty.plan(now=eve) == 1
    assert plan_shop.loyalty.plan(now=eve + timedelta(hours=12)) == 0   # idempotent
    [m] = by_kind(plan_shop, "birthday")
    assert m.due_at == datetime(2027, 3, 15, 8, 0, tzinfo=timezone.utc)  # 09:00 local
    assert m.payload["coupon_code"]
    # valid 30 days from the birthday: the end of 14 April in Madrid (CEST)
    expires = datetime(2027, 4, 14, 21, 59, 59, 999999, tzinfo=timezone.utc)
    assert datetime.fromisoformat(m.payload["coupon_expires_at"]) == expires
    assert plan_shop.loyalty.coupons.get(m.payload["coupon_code"]).expires_at == expires
    assert plan_shop.loyalty.plan(now=datetime(2028, 3, 15, 12, tzinfo=timezone.utc)) == 1
    assert len(by_kind(plan_shop, "birthday")) == 2


def test_birthday_is_due_at_the_local_hour_on_a_dst_change_day(plan_shop):
    """28 March 2027 is the spring-forward day in Madrid: 09:00 local is 07:00 UTC, not 08:00;
    on 31 October (fall back) it is 08:00 UTC, not 09:00."""
    customer(plan_shop, "spring", birthday=date(1990, 3, 28))
    customer(plan_shop, "autumn", birthday=date(1990, 10, 31))
    assert plan_shop.loyalty.plan(now=datetime(2027, 3, 28, 12, tzinfo=timezone.utc)) == 1
    assert plan_shop.loyalty.plan(now=datetime(2027, 10, 31, 12, tzinfo=timezone.utc)) == 1
    [spring] = by_kind(plan_shop, "birthday", "spring")
    [autumn] = by_kind(plan_shop, "birthday", "autumn")
    assert spring.due_at == datetime(2027, 3, 28, 7, 0, tzinfo=timezone.utc)
    assert autumn.due_at == datetime(2027, 10, 31, 8, 0, tzinfo=timezone.utc)


def test_birthday_catch_up_and_february_29(plan_shop):
    customer(plan_shop, birthday=date(2000, 2, 29))
    # 2027 is not a leap year: celebrated on 28 February; a missed tick is caught up
    assert plan_shop.loyalty.plan(now=datetime(2027, 3, 2, 12, tzinfo=timezone.utc)) == 1
    [m] = by_kind(plan_shop, "birthday")
    assert m.payload["day"] == "2027-02-28"


def test_win_back_for_one_time_and_repeat_buyers(plan_shop):
    customer(plan_shop, "once")
    customer(plan_shop, "often")
    plan_shop.loyalty.record_purchase("a1", "once", "10", placed_at=T0)
    for k in range(3):  # every 10 days -> usual interval 10 days, win back after 30
        plan_shop.loyalty.record_purchase(f"b{k}", "often", "10", placed_at=T0 + timedelta(days=10 * k))
    last = T0 + timedelta(days=20)
    assert plan_shop.loyalty.plan(now=last + timedelta(days=30)) == 0
    assert plan_shop.loyalty.plan(now=last + timedelta(days=31)) == 1
    assert by_kind(plan_shop, "win_back", "often")[0].reason.startswith("silent 31d > 3 x usual 10d")
    assert plan_shop.loyalty.plan(now=T0 + timedelta(days=121)) == 1   # LOYALTY_WIN_BACK_DAYS = 120
    assert plan_shop.loyalty.plan(now=T0 + timedelta(days=200)) == 0   # once per silence
    assert len(by_kind(plan_shop, "win_back", "once")) == 1
    plan_shop.loyalty.record_purchase("a2", "once", "10", placed_at=T0 + timedelta(days=210))
    assert plan_shop.loyalty.plan(now=T0 + timedelta(days=211 + 3 * 210)) == 1  # a new silence


def test_replenish_catch_up_for_items_recorded_while_the_step_was_off(plan_shop):
    plan_shop.app.config["LOYALTY_PLAN"] = {"replenish": False}
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0, items=[TEA])
    plan_shop.loyalty.dispatch(now=T0)   # the order is planned while the step is off
    plan_shop.app.config["LOYALTY_PLAN"] = {}
    assert plan_shop.loyalty.plan(now=T0 + timedelta(days=26)) == 0
    assert plan_shop.loyalty.plan(now=T0 + timedelta(days=27)) == 1
    assert plan_shop.loyalty.plan(now=T0 + timedelta(days=28)) == 0
    assert by_kind(plan_shop, "replenish")[0].payload["sku"] == "TEA-1"


# --------------------------------------------------------------------------- tracking
def test_tracking_records_opens_and_clicks_and_never_redirects_elsewhere(plan_shop, capture):
    customer(plan_shop)
    plan_shop.app.config["LOYALTY_BASE_URL"] = "https://shop.test"
    plan_shop.loyalty.plan(now=T0)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0 - timedelta(days=200))
    plan_shop.loyalty.dispatch(now=T0 - timedelta(days=200))
    assert plan_shop.loyalty.plan(now=T0) == 1    # win back (with a visit link)
    plan_shop.loyalty.dispatch(now=T0)
    [m] = by_kind(plan_shop, "win_back")
    assert m.links == ["https://shop.test"]
    mail = next(x for x in capture.mails if x["X-Loyalty-Kind"] == "win_back")
    html = mail.get_body(("html",)).get_content()
    assert "/loyalty/t/c/" in html and "/loyalty/t/o/" in html
    assert "/loyalty/unsubscribe/" in html   # not wrapped in a redirect
    client = plan_shop.client
    # 20:15 UTC = 21:15 in Madrid
    open_url = track_url(plan_shop.loyalty.state, "o", m.id).replace("https://shop.test", "")
    r = client.get(open_url)
    assert r.status_code == 200 and r.mimetype == "image/gif"
    click = track_url(plan_shop.loyalty.state, "c", m.id, 0).replace("https://shop.test", "")
    r = client.get(click)
    assert r.status_code == 302 and r.headers["Location"] == "https://shop.test"
    # a link index the message does not contain, a tampered or foreign token: no redirect
    assert client.get(track_url(plan_shop.loyalty.state, "c", m.id, 1).replace("https://shop.test", "")
                      ).status_code == 404
    # the signature's first character carries six bits of it (its last may carry padding bits only)
    head, _, signature = click.rpartition(".")
    assert head and signature
    assert client.get(f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}").status_code == 404
    survey_token = plan_shop.loyalty.links.survey("o1").rsplit("/", 1)[1]
    assert client.get(f"/loyalty/t/c/{survey_token}").status_code == 404
    assert client.get("/loyalty/t/o/garbage").status_code == 200   # a pixel never errors
    rows = plan_shop.db.session.execute(select(Engagement).order_by(Engagement.id)).scalars().all()
    assert [(e.event, e.kind) for e in rows] == [("open", "win_back"), ("click", "win_back")]
    assert rows[1].url == "https://shop.test"
    summary = plan_shop.loyalty.messages.engagement("c1")
    assert summary["opens"] == 1 and summary["clicks"] == 1 and summary["best_hour"] is not None
    assert plan_shop.loyalty.messages.engagement("nobody")["opens"] == 0


def test_tracking_keeps_first_open_and_first_click_on_the_mail(plan_shop):
    """The mail remembers its first open and first click; a click opens it; erasure forgets both."""
    from flask_loyalty.services import tracking

    state = plan_shop.loyalty.state
    customer(plan_shop)
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
    plan_shop.loyalty.dispatch(now=T0)
    [m] = by_kind(plan_shop, "thank_you")
    pk = m.id
    session = plan_shop.db.session
    session.execute(select(Message).where(Message.id == pk)).scalar_one().links = ["https://shop.test/a"]
    session.commit()
    t1, t2, t3 = (T0 + timedelta(hours=h) for h in (1, 2, 3))
    session().expire_on_commit = False      # as a host may configure it: loaded objects are not reloaded
    assert tracking.click_target(state, pk, 0, now=t1) == "https://shop.test/a"   # a click before any open
    assert (session.get(Message, pk).opened_at, session.get(Message, pk).clicked_at) == (t1, t1)
    assert tracking.record_open(state, pk, now=t2) is False                        # already opened by the click
    tracking.click_target(state, pk, 0, now=t3)
    m = session.get(Message, pk)
    assert (m.opened_at, m.clicked_at) == (t1, t1)      # the loaded object follows the row...
    session().expire_on_commit = True
    session.expire_all()
    m = session.get(Message, pk)
    assert (m.opened_at, m.clicked_at) == (t1, t1)      # ...which holds the first open and click
    rows = session.execute(select(Engagement.event, Engagement.at).where(Engagement.message_id == pk)
                           .order_by(Engagement.id)).all()
    assert [tuple(r) for r in rows] == [("open", t1), ("click", t1), ("click", t3)]
    plan_shop.loyalty.consent.erase("c1")
    session.expire_all()
    m = session.get(Message, pk)
    assert (m.opened_at, m.clicked_at) == (None, None)


def test_concurrent_opens_of_one_mail_store_one_open(make_shop, capture):
    from flask_loyalty.services import tracking

    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture)
    with shop.app.app_context():
        customer(shop)
        shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
        shop.loyalty.dispatch(now=T0)
        pk = by_kind(shop, "thank_you")[0].id
    results = together(shop, 8, lambda i: tracking.record_open(shop.loyalty.state, pk, now=T0 + timedelta(minutes=i)))
    assert sorted(results) == [False] * 7 + [True]
    with shop.app.app_context():
        opens = shop.db.session.execute(select(Engagement.at).where(Engagement.message_id == pk)).scalars().all()
        assert len(opens) == 1
        assert shop.db.session.get(Message, pk).opened_at == opens[0]


def test_tracking_can_be_switched_off(make_shop, capture):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture, LOYALTY_TRACKING=False)
    with shop.app.app_context():
        customer(shop)
        shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
        shop.loyalty.dispatch(now=T0)
        html = capture.mails[0].get_body(("html",)).get_content()
        assert "/t/o/" not in html and "/t/c/" not in html
        [m] = by_kind(shop, "thank_you")
        assert shop.client.get(track_url(shop.loyalty.state, "o", m.id).replace("http://shop.test", "")
                               ).status_code == 200
        assert shop.db.session.execute(select(func.count()).select_from(Engagement)).scalar_one() == 0


# --------------------------------------------------------------------------- CLI
def test_cli_plan_and_dispatch(make_shop, capture):
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=capture)
    with shop.app.app_context():
        customer(shop, birthday=date(1990, 3, 15))
    runner = shop.app.test_cli_runner()
    result = runner.invoke(args=["loyalty", "plan", "--now", "2027-03-15T12:00:00+00:00"])
    assert result.exit_code == 0 and "scheduled 1 message" in result.output
    result = runner.invoke(args=["loyalty", "dispatch", "--now", "2027-03-15T12:00:00Z", "--limit", "5"])
    assert result.exit_code == 0 and "sent 1," in result.output, result.output
    assert len(capture.mails) == 1
    result = runner.invoke(args=["loyalty", "plan", "--now", "2027-03-15T12:00:00"])
    assert result.exit_code != 0 and "time zone" in result.output
    result = runner.invoke(args=["loyalty", "dispatch", "--loop", "--now", "2027-03-15T12:00:00Z"])
    assert result.exit_code != 0 and "--loop" in result.output


@pytest.mark.parametrize("command", ["plan", "dispatch"])
@pytest.mark.parametrize(("now", "reason"), [
    ("1800-01-01T00:00:00+00:00", "Dates from 1900-01-01 to 9998-12-31"),
    ("2027-03-15T12:00:00", "needs a time zone"),
    ("tomorrow", "is not ISO 8601"),
])
def test_cli_plan_and_dispatch_refuse_a_bad_now_with_its_reason(shop, command, now, reason):
    """A --now with a time zone but outside the supported dates is not blamed on a missing time zone."""
    r = shop.app.test_cli_runner().invoke(args=["loyalty", command, "--now", now])
    assert r.exit_code == 2 and reason in r.output, r.output
    if reason != "needs a time zone":
        assert "needs a time zone" not in r.output, r.output


def test_two_apps_keep_their_own_guides(make_shop):
    a, b = make_shop(), make_shop()
    guides(a.app).sku("A")(lambda item, locale: "<p>a</p>")
    assert "A" in guides(a.app).by_sku and "A" not in guides(b.app).by_sku
    assert isinstance(a.loyalty, Loyalty)


def test_batch_consent_lookup_matches_consent_has(make_shop):
    from flask_loyalty.services.dispatch import ConsentLookup

    shop = make_shop(LOYALTY_DOUBLE_OPT_IN={"email_marketing": True})
    with shop.app.app_context():
        lo = shop.loyalty
        for ref in ("granted", "pending", "withdrawn", "regranted", "erased", "never"):
            lo.upsert_customer(ref, email=f"{ref}@example.com")
        lo.consent.grant("granted", "surveys", source="t")
        lo.consent.grant("pending", "email_marketing", source="t")            # double opt-in: pending
        lo.consent.grant("withdrawn", "surveys", source="t")
        lo.consent.withdraw("withdrawn", "surveys", source="t")
        lo.consent.grant("regranted", "surveys", source="t")
        lo.consent.withdraw("regranted", "surveys", source="t")
        lo.consent.grant("regranted", "surveys", source="t")
        lo.consent.grant("erased", "surveys", source="t")
        lo.consent.erase("erased")
        lookup = ConsentLookup(lo.state)
        ids = {ref: lo.customer(ref).id for ref in ("granted", "pending", "withdrawn", "regranted", "erased", "never")}
        for purpose in ("surveys", "email_marketing"):
            granted = lookup.granted(set(ids.values()), purpose)
            for ref, pk in ids.items():
                erased = lo.customer(ref).erased_at is not None
                assert (pk in granted and not erased) == lo.consent.has(ref, purpose), (ref, purpose)


def test_mails_are_localized(plan_shop, capture):
    customer(plan_shop, name="Ana", locale="ru")
    plan_shop.loyalty.record_purchase("o1", "c1", "20", placed_at=T0)
    plan_shop.loyalty.dispatch(now=T0)
    [mail] = capture.mails
    assert mail["Subject"] == "Спасибо за ваш первый заказ в Our shop"
    assert "Здравствуйте, Ana!" in mail.get_body(("plain",)).get_content()
    assert "Скидка 10% на следующий заказ" in mail.get_body(("html",)).get_content()


def test_russian_expiry_sentence_ends_with_the_dates_own_full_stop(shop):
    # The CLDR Russian date ends in "г." ("31 мая 2026 г."): the sentence must not add a second stop.
    from flask_loyalty.services.mail import render_message

    shop.app.config["LOYALTY_TIMEZONE"] = "Europe/Madrid"
    shop.loyalty.upsert_customer("C-ru", email="ru@example.com", name="Аня", locale="ru")
    shop.loyalty.record_purchase("O-ru", "C-ru", 10, placed_at=datetime(2026, 4, 1, 10, tzinfo=timezone.utc))
    customer = shop.loyalty.customer("C-ru")
    expires = "2026-05-31T21:59:59.999999+00:00"
    payloads = {
        "thank_you": {"coupon_code": "ABCD-EFGH-JK", "coupon_kind": "fixed", "coupon_value": "5.00",
                      "coupon_currency": "EUR", "coupon_expires_at": expires},
        "survey_reward": {"kind": "fixed", "value": "3.00", "currency": "EUR", "code": "ABCD-EFGH-JK",
                          "expires_at": expires},
    }
    for kind, payload in payloads.items():
        msg = outbox.enqueue(shop.loyalty.state, kind, customer, payload=payload, order_ref="O-ru",
                             due_at=datetime(2026, 5, 1, tzinfo=timezone.utc))
        shop.db.session.flush()
        rendered = render_message(shop.loyalty.state, msg, customer)
        assert "Действует до 31 мая 2026" in rendered.body_text, kind
        assert "г.." not in rendered.body_text and "г..<" not in rendered.body_html, kind
