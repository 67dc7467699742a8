"""Named customer segments: JSON rules over the profile table, evaluated in SQL.

A rule is a JSON object mapping a profile field to a condition; every
condition must hold::

    {"frequency": {">=": 3}, "recency_days": {"<=": 90},
     "segment": {"in": ["champions", "loyal"]}}

A condition is an object of operator -> value (several operators on one
field all apply) or a bare value meaning ``==``.  Operators: ``==``, ``!=``,
``<``, ``<=``, ``>``, ``>=``, ``in``; ordering operators only on numbers and
money.  Rules are compiled into SQLAlchemy expressions over
``loyalty_customer_profile`` (never ``eval``); an unknown field or operator,
or a value of the wrong type, raises :class:`InvalidInput`.  A missing value
(e.g. no survey answer) never satisfies ``==``, ``<`` ... but does satisfy
``!=``.

Membership is as of the latest ``loyalty.analytics.recompute()``.
Built-in segments (:data:`BUILTIN_RULES`) are rules too: one per RFM
segment, one per loyalty stage, and ``top_30_clv``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, fields, validate
from sqlalchemy import BigInteger, ColumnElement, SmallInteger, and_, exists, select, true
from sqlalchemy.sql.elements import ColumnElement as ColumnElementT

from ..clock import utcnow
from ..errors import InvalidInput, NotFound
from ..models import Customer, CustomerProfile, Segment
from ..models.base import table_of
from ..money import parse_amount
from ..schemas import load
from ..state import LoyaltyState
from ..transaction import begin_write, finish, insert_ignore
from .base import Facade

if TYPE_CHECKING:
    from ..models import Customer as CustomerModel

#: Field -> kind: ``int``, ``float``, ``money``, ``str`` or ``bool``.
FIELDS: dict[str, str] = {
    "recency_days": "int", "frequency": "int", "monetary": "money",
    "r_score": "int", "f_score": "int", "m_score": "int", "rfm": "str", "segment": "str",
    "avg_interval_days": "float", "repeat_purchases": "int", "tenure_days": "int",
    "orders_online": "int", "orders_store": "int", "orders_catalog": "int", "orders_phone": "int",
    "main_channel": "str", "opens": "int", "clicks": "int", "reading_hour": "int",
    "survey_recommend": "int", "survey_experience": "int", "consent": "bool", "loyal_indicator": "bool",
    "refunds": "money", "discounts": "money", "margin": "money", "historical_clv": "money",
    "predicted_clv": "money", "total_clv": "money", "clv_top_share": "float", "p_alive": "float",
    "expected_purchases": "float", "expected_order_value": "money", "clv_method": "str", "stage": "str",
}
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in")
_ORDERED = ("int", "float", "money")
_MAX_IN = 1000


def _builtin_rules() -> dict[str, dict[str, Any]]:
    from .analytics import RFM_SEGMENTS, STAGES

    rules: dict[str, dict[str, Any]] = {name: {"segment": {"==": name}} for name in RFM_SEGMENTS}
    rules.update({name: {"stage": {"==": name}} for name in STAGES})
    rules["top_30_clv"] = {"frequency": {">": 0}, "clv_top_share": {"<": 0.3}}
    return rules


#: Built-in segments: every RFM segment, every loyalty stage, and the top 30% of buyers by lifetime value.
BUILTIN_RULES: dict[str, dict[str, Any]] = _builtin_rules()


@dataclass(frozen=True)
class SegmentInfo:
    """A segment as listed: its name, rule and whether it is built in."""

    name: str
    rule: dict[str, Any]
    builtin: bool


class _DefineSchema(Schema):
    name = fields.String(required=True, validate=validate.Regexp(
        r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        error="1-64 letters, digits, '_', '.' or '-', starting with a letter or digit."))
    rule = fields.Dict(required=True)


def _bad(field: str, message: str) -> InvalidInput:
    return InvalidInput({"rule": {field: [message]}})


def _value(field: str, kind: str, value: Any) -> Any:
    """Check and normalise one operand; returns the JSON-storable form."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(field, "Expected true or false.")
        return value
    if kind == "str":
        if not isinstance(value, str) or len(value) > 200:
            raise _bad(field, "Expected a text value.")
        return value
    if isinstance(value, bool):
        raise _bad(field, "Expected a number.")
    if kind == "money":
        if isinstance(value, float):
            value = str(value)
        try:
            return str(parse_amount(value, field=field, allow_negative=True))
        except InvalidInput:
            raise _bad(field, "Expected an amount.") from None
    if isinstance(value, Decimal):  # not JSON-storable: a whole number on an int field becomes an int, else a float
        if not value.is_finite():
            raise _bad(field, "Expected a number.")
        if kind == "int" and value == value.to_integral_value():
            low, high = _int_range(field)
            if not low <= value <= high:    # compared as Decimal: int() of a huge exponent is costly
                raise _bad(field, f"Expected a whole number from {low} to {high}.")
            return int(value)
        value = float(value)
    if kind == "int" and isinstance(value, int):
        low, high = _int_range(field)
        if not low <= value <= high:
            raise _bad(field, f"Expected a whole number from {low} to {high}.")
        return value
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:   # an int beyond float range
            raise _bad(field, "Number out of range.") from None
        if math.isfinite(number):
            return number if kind == "float" else value
    raise _bad(field, "Expected a number.")


def _int_range(field: str) -> tuple[int, int]:
    """The values the profile column of an ``int`` field holds (a wider operand cannot be bound)."""
    column_type = table_of(CustomerProfile).c[field].type
    bits = 16 if isinstance(column_type, SmallInteger) else 64 if isinstance(column_type, BigInteger) else 32
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def normalise_rule(rule: Any) -> dict[str, dict[str, Any]]:
    """Validate a rule and return its canonical JSON-storable form (``InvalidInput`` otherwise)."""
    if not isinstance(rule, Mapping):
        raise InvalidInput.field("rule", "A rule is a JSON object of field -> condition.")
    result: dict[str, dict[str, Any]] = {}
    for field, condition in rule.items():
        if not isinstance(field, str) or field not in FIELDS:
            raise _bad(str(field), f"Unknown field. Known fields: {', '.join(sorted(FIELDS))}.")
        kind = FIELDS[field]
        if not isinstance(condition, Mapping):
            condition = {"==": condition}
        if not condition:
            raise _bad(field, "A condition needs at least one operator.")
        clean: dict[str, Any] = {}
        for op, operand in condition.items():
            if op not in OPERATORS:
                raise _bad(field, f"Unknown operator {op!r}. Operators: {', '.join(OPERATORS)}.")
            if op in ("<", "<=", ">", ">=") and kind not in _ORDERED:
                raise _bad(field, f"Operator {op!r} needs a numeric field.")
            if op == "in":
                if not isinstance(operand, (list, tuple)) or not operand or len(operand) > _MAX_IN:
                    raise _bad(field, f"'in' needs a list of 1 to {_MAX_IN} values.")
                clean[op] = [_value(field, kind, item) for item in operand]
            else:
                clean[op] = _value(field, kind, operand)
        result[field] = clean
    json.dumps(result)
    return result


def _operand(kind: str, value: Any) -> Any:
    return Decimal(value) if kind == "money" else value


def compile_rule(rule: Mapping[str, Any]) -> ColumnElementT[bool]:
    """A SQL condition over :class:`CustomerProfile` for a (validated) rule."""
    clean = normalise_rule(rule)
    parts: list[ColumnElement[bool]] = []
    for field, condition in clean.items():
        column = getattr(CustomerProfile, field)
        kind = FIELDS[field]
        for op, operand in condition.items():
            if op == "in":
                parts.append(column.in_([_operand(kind, v) for v in operand]))
                continue
            value = _operand(kind, operand)
            if op == "==":
                parts.append(column == value)
            elif op == "!=":
                parts.append(column.is_distinct_from(value))
            elif op == "<":
                parts.append(column < value)
            elif op == "<=":
                parts.append(column <= value)
            elif op == ">":
                parts.append(column > value)
            else:
                parts.append(column >= value)
    return and_(true(), *parts)


def rule_of(state: LoyaltyState, name: str) -> dict[str, Any] | None:
    """The rule of a built-in or stored segment, or ``None`` when there is no such segment."""
    if not isinstance(name, str):
        return None
    if name in BUILTIN_RULES:
        return BUILTIN_RULES[name]
    stored = state.session.execute(select(Segment.rule).where(Segment.name == name)).scalar_one_or_none()
    return dict(stored) if stored is not None else None


def define(state: LoyaltyState, name: str, rule: Any, *, commit: bool = True) -> Segment:
    """See :meth:`Segments.define`."""
    data = load(_DefineSchema(), {"name": name, "rule": rule})
    if data["name"] in BUILTIN_RULES:
        raise InvalidInput.field("name", "This name belongs to a built-in segment.")
    clean = normalise_rule(data["rule"])
    begin_write(state)
    table = table_of(Segment)
    moment = utcnow()
    if not insert_ignore(state, table, {"name": data["name"], "rule": clean, "created_at": moment,
                                        "updated_at": moment}, ["name"]):
        state.session.execute(table.update().where(table.c.name == data["name"])
                              .values(rule=clean, updated_at=moment))
    segment = state.session.execute(select(Segment).where(Segment.name == data["name"])).scalar_one()
    state.session.refresh(segment)
    finish(state, commit=commit)
    return segment


def members(state: LoyaltyState, name: str) -> list[str]:
    """See :meth:`Segments.members`."""
    rule = rule_of(state, name)
    if rule is None:
        raise NotFound(f"unknown segment {name!r}")
    query = (select(Customer.ref).join(CustomerProfile, CustomerProfile.customer_id == Customer.id)
             .where(compile_rule(rule)).order_by(Customer.ref))
    return list(state.session.execute(query).scalars())


def is_member(state: LoyaltyState, name: str, customer: CustomerModel | None) -> bool:
    """Whether ``customer`` is in segment ``name`` as of the last recompute (unknown segment: no)."""
    if customer is None:
        return False
    rule = rule_of(state, name)
    if rule is None:
        return False
    query = select(exists().where(CustomerProfile.customer_id == customer.id, compile_rule(rule)))
    return bool(state.session.execute(query).scalar())


def listing(state: LoyaltyState) -> list[SegmentInfo]:
    """Every segment: built-in ones first, then the shop's, by name."""
    found = [SegmentInfo(name, rule, True) for name, rule in BUILTIN_RULES.items()]
    stored = state.session.execute(select(Segment).order_by(Segment.name)).scalars()
    found += [SegmentInfo(s.name, dict(s.rule), False) for s in stored]
    return found


class Segments(Facade):
    """Named customer segments defined by JSON rules over the customer profiles."""

    def define(self, name: str, rule: Mapping[str, Any], *, commit: bool = True) -> Segment:
        """Create segment ``name`` or replace its rule; ``InvalidInput`` for a bad name or rule."""
        return define(self._state, name, rule, commit=commit)

    def members(self, name: str) -> list[str]:
        """References of the customers in segment ``name`` (sorted); ``NotFound`` for an unknown name."""
        return members(self._state, name)

    def is_member(self, name: str, customer_ref: str) -> bool:
        """Whether the customer is in segment ``name`` as of the last recompute."""
        customer = self._state.session.execute(
            select(Customer).where(Customer.ref == customer_ref)).scalar_one_or_none()
        return is_member(self._state, name, customer)

    def list(self) -> list[SegmentInfo]:
        """Every segment with its rule: built-in ones first, then the shop's."""
        return listing(self._state)

    def rule(self, name: str) -> dict[str, Any]:
        """The rule of segment ``name``; ``NotFound`` for an unknown name."""
        found = rule_of(self._state, name)
        if found is None:
            raise NotFound(f"unknown segment {name!r}")
        return found


def _segment_exists(state: LoyaltyState, *, name: str, **_: Any) -> bool:
    return rule_of(state, name) is not None


def _segment_member(state: LoyaltyState, *, name: str, customer: CustomerModel | None = None, **_: Any) -> bool:
    return is_member(state, name, customer)


def register_hooks(state: LoyaltyState) -> None:
    """Register the ``segment_exists`` and ``segment_member`` hooks the coupons use."""
    state.add_hook("segment_exists", _segment_exists)  # type: ignore[arg-type]  # predicate hooks
    state.add_hook("segment_member", _segment_member)  # type: ignore[arg-type]


__all__ = ["BUILTIN_RULES", "FIELDS", "OPERATORS", "SegmentInfo", "Segments", "compile_rule", "normalise_rule",
           "register_hooks"]
