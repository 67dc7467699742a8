"""Post-purchase survey responses: one per order, answers stored one row per question."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, CreatedAt
from .customer import Customer
from .purchase import Purchase
from .types import UTCDateTime

#: ``recommend`` answers at or below this are NPS detractors; 9 and 10 are promoters.
DETRACTOR_MAX = 6
PROMOTER_MIN = 9


class SurveyResponse(CreatedAt, Base):
    """A shopper's answers about one order.

    ``purchase_id`` is unique: an order has at most one response.  A response
    starts *partial* when only some questions were answered (the one-click
    scale in the invitation mail); ``completed_at`` is set when the shopper
    sends the survey form, after which nothing is overwritten.
    """

    __tablename__ = "loyalty_survey_response"
    __table_args__ = (
        UniqueConstraint("purchase_id"),
        Index("ix_loyalty_survey_response_answered", "answered_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("loyalty_purchase.id", ondelete="CASCADE"), nullable=False)
    customer_id: Mapped[int] = mapped_column(ForeignKey("loyalty_customer.id"), nullable=False, index=True)
    #: When the first answer was stored (the time window of the statistics).
    answered_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    #: ``None`` while only a one-click (partial) answer is stored.
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: ``page``, ``mail`` (one-click link), ``api`` or ``python``: where the first answer came from.
    channel: Mapped[str] = mapped_column(String(8), nullable=False)
    #: When the detractor alert went out (at most once per response).
    alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Code of the reward coupon issued for answering (``LOYALTY_SURVEY_REWARD``), at most one.
    reward_code: Mapped[str | None] = mapped_column(String(64))
    #: Set when the customer's personal data was erased (free-text answers removed).
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    purchase: Mapped[Purchase] = relationship(lazy="joined", innerjoin=True)
    customer: Mapped[Customer] = relationship(lazy="joined", innerjoin=True)
    answers: Mapped[list[SurveyAnswer]] = relationship(
        back_populates="response", cascade="all, delete-orphan", order_by="SurveyAnswer.id", lazy="selectin")

    @property
    def order_ref(self) -> str:
        """The order the response is about."""
        return self.purchase.order_ref

    @property
    def customer_ref(self) -> str:
        """The host's reference of the customer who answered."""
        return self.customer.ref

    @property
    def completed(self) -> bool:
        """Whether the shopper sent the whole form (a partial response can still be completed)."""
        return self.completed_at is not None

    @property
    def values(self) -> dict[str, Any]:
        """Answers by question id: ``int`` (scale), ``bool`` (yes/no), ``str`` (choice, text)."""
        return {a.question: a.value for a in self.answers if a.value is not None}

    @property
    def recommend(self) -> int | None:
        """The 0-10 ``recommend`` answer, if given."""
        value = self.values.get("recommend")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def experience(self) -> int | None:
        """The 1-5 ``experience`` answer, if given."""
        value = self.values.get("experience")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def promoter(self) -> bool:
        """NPS promoter: ``recommend`` of 9 or 10."""
        return self.recommend is not None and self.recommend >= PROMOTER_MIN

    @property
    def detractor(self) -> bool:
        """NPS detractor: ``recommend`` of 0 to 6."""
        return self.recommend is not None and self.recommend <= DETRACTOR_MAX

    def __repr__(self) -> str:
        return f"<SurveyResponse order={self.purchase_id} completed={self.completed}>"


class SurveyAnswer(Base):
    """One answer: ``number`` for scale and yes/no (1/0), ``choice`` or ``text``."""

    __tablename__ = "loyalty_survey_answer"
    __table_args__ = (
        UniqueConstraint("response_id", "question"),
        Index("ix_loyalty_survey_answer_question", "question", "number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_id: Mapped[int] = mapped_column(
        ForeignKey("loyalty_survey_response.id", ondelete="CASCADE"), nullable=False)
    question: Mapped[str] = mapped_column(String(32), nullable=False)
    #: The question's type when answered: ``scale``, ``yes_no``, ``choice`` or ``text``.
    type: Mapped[str] = mapped_column(String(8), nullable=False)
    number: Mapped[int | None] = mapped_column(Integer)
    choice: Mapped[str | None] = mapped_column(String(64))
    text: Mapped[str | None] = mapped_column(Text)

    response: Mapped[SurveyResponse] = relationship(back_populates="answers")

    @property
    def value(self) -> Any:
        """The answer as Python value (``None`` once a text answer was erased)."""
        if self.type == "yes_no":
            return None if self.number is None else bool(self.number)
        if self.type == "scale":
            return self.number
        if self.type == "choice":
            return self.choice
        return self.text

    @staticmethod
    def columns_for(qtype: str, value: Any) -> dict[str, Any]:
        """The ``number``/``choice``/``text`` columns storing ``value`` of a ``qtype`` question."""
        if qtype == "yes_no":
            return {"number": 1 if value else 0, "choice": None, "text": None}
        if qtype == "scale":
            return {"number": int(value), "choice": None, "text": None}
        if qtype == "choice":
            return {"number": None, "choice": str(value), "text": None}
        return {"number": None, "choice": None, "text": str(value)}
