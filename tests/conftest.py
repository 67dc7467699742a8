"""Test fixtures: a fresh Flask app per test, on SQLite and on PostgreSQL.

PostgreSQL cases need ``LOYALTY_TEST_POSTGRES_URL`` (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_test``).  Without it
they are skipped with a visible reason; under CI (``CI=true``) they fail.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.serving import make_server

from flask_loyalty import Loyalty
from flask_loyalty.models import metadata as loyalty_metadata

PG_URL = os.environ.get("LOYALTY_TEST_POSTGRES_URL")
DATABASES = ["sqlite", "postgresql"]


@dataclass
class Shop:
    """A host app with flask_loyalty registered, as a test sees it."""

    app: Flask
    db: SQLAlchemy
    loyalty: Loyalty
    url: str
    host_order: Any

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()

    @property
    def dialect(self) -> str:
        return "postgresql" if self.url.startswith("postgresql") else "sqlite"


def postgres_url_or_skip() -> str:
    if PG_URL:
        return PG_URL
    if os.environ.get("CI"):
        pytest.fail("LOYALTY_TEST_POSTGRES_URL must be set in CI: PostgreSQL cases may not be skipped")
    pytest.skip("PostgreSQL case: set LOYALTY_TEST_POSTGRES_URL to run it")


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The database of a test: a SQLite file in tmp_path, or the PostgreSQL test database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    return postgres_url_or_skip()


def _truncate_postgres(db: SQLAlchemy) -> None:
    names = [t.name for t in loyalty_metadata.sorted_tables]
    with db.engine.begin() as conn:
        existing = set(inspect(conn).get_table_names())
        names += [n for n in existing if n.startswith("host_")]
        present = [n for n in names if n in existing]
        if present:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{n}"' for n in present) + " RESTART IDENTITY CASCADE"))


@pytest.fixture
def make_shop(db_url: str) -> Iterator[Callable[..., Shop]]:
    made: list[Shop] = []

    def factory(*, fresh: bool = False, **config: Any) -> Shop:
        """A new app; ``fresh=True`` starts from an empty database even if an app was made before."""
        class Base(DeclarativeBase):
            pass

        db = SQLAlchemy(model_class=Base)

        class HostOrder(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "host_order"
            id: Mapped[int] = mapped_column(primary_key=True)
            ref: Mapped[str] = mapped_column(String(64), unique=True)

        app = Flask(f"shop{len(made)}")
        url = db_url
        if fresh and url.startswith("sqlite:///"):
            url = url.replace(".db", f"-{len(made)}.db")
        app.config.update(SECRET_KEY="test-secret", SQLALCHEMY_DATABASE_URI=url, TESTING=True,
                          LOYALTY_BASE_URL="http://shop.test", SERVER_NAME=None)
        app.config.update(config)
        db.init_app(app)
        loyalty = Loyalty()
        loyalty.init_app(app, db)
        with app.app_context():
            reset = url.startswith("postgresql") and (fresh or not made)
            if reset:
                _truncate_postgres(db)
            db.create_all()
            loyalty.create_all()
            if reset:
                _truncate_postgres(db)
                loyalty.create_all()
        shop = Shop(app, db, loyalty, url, HostOrder)
        made.append(shop)
        return shop

    yield factory
    for shop in made:
        with shop.app.app_context():
            shop.db.session.remove()
            for engine in shop.db.engines.values():
                engine.dispose()


@pytest.fixture
def shop(make_shop: Callable[..., Shop]) -> Iterator[Shop]:
    s = make_shop()
    with s.app.app_context():
        yield s


def screenshot_dir() -> Path:
    """Where browser tests save screenshots.

    ``docs/_static`` (the pictures the docs show) when ``LOYALTY_SCREENSHOTS=1``,
    else a temporary folder, so an ordinary test run leaves the work tree clean.
    """
    if os.environ.get("LOYALTY_SCREENSHOTS") == "1":
        return Path(__file__).resolve().parent.parent / "docs" / "_static"
    folder = Path(tempfile.gettempdir()) / "flask-loyalty-screenshots"
    folder.mkdir(exist_ok=True)
    return folder


# --- real browser -------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
#: Headless Chromium as root on a machine with no network but loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: ``pytestmark`` of a browser test module.
NEEDS_CHROMIUM = [pytest.mark.browser,
                  pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")]


@contextmanager
def live_server(app: Flask) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def run_together(shop: Any, n: int, work: Callable[[int], Any], *, timeout: float = 120) -> list[Any]:
    """Run ``work(i)`` for i < n on n threads released at one barrier, each in its own app context and session.

    Returns each thread's outcome by ``i``: what ``work`` returned, or the exception it raised.
    Fails the test if a thread is still running after ``timeout`` seconds (a hang, not a timing).
    """
    barrier = threading.Barrier(n)
    outcomes: list[Any] = [None] * n

    def run(i: int) -> None:
        with shop.app.app_context():
            try:
                barrier.wait(30)
                outcomes[i] = work(i)
            except BaseException as exc:  # handed to the test
                outcomes[i] = exc
            finally:
                shop.db.session.remove()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return outcomes


def assert_one_created(shop: Any, n: int, create: Callable[[], Any]) -> None:
    """Run ``create`` on n threads at once: exactly one succeeds, the others are refused on ``name``."""
    from flask_loyalty import InvalidInput

    outcomes = [o if isinstance(o, BaseException) else "ok" for o in run_together(shop, n, lambda _i: create())]
    assert outcomes.count("ok") == 1
    refused = [o for o in outcomes if o != "ok"]
    assert all(isinstance(o, InvalidInput) and "name" in o.errors for o in refused), outcomes


@contextmanager
def phone_tab(browser: Any, locale: str = "en-GB") -> Iterator[Any]:
    """A new tab in a phone-sized, touch, mobile browser context asking for ``locale``; closed afterwards."""
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=1,
                                  has_touch=True, is_mobile=True, locale=locale)
    tab = context.new_page()
    tab.set_default_timeout(15000)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
