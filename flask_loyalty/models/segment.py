"""Named customer segments defined by JSON rules over the profile table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import utcnow
from .base import Base, CreatedAt
from .types import Reference, UTCDateTime


class Segment(CreatedAt, Base):
    """A segment the shop defined: ``rule`` maps profile fields to conditions (all must hold)."""

    __tablename__ = "loyalty_segment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Reference(64), unique=True, nullable=False)
    rule: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    #: Built-in segments are not stored; this is ``False`` for every stored row.
    builtin = False

    def __repr__(self) -> str:
        return f"<Segment {self.name!r}>"
