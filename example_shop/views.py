"""Catalogue, cart, checkout, accounts and the staff refund action.

Every flask_loyalty call sits where a real shop would put it and carries one
comment saying why it is there.  To stay short the demo leaves out what any
real shop has anyway: passwords (sign-in is by e-mail only) and a payment
step.  Its forms carry a small session-bound CSRF token (as flask_loyalty's
dashboard does); a real shop may use Flask-WTF instead.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from functools import wraps
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    has_request_context,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import func, select

from flask_loyalty import CouponError, InvalidInput

from .app import db, loyalty
from .models import CENT, Account, Category, Order, OrderLine, Product, cents, money, utcnow

bp = Blueprint("shop", __name__)

#: Longest name the shop stores (``shop_account.name`` is ``String(120)``).
NAME_MAX = 120
#: The session key and form field of the CSRF token.
CSRF_SESSION_KEY = "_shop_csrf"
CSRF_FIELD = "csrf_token"

LANGUAGES = {"en": "English", "es": "Español", "ro": "Română", "ru": "Русский"}
COUPON_REASONS = {
    "not_found": "We do not know this code.",
    "not_started": "This code is not valid yet.",
    "expired": "This code has expired.",
    "exhausted": "This code has been used up.",
    "already_used": "You have already used this code.",
    "min_total": "Your order is below this code's minimum.",
    "not_yours": "This code belongs to another customer.",
    "segment": "This code is reserved for other customers.",
    "first_order_only": "This code is for a first order only.",
    "currency": "This code is for another currency.",
}


# --- who is shopping -----------------------------------------------------------
@bp.before_app_request
def load_account() -> None:
    account_id = session.get("account_id")
    g.account = db.session.get(Account, account_id) if account_id else None


def csrf_token() -> str:
    """The session's CSRF token (created on first use); every form posts it back."""
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


@bp.before_request
def check_csrf() -> None:
    """Refuse (400) a state-changing request without the session's token: another site's form can't post here."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = session.get(CSRF_SESSION_KEY)
    given = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        abort(400, description="The form expired or did not come from this shop. Please reload and retry.")


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.account is None:
            return redirect(url_for("shop.login", next=request.full_path))
        return view(*args, **kwargs)
    return wrapper


def staff_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.account is None or not g.account.is_staff:
            abort(403)
        return view(*args, **kwargs)
    return wrapper


@bp.app_context_processor
def shop_context() -> dict[str, Any]:
    if not has_request_context():  # mails are rendered by the dispatcher, outside any request
        return {}
    return {"account": g.get("account"), "cart_count": sum(session.get("cart", {}).values()),
            "dashboard_url": current_app.config["LOYALTY_URL_PREFIX"].rstrip("/") + "/admin/",
            "languages": LANGUAGES, "shop_csrf_token": csrf_token, "shop_csrf_field": CSRF_FIELD}


# --- catalogue and cart --------------------------------------------------------
@bp.get("/")
def index() -> str:
    categories = db.session.scalars(select(Category).order_by(Category.name)).all()
    chosen = request.args.get("category")
    query = select(Product).order_by(Product.name)
    if chosen:
        query = query.join(Category).where(Category.slug == chosen)
    return render_template("shop/index.html", categories=categories, chosen=chosen,
                           products=db.session.scalars(query).all())


@bp.get("/products/<sku>")
def product(sku: str) -> str:
    item = db.session.scalar(select(Product).where(Product.sku == sku)) or abort(404)
    return render_template("shop/product.html", product=item)


def cart_lines() -> tuple[list[tuple[Product, int]], int]:
    """The session cart as (product, quantity) pairs and the subtotal in cents."""
    cart: dict[str, int] = session.get("cart", {})
    products = db.session.scalars(select(Product).where(Product.sku.in_(cart))).all() if cart else []
    lines = [(p, cart[p.sku]) for p in sorted(products, key=lambda p: p.name)]
    return lines, sum(p.price_cents * qty for p, qty in lines)


@bp.post("/cart")
def add_to_cart() -> Any:
    item = db.session.scalar(select(Product).where(Product.sku == request.form.get("sku", ""))) or abort(404)
    quantity = max(1, min(20, request.form.get("quantity", 1, type=int) or 1))
    cart = session.setdefault("cart", {})
    cart[item.sku] = min(20, cart.get(item.sku, 0) + quantity)
    session.modified = True
    flash(f"{item.name} is in your cart.")
    return redirect(safe_next(request.form.get("next")) or url_for("shop.cart"))


@bp.get("/cart")
def cart() -> str:
    lines, subtotal = cart_lines()
    return render_template("shop/cart.html", lines=lines, subtotal=money(subtotal))


@bp.post("/cart/update")
def update_cart() -> Any:
    cart = {sku: request.form.get(f"qty-{sku}", 0, type=int) for sku in session.get("cart", {})}
    session["cart"] = {sku: min(qty, 20) for sku, qty in cart.items() if qty and qty > 0}
    return redirect(url_for("shop.cart"))


# --- checkout --------------------------------------------------------------------
def render_checkout(code: str = "", quote: Any = None, error: str | None = None, status: int = 200) -> Any:
    lines, subtotal = cart_lines()
    discount = quote.discount if quote is not None and quote.valid else money(0)
    # A member's standing tier discount (the cumulative programme), shown before paying.
    tier_discount = tier_discount_after(g.account.ref, money(subtotal), discount)
    return render_template(
        "shop/checkout.html", lines=lines, subtotal=money(subtotal), code=code, quote=quote, error=error,
        discount=discount, total=money(subtotal) - discount - tier_discount,
        consent_purposes=consent_purposes(g.account.ref), tier_discount=tier_discount,
        tier=loyalty.tiers.of(g.account.ref),
        validate_url=current_app.config["LOYALTY_URL_PREFIX"].rstrip("/") + "/api/coupons/validate",
        reasons=COUPON_REASONS,
    ), status


def tier_discount_after(customer_ref: str, subtotal: Decimal, coupon_discount: Decimal) -> Decimal:
    """The tier discount on ``subtotal``, capped at what the coupon left: the order never goes below zero."""
    return min(loyalty.tiers.discount_for(customer_ref, subtotal), max(subtotal - coupon_discount, money(0)))


def plausible_referral_code(value: str | None) -> str | None:
    """The referral cookie's code, or ``None`` for a value the landing page never sets (tampered, truncated)."""
    if value and len(value) <= 32 and value.isascii() and value.isalnum():
        return value
    return None


@bp.route("/checkout", methods=["GET", "POST"])
@login_required
def checkout() -> Any:
    account: Account = g.account
    lines, subtotal_cents = cart_lines()
    if not lines:
        flash("Your cart is empty.")
        return redirect(url_for("shop.index"))
    if request.method == "GET":
        return render_checkout()

    subtotal = money(subtotal_cents)
    code = request.form.get("coupon", "").strip()
    if code:
        # Show the discount before paying: the same rule the live JSON check in coupon.js uses.
        quote = loyalty.coupons.validate(code, customer_ref=account.ref, order_total=subtotal)
        if not quote.valid or request.form.get("action") == "apply":
            return render_checkout(code, quote, None if quote.valid else COUPON_REASONS.get(quote.reason or "", ""),
                                   200 if quote.valid else 400)

    order = Order(ref=f"LB-{secrets.token_hex(4).upper()}", account=account, channel="online",
                  placed_at=utcnow(), subtotal_cents=subtotal_cents, discount_cents=0, total_cents=subtotal_cents,
                  lines=[OrderLine(sku=p.sku, name=p.name, quantity=qty, unit_price_cents=p.price_cents)
                         for p, qty in lines])
    db.session.add(order)
    if code:
        try:
            # Redeem inside the order's transaction: a failed payment or crash below rolls it back too.
            # Under concurrent checkouts the coupon still never goes past its limits.
            redemption = loyalty.coupons.redeem(code, customer_ref=account.ref, order_ref=order.ref,
                                                order_total=subtotal, commit=False)
        except CouponError as exc:   # someone used the last redemption since the page was shown
            db.session.rollback()
            return render_checkout(code, None, COUPON_REASONS.get(exc.reason, str(exc)), 409)
        order.coupon_code = redemption.code  # the coupon's own spelling, not the shopper's typing
        order.discount_cents = cents(redemption.discount)
    # The tier discount is computed on the same subtotal as the coupon, capped at what the coupon left.
    order.tier_discount_cents = cents(tier_discount_after(account.ref, subtotal, money(order.discount_cents)))
    order.discount_cents += order.tier_discount_cents
    order.total_cents = subtotal_cents - order.discount_cents

    # The checkout hook: customer, purchase, items and points join this same transaction
    # (commit=False), so the commit below stores the order and the loyalty side together.
    loyalty.record_purchase(
        order.ref, account.ref, order.total, email=account.email, placed_at=order.placed_at,
        channel="online",
        items=[{"sku": p.sku, "name": p.name, "quantity": qty, "unit_price": p.price,
                "category": p.category.name, "unit_cost": money(p.cost_cents),
                "replenish_after_days": p.replenish_after_days} for p, qty in lines],
        # a friend's referral link (<prefix>/r/<code>) left its code in this cookie
        # (a value the landing page cannot have set is ignored rather than refused at checkout)
        referral_code=plausible_referral_code(request.cookies.get(current_app.config["LOYALTY_REFERRAL_COOKIE"])),
        commit=False)
    try:
        capture_consent(account.ref, "checkout")
    except InvalidInput:  # the page sat open past LOYALTY_CONSENT_FORM_MAX_AGE: show fresh checkboxes
        db.session.rollback()
        flash("The page had expired: please check your choices and place the order again.")
        return render_checkout(code, status=400)
    db.session.commit()
    session.pop("cart", None)
    return redirect(url_for("shop.order", ref=order.ref, placed=1))


@bp.get("/orders/<ref>")
@login_required
def order(ref: str) -> str:
    item = db.session.scalar(select(Order).where(Order.ref == ref)) or abort(404)
    if item.account_id != g.account.id and not g.account.is_staff:
        abort(404)
    purchase = loyalty.purchase(ref)  # points earned, refunds as the programme sees them
    return render_template("shop/order.html", order=item, purchase=purchase,
                           wallet_url=loyalty.links.wallet(item.account.ref))


# --- accounts --------------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "POST":
        email = request.form.get("email", "").strip().lower()
        account = db.session.scalar(select(Account).where(func.lower(Account.email) == email))
        if account is None:
            return redirect(url_for("shop.signup", email=email, next=request.args.get("next")))
        session["account_id"] = account.id
        return redirect(safe_next() or url_for("shop.account"))
    staff = db.session.scalar(select(Account).where(Account.is_staff.is_(True)))
    return render_template("shop/login.html", staff=staff)


def safe_next(target: str | None = None) -> str | None:
    """``target`` (default: the ``next`` query argument) if it is a path on this site, else ``None``."""
    target = (request.args.get("next") if target is None else target) or ""
    if "\\" in target or any(ord(ch) < 32 for ch in target):
        return None  # browsers read "/\evil.example" as "//evil.example"
    return target if target.startswith("/") and not target.startswith("//") else None


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    form = request.form if request.method == "POST" else request.args
    if request.method == "POST":
        email = form.get("email", "").strip().lower()
        name = form.get("name", "").strip()
        if not email or "@" not in email or not name:
            flash("Please give your name and e-mail address.")
        elif len(name) > NAME_MAX:
            flash(f"Please shorten your name to {NAME_MAX} characters.")
        elif db.session.scalar(select(Account).where(func.lower(Account.email) == email)):
            flash("There is already an account with this e-mail: sign in instead.")
        else:
            account = Account(email=email, name=name, language=form.get("language", "en"),
                              birthday=parse_date(form.get("birthday")))
            db.session.add(account)
            db.session.flush()  # gives the account its id, hence its customer ref
            try:
                # Tell the programme who the customer is (name, language for mails, birthday greetings).
                loyalty.upsert_customer(account.ref, email=account.email, name=account.name,
                                        locale=account.language, birthday=account.birthday, commit=False)
            except InvalidInput as exc:  # the programme checks more than the shop does (e.g. the address)
                db.session.rollback()
                flash(please_check(exc))
                return render_template("shop/signup.html", form=form, consent_purposes=list(ASKED)), 400
            try:
                capture_consent(account.ref, "signup")
            except InvalidInput:
                db.session.rollback()
                flash("The form had expired: please check your choices again.")
                return render_template("shop/signup.html", form=form, consent_purposes=list(ASKED))
            db.session.commit()
            session["account_id"] = account.id
            flash(f"Welcome, {account.name}!")
            return redirect(safe_next() or url_for("shop.account"))
    return render_template("shop/signup.html", form=form, consent_purposes=consent_purposes(None))


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return redirect(url_for("shop.index"))


def please_check(exc: InvalidInput) -> str:
    """The programme's field messages as one line for the shopper."""
    return "Please check: " + "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in exc.errors.items())


def parse_money(value: str) -> Decimal | None:
    """A money amount typed by staff ("12.50"), or ``None`` if it is not one."""
    try:
        amount = Decimal(value)
        return amount if amount.is_finite() and amount == amount.quantize(CENT) else None
    except ArithmeticError:
        return None


def parse_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account() -> Any:
    me: Account = g.account
    if request.method == "POST":
        name = request.form.get("name", me.name).strip() or me.name
        if len(name) > NAME_MAX:
            flash(f"Please shorten your name to {NAME_MAX} characters.")
            return redirect(url_for("shop.account"))
        me.name = name
        me.language = request.form.get("language", me.language)
        me.birthday = parse_date(request.form.get("birthday"))
        try:
            # Keep the programme's copy in step: mails go out in this language, birthday greetings on this day;
            # an emptied birthday is cleared there too (birthday=None alone would leave it as it was).
            loyalty.upsert_customer(me.ref, email=me.email, name=me.name, locale=me.language,
                                    birthday=me.birthday, clear=() if me.birthday else ("birthday",),
                                    commit=False)
        except InvalidInput as exc:
            db.session.rollback()
            flash(please_check(exc))
            return redirect(url_for("shop.account"))
        db.session.commit()
        flash("Your profile is saved.")
        return redirect(url_for("shop.account"))
    return render_template(
        "shop/account.html", me=me,
        # Signed links to the pages flask_loyalty serves for this customer, and the link to share.
        wallet_url=loyalty.links.wallet(me.ref), preferences_url=loyalty.links.preferences(me.ref),
        referral_url=loyalty.referrals.link(me.ref),
        points=loyalty.points.balance(me.ref), tier=loyalty.tiers.of(me.ref))


# --- staff -------------------------------------------------------------------------
@bp.get("/staff/orders")
@login_required
@staff_required
def staff_orders() -> str:
    term = request.args.get("q", "").strip()
    query = select(Order).join(Account).order_by(Order.placed_at.desc()).limit(50)
    if term:
        query = query.where((Order.ref == term.upper()) | (func.lower(Account.email) == term.lower()))
    return render_template("shop/staff_orders.html", orders=db.session.scalars(query).all(), term=term)


@bp.post("/staff/orders/<ref>/refund")
@login_required
@staff_required
def refund(ref: str) -> Any:
    item = db.session.scalar(select(Order).where(Order.ref == ref)) or abort(404)
    raw = request.form.get("amount", "").strip()
    if raw:
        amount = parse_money(raw)
        purchase = loyalty.purchase(item.ref)  # the programme's view of what is refunded so far
        remaining = item.total - (purchase.refunded_total if purchase is not None else money(item.refunded_cents))
        if amount is None or amount <= 0 or amount > remaining:
            flash(f"Refund refused: give an amount above {money(0)} and at most the {remaining} not yet refunded "
                  "(leave it empty to refund the rest).")
            return redirect(url_for("shop.staff_orders", q=ref))
    try:
        # Reverses the points on the refunded part, cancels this order's pending mails and,
        # on a full refund, gives the coupon it used back - in the same transaction as the shop's update.
        purchase = loyalty.record_refund(item.ref, amount=raw or None, commit=False)
    except InvalidInput as exc:
        db.session.rollback()
        flash(f"Refund refused: {exc.errors}")
        return redirect(url_for("shop.staff_orders", q=ref))
    item.refunded_cents = cents(purchase.refunded_total)
    db.session.commit()
    flash(f"Order {ref}: {money(item.refunded_cents)} refunded in all.")
    return redirect(url_for("shop.staff_orders", q=ref))



# --- consent in forms --------------------------------------------------------------
#: The purposes this shop asks for in its forms (LOYALTY_CONSENT_PURPOSES has two more).
ASKED = ("email_marketing", "surveys")


def consent_purposes(customer_ref: str | None) -> list[str]:
    """Purposes to offer in a form: those the customer has not granted or been asked to confirm."""
    if customer_ref is None:
        return list(ASKED)
    states = loyalty.consent.current(customer_ref)
    return [p for p in ASKED if p not in states or not (states[p].granted or states[p].pending)]


def capture_consent(customer_ref: str, source: str) -> None:
    """Record the boxes ticked in a form that shows {{ loyalty_consent_fields(...) }}."""
    # Proof of consent: the wording shown, where (source), when and a hashed IP go into the
    # append-only history; e-mail marketing stays pending until the mailed link is followed.
    loyalty.consent.capture(customer_ref, request.form, source=source, ip=request.remote_addr, commit=False)
