"""``flask loyalty recompute`` and ``flask loyalty segments define|list|members``."""

from __future__ import annotations

import json
from datetime import datetime

import click

from ..cli import MomentType, loyalty_cli
from ..errors import InvalidInput, NotFound
from ..state import get_state


@loyalty_cli.command("recompute")
@click.option("--now", "now", type=MomentType(naive_is_utc=True), default=None,
              help="Compute as of this ISO 8601 time (default: now; naive = UTC).")
@click.option("--rebuild", is_flag=True, default=False,
              help="Aggregate every purchase again instead of only the changed customers' "
                   "(after purchases were edited outside flask_loyalty).")
def recompute_command(now: datetime | None, rebuild: bool) -> None:
    """Recompute every customer's profile: RFM, lifetime value, loyalty stage."""
    loyalty = get_state().extension
    try:
        scored = loyalty.analytics.recompute(now=now, rebuild=rebuild)
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{scored} customers scored")
    fit = loyalty.analytics.model()
    if fit is not None and fit.aggregates is not None:
        click.echo(f"purchase aggregates: {fit.aggregates} ({fit.aggregated_customers} customers aggregated)")
    if fit is not None and fit.params is not None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in fit.params.items())
        click.echo(f"value model: BG/NBD + Gamma-Gamma ({shown})")
    elif fit is not None:
        click.echo(f"value model: heuristic ({fit.reason})")


@loyalty_cli.group("segments")
def segments_group() -> None:
    """Customer segments: define, list, members."""


@segments_group.command("define")
@click.argument("name")
@click.argument("rule")
def define_command(name: str, rule: str) -> None:
    """Define segment NAME with a JSON RULE, e.g. '{"frequency": {">=": 3}}'."""
    try:
        parsed = json.loads(rule)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"RULE is not valid JSON: {exc}") from None
    try:
        segment = get_state().extension.segments.define(name, parsed)
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"segment {segment.name!r} defined: {json.dumps(segment.rule, sort_keys=True)}")


@segments_group.command("list")
def list_command() -> None:
    """List built-in and defined segments with their rules."""
    for info in get_state().extension.segments.list():
        kind = "built-in" if info.builtin else "defined"
        click.echo(f"{info.name}\t{kind}\t{json.dumps(info.rule, sort_keys=True)}")


@segments_group.command("members")
@click.argument("name")
def members_command(name: str) -> None:
    """Print the customer references in segment NAME (as of the last recompute), one a line."""
    try:
        refs = get_state().extension.segments.members(name)
    except NotFound as exc:
        raise click.ClickException(str(exc)) from None
    for ref in refs:
        click.echo(ref)
