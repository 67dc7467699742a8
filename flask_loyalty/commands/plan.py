"""``flask loyalty plan [--now]`` and ``flask loyalty dispatch [--limit] [--now] [--loop --interval S]``."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from types import FrameType

import click

from ..cli import MOMENT, loyalty_cli
from ..state import get_state


@loyalty_cli.command("plan")
@click.option("--now", "now_text", type=MOMENT, default=None, help="Run as if it were this moment (ISO 8601, aware).")
def plan_command(now_text: datetime | None) -> None:
    """Schedule the time-based steps of the plan (birthday, win-back, replenish)."""
    from ..services.plan import run_plan

    count = run_plan(get_state(), now=now_text)
    click.echo(f"scheduled {count} message(s)")


@loyalty_cli.command("dispatch")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Send at most this many per run.")
@click.option("--now", "now_text", type=MOMENT, default=None,
              help="Dispatch as if it were this moment (ISO 8601, aware).")
@click.option("--loop", is_flag=True, help="Keep running, dispatching every --interval seconds.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds between two runs with --loop.")
def dispatch_command(limit: int | None, now_text: datetime | None, loop: bool, interval: float) -> None:
    """Send the messages that are due (safe to run on several machines at once)."""
    from ..services.dispatch import dispatch

    now = now_text
    if loop and now is not None:
        raise click.BadParameter("--now cannot be combined with --loop", param_hint="--now")
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    if loop:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    state = get_state()
    while True:
        report = dispatch(state, limit=limit, now=now)
        state.session.remove()
        if report.claimed or not loop:
            click.echo(f"sent {report.sent}, failed {report.failed}, retried {report.retried}, "
                       f"deferred {report.deferred}, suppressed {report.suppressed}, "
                       f"cancelled {report.cancelled}")
        if not loop or stopping:
            return
        if limit is not None and report.claimed >= limit:
            continue  # the limit was reached: more may be waiting
        deadline = time.monotonic() + interval
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, interval))
        if stopping:
            return
