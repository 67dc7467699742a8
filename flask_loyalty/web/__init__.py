"""Thin blueprints over the services: shopper pages, JSON API, admin dashboard."""

from __future__ import annotations

from flask import Blueprint, Flask

from ..state import LoyaltyState
from .common import install_error_handlers, make_blueprint


def register_blueprint(state: LoyaltyState, blueprint: Blueprint) -> None:
    """Register an area's blueprint under ``LOYALTY_URL_PREFIX`` with the friendly error pages."""
    prefix = state.config["LOYALTY_URL_PREFIX"].rstrip("/")
    install_error_handlers(blueprint)
    state.app.register_blueprint(blueprint, url_prefix=prefix + (blueprint.url_prefix or ""))


def register_blueprints(app: Flask, state: LoyaltyState) -> None:
    """Register the shared ``loyalty`` blueprint (static files, templates)."""
    register_blueprint(state, make_blueprint())
