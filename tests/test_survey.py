"""The post-purchase survey: questions, answers, one response per order, stats, alerts (issue 5)."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from flask_loyalty import InvalidInput, LoyaltyError, NotFound
from flask_loyalty.models import Message, SurveyAnswer, SurveyResponse
from flask_loyalty.schemas.survey import DEFAULT_QUESTIONS
from flask_loyalty.signals import detractor_alert, survey_answered

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)   # a Monday

FULL = {"source": "friend_family", "experience": 4, "ease": 5, "recommend": 9, "comment": "Lovely tea."}


def _count(shop, model):
    return shop.db.session.execute(select(func.count()).select_from(model)).scalar_one()


def _order(shop, ref="o1", customer="c1", **kw):
    return shop.loyalty.record_purchase(ref, customer, "20.00", email=f"{customer}@example.com", **kw)


# --- question set ---------------------------------------------------------------

def test_default_question_set(shop):
    qs = shop.loyalty.surveys.questions()
    assert [q.id for q in qs] == ["source", "experience", "ease", "recommend", "comment"]
    by_id = {q.id: q for q in qs}
    assert [c.value for c in by_id["source"].choices] == [
        "search_engine", "social_network", "friend_family", "newsletter", "advert", "other"]
    assert (by_id["experience"].min, by_id["experience"].max) == (1, 5)
    assert (by_id["ease"].min, by_id["ease"].max) == (1, 5)
    assert by_id["ease"].max_label == "Very simple"
    assert (by_id["recommend"].min, by_id["recommend"].max) == (0, 10) and by_id["recommend"].required
    assert by_id["comment"].type == "text" and not by_id["comment"].required
    assert qs == DEFAULT_QUESTIONS


def test_host_replaces_and_extends_the_set(make_shop):
    s = make_shop(LOYALTY_SURVEY_QUESTIONS=[
        "recommend",
        {"id": "gift", "type": "yes_no", "label": {"en": "Was it a gift?", "es": "¿Era un regalo?"}, "required": True},
        {"id": "packaging", "type": "scale", "label": "Packaging", "min": 1, "max": 3},
        {"id": "channel", "type": "choice", "label": "Where?", "choices": ["web", {"value": "app", "label": "App"}]},
    ], LOYALTY_SURVEY_EXTRA_QUESTIONS=[{"id": "note", "type": "text", "label": "Note", "max_length": 5}])
    with s.app.app_context():
        assert [q.id for q in s.loyalty.surveys.questions()] == ["recommend", "gift", "packaging", "channel", "note"]
        _order(s)
        with pytest.raises(InvalidInput) as info:
            s.loyalty.surveys.answer("o1", {"recommend": 7, "packaging": 4, "channel": "shop", "note": "too long"})
        assert set(info.value.errors) == {"packaging", "channel", "note", "gift"}
        with pytest.raises(InvalidInput) as info:
            s.loyalty.surveys.answer("o1", {"recommend": 7})
        assert info.value.errors == {"gift": ["Please answer this question."]}
        r = s.loyalty.surveys.answer("o1", {"recommend": 7, "gift": "yes", "packaging": "3", "channel": "app"})
        assert r.status == "completed"
        assert r.response.values == {"recommend": 7, "gift": True, "packaging": 3, "channel": "app"}
        stats = s.loyalty.surveys.stats()
        assert stats.by_source == {} and stats.experience_avg is None and stats.nps == 0.0


@pytest.mark.parametrize("config,where", [
    ({"LOYALTY_SURVEY_QUESTIONS": "recommend"}, "LOYALTY_SURVEY_QUESTIONS"),
    ({"LOYALTY_SURVEY_QUESTIONS": []}, "LOYALTY_SURVEY_QUESTIONS"),
    ({"LOYALTY_SURVEY_QUESTIONS": ["nope"]}, "LOYALTY_SURVEY_QUESTIONS[0]"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "Bad Id", "type": "text", "label": "x"}]}, "LOYALTY_SURVEY_QUESTIONS[0].id"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "slider", "label": "x"}]}, "LOYALTY_SURVEY_QUESTIONS[0].type"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "text"}]}, "LOYALTY_SURVEY_QUESTIONS[0].label"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "text", "label": "x", "colour": 1}]}, "LOYALTY_SURVEY_QUESTIONS[0]"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "choice", "label": "x", "choices": ["a"]}]},
     "LOYALTY_SURVEY_QUESTIONS[0].choices"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "choice", "label": "x", "choices": ["a", "a"]}]},
     "LOYALTY_SURVEY_QUESTIONS[0].choices"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "choice", "label": "x", "choices": ["a", "b c"]}]},
     "LOYALTY_SURVEY_QUESTIONS[0].choices[1]"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "scale", "label": "x", "min": 3, "max": 2}]},
     "LOYALTY_SURVEY_QUESTIONS[0].min"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "scale", "label": "x", "min": 0, "max": 20}]},
     "LOYALTY_SURVEY_QUESTIONS[0].min"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "text", "label": "x", "max_length": 0}]},
     "LOYALTY_SURVEY_QUESTIONS[0].max_length"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "q", "type": "text", "label": "x", "required": "yes"}]},
     "LOYALTY_SURVEY_QUESTIONS[0].required"),
    ({"LOYALTY_SURVEY_QUESTIONS": ["source", "source"]}, "LOYALTY_SURVEY_QUESTIONS[1]"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "recommend", "type": "scale", "label": "x", "min": 1, "max": 5}]},
     "LOYALTY_SURVEY_QUESTIONS[0]"),
    ({"LOYALTY_SURVEY_QUESTIONS": [{"id": "source", "type": "text", "label": "x"}]}, "LOYALTY_SURVEY_QUESTIONS[0]"),
    ({"LOYALTY_SURVEY_EXTRA_QUESTIONS": [{"id": "comment", "type": "text", "label": "x"}]},
     "LOYALTY_SURVEY_EXTRA_QUESTIONS[0]"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "bogus"}}, "LOYALTY_SURVEY_REWARD.kind"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "percent"}}, "LOYALTY_SURVEY_REWARD.value"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "fixed", "value": 5.0}}, "LOYALTY_SURVEY_REWARD.value"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "percent", "value": "5", "valid_days": 0}}, "LOYALTY_SURVEY_REWARD.valid_days"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "percent", "value": "5", "customer_ref": "x"}}, "LOYALTY_SURVEY_REWARD"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "percent", "value": "150"}}, "LOYALTY_SURVEY_REWARD.value"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "fixed", "value": "abc"}}, "LOYALTY_SURVEY_REWARD.value"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "fixed", "value": "3", "currency": "XYZ"}}, "LOYALTY_SURVEY_REWARD.currency"),
    ({"LOYALTY_SURVEY_REWARD": {"kind": "percent", "value": "5", "max_uses": 0}}, "LOYALTY_SURVEY_REWARD.max_uses"),
])
def test_bad_configuration_fails_at_init_app(config, where):
    # init_app refuses the configuration before any database work, so no database is needed here
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_loyalty import Loyalty

    app = Flask("survey_config")
    app.config.update(SECRET_KEY="k", SQLALCHEMY_DATABASE_URI="sqlite://", **config)
    db = SQLAlchemy()
    db.init_app(app)
    with pytest.raises(InvalidInput) as info:
        Loyalty().init_app(app, db)
    assert isinstance(info.value, LoyaltyError)
    assert where in info.value.errors, info.value.errors
    assert where.split(".")[0].split("[")[0] in str(info.value)


# --- answering and validation ------------------------------------------------------

def test_reward_coupon_is_valid_to_the_end_of_the_shops_local_day(make_shop):
    s = make_shop(LOYALTY_TIMEZONE="America/New_York",
                  LOYALTY_SURVEY_REWARD={"kind": "percent", "value": "5", "valid_days": 60})
    with s.app.app_context():
        placed = datetime(2027, 1, 4, 12, 0, tzinfo=timezone.utc)
        _order(s, placed_at=placed)
        # 02:30 UTC on 10 January is still 9 January in New York: valid to the end of 10 March there (EST)
        result = s.loyalty.surveys.answer("o1", FULL, now=datetime(2027, 1, 10, 2, 30, tzinfo=timezone.utc))
        expires = datetime(2027, 3, 11, 4, 59, 59, 999999, tzinfo=timezone.utc)
        assert result.coupon.expires_at == expires
        [mail] = s.db.session.execute(select(Message).where(Message.kind == "survey_reward")).scalars().all()
        assert datetime.fromisoformat(mail.payload["expires_at"]) == expires


def test_complete_answer_is_stored_structurally(shop):
    _order(shop)
    result = shop.loyalty.surveys.answer("o1", FULL)
    assert result.status == "completed" and result.stored and not result.alerted
    r = result.response
    assert r.order_ref == "o1" and r.customer_ref == "c1" and r.completed and r.channel == "python"
    assert r.values == FULL and r.promoter and not r.detractor
    rows = {a.question: (a.type, a.number, a.choice, a.text)
            for a in shop.db.session.execute(select(SurveyAnswer)).scalars()}
    assert rows == {"source": ("choice", None, "friend_family", None), "experience": ("scale", 4, None, None),
                    "ease": ("scale", 5, None, None), "recommend": ("scale", 9, None, None),
                    "comment": ("text", None, None, "Lovely tea.")}
    assert shop.loyalty.surveys.response("o1").id == r.id


VALIDATION_RULES = [  # (answers, field, message)
    ({"recommend": 11}, "recommend", "Please choose one of the numbers shown."),
    ({"recommend": -1}, "recommend", "Please choose one of the numbers shown."),
    ({"recommend": True}, "recommend", "Please choose one of the numbers shown."),
    ({"recommend": 7.5}, "recommend", "Please choose one of the numbers shown."),
    ({"recommend": "7.0"}, "recommend", "Please choose one of the numbers shown."),
    ({"recommend": "seven"}, "recommend", "Please choose one of the numbers shown."),
    ({"recommend": None}, "recommend", "Please answer this question."),
    ({"recommend": 5, "experience": 0}, "experience", "Please choose one of the numbers shown."),
    ({"recommend": 5, "ease": 6}, "ease", "Please choose one of the numbers shown."),
    ({"recommend": 5, "source": "tv"}, "source", "Please choose one of the options shown."),
    ({"recommend": 5, "source": 3}, "source", "Please choose one of the options shown."),
    ({"recommend": 5, "comment": "x" * 2001}, "comment", "This answer is too long."),
    ({"recommend": 5, "comment": ["a"]}, "comment", "Please write your answer as text."),
    ({"recommend": 5, "colour": "red"}, "colour", "Unknown field."),
    ({"experience": 3}, "recommend", "Please answer this question."),
    ({}, "_schema", "Please answer at least one question."),
    ({"comment": "   "}, "_schema", "Please answer at least one question."),
    ({"recommend": 5, "comment": "x" * 2000}, None, None),     # the limit itself is fine
]


def test_every_validation_rule(shop):
    _order(shop)
    for answers, field, message in VALIDATION_RULES[:-1]:
        with pytest.raises(InvalidInput) as info:
            shop.loyalty.surveys.answer("o1", answers)
        assert info.value.errors[field] == [message], (answers, info.value.errors)
        assert _count(shop, SurveyResponse) == 0 and _count(shop, SurveyAnswer) == 0
    assert shop.loyalty.surveys.answer("o1", VALIDATION_RULES[-1][0]).status == "completed"


def test_bad_call_arguments(shop):
    _order(shop)
    with pytest.raises(NotFound):
        shop.loyalty.surveys.answer("nope", {"recommend": 5})
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.surveys.answer("", {"recommend": 5})
    assert "order_ref" in info.value.errors
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.surveys.answer("o1", {"recommend": 5}, channel="fax")
    assert "channel" in info.value.errors
    with pytest.raises(InvalidInput):
        shop.loyalty.surveys.answer("o1", [("recommend", 5)])
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.surveys.answer("o1", {"recommend": 5}, now=datetime(2026, 1, 1))
    assert "now" in info.value.errors
    assert _count(shop, SurveyResponse) == 0


def test_text_is_cleaned(shop):
    _order(shop)
    r = shop.loyalty.surveys.answer("o1", {"recommend": 8, "comment": "  Good\r\nbut\x00 slow\x07  "})
    assert r.response.values["comment"] == "Good\nbut slow"


def test_form_strings_are_accepted(shop):
    _order(shop)
    r = shop.loyalty.surveys.answer("o1", {"recommend": "10", "experience": " 5 ", "source": "advert"})
    assert r.response.values == {"recommend": 10, "experience": 5, "source": "advert"}


def test_one_click_then_form_completes(shop):
    _order(shop)
    first = shop.loyalty.surveys.answer("o1", {"recommend": 9}, partial=True, channel="mail", now=T0)
    assert first.status == "recorded" and not first.response.completed
    assert first.response.channel == "mail" and first.response.answered_at == T0
    # a second click while still open changes the open answer
    again = shop.loyalty.surveys.answer("o1", {"recommend": 10}, partial=True, channel="mail")
    assert again.status == "recorded" and again.response.values == {"recommend": 10}
    # the form may leave out the question answered by the click: it is required, but already answered
    done = shop.loyalty.surveys.answer("o1", {"experience": 5, "comment": "Great"}, channel="page",
                                       now=T0 + timedelta(minutes=3))
    assert done.status == "completed"
    assert done.response.values == {"recommend": 10, "experience": 5, "comment": "Great"}
    assert done.response.answered_at == T0 and done.response.completed_at == T0 + timedelta(minutes=3)
    assert _count(shop, SurveyResponse) == 1


def test_completed_response_is_never_overwritten(shop):
    _order(shop)
    shop.loyalty.surveys.answer("o1", FULL)
    for partial in (False, True):
        r = shop.loyalty.surveys.answer("o1", {"recommend": 0, "comment": "changed"}, partial=partial)
        assert r.status == "already_answered" and not r.stored
        assert r.response.values == FULL
    shop.db.session.expire_all()
    assert shop.loyalty.surveys.response("o1").values == FULL
    assert _count(shop, SurveyAnswer) == 5


def test_commit_false_joins_the_host_transaction(shop):
    _order(shop)
    shop.loyalty.surveys.answer("o1", {"recommend": 3}, commit=False)
    shop.db.session.rollback()
    assert _count(shop, SurveyResponse) == 0
    shop.loyalty.surveys.answer("o1", {"recommend": 3}, commit=False)
    shop.db.session.commit()
    assert _count(shop, SurveyResponse) == 1


# --- signals and alerts -------------------------------------------------------------

def test_signals_and_detractor_alert_once(shop):
    _order(shop)
    answered, alerts = [], []

    def on_answer(app, response):
        answered.append((response.order_ref, response.completed))

    def on_alert(app, response):
        alerts.append(response.values.get("recommend"))

    with survey_answered.connected_to(on_answer, shop.app), detractor_alert.connected_to(on_alert, shop.app):
        shop.loyalty.surveys.answer("o1", {"recommend": 4}, partial=True)
        shop.loyalty.surveys.answer("o1", {"recommend": 3, "experience": 1})
        shop.loyalty.surveys.answer("o1", {"recommend": 3})           # already answered: nothing
    assert answered == [("o1", False), ("o1", True)]
    assert alerts == [4]
    assert shop.loyalty.surveys.response("o1").alerted_at is not None
    # no LOYALTY_ALERT_EMAIL: no mail
    assert shop.db.session.execute(select(func.count(Message.id)).where(Message.kind == "detractor_alert")).scalar_one() == 0


def test_detractor_thresholds(shop):
    cases = [({"recommend": 6}, True), ({"recommend": 7}, False), ({"recommend": 10, "experience": 2}, True),
             ({"recommend": 10, "experience": 3}, False), ({"recommend": 0, "experience": 5}, True)]
    for i, (answers, alarm) in enumerate(cases):
        _order(shop, f"o{i}")
        seen = []
        with detractor_alert.connected_to(lambda app, response, seen=seen: seen.append(1), shop.app):
            result = shop.loyalty.surveys.answer(f"o{i}", answers)
        assert result.alerted is alarm and bool(seen) is alarm, answers


def test_alert_mail_to_the_shop(make_shop):
    s = make_shop(LOYALTY_ALERT_EMAIL="owner@example.com")
    with s.app.app_context():
        s.loyalty.upsert_customer("c1", name="Ana Pop", locale="ro")
        _order(s)
        s.loyalty.surveys.answer("o1", {"recommend": 2, "experience": 1, "source": "advert", "comment": "Late"})
        msgs = s.db.session.execute(select(Message).where(Message.kind == "detractor_alert")).scalars().all()
        assert len(msgs) == 1
        m = msgs[0]
        assert m.order_ref == "o1" and m.payload["customer_ref"] == "c1" and m.payload["customer_name"] == "Ana Pop"
        assert ["How did you find us?", "An advert"] in m.payload["answers"]
        assert ["Anything you would like to tell us?", "Late"] in m.payload["answers"]
        assert m.payload["customer_url"] == "http://shop.test/loyalty/admin/customers/c1"
        from flask_loyalty.services import mail

        rendered = mail.render_message(s.loyalty.state, m, m.customer)
        assert rendered.to_address == "owner@example.com"
        assert rendered.locale == "en"           # the shop's locale, not the customer's
        assert "order o1" in rendered.subject
        assert "Late" in rendered.body_text and "http://shop.test/loyalty/admin/customers/c1" in rendered.body_text
        assert "An advert" in rendered.body_html


def test_alert_after_one_click_waits_and_shows_the_finished_form(make_shop):
    s = make_shop(LOYALTY_ALERT_EMAIL="owner@example.com")
    with s.app.app_context():
        _order(s)
        s.loyalty.surveys.answer("o1", {"recommend": 1}, partial=True, now=T0)
        m = s.db.session.execute(select(Message).where(Message.kind == "detractor_alert")).scalar_one()
        assert m.due_at == T0 + timedelta(minutes=30)
        s.loyalty.surveys.answer("o1", {"comment": "Box was crushed"}, now=T0 + timedelta(minutes=2))
        assert s.db.session.execute(select(func.count(Message.id)).where(Message.kind == "detractor_alert")).scalar_one() == 1
        from flask_loyalty.services import mail

        rendered = mail.render_message(s.loyalty.state, m, m.customer)
        assert "Box was crushed" in rendered.body_text and "Box was crushed" in rendered.body_html


# --- mails --------------------------------------------------------------------------

def test_invite_mail_carries_the_eleven_link_scale(make_shop):
    s = make_shop(LOYALTY_TRACKING=False)
    with s.app.app_context():
        s.loyalty.upsert_customer("c1", locale="es", name="Lucía")
        _order(s)
        from flask_loyalty.services import mail, outbox

        msg = outbox.enqueue(s.loyalty.state, "survey_invite", s.loyalty.customer("c1"), order_ref="o1",
                             payload={"order_ref": "o1"})
        rendered = mail.render_message(s.loyalty.state, msg, msg.customer)
        assert rendered.locale == "es"
        html = rendered.body_html
        survey = s.loyalty.links.survey("o1").split("/survey/")[0] + "/survey/"
        import re

        links = re.findall(r'href="([^"]+\?recommend=(\d+))"', html)
        assert [int(n) for _, n in links] == list(range(11))
        assert all(u.startswith(survey) for u, _ in links)
        assert "Hola Lucía" in rendered.body_text and "o1" in rendered.subject
        # each link works as a one-click answer
        path = links[7][0].replace("http://shop.test", "")
        assert s.client.get(path).status_code == 200
        assert s.loyalty.surveys.response("o1").values == {"recommend": 7}


def test_invite_cancelled_when_order_already_answered(shop):
    _order(shop)
    from flask_loyalty.services import outbox

    msg = outbox.enqueue(shop.loyalty.state, "survey_invite", shop.loyalty.customer("c1"), order_ref="o1")
    check = outbox.CHECKS["survey_invite"]
    assert [c(shop.loyalty.state, msg, T0) for c in check if c.__module__.endswith("surveys")] == [None]
    shop.loyalty.surveys.answer("o1", {"recommend": 9}, partial=True)
    assert [c(shop.loyalty.state, msg, T0) for c in check if c.__module__.endswith("surveys")] == ["survey_answered"]


# --- erase / export -------------------------------------------------------------------

def test_erase_removes_free_text_and_export_lists_answers(shop):
    _order(shop)
    _order(shop, "o2", "c2")
    shop.loyalty.surveys.answer("o1", FULL)
    shop.loyalty.surveys.answer("o2", {"recommend": 5, "comment": "keep me"})
    customer = shop.loyalty.customer("c1")
    data: dict = {}
    shop.loyalty.state.run_hooks("export", customer=customer, data=data)
    assert data["survey"][0]["order_ref"] == "o1" and data["survey"][0]["answers"] == FULL
    shop.loyalty.state.run_hooks("erase", customer=customer)
    shop.db.session.commit()
    shop.db.session.expire_all()
    r = shop.loyalty.surveys.response("o1")
    assert "comment" not in r.values and r.values["recommend"] == 9 and r.erased_at is not None
    assert [c.text for c in shop.loyalty.surveys.comments()] == ["keep me"]


def test_answer_refuses_an_erased_customer_and_writes_nothing(shop):
    """Erasure is final: a later answer about one of their orders (any channel) stores no new personal data."""
    _order(shop)
    shop.loyalty.surveys.answer("o1", {"recommend": 9}, partial=True)
    shop.loyalty.consent.erase("c1")
    before = shop.db.session.scalar(select(func.count()).select_from(SurveyAnswer))
    with pytest.raises(NotFound):
        shop.loyalty.surveys.answer("o1", {**FULL, "comment": "my phone is 555-0100"})
    shop.db.session.rollback()
    assert shop.db.session.scalar(select(func.count()).select_from(SurveyAnswer)) == before


# --- statistics -----------------------------------------------------------------------

KNOWN = [  # (order, recommend, experience, ease, source, comment, days after T0)
    ("a1", 10, 5, 5, "friend_family", "Perfect", 0),
    ("a2", 9, 4, 5, "search_engine", None, 1),
    ("a3", 9, 5, 4, "friend_family", None, 2),
    ("a4", 8, 4, 4, "advert", None, 3),
    ("a5", 7, 3, 3, None, "ok", 8),
    ("a6", 6, 2, 2, "search_engine", "Slow delivery", 9),
    ("a7", 3, 1, 2, "other", None, 10),
    ("a8", 0, 1, 1, "search_engine", "Broken", 35),
]


def _known_answers(shop):
    for order, rec, exp, ease, source, comment, days in KNOWN:
        _order(shop, order, "c-" + order)
        answers = {"recommend": rec, "experience": exp, "ease": ease}
        if source:
            answers["source"] = source
        if comment:
            answers["comment"] = comment
        shop.loyalty.surveys.answer(order, answers, now=T0 + timedelta(days=days))
    _order(shop, "p1", "c-p1")
    shop.loyalty.surveys.answer("p1", {"recommend": 10}, partial=True, now=T0 + timedelta(days=36))


def test_stats_against_hand_computed_figures(shop):
    _known_answers(shop)
    st = shop.loyalty.surveys.stats()
    # recommend answers: 10, 9, 9, 8, 7, 6, 3, 0 and the one-click 10 -> 4 promoters, 2 passives, 3 detractors of 9
    assert st.responses == 9 and st.completed == 8
    assert (st.promoters, st.passives, st.detractors) == (4, 2, 3)
    assert st.nps == round((4 - 3) / 9 * 100, 1) == 11.1
    assert st.experience_avg == round(25 / 8, 2) == 3.12
    assert st.ease_avg == round(26 / 8, 2) == 3.25
    assert st.by_source == {"search_engine": 3, "social_network": 0, "friend_family": 2, "newsletter": 0,
                            "advert": 1, "other": 1}
    assert st.invitations == 0 and st.response_rate is None
    assert [(c.order_ref, c.customer_ref, c.text) for c in st.comments] == [
        ("a8", "c-a8", "Broken"), ("a6", "c-a6", "Slow delivery"), ("a5", "c-a5", "ok"), ("a1", "c-a1", "Perfect")]
    assert [c.detractor for c in st.comments] == [True, True, False, False]
    # a window: the first week only -> 10, 9, 9, 8 -> NPS (3 - 0) / 4 = 75
    week = shop.loyalty.surveys.stats(since=T0, until=T0 + timedelta(days=7))
    assert week.responses == 4 and week.nps == 75.0 and week.experience_avg == 4.5 and week.ease_avg == 4.5
    assert [c.order_ref for c in week.comments] == ["a1"]
    empty = shop.loyalty.surveys.stats(until=T0 - timedelta(days=1))
    assert empty.responses == 0 and empty.nps is None and empty.experience_avg is None
    with pytest.raises(InvalidInput):
        shop.loyalty.surveys.stats(since=datetime(2026, 1, 1))


def test_response_rate_counts_sent_invitations(shop):
    _known_answers(shop)
    from flask_loyalty.models.base import table_of
    from flask_loyalty.services import outbox

    for i, (order, *_rest) in enumerate(KNOWN):
        m = outbox.enqueue(shop.loyalty.state, "survey_invite", shop.loyalty.customer("c-" + order), order_ref=order)
        sent = T0 - timedelta(days=1) + timedelta(days=i) if i < 6 else None   # 6 sent, 2 still scheduled
        if sent is not None:
            shop.db.session.execute(table_of(Message).update().where(table_of(Message).c.id == m.id)
                                    .values(status="sent", sent_at=sent))
    shop.db.session.commit()
    st = shop.loyalty.surveys.stats()
    assert st.invitations == 6 and st.response_rate == round(9 / 6, 4)
    week = shop.loyalty.surveys.stats(since=T0 - timedelta(days=1), until=T0 + timedelta(days=7))
    # invitations sent T0-1 .. T0+4 (6) ; responses a1..a4 (4)
    assert week.invitations == 6 and week.response_rate == round(4 / 6, 4)


def test_weekly_and_monthly_series(shop):
    _known_answers(shop)
    weeks = shop.loyalty.surveys.series(period="week")
    assert [w.start for w in weeks] == [date(2026, 3, 2) + timedelta(days=7 * i) for i in range(6)]
    assert [w.responses for w in weeks] == [4, 3, 0, 0, 0, 2]
    assert weeks[0].nps == 75.0 and weeks[1].nps == round((0 - 2) / 3 * 100, 1)
    assert weeks[2].nps is None and weeks[5].nps == 0.0        # 0 and 10 -> 1 - 1
    assert weeks[1].experience_avg == 2.0 and weeks[1].ease_avg == round(7 / 3, 2)
    months = shop.loyalty.surveys.series(period="month")
    assert [(m.start, m.responses) for m in months] == [(date(2026, 3, 1), 7), (date(2026, 4, 1), 2)]
    padded = shop.loyalty.surveys.series(period="month", since=T0 - timedelta(days=40), until=T0 + timedelta(days=70))
    assert [m.start for m in padded] == [date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1), date(2026, 4, 1),
                                         date(2026, 5, 1)]
    with pytest.raises(InvalidInput):
        shop.loyalty.surveys.series(period="day")


def test_series_uses_the_shop_time_zone(make_shop):
    s = make_shop(LOYALTY_TIMEZONE="Europe/Bucharest")
    with s.app.app_context():
        _order(s)
        # Sunday 22:30 UTC is already Monday 00:30 in Bucharest
        s.loyalty.surveys.answer("o1", {"recommend": 9}, now=datetime(2026, 3, 1, 22, 30, tzinfo=timezone.utc))
        assert [w.start for w in s.loyalty.surveys.series()] == [date(2026, 3, 2)]


# --- concurrency ------------------------------------------------------------------------

def test_one_response_per_order_under_8_concurrent_submits(make_shop):
    s = make_shop()
    with s.app.app_context():
        _order(s)
    barrier = threading.Barrier(8)
    results, errors = [], []
    answered = []
    survey_answered.connect(lambda app, response: answered.append(response.id), s.app, weak=False)

    def worker(i):
        with s.app.app_context():
            try:
                barrier.wait()
                partial = i % 2 == 1
                r = s.loyalty.surveys.answer("o1", {"recommend": i, "comment": f"thread {i}"}, partial=partial)
                results.append((i, r.status))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                s.db.session.remove()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    statuses = [st for _, st in results]
    assert statuses.count("completed") == 1
    with s.app.app_context():
        assert _count(s, SurveyResponse) == 1
        r = s.loyalty.surveys.response("o1")
        winner = next(i for i, st in results if st == "completed")
        # the completing thread's answers are the stored ones; nobody wrote after it
        assert r.completed and r.values == {"recommend": winner, "comment": f"thread {winner}"}
        assert _count(s, SurveyAnswer) == 2
        later = [i for i, st in results if st == "already_answered"]
        assert all(i != winner for i in later)
    assert len(answered) == statuses.count("completed") + statuses.count("recorded")


def test_reward_text_accepts_values_read_back_from_a_json_payload(shop):
    from flask_loyalty.i18n import translator
    from flask_loyalty.services.surveys import coupon_text

    tr = translator("en")
    assert coupon_text("percent", "10.00", "EUR", tr) == "10% off your next order"
    assert coupon_text("percent", Decimal("12.5"), "EUR", tr) == "12.5% off your next order"
    assert coupon_text("fixed", "3.00", "EUR", tr) == "€3.00 off your next order"
