"""Per-app state, kept in ``app.extensions["loyalty"]`` (never on module globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_app_context

from .errors import NotInitialized

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session, scoped_session

    from .extension import Loyalty

EXTENSION_KEY = "loyalty"

#: A hook called inside the checkout transaction: ``hook(state, purchase=..., ...)``.
Hook = Callable[..., None]


@dataclass
class LoyaltyState:
    """Everything the extension keeps for one Flask app."""

    app: Flask
    db: SQLAlchemy
    extension: Loyalty
    #: The guard registered for this app with ``loyalty.admin_guard(fn)`` (wins over
    #: ``LOYALTY_ADMIN_GUARD``).
    admin_guard: Callable[[], bool] | None = None
    #: A guard registered on the ``Loyalty`` object before this app was set up: used
    #: only when neither ``admin_guard`` nor ``LOYALTY_ADMIN_GUARD`` is set.
    default_admin_guard: Callable[[], bool] | None = None
    #: In-transaction hooks by event name (``"purchase"``, ``"refund"``, ``"erase"`` ...).
    hooks: dict[str, list[Hook]] = field(default_factory=dict)
    #: Free-form per-app caches of the services (rate limiters, catalogs ...).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def session(self) -> scoped_session[Session]:
        """The host's ``db.session``."""
        return self.db.session  # type: ignore[return-value]

    @property
    def config(self) -> Any:
        """The app's config mapping."""
        return self.app.config

    def add_hook(self, event: str, hook: Hook) -> None:
        """Register ``hook`` for an in-transaction event."""
        self.hooks.setdefault(event, []).append(hook)

    def run_hooks(self, event: str, **kwargs: Any) -> None:
        """Call every hook of ``event`` in registration order."""
        for hook in self.hooks.get(event, ()):
            hook(self, **kwargs)


def get_state(app: Flask | None = None) -> LoyaltyState:
    """The state of ``app`` (default: the current app), or a clear error."""
    if app is None:
        if not has_app_context():
            raise NotInitialized(
                "flask_loyalty needs an application context: call it inside a request, "
                "'with app.app_context():', or a Flask CLI command.")
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    assert app is not None
    try:
        state = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise NotInitialized(
            f"flask_loyalty is not registered on app {app.name!r}: did you forget "
            "loyalty.init_app(app, db)?") from None
    return state  # type: ignore[no-any-return]
