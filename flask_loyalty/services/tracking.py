"""Engagement tracking of marketing mails: opens (pixel) and clicks (signed redirects).

A click link carries only the message id and the index of the link in that
message (signed, purpose ``track``), so it can only lead to a URL the
message itself contained: there is no open redirect.  Opens and clicks are
stored in ``loyalty_engagement`` with the shop-local hour, per customer;
the mail itself keeps the time of its first open and first click
(``Message.opened_at`` / ``clicked_at``), which the dashboard's mail funnel
reads without touching the engagement rows.  A click counts as an open
too: images are often blocked.

``LOYALTY_TRACKING``: ``True`` (record), ``False`` (mails carry no tracking
and nothing is recorded) or ``"consent"`` (record only for customers who
gave the ``personalization`` consent).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, update
from sqlalchemy.orm.attributes import set_committed_value

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


def _record(state: LoyaltyState, message: Message, event: str, now: datetime, url: str | None = None) -> bool:
    """Store one open or click and keep the mail's first-open / first-click times.

    The first open is claimed with a conditional ``UPDATE`` of the mail
    (``opened_at IS NULL``), so concurrent opens of one mail store one open
    row; an open that loses the claim stores nothing and returns ``False``.
    A click always stores its row (and opens the mail if nothing did yet).
    """
    table = table_of(Message)
    if event == "open":
        claimed = state.session.execute(
            update(table).where(table.c.id == message.id, table.c.opened_at.is_(None)).values(opened_at=now)
            .returning(table.c.opened_at, table.c.clicked_at)).first()
        if claimed is None:
            return False
    else:
        claimed = state.session.execute(
            update(table).where(table.c.id == message.id)
            .values(opened_at=func.coalesce(table.c.opened_at, now), clicked_at=func.coalesce(table.c.clicked_at, now))
            .returning(table.c.opened_at, table.c.clicked_at)).one()
    # the loaded mail shows what the row now holds, also in sessions that do not expire objects on commit
    set_committed_value(message, "opened_at", claimed.opened_at)
    set_committed_value(message, "clicked_at", claimed.clicked_at)
    state.session.execute(insert(table_of(Engagement)).values(
        customer_id=message.customer_id, message_id=message.id, kind=message.kind, event=event, at=now,
        hour=local_hour(state, now), url=url))
    return True


def record_open(state: LoyaltyState, message_pk: int, *, now: datetime | None = None) -> bool:
    """Record the first open of a message; returns whether something was recorded. Commits."""
    moment = resolve_now(now)
    begin_write(state)
    message = state.session.get(Message, message_pk)
    if message is None or not _may_record(state, message) or not _record(state, message, "open", moment):
        state.session.rollback()
        return False
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
        _record(state, message, "open", moment)
        _record(state, message, "click", moment, url[:2000])
        finish(state, commit=True)
    else:
        state.session.rollback()
    return url
