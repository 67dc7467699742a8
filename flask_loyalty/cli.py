"""The ``flask loyalty ...`` command group."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click
from flask.cli import AppGroup

from .clock import ensure_aware
from .errors import InvalidInput
from .state import get_state

loyalty_cli = AppGroup("loyalty", help="flask_loyalty: tables, plan, dispatch, coupons, consent ...")


if TYPE_CHECKING:
    _ParamType = click.ParamType[datetime]
else:   # generic only from click 8.2 on; Flask 3.0 allows 8.1
    _ParamType = click.ParamType


class MomentType(_ParamType):
    """A moment given on the command line (``--now``, ``--since`` ...): ISO 8601, aware, in the supported dates.

    ``Z`` stands for UTC.  Without a time zone the moment is refused, or
    read as UTC when ``naive_is_utc``.  Bad input is a usage error (exit 2)
    naming the reason, e.g. the supported dates for ``1800-01-01T00:00:00Z``.
    The value is aware UTC.
    """

    name = "datetime"

    def __init__(self, *, naive_is_utc: bool = False) -> None:
        self.naive_is_utc = naive_is_utc

    def convert(self, given: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        """The aware UTC moment of ``given`` (text or a datetime), else a usage error with the reason."""
        if isinstance(given, datetime):
            moment = given
        else:
            try:
                moment = datetime.fromisoformat(str(given).strip().replace("Z", "+00:00"))
            except ValueError:
                self.fail(f"{given!r} is not ISO 8601: use e.g. 2026-05-01T09:00:00+00:00", param, ctx)
        if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
            if not self.naive_is_utc:
                self.fail(f"{given!r} needs a time zone (add +00:00 or Z)", param, ctx)
            moment = moment.replace(tzinfo=timezone.utc)
        try:
            return ensure_aware(moment, field=param.name if param is not None and param.name else "now")
        except InvalidInput as exc:
            reasons = "; ".join(str(m) for msgs in exc.errors.values()
                                for m in (msgs if isinstance(msgs, list) else [msgs]))
            self.fail(f"{given!r}: {reasons}", param, ctx)


#: ``--now`` and the other moments of the commands: aware ISO 8601.
MOMENT = MomentType()


@loyalty_cli.command("init-db")
def init_db_command() -> None:
    """Create the loyalty_* tables (what loyalty.create_all() does)."""
    get_state().extension.create_all()
    click.echo("loyalty tables are ready")


# Each area's sub-commands register themselves on ``loyalty_cli`` when imported.
from .commands import consent, coupons, plan, rewards, value  # noqa: E402, F401
