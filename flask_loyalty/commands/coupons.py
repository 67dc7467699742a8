"""``flask loyalty coupons create|batch|export``."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from datetime import date
from typing import IO, Any, TypeVar

import click
from sqlalchemy import or_, select

from ..cli import loyalty_cli
from ..clock import local_date, resolve_now, shop_zone
from ..errors import InvalidInput
from ..i18n import translator
from ..models import Coupon, Customer
from ..services.coupons import describe
from ..spreadsheet import CsvWriter
from ..state import get_state

F = TypeVar("F", bound=Callable[..., Any])

#: Columns of ``flask loyalty coupons export`` (one row per coupon, for a postal mail-merge).
EXPORT_COLUMNS = ("customer_ref", "name", "email", "locale", "code", "value", "conditions", "expiry",
                  "expires_on")


def _rule_options(fn: F) -> F:
    """The options shared by ``create`` and ``batch``."""
    options = [
        click.option("--kind", required=True, type=click.Choice(["percent", "fixed", "free_shipping", "gift"])),
        click.option("--value", default=None, help="Percentage (percent) or amount (fixed)."),
        click.option("--gift-name", default=None, help="The free item of a gift coupon."),
        click.option("--currency", default=None, help="ISO 4217 code (default LOYALTY_CURRENCY)."),
        click.option("--max-uses", type=int, default=None, help="Uses in all (default unlimited)."),
        click.option("--max-uses-per-customer", type=int, default=1, show_default=True,
                     help="Uses per customer (0 = unlimited)."),
        click.option("--min-order-total", default=None, help="Smallest order total it applies to."),
        click.option("--starts", type=click.DateTime(["%Y-%m-%d"]), default=None,
                     help="First day it works (shop time zone)."),
        click.option("--expires", type=click.DateTime(["%Y-%m-%d"]), default=None,
                     help="Last day it works (until the end of that day in the shop's time zone)."),
        click.option("--first-order-only", is_flag=True, help="Only on a customer's first order."),
        click.option("--segment", default=None, help="Only for members of this segment."),
        click.option("--campaign", default=None, help="A label to find the coupons again."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _rules(opts: dict[str, Any]) -> dict[str, Any]:
    per_customer = opts.pop("max_uses_per_customer")
    starts, expires = opts.pop("starts"), opts.pop("expires")
    return {**opts, "max_uses_per_customer": per_customer or None,
            "starts_at": starts.date() if starts else None, "expires_at": expires.date() if expires else None}


def _fail(exc: InvalidInput) -> click.ClickException:
    parts = [f"{field}: {' '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}"
             for field, msgs in exc.errors.items()]
    return click.ClickException("; ".join(parts))


@loyalty_cli.group("coupons")
def coupons_cli() -> None:
    """Coupons: create one, create a batch, export for a postal mail-merge."""


@coupons_cli.command("create")
@_rule_options
@click.option("--code", default=None, help="Your own code (default: a generated one).")
@click.option("--customer", "customer_ref", default=None, help="Make it personal to this customer.")
def create_command(code: str | None, customer_ref: str | None, **opts: Any) -> None:
    """Create one coupon and print its code."""
    state = get_state()
    try:
        coupon = state.extension.coupons.create(code=code, customer_ref=customer_ref, **_rules(opts))
    except InvalidInput as exc:
        raise _fail(exc) from None
    click.echo(coupon.code)


@coupons_cli.command("batch")
@click.argument("count", type=click.IntRange(1, 1_000_000))
@_rule_options
@click.option("--prefix", default="", help="Put this in front of every code.")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8", lazy=True), default="-",
              help="Write the codes here, one per line (default: standard output).")
def batch_command(count: int, prefix: str, output: IO[str], **opts: Any) -> None:
    """Create COUNT coupons with the same rules; print their codes."""
    state = get_state()
    try:
        made = state.extension.coupons.create_batch(count, prefix=prefix, **_rules(opts))
    except InvalidInput as exc:
        raise _fail(exc) from None
    for coupon in made:
        output.write(coupon.code + "\n")
    click.echo(f"{len(made)} coupons created", err=True)


def _postal_consent(state: Any) -> Callable[[str], bool]:
    if importlib.util.find_spec("flask_loyalty.services.consent") is None:
        raise click.ClickException("the consent module is not installed: cannot check postal_mail consent")
    consent = state.extension.consent
    return lambda ref: bool(consent.has(ref, "postal_mail"))


@coupons_cli.command("export")
@click.option("--campaign", default=None, help="Only coupons with this campaign label.")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-",
              help="Write the CSV here (default: standard output).")
def export_command(campaign: str | None, output: IO[str]) -> None:
    """Write a CSV of usable personal coupons for a postal mail-merge.

    One row per coupon: customer, name, e-mail, code, value, conditions and
    expiry in the customer's language.  Only customers who gave
    ``postal_mail`` consent are included; erased customers never are.
    """
    state = get_state()
    zone = shop_zone(state.config["LOYALTY_TIMEZONE"])
    allowed = _postal_consent(state)
    now = resolve_now(None)
    query = (select(Customer).where(Customer.erased_at.is_(None), Customer.ref.in_(
        select(Coupon.customer_ref).where(Coupon.customer_ref.is_not(None), Coupon.revoked_at.is_(None),
                                          or_(Coupon.expires_at.is_(None), Coupon.expires_at >= now))))
             .order_by(Customer.ref))
    writer = CsvWriter(output)
    writer.writerow(EXPORT_COLUMNS)
    rows = skipped = 0
    for customer in state.session.scalars(query).all():
        usable = [c for c in state.extension.coupons.for_customer(customer.ref, now=now)
                  if c.customer_ref == customer.ref and (campaign is None or c.campaign == campaign)]
        if not usable:
            continue
        if not allowed(customer.ref):
            skipped += 1
            continue
        tr = translator(customer.locale, state=state)
        for coupon in usable:
            text = describe(coupon, tr)
            expires_on: date | None = local_date(coupon.expires_at, zone) if coupon.expires_at else None
            writer.writerow([customer.ref, customer.name or "", customer.email or "", tr.locale, coupon.code,
                             text.value, "; ".join(text.conditions), text.expiry,
                             expires_on.isoformat() if expires_on else ""])
            rows += 1
    click.echo(f"{rows} coupons exported; {skipped} customers left out (no postal_mail consent)", err=True)
