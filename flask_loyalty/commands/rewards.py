"""``flask loyalty points|referrals|raffles|campaigns ...`` commands."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from ..cli import MOMENT, loyalty_cli
from ..errors import LoyaltyError
from ..state import get_state


def _fail(exc: LoyaltyError) -> None:
    errors = getattr(exc, "errors", None)
    raise click.ClickException(json.dumps(errors) if errors else str(exc))


def _facades() -> Any:
    from ..services.campaigns import Campaigns
    from ..services.raffles import Raffles
    from ..services.referrals import Referrals

    ext = get_state().extension
    return (getattr(ext, "raffles", None) or Raffles(ext), getattr(ext, "campaigns", None) or Campaigns(ext),
            getattr(ext, "referrals", None) or Referrals(ext))


@loyalty_cli.group("points")
def points_group() -> None:
    """Points: expiry after inactivity."""


@points_group.command("expire")
@click.option("--now", type=MOMENT, default=None, help="Current time (ISO 8601 with time zone); default: now.")
def points_expire(now: datetime | None) -> None:
    """Warn about and expire points after LOYALTY_POINTS_EXPIRE_DAYS of inactivity."""
    try:
        expired = get_state().extension.points.expire(now=now)
    except LoyaltyError as exc:
        _fail(exc)
    click.echo(f"{expired} points expired")


@loyalty_cli.group("referrals")
def referrals_group() -> None:
    """Referrals: reward advocates once the refund window is over."""


@referrals_group.command("process")
@click.option("--now", type=MOMENT, default=None, help="Current time (ISO 8601 with time zone); default: now.")
def referrals_process(now: datetime | None) -> None:
    """Reward advocates whose friend's order is past LOYALTY_REFERRAL_REFUND_WINDOW_DAYS."""
    try:
        count = _facades()[2].process(now=now)
    except LoyaltyError as exc:
        _fail(exc)
    click.echo(f"{count} advocates rewarded")


@loyalty_cli.group("raffles")
def raffles_group() -> None:
    """Raffles drawn verifiably (seed hash published first, seed revealed after)."""


@raffles_group.command("create")
@click.argument("name")
@click.option("--title", required=True)
@click.option("--since", type=MOMENT, default=None, help="Purchases placed from (ISO 8601 with time zone).")
@click.option("--until", type=MOMENT, default=None, help="Purchases placed before (ISO 8601 with time zone).")
@click.option("--min-orders", default=1, show_default=True, type=int)
@click.option("--segment", default=None)
@click.option("--consent", default=None, help="Consent purpose entrants must have granted.")
@click.option("--per", "entries_per", type=click.Choice(["order", "amount"]), default="order", show_default=True)
@click.option("--amount-per-entry", default=None)
@click.option("--winners", default=1, show_default=True, type=int)
@click.option("--prize-kind", type=click.Choice(["fixed", "percent", "free_shipping", "gift_card", "points"]),
              required=True)
@click.option("--prize-value", default=None)
@click.option("--prize-valid-days", default=None, type=int)
def raffles_create(name: str, title: str, since: datetime | None, until: datetime | None, min_orders: int,
                   segment: str | None, consent: str | None, entries_per: str, amount_per_entry: str | None,
                   winners: int, prize_kind: str, prize_value: str | None, prize_valid_days: int | None) -> None:
    """Create a raffle and print the seed hash to publish."""
    rule = {"since": since, "until": until, "min_orders": min_orders,
            "segment": segment, "consent": consent}
    prize = {"kind": prize_kind, "value": prize_value, "valid_days": prize_valid_days}
    try:
        raffle = _facades()[0].create(name, title=title, rule=rule, entries_per=entries_per,
                                      amount_per_entry=amount_per_entry, winners=winners, prize=prize)
    except LoyaltyError as exc:
        _fail(exc)
    click.echo(f"raffle {raffle.name} created; publish its seed hash: {raffle.seed_hash}")


@raffles_group.command("draw")
@click.argument("name")
@click.option("--salt", default=None, help="Public value announced after entries closed (mixed into the draw).")
def raffles_draw(name: str, salt: str | None) -> None:
    """Draw the winners, give them the prize and reveal the seed."""
    raffles = _facades()[0]
    try:
        raffles.draw(name, public_salt=salt)
    except LoyaltyError as exc:
        _fail(exc)
    record = raffles.public(name)
    click.echo(f"seed: {record['seed']}")
    click.echo(f"winning entries: {', '.join(str(n) for n in record['winners']) or 'none'}")


@raffles_group.command("show")
@click.argument("name")
def raffles_show(name: str) -> None:
    """Print the public record of a raffle as JSON (what anyone may use to verify it)."""
    try:
        click.echo(json.dumps(_facades()[0].public(name), indent=2))
    except LoyaltyError as exc:
        _fail(exc)


@raffles_group.command("verify")
@click.argument("name")
def raffles_verify(name: str) -> None:
    """Re-run the published draw and check the seed hash and the winners."""
    try:
        ok = _facades()[0].verify(name)
    except LoyaltyError as exc:
        _fail(exc)
    if not ok:
        raise click.ClickException("the published draw does NOT verify")
    click.echo("verified: the seed matches its hash and re-running the draw gives the same winners")


@loyalty_cli.group("campaigns")
def campaigns_group() -> None:
    """Campaigns with a holdout: create, launch, report."""


@campaigns_group.command("create")
@click.argument("name")
@click.option("--segment", default=None)
@click.option("--customers", default=None, help="Comma-separated customer refs instead of a segment.")
@click.option("--kind", type=click.Choice(["fixed", "percent", "free_shipping"]), required=True)
@click.option("--value", default=None)
@click.option("--min-total", default=None)
@click.option("--starts", type=MOMENT, required=True, help="ISO 8601 with time zone.")
@click.option("--ends", type=MOMENT, required=True, help="ISO 8601 with time zone.")
@click.option("--holdout", default=None, type=float, help="Holdout share (default LOYALTY_CAMPAIGN_HOLDOUT_SHARE).")
@click.option("--subject", default=None)
@click.option("--headline", default=None)
@click.option("--body", default=None)
def campaigns_create(name: str, segment: str | None, customers: str | None, kind: str, value: str | None,
                     min_total: str | None, starts: datetime, ends: datetime, holdout: float | None,
                     subject: str | None, headline: str | None, body: str | None) -> None:
    """Define a campaign (nothing is sent before `launch`)."""
    refs = [r.strip() for r in customers.split(",") if r.strip()] if customers else None
    try:
        _facades()[1].create(name, segment=segment, customer_refs=refs,
                             offer={"kind": kind, "value": value, "min_order_total": min_total},
                             starts_at=starts, ends_at=ends,
                             holdout_share=holdout, subject=subject, headline=headline, body=body)
    except LoyaltyError as exc:
        _fail(exc)
    click.echo(f"campaign {name} created")


@campaigns_group.command("launch")
@click.argument("name")
@click.option("--now", type=MOMENT, default=None)
def campaigns_launch(name: str, now: datetime | None) -> None:
    """Split the audience, create the coupons and schedule the mails."""
    campaigns = _facades()[1]
    try:
        campaigns.launch(name, now=now)
    except LoyaltyError as exc:
        _fail(exc)
    click.echo(f"launched: {len(campaigns.members(name, 'treatment'))} offered, "
               f"{len(campaigns.members(name, 'holdout'))} in the holdout")


@campaigns_group.command("report")
@click.argument("name")
@click.option("--confidence", default=0.95, show_default=True, type=float)
@click.option("--now", type=MOMENT, default=None)
def campaigns_report(name: str, confidence: float, now: datetime | None) -> None:
    """Print the incremental conversion and revenue versus the holdout (JSON)."""
    try:
        report = _facades()[1].report(name, confidence=confidence, now=now)
    except LoyaltyError as exc:
        _fail(exc)
    click.echo(json.dumps(report.to_dict(), indent=2))
