"""The extension's own declarative base; every table is prefixed ``loyalty_``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import MetaData, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..clock import utcnow
from .types import UTCDateTime

#: Constraint names follow a convention so migrations can address them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    """Declarative base of the loyalty models (kept apart from the host's models).

    Include :data:`metadata` in a host's Alembic ``target_metadata`` to have
    autogenerate see the loyalty tables.
    """

    metadata = metadata


class CreatedAt:
    """Mixin: a ``created_at`` column in aware UTC."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


def table_of(model: Any) -> Table:
    """The Core ``Table`` of a mapped class (typed for Core ``update``/``insert``)."""
    return cast(Table, model.__table__)
