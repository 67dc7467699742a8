"""Segments: JSON rules over the profiles, evaluated in SQL; built-ins; segment coupons (CONTRACT §9, §4)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from flask_loyalty import InvalidInput
from flask_loyalty.errors import CouponError, NotFound
from flask_loyalty.services.analytics import RFM_SEGMENTS, STAGES
from flask_loyalty.services.segments import BUILTIN_RULES

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


def seed(shop) -> None:
    """a: 4 orders (last 2 days ago) 400 in all; b: 2 orders (last 40 days ago); c: 1 order 200 days ago."""
    lo = shop.loyalty
    for i in range(4):
        lo.record_purchase(f"a{i}", "a", "100", placed_at=NOW - timedelta(days=2 + 20 * i))
    lo.record_purchase("b0", "b", "30", placed_at=NOW - timedelta(days=40), channel="store")
    lo.record_purchase("b1", "b", "30", placed_at=NOW - timedelta(days=90), channel="store")
    lo.record_purchase("c0", "c", "500", placed_at=NOW - timedelta(days=200))
    lo.upsert_customer("d", email="d@example.com")
    lo.analytics.recompute(now=NOW)


def test_define_and_members(shop):
    seed(shop)
    seg = shop.loyalty.segments.define("regulars", {"frequency": {">=": 2}, "recency_days": {"<=": 90}})
    assert seg.name == "regulars" and seg.rule == {"frequency": {">=": 2}, "recency_days": {"<=": 90}}
    assert shop.loyalty.segments.members("regulars") == ["a", "b"]
    shop.loyalty.segments.define("regulars", {"frequency": {">=": 3}})          # redefine replaces the rule
    assert shop.loyalty.segments.members("regulars") == ["a"]
    rules = {
        "big": ({"monetary": {">": "300"}}, ["a", "c"]),
        "shop_goers": ({"main_channel": "store"}, ["b"]),
        "range": ({"monetary": {">=": 60, "<=": "400.00"}}, ["a", "b"]),
        "named": ({"segment": {"in": ["champions", "lost", "hibernating", "at_risk", "cant_lose"]}}, None),
        "not_champions": ({"segment": {"!=": "champions"}}, None),
        "no_buyers": ({"frequency": {"==": 0}}, ["d"]),
        "everyone": ({}, ["a", "b", "c", "d"]),
        "bought": ({"consent": {"!=": True}, "frequency": {">": 0}}, ["a", "b", "c"]),
        "rfm": ({"rfm": {"in": [shop.loyalty.analytics.profile("a").rfm]}}, ["a"]),
    }
    for name, (rule, expected) in rules.items():
        shop.loyalty.segments.define(name, rule)
        got = shop.loyalty.segments.members(name)
        if expected is not None:
            assert got == expected, name
    # != keeps customers without the value (d has no RFM segment)
    assert "d" in shop.loyalty.segments.members("not_champions")
    assert shop.loyalty.segments.is_member("big", "c") and not shop.loyalty.segments.is_member("big", "b")
    assert not shop.loyalty.segments.is_member("big", "nobody")


def test_rules_are_json_storable_and_round_trip(shop):
    seed(shop)
    seg = shop.loyalty.segments.define("money", {"historical_clv": {">=": Decimal("10.5")}, "p_alive": {">": 0}})
    assert seg.rule == {"historical_clv": {">=": "10.5"}, "p_alive": {">": 0.0}}
    json.dumps(seg.rule)
    shop.db.session.expire_all()
    assert shop.loyalty.segments.rule("money") == seg.rule


BAD_RULES = [
    ({"colour": {"==": "red"}}, "colour"),                         # unknown field
    ({"frequency": {"~=": 3}}, "frequency"),                       # unknown operator
    ({"frequency": {"between": [1, 2]}}, "frequency"),
    ({"frequency": {">=": "three"}}, "frequency"),                 # wrong type
    ({"frequency": {">=": True}}, "frequency"),
    ({"frequency": {">=": None}}, "frequency"),
    ({"segment": {">": "champions"}}, "segment"),                  # ordering on text
    ({"consent": {"<": True}}, "consent"),
    ({"consent": {"==": "yes"}}, "consent"),
    ({"segment": {"in": "champions"}}, "segment"),                 # in needs a list
    ({"segment": {"in": []}}, "segment"),
    ({"segment": {"in": [1, 2]}}, "segment"),
    ({"monetary": {">": "12.345678"}}, "monetary"),                # more than 4 places
    ({"monetary": {">": "lots"}}, "monetary"),
    ({"p_alive": {">": float("nan")}}, "p_alive"),
    ({"p_alive": {"<": 10 ** 400}}, "p_alive"),                    # beyond float range
    ({"p_alive": {"<": Decimal("NaN")}}, "p_alive"),
    ({"p_alive": {"<": Decimal("1E+400")}}, "p_alive"),
    ({"frequency": {"<": 2 ** 70}}, "frequency"),                  # beyond the column's range
    ({"frequency": {"<": 2 ** 31}}, "frequency"),
    ({"frequency": {">": -(2 ** 31) - 1}}, "frequency"),
    ({"frequency": {"in": [1, 2 ** 63]}}, "frequency"),
    ({"r_score": {"<": 2 ** 15}}, "r_score"),                      # a SMALLINT column
    ({"frequency": {"<": Decimal("1E+999999999")}}, "frequency"),
    ({"frequency": {">=": Decimal("sNaN")}}, "frequency"),
    ({"frequency": {}}, "frequency"),
    ({"__class__": {"==": 1}}, "__class__"),
    ({"frequency": {">=": 1}, "1 = 1) OR (1": {"==": 1}}, "1 = 1) OR (1"),
]


def test_bad_rules_raise_invalid_input(shop):
    for rule, where in BAD_RULES:
        with pytest.raises(InvalidInput) as info:
            shop.loyalty.segments.define("bad", rule)
        assert where in info.value.errors["rule"], rule
        with pytest.raises(NotFound):
            shop.loyalty.segments.members("bad")            # nothing was stored


def test_number_operands_at_the_column_limits_and_decimals_are_stored_as_json_numbers(shop):
    """Operands the columns hold work in SQL; a Decimal on a number field is stored as an int or float."""
    seed(shop)
    seg = shop.loyalty.segments.define("edges", {
        "frequency": {">=": Decimal("3"), "<": 2 ** 31 - 1, ">": -(2 ** 31)}, "r_score": {"<=": 2 ** 15 - 1},
        "p_alive": {"<": 10 ** 300, ">=": Decimal("-0.5")}, "avg_interval_days": {"!=": Decimal("1E+400") / 10 ** 400},
        "recency_days": {"in": [Decimal("2"), Decimal("2.5"), 3]}})
    assert seg.rule == {
        "frequency": {">=": 3, "<": 2 ** 31 - 1, ">": -(2 ** 31)}, "r_score": {"<=": 2 ** 15 - 1},
        "p_alive": {"<": 1e300, ">=": -0.5}, "avg_interval_days": {"!=": 1.0},
        "recency_days": {"in": [2, 2.5, 3]}}
    assert type(seg.rule["frequency"][">="]) is int
    json.dumps(seg.rule)
    assert shop.loyalty.segments.members("edges") == ["a"]


def test_bad_names_and_rule_shapes(shop):
    for name, rule in [("", {}), ("has space", {}), ("x" * 65, {}), ("champions", {}), ("trust", {}),
                       ("top_30_clv", {}), ("ok", "frequency >= 3"), ("ok", ["frequency"]), ("ok", None)]:
        with pytest.raises(InvalidInput):
            shop.loyalty.segments.define(name, rule)


def test_builtin_segments(shop):
    seed(shop)
    assert set(BUILTIN_RULES) == set(RFM_SEGMENTS) | set(STAGES) | {"top_30_clv"}
    by_segment: dict[str, list[str]] = {}
    for ref in "abc":
        p = shop.loyalty.analytics.profile(ref)
        by_segment.setdefault(p.segment, []).append(ref)
    for name in RFM_SEGMENTS:
        assert shop.loyalty.segments.members(name) == by_segment.get(name, [])
    stages = {ref: shop.loyalty.analytics.profile(ref).stage for ref in "abcd"}
    for name in STAGES:
        assert shop.loyalty.segments.members(name) == sorted(r for r, s in stages.items() if s == name)
    # ceil(0.3 * 3 buyers) = 1: the buyer with the highest total value (c: 500 once, still within
    # the one-year heuristic interval, so worth 150 + 143.02 against a's 120 + 114.42)
    totals = {ref: shop.loyalty.analytics.profile(ref).total_clv for ref in "abc"}
    assert totals["c"] > totals["a"] > totals["b"]
    assert shop.loyalty.segments.members("top_30_clv") == ["c"]
    listed = shop.loyalty.segments.list()
    assert [s.name for s in listed if s.builtin] == list(BUILTIN_RULES)
    with pytest.raises(NotFound):
        shop.loyalty.segments.members("nope")


def test_define_commit_false_joins_the_host_transaction(shop):
    shop.loyalty.segments.define("later", {"frequency": {">": 1}}, commit=False)
    shop.db.session.rollback()
    with pytest.raises(NotFound):
        shop.loyalty.segments.members("later")


def test_segment_coupons_are_enforced_at_redeem(shop):
    seed(shop)
    shop.loyalty.segments.define("regulars", {"frequency": {">=": 2}})
    coupon = shop.loyalty.coupons.create(kind="fixed", value="5.00", segment="regulars", max_uses_per_customer=1)
    assert shop.loyalty.coupons.validate(coupon.code, customer_ref="c", order_total=Decimal("50")).reason == "segment"
    with pytest.raises(CouponError) as info:
        shop.loyalty.coupons.redeem(coupon.code, customer_ref="c", order_ref="n1", order_total=Decimal("50"))
    assert info.value.reason == "segment"
    with pytest.raises(CouponError) as info:
        shop.loyalty.coupons.redeem(coupon.code, customer_ref="stranger", order_ref="n2", order_total=Decimal("50"))
    assert info.value.reason == "segment"
    redemption = shop.loyalty.coupons.redeem(coupon.code, customer_ref="a", order_ref="n3", order_total=Decimal("50"))
    assert redemption.discount == Decimal("5.00")
    builtin = shop.loyalty.coupons.create(kind="percent", value="10", segment="top_30_clv")
    shop.loyalty.coupons.redeem(builtin.code, customer_ref="c", order_ref="n4", order_total=Decimal("50"))
    with pytest.raises(CouponError):
        shop.loyalty.coupons.redeem(builtin.code, customer_ref="a", order_ref="n5", order_total=Decimal("50"))
    with pytest.raises(InvalidInput):
        shop.loyalty.coupons.create(kind="fixed", value="5.00", segment="no_such_segment")


def test_segment_membership_follows_recompute(shop):
    seed(shop)
    shop.loyalty.segments.define("regulars", {"frequency": {">=": 2}})
    coupon = shop.loyalty.coupons.create(kind="fixed", value="5.00", segment="regulars")
    shop.loyalty.record_purchase("c1", "c", "10", placed_at=NOW - timedelta(days=1))
    with pytest.raises(CouponError):                 # not a member until the next recompute
        shop.loyalty.coupons.redeem(coupon.code, customer_ref="c", order_ref="n1", order_total=Decimal("50"))
    shop.loyalty.analytics.recompute(now=NOW)
    shop.loyalty.coupons.redeem(coupon.code, customer_ref="c", order_ref="n1", order_total=Decimal("50"))


def test_cli_segments(shop):
    seed(shop)
    runner = shop.app.test_cli_runner()
    result = runner.invoke(args=["loyalty", "segments", "define", "regulars", '{"frequency": {">=": 2}}'])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["loyalty", "segments", "members", "regulars"])
    assert result.output.split() == ["a", "b"]
    result = runner.invoke(args=["loyalty", "segments", "list"])
    assert "regulars\tdefined" in result.output and "champions\tbuilt-in" in result.output
    bad = runner.invoke(args=["loyalty", "segments", "define", "x", '{"colour": 1}'])
    assert bad.exit_code != 0 and "colour" in bad.output
    bad = runner.invoke(args=["loyalty", "segments", "define", "x", "{not json"])
    assert bad.exit_code != 0
    missing = runner.invoke(args=["loyalty", "segments", "members", "nope"])
    assert missing.exit_code != 0
