"""Thin blueprints over the services: shopper pages, JSON API, admin dashboard."""

from __future__ import annotations

from flask import Blueprint, Flask

from ..state import LoyaltyState
from .common import install_error_handlers

#: Functions returning the blueprints each area registers (appended per area).
BLUEPRINT_FACTORIES: list[str] = [
    "flask_loyalty.web.common:make_blueprint",
]


def register_blueprints(app: Flask, state: LoyaltyState) -> None:
    """Register every loyalty blueprint under ``LOYALTY_URL_PREFIX``."""
    import importlib

    prefix = app.config["LOYALTY_URL_PREFIX"].rstrip("/")
    for spec in BLUEPRINT_FACTORIES:
        module_name, func = spec.split(":")
        blueprint: Blueprint = getattr(importlib.import_module(module_name), func)()
        install_error_handlers(blueprint)
        app.register_blueprint(blueprint, url_prefix=prefix + (blueprint.url_prefix or ""))
