"""Engagement tracking of marketing mails: opens (pixel) and clicks (signed redirects).

A click link carries only the message id and the index of the link in that
message (signed, purpose ``track``), so it can only lead to a URL the
message itself contained: there is no open redirect.  Opens and clicks are
stored in ``loyalty_engagement`` with the shop-local hour, per customer.

``LOYALTY_TRACKING``: ``True`` (record), ``False`` (mails carry no tracking
and nothing is recorded) or ``"consent"`` (record only for customers who
gave the ``personalization`` consent).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select

from ..clock import resolve_now
from ..errors import NotFound
from ..models import Engagement, Message
from ..models.base import table_of
from ..state import LoyaltyState
from ..transaction import begin_write, finish
from .outbox import local_hour


def _may_record(state: LoyaltyState, message: Message) -> bool:
    setting = state.config.get("LOYALTY_TRACKING")
    if not setting or message.customer.erased_at is not None:
        return False
    if setting == "consent":
        return bool(state.extension.consent.has(message.customer.ref, "personalization"))
    return True


def _record(state: LoyaltyState, message: Message, event: str, now: datetime, url: str | None = None) -> None:
    state.session.execute(insert(table_of(Engagement)).values(
        customer_id=message.customer_id, message_id=message.id, kind=message.kind, event=event, at=now,
        hour=local_hour(state, now), url=url))


def _opened(state: LoyaltyState, message_pk: int) -> bool:
    return state.session.execute(select(Engagement.id).where(
        Engagement.message_id == message_pk, Engagement.event == "open").limit(1)).first() is not None


def record_open(state: LoyaltyState, message_pk: int, *, now: datetime | None = None) -> bool:
    """Record the first open of a message; returns whether something was recorded. Commits."""
    moment = resolve_now(now)
    begin_write(state)
    message = state.session.get(Message, message_pk)
    if message is None or not _may_record(state, message) or _opened(state, message_pk):
        state.session.rollback()
        return False
    _record(state, message, "open", moment)
    finish(state, commit=True)
    return True


def click_target(state: LoyaltyState, message_pk: int, index: int, *, now: datetime | None = None) -> str:
    """The URL behind link ``index`` of a message, recording the click (and an open). Commits.

    Raises :class:`NotFound` for an unknown message or link (erased mails keep no links).
    """
    moment = resolve_now(now)
    begin_write(state)
    message = state.session.get(Message, message_pk)
    links = (message.links or []) if message is not None else []
    if message is None or not 0 <= index < len(links):
        state.session.rollback()
        raise NotFound("no such link")
    url = str(links[index])
    if not url.startswith(("https://", "http://")):
        state.session.rollback()
        raise NotFound("no such link")
    if _may_record(state, message):
        if not _opened(state, message_pk):
            _record(state, message, "open", moment)
        _record(state, message, "click", moment, url[:2000])
        finish(state, commit=True)
    else:
        state.session.rollback()
    return url
