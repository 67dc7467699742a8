"""A believable year of history, written through flask_loyalty's public API.

About 2,000 customers and 8,000 orders across the four channels, with
consents, coupon redemptions, refunds, survey answers and the mails of the
communication plan, so the dashboard shows real figures at first start.
Everything is deterministic (one seeded random generator) and fast: the
loyalty calls use ``commit=False`` and the seed commits in batches, exactly
as a host importing its order history would.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from html import unescape
from typing import Any
from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from flask_loyalty import CouponError

from .app import db, loyalty
from .catalogue import CATEGORIES, PRODUCTS
from .models import Account, Category, Order, OrderLine, Product, cents, money

STAFF_EMAIL = "staff@leafandbean.test"
BATCH = 500
#: The communication plan has been on for this many weeks; older orders are imported history.
PLAN_WEEKS = 6
#: The win-back campaign (with a 20% holdout) was launched this many days ago.
CAMPAIGN_DAYS_AGO = 28
PLAN_STEPS = ("thank_you", "usage_guide", "survey_invite", "replenish", "birthday", "win_back")

NAMES = {
    "en": (["Olivia", "Amelia", "Isla", "Ava", "Mia", "Grace", "Jack", "Noah", "Oliver", "George", "Harry", "Leo",
            "Ella", "Ruby", "Thomas", "James"],
           ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Evans", "Walker", "Wright", "Hughes",
            "Green", "Hall", "Clarke", "Wood"]),
    "es": (["Lucía", "Sofía", "Martina", "María", "Julia", "Paula", "Hugo", "Martín", "Lucas", "Mateo", "Pablo",
            "Daniel", "Carmen", "Alba", "Javier", "Elena"],
           ["García", "Rodríguez", "González", "Fernández", "López", "Martínez", "Sánchez", "Pérez", "Gómez",
            "Martín", "Jiménez", "Ruiz", "Moreno", "Navarro"]),
    "ro": (["Maria", "Elena", "Ioana", "Andreea", "Ana", "Alexandra", "Andrei", "Mihai", "Alexandru", "Ionuț",
            "Ștefan", "Gabriel", "Cristina", "Bianca", "Radu", "Vlad"],
           ["Popescu", "Ionescu", "Popa", "Pop", "Dumitru", "Stan", "Stoica", "Gheorghe", "Matei", "Ciobanu",
            "Rusu", "Munteanu", "Constantin", "Marin"]),
    "ru": (["Анна", "Мария", "Елена", "Ольга", "Наталья", "Татьяна", "Александр", "Дмитрий", "Сергей", "Андрей",
            "Иван", "Михаил", "Екатерина", "Ирина", "Алексей", "Павел"],
           ["Иванов", "Смирнов", "Кузнецов", "Попов", "Соколов", "Лебедев", "Козлов", "Новиков", "Морозов",
            "Петров", "Волков", "Соловьёв", "Васильев", "Зайцев"]),
}
LOCALE_WEIGHTS = {"en": 40, "es": 30, "ro": 18, "ru": 12}
CHANNEL_WEIGHTS = {"online": 62, "store": 24, "catalog": 8, "phone": 6}
_TRANSLIT = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z", "и": "i", "й": "y",
    "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f",
    "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu",
    "я": "ya", "á": "a", "é": "e", "í": "i", "ó": "o", "ú": "u", "ñ": "n", "ă": "a", "â": "a", "î": "i",
    "ș": "s", "ț": "t"})


def _ascii(text: str) -> str:
    return text.lower().translate(_TRANSLIT)


@dataclass
class SeedReport:
    """What :func:`seed` wrote, for the console."""

    customers: int = 0
    orders: int = 0
    redemptions: int = 0
    refunds: int = 0
    consents: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        extra = "".join(f", {v} {k}" for k, v in self.extra.items())
        return (f"{self.customers} customers, {self.orders} orders, {self.redemptions} coupon redemptions, "
                f"{self.refunds} refunds, {self.consents} consents{extra} in {self.seconds:.1f} s")


def is_seeded() -> bool:
    """True once the catalogue exists (the demo seeds on first start only)."""
    return bool(db.session.scalar(select(func.count()).select_from(Product)))


def seed_catalogue() -> dict[str, Product]:
    """Categories, products and the demo staff account."""
    categories = {slug: Category(slug=slug, name=name) for slug, name in CATEGORIES.items()}
    products = {}
    for slug, sku, name, price, cost, lasts, description in PRODUCTS:
        products[sku] = Product(sku=sku, name=name, category=categories[slug], price_cents=price, cost_cents=cost,
                                replenish_after_days=lasts, description=description)
    db.session.add_all([*categories.values(), *products.values()])
    db.session.add(Account(email=STAFF_EMAIL, name="Sam (staff)", language="en", is_staff=True))
    db.session.commit()
    return products


def seed(*, customers: int = 2000, orders: int = 8000, now: datetime | None = None,
         echo: Callable[[str], Any] = print, rng_seed: int = 2026) -> SeedReport:
    """Write the demo catalogue and a year of history ending at ``now`` (default: this moment).

    A bulk load: the session does not expire its objects on commit while it
    runs.  The seed keeps its 2,000 accounts in hand and commits hundreds of
    times; expiring them at each commit made SQLAlchemy reload every account
    it touched next with a query of its own (about 8 s of a 65 s seed).  The
    flag is restored afterwards; the tracking requests the seed replays
    through the test client run in this same session while it is off.
    """
    session = db.session()
    expire_on_commit = session.expire_on_commit
    session.expire_on_commit = False
    try:
        return _seed(customers=customers, orders=orders, now=now, echo=echo, rng_seed=rng_seed)
    finally:
        session.expire_on_commit = expire_on_commit


def _seed(*, customers: int, orders: int, now: datetime | None, echo: Callable[[str], Any],
          rng_seed: int) -> SeedReport:
    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    rng = random.Random(rng_seed)
    report = SeedReport()
    products = list(seed_catalogue().values())
    echo(f"catalogue: {len(products)} products")

    # A public campaign code at the till and in the catalogue; personal coupons come from the plan.
    loyalty.coupons.create(kind="percent", value=Decimal(10), code="AUTUMN10", max_uses=600,
                           starts_at=now - timedelta(days=400), expires_at=now + timedelta(days=60),
                           campaign="autumn", commit=False)

    # --- customers: accounts in the shop, customers in the programme ---------------
    start = now - timedelta(days=365)
    accounts: list[Account] = []
    joined_at: dict[int, datetime] = {}  # by position; SQLite hands datetimes back naive
    consents: dict[int, set[str]] = {}
    for n in range(customers):
        locale = rng.choices(list(LOCALE_WEIGHTS), weights=list(LOCALE_WEIGHTS.values()))[0]
        first, last = rng.choice(NAMES[locale][0]), rng.choice(NAMES[locale][1])
        birthday = (date(rng.randint(1950, 2004), rng.randint(1, 12), rng.randint(1, 28))
                    if rng.random() < 0.7 else None)
        joined = start + timedelta(days=rng.random() ** 1.3 * 360)
        accounts.append(Account(email=f"{_ascii(first)}.{_ascii(last)}.{n}@example.com", name=f"{first} {last}",
                                language=locale, birthday=birthday, created_at=joined))
        joined_at[n] = joined
    db.session.add_all(accounts)
    db.session.flush()
    for account in accounts:
        # Importing the customer list: the same call a sign-up form makes.
        loyalty.upsert_customer(account.ref, email=account.email, name=account.name, locale=account.language,
                                birthday=account.birthday, commit=False)
        consents[account.id] = seed_consents(rng, account)
        report.consents += len(consents[account.id])
    db.session.commit()
    report.customers = len(accounts)
    echo(f"customers: {report.customers}, consents: {report.consents}")

    # --- orders: a few customers buy often, most once or twice (about 30% bring 70%) ---
    weights = [rng.paretovariate(1.3) for _ in accounts]
    scale = 1.2 * (orders - len(accounts)) / sum(weights)  # a little more than needed; sampled down below
    firsts: list[tuple[datetime, Account]] = []
    repeats: list[tuple[datetime, Account]] = []
    for n, (account, weight) in enumerate(zip(accounts, weights, strict=True)):
        span = max((now - joined_at[n]).total_seconds(), 3600)
        firsts.append((joined_at[n], account))
        repeats += [(joined_at[n] + timedelta(seconds=rng.random() * span), account)
                    for _ in range(int(weight * scale + rng.random()))]
    wanted = max(orders - len(firsts), 0)
    history = sorted(firsts + (rng.sample(repeats, wanted) if len(repeats) > wanted else repeats),
                     key=lambda pair: pair[0])
    channel_of = {a.id: rng.choices(list(CHANNEL_WEIGHTS), weights=list(CHANNEL_WEIGHTS.values()))[0]
                  for a in accounts}

    # The shop switched the communication plan on PLAN_WEEKS ago: older orders are imported history
    # and must not trigger thank-you or replenishment mails now.  From then on the dispatcher ran; the
    # seed runs it once a simulated week, and the time-based plan (birthdays, win-back) once at the end.
    switched_on = now - timedelta(weeks=PLAN_WEEKS)
    tick = switched_on
    with plan_switched_off():
        for index, (placed, account) in enumerate(history, start=1):
            if placed >= switched_on:
                break
            write_order(rng, index, placed, account, products, channel_of[account.id], now, report)
            if index % BATCH == 0:
                db.session.commit()
                echo(f"orders: {index}/{len(history)}")
        db.session.commit()
    shoppers: dict[int, Account] = {}
    joined_at_of = {account.id: joined_at[n] for n, account in enumerate(accounts)}
    last_order = {account.id: (placed, account) for placed, account in history[:report.orders]}
    pending = history[report.orders:]
    campaign_at: datetime | None = now - timedelta(days=CAMPAIGN_DAYS_AGO)
    index = report.orders
    position = 0
    while position < len(pending):
        placed, account = pending[position]
        if campaign_at is not None and placed >= campaign_at:
            # the win-back campaign is launched; some of the customers it reached come back
            pending[position:] = sorted(pending[position:] + run_campaign(rng, campaign_at, last_order, report),
                                        key=lambda pair: pair[0])
            campaign_at = None
            continue
        position += 1
        index += 1
        while placed >= tick:
            run_jobs(tick, report)
            tick += timedelta(days=7)
        referral = None
        if placed == joined_at_of[account.id] and shoppers and rng.random() < 0.15:
            # a new customer who came through a friend's referral link
            referral = loyalty.referrals.code_for(rng.choice(list(shoppers.values())).ref, commit=False)
        write_order(rng, index, placed, account, products, channel_of[account.id], now, report, plan_on=True,
                    referral_code=referral)
        report.extra["referred orders"] = report.extra.get("referred orders", 0) + (referral is not None)
        shoppers[account.id] = account
        last_order[account.id] = (placed, account)
        if index % BATCH == 0:
            db.session.commit()
            echo(f"orders: {index}/{len(history)}")
    db.session.commit()
    # Rewards, alerts and tier mails are queued at the moment of seeding: the last run sends them too.
    end = max(now, datetime.now(timezone.utc))
    run_jobs(end, report, plan=True)  # also rewards the advocates whose friends' orders are past the refund window
    engage(rng, list(shoppers.values()), now, report)
    run_jobs(max(now, datetime.now(timezone.utc)), report)  # the survey rewards and alerts just queued
    echo(f"orders: {report.orders}, mails sent: {report.extra.get('mails sent', 0)}")

    seed_rewards(rng, accounts, now, report)
    # Customer value (RFM, lifetime value, stages, segments, tiers) as the nightly job computes it.
    report.extra["profiles"] = loyalty.analytics.recompute(now=now)
    report.seconds = time.perf_counter() - started
    return report


@contextmanager
def plan_switched_off() -> Iterator[None]:
    """Every step of the communication plan off (``LOYALTY_PLAN``) while importing older orders."""
    config = current_app.config
    saved = config["LOYALTY_PLAN"]
    config["LOYALTY_PLAN"] = {name: False for name in PLAN_STEPS}
    try:
        yield
    finally:
        config["LOYALTY_PLAN"] = saved


def run_campaign(rng: random.Random, at: datetime, last_order: dict[int, tuple[datetime, Account]],
                 report: SeedReport) -> list[tuple[datetime, Account]]:
    """A two-week win-back offer to lapsed customers, with a holdout; the orders it brought back."""
    lapsed = [account for placed, account in last_order.values() if at - placed > timedelta(days=90)]
    if len(lapsed) < 20:
        return []
    # The shop's marketing people would do this in the dashboard or with `flask loyalty campaigns`.
    loyalty.campaigns.create(
        "come-back", customer_refs=[a.ref for a in lapsed], holdout_share=0.2,
        offer={"kind": "percent", "value": "15", "min_order_total": "25"},
        starts_at=at, ends_at=at + timedelta(days=14), subject="15% off: we have new teas",
        headline="It has been a while", commit=False)
    loyalty.campaigns.launch("come-back", now=at, commit=False)
    db.session.commit()
    offered = {a.ref: a for a in lapsed if a.ref in set(loyalty.campaigns.members("come-back", "treatment"))}
    back = [(at + timedelta(days=rng.uniform(0.5, 13.5)), account) for account in offered.values()
            if rng.random() < 0.08]
    report.extra["win-back offers"] = len(offered)
    return back


def run_jobs(now: datetime, report: SeedReport, *, plan: bool = False) -> None:
    """What cron runs: the time-based plan steps (birthday, win-back ...), then the dispatcher."""
    if plan:
        report.extra["planned"] = report.extra.get("planned", 0) + loyalty.plan(now=now)
    sent = loyalty.dispatch(now=now).sent
    report.extra["mails sent"] = report.extra.get("mails sent", 0) + sent


def engage(rng: random.Random, shoppers: list[Account], now: datetime, report: SeedReport) -> None:
    """What the shoppers did with their mails: opened and clicked some, answered a third of the surveys.

    Opens and clicks go through the tracking URLs in the sent mails (the shop's own HTTP endpoints, as
    a mail client would call them); survey answers through ``loyalty.surveys.answer``, back-dated to a
    day or two after the invitation.
    """
    client = current_app.test_client()
    opened = clicked = answered = 0
    for account in shoppers:
        for message in loyalty.messages.for_customer(account.ref):
            if message.status != "sent":
                continue
            if message.kind == "survey_invite" and message.order_ref and rng.random() < 0.35:
                sent = message.sent_at
                assert sent is not None
                when = min(sent + timedelta(hours=rng.uniform(2, 60)), now)
                result = loyalty.surveys.answer(message.order_ref, survey_answers(rng, account.language),
                                                channel="page", now=when, commit=False)
                answered += result.stored
                db.session.commit()  # before the tracking requests below, which write in their own session
            if message.marketing and message.body_html:
                links = re.findall(r'href="([^"]+)"', message.body_html) + re.findall(r'src="([^"]+)"',
                                                                                      message.body_html)
                if rng.random() < 0.45:
                    opened += track(client, [u for u in links if "/t/o/" in u][:1])
                    if rng.random() < 0.3:
                        clicked += track(client, [u for u in links if "/t/c/" in u][:1])
    report.extra.update({"survey answers": answered, "mails opened": opened, "mails clicked": clicked})


def track(client: Any, urls: list[str]) -> int:
    """Follow one tracking URL of a mail (open pixel or click redirect); 1 when it was recorded."""
    for url in urls:
        response = client.get(urlsplit(unescape(url))._replace(scheme="", netloc="").geturl())
        response.close()
        return 1 if response.status_code in (200, 302, 303) else 0
    return 0


def seed_rewards(rng: random.Random, accounts: list[Account], now: datetime, report: SeedReport) -> None:
    """Points turned into coupons, a few gift cards, consent withdrawals and two segments."""
    redeemed = 0
    for account in accounts:
        balance = loyalty.points.balance(account.ref)
        if balance >= 300 and rng.random() < 0.25:
            loyalty.points.redeem(account.ref, 100 * (balance // 300), commit=False)  # a coupon from points
            redeemed += 1
        if rng.random() < 0.04 and loyalty.consent.has(account.ref, "email_marketing"):
            loyalty.consent.withdraw(account.ref, "email_marketing", source="preference_center", commit=False)
    for _ in range(40):
        card = loyalty.gift_cards.issue(Decimal(rng.choice((20, 25, 50))), customer_ref=rng.choice(accounts).ref,
                                        expires_at=now + timedelta(days=365), commit=False)
        if rng.random() < 0.5:
            loyalty.gift_cards.charge(card.code, Decimal("12.50"), order_ref=f"GC-{card.id}", commit=False)
    loyalty.segments.define("regulars", {"frequency": {">=": 3}, "recency_days": {"<=": 90}}, commit=False)
    loyalty.segments.define("lapsed_big_spenders", {"monetary": {">=": 150}, "recency_days": {">": 120}},
                            commit=False)
    db.session.commit()
    report.extra["points redemptions"] = redeemed
    report.extra["gift cards"] = 40


def seed_consents(rng: random.Random, account: Account) -> set[str]:
    """Consent given at sign-up, as the sign-up form records it (double opt-in already confirmed)."""
    granted = set()
    for purpose, share in (("email_marketing", 0.55), ("surveys", 0.65), ("personalization", 0.4),
                           ("postal_mail", 0.1)):
        if rng.random() < share:
            loyalty.consent.grant(account.ref, purpose, source="signup", wording="sign-up form v1",
                                  double_opt_in=False, commit=False)
            granted.add(purpose)
    return granted


def write_order(rng: random.Random, index: int, placed: datetime, account: Account, products: list[Product],
                channel: str, now: datetime, report: SeedReport, *, plan_on: bool = False,
                referral_code: str | None = None) -> None:
    """One historical order: the shop's row, the coupon it may use and the checkout hook."""
    # 1-4 lines, consumables more often than gear
    chosen = rng.sample(products, k=rng.choices((1, 2, 3, 4), weights=(45, 30, 17, 8))[0])
    lines = [(p, rng.choices((1, 2, 3), weights=(75, 20, 5))[0]) for p in chosen
             if p.replenish_after_days or rng.random() < 0.5] or [(chosen[0], 1)]
    subtotal = sum(p.price_cents * q for p, q in lines)
    order = Order(ref=f"LB-{100000 + index}", account=account, channel=channel, placed_at=placed,
                  subtotal_cents=subtotal, total_cents=subtotal,
                  lines=[OrderLine(sku=p.sku, name=p.name, quantity=q, unit_price_cents=p.price_cents)
                         for p, q in lines])
    db.session.add(order)
    code = pick_coupon(rng, account, personal=plan_on)
    if code:
        try:
            redemption = loyalty.coupons.redeem(code, customer_ref=account.ref, order_ref=order.ref,
                                                order_total=money(subtotal), commit=False)
        except CouponError:
            pass
        else:
            order.coupon_code = code
            order.discount_cents = cents(redemption.discount)
            order.total_cents = subtotal - order.discount_cents
            report.redemptions += 1
    loyalty.record_purchase(
        order.ref, account.ref, order.total, email=account.email, placed_at=placed, channel=channel,
        items=[{"sku": p.sku, "name": p.name, "quantity": q, "unit_price": p.price, "category": p.category.name,
                "unit_cost": money(p.cost_cents), "replenish_after_days": p.replenish_after_days}
               for p, q in lines],
        referral_code=referral_code, commit=False)
    report.orders += 1
    if rng.random() < 0.03:  # about 3% come back: half in full, half in part
        amount = None if rng.random() < 0.5 else money(order.total_cents // 3)
        purchase = loyalty.record_refund(order.ref, amount=amount, commit=False)
        order.refunded_cents = cents(purchase.refunded_total)
        report.refunds += 1


SOURCES = {"search_engine": 34, "friend_family": 22, "social_network": 18, "newsletter": 10, "advert": 9,
           "other": 7}
COMMENTS = {
    "en": ["Lovely tea, fast delivery.", "The grinder is great, thanks!", "Parcel arrived a bit late.",
           "Would love more decaf options."],
    "es": ["Té buenísimo y envío rápido.", "El café llegó tarde.", "Muy buena atención."],
    "ro": ["Ceai excelent, livrare rapidă.", "Cafeaua a ajuns cam târziu.", "Foarte mulțumită!"],
    "ru": ["Отличный чай, быстрая доставка.", "Кофе пришёл с опозданием.", "Всё понравилось!"],
}


def survey_answers(rng: random.Random, locale: str) -> dict[str, Any]:
    """One believable answer: mostly happy, some passive, a few unhappy (NPS around +35)."""
    recommend = rng.choices(range(11), weights=(2, 1, 1, 2, 2, 3, 5, 10, 16, 25, 33))[0]
    mood = 5 if recommend >= 9 else 4 if recommend >= 7 else rng.choice((1, 2, 3))
    answers: dict[str, Any] = {
        "source": rng.choices(list(SOURCES), weights=list(SOURCES.values()))[0],
        "experience": max(1, min(5, mood + rng.choice((-1, 0, 0, 0)))),
        "ease": max(1, min(5, mood + rng.choice((-1, 0, 0, 1)))),
        "recommend": recommend,
    }
    if rng.random() < 0.25:
        answers["comment"] = rng.choice(COMMENTS[locale])
    return answers


def pick_coupon(rng: random.Random, account: Account, *, personal: bool) -> str | None:
    """Sometimes the campaign code; once the plan is on, often a personal coupon (welcome, survey ...)."""
    roll = rng.random()
    if roll < 0.04:
        return "AUTUMN10"
    if personal and roll < 0.30:  # before the plan was switched on nobody held a personal coupon
        usable = loyalty.coupons.for_customer(account.ref)
        if usable:
            return str(usable[0].code)
    return None


seed_command = AppGroup("shop", help="Leaf & Bean demo shop commands.")


@seed_command.command("seed")
@click.option("--customers", default=2000, show_default=True)
@click.option("--orders", default=8000, show_default=True)
def seed_cli(customers: int, orders: int) -> None:
    """Create the tables and seed the demo history (once; an existing catalogue is left alone)."""
    if is_seeded():
        click.echo("the shop is already seeded")
        return
    click.echo(str(seed(customers=customers, orders=orders, echo=click.echo)))
