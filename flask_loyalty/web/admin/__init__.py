"""The shop owner's dashboard under ``<LOYALTY_URL_PREFIX>/admin/``.

Closed by default: every admin URL answers 403 until the host registers a
guard with ``loyalty.admin_guard(fn)`` (or ``LOYALTY_ADMIN_GUARD``) and that
guard returns ``True`` for the current request.  Forms carry a session-bound
CSRF token; every action writes an :class:`~flask_loyalty.models.AdminAuditEntry`.
"""

from __future__ import annotations

import hmac
import importlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from flask import Blueprint, abort, request, session

from ...i18n import activate, admin_translator, deactivate, gettext
from ...services import audit
from ...state import LoyaltyState, get_state
from .. import register_blueprint

log = logging.getLogger(__name__)

CSRF_SESSION_KEY = "_loyalty_admin_csrf"
CSRF_FIELD = "csrf_token"
#: The endpoint prefix of every admin view (``loyalty_admin.overview`` ...).
BLUEPRINT_NAME = "loyalty_admin"


def _resolve(value: Any, key: str) -> Callable[[], Any] | None:
    """A callable from config: the callable itself or a ``"module:function"`` import string."""
    if value is None:
        return None
    if isinstance(value, str):
        module_name, _, attr = value.partition(":")
        if not module_name or not attr:
            raise ValueError(f"{key} must be a callable or a 'module:function' string")
        value = getattr(importlib.import_module(module_name), attr)
    if not callable(value):
        raise ValueError(f"{key} must be callable")
    return value  # type: ignore[no-any-return]


def guard_for(state: LoyaltyState) -> Callable[[], Any] | None:
    """The guard in force for this app.

    ``loyalty.admin_guard(fn)`` registered for this app first, then its
    ``LOYALTY_ADMIN_GUARD``, then a guard registered on the ``Loyalty`` object
    before the app was set up.  Always this app's own state, never another app's.
    """
    if state.admin_guard is not None:
        return state.admin_guard
    configured = _resolve(state.config.get("LOYALTY_ADMIN_GUARD"), "LOYALTY_ADMIN_GUARD")
    if configured is not None:
        return configured
    return state.default_admin_guard


def allowed(state: LoyaltyState) -> bool:
    """Whether the current request may see the dashboard (only a guard returning ``True`` opens it)."""
    try:
        fn = guard_for(state)
        return fn is not None and fn() is True
    except Exception:  # a failing guard keeps the door shut
        log.exception("flask_loyalty admin guard raised; access denied")
        return False


def identity(state: LoyaltyState) -> str:
    """Who is acting, from ``LOYALTY_ADMIN_IDENTITY`` (``"unknown"`` without it)."""
    try:
        fn = _resolve(state.config.get("LOYALTY_ADMIN_IDENTITY"), "LOYALTY_ADMIN_IDENTITY")
        who = fn() if fn is not None else None
    except Exception:
        log.exception("LOYALTY_ADMIN_IDENTITY raised; audit entry says 'unknown'")
        who = None
    return str(who) if who not in (None, "") else "unknown"


def csrf_token() -> str:
    """The session's CSRF token (created on first use)."""
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def check_csrf() -> None:
    """Refuse (400) a state-changing request without the session's CSRF token."""
    expected = session.get(CSRF_SESSION_KEY)
    given = request.form.get(CSRF_FIELD) or request.headers.get("X-CSRF-Token") or ""
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        abort(400, description=gettext(
            "The form expired or did not come from this dashboard. Please reload and retry."))


def audit_action(action: str, target: str | None = None, *, commit: bool = True, **details: Any) -> None:
    """Write an audit entry for ``action`` by the current admin."""
    state = get_state()
    audit.record(state, who=identity(state), action=action, target=target, details=details, commit=commit)


def make_admin_blueprint(state: LoyaltyState) -> Blueprint:
    """A new admin blueprint (one per app) with the guard and CSRF check in front of every view."""
    bp = Blueprint(BLUEPRINT_NAME, __name__, url_prefix="/admin")

    @bp.before_request
    def _guard() -> None:
        current = get_state()
        if not allowed(current):
            abort(403)
        activate(admin_translator(current))   # the dashboard's language for pages, charts and timelines
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            check_csrf()

    @bp.after_request
    def _headers(response: Any) -> Any:
        response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @bp.teardown_request
    def _forget_language(_exc: BaseException | None) -> None:
        deactivate()

    @bp.context_processor
    def _context() -> dict[str, Any]:
        return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD}

    from . import views

    views.register(bp)
    return bp


def setup(state: LoyaltyState) -> None:
    """Register the dashboard blueprint and the audit trail's erase/export hooks."""
    audit.setup(state)
    register_blueprint(state, make_admin_blueprint(state))
