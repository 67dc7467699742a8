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
    Setting("LOYALTY_DEFAULT_LOCALE", "en", "Locale used when neither the customer nor the request names a supported one; when LOYALTY_LOCALES does not offer it, the first of LOYALTY_LOCALES."),
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
    Setting("LOYALTY_COUPONS_PER_ORDER", 1, "Stacking policy: how many coupons one order may use at once."),
    Setting("LOYALTY_COUPON_CODE_LENGTH", 12, "Random characters in a generated coupon code (at least 10; each carries ~4.9 bits)."),
    Setting("LOYALTY_COUPON_CODE_PREFIX", "", "Prefix put in front of every generated coupon code (e.g. 'SHOP')."),
    Setting("LOYALTY_GIFT_CARD_CODE_LENGTH", 16, "Random characters in a gift card code (at least 12; a gift card is a bearer instrument)."),
    Setting("LOYALTY_RELEASE_COUPONS_ON_REFUND", True, "A full refund of an order releases the coupons it used, so they can be used again."),
    Setting("LOYALTY_VALIDATE_RATE_LIMIT", "10/minute", "Rate limit of POST /api/coupons/validate, per client IP and per customer ('limits' notation)."),
    Setting("LOYALTY_RATELIMIT_STORAGE_URI", None, "Storage of the rate limiter, e.g. redis://127.0.0.1:6379; None keeps counters in process memory."),
    Setting("LOYALTY_WALLET_PRINT_LIMIT", 40, "Most coupon cards put on one printable page."),
    # --- consent --------------------------------------------------------
    Setting("LOYALTY_CONSENT_PURPOSES", ("email_marketing", "surveys", "postal_mail", "personalization"), "Consent purposes offered to shoppers: names of built-in purposes, or a dict name -> {'label': ..., 'wording': ...} (built-in names may omit both)."),
    Setting("LOYALTY_DOUBLE_OPT_IN", {"email_marketing": True}, "Purposes whose grant stays pending until the mailed confirmation link is followed: True/False for all, or a dict purpose -> bool."),
    Setting("LOYALTY_OPT_IN_TTL_DAYS", 7, "Days a pending double opt-in (and its confirmation link) stays valid."),
    Setting("LOYALTY_OPT_IN_RESEND_MINUTES", 15, "Minimum minutes between two confirmation mails for the same customer and purpose."),
    Setting("LOYALTY_OPT_IN_CONFIRM_BUTTON", False, "True: a double opt-in link shows a button and only its POST confirms, so mail scanners that open every link confirm nothing; False: following the link (GET) confirms."),
    Setting("LOYALTY_OPT_IN_MAX_SENDS", 3, "Most confirmation mails sent for one pending grant (re-granting asks again at most this often)."),
    Setting("LOYALTY_CONSENT_FORM_MAX_AGE", 86400, "Seconds a rendered consent form (capture fields, preference-center forms) stays valid for submission."),
    # --- survey ---------------------------------------------------------
    Setting("LOYALTY_SURVEY_QUESTIONS", None, "The survey's questions: None for the default set (source, experience, ease, recommend, comment) or a list of question dicts {'id', 'type' (choice, scale, text, yes_no), 'label', ...} and/or ids of default questions; validated at init_app."),
    Setting("LOYALTY_SURVEY_EXTRA_QUESTIONS", (), "Questions appended to the survey's set (same form as LOYALTY_SURVEY_QUESTIONS), e.g. to extend the default set."),
    Setting("LOYALTY_SURVEY_REWARD", None, "Coupon rule issued once per answered order when the shopper completes the survey, e.g. {'kind': 'percent', 'value': '5', 'valid_days': 60} (coupons.create rules plus valid_days); None for no reward."),
    Setting("LOYALTY_ALERT_EMAIL", None, "Address that gets a detractor_alert mail when a survey answer shows an unhappy customer (recommend <= 6 or experience <= 2); None: signal only."),
    # --- plan and delivery ----------------------------------------------
    Setting("LOYALTY_PLAN", {}, "Steps of the communication plan: step name -> False (switched off) or a dict overriding its defaults, e.g. {'usage_guide': {'delay_days': 5}, 'win_back': False}. Steps: thank_you, usage_guide, survey_invite, replenish, birthday, win_back."),
    Setting("LOYALTY_WELCOME_COUPON", {"kind": "percent", "value": "10", "valid_days": 60}, "Personal coupon in the thank-you mail after a first purchase (coupons.create rules plus valid_days); None for no coupon."),
    Setting("LOYALTY_BIRTHDAY_COUPON", {"kind": "percent", "value": "15", "valid_days": 30}, "Personal coupon in the birthday mail (coupons.create rules plus valid_days); None for no coupon."),
    Setting("LOYALTY_SURVEY_ONE_CLICK_STORES", True, "True: opening a score link of the survey mail (?recommend=N) stores that score at once; False: it only preselects the score and the shopper's Send stores it, so mail scanners that open every link store nothing."),
    Setting("LOYALTY_SURVEY_DELAY_DAYS", 10, "Days after an order (roughly after delivery) that the survey_invite mail is due."),
    Setting("LOYALTY_WIN_BACK_COUPON", None, "Optional personal coupon in the win-back mail (coupons.create rules plus valid_days)."),
    Setting("LOYALTY_WIN_BACK_FACTOR", 3.0, "A repeat customer is written a win-back mail when their silence exceeds this many times their usual interval between orders."),
    Setting("LOYALTY_WIN_BACK_DAYS", 120, "Days of silence after which a one-time buyer is written a win-back mail."),
    Setting("LOYALTY_MAX_MARKETING_PER_WEEK", 1, "At most this many marketing messages per customer per rolling 7 days; more are deferred to the next free slot."),
    Setting("LOYALTY_MAIL_TRANSPORT", "outbox", "'smtp', 'outbox' (keep rendered mails in the database only) or a callable send(email.message.EmailMessage) that raises on failure."),
    Setting("LOYALTY_SMTP_HOST", "localhost", "SMTP server host."),
    Setting("LOYALTY_SMTP_PORT", 25, "SMTP server port."),
    Setting("LOYALTY_SMTP_USERNAME", None, "SMTP user name (AUTH only when set)."),
    Setting("LOYALTY_SMTP_PASSWORD", None, "SMTP password."),
    Setting("LOYALTY_SMTP_SECURITY", "none", "'none', 'starttls' or 'tls' (implicit TLS, usually port 465)."),
    Setting("LOYALTY_SMTP_CONNECTIONS", 3, "SMTP connections each dispatcher sends over in parallel (one thread each)."),
    Setting("LOYALTY_SMTP_TIMEOUT", 30.0, "Seconds to wait for the SMTP server."),
    Setting("LOYALTY_MAIL_SENDER", "shop@localhost", "From address of transactional mails (e.g. 'Shop <shop@example.com>')."),
    Setting("LOYALTY_MARKETING_SENDER", None, "From address of marketing mails; defaults to LOYALTY_MAIL_SENDER."),
    Setting("LOYALTY_UNSUBSCRIBE_MAILTO", None, "Optional address for a mailto: entry in List-Unsubscribe of marketing mails."),
    Setting("LOYALTY_MESSAGE_ID_DOMAIN", None, "Domain of generated Message-IDs; defaults to the host of LOYALTY_BASE_URL."),
    Setting("LOYALTY_MAX_ATTEMPTS", 8, "Send attempts before a message is marked failed and message_failed fires."),
    Setting("LOYALTY_RETRY_BACKOFF", 60, "Seconds before the first retry; doubled after each failed attempt."),
    Setting("LOYALTY_RETRY_MAX_BACKOFF", 6 * 3600, "Longest wait between two attempts, in seconds."),
    Setting("LOYALTY_DISPATCH_LEASE", 300, "Seconds a dispatcher holds the rows it claimed; after that a crashed dispatcher's rows are claimed again."),
    Setting("LOYALTY_DISPATCH_ASYNC_COMMIT", True, "PostgreSQL: record deliveries without waiting for the WAL flush (much faster; if the database server itself crashes, the last fraction of a second of mails may be sent again with the same Message-ID)."),
    Setting("LOYALTY_DISPATCH_BATCH", 100, "Rows a dispatcher claims at once."),
    Setting("LOYALTY_TRACKING", True, "Record opens (pixel) and clicks (signed redirects) of marketing mails; False switches tracking off for the shop."),
    # --- customer value and rewards -------------------------------------
    # value: profiles, RFM, lifetime value, stage, segments (services/analytics.py, segments.py)
    Setting("LOYALTY_DEFAULT_MARGIN", "0.30", "Gross margin (fraction of the price, 0-1) assumed for items without unit_cost and orders without items; used for lifetime value and profit."),
    Setting("LOYALTY_CLV_HORIZON_DAYS", 365, "Days ahead over which predicted lifetime value and expected purchases are computed."),
    Setting("LOYALTY_CLV_DISCOUNT_RATE", "0.10", "Yearly discount rate applied to future profit in predicted lifetime value (0.10 = 10% a year)."),
    Setting("LOYALTY_CLV_MIN_CUSTOMERS", 200, "Fewest buyers needed to fit the BG/NBD and Gamma-Gamma models; with fewer, profiles use the documented heuristic."),
    Setting("LOYALTY_CLV_MIN_REPEAT_CUSTOMERS", 50, "Fewest buyers with a repeat purchase (on a later day) needed to fit the models."),
    Setting("LOYALTY_CLV_FIT_SAMPLE", 50000, "At most this many buyers (a fixed-seed random sample) are used to fit the models; predictions cover every buyer."),
    Setting("LOYALTY_REWARD_TOP_SHARE", "0.30", "Top share of buyers by lifetime value that the 'reward' stage and the built-in segment top_30_clv take."),
    Setting("LOYALTY_LOYAL_SUBSCRIBED_DAYS", 183, "Loyalty indicator: marketing consent held at least this many days and a purchase in that many last days."),
    Setting("LOYALTY_RECOMPUTE_WORK_MEM", "256MB", "PostgreSQL work_mem set for the recompute transaction only (SET LOCAL); None keeps the server's setting."),
    Setting("LOYALTY_RECOMPUTE_CONNECTIONS", 2, "PostgreSQL: connections that rebuild the purchase summary at once on a first run or a rebuild, and insert a first run's profiles, each for a share of the customers (about the cores the database server can spare); above 1, a nightly run also reads its model input on one more connection while it refreshes the summary; 1 does it all in the recompute's own transaction."),
    # rewards: points, tiers, referrals, raffles, campaigns (services/points.py, tiers.py, referrals.py ...)
    Setting("LOYALTY_POINTS_REDEMPTION", {"points": 100, "value": "5.00"}, "Points redemption rate: each multiple of 'points' turns into a personal fixed coupon worth 'value' (in LOYALTY_CURRENCY)."),
    Setting("LOYALTY_POINTS_COUPON_VALID_DAYS", 365, "Days a coupon bought with points stays valid (None: no expiry)."),
    Setting("LOYALTY_POINTS_EXPIRE_DAYS", None, "Points expire after this many days without a purchase or redemption (None: points never expire)."),
    Setting("LOYALTY_POINTS_EXPIRY_WARNING_DAYS", 14, "Days before points expire that the points_expiring mail is scheduled."),
    Setting("LOYALTY_TIERS", [], "Tiers of the cumulative programme: list of {'name', 'min_spend', 'window_days' (None: lifetime), 'discount_percent', 'points_multiplier'}; validated at set-up."),
    Setting("LOYALTY_REFERRAL_ENABLED", True, "Handle referral codes given to record_purchase (rewards, fraud rules)."),
    Setting("LOYALTY_REFERRAL_REFUND_WINDOW_DAYS", 30, "Days after the friend's first order before the advocate is rewarded (the order must not be refunded by then)."),
    Setting("LOYALTY_REFERRAL_FRIEND_REWARD", {"kind": "fixed", "value": "5.00", "valid_days": 90}, "Coupon given to a referred friend after their first order: coupon kind, value and days valid."),
    Setting("LOYALTY_REFERRAL_ADVOCATE_REWARD", {"kind": "fixed", "value": "10.00", "valid_days": 180}, "Coupon given to the advocate once the friend's order is past the refund window."),
    Setting("LOYALTY_REFERRAL_MAX_PER_IP_PER_WEEK", 3, "Referred first orders accepted from one IP address in 7 days; more are recorded as fraud (reason ip_limit)."),
    Setting("LOYALTY_REFERRAL_LANDING_URL", None, "Where the referral link /r/<code> sends the visitor (default: LOYALTY_BASE_URL or the request's host)."),
    Setting("LOYALTY_REFERRAL_COOKIE", "loyalty_ref", "Cookie in which the referral landing page keeps the code for the host's checkout."),
    Setting("LOYALTY_CAMPAIGN_HOLDOUT_SHARE", 0.1, "Default share of a campaign's segment kept as a holdout group that gets nothing."),
    # --- dashboard ------------------------------------------------------
    Setting("LOYALTY_ADMIN_GUARD", None, "Callable (or 'module:function' string) returning True when the current request may see the dashboard; without it (or loyalty.admin_guard) every admin URL answers 403."),
    Setting("LOYALTY_ADMIN_IDENTITY", None, "Callable (or 'module:function' string) returning who the current admin is, written into the audit trail; 'unknown' without it."),
    Setting("LOYALTY_ADMIN_PERIOD_DAYS", 30, "Default length in days of the dashboard's overview period (compared with the period before it)."),
    Setting("LOYALTY_ADMIN_PAGE_SIZE", 50, "Rows per page in the dashboard's lists (outbox, coupons, survey answers, audit)."),
    Setting("LOYALTY_ADMIN_LOCALE", None, "Language of the dashboard (en, es, ro or ru); None: the request's Accept-Language among LOYALTY_LOCALES, else LOYALTY_DEFAULT_LOCALE."),
    Setting("LOYALTY_ADMIN_ATTRIBUTION_DAYS", 7, "A purchase within this many days after a mail was clicked counts as 'bought' in the mail funnel."),
]

DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}


def apply_defaults(config: dict[str, Any]) -> None:
    """``setdefault`` every known key on a Flask config mapping."""
    for setting in SETTINGS:
        value = setting.default
        if isinstance(value, (dict, list)):
            value = type(value)(value)  # never share a mutable default between apps
        config.setdefault(setting.key, value)
