"""The Alembic / Flask-Migrate recipe of docs/production.md works: autogenerate sees the loyalty tables.

A host's migrations know only the host's models unless ``target_metadata``
also lists ``flask_loyalty.models.metadata``.  These tests prove both halves
of the recipe on a temporary SQLite file: alembic's comparison API finds
every ``loyalty_*`` table, and a real Flask-Migrate project whose ``env.py``
was edited as documented autogenerates, upgrades to, and then stays in step
with the loyalty schema.
"""

from __future__ import annotations

import logging.config
import re
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, create_engine, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_loyalty import Loyalty
from flask_loyalty.models import metadata as loyalty_metadata
from flask_loyalty.models.consent import APPEND_ONLY_TABLES

alembic = pytest.importorskip("alembic")
flask_migrate = pytest.importorskip("flask_migrate")

from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.migration import MigrationContext  # noqa: E402

LOYALTY_TABLES = {t.name for t in loyalty_metadata.sorted_tables}

# The lines docs/production.md tells a host to put into Flask-Migrate's migrations/env.py.
RECIPE_IMPORT = "from flask_loyalty.models import metadata as loyalty_metadata\n"
RECIPE_OLD = """def get_metadata():
    if hasattr(target_db, 'metadatas'):
        return target_db.metadatas[None]
    return target_db.metadata
"""
# ... and into migrations/script.py.mako, so generated revisions can name the loyalty column types.
MAKO_OLD = "import sqlalchemy as sa\n"
MAKO_NEW = "import sqlalchemy as sa\nimport flask_loyalty.models.types\n"
# ... and at the end of upgrade() in the revision that creates the loyalty tables.
RECIPE_TRIGGERS = """    from flask_loyalty.models.consent import install_triggers
    install_triggers(op.get_bind())
"""
RECIPE_NEW = """def get_metadata():
    if hasattr(target_db, 'metadatas'):
        return [target_db.metadatas[None], loyalty_metadata]
    return [target_db.metadata, loyalty_metadata]
"""


def make_host(url: str) -> tuple[Flask, SQLAlchemy]:
    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)

    class ShopOrder(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "shop_order"
        id: Mapped[int] = mapped_column(primary_key=True)
        ref: Mapped[str] = mapped_column(String(40), unique=True)

    app = Flask("migrating_shop")
    app.config.update(SECRET_KEY="test", SQLALCHEMY_DATABASE_URI=url)
    db.init_app(app)
    Loyalty(app, db)
    return app, db


def test_loyalty_tables_are_prefixed_and_present():
    assert LOYALTY_TABLES
    assert all(name.startswith("loyalty_") for name in LOYALTY_TABLES)


def test_compare_metadata_sees_every_loyalty_table(tmp_path):
    app, db = make_host(f"sqlite:///{tmp_path / 'shop.db'}")
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        # Without the recipe: only the host's table is known, the loyalty tables are invisible.
        host_only = {diff[1].name for diff in compare_metadata(context, db.metadata) if diff[0] == "add_table"}
        assert host_only == {"shop_order"}
        # With the recipe: target_metadata is a list of both.
        both = compare_metadata(context, [db.metadata, loyalty_metadata])
        added = {diff[1].name for diff in both if diff[0] == "add_table"}
        assert added == LOYALTY_TABLES | {"shop_order"}
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


# Flask-Migrate's own env.py template tries the deprecated db.get_engine() first.
@pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")
def test_flask_migrate_recipe_autogenerates_upgrades_and_stays_in_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # env.py calls logging.config.fileConfig, which would silence the loggers of later tests.
    monkeypatch.setattr(logging.config, "fileConfig", lambda *args, **kwargs: None)
    db_file = tmp_path / "shop.db"
    app, db = make_host(f"sqlite:///{db_file}")
    flask_migrate.Migrate(app, db, render_as_batch=True)
    directory = str(tmp_path / "migrations")
    with app.app_context():
        flask_migrate.init(directory=directory)
        env = Path(directory, "env.py")
        source = env.read_text()
        assert RECIPE_OLD in source, "Flask-Migrate's env.py template changed; update docs/production.md"
        env.write_text(RECIPE_IMPORT + source.replace(RECIPE_OLD, RECIPE_NEW))
        mako = Path(directory, "script.py.mako")
        assert MAKO_OLD in mako.read_text()
        mako.write_text(mako.read_text().replace(MAKO_OLD, MAKO_NEW))

        flask_migrate.migrate(directory=directory, message="shop and loyalty")
        [version] = Path(directory, "versions").glob("*.py")
        revision = version.read_text()
        created = set(re.findall(r"op\.create_table\('([a-z_]+)'", revision))
        assert created == LOYALTY_TABLES | {"shop_order"}
        # The last step of the recipe: the consent ledger's append-only triggers are DDL that
        # autogenerate cannot see; the revision that creates the tables installs them.
        upgrade_end = "    # ### end Alembic commands ###\n"
        assert upgrade_end in revision
        version.write_text(revision.replace(upgrade_end, upgrade_end + RECIPE_TRIGGERS, 1))

        flask_migrate.upgrade(directory=directory)
        db.session.remove()
        db.engine.dispose()
    engine = create_engine(f"sqlite:///{db_file}")
    try:
        assert set(inspect(engine).get_table_names()) >= LOYALTY_TABLES
        with engine.connect() as conn:
            triggers = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
        assert {f"{table}_no_update" for table in APPEND_ONLY_TABLES} <= triggers
    finally:
        engine.dispose()

    with app.app_context():
        # After the upgrade the database matches the models: nothing left to migrate.
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, [db.metadata, loyalty_metadata]) == []
        # `flask loyalty init-db` (loyalty.create_all) is idempotent on a migrated database.
        app.extensions["loyalty"].extension.create_all()
        db.session.remove()
        db.engine.dispose()
