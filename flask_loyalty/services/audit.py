"""The dashboard's audit trail: record admin actions, list them, export and scrub them per customer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update

from ..clock import resolve_now
from ..models import AdminAuditEntry, Customer
from ..state import LoyaltyState
from ..transaction import finish

#: Longest stored ``who`` / ``target``.
FIELD_MAX = 200


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def record(state: LoyaltyState, *, who: str, action: str, target: str | None = None,
           details: Mapping[str, Any] | None = None, now: datetime | None = None,
           commit: bool = True) -> AdminAuditEntry:
    """Append one audit entry (``details`` is stored as JSON; Decimals and dates become strings)."""
    entry = AdminAuditEntry(at=resolve_now(now), who=(who or "unknown")[:FIELD_MAX], action=action[:64],
                            target=None if target is None else str(target)[:FIELD_MAX],
                            details=_json_safe(dict(details or {})))
    state.session.add(entry)
    finish(state, commit=commit)
    return entry


def entries(state: LoyaltyState, *, target: str | None = None, action: str | None = None,
            limit: int = 50, offset: int = 0, before: int | None = None) -> tuple[list[AdminAuditEntry], int]:
    """The newest entries first (optionally for one target or action) and how many there are in all.

    Newest means last recorded: entries come in descending id order, the
    order of :attr:`AdminAuditEntry.id`, which is also the keyset of the
    pages: ``before`` gives the entries recorded before the entry with that
    id.  (Their times need not be in the same order: an action is stamped
    when it starts and recorded when it commits.)
    """
    query = select(AdminAuditEntry)
    if before is not None:
        query = query.where(AdminAuditEntry.id < before)
    counter = select(func.count(AdminAuditEntry.id))
    if target:
        query = query.where(AdminAuditEntry.target == target)
        counter = counter.where(AdminAuditEntry.target == target)
    if action:
        query = query.where(AdminAuditEntry.action == action)
        counter = counter.where(AdminAuditEntry.action == action)
    rows = list(state.session.execute(
        query.order_by(AdminAuditEntry.id.desc()).limit(limit).offset(offset)
    ).scalars())
    return rows, int(state.session.execute(counter).scalar_one())


def about_customer(ref: str) -> ColumnElement[bool]:
    """The entries about the customer ``ref``: their reference is the target, or it is in the details.

    An action on something else can be about a customer: a gift card or a
    coupon issued to them (``details.customer_ref``), a coupon export
    filtered by them (``details.filters.customer``).
    """
    details = AdminAuditEntry.details
    return or_(AdminAuditEntry.target == ref,
               details["customer_ref"].as_string() == ref,
               details[("filters", "customer")].as_string() == ref)


def _export_hook(state: LoyaltyState, *, customer: Customer, data: dict[str, Any]) -> None:
    rows = state.session.execute(select(AdminAuditEntry).where(about_customer(customer.ref))
                                 .order_by(AdminAuditEntry.id.desc()).limit(10_000)).scalars()
    data["admin_audit"] = [{"at": e.at.isoformat(), "who": e.who, "action": e.action, "target": e.target,
                            "details": e.details} for e in rows]


def _erase_hook(state: LoyaltyState, *, customer: Customer) -> None:
    """Keep the fact that actions happened (accountability) but drop their details about the person.

    Every entry about them (:func:`about_customer`) loses its details,
    including those whose target is a gift card or coupon issued to them.
    """
    state.session.execute(update(AdminAuditEntry).where(about_customer(customer.ref))
                          .values(details={"erased": True}).execution_options(synchronize_session=False))


def setup(state: LoyaltyState) -> None:
    """Register the audit trail's ``export`` and ``erase`` hooks."""
    state.add_hook("export", _export_hook)
    state.add_hook("erase", _erase_hook)
