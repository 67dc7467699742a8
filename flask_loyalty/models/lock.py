"""A one-row table used to serialise writers on SQLite (see ``transaction.begin_write``)."""

from __future__ import annotations

from sqlalchemy import Integer
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class WriteLock(Base):
    """Row ``id=1`` is updated first by every loyalty write transaction on SQLite."""

    __tablename__ = "loyalty_write_lock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    counter: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
