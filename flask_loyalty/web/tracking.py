"""Open pixel and click redirects of tracked mails (``/t/o/<token>``, ``/t/c/<token>``)."""

from __future__ import annotations

import base64

from flask import Blueprint, Response, redirect
from werkzeug.wrappers import Response as BaseResponse

from .. import tokens
from ..errors import TokenError
from ..services import tracking
from ..state import LoyaltyState, get_state
from . import register_blueprint

#: A transparent 1x1 GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _payload(token: str) -> dict[str, int]:
    data = tokens.load("track", token)
    if not isinstance(data, dict) or not isinstance(data.get("m"), int):
        raise TokenError("invalid")
    return data


def make_blueprint() -> Blueprint:
    """A new tracking blueprint (one per app)."""
    bp = Blueprint("loyalty_tracking", __name__)

    @bp.get("/t/o/<token>")
    def pixel(token: str) -> Response:
        try:
            data = _payload(token)
        except TokenError:
            data = None
        if data is not None:
            tracking.record_open(get_state(), data["m"])
        response = Response(PIXEL, mimetype="image/gif")
        response.headers["Cache-Control"] = "no-store, max-age=0"
        return response

    @bp.get("/t/c/<token>")
    def click(token: str) -> BaseResponse:
        data = _payload(token)
        index = data.get("i")
        if not isinstance(index, int):
            raise TokenError("invalid")
        url = tracking.click_target(get_state(), data["m"], index)
        response = redirect(url, code=302)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return bp


def setup(state: LoyaltyState) -> None:
    """Register the tracking routes under ``LOYALTY_URL_PREFIX``."""
    register_blueprint(state, make_blueprint())
