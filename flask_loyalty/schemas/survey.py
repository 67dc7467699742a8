"""The survey's question set and the marshmallow schema of its answers.

A question set is a tuple of :class:`Question`.  The default set asks where
the shopper found the shop (``source``), how the purchase went
(``experience``, 1–5), whether buying was simple (``ease``, 1–5, 5 = very
simple), whether they would recommend the shop (``recommend``, 0–10, the NPS
question) and leaves room for a ``comment``.  Hosts replace or extend it with
``LOYALTY_SURVEY_QUESTIONS`` / ``LOYALTY_SURVEY_EXTRA_QUESTIONS``; both are
validated here when the extension is registered.

The schema of the answers is built from the question set, so the page, the
JSON endpoint and the Python call share one set of rules.  Its error messages
are English msgids marked with :func:`~flask_loyalty.i18n.N_`: pages translate
them with ``_()`` before showing them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..errors import InvalidInput
from ..i18n import N_
from .fields import Ref

#: The question types a host may use.
QUESTION_TYPES = ("choice", "scale", "text", "yes_no")

#: Where an answer came from: the survey page, the one-click mail link, the JSON API, a Python call.
CHANNELS = ("page", "mail", "api", "python")

#: Error messages (msgids; pages translate them).
MSG_REQUIRED = N_("Please answer this question.")
MSG_SCALE = N_("Please choose one of the numbers shown.")
MSG_CHOICE = N_("Please choose one of the options shown.")
MSG_TOO_LONG = N_("This answer is too long.")
MSG_NOT_TEXT = N_("Please write your answer as text.")
MSG_EMPTY = N_("Please answer at least one question.")

_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_YES = frozenset({"yes", "y", "true", "1", "on"})
_NO = frozenset({"no", "n", "false", "0", "off"})
TEXT_MAX_DEFAULT = 2000
TEXT_MAX_LIMIT = 10000

#: Question ids with a meaning for the statistics, and the type each must have.
METRIC_TYPES = {"source": "choice", "experience": "scale", "ease": "scale", "recommend": "scale"}

Label = str | Mapping[str, str]


@dataclass(frozen=True)
class Choice:
    """One option of a ``choice`` question: the stored ``value`` and its label."""

    value: str
    label: Label


@dataclass(frozen=True)
class Question:
    """One survey question.

    ``label``/``hint``/``min_label``/``max_label`` are either English msgids
    (translated with the package's catalogs, or the host's own) or a mapping
    of locale -> text.
    """

    id: str
    type: str
    label: Label
    required: bool = False
    hint: Label | None = None
    choices: tuple[Choice, ...] = ()
    min: int = 0
    max: int = 0
    min_label: Label | None = None
    max_label: Label | None = None
    max_length: int = TEXT_MAX_DEFAULT
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def values(self) -> tuple[int, ...]:
        """The numbers a ``scale`` question offers."""
        return tuple(range(self.min, self.max + 1))

    def choice_label(self, value: str) -> Label | None:
        """The label of a choice value (``None`` for a value the set no longer has)."""
        for choice in self.choices:
            if choice.value == value:
                return choice.label
        return None


DEFAULT_QUESTIONS: tuple[Question, ...] = (
    Question(
        id="source", type="choice", label=N_("How did you find us?"),
        choices=(
            Choice("search_engine", N_("Search engine")),
            Choice("social_network", N_("Social network")),
            Choice("friend_family", N_("A friend or family member")),
            Choice("newsletter", N_("Newsletter")),
            Choice("advert", N_("An advert")),
            Choice("other", N_("Other")),
        )),
    Question(
        id="experience", type="scale", label=N_("How would you describe your purchase experience?"),
        min=1, max=5, min_label=N_("Very poor"), max_label=N_("Excellent")),
    Question(
        id="ease", type="scale", label=N_("Was buying from us simple or confusing?"),
        min=1, max=5, min_label=N_("Very confusing"), max_label=N_("Very simple")),
    Question(
        id="recommend", type="scale", required=True,
        label=N_("How likely are you to recommend us to a friend or colleague?"),
        min=0, max=10, min_label=N_("Not at all likely"), max_label=N_("Extremely likely")),
    Question(
        id="comment", type="text", label=N_("Anything you would like to tell us?"),
        hint=N_("Optional. We read every comment."), max_length=TEXT_MAX_DEFAULT),
)
DEFAULTS_BY_ID = {q.id: q for q in DEFAULT_QUESTIONS}


# --- validation of the host's configuration ---------------------------------

def _check_label(value: object, where: str, errors: dict[str, list[str]], *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, str):
        if not value.strip():
            errors.setdefault(where, []).append("Must not be empty.")
        return
    if isinstance(value, Mapping) and value:
        for key, text in value.items():
            if not isinstance(key, str) or not isinstance(text, str) or not text.strip():
                errors.setdefault(where, []).append("A mapping of locale -> non-empty text is expected.")
                return
        return
    errors.setdefault(where, []).append("A text or a mapping of locale -> text is expected.")


_KEYS = {
    "choice": {"id", "type", "label", "required", "hint", "choices"},
    "scale": {"id", "type", "label", "required", "hint", "min", "max", "min_label", "max_label"},
    "text": {"id", "type", "label", "required", "hint", "max_length"},
    "yes_no": {"id", "type", "label", "required", "hint"},
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _question_from_config(raw: object, where: str, errors: dict[str, list[str]]) -> Question | None:
    if isinstance(raw, str):
        if raw not in DEFAULTS_BY_ID:
            errors.setdefault(where, []).append(
                f"{raw!r} is not a default question (known: {', '.join(DEFAULTS_BY_ID)}).")
            return None
        return DEFAULTS_BY_ID[raw]
    if isinstance(raw, Question):
        return raw
    if not isinstance(raw, Mapping):
        errors.setdefault(where, []).append("A question is a dict (or the id of a default question).")
        return None
    qid, qtype = raw.get("id"), raw.get("type")
    if not isinstance(qid, str) or not _ID_RE.match(qid):
        errors.setdefault(f"{where}.id", []).append(
            "Required: lower-case letters, digits and '_', starting with a letter, at most 32 characters.")
    if qtype not in QUESTION_TYPES:
        errors.setdefault(f"{where}.type", []).append(f"Must be one of: {', '.join(QUESTION_TYPES)}.")
        return None
    unknown = sorted(set(raw) - _KEYS[qtype])
    if unknown:
        errors.setdefault(where, []).append(f"Unknown keys for a {qtype} question: {', '.join(unknown)}.")
    _check_label(raw.get("label"), f"{where}.label", errors)
    _check_label(raw.get("hint"), f"{where}.hint", errors, optional=True)
    required = raw.get("required", False)
    if not isinstance(required, bool):
        errors.setdefault(f"{where}.required", []).append("Must be true or false.")
    kwargs: dict[str, Any] = {}
    if qtype == "choice":
        choices: list[Choice] = []
        raw_choices = raw.get("choices")
        if not isinstance(raw_choices, Sequence) or isinstance(raw_choices, str) or len(raw_choices) < 2:
            errors.setdefault(f"{where}.choices", []).append("At least two choices are needed.")
            raw_choices = []
        for i, item in enumerate(raw_choices):
            here = f"{where}.choices[{i}]"
            if isinstance(item, str):
                item = {"value": item, "label": item}
            if not isinstance(item, Mapping) or set(item) - {"value", "label"}:
                errors.setdefault(here, []).append("A choice is a string or a dict with 'value' and 'label'.")
                continue
            value = item.get("value")
            if not isinstance(value, str) or not _VALUE_RE.match(value):
                errors.setdefault(here, []).append(
                    "'value' must be 1-64 letters, digits, '_', '.' or '-'.")
                continue
            _check_label(item.get("label", value), f"{here}.label", errors)
            choices.append(Choice(value, item.get("label", value)))
        if len({c.value for c in choices}) != len(choices):
            errors.setdefault(f"{where}.choices", []).append("Choice values must be unique.")
        kwargs["choices"] = tuple(choices)
    elif qtype == "scale":
        low, high = raw.get("min", 1), raw.get("max", 5)
        if not (_is_int(low) and _is_int(high) and 0 <= low < high <= 10):
            errors.setdefault(f"{where}.min", []).append("'min' and 'max' must be integers with 0 <= min < max <= 10.")
            low, high = 1, 5
        _check_label(raw.get("min_label"), f"{where}.min_label", errors, optional=True)
        _check_label(raw.get("max_label"), f"{where}.max_label", errors, optional=True)
        kwargs.update(min=low, max=high, min_label=raw.get("min_label"), max_label=raw.get("max_label"))
    elif qtype == "text":
        length = raw.get("max_length", TEXT_MAX_DEFAULT)
        if not _is_int(length) or not 1 <= length <= TEXT_MAX_LIMIT:
            errors.setdefault(f"{where}.max_length", []).append(f"Must be an integer from 1 to {TEXT_MAX_LIMIT}.")
            length = TEXT_MAX_DEFAULT
        kwargs["max_length"] = length
    if not isinstance(qid, str) or qtype not in QUESTION_TYPES:
        return None
    return Question(id=qid, type=qtype, label=raw.get("label", qid), required=required is True,
                    hint=raw.get("hint"), **kwargs)


def build_questions(questions: object = None, extra: object = ()) -> tuple[Question, ...]:
    """Validate ``LOYALTY_SURVEY_QUESTIONS`` (+ ``..._EXTRA_QUESTIONS``) into a question set.

    ``questions=None`` means the default set.  A list replaces it; its items
    are question dicts or the ids of default questions (``"recommend"``), so
    ``["source", "recommend", {...}]`` keeps two defaults and adds one.
    ``extra`` is appended.  Raises :class:`InvalidInput` naming each problem.
    """
    errors: dict[str, list[str]] = {}
    items: list[tuple[str, object]] = []
    if questions is None:
        items += [(f"LOYALTY_SURVEY_QUESTIONS[{i}]", q) for i, q in enumerate(DEFAULT_QUESTIONS)]
    elif isinstance(questions, Sequence) and not isinstance(questions, (str, bytes)):
        items += [(f"LOYALTY_SURVEY_QUESTIONS[{i}]", q) for i, q in enumerate(questions)]
    else:
        errors["LOYALTY_SURVEY_QUESTIONS"] = ["Must be None (the default set) or a list of questions."]
    if extra is None:
        extra = ()
    if isinstance(extra, Sequence) and not isinstance(extra, (str, bytes)):
        items += [(f"LOYALTY_SURVEY_EXTRA_QUESTIONS[{i}]", q) for i, q in enumerate(extra)]
    else:
        errors["LOYALTY_SURVEY_EXTRA_QUESTIONS"] = ["Must be a list of questions."]
    result: list[Question] = []
    for where, raw in items:
        question = _question_from_config(raw, where, errors)
        if question is None:
            continue
        if any(q.id == question.id for q in result):
            errors.setdefault(where, []).append(f"Duplicate question id {question.id!r}.")
            continue
        wanted = METRIC_TYPES.get(question.id)
        if wanted and question.type != wanted:
            errors.setdefault(where, []).append(
                f"Question {question.id!r} feeds the survey statistics and must be a {wanted} question.")
        if question.id == "recommend" and (question.min, question.max) != (0, 10):
            errors.setdefault(where, []).append("Question 'recommend' is the NPS question: its scale must be 0 to 10.")
        result.append(question)
    if not result and not errors:
        errors["LOYALTY_SURVEY_QUESTIONS"] = ["The survey needs at least one question."]
    if errors:
        raise InvalidInput(errors, "invalid survey configuration: " + "; ".join(
            f"{k}: {' '.join(v)}" for k, v in errors.items()))
    return tuple(result)


# --- answers ------------------------------------------------------------------

_CONTROL = {c for c in map(chr, range(32)) if c not in "\n\t"} | {"\x7f"}


def clean_text(value: str) -> str:
    """Normalise a free-text answer: NFC, CR LF -> LF, control characters dropped, stripped."""
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n"))
    return "".join(ch for ch in text if ch not in _CONTROL).strip()


#: More digits than any scale answer needs (scales are within 0..10).
_SCALE_DIGITS = 3


class ScaleAnswer(fields.Field):  # type: ignore[type-arg]
    """An integer on the question's scale (an int, or a string of digits from a form)."""

    def __init__(self, question: Question, **kwargs: Any) -> None:
        self.question = question
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        number: int | None = None
        if _is_int(value):
            number = value
        elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            # scales end at 10 at most: a longer number is off the scale (and int() of thousands
            # of digits raises ValueError)
            digits = value.strip().lstrip("0") or "0"
            if len(digits) <= _SCALE_DIGITS:
                number = int(digits)
        if number is None or not self.question.min <= number <= self.question.max:
            raise ValidationError(MSG_SCALE)
        return number


class ChoiceAnswer(fields.Field):  # type: ignore[type-arg]
    """One of the question's choice values."""

    def __init__(self, question: Question, **kwargs: Any) -> None:
        self.question = question
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str) or value not in {c.value for c in self.question.choices}:
            raise ValidationError(MSG_CHOICE)
        return value


class YesNoAnswer(fields.Field):  # type: ignore[type-arg]
    """``True``/``False`` (JSON booleans, or ``yes``/``no`` from a form)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _YES:
            return True
        if isinstance(value, str) and value.strip().lower() in _NO:
            return False
        raise ValidationError(MSG_CHOICE)


class TextAnswer(fields.Field):  # type: ignore[type-arg]
    """Free text, cleaned (see :func:`clean_text`), at most ``max_length`` characters."""

    def __init__(self, question: Question, **kwargs: Any) -> None:
        self.question = question
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(MSG_NOT_TEXT)
        text = clean_text(value)
        if len(text) > self.question.max_length:
            raise ValidationError(MSG_TOO_LONG)
        return text


def _field_for(question: Question) -> fields.Field:  # type: ignore[type-arg]
    messages: dict[str, str | list[Any] | dict[Any, Any]] = {"null": MSG_REQUIRED, "required": MSG_REQUIRED}
    if question.type == "scale":
        return ScaleAnswer(question, error_messages=messages)
    if question.type == "choice":
        return ChoiceAnswer(question, error_messages=messages)
    if question.type == "yes_no":
        return YesNoAnswer(error_messages=messages)
    return TextAnswer(question, error_messages=messages)


class _AnswersBase(Schema):
    class Meta:
        unknown = RAISE

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not any(v not in (None, "") for v in data.values()):
            raise ValidationError(MSG_EMPTY, "_schema")


def answers_schema(questions: Sequence[Question]) -> Schema:
    """A schema accepting ``{question_id: answer}`` for ``questions``.

    Every question is optional here (the survey service checks ``required``
    against the stored and the new answers together, so a one-click answer
    plus the rest of the form counts); at least one answer is needed.  An
    empty text answer counts as not answered.
    """
    declared = {q.id: _field_for(q) for q in questions}
    cls = _AnswersBase.from_dict(declared, name="SurveyAnswersSchema")
    return cls()


def missing_required(questions: Sequence[Question], answers: Mapping[str, Any]) -> dict[str, list[str]]:
    """Field errors for the required questions that ``answers`` leaves unanswered."""
    def unanswered(value: Any) -> bool:
        return value is None or (isinstance(value, str) and not value.strip())

    return {q.id: [MSG_REQUIRED] for q in questions if q.required and unanswered(answers.get(q.id))}


class SurveyCallSchema(Schema):
    """Arguments of ``surveys.answer`` besides the answers themselves."""

    class Meta:
        unknown = RAISE

    order_ref = Ref(required=True)
    partial_ = fields.Boolean(data_key="partial", required=True, truthy={True}, falsy={False})
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))


class ApiBodySchema(Schema):
    """The JSON body of ``POST <prefix>/api/surveys/<token>``."""

    class Meta:
        unknown = RAISE

    answers = fields.Dict(keys=fields.String(), required=True)
    partial_ = fields.Boolean(data_key="partial", load_default=False, truthy={True}, falsy={False})


__all__ = [
    "CHANNELS",
    "DEFAULT_QUESTIONS",
    "METRIC_TYPES",
    "QUESTION_TYPES",
    "ApiBodySchema",
    "Choice",
    "Question",
    "SurveyCallSchema",
    "answers_schema",
    "build_questions",
    "clean_text",
    "missing_required",
]
