"""Coupons: creation, codes, rules, validate/redeem/release (CONTRACT §4)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from flask_loyalty import CouponError, InvalidInput, LoyaltyError
from flask_loyalty.models import Coupon, GiftCard, Redemption
from flask_loyalty.services import codes
from flask_loyalty.signals import coupon_redeemed, coupon_released

UTC = timezone.utc
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def count(shop, model):
    return shop.db.session.execute(select(func.count()).select_from(model)).scalar_one()


# --- codes ---------------------------------------------------------------------

def test_generated_code_shape(shop):
    c = shop.loyalty.coupons.create(kind="percent", value=10)
    key = c.code_key
    assert len(key) >= 10 and set(key) <= set(codes.ALPHABET)
    assert not set(key) & set("01OIL")
    assert len(key) * codes.BITS_PER_SYMBOL >= 50
    assert c.code.replace("-", "") == key


def test_codes_from_secrets_are_distinct():
    keys = {codes.generate(12)[1] for _ in range(5000)}
    assert len(keys) == 5000


@pytest.mark.parametrize("typed", ["welcome10", "WELCOME-10", " wel come 1o ", "WELC0ME-1O", "weicomeio"])
def test_lookup_ignores_case_spaces_dashes_and_lookalikes(shop, typed):
    shop.loyalty.coupons.create(kind="fixed", value="5", code="WELCOME10")
    quote = shop.loyalty.coupons.validate(typed, order_total="20")
    assert quote.valid and quote.discount == Decimal("5")   # I, L and 1 are one symbol; O and 0 too


@pytest.mark.parametrize("typed", ["welcome11", "welcome", "welcome100", "", "   ", "wel/come10"])
def test_lookup_does_not_match_other_codes(shop, typed):
    shop.loyalty.coupons.create(kind="fixed", value="5", code="WELCOME10")
    if typed == "":
        with pytest.raises(InvalidInput):
            shop.loyalty.coupons.validate(typed, order_total="20")
        return
    assert shop.loyalty.coupons.validate(typed, order_total="20").reason == "not_found"


def test_host_codes_unique_case_insensitively(shop):
    shop.loyalty.coupons.create(kind="fixed", value="5", code="Summer-Sale")
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.coupons.create(kind="fixed", value="5", code="summersale")
    assert "code" in info.value.errors
    assert count(shop, Coupon) == 1


@pytest.mark.parametrize("code", ["ab", "x" * 65, "bad!code", "ünï", 12])
def test_bad_host_codes(shop, code):
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.coupons.create(kind="fixed", value="5", code=code)
    assert "code" in info.value.errors


def test_prefix_config(make_shop):
    s = make_shop(LOYALTY_COUPON_CODE_PREFIX="shop", LOYALTY_COUPON_CODE_LENGTH=10)
    with s.app.app_context():
        c = s.loyalty.coupons.create(kind="free_shipping")
        assert c.code.startswith("SH0P-") and len(c.code_key) == 14
        assert s.loyalty.coupons.validate(c.code.lower().replace("-", " "), order_total=1).valid


def test_too_short_code_length_refused(make_shop):
    with pytest.raises(InvalidInput):
        make_shop(LOYALTY_COUPON_CODE_LENGTH=8)


def test_create_batch_unique(shop):
    made = shop.loyalty.coupons.create_batch(2500, prefix="MAIL", kind="fixed", value="5", campaign="spring")
    assert len(made) == 2500 and len({c.code_key for c in made}) == 2500
    assert all(c.code_key.startswith("MA11") for c in made)   # prefix normalised like any code
    assert count(shop, Coupon) == 2500
    assert {c.campaign for c in made} == {"spring"}
    shop.db.session.expire_all()
    stored = shop.loyalty.coupons.get(made[-1].code)
    assert stored.id == made[-1].id and stored.code == made[-1].code and stored.value == Decimal("5")
    assert stored.created_at.tzinfo is not None and stored.max_uses_per_customer == 1 and stored.uses == 0


def test_create_batch_rules_are_stored(shop):
    made = shop.loyalty.coupons.create_batch(3, kind="percent", value="12.5", min_order_total="20", max_uses=2,
                                             max_uses_per_customer=None, starts_at=date(2026, 1, 1),
                                             expires_at=date(2026, 12, 31), first_order_only=True,
                                             customer_ref="c9", currency="USD", commit=False)
    shop.db.session.commit()
    assert made[0].code.replace("-", "") == made[0].code_key   # still readable after the commit (detached)
    shop.db.session.expire_all()
    c = shop.loyalty.coupons.get(made[1].code)
    assert (c.kind, c.value, c.min_order_total, c.max_uses, c.max_uses_per_customer) == (
        "percent", Decimal("12.5"), Decimal("20"), 2, None)
    assert c.starts_at == datetime(2026, 1, 1, tzinfo=UTC) and c.expires_at.date() == date(2026, 12, 31)
    assert c.first_order_only is True and c.customer_ref == "c9" and c.currency == "USD"
    assert c.revoked_at is None
    q = shop.loyalty.coupons.validate(c.code, customer_ref="c9", order_total="40", currency="USD", now=NOW)
    assert q.valid and q.discount == Decimal("5.00")


def test_create_batch_refuses_code_and_bad_count(shop):
    with pytest.raises(InvalidInput):
        shop.loyalty.coupons.create_batch(3, kind="fixed", value="5", code="X1234")
    with pytest.raises(InvalidInput):
        shop.loyalty.coupons.create_batch(0, kind="fixed", value="5")
    assert count(shop, Coupon) == 0


# --- creation rules ------------------------------------------------------------

@pytest.mark.parametrize("kwargs,field", [
    ({"kind": "bogus"}, "kind"),
    ({"kind": "percent"}, "value"),
    ({"kind": "percent", "value": 0}, "value"),
    ({"kind": "percent", "value": "100.5"}, "value"),
    ({"kind": "fixed"}, "value"),
    ({"kind": "fixed", "value": "-1"}, "value"),
    ({"kind": "free_shipping", "value": "3"}, "value"),
    ({"kind": "gift"}, "gift_name"),
    ({"kind": "fixed", "value": 5, "currency": "XXY"}, "currency"),
    ({"kind": "fixed", "value": 5, "max_uses": 0}, "max_uses"),
    ({"kind": "fixed", "value": 5, "max_uses_per_customer": 0}, "max_uses_per_customer"),
    ({"kind": "fixed", "value": 5, "expires_at": datetime(2030, 1, 1)}, "expires_at"),
    ({"kind": "fixed", "value": 5, "starts_at": date(2030, 1, 2), "expires_at": date(2030, 1, 1)}, "expires_at"),
    ({"kind": "fixed", "value": 5, "customer_ref": ""}, "customer_ref"),
    ({"kind": "fixed", "value": 5, "segment": "vip"}, "segment"),
    ({"kind": "fixed", "value": 5, "first_order_only": "yes"}, "first_order_only"),
])
def test_create_bad_input_writes_nothing(shop, kwargs, field):
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.coupons.create(**kwargs)
    assert field in info.value.errors
    assert count(shop, Coupon) == 0


@pytest.mark.parametrize("kwargs,field", [
    ({"expires_at": date(9999, 12, 31)}, "expires_at"),
    ({"starts_at": date(1, 1, 1)}, "starts_at"),
    ({"expires_at": datetime(9999, 12, 31, 23, tzinfo=ZoneInfo("America/New_York"))}, "expires_at"),
    ({"starts_at": datetime(1, 1, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo"))}, "starts_at"),
    ({"expires_at": "9999-12-31"}, "expires_at"),
    ({"campaign": "spring\x00"}, "campaign"),
    ({"campaign": "line\r\nbreak"}, "campaign"),
    ({"segment": "vip\x00"}, "segment"),
    ({"code": "AB\x00CD-EFGH-JK"}, "code"),
    ({"kind": "gift", "value": None, "gift_name": "mug\x00"}, "gift_name"),
])
def test_dates_out_of_range_and_control_characters_are_invalid_input(shop, kwargs, field):
    """end_of_local_day(9999-12-31) raised OverflowError and NUL bytes a PostgreSQL DataError; now InvalidInput."""
    rules = {"kind": "fixed", "value": 5, **kwargs}
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.coupons.create(**rules)
    assert field in info.value.errors
    with pytest.raises(InvalidInput):
        shop.loyalty.coupons.create_batch(2, **rules)
    assert count(shop, Coupon) == 0
    ok = shop.loyalty.coupons.create(kind="fixed", value=5, starts_at=date(1900, 1, 1), expires_at=date(9998, 12, 31))
    assert ok.expires_at.year == 9998


def test_float_money_is_a_type_error(shop):
    with pytest.raises(TypeError):
        shop.loyalty.coupons.create(kind="fixed", value=5.0)
    c = shop.loyalty.coupons.create(kind="fixed", value=5)
    with pytest.raises(TypeError):
        shop.loyalty.coupons.validate(c.code, order_total=1.5)
    with pytest.raises(TypeError):
        shop.loyalty.coupons.redeem(c.code, customer_ref="c", order_ref="o", order_total=1.5)


def test_segment_coupons_need_segments(shop):
    shop.loyalty.state.hooks.pop("segment_exists", None)     # as in a tree without the segments area
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.coupons.create(kind="percent", value=5, segment="vip")
    assert "not available" in str(info.value.errors["segment"])


def test_segment_coupons_with_hooks(shop):
    state = shop.loyalty.state
    members = {"vip": {"c1"}}
    state.hooks["segment_exists"] = [lambda st, name: name in members]
    state.hooks["segment_member"] = [
        lambda st, name, customer: customer is not None and customer.ref in members[name]]
    with pytest.raises(InvalidInput):
        shop.loyalty.coupons.create(kind="percent", value=5, segment="nobody")
    c = shop.loyalty.coupons.create(kind="percent", value=5, segment="vip", max_uses_per_customer=None)
    shop.loyalty.upsert_customer("c1")
    shop.loyalty.upsert_customer("c2")
    assert shop.loyalty.coupons.validate(c.code, customer_ref="c1", order_total=100).valid
    assert shop.loyalty.coupons.validate(c.code, customer_ref="c2", order_total=100).reason == "segment"
    assert shop.loyalty.coupons.validate(c.code, order_total=100).reason == "segment"
    assert [x.code for x in shop.loyalty.coupons.for_customer("c1")] == [c.code]
    assert shop.loyalty.coupons.for_customer("c2") == []
    with pytest.raises(CouponError) as info:
        shop.loyalty.coupons.redeem(c.code, customer_ref="c2", order_ref="o2", order_total=100)
    assert info.value.reason == "segment"


def test_commit_false_joins_host_transaction(shop):
    c = shop.loyalty.coupons.create(kind="fixed", value="5", commit=False)
    shop.db.session.rollback()
    assert count(shop, Coupon) == 0
    c = shop.loyalty.coupons.create(kind="fixed", value="5", commit=False)
    shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total=20, commit=False)
    shop.db.session.commit()
    assert count(shop, Redemption) == 1


def test_date_expiry_is_end_of_local_day_across_dst(make_shop):
    s = make_shop(LOYALTY_TIMEZONE="Europe/Madrid")
    with s.app.app_context():
        c = s.loyalty.coupons.create(kind="fixed", value=5, expires_at=date(2026, 3, 29))  # DST starts
        zone = ZoneInfo("Europe/Madrid")
        assert c.expires_at.astimezone(zone).date() == date(2026, 3, 29)
        assert c.expires_at == datetime(2026, 3, 29, 21, 59, 59, 999999, tzinfo=UTC)  # CEST, +02:00
        last = datetime(2026, 3, 29, 23, 59, 59, tzinfo=zone)
        after = datetime(2026, 3, 30, 0, 0, 0, tzinfo=zone)
        assert s.loyalty.coupons.validate(c.code, order_total=10, now=last).valid
        assert s.loyalty.coupons.validate(c.code, order_total=10, now=after).reason == "expired"
        autumn = s.loyalty.coupons.create(kind="fixed", value=5, expires_at=date(2026, 10, 25))  # DST ends
        assert autumn.expires_at == datetime(2026, 10, 25, 22, 59, 59, 999999, tzinfo=UTC)  # CET, +01:00
        starts = s.loyalty.coupons.create(kind="fixed", value=5, starts_at=date(2026, 7, 1))
        assert s.loyalty.coupons.validate(starts.code, order_total=10,
                                          now=datetime(2026, 6, 30, 23, 59, tzinfo=zone)).reason == "not_started"
        assert s.loyalty.coupons.validate(starts.code, order_total=10,
                                          now=datetime(2026, 7, 1, 0, 0, tzinfo=zone)).valid


# --- quotes ---------------------------------------------------------------------

@pytest.mark.parametrize("value,total,expected", [
    ("10", "33.35", "3.34"),    # 3.335 -> half-even -> 3.34
    ("10", "33.25", "3.32"),    # 3.325 -> half-even -> 3.32
    ("15", "0.10", "0.02"),     # 0.015 -> 0.02
    ("100", "12.34", "12.34"),  # never above the total
    ("33.3333", "1", "0.33"),
    ("50", "0", "0.00"),
])
def test_percent_rounding(shop, value, total, expected):
    c = shop.loyalty.coupons.create(kind="percent", value=value)
    q = shop.loyalty.coupons.validate(c.code, order_total=total)
    assert q.valid and q.discount == Decimal(expected) and q.discount <= Decimal(total)


def test_percent_rounding_uses_currency_minor_unit(shop):
    c = shop.loyalty.coupons.create(kind="percent", value="12.5", currency="JPY")
    q = shop.loyalty.coupons.validate(c.code, order_total="1001", currency="JPY")
    assert q.discount == Decimal("125")   # 125.125 -> 125 yen


def test_fixed_never_above_total_and_kinds(shop):
    fixed = shop.loyalty.coupons.create(kind="fixed", value="25")
    assert shop.loyalty.coupons.validate(fixed.code, order_total="10").discount == Decimal("10")
    ship = shop.loyalty.coupons.create(kind="free_shipping")
    q = shop.loyalty.coupons.validate(ship.code, order_total="10")
    assert q.valid and q.free_shipping and q.discount == 0
    gift = shop.loyalty.coupons.create(kind="gift", gift_name="Tea sampler")
    q = shop.loyalty.coupons.validate(gift.code, order_total="10")
    assert q.valid and q.gift_name == "Tea sampler" and q.kind == "gift"
    named = shop.loyalty.coupons.create(kind="gift", value="Honey jar")
    assert named.gift_name == "Honey jar" and named.value is None


def test_reasons(shop):
    cp = shop.loyalty.coupons
    v = lambda code, **kw: cp.validate(code, order_total=kw.pop("order_total", 50), now=NOW, **kw)  # noqa: E731
    assert v("NOPE-NOPE-NOPE").reason == "not_found"
    assert v("x" * 65).reason == "not_found"
    late = cp.create(kind="fixed", value=5, starts_at=NOW + timedelta(days=1))
    assert v(late.code).reason == "not_started"
    old = cp.create(kind="fixed", value=5, expires_at=NOW - timedelta(seconds=1))
    assert v(old.code).reason == "expired"
    mine = cp.create(kind="fixed", value=5, customer_ref="alice")
    assert v(mine.code, customer_ref="bob").reason == "not_yours"
    assert v(mine.code).reason == "not_yours"
    assert v(mine.code, customer_ref="alice").valid
    minimum = cp.create(kind="fixed", value=5, min_order_total="30")
    assert v(minimum.code, order_total="29.99").reason == "min_total"
    assert v(minimum.code, order_total="30").valid
    usd = cp.create(kind="fixed", value=5, currency="USD")
    assert v(usd.code, currency="EUR").reason == "currency"
    assert v(usd.code, currency="usd").valid
    pct = cp.create(kind="percent", value=5, currency="USD")
    assert v(pct.code, currency="EUR").valid     # a percentage has no currency of its own
    once = cp.create(kind="fixed", value=5, max_uses=1, max_uses_per_customer=None)
    cp.redeem(once.code, customer_ref="a", order_ref="o1", order_total=50, now=NOW)
    assert v(once.code, customer_ref="b").reason == "exhausted"
    per = cp.create(kind="fixed", value=5)
    cp.redeem(per.code, customer_ref="a", order_ref="o2", order_total=50, now=NOW)
    assert v(per.code, customer_ref="a").reason == "already_used"
    assert v(per.code, customer_ref="b").valid
    first = cp.create(kind="fixed", value=5, first_order_only=True, max_uses_per_customer=None)
    assert v(first.code, customer_ref="new").valid
    shop.loyalty.record_purchase("p1", "old", 10)
    assert v(first.code, customer_ref="old").reason == "first_order_only"
    assert all(r in CouponError.REASONS for r in ("not_found", "exhausted"))


def test_first_order_only_counts_the_order_being_redeemed(shop):
    c = shop.loyalty.coupons.create(kind="fixed", value=5, first_order_only=True)
    shop.loyalty.record_purchase("o1", "c1", 40, commit=False)       # the host records, then redeems
    shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total=40)
    second = shop.loyalty.coupons.create(kind="fixed", value=5, first_order_only=True)
    with pytest.raises(CouponError) as info:
        shop.loyalty.coupons.redeem(second.code, customer_ref="c1", order_ref="o2", order_total=40)
    assert info.value.reason == "first_order_only"


def test_validate_bad_input(shop):
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.coupons.validate("ABC", order_total="-1")
    assert "order_total" in info.value.errors
    with pytest.raises(InvalidInput):
        shop.loyalty.coupons.validate("ABC", order_total="1", currency="nope")
    with pytest.raises(InvalidInput):
        shop.loyalty.coupons.validate("ABC", order_total="1", now=datetime(2026, 1, 1))


@pytest.mark.parametrize("huge", ["1e30", "1" + "0" * 30, 10 ** 40, Decimal("-1e30"), "1e999999999", "9" * 5000])
def test_huge_amounts_are_invalid_input_and_write_nothing(shop, huge):
    """Amounts of 1e24 and more made quantize() raise decimal.InvalidOperation before the size check."""
    c = shop.loyalty.coupons.create(kind="fixed", value=5)
    calls = {
        "order_total": [lambda: shop.loyalty.coupons.validate(c.code, order_total=huge),
                        lambda: shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1",
                                                            order_total=huge)],
        "value": [lambda: shop.loyalty.coupons.create(kind="fixed", value=huge)],
        "min_order_total": [lambda: shop.loyalty.coupons.create(kind="fixed", value=5, min_order_total=huge)],
        "amount": [lambda: shop.loyalty.gift_cards.issue(huge)],
        "total": [lambda: shop.loyalty.record_purchase("o1", "c1", huge)],
    }
    for field, makers in calls.items():
        for call in makers:
            with pytest.raises(InvalidInput) as info:
                call()
            assert field in info.value.errors, (field, info.value.errors)
    assert count(shop, Coupon) == 1 and count(shop, Redemption) == 0 and count(shop, GiftCard) == 0
    assert shop.loyalty.purchase("o1") is None and shop.loyalty.customer("c1") is None


# --- redeem / release ---------------------------------------------------------------

def test_redeem_is_idempotent_and_signals_once(shop):
    c = shop.loyalty.coupons.create(kind="percent", value=10, max_uses=5)
    seen = []
    with coupon_redeemed.connected_to(lambda app, **kw: seen.append(kw["redemption"].order_ref), shop.app):
        a = shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total="80")
        b = shop.loyalty.coupons.redeem(c.code.lower(), customer_ref="c1", order_ref="o1", order_total="80")
    assert a.id == b.id and a.discount == Decimal("8.00") and a.code == c.code
    assert seen == ["o1"]
    assert shop.loyalty.coupons.get(c.code).uses == 1
    assert count(shop, Redemption) == 1


def test_redeem_errors_are_coupon_errors(shop):
    with pytest.raises(CouponError) as info:
        shop.loyalty.coupons.redeem("UNKNOWN-CODE", customer_ref="c1", order_ref="o1", order_total=10)
    assert info.value.reason == "not_found" and isinstance(info.value, LoyaltyError)
    with pytest.raises(CouponError):
        shop.loyalty.coupons.redeem("Z" * 100, customer_ref="c1", order_ref="o1", order_total=10)
    with pytest.raises(InvalidInput):
        shop.loyalty.coupons.redeem("ABC", customer_ref="", order_ref="o1", order_total=10)


def test_repeated_redeem_with_commit_true_commits_like_every_write_call(shop):
    c = shop.loyalty.coupons.create(kind="fixed", value="5", max_uses=10, max_uses_per_customer=None)
    first = shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total="20").id
    shop.db.session.add(shop.host_order(ref="host-1"))        # the host's pending write
    again = shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total="20")
    assert not shop.db.session().in_transaction()
    assert again.id == first
    shop.db.session.remove()
    assert shop.db.session.execute(select(shop.host_order.ref)).scalars().all() == ["host-1"]
    assert shop.loyalty.coupons.get(c.code).uses == 1


@pytest.mark.parametrize("max_uses", [1, 5])   # 1: the claim fails (used up); 5: it is claimed, then refused
def test_refused_redeem_with_commit_true_rolls_back_and_writes_nothing(shop, max_uses):
    code = shop.loyalty.coupons.create(kind="fixed", value="5", max_uses=max_uses, max_uses_per_customer=1).code
    shop.loyalty.coupons.redeem(code, customer_ref="c1", order_ref="o1", order_total="20")
    shop.db.session.add(shop.host_order(ref="host-1"))
    with pytest.raises(CouponError) as info:
        shop.loyalty.coupons.redeem(code, customer_ref="c1", order_ref="o2", order_total="20")
    assert info.value.reason == ("exhausted" if max_uses == 1 else "already_used")
    assert not shop.db.session().in_transaction()
    shop.db.session.remove()
    assert shop.db.session.execute(select(shop.host_order.ref)).scalars().all() == []
    assert shop.loyalty.coupons.get(code).uses == 1
    assert count(shop, Redemption) == 1


def test_max_uses_per_customer_above_one(shop):
    c = shop.loyalty.coupons.create(kind="fixed", value=1, max_uses_per_customer=3)
    for i in range(3):
        shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref=f"o{i}", order_total=10)
    with pytest.raises(CouponError) as info:
        shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o9", order_total=10)
    assert info.value.reason == "already_used"
    assert shop.loyalty.coupons.release("o1") == 1          # frees one slot
    shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o9", order_total=10)
    assert shop.loyalty.coupons.get(c.code).uses == 3


def test_stacking_policy(make_shop):
    s = make_shop(LOYALTY_COUPONS_PER_ORDER=2)
    with s.app.app_context():
        cp = s.loyalty.coupons
        a, b, c = (cp.create(kind="fixed", value=1) for _ in range(3))
        cp.redeem(a.code, customer_ref="c1", order_ref="o1", order_total=10)
        cp.redeem(b.code, customer_ref="c1", order_ref="o1", order_total=10)
        with pytest.raises(CouponError) as info:
            cp.redeem(c.code, customer_ref="c1", order_ref="o1", order_total=10)
        assert info.value.reason == "already_used"
        assert cp.get(c.code).uses == 0


def test_default_stacking_is_one_coupon_per_order(shop):
    cp = shop.loyalty.coupons
    a, b = cp.create(kind="fixed", value=1), cp.create(kind="fixed", value=1)
    cp.redeem(a.code, customer_ref="c1", order_ref="o1", order_total=10)
    with pytest.raises(CouponError):
        cp.redeem(b.code, customer_ref="c1", order_ref="o1", order_total=10)


def test_release_frees_uses_and_signals(shop):
    c = shop.loyalty.coupons.create(kind="fixed", value=5, max_uses=1)
    shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total=10)
    seen = []
    with coupon_released.connected_to(lambda app, **kw: seen.append(kw["coupon"].code), shop.app):
        assert shop.loyalty.coupons.release("o1") == 1
        assert shop.loyalty.coupons.release("o1") == 0
    assert seen == [c.code]
    assert shop.loyalty.coupons.get(c.code).uses == 0
    [r] = shop.loyalty.coupons.redemptions("o1")
    assert r.released_at is not None and not r.active
    # usable again, by anybody, and the same order can use it again
    again = shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total=10)
    assert again.id != r.id and shop.loyalty.coupons.get(c.code).uses == 1


def test_full_refund_releases_partial_does_not(shop):
    c = shop.loyalty.coupons.create(kind="fixed", value=5, max_uses=1)
    shop.loyalty.record_purchase("o1", "c1", 40)
    shop.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total=40)
    seen = []
    with coupon_released.connected_to(lambda app, **kw: seen.append(kw["redemption"].order_ref), shop.app):
        shop.loyalty.record_refund("o1", amount="10")
        assert shop.loyalty.coupons.get(c.code).uses == 1 and seen == []
        shop.loyalty.record_refund("o1")
    assert shop.loyalty.coupons.get(c.code).uses == 0 and seen == ["o1"]


def test_refund_release_can_be_turned_off(make_shop):
    s = make_shop(LOYALTY_RELEASE_COUPONS_ON_REFUND=False)
    with s.app.app_context():
        c = s.loyalty.coupons.create(kind="fixed", value=5)
        s.loyalty.record_purchase("o1", "c1", 40)
        s.loyalty.coupons.redeem(c.code, customer_ref="c1", order_ref="o1", order_total=40)
        s.loyalty.record_refund("o1")
        assert s.loyalty.coupons.get(c.code).uses == 1


def test_for_customer(shop):
    cp = shop.loyalty.coupons
    soon = cp.create(kind="fixed", value=5, customer_ref="c1", expires_at=NOW + timedelta(days=2))
    later = cp.create(kind="percent", value=5, customer_ref="c1", expires_at=NOW + timedelta(days=20))
    forever = cp.create(kind="free_shipping", customer_ref="c1")
    cp.create(kind="fixed", value=5, customer_ref="c1", expires_at=NOW - timedelta(days=1))
    cp.create(kind="fixed", value=5, customer_ref="c2")
    cp.create(kind="fixed", value=5)   # public codes are not "theirs"
    used = cp.create(kind="fixed", value=5, customer_ref="c1")
    cp.redeem(used.code, customer_ref="c1", order_ref="o1", order_total=10, now=NOW)
    assert [c.code for c in cp.for_customer("c1", now=NOW)] == [soon.code, later.code, forever.code]
    assert cp.for_customer("nobody", now=NOW) == []


def test_erase_and_export_hooks(shop):
    cp = shop.loyalty.coupons
    c = cp.create(kind="fixed", value=5, customer_ref="c1")
    cp.redeem(c.code, customer_ref="c1", order_ref="o1", order_total=10)
    keep = cp.create(kind="fixed", value=5, customer_ref="c1")
    card = shop.loyalty.gift_cards.issue("20", customer_ref="c1")
    customer = shop.loyalty.upsert_customer("c1")
    data: dict = {}
    shop.loyalty.state.run_hooks("export", customer=customer, data=data)
    assert {x["code"] for x in data["coupons"]["personal"]} == {c.code, keep.code}
    assert data["coupons"]["redemptions"][0]["order_ref"] == "o1"
    assert data["gift_cards"][0]["balance"] == "20.00" and card.code not in str(data)
    shop.loyalty.state.run_hooks("erase", customer=customer)
    shop.db.session.commit()
    assert cp.for_customer("c1") == []
    assert cp.validate(keep.code, customer_ref="c1", order_total=10).reason == "not_found"
    assert shop.loyalty.gift_cards.get(card.code).customer_ref is None
    assert shop.loyalty.gift_cards.balance(card.code) == Decimal("20")
