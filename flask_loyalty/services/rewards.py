"""Rewards set-up: points, tiers, referrals, raffles and campaigns wired into the app.

Hooks registered (all run inside the caller's transaction):

- ``purchase``: recompute the buyer's tier (:mod:`.tiers`), handle a
  referral code (:mod:`.referrals`);
- ``refund``: recompute the tier, cancel a pending referral reward on a full refund;
- ``points_multiplier``: the multiplier of the buyer's tier;
- ``plan_tick`` (``fn(state, now=...)``, called by the plan): expire inactive
  points, reward matured referrals, let rolling-window tiers lapse;
- ``erase`` / ``export``: the customer's referral, raffle and campaign data.

It also validates the rewards configuration (a bad ``LOYALTY_TIERS`` or
``LOYALTY_POINTS_REDEMPTION`` fails at ``init_app``), registers the
``wallet_rewards`` template global used by the wallet partial
``loyalty/rewards/wallet_extra.html``, and the CLI commands.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from babel.numbers import format_decimal

from ..errors import InvalidInput
from ..models import Customer, Message
from ..state import Hook, LoyaltyState, get_state
from . import campaigns, outbox, points, raffles, referrals, tiers


def run_tick(state: LoyaltyState, *, now: datetime | None = None, **_kwargs: Any) -> None:
    """The ``plan_tick`` hook: every time-based rewards step, in the plan's transaction."""
    points.expire_points(state, now=now)
    referrals.process_matured(state, now=now)
    tiers.refresh_windows(state, now=now)


def wallet_rewards(customer: Customer | str, locale: str = "en") -> dict[str, Any]:
    """What the wallet shows about rewards: points, redemption rate, tier and referral link.

    Registered as the template global ``wallet_rewards``; creates the
    customer's referral code on first use.  ``tier_percent`` and
    ``tier_multiplier`` are the perks written for ``locale``.
    """
    state = get_state()
    customer_ref = customer if isinstance(customer, str) else customer.ref
    ext = state.extension
    unit, value = points.redemption_rate(state.config)
    balance = ext.points.balance(customer_ref)
    tier = ext.tiers.of(customer_ref)
    ladder = tiers.tiers_of(state)
    next_tier = next((t for t in ladder if tier is None or t.rank > tier.rank), None)
    link = None
    if state.config["LOYALTY_REFERRAL_ENABLED"]:
        try:
            link = referrals.Referrals(ext).link(customer_ref)
        except InvalidInput:
            link = None
    return {
        "points": balance, "points_unit": unit, "points_value": value,
        "points_worth": value * (balance // unit), "currency": state.config["LOYALTY_CURRENCY"],
        "tier": tier, "next_tier": next_tier, "referral_link": link,
        "tier_percent": _number(tier.discount_percent, locale) if tier and tier.discount_percent else None,
        "tier_multiplier": _number(tier.points_multiplier, locale) if tier and tier.points_multiplier != 1 else None,
    }


def _export(state: LoyaltyState, *, customer: Customer, data: dict[str, Any], **kwargs: Any) -> None:
    """The rewards part of ``consent.export``: tier, referrals, raffles, campaigns.

    ``data["points"]`` (balance and the whole ledger, oldest first, with
    ``order_ref`` and ``note``) is already built by ``consent.export`` and kept as it is.
    """
    ext = state.extension
    tier = ext.tiers.of(customer.ref)
    data["tier"] = tier.name if tier else None
    referrals.export(state, customer=customer, data=data)
    raffles.export(state, customer=customer, data=data)
    campaigns.export(state, customer=customer, data=data)


def _erase(state: LoyaltyState, *, customer: Customer, **kwargs: Any) -> None:
    referrals.erase(state, customer=customer)
    raffles.erase(state, customer=customer)


def _wallet_url(state: LoyaltyState, customer: Customer) -> str | None:
    try:
        return str(state.extension.links.wallet(customer.ref))
    except InvalidInput:  # no LOYALTY_BASE_URL outside a request
        return None


def _mail_context(state: LoyaltyState, message: Message, customer: Customer, locale: str) -> dict[str, Any]:
    """Render-time context of the rewards mails: the wallet link and parsed dates/amounts."""
    payload = message.payload or {}
    context: dict[str, Any] = {"wallet_url": _wallet_url(state, customer)}
    if payload.get("expires_at"):
        context["expires_on"] = datetime.fromisoformat(payload["expires_at"])
    if payload.get("gift_card_value"):
        context["gift_card_amount"] = Decimal(payload["gift_card_value"])
    if payload.get("min_order_total"):
        context["min_order_total"] = Decimal(payload["min_order_total"])
    multiplier = payload.get("points_multiplier")
    context["multiplier"] = _number(Decimal(multiplier), locale) if multiplier else None
    percent = payload.get("discount_percent")
    context["percent"] = _number(Decimal(percent), locale) if percent and Decimal(percent) else None
    return context


def _number(value: Decimal, locale: str) -> str:
    """A factor or percentage as the locale writes it (``1.5`` / ``1,5``), without trailing zeros."""
    return str(format_decimal(value.normalize(), format="#,##0.###", locale=locale))


for _kind in ("campaign", "tier_changed", "points_expiring", "referral_reward"):
    outbox.register_context(_kind, _mail_context)


def setup(state: LoyaltyState) -> None:
    """Validate the rewards settings and register hooks, the template global and CLI commands."""
    points.check_config(state.config)
    tiers.tiers_of(state)
    referrals.check_config(state.config)
    share = state.config["LOYALTY_CAMPAIGN_HOLDOUT_SHARE"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise InvalidInput.field("LOYALTY_CAMPAIGN_HOLDOUT_SHARE", "Must be a number in [0, 1).")
    state.add_hook("purchase", tiers.on_purchase)
    state.add_hook("purchase", referrals.on_purchase)
    state.add_hook("refund", tiers.on_refund)
    state.add_hook("refund", referrals.on_refund)
    state.add_hook("points_multiplier", cast(Hook, tiers.points_multiplier))
    state.add_hook("plan_tick", run_tick)
    state.add_hook("export", _export)
    state.add_hook("erase", _erase)
    state.app.add_template_global(wallet_rewards, "wallet_rewards")
