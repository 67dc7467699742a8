"""``flask loyalty consent export|erase CUSTOMER_REF``."""

from __future__ import annotations

import json
from typing import IO

import click

from ..cli import loyalty_cli
from ..errors import NotFound
from ..state import get_state


@loyalty_cli.group("consent")
def consent_cli() -> None:
    """Consent: export a customer's data or erase it."""


@consent_cli.command("export")
@click.argument("customer_ref")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-",
              help="Write the JSON here (default: standard output).")
def export_command(customer_ref: str, output: IO[str]) -> None:
    """Print everything held on CUSTOMER_REF as JSON."""
    from ..services.consent import export

    try:
        data = export(get_state(), customer_ref)
    except NotFound:
        raise click.ClickException(f"no customer {customer_ref!r}") from None
    output.write(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


@consent_cli.command("erase")
@click.argument("customer_ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase_command(customer_ref: str, yes: bool) -> None:
    """Erase CUSTOMER_REF's personal data and withdraw every consent (cannot be undone)."""
    from ..services.consent import erase

    if not yes:
        click.confirm(f"Erase the personal data of customer {customer_ref!r}? This cannot be undone",
                      abort=True)
    try:
        erase(get_state(), customer_ref)
    except NotFound:
        raise click.ClickException(f"no customer {customer_ref!r}") from None
    click.echo(f"customer {customer_ref!r} erased")
