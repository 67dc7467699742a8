"""Rewards pages: the referral landing link and the public record of a raffle draw.

- ``GET <prefix>/r/<code>``: keeps the referral code in the cookie
  ``LOYALTY_REFERRAL_COOKIE`` (30 days) and redirects to the shop
  (``LOYALTY_REFERRAL_LANDING_URL``, else the shop's base URL).  The host's
  checkout reads the cookie and passes ``referral_code=`` to
  ``record_purchase``.  An unknown code shows the friendly "not found" page.
- ``POST <prefix>/wallet/<token>/points`` (form field ``points``): the
  wallet's "turn points into a coupon" form; redirects back to the wallet.
- ``GET <prefix>/raffles/<name>.json``: the raffle's public record (the seed
  hash before the draw; entries, winners and the seed after it) so anyone
  can re-run the draw with :func:`flask_loyalty.services.raffles.rerun_draw`.

It also registers the ``client_ip`` hook that gives the referral fraud rules
the buyer's IP address (``request.remote_addr``: put the app behind
``werkzeug.middleware.proxy_fix.ProxyFix`` when a proxy is in front of it).
"""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, has_request_context, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response

from .. import tokens
from ..errors import InvalidInput, NotFound, TokenError
from ..services.links import base_url
from ..services.points import NotEnoughPoints
from ..services.referrals import normalize_code, owner_of
from ..state import Hook, LoyaltyState, get_state
from . import register_blueprint

COOKIE_DAYS = 30
#: The most digits the wallet's points form accepts (points.redeem allows at most 10**9).
POINTS_DIGITS = 10


def request_ip(state: LoyaltyState) -> str | None:
    """The ``client_ip`` hook: the current request's remote address (``None`` outside a request)."""
    if not has_request_context():
        return None
    return request.remote_addr or None


def make_blueprint() -> Blueprint:
    """A new rewards blueprint (one per app)."""
    bp = Blueprint("loyalty_rewards", __name__)

    @bp.get("/r/<code>")
    def referral_landing(code: str) -> Any:
        state = get_state()
        key = normalize_code(code)
        if (not state.config["LOYALTY_REFERRAL_ENABLED"] or len(key) > 32 or not key.isalnum()
                or owner_of(state, key) is None):
            raise NotFound("unknown referral code")
        target = state.config.get("LOYALTY_REFERRAL_LANDING_URL") or (base_url(state) + "/")
        response: Response = redirect(target, code=302)
        response.set_cookie(state.config["LOYALTY_REFERRAL_COOKIE"], key, max_age=COOKIE_DAYS * 86400,
                            httponly=True, samesite="Lax", secure=request.is_secure)
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.post("/wallet/<token>/points")
    def redeem_points(token: str) -> Any:
        state = get_state()
        payload = tokens.load("wallet", token, state=state)
        ref = payload.get("c") if isinstance(payload, dict) else None
        if not isinstance(ref, str) or not ref:
            raise TokenError("invalid")
        raw = request.form.get("points", "").strip()
        # ASCII digits only ('²'.isdigit() is True but int() refuses it) and short enough for
        # int(): anything longer than POINTS_DIGITS is far above what points.redeem accepts
        if not (raw.isascii() and raw.isdigit()) or len(raw) > POINTS_DIGITS:
            raise InvalidInput.field("points", "Choose how many points to use.")
        back = url_for("loyalty_wallet.wallet_page", token=token)
        try:
            state.extension.points.redeem(ref, int(raw))
        except NotEnoughPoints:
            return redirect(back + "?redeem_error=1", code=303)
        return redirect(back + "?redeemed=1", code=303)

    @bp.get("/raffles/<name>.json")
    def raffle_record(name: str) -> Any:
        state = get_state()
        record = state.extension.raffles.public(name)
        return jsonify(record)

    return bp


def setup(state: LoyaltyState) -> None:
    """Register the rewards blueprint and the ``client_ip`` hook."""
    state.add_hook("client_ip", cast(Hook, request_ip))
    register_blueprint(state, make_blueprint())
