"""Every ``LOYALTY_`` configuration key, with its default and a one-line meaning.

This module is the single place where configuration keys live.  ``init_app``
``setdefault``-s each of them on ``app.config``; the configuration reference
in the docs is generated from :data:`SETTINGS`.

Areas of the package add their keys to their own section below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One configuration key: its default value and what it means."""

    key: str
    default: Any
    doc: str


SETTINGS: list[Setting] = [
    # --- core -----------------------------------------------------------
    Setting("LOYALTY_URL_PREFIX", "/loyalty", "URL prefix of every page and endpoint the extension registers."),
    Setting("LOYALTY_TIMEZONE", "UTC", "IANA time zone of the shop: expiry dates, birthdays and weekly caps use it."),
    Setting("LOYALTY_CURRENCY", "EUR", "Default ISO 4217 currency of amounts given without one."),
    Setting("LOYALTY_DEFAULT_LOCALE", "en", "Locale used when neither the customer nor the request names a supported one."),
    Setting("LOYALTY_LOCALES", ("en", "es", "ro", "ru"), "Locales offered to shoppers (each needs a shipped or host catalog)."),
    Setting("LOYALTY_BASE_URL", None, "Absolute base URL for links in mails (e.g. https://shop.example); else the request's host."),
    Setting("LOYALTY_SHOP_NAME", "Our shop", "Shop name shown on shopper pages, coupon cards and mails."),
    Setting("LOYALTY_SECRET_KEY_FALLBACKS", (), "Older secret keys still accepted for signed links (key rotation); Flask's SECRET_KEY_FALLBACKS is honoured too."),
    Setting("LOYALTY_SQLITE_BUSY_TIMEOUT", 30.0, "Seconds a SQLite writer waits for the database lock before giving up."),
    Setting("LOYALTY_POINTS_PER_UNIT", 1, "Points earned per whole currency unit of a purchase's total (0 disables points)."),
    Setting("LOYALTY_REF_MAX_LENGTH", 64, "Longest accepted customer or order reference."),
    Setting("LOYALTY_TOKEN_MAX_AGE", {}, "Per-purpose maximum age of signed links in seconds, e.g. {'survey': 2592000}; unsubscribe links always live at least 60 days."),
    Setting("LOYALTY_IP_HASH_SALT", None, "Salt for hashing IP addresses; defaults to a value derived from SECRET_KEY."),
    # --- coupons and gift cards ----------------------------------------
    # --- consent --------------------------------------------------------
    # --- survey ---------------------------------------------------------
    # --- plan and delivery ----------------------------------------------
    # --- customer value and rewards -------------------------------------
    # --- dashboard ------------------------------------------------------
]

DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}


def apply_defaults(config: dict[str, Any]) -> None:
    """``setdefault`` every known key on a Flask config mapping."""
    for setting in SETTINGS:
        value = setting.default
        if isinstance(value, (dict, list)):
            value = type(value)(value)  # never share a mutable default between apps
        config.setdefault(setting.key, value)
