"""Leaf & Bean, a small tea and coffee shop that shows how to use flask_loyalty.

Read it in this order: ``app.py`` (set-up: the three lines that add the
extension), ``models.py`` (the shop's own tables), ``views.py`` (catalogue,
cart, checkout — where the loyalty calls live), ``seed.py`` (a year of demo
history written through the public API).

Run it with ``python -m example_shop``; ``flask --app example_shop ...``
finds :func:`create_app`.
"""

from .app import create_app, db, loyalty

__all__ = ["create_app", "db", "loyalty"]
