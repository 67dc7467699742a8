"""SQLAlchemy models of flask_loyalty (all tables prefixed ``loyalty_``).

Importing this package registers every model on :data:`metadata`.
"""

from .base import Base, metadata
from .customer import Customer
from .points import PointsEntry
from .purchase import CHANNELS, Purchase, PurchaseItem

__all__ = ["CHANNELS", "Base", "Customer", "PointsEntry", "Purchase", "PurchaseItem", "metadata"]
from .audit import AdminAuditEntry

__all__ += ["AdminAuditEntry"]
from .coupon import COUPON_KINDS, Coupon, Redemption  # noqa: E402
from .gift_card import GiftCard, GiftCardMovement  # noqa: E402

__all__ += ["COUPON_KINDS", "Coupon", "GiftCard", "GiftCardMovement", "Redemption"]
from .rewards import (  # noqa: E402
    Campaign,
    CampaignMember,
    CustomerTier,
    Raffle,
    RaffleEntry,
    Referral,
    ReferralCode,
)

__all__ += ["Campaign", "CampaignMember", "CustomerTier", "Raffle", "RaffleEntry", "Referral", "ReferralCode"]
from .message import STATUSES as MESSAGE_STATUSES  # noqa: E402
from .message import Engagement, Message, MessageEvent  # noqa: E402

__all__ += ["MESSAGE_STATUSES", "Engagement", "Message", "MessageEvent"]
from .consent import ConsentEvent, ConsentEventIp, ConsentStatus, ConsentSuppression, ConsentWording  # noqa: E402

__all__ += ["ConsentEvent", "ConsentEventIp", "ConsentStatus", "ConsentSuppression", "ConsentWording"]
from .profile import CustomerProfile, ModelFit, PurchaseSummary  # noqa: E402
from .segment import Segment  # noqa: E402

__all__ += ["CustomerProfile", "ModelFit", "PurchaseSummary", "Segment"]
from .survey import SurveyAnswer, SurveyResponse  # noqa: E402

__all__ += ["SurveyAnswer", "SurveyResponse"]
from .dashboard import INDEXES as DASHBOARD_INDEXES  # noqa: E402

__all__ += ["DASHBOARD_INDEXES"]
