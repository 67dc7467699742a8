"""Blinker signals sent by flask_loyalty.

The sender is always the Flask application; the payload is passed as keyword
arguments named after the objects (``purchase=``, ``redemption=`` ...).

With ``commit=True`` (the default) a signal is sent after the data it
describes is committed.  With ``commit=False`` it is sent when the loyalty
writes are flushed, i.e. before the host commits: a receiver that must only
act on committed data should defer its work (for example to an after-commit
job queue).
"""

from __future__ import annotations

from blinker import Namespace

loyalty_signals = Namespace()

purchase_recorded = loyalty_signals.signal(
    "purchase-recorded", doc="A new purchase was stored. Kwargs: purchase, customer.")
purchase_refunded = loyalty_signals.signal(
    "purchase-refunded", doc="A purchase was refunded in part or whole. Kwargs: purchase, amount.")
coupon_redeemed = loyalty_signals.signal(
    "coupon-redeemed", doc="A coupon was redeemed on an order. Kwargs: redemption, coupon.")
coupon_released = loyalty_signals.signal(
    "coupon-released", doc="A redemption was released (order cancelled or refunded). Kwargs: redemption, coupon.")
consent_changed = loyalty_signals.signal(
    "consent-changed", doc="A consent was granted, confirmed, withdrawn or erased. Kwargs: event, state.")
survey_answered = loyalty_signals.signal(
    "survey-answered", doc="A survey response was stored. Kwargs: response.")
detractor_alert = loyalty_signals.signal(
    "detractor-alert", doc="A survey response shows an unhappy customer. Kwargs: response.")
message_sent = loyalty_signals.signal(
    "message-sent", doc="A message left through the mail transport. Kwargs: message.")
message_failed = loyalty_signals.signal(
    "message-failed", doc="A message gave up after LOYALTY_MAX_ATTEMPTS. Kwargs: message, error.")
points_changed = loyalty_signals.signal(
    "points-changed", doc="A customer's points balance changed. Kwargs: customer_ref, delta, balance, entry.")
tier_changed = loyalty_signals.signal(
    "tier-changed", doc="A customer moved to another tier. Kwargs: customer_ref, old_tier, new_tier.")

__all__ = [
    "consent_changed",
    "coupon_redeemed",
    "coupon_released",
    "detractor_alert",
    "loyalty_signals",
    "message_failed",
    "message_sent",
    "points_changed",
    "purchase_recorded",
    "purchase_refunded",
    "survey_answered",
    "tier_changed",
]
