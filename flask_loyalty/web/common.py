"""What every loyalty page shares: the static files, friendly error pages, JSON errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..errors import InvalidInput, NotFound, TokenError
from ..i18n import render

STATUS_FOR_TOKEN = {"expired": 410, "invalid": 404, "no_secret_key": 500}


def make_blueprint() -> Blueprint:
    """The ``loyalty`` blueprint: static files (``/static/loyalty/...``) only."""
    return Blueprint("loyalty", __name__, static_folder="../static/loyalty",
                     static_url_path="/static", template_folder="../templates")


def wants_json() -> bool:
    """True for API requests (``/api/`` paths or a JSON body/Accept header)."""
    if "/api/" in request.path or request.is_json:
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def error_page(status: int, title: str, message: str, **extra: Any) -> tuple[str, int]:
    """A friendly, translated error page with ``status``."""
    return render("loyalty/error.html", status=status, title=title, message=message, **extra), status


def install_error_handlers(blueprint: Blueprint) -> None:
    """Bad input -> 400, bad links -> a friendly 4xx page; never a 500 for either."""

    @blueprint.errorhandler(InvalidInput)
    def _invalid(exc: InvalidInput) -> Any:
        if wants_json():
            return jsonify(error="invalid_input", errors=exc.errors), 400
        from ..i18n import translator

        _ = translator().gettext
        return error_page(400, _("Something is not right"), _("Please check what you entered and try again."))

    @blueprint.errorhandler(TokenError)
    def _token(exc: TokenError) -> Any:
        status = STATUS_FOR_TOKEN.get(exc.reason, 404)
        if wants_json():
            return jsonify(error="invalid_link"), status
        from ..i18n import translator

        _ = translator().gettext
        if exc.reason == "expired":
            return error_page(status, _("This link has expired"),
                              _("For your security, links in our mails work for a limited time. "
                                "Please use the link in a more recent mail."))
        return error_page(status, _("This link does not work"),
                          _("The link may be incomplete. Please copy the whole link from the mail."))

    @blueprint.errorhandler(NotFound)
    def _not_found(exc: NotFound) -> Any:
        if wants_json():
            return jsonify(error="not_found"), 404
        from ..i18n import translator

        _ = translator().gettext
        return error_page(404, _("Not found"), _("We could not find what you were looking for."))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_object(raw: bytes | str, *,
                      parse_float: Callable[[str], Any] | None = None) -> dict[str, Any] | None:
    """The JSON object in a request body, or ``None`` for anything else (never raises for bad input).

    Stricter than ``json.loads``: ``NaN``, ``Infinity`` and ``-Infinity`` are
    refused (they are not JSON and would become floats), and so are bodies
    nested too deep for the parser (``RecursionError``), integers too long for
    ``int()`` and bytes that are not UTF-8/16/32.  ``parse_float`` as in
    ``json.loads`` (``Decimal`` keeps amounts exact).
    """
    try:
        body = json.loads(raw, parse_float=parse_float, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def no_store(response: Response) -> Response:
    """Mark a personal page as not cacheable, and keep its URL (a signed token) out of ``Referer`` headers."""
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
