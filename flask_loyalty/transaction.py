"""The one place where ``commit=`` is honoured, and database-portable write helpers."""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from blinker import Signal
from sqlalchemy import event, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from flask_loyalty.models.base import table_of

from .state import LoyaltyState

PendingSignal = tuple[Signal, Mapping[str, Any]]


def finish(state: LoyaltyState, *, commit: bool, signals: Iterable[PendingSignal] = ()) -> None:
    """End a write call: commit (or only flush), then send ``signals``.

    With ``commit=True`` the host's session is committed and the signals go
    out after the commit.  With ``commit=False`` the session is flushed so the
    host's own commit (or rollback) decides, and the signals are sent at flush.
    """
    session = state.session
    if commit:
        try:
            session.commit()
        except BaseException:
            session.rollback()
            raise
    else:
        session.flush()
    for signal, kwargs in signals:
        signal.send(state.app, **kwargs)


def abandon(state: LoyaltyState, *, commit: bool) -> None:
    """End a refused write call: with ``commit=True`` roll the session back.

    A refusal writes nothing, and the call's locks (a row lock on PostgreSQL,
    the write lock on SQLite) are not kept for the rest of the session.  With
    ``commit=False`` the host's transaction is left to the host.
    """
    if commit:
        state.session.rollback()


@contextmanager
def abandoned_on_error(state: LoyaltyState, *, commit: bool) -> Iterator[None]:
    """Run a write call's body; on any exception, :func:`abandon` it, then re-raise."""
    try:
        yield
    except BaseException:
        abandon(state, commit=commit)
        raise


def dialect_name(state: LoyaltyState) -> str:
    """``"sqlite"``, ``"postgresql"`` ... of the session's bind."""
    bind = state.session.get_bind()
    return bind.dialect.name


def insert_ignore(state: LoyaltyState, table: Any, values: Mapping[str, Any] | list[dict[str, Any]],
                  index_elements: list[str]) -> int:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING``; returns rows inserted.

    Unlike catching ``IntegrityError``, this never aborts a PostgreSQL
    transaction, so it is safe inside the host's own transaction.
    """
    name = dialect_name(state)
    stmt: Any
    if name == "postgresql":
        stmt = postgresql.insert(table).values(values).on_conflict_do_nothing(index_elements=index_elements)
    elif name == "sqlite":
        stmt = sqlite.insert(table).values(values).on_conflict_do_nothing(index_elements=index_elements)
    else:  # pragma: no cover - other databases: plain insert, constraint errors surface
        stmt = insert(table).values(values)
    if name in ("postgresql", "sqlite"):
        pk = list(table.primary_key.columns)
        rows = state.session.execute(stmt.returning(*pk)).all()
        return len(rows)
    result = state.session.execute(stmt)  # pragma: no cover
    return int(result.rowcount or 0)  # type: ignore[attr-defined]  # pragma: no cover


def insert_or_none(state: LoyaltyState, table: Any, values: Mapping[str, Any],
                   index_elements: list[str]) -> Any | None:
    """Insert one row unless it conflicts on ``index_elements``; its primary key, or ``None``."""
    name = dialect_name(state)
    dialect_insert = postgresql.insert if name == "postgresql" else sqlite.insert
    pk = next(iter(table.primary_key.columns))
    stmt = (dialect_insert(table).values(values)
            .on_conflict_do_nothing(index_elements=index_elements).returning(pk))
    row = state.session.execute(stmt).first()
    return None if row is None else row[0]


def configure_engine(engine: Engine, busy_timeout: float) -> None:
    """Make a SQLite engine wait for locks instead of failing with "database is locked".

    Sets ``busy_timeout`` and turns on foreign keys on every new connection.
    Other databases are left untouched.
    """
    if engine.dialect.name != "sqlite" or getattr(engine, "_loyalty_configured", False):
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

    engine._loyalty_configured = True  # type: ignore[attr-defined]


def begin_write(state: LoyaltyState) -> None:
    """On SQLite, take the write lock now (``BEGIN IMMEDIATE`` semantics).

    A deferred SQLite transaction that reads first and writes later can fail
    with "database is locked" without waiting when another writer got in
    between.  Writing first (a no-op update of a one-row lock table) makes the
    connection wait its turn under ``busy_timeout`` instead.  On other
    databases this does nothing.
    """
    if dialect_name(state) != "sqlite":
        return
    state.session.execute(_write_lock_statement())


def advisory_lock(state: LoyaltyState, key: str) -> None:
    """Serialise the transactions that take the lock ``key`` until they end (PostgreSQL).

    ``pg_advisory_xact_lock`` on a 64-bit hash of ``key``: a second
    transaction asking for the same key waits until the first commits or
    rolls back, so a check-then-insert over rows no lock covers (a count of
    recent rows, say) stays right under concurrency.  Keys are namespaced
    strings such as ``"referral-ip:<hash>"``.  On SQLite this does nothing:
    :func:`begin_write` already serialises writers.
    """
    if dialect_name(state) != "postgresql":
        return
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    state.session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True))))


@functools.cache
def _write_lock_statement() -> Any:
    """The no-op update of the one-row lock table, built once."""
    from .models.lock import WriteLock

    lock = table_of(WriteLock)
    return lock.update().where(lock.c.id == 1).values(counter=lock.c.counter + 1)


def session_of(state: LoyaltyState) -> Session:
    """The current host session object (for type checkers)."""
    return state.session()
