"""The dashboard's audit trail: every admin action is one append-only row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..clock import utcnow
from .base import Base
from .types import UTCDateTime


class AdminAuditEntry(Base):
    """Who did what to which target in the dashboard, and when.

    ``who`` comes from ``LOYALTY_ADMIN_IDENTITY`` (``"unknown"`` without it),
    ``target`` is usually a customer reference or a coupon code, ``details``
    a small JSON object describing the action's input and outcome.
    """

    __tablename__ = "loyalty_admin_audit"
    __table_args__ = (
        Index("ix_loyalty_admin_audit_at", "at"),
        Index("ix_loyalty_admin_audit_target", "target"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    who: Mapped[str] = mapped_column(String(200), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)

    def __repr__(self) -> str:
        return f"<AdminAuditEntry {self.action!r} {self.target!r} by {self.who!r}>"
