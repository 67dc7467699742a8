"""JSON endpoints for shop front-ends: ``POST <prefix>/api/coupons/validate``.

Request body (JSON object)::

    {"code": "ABCD-EFGH-JKMN", "order_total": "59.90",
     "customer_ref": "customer-42", "currency": "EUR"}      # the last two optional

Answers ``200`` with the quote (``valid``, ``discount`` as a string,
``reason`` ...), ``400`` with ``errors`` (field -> messages) for a bad body,
and ``429`` with ``Retry-After`` when the caller's IP address or the customer
made more than ``LOYALTY_VALIDATE_RATE_LIMIT`` attempts.  Unknown codes and
other customers' personal codes get the same answer (``reason: "not_found"``)
so codes cannot be enumerated.  The client IP is ``request.remote_addr``:
behind a proxy, wrap the app in ``werkzeug.middleware.proxy_fix.ProxyFix``.
"""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, jsonify, request
from limits import RateLimitItem, parse, storage, strategies

from ..errors import InvalidInput
from ..schemas import load
from ..schemas.coupon import QuoteRequestSchema
from ..state import LoyaltyState, get_state
from . import register_blueprint
from .common import parse_json_object

_quote_schema = QuoteRequestSchema()
#: Reasons answered as ``not_found`` so a caller learns nothing about codes that are not theirs.
HIDDEN_REASONS = frozenset({"not_found", "not_yours"})
_LIMITER_KEY = "coupons.validate_limiter"
#: Largest request body accepted (bytes).
MAX_BODY = 4096


class ValidateLimiter:
    """The per-IP and per-customer rate limit of the validate endpoint (the ``limits`` library).

    Counters live in process memory by default, or in the storage named by
    ``LOYALTY_RATELIMIT_STORAGE_URI`` (e.g. ``redis://host:6379``) so that
    every worker of the shop shares them.
    """

    def __init__(self, state: LoyaltyState) -> None:
        config = state.config
        try:
            self.item: RateLimitItem = parse(str(config["LOYALTY_VALIDATE_RATE_LIMIT"]))
        except ValueError:
            raise InvalidInput.field("LOYALTY_VALIDATE_RATE_LIMIT",
                                     "Use the 'limits' notation, e.g. '10/minute'.") from None
        uri = config["LOYALTY_RATELIMIT_STORAGE_URI"] or "memory://"
        self.storage = storage.storage_from_string(uri)
        self.limiter = strategies.MovingWindowRateLimiter(self.storage)
        # the same for every worker of one shop; separate shops sharing a Redis use separate databases
        self.logger = state.app.logger
        self.namespace = "flask-loyalty" + str(config["LOYALTY_URL_PREFIX"]).rstrip("/") + "/coupons-validate"

    def hit(self, kind: str, value: str) -> int | None:
        """Count one attempt for ``kind`` (``ip``/``customer``); seconds to wait when over the limit.

        When the shared storage is unreachable the attempt is let through and
        a warning is logged: a Redis outage must not break every checkout's
        coupon field.
        """
        try:
            if self.limiter.hit(self.item, self.namespace, kind, value):
                return None
            stats = self.limiter.get_window_stats(self.item, self.namespace, kind, value)
        except Exception as exc:  # any storage failure (redis.ConnectionError ...)
            self.logger.warning("flask_loyalty: rate-limit storage unavailable, not limiting: %s", exc)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    def reset(self) -> None:
        """Forget every counter (tests, or after changing the limit)."""
        self.storage.reset()


def limiter_for(state: LoyaltyState) -> ValidateLimiter:
    """The app's validate limiter (made once per app)."""
    limiter = state.extras.get(_LIMITER_KEY)
    if limiter is None:
        limiter = state.extras[_LIMITER_KEY] = ValidateLimiter(state)
    return limiter


def _too_many(retry_after: int) -> Response:
    response = jsonify(error="rate_limited", retry_after=retry_after)
    response.status_code = 429
    response.headers["Retry-After"] = str(retry_after)
    return response


def _json_body() -> dict[str, Any]:
    """The request's JSON object; numbers with a fraction become ``Decimal`` (never float)."""
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY:
        raise InvalidInput({"_schema": ["The request body is too large."]})
    body = parse_json_object(raw, parse_float=Decimal)
    if body is None:
        raise InvalidInput({"_schema": ["Send a JSON object."]})
    return body


def validate_coupon() -> Any:
    """``POST /api/coupons/validate``: a quote for a code and an order total."""
    state = get_state()
    limiter = limiter_for(state)
    wait = limiter.hit("ip", request.remote_addr or "unknown")
    if wait is not None:
        return _too_many(wait)
    body = _json_body()
    data = load(_quote_schema, body)          # codes over 64 characters stop here, before any query
    if data.get("customer_ref") is not None:
        wait = limiter.hit("customer", data["customer_ref"])
        if wait is not None:
            return _too_many(wait)
    quote = state.extension.coupons.validate(
        data["code"], customer_ref=data.get("customer_ref"), order_total=data["order_total"],
        currency=data.get("currency"))
    payload = quote.as_json()
    if quote.reason in HIDDEN_REASONS:
        payload["reason"] = "not_found"
    response = jsonify(payload)
    response.headers["Cache-Control"] = "no-store"
    return response


def make_blueprint() -> Blueprint:
    """A fresh blueprint with the coupon endpoints (one per app)."""
    bp = Blueprint("loyalty_coupon_api", __name__, url_prefix="/api/coupons")
    bp.add_url_rule("/validate", "validate", validate_coupon, methods=["POST"])
    return bp


def setup(state: LoyaltyState) -> None:
    """Check the rate-limit settings and register the coupon API blueprint."""
    limiter_for(state)
    register_blueprint(state, make_blueprint())
