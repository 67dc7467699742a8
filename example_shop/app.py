"""Set-up: the shop's Flask app with flask_loyalty added (the contract's §1, nothing more)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, g
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event

from flask_loyalty import Loyalty

db = SQLAlchemy()
loyalty = Loyalty()

SHOP_NAME = "Leaf & Bean"


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets pages read while the dispatcher writes; NORMAL sync is safe with WAL and much faster."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def staff_identity() -> str:
    """The signed-in staff member, for the dashboard's audit trail."""
    account = g.get("account")
    return account.email if account is not None else "unknown"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The demo shop.  ``config`` overrides the defaults (tests pass a temporary database)."""
    app = Flask(__name__, instance_relative_config=True)
    port = os.environ.get("PORT", "5000")
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "demo-only-change-me"),
        SQLALCHEMY_DATABASE_URI=os.environ.get(
            "EXAMPLE_SHOP_DATABASE_URL", f"sqlite:///{Path(app.instance_path) / 'example_shop.db'}"),
        # flask_loyalty settings (all keys and defaults: docs/configuration.md)
        LOYALTY_SHOP_NAME=SHOP_NAME,
        LOYALTY_CURRENCY="EUR",
        LOYALTY_TIMEZONE="Europe/Madrid",
        LOYALTY_MAIL_TRANSPORT="outbox",  # mails stay in the database; read them in the dashboard
        LOYALTY_MAIL_SENDER=f"{SHOP_NAME} <hello@leafandbean.test>",
        LOYALTY_ALERT_EMAIL="owner@leafandbean.test",
        # links in mails are rendered by the dispatcher, outside any request, so they need a base URL
        LOYALTY_BASE_URL=os.environ.get("LOYALTY_BASE_URL", f"http://127.0.0.1:{port}"),
        # a cumulative programme: spend in the last 12 months earns more points and a standing discount
        LOYALTY_TIERS=[
            {"name": "Silver", "min_spend": "150", "window_days": 365, "points_multiplier": "1.25"},
            {"name": "Gold", "min_spend": "400", "window_days": 365, "points_multiplier": "1.5",
             "discount_percent": "5"},
        ],
        LOYALTY_SURVEY_REWARD={"kind": "fixed", "value": "3.00", "valid_days": 60},  # thanks for answering
        LOYALTY_ADMIN_IDENTITY=staff_identity,  # who did what, in the dashboard's audit trail
    )
    app.config.update(config or {})

    db.init_app(app)
    loyalty.init_app(app, db)  # registers the shopper pages, the JSON API, the dashboard and `flask loyalty`

    # The dashboard under /loyalty/admin/ answers 403 until the shop says who may see it.
    @loyalty.admin_guard
    def staff_only() -> bool:
        account = g.get("account")
        return bool(account is not None and account.is_staff)

    from . import models, views  # noqa: F401 - importing models registers the shop's tables
    from .seed import seed_command

    app.register_blueprint(views.bp)
    app.cli.add_command(seed_command)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", sqlite_pragmas)
        db.create_all()        # the shop's own tables
        loyalty.create_all()   # the loyalty_* tables (idempotent)
    return app
