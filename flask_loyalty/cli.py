"""The ``flask loyalty ...`` command group."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .state import get_state

loyalty_cli = AppGroup("loyalty", help="flask_loyalty: tables, plan, dispatch, coupons, consent ...")


@loyalty_cli.command("init-db")
def init_db_command() -> None:
    """Create the loyalty_* tables (what loyalty.create_all() does)."""
    get_state().extension.create_all()
    click.echo("loyalty tables are ready")


# Each area's sub-commands register themselves on ``loyalty_cli`` when imported.
from .commands import consent, coupons, plan, rewards, value  # noqa: E402, F401
