"""Translations and locale-aware formatting for what shoppers and mails show.

Catalogs live in ``flask_loyalty/translations/<locale>/LC_MESSAGES/``; every
compiled ``*.mo`` file there is loaded and merged, so each area of the
package keeps its own catalog (``core.po``, ``coupons.po`` ...).  The locale
is the customer's stored ``locale``, else the request's ``Accept-Language``,
else ``LOYALTY_DEFAULT_LOCALE``.  The shop owner's dashboard has its own
choice (:func:`admin_locale`) and activates its translator for the request,
so that services building dashboard labels can call :func:`gettext`.
"""

from __future__ import annotations

import gettext as _gettext
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date as _babel_format_date
from babel.dates import format_datetime as _babel_format_datetime
from babel.numbers import format_decimal as _babel_format_decimal
from babel.numbers import format_percent as _babel_format_percent
from babel.support import NullTranslations, Translations
from flask import g, has_app_context, has_request_context, render_template, request

from .clock import shop_zone
from .money import format_money as _format_money
from .state import LoyaltyState, get_state

TRANSLATIONS_DIR = Path(__file__).parent / "translations"
SHIPPED_LOCALES = ("en", "es", "ro", "ru")


def N_(message: str) -> str:  # noqa: N802 - the gettext convention
    """Mark a string for extraction without translating it now."""
    return message


@lru_cache(maxsize=32)
def _load(directory: str, locale: str) -> NullTranslations:
    folder = Path(directory) / locale / "LC_MESSAGES"
    merged: NullTranslations | None = None
    for mo in sorted(folder.glob("*.mo")) if folder.is_dir() else ():
        with mo.open("rb") as fh:
            catalog = Translations(fh, domain=mo.stem)
        if merged is None:
            merged = catalog
        else:
            assert isinstance(merged, Translations)
            merged.merge(catalog)
    return merged if merged is not None else NullTranslations()


def translations_for(locale: str) -> NullTranslations:
    """The merged catalog of ``locale`` (a null catalog for unknown locales)."""
    return _load(str(TRANSLATIONS_DIR), normalize_locale(locale) or "en")


def normalize_locale(value: str | None) -> str | None:
    """``"es-ES"`` -> ``"es"``; ``None`` or unparsable -> ``None``."""
    if not value:
        return None
    try:
        parsed = Locale.parse(value.replace("-", "_"))
    except (ValueError, UnknownLocaleError):
        return None
    return parsed.language


def supported_locales(state: LoyaltyState | None = None) -> tuple[str, ...]:
    """The locales offered to shoppers (``LOYALTY_LOCALES``)."""
    state = state or get_state()
    return tuple(state.config["LOYALTY_LOCALES"])


def choose_locale(customer_locale: str | None = None, *, state: LoyaltyState | None = None) -> str:
    """Customer's locale, else the request's Accept-Language, else the default."""
    state = state or get_state()
    offered = supported_locales(state)
    mine = normalize_locale(customer_locale)
    if mine in offered:
        return mine
    if has_request_context():
        # Highest quality first (werkzeug keeps that order), matched by language: "en-US,es;q=0.9"
        # is English, not the lower-quality exact "es".  q=0 means "not acceptable".
        for lang, quality in request.accept_languages:
            if quality <= 0:
                continue
            short = normalize_locale(lang)
            if short in offered:
                return short
    return default_locale(state)


def default_locale(state: LoyaltyState | None = None) -> str:
    """``LOYALTY_DEFAULT_LOCALE`` when offered, else the first of ``LOYALTY_LOCALES`` (a page is never
    shown in a language the shop chose not to offer), else ``"en"``.
    """
    state = state or get_state()
    offered = supported_locales(state)
    default = normalize_locale(state.config["LOYALTY_DEFAULT_LOCALE"]) or "en"
    if offered and default not in offered:
        return str(offered[0])
    return default


def admin_locale(state: LoyaltyState | None = None) -> str:
    """The dashboard's locale: ``LOYALTY_ADMIN_LOCALE`` when set, else the request's
    ``Accept-Language`` among ``LOYALTY_LOCALES``, else ``LOYALTY_DEFAULT_LOCALE``.
    """
    state = state or get_state()
    fixed = normalize_locale(state.config.get("LOYALTY_ADMIN_LOCALE"))
    if fixed:
        return fixed
    return choose_locale(None, state=state)


class Translator:
    """Gettext callables and formatters bound to one locale and the shop's time zone."""

    def __init__(self, locale: str, *, timezone: str = "UTC") -> None:
        self.locale = locale
        self.timezone = timezone
        self._catalog = translations_for(locale)

    def gettext(self, message: str, **variables: Any) -> str:
        """Translate ``message`` and interpolate ``%(name)s`` variables."""
        text = self._catalog.gettext(message)
        return text % variables if variables else text

    def ngettext(self, singular: str, plural: str, num: int, **variables: Any) -> str:
        """Plural-aware translation; ``num`` is available as ``%(num)d``."""
        variables.setdefault("num", num)
        return self._catalog.ngettext(singular, plural, num) % variables

    def money(self, amount: Decimal, currency: str) -> str:
        """Money in the locale's format."""
        return _format_money(amount, currency, self.locale)

    def number(self, value: Any, format: str | None = None) -> str:
        """A number with the locale's separators (``format`` is a Babel/CLDR pattern such as ``"#,##0.00"``)."""
        return _babel_format_decimal(value, format=format, locale=self.locale)

    def percent(self, value: Any, format: str | None = None) -> str:
        """A fraction (0.425) as a percentage in the locale's format (``42.5%``, ``42,5 %`` ...).

        Without ``format``: the locale's own percent pattern with one decimal.
        """
        if format is None:
            pattern = Locale.parse(self.locale).percent_formats[None].pattern
            format = pattern.replace("#,##0", "#,##0.0", 1) if "0.0" not in pattern else pattern
        return _babel_format_percent(value, format=format, locale=self.locale)

    def date(self, value: date | datetime, format: str = "long") -> str:
        """A calendar date; datetimes are shown in the shop's time zone."""
        if isinstance(value, datetime):
            value = value.astimezone(shop_zone(self.timezone)).date()
        return _babel_format_date(value, format=format, locale=self.locale)

    def datetime(self, value: datetime, format: str = "medium") -> str:
        """A moment in the shop's time zone."""
        return _babel_format_datetime(value, format=format, tzinfo=shop_zone(self.timezone),
                                      locale=self.locale)

    def context(self) -> dict[str, Any]:
        """Template variables: ``_``, ``gettext``, ``ngettext``, formatters, ``locale``."""
        return {"_": self.gettext, "gettext": self.gettext, "ngettext": self.ngettext,
                "format_money": self.money, "format_date": self.date,
                "format_datetime": self.datetime, "format_number": self.number,
                "format_percent": self.percent, "locale": self.locale,
                "text_direction": "ltr"}


def translator(locale: str | None = None, *, state: LoyaltyState | None = None) -> Translator:
    """A :class:`Translator` for ``locale`` (chosen with :func:`choose_locale`).

    Without ``locale`` during a dashboard request: the dashboard's translator (so its error pages follow it).
    """
    if locale is None:
        active = active_translator()
        if active is not None:
            return active
    state = state or get_state()
    return Translator(choose_locale(locale, state=state), timezone=state.config["LOYALTY_TIMEZONE"])


def admin_translator(state: LoyaltyState | None = None) -> Translator:
    """A :class:`Translator` for the dashboard (:func:`admin_locale`, the shop's time zone)."""
    state = state or get_state()
    return Translator(admin_locale(state), timezone=state.config["LOYALTY_TIMEZONE"])


#: Where the translator activated for the current request is kept (on ``flask.g``).
_ACTIVE_KEY = "_loyalty_active_translator"


def activate(tr: Translator) -> None:
    """Use ``tr`` for :func:`gettext` and :func:`active_translator` until the end of the current request."""
    setattr(g, _ACTIVE_KEY, tr)


def deactivate() -> None:
    """Forget the translator activated for the current request (labels fall back to English)."""
    if has_app_context():
        g.pop(_ACTIVE_KEY, None)


def active_translator() -> Translator | None:
    """The translator activated for the current request (the dashboard's), else ``None``."""
    if not has_app_context():
        return None
    tr = g.get(_ACTIVE_KEY)
    return tr if isinstance(tr, Translator) else None


def gettext(message: str, **variables: Any) -> str:
    """Translate ``message`` with the request's active translator (English without one).

    For labels built by services that the dashboard shows (chart titles,
    table captions, timeline lines): outside a dashboard request they stay
    English.  ``%(name)s`` variables are interpolated either way.
    """
    tr = active_translator()
    if tr is not None:
        return tr.gettext(message, **variables)
    return message % variables if variables else message


def render(template: str | Iterable[str], *, locale: str | None = None, tr: Translator | None = None,
           **context: Any) -> str:
    """Render a loyalty template with the translation helpers of ``locale`` (or of the translator ``tr``).

    Works inside and outside a request (mails are rendered by dispatchers).
    """
    state = get_state()
    tr = tr or translator(locale, state=state)
    ctx = tr.context()
    ctx.update(shop_name=state.config["LOYALTY_SHOP_NAME"])
    ctx.update(context)
    return render_template(template, **ctx)  # type: ignore[arg-type]


def python_gettext_catalog(locale: str) -> _gettext.NullTranslations:
    """The merged catalog as a plain gettext object (for host code)."""
    return translations_for(locale)
