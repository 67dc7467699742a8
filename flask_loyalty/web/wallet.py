"""The shopper's wallet (``loyalty.links.wallet``) and printable coupon cards.

``GET <prefix>/wallet/<token>``: the customer's usable coupons (value in the
customer's locale and currency, expiry in the shop's time zone), the points
balance and a link to the print page; the template leaves
``{% block wallet_extra %}`` for other programmes (tier, referral link).

``GET <prefix>/wallet/<token>/print``: an A4 page of four A6 coupon cards per
sheet (cut along the dashed lines), each with the shop name, the value, the
conditions, the expiry and a QR code of the code (segno, inline SVG).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import segno
from babel.numbers import format_decimal
from flask import Blueprint, url_for
from markupsafe import Markup
from sqlalchemy import select

from .. import tokens
from ..errors import NotFound, TokenError
from ..i18n import render, translator
from ..models import Coupon, Customer
from ..services.coupons import CouponText, describe
from ..services.plan import expand_pending
from ..state import LoyaltyState, get_state
from . import register_blueprint
from .common import no_store


@dataclass(frozen=True)
class WalletCoupon:
    """A coupon as the wallet and the cards show it."""

    coupon: Coupon
    text: CouponText

    @property
    def code(self) -> str:
        """The code as printed."""
        return self.coupon.code

    def qr_svg(self, title: str) -> Markup:
        """A QR code of the code as inline SVG (sized by CSS)."""
        qr = segno.make(self.coupon.code_key, error="m", micro=False)
        svg = qr.svg_inline(scale=1, border=2, omitsize=True, title=title, svgclass="coupon-qr")
        return Markup(svg)   # segno escapes the title; the code is [0-9A-Z]


def _customer_ref(token: str) -> str:
    payload = tokens.load("wallet", token)
    ref = payload.get("c") if isinstance(payload, dict) else None
    if not isinstance(ref, str) or not ref:
        raise TokenError("invalid")
    return ref


def _wallet(state: LoyaltyState, token: str) -> tuple[str, Customer | None, list[WalletCoupon], str]:
    ref = _customer_ref(token)
    customer = state.session.execute(select(Customer).where(Customer.ref == ref)).scalar_one_or_none()
    if customer is not None and customer.erased_at is not None:
        raise NotFound("this customer's data was erased")
    if customer is not None and expand_pending(state, customer_id=customer.id):
        state.session.commit()  # an order not planned yet brings the welcome coupon: keep its code
    tr = translator(customer.locale if customer else None, state=state)
    coupons = [WalletCoupon(c, describe(c, tr)) for c in state.extension.coupons.for_customer(ref)]
    return ref, customer, coupons, tr.locale


def wallet_page(token: str) -> Any:
    """The wallet: usable coupons, points balance, print link."""
    state = get_state()
    ref, customer, coupons, locale = _wallet(state, token)
    points = customer.points_balance if customer is not None else 0   # hook-free read
    html = render("loyalty/wallet/wallet.html", locale=locale, customer=customer, customer_ref=ref,
                  coupons=coupons, points=points, points_text=format_decimal(points, locale=locale),
                  token=token, print_url=url_for(".print_cards", token=token))
    response = state.app.make_response(html)
    return no_store(response)


def print_cards(token: str) -> Any:
    """Printable coupon cards: A4 sheets of four A6 cards."""
    state = get_state()
    _ref, customer, coupons, locale = _wallet(state, token)
    limit = int(state.config["LOYALTY_WALLET_PRINT_LIMIT"])
    shown = coupons[:limit]
    sheets = [shown[i:i + 4] for i in range(0, len(shown), 4)]
    html = render("loyalty/wallet/print.html", locale=locale, customer=customer, sheets=sheets,
                  coupons=shown, wallet_url=url_for(".wallet_page", token=token))
    return no_store(state.app.make_response(html))


def make_blueprint() -> Blueprint:
    """A fresh wallet blueprint (one per app)."""
    bp = Blueprint("loyalty_wallet", __name__, url_prefix="/wallet")
    bp.add_url_rule("/<token>", "wallet_page", wallet_page, methods=["GET"])
    bp.add_url_rule("/<token>/print", "print_cards", print_cards, methods=["GET"])
    return bp


def setup(state: LoyaltyState) -> None:
    """Register the wallet pages."""
    register_blueprint(state, make_blueprint())
