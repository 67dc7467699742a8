"""SQLAlchemy models of flask_loyalty (all tables prefixed ``loyalty_``).

Importing this package registers every model on :data:`metadata`.
"""

from .base import Base, metadata
from .customer import Customer
from .points import PointsEntry
from .purchase import CHANNELS, Purchase, PurchaseItem

__all__ = ["CHANNELS", "Base", "Customer", "PointsEntry", "Purchase", "PurchaseItem", "metadata"]
