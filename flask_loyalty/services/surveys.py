"""The post-purchase survey: answers (page, one-click mail link, JSON, Python), statistics, alerts.

Every way of answering goes through :func:`answer`, so the rules live once:

- one response per order, under any number of concurrent submits (a unique
  constraint and ``INSERT ... ON CONFLICT DO NOTHING``, then conditional
  ``UPDATE ... WHERE completed_at IS NULL``);
- a *partial* answer (the one-click 0–10 scale in the invitation mail) is
  stored at once and counts in the statistics; the form completes it later;
  once completed nothing is overwritten;
- ``survey_answered`` fires whenever answers are stored, ``detractor_alert``
  once per response when ``recommend`` ≤ 6 or ``experience`` ≤ 2 (plus a mail
  to ``LOYALTY_ALERT_EMAIL`` when set), and ``LOYALTY_SURVEY_REWARD`` issues at
  most one coupon per order when the survey is completed.

Hooks registered at set-up: ``erase`` (free-text answers removed) and
``export`` (``data["survey"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, func, insert, literal, select, update

from ..clock import local_date, resolve_now, shop_zone, start_of_local_day, utcnow, valid_days_deadline
from ..errors import InvalidInput, LoyaltyError, NotFound
from ..i18n import default_locale, translator
from ..models import Customer, Purchase
from ..models.base import table_of
from ..models.survey import DETRACTOR_MAX, PROMOTER_MIN, SurveyAnswer, SurveyResponse
from ..schemas import load
from ..schemas.survey import (
    MSG_REQUIRED,
    Label,
    Question,
    SurveyCallSchema,
    answers_schema,
    build_questions,
    missing_required,
)
from ..signals import detractor_alert, survey_answered
from ..state import LoyaltyState, get_state
from ..transaction import PendingSignal, begin_write, finish, insert_ignore
from .base import Facade

if TYPE_CHECKING:
    from marshmallow import Schema

#: ``experience`` answers at or below this raise a detractor alert too.
EXPERIENCE_ALERT_MAX = 2
#: Minutes a detractor alert raised by a one-click answer waits, so the mail can show the whole form.
ALERT_GRACE_MINUTES = 30
#: Keys a ``LOYALTY_SURVEY_REWARD`` rule may have (``coupons.create`` rules plus ``valid_days``).
REWARD_KEYS = frozenset({"kind", "value", "currency", "min_order_total", "valid_days", "campaign", "gift_name",
                         "max_uses", "max_uses_per_customer"})
COUPON_KINDS = ("percent", "fixed", "free_shipping", "gift")
_EXTRAS_KEY = "survey"


# --- set-up ---------------------------------------------------------------------

@dataclass(frozen=True)
class SurveyConfig:
    """The validated survey configuration of one app."""

    questions: tuple[Question, ...]
    schema: Schema
    reward: dict[str, Any] | None

    def question(self, question_id: str) -> Question | None:
        """The question with ``question_id`` (``None`` when the set has none)."""
        return next((q for q in self.questions if q.id == question_id), None)


def _check_reward(rule: object, currency: str = "EUR") -> dict[str, Any] | None:
    if rule is None:
        return None
    if not isinstance(rule, Mapping):
        raise InvalidInput.field("LOYALTY_SURVEY_REWARD", "Must be None or a coupon rule dict.")
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(rule) - REWARD_KEYS)
    if unknown:
        errors["LOYALTY_SURVEY_REWARD"] = [f"Unknown keys: {', '.join(map(str, unknown))}."]
    if rule.get("kind") not in COUPON_KINDS:
        errors["LOYALTY_SURVEY_REWARD.kind"] = [f"Must be one of: {', '.join(COUPON_KINDS)}."]
    if rule.get("kind") in ("percent", "fixed") and rule.get("value") in (None, ""):
        errors["LOYALTY_SURVEY_REWARD.value"] = ["A percent or fixed coupon needs a value."]
    if isinstance(rule.get("value"), float):
        errors["LOYALTY_SURVEY_REWARD.value"] = ["Use a string or Decimal, not a float."]
    days = rule.get("valid_days")
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650):
        errors["LOYALTY_SURVEY_REWARD.valid_days"] = ["Must be a whole number of days from 1 to 3650."]
    if not errors:
        # the coupons area's own rules (value ranges, currency ...), checked now rather than at the first answer
        from ..schemas.coupon import CouponRulesSchema

        rules = {k: v for k, v in rule.items() if k != "valid_days"}
        rules.setdefault("currency", currency)
        try:
            load(CouponRulesSchema(), rules)
        except InvalidInput as exc:
            errors = {f"LOYALTY_SURVEY_REWARD.{k}": [str(m) for m in v] if isinstance(v, list) else [str(v)]
                      for k, v in exc.errors.items()}
    if errors:
        raise InvalidInput(errors, "invalid LOYALTY_SURVEY_REWARD: " + "; ".join(
            f"{k}: {' '.join(v)}" for k, v in errors.items()))
    return dict(rule)


def setup(state: LoyaltyState) -> None:
    """Validate the survey configuration and register the ``erase``/``export`` hooks.

    Raises :class:`InvalidInput` (a :class:`LoyaltyError`) naming every
    problem of ``LOYALTY_SURVEY_QUESTIONS``, ``LOYALTY_SURVEY_EXTRA_QUESTIONS``
    or ``LOYALTY_SURVEY_REWARD``.
    """
    questions = build_questions(state.config.get("LOYALTY_SURVEY_QUESTIONS"),
                                state.config.get("LOYALTY_SURVEY_EXTRA_QUESTIONS"))
    reward = _check_reward(state.config.get("LOYALTY_SURVEY_REWARD"), state.config["LOYALTY_CURRENCY"])
    state.extras[_EXTRAS_KEY] = SurveyConfig(questions=questions, schema=answers_schema(questions), reward=reward)
    state.add_hook("erase", _erase_hook)
    state.add_hook("export", _export_hook)


def survey_config(state: LoyaltyState) -> SurveyConfig:
    """The app's validated survey configuration."""
    config = state.extras.get(_EXTRAS_KEY)
    if config is None:  # pragma: no cover - setup() always runs at init_app
        raise LoyaltyError("the survey area was not set up: call loyalty.init_app(app, db)")
    return config  # type: ignore[no-any-return]


# --- labels -----------------------------------------------------------------------

def label_text(label: Label | None, locale: str, gettext: Any) -> str:
    """A question/choice label in ``locale``: a msgid through ``gettext``, or the mapping's entry."""
    if label is None:
        return ""
    if isinstance(label, str):
        return str(gettext(label))
    for key in (locale, "en"):
        if key in label:
            return label[key]
    return next(iter(label.values()))


def display_value(question: Question, value: Any, locale: str, gettext: Any) -> str:
    """An answer as text for people (choice labels, yes/no translated)."""
    if value is None:
        return ""
    if question.type == "choice":
        return label_text(question.choice_label(str(value)) or str(value), locale, gettext)
    if question.type == "yes_no":
        return str(gettext("Yes")) if value else str(gettext("No"))
    return str(value)


def display_answers(state: LoyaltyState, response: SurveyResponse,
                    locale: str | None = None) -> list[tuple[str, str]]:
    """``(question label, answer)`` pairs of a response for people (dashboard, mails), in ``locale``."""
    tr = translator(locale, state=state)
    values = response.values
    return [(label_text(q.label, tr.locale, tr.gettext), display_value(q, values[q.id], tr.locale, tr.gettext))
            for q in survey_config(state).questions if q.id in values]


# --- answering ----------------------------------------------------------------------

@dataclass
class AnswerResult:
    """What :func:`answer` did.

    ``status``: ``"recorded"`` (a partial answer was stored), ``"completed"``
    (the survey was completed now) or ``"already_answered"`` (the order's
    response was completed before; nothing was changed).  ``coupon`` is the
    reward coupon issued now (``None`` otherwise); ``alerted`` tells whether a
    detractor alert went out with this call.
    """

    status: str
    response: SurveyResponse
    coupon: Any = None
    alerted: bool = False

    @property
    def stored(self) -> bool:
        """Whether this call stored answers."""
        return self.status != "already_answered"


def _get_response(state: LoyaltyState, purchase_id: int) -> SurveyResponse | None:
    return state.session.execute(
        select(SurveyResponse).where(SurveyResponse.purchase_id == purchase_id)
        .execution_options(populate_existing=True)).scalar_one_or_none()


def _stored_values(state: LoyaltyState, response_id: int) -> dict[str, Any]:
    rows = state.session.execute(select(SurveyAnswer).where(SurveyAnswer.response_id == response_id)).scalars()
    return {a.question: a.value for a in rows if a.value is not None}


def _write_answers(state: LoyaltyState, config: SurveyConfig, response_id: int, values: Mapping[str, Any]) -> None:
    table = table_of(SurveyAnswer)
    given = [qid for qid, v in values.items() if v not in (None, "")]
    cleared = [qid for qid, v in values.items() if v in (None, "")]
    if given or cleared:
        state.session.execute(delete(table).where(table.c.response_id == response_id,
                                                  table.c.question.in_(given + cleared)))
    rows = []
    for qid in given:
        question = config.question(qid)
        assert question is not None
        rows.append({"response_id": response_id, "question": qid, "type": question.type,
                     **SurveyAnswer.columns_for(question.type, values[qid])})
    if rows:
        state.session.execute(insert(table), rows)


def is_alarming(values: Mapping[str, Any]) -> bool:
    """Whether answers show an unhappy customer: ``recommend`` ≤ 6 or ``experience`` ≤ 2."""
    recommend, experience = values.get("recommend"), values.get("experience")
    return ((isinstance(recommend, int) and not isinstance(recommend, bool) and recommend <= DETRACTOR_MAX)
            or (isinstance(experience, int) and not isinstance(experience, bool)
                and experience <= EXPERIENCE_ALERT_MAX))


def _alert_payload(state: LoyaltyState, response: SurveyResponse) -> dict[str, Any]:
    from . import links

    rows = [list(pair) for pair in display_answers(state, response, default_locale(state))]
    return {"order_ref": response.order_ref, "customer_ref": response.customer_ref,
            "customer_email": response.customer.email or "", "customer_name": response.customer.name or "",
            "recommend": response.values.get("recommend", ""), "experience": response.values.get("experience", ""),
            "answers": rows,
            "customer_url": links.absolute(state, "/admin/customers/" + _quote(response.customer_ref))}


def _quote(ref: str) -> str:
    from urllib.parse import quote

    return quote(ref, safe="")


def _issue_reward(state: LoyaltyState, config: SurveyConfig, response: SurveyResponse,
                  now: datetime) -> Any:
    rule = dict(config.reward or {})
    days = rule.pop("valid_days", None)
    rule.setdefault("campaign", "survey")
    rule.setdefault("max_uses", 1)
    if days is not None:
        rule["expires_at"] = valid_days_deadline(now, int(days), shop_zone(state.config["LOYALTY_TIMEZONE"]))
    coupon = state.extension.coupons.create(customer_ref=response.customer_ref, commit=False, **rule)
    table = table_of(SurveyResponse)
    state.session.execute(update(table).where(table.c.id == response.id, table.c.reward_code.is_(None))
                          .values(reward_code=coupon.code))
    from . import outbox

    payload = {"code": coupon.code, "kind": coupon.kind,
               "value": "" if coupon.value is None else str(coupon.value), "currency": coupon.currency,
               "expires_at": coupon.expires_at.isoformat() if coupon.expires_at else ""}
    outbox.enqueue(state, "survey_reward", response.customer, order_ref=response.order_ref, payload=payload,
                   dedupe_key=f"survey_reward:{response.order_ref}", reason="survey completed")
    return coupon


def answer(state: LoyaltyState, order_ref: str, answers: Mapping[str, Any], *, partial: bool = False,
           channel: str = "python", now: datetime | None = None, commit: bool = True) -> AnswerResult:
    """Store a shopper's answers about ``order_ref``; the one rule set of every channel.

    ``answers`` maps question ids to answers (ints for scales, choice values,
    ``True``/``False`` or ``"yes"``/``"no"``, text; digit strings from forms
    are accepted).  Unknown ids, out-of-range numbers, unknown choices, too
    long text and an empty set raise :class:`InvalidInput` (field ->
    messages) and write nothing.  With ``partial=False`` the survey is
    completed: required questions must be answered (by this call or by an
    earlier partial answer).  ``partial=True`` stores what is given and
    leaves the survey open (the one-click link).  A completed survey is never
    changed again: the result's ``status`` is then ``"already_answered"``.
    An unknown order, or an order of a customer whose data was erased,
    raises :class:`NotFound` and writes nothing.
    """
    if not isinstance(answers, Mapping):
        raise InvalidInput.field("answers", "Must be a mapping of question id to answer.")
    call = load(SurveyCallSchema(), {"order_ref": order_ref, "partial": partial, "channel": channel})
    config = survey_config(state)
    moment = resolve_now(now)
    session = state.session
    purchase = session.execute(select(Purchase).where(Purchase.order_ref == call["order_ref"])).scalar_one_or_none()
    if purchase is None:
        raise NotFound(f"no order {call['order_ref']!r}")
    if purchase.customer.erased_at is not None:   # erasure is final: no new personal data about them
        raise NotFound("this customer's data was erased")
    existing = _get_response(state, purchase.id)
    if existing is not None and existing.completed_at is not None:
        return AnswerResult("already_answered", existing)
    stored = _stored_values(state, existing.id) if existing is not None else {}
    try:
        values = load(config.schema, dict(answers))
    except InvalidInput as exc:
        # report the unanswered required questions together with the other mistakes
        if not partial and "_schema" not in exc.errors:
            given = {k: v for k, v in answers.items() if k not in exc.errors}
            for qid, messages in missing_required(config.questions, {**stored, **given}).items():
                exc.errors.setdefault(qid, messages)
        raise
    if not partial:
        missing = missing_required(config.questions, {**stored, **values})
        if missing:
            raise InvalidInput(missing)

    begin_write(state)
    table = table_of(SurveyResponse)
    completed_at = None if partial else moment
    inserted = insert_ignore(state, table, {
        "purchase_id": purchase.id, "customer_id": purchase.customer_id, "answered_at": moment,
        "updated_at": moment, "completed_at": completed_at, "channel": call["channel"],
        "created_at": utcnow()}, ["purchase_id"])
    response = _get_response(state, purchase.id)
    assert response is not None
    if not inserted:
        # Someone answered first: write only while the response is still open.
        # The conditional update locks the row (PostgreSQL) so completions serialise.
        result = session.execute(update(table).where(table.c.id == response.id, table.c.completed_at.is_(None))
                                 .values(updated_at=moment, completed_at=completed_at))
        if not result.rowcount:  # type: ignore[attr-defined]
            session.refresh(response)
            finish(state, commit=commit)     # ends the write begun above; nothing was changed
            return AnswerResult("already_answered", response)
    _write_answers(state, config, response.id, values)
    session.flush()
    session.expire(response)
    response = _get_response(state, purchase.id)
    assert response is not None
    stored = response.values

    signals: list[PendingSignal] = [(survey_answered, {"response": response})]
    alerted = False
    if is_alarming(stored):
        flagged = session.execute(update(table).where(table.c.id == response.id, table.c.alerted_at.is_(None))
                                  .values(alerted_at=moment))
        if flagged.rowcount:  # type: ignore[attr-defined]
            alerted = True
            signals.append((detractor_alert, {"response": response}))
            if state.config.get("LOYALTY_ALERT_EMAIL"):
                from . import outbox

                # A one-click answer leaves the shopper a moment to finish the form: the mail shows the
                # answers as they are when it is sent (see _alert_context).
                due = moment + timedelta(minutes=ALERT_GRACE_MINUTES) if partial else moment
                outbox.enqueue(state, "detractor_alert", response.customer, order_ref=response.order_ref,
                               due_at=due, payload=_alert_payload(state, response),
                               dedupe_key=f"detractor_alert:{response.order_ref}",
                               reason="survey answer: recommend <= 6 or experience <= 2")
    coupon = None
    if not partial and config.reward is not None:
        coupon = _issue_reward(state, config, response, moment)
    session.flush()
    session.refresh(response)
    finish(state, commit=commit, signals=signals)
    return AnswerResult("recorded" if partial else "completed", response, coupon=coupon, alerted=alerted)


# --- mails: template context and send-time check -----------------------------------------

def coupon_text(kind: str, value: Any, currency: str, tr: Any) -> str:
    """What a reward coupon is worth, in words, in the translator's language."""
    if kind == "percent":
        # the value may come back from a JSON payload as a string
        text = format(Decimal(str(value)), "f") if value is not None else "0"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        return str(tr.gettext("%(value)s%% off your next order", value=text))
    if kind == "fixed":
        return str(tr.gettext("%(amount)s off your next order", amount=tr.money(Decimal(str(value)), currency)))
    if kind == "free_shipping":
        return str(tr.gettext("Free shipping on your next order"))
    return str(tr.gettext("A gift with your next order"))


def _invite_context(state: LoyaltyState, message: Any, customer: Customer, locale: str) -> dict[str, Any]:
    """Template context of ``survey_invite``: the survey link and the one-click 0-10 scale."""
    url = state.extension.links.survey(message.order_ref)
    context: dict[str, Any] = {"survey_url": url, "scale": [], "scale_question": "", "scale_low": "",
                               "scale_high": ""}
    question = survey_config(state).question("recommend")
    if question is not None:
        tr = translator(locale, state=state)
        context.update(
            scale=[(n, f"{url}?recommend={n}") for n in question.values],
            scale_question=label_text(question.label, tr.locale, tr.gettext),
            scale_low=label_text(question.min_label, tr.locale, tr.gettext),
            scale_high=label_text(question.max_label, tr.locale, tr.gettext))
    return context


def _reward_context(state: LoyaltyState, message: Any, customer: Customer, locale: str) -> dict[str, Any]:
    """Template context of ``survey_reward``: the coupon in words and its expiry date."""
    tr = translator(locale, state=state)
    payload = message.payload or {}
    expires = payload.get("expires_at")
    return {"reward_text": coupon_text(payload.get("kind", ""), payload.get("value") or None,
                                       payload.get("currency") or state.config["LOYALTY_CURRENCY"], tr),
            "reward_expires": tr.date(datetime.fromisoformat(expires)) if expires else ""}


def _alert_context(state: LoyaltyState, message: Any, customer: Customer, locale: str) -> dict[str, Any]:
    """Template context of ``detractor_alert``: the response's answers as they are now."""
    payload = message.payload or {}
    answers = [tuple(pair) for pair in payload.get("answers", [])]
    if message.order_ref:
        response = state.session.execute(
            select(SurveyResponse).join(Purchase, Purchase.id == SurveyResponse.purchase_id)
            .where(Purchase.order_ref == message.order_ref)).scalar_one_or_none()
        if response is not None:
            answers = display_answers(state, response, locale)
    return {"alert_answers": answers}


def _invite_check(state: LoyaltyState, message: Any, now: datetime) -> str | None:
    """Cancel a survey invitation whose order was answered meanwhile."""
    if not message.order_ref:
        return None
    found = state.session.execute(
        select(SurveyResponse.id).join(Purchase, Purchase.id == SurveyResponse.purchase_id)
        .where(Purchase.order_ref == message.order_ref)).first()
    return "survey_answered" if found is not None else None


def _register_mail_parts() -> None:
    from . import outbox

    outbox.register_context("survey_invite", _invite_context)
    outbox.register_context("survey_reward", _reward_context)
    outbox.register_context("detractor_alert", _alert_context)
    if _invite_check not in outbox.CHECKS.get("survey_invite", []):
        outbox.register_check("survey_invite", _invite_check)


_register_mail_parts()


# --- erase / export hooks ---------------------------------------------------------------

def _erase_hook(state: LoyaltyState, *, customer: Customer, **_: Any) -> None:
    """Remove the customer's free-text answers (numbers and choices stay, for the shop's figures)."""
    responses = table_of(SurveyResponse)
    ids = select(responses.c.id).where(responses.c.customer_id == customer.id)
    answers = table_of(SurveyAnswer)
    state.session.execute(update(answers).where(answers.c.response_id.in_(ids), answers.c.type == "text")
                          .values(text=None))
    state.session.execute(update(responses).where(responses.c.customer_id == customer.id,
                                                  responses.c.erased_at.is_(None))
                          .values(erased_at=utcnow()))


def export_for(state: LoyaltyState, customer: Customer) -> list[dict[str, Any]]:
    """The customer's survey responses as JSON-able dicts."""
    rows = state.session.execute(select(SurveyResponse).where(SurveyResponse.customer_id == customer.id)
                                 .order_by(SurveyResponse.answered_at)).scalars()
    return [{"order_ref": r.order_ref, "answered_at": r.answered_at.isoformat(),
             "completed_at": r.completed_at.isoformat() if r.completed_at else None,
             "channel": r.channel, "answers": r.values, "reward_code": r.reward_code} for r in rows]


def _export_hook(state: LoyaltyState, *, customer: Customer, data: dict[str, Any], **_: Any) -> None:
    data["survey"] = export_for(state, customer)


# --- statistics ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SurveyComment:
    """A free-text answer with its order and customer (for the dashboard)."""

    order_ref: str
    customer_ref: str
    question: str
    text: str
    answered_at: datetime
    recommend: int | None
    experience: int | None

    @property
    def detractor(self) -> bool:
        """Whether the same response is an NPS detractor or rated the experience ≤ 2."""
        return is_alarming({"recommend": self.recommend, "experience": self.experience})


@dataclass(frozen=True)
class SurveyStats:
    """Survey figures over a time window (responses counted by when they were first answered).

    ``nps``: % promoters (9–10) − % detractors (0–6) among ``recommend``
    answers, −100..100 (``None`` without any).  ``response_rate``: responses ÷
    ``survey_invite`` mails sent in the window (``None`` when none was sent).
    """

    responses: int
    completed: int
    nps: float | None
    promoters: int
    passives: int
    detractors: int
    experience_avg: float | None
    ease_avg: float | None
    by_source: dict[str, int]
    invitations: int
    response_rate: float | None
    comments: list[SurveyComment] = field(default_factory=list)


@dataclass(frozen=True)
class SurveyBucket:
    """One week or month of the survey series (``start``: first local day of the bucket)."""

    start: date
    responses: int
    nps: float | None
    experience_avg: float | None
    ease_avg: float | None


def _window(query: Any, column: Any, since: datetime | None, until: datetime | None) -> Any:
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


def nps_of(counts: Mapping[int, int]) -> tuple[float | None, int, int, int]:
    """``(nps, promoters, passives, detractors)`` from counts of 0–10 answers."""
    total = sum(counts.values())
    promoters = sum(n for v, n in counts.items() if v >= PROMOTER_MIN)
    detractors = sum(n for v, n in counts.items() if v <= DETRACTOR_MAX)
    if not total:
        return None, 0, 0, 0
    return round((promoters - detractors) * 100 / total, 1), promoters, total - promoters - detractors, detractors


def _avg(total: int | None, count: int) -> float | None:
    return round(int(total or 0) / count, 2) if count else None


def _invitations(state: LoyaltyState, since: datetime | None, until: datetime | None) -> int:
    from ..models.message import Message

    query = select(func.count(Message.id)).where(Message.kind == "survey_invite", Message.sent_at.is_not(None))
    return int(state.session.execute(_window(query, Message.sent_at, since, until)).scalar_one())


def _bounds(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    return (resolve_now(since, field="since") if since is not None else None,
            resolve_now(until, field="until") if until is not None else None)


def comments(state: LoyaltyState, *, since: datetime | None = None, until: datetime | None = None,
             limit: int | None = 100) -> list[SurveyComment]:
    """Free-text answers, newest first, with their order, customer and scores."""
    since, until = _bounds(since, until)
    query = (select(SurveyAnswer.response_id, SurveyAnswer.question, SurveyAnswer.text,
                    SurveyResponse.answered_at, Purchase.order_ref, Customer.ref)
             .join(SurveyResponse, SurveyResponse.id == SurveyAnswer.response_id)
             .join(Purchase, Purchase.id == SurveyResponse.purchase_id)
             .join(Customer, Customer.id == SurveyResponse.customer_id)
             .where(SurveyAnswer.type == "text", SurveyAnswer.text.is_not(None))
             .order_by(SurveyResponse.answered_at.desc(), SurveyAnswer.id.desc()))
    query = _window(query, SurveyResponse.answered_at, since, until)
    if limit is not None:
        query = query.limit(limit)
    rows = state.session.execute(query).all()
    ids = {r[0] for r in rows}
    scores: dict[tuple[int, str], int | None] = {}
    if ids:
        for rid, qid, number in state.session.execute(
                select(SurveyAnswer.response_id, SurveyAnswer.question, SurveyAnswer.number)
                .where(SurveyAnswer.response_id.in_(ids), SurveyAnswer.question.in_(("recommend", "experience")))):
            scores[(rid, qid)] = number
    return [SurveyComment(order_ref=r[4], customer_ref=r[5], question=r[1], text=r[2], answered_at=r[3],
                          recommend=scores.get((r[0], "recommend")), experience=scores.get((r[0], "experience")))
            for r in rows]


def stats(state: LoyaltyState, *, since: datetime | None = None, until: datetime | None = None,
          comments_limit: int | None = 100) -> SurveyStats:
    """Survey figures for responses first answered in ``[since, until)``."""
    since, until = _bounds(since, until)
    session = state.session
    responses_q = _window(select(func.count(SurveyResponse.id), func.count(SurveyResponse.completed_at)),
                          SurveyResponse.answered_at, since, until)
    responses, completed = session.execute(responses_q).one()

    def per_answer(*columns: Any) -> Any:
        query = (select(*columns).join(SurveyResponse, SurveyResponse.id == SurveyAnswer.response_id))
        return _window(query, SurveyResponse.answered_at, since, until)

    counts: dict[int, int] = {}
    for value, n in session.execute(per_answer(SurveyAnswer.number, func.count())
                                    .where(SurveyAnswer.question == "recommend", SurveyAnswer.number.is_not(None))
                                    .group_by(SurveyAnswer.number)):
        counts[int(value)] = int(n)
    nps, promoters, passives, detractors = nps_of(counts)
    averages: dict[str, float | None] = {}
    for qid in ("experience", "ease"):
        total, n = session.execute(per_answer(func.sum(SurveyAnswer.number), func.count(SurveyAnswer.number))
                                   .where(SurveyAnswer.question == qid)).one()
        averages[qid] = _avg(total, int(n))
    source = survey_config(state).question("source")
    by_source: dict[str, int] = {c.value: 0 for c in source.choices} if source is not None else {}
    for value, n in session.execute(per_answer(SurveyAnswer.choice, func.count())
                                    .where(SurveyAnswer.question == "source", SurveyAnswer.choice.is_not(None))
                                    .group_by(SurveyAnswer.choice)):
        by_source[str(value)] = int(n)
    invitations = _invitations(state, since, until)
    return SurveyStats(
        responses=int(responses), completed=int(completed), nps=nps, promoters=promoters, passives=passives,
        detractors=detractors, experience_avg=averages["experience"], ease_avg=averages["ease"],
        by_source=by_source, invitations=invitations,
        response_rate=round(int(responses) / invitations, 4) if invitations else None,
        comments=comments(state, since=since, until=until, limit=comments_limit) if comments_limit != 0 else [])


def _bucket_start(day: date, period: str) -> date:
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_bucket(start: date, period: str) -> date:
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def series(state: LoyaltyState, *, period: str = "week", since: datetime | None = None,
           until: datetime | None = None) -> list[SurveyBucket]:
    """Figures per week (Monday first) or month in the shop's time zone, oldest first.

    Buckets without responses between the first and the last one (or
    ``since``/``until`` when given) are included with zero responses.
    """
    if period not in ("week", "month"):
        raise InvalidInput.field("period", "Must be 'week' or 'month'.")
    since, until = _bounds(since, until)
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    session = state.session
    first, last = since, until
    if first is None or last is None:
        low, high = session.execute(_window(
            select(func.min(SurveyResponse.answered_at), func.max(SurveyResponse.answered_at)),
            SurveyResponse.answered_at, since, until)).one()
        if low is None:
            if since is None or until is None:
                return []
        else:
            first = first or low
            last = last or high + timedelta(microseconds=1)
    assert first is not None and last is not None
    starts = [_bucket_start(local_date(first, zone), period)]
    end = _bucket_start(local_date(last - timedelta(microseconds=1), zone), period)
    while starts[-1] < end:
        starts.append(_next_bucket(starts[-1], period))
    # One grouped query per table: the bucket of each row is a CASE over the buckets' UTC bounds,
    # so the database does the counting on SQLite and PostgreSQL alike.
    bounds = [start_of_local_day(_next_bucket(start, period), zone) for start in starts[:-1]]
    bucket: Any = (case(*[(SurveyResponse.answered_at < b, i) for i, b in enumerate(bounds)],
                        else_=len(bounds)) if bounds else literal(0))
    responses = {int(k): int(n) for k, n in session.execute(_window(
        select(bucket, func.count(SurveyResponse.id)).group_by(bucket),
        SurveyResponse.answered_at, since, until))}
    numbers: dict[int, dict[str, dict[int, int]]] = {}
    query = (select(bucket, SurveyAnswer.question, SurveyAnswer.number, func.count())
             .join(SurveyResponse, SurveyResponse.id == SurveyAnswer.response_id)
             .where(SurveyAnswer.question.in_(("recommend", "experience", "ease")),
                    SurveyAnswer.type == "scale", SurveyAnswer.number.is_not(None))
             .group_by(bucket, SurveyAnswer.question, SurveyAnswer.number))
    for k, qid, number, n in session.execute(_window(query, SurveyResponse.answered_at, since, until)):
        numbers.setdefault(int(k), {}).setdefault(qid, {})[int(number)] = int(n)

    def average(counts: dict[int, int]) -> float | None:
        return _avg(sum(v * n for v, n in counts.items()), sum(counts.values()))

    result = []
    for i, start in enumerate(starts):
        got = numbers.get(i, {})
        result.append(SurveyBucket(start=start, responses=responses.get(i, 0),
                                   nps=nps_of(got.get("recommend", {}))[0],
                                   experience_avg=average(got.get("experience", {})),
                                   ease_avg=average(got.get("ease", {}))))
    return result


def bucket_bounds(start: date, period: str, state: LoyaltyState | None = None) -> tuple[datetime, datetime]:
    """The ``[since, until)`` instants (UTC) of a series bucket."""
    state = state or get_state()
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    return start_of_local_day(start, zone), start_of_local_day(_next_bucket(start, period), zone)


# --- the facade -----------------------------------------------------------------------------

class Surveys(Facade):
    """``loyalty.surveys``: the post-purchase survey, its answers and figures."""

    def questions(self) -> tuple[Question, ...]:
        """The app's validated question set."""
        return survey_config(self._state).questions

    def answer(self, order_ref: str, answers: Mapping[str, Any], *, partial: bool = False,
               channel: str = "python", now: datetime | None = None, commit: bool = True) -> AnswerResult:
        """Store answers about ``order_ref`` (see :func:`flask_loyalty.services.surveys.answer`)."""
        return answer(self._state, order_ref, answers, partial=partial, channel=channel, now=now, commit=commit)

    def response(self, order_ref: str) -> SurveyResponse | None:
        """The order's response (partial or completed), or ``None``."""
        return self._state.session.execute(
            select(SurveyResponse).join(Purchase, Purchase.id == SurveyResponse.purchase_id)
            .where(Purchase.order_ref == order_ref)).scalar_one_or_none()

    def stats(self, *, since: datetime | None = None, until: datetime | None = None,
              comments_limit: int | None = 100) -> SurveyStats:
        """Responses, NPS, averages, sources, response rate and comments in ``[since, until)``."""
        return stats(self._state, since=since, until=until, comments_limit=comments_limit)

    def series(self, *, period: str = "week", since: datetime | None = None,
               until: datetime | None = None) -> list[SurveyBucket]:
        """Weekly or monthly figures for the dashboard (shop time zone)."""
        return series(self._state, period=period, since=since, until=until)

    def comments(self, *, since: datetime | None = None, until: datetime | None = None,
                 limit: int | None = 100) -> list[SurveyComment]:
        """Free-text answers with order and customer, newest first."""
        return comments(self._state, since=since, until=until, limit=limit)


__all__ = [
    "MSG_REQUIRED",
    "AnswerResult",
    "SurveyBucket",
    "SurveyComment",
    "SurveyStats",
    "Surveys",
    "answer",
    "comments",
    "coupon_text",
    "display_answers",
    "display_value",
    "is_alarming",
    "label_text",
    "series",
    "setup",
    "stats",
]
