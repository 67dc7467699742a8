"""A dispatcher in its own process (multiprocessing ``spawn``): a fresh host app, then dispatch()."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def make_app(db_url: str, config: dict[str, Any]) -> Any:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_loyalty import Loyalty

    db = SQLAlchemy()
    app = Flask("worker")
    app.config.update(SECRET_KEY="test-secret", SQLALCHEMY_DATABASE_URI=db_url,
                      LOYALTY_BASE_URL="http://shop.test", **config)
    db.init_app(app)
    loyalty = Loyalty(app, db)
    return app, loyalty


def run(db_url: str, config: dict[str, Any], now_iso: str, start: Any = None, out: Any = None) -> None:
    app, loyalty = make_app(db_url, config)
    with app.app_context():
        if start is not None:
            start.wait()
        report = loyalty.dispatch(now=datetime.fromisoformat(now_iso))
        if out is not None:
            out.put(report.sent)
