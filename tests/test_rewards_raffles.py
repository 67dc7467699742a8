"""Raffles: eligibility, tickets, the commit-reveal draw that anyone can re-run, prizes."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from conftest import assert_one_created

from flask_loyalty import InvalidInput
from flask_loyalty.errors import NotFound
from flask_loyalty.services.raffles import entries_digest, rerun_draw, verify_public

UTC = timezone.utc
T0 = datetime(2026, 3, 1, tzinfo=UTC)
RULE = {"since": T0, "until": T0 + timedelta(days=30)}


def buy(s, order, customer, total, day):
    s.loyalty.record_purchase(order, customer, total, placed_at=T0 + timedelta(days=day))


def test_rerun_draw_is_deterministic_weighted_and_without_replacement():
    entries = [(1, 1), (2, 5), (3, 2)]
    first = rerun_draw("seed", entries, 3)
    assert first == rerun_draw("seed", list(reversed(entries)), 3)
    assert sorted(first) == [1, 2, 3]
    assert rerun_draw("seed", entries, 2, "salt") == rerun_draw("seed", entries, 2, "salt")
    assert rerun_draw("seed", entries, 10) and len(rerun_draw("seed", entries, 10)) == 3
    assert rerun_draw("seed", [], 2) == []
    # weights: entry 2 holds 5/8 of the tickets
    wins = Counter(rerun_draw(f"s{i}", entries, 1)[0] for i in range(4000))
    assert 0.58 < wins[2] / 4000 < 0.67 and 0.09 < wins[1] / 4000 < 0.16
    # the digest pins the list: a changed list gives another digest
    assert entries_digest(entries) != entries_digest([(1, 1), (2, 6), (3, 2)])


def test_draw_commit_reveal_and_verification(shop):
    s = shop
    buy(s, "a1", "alice", 10, 1)
    buy(s, "a2", "alice", 10, 2)
    buy(s, "b1", "bob", 10, 3)
    buy(s, "c1", "carol", 10, 40)      # outside the window
    buy(s, "d1", "dave", 10, 5)
    s.loyalty.record_refund("d1")      # refunded in full: no ticket
    raffle = s.loyalty.raffles.create("spring", title="Spring raffle", rule=RULE, winners=1,
                                      prize={"kind": "gift_card", "value": "25.00"})
    before = s.loyalty.raffles.public("spring")
    assert before["status"] == "open" and "seed" not in before and "entries" not in before
    assert before["seed_hash"] == raffle.seed_hash and len(raffle.seed_hash) == 64
    s.loyalty.raffles.draw("spring", public_salt="lottery 2026-04-01: 7 12 19")
    after = s.loyalty.raffles.public("spring")
    assert hashlib.sha256(after["seed"].encode()).hexdigest() == before["seed_hash"]
    assert after["entries"] == [[1, 2], [2, 1]]            # alice 2 orders, bob 1
    assert len(after["winners"]) == 1
    assert after["winners"] == rerun_draw(after["seed"], [(1, 2), (2, 1)], 1, "lottery 2026-04-01: 7 12 19")
    assert verify_public(after) and s.loyalty.raffles.verify("spring")
    # a tampered record does not verify
    assert not verify_public({**after, "winners": [3 - after["winners"][0]]})
    assert not verify_public({**after, "entries": [[1, 3], [2, 1]]})
    assert not verify_public({**after, "seed": "0" * 64})
    # the winner got a gift card
    winner = "alice" if after["winners"] == [1] else "bob"
    entry = s.loyalty.raffles.entry_of("spring", winner)
    assert entry.place == 1 and s.loyalty.gift_cards.balance(entry.prize_code) == Decimal("25.00")
    assert s.loyalty.raffles.entry_of("spring", "carol") is None
    # drawn once only
    with pytest.raises(InvalidInput):
        s.loyalty.raffles.draw("spring")
    # the public record is served as JSON
    assert s.client.get("/loyalty/raffles/spring.json").get_json()["seed"] == after["seed"]
    assert s.client.get("/loyalty/raffles/nope.json").status_code == 404


def test_entries_per_amount_and_min_orders(shop):
    s = shop
    buy(s, "a1", "alice", "45.50", 1)
    buy(s, "a2", "alice", "30", 2)      # 75.50 -> 3 tickets of 25
    buy(s, "b1", "bob", "24.99", 3)     # 0 tickets
    buy(s, "c1", "carol", "50", 3)
    buy(s, "c2", "carol", "10", 4)
    s.loyalty.record_refund("c1", amount="20")   # 40 net -> 1 ticket
    s.loyalty.raffles.create("amount", title="Per amount", rule=RULE, entries_per="amount",
                             amount_per_entry="25", winners=5, prize={"kind": "fixed", "value": "10"})
    s.loyalty.raffles.draw("amount")
    record = s.loyalty.raffles.public("amount")
    assert record["entries"] == [[1, 3], [2, 1]]
    assert sorted(record["winners"]) == [1, 2]          # fewer entries than winners: everyone wins once
    coupon_code = s.loyalty.raffles.entry_of("amount", "alice").prize_code
    assert coupon_code in [c.code for c in s.loyalty.coupons.for_customer("alice")]
    s.loyalty.raffles.create("regulars", title="Two orders", rule={**RULE, "min_orders": 2},
                             prize={"kind": "points", "value": 50})
    s.loyalty.raffles.draw("regulars")
    assert s.loyalty.raffles.public("regulars")["entries"] == [[1, 2], [2, 2]]


def test_consent_and_segment_eligibility(shop):
    s = shop
    buy(s, "a1", "alice", 10, 1)
    buy(s, "b1", "bob", 10, 1)
    buy(s, "b2", "bob", 10, 2)
    s.loyalty.consent.grant("alice", "surveys", source="test")
    s.loyalty.raffles.create("consented", title="Consent", rule={**RULE, "consent": "surveys"},
                             prize={"kind": "fixed", "value": "5"})
    s.loyalty.raffles.draw("consented")
    assert s.loyalty.raffles.entry_of("consented", "alice") is not None
    assert s.loyalty.raffles.entry_of("consented", "bob") is None
    s.loyalty.analytics.recompute(now=T0 + timedelta(days=31))
    s.loyalty.segments.define("repeaters", {"frequency": {">=": 2}})
    s.loyalty.raffles.create("segmented", title="Segment", rule={**RULE, "segment": "repeaters"},
                             prize={"kind": "fixed", "value": "5"})
    s.loyalty.raffles.draw("segmented")
    assert s.loyalty.raffles.public("segmented")["entries"] == [[1, 2]]
    assert s.loyalty.raffles.entry_of("segmented", "bob").number == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # validation only: one database is enough
@pytest.mark.parametrize("kwargs,field", [
    ({"name": "Bad Name"}, "name"),
    ({"rule": {"since": datetime(2026, 1, 1)}}, "rule"),
    ({"rule": {"since": T0, "until": T0}}, "rule"),
    ({"rule": {"colour": "red"}}, "rule"),
    ({"rule": {"segment": "no-such-segment"}}, "rule"),
    ({"rule": {"consent": "telepathy"}}, "rule"),
    ({"entries_per": "amount"}, "amount_per_entry"),
    ({"winners": 0}, "winners"),
    ({"prize": {"kind": "fixed"}}, "prize"),
    ({"prize": {"kind": "percent", "value": "120"}}, "prize"),
    ({"prize": {"kind": "lottery", "value": "1"}}, "prize"),
    ({"prize": {"kind": "free_shipping", "value": "5"}}, "prize"),     # coupons.create refuses it
    ({"prize": {"kind": "points", "value": "3000000000"}}, "prize"),   # beyond a 32-bit balance
    ({"prize": {"kind": "points", "value": "1000000001"}}, "prize"),
])
def test_bad_raffles(shop, kwargs, field):
    args = {"name": "r1", "title": "R", "prize": {"kind": "fixed", "value": "5"}, **kwargs}
    name = args.pop("name")
    with pytest.raises(InvalidInput) as info:
        shop.loyalty.raffles.create(name, **args)
    assert field in info.value.errors
    assert shop.loyalty.raffles.all() == []


def test_points_prize_at_the_limit_is_drawn(make_shop):
    s = make_shop()
    with s.app.app_context():
        s.loyalty.record_purchase("o1", "c1", "10", placed_at=datetime.now(timezone.utc) - timedelta(days=1))
        s.loyalty.raffles.create("big", title="Big", prize={"kind": "points", "value": "1000000000"})
        s.loyalty.raffles.draw("big")
        assert s.loyalty.points.balance("c1") == 10 + 10**9


def test_unknown_raffle(shop):
    with pytest.raises(NotFound):
        shop.loyalty.raffles.draw("ghost")


def test_raffle_names_no_raffle_can_have_are_not_found_without_a_query(shop):
    """A NUL byte in the public record's URL reached PostgreSQL (DataError, a 500); now a 404 on both databases."""
    shop.loyalty.raffles.create("spring", title="Spring", rule=RULE, prize={"kind": "gift_card", "value": "25.00"})
    for name in ("no\x00pe", "spring\x00", "x" * 65, "Spring", "spring\n"):
        with pytest.raises(NotFound):
            shop.loyalty.raffles.public(name)
        with pytest.raises(NotFound):
            shop.loyalty.raffles.draw(name)
    assert shop.client.get("/loyalty/raffles/no%00pe.json").status_code == 404
    assert shop.client.get("/loyalty/raffles/spring%00.json",
                           headers={"Accept": "application/json"}).get_json() == {"error": "not_found"}
    assert shop.loyalty.raffles.public("spring")["status"] == "open"


def test_cli_create_draw_show_verify(make_shop):
    s = make_shop()
    with s.app.app_context():
        buy(s, "a1", "alice", 10, 1)
        buy(s, "b1", "bob", 10, 2)
    runner = s.app.test_cli_runner()
    result = runner.invoke(args=["loyalty", "raffles", "create", "cli", "--title", "CLI raffle",
                                 "--since", T0.isoformat(), "--until", (T0 + timedelta(days=30)).isoformat(),
                                 "--prize-kind", "fixed", "--prize-value", "5", "--winners", "1"])
    assert result.exit_code == 0, result.output
    seed_hash = result.output.strip().rsplit(" ", 1)[1]
    result = runner.invoke(args=["loyalty", "raffles", "draw", "cli", "--salt", "public"])
    assert result.exit_code == 0 and "winning entries:" in result.output
    seed = result.output.split("seed: ")[1].split()[0]
    assert hashlib.sha256(seed.encode()).hexdigest() == seed_hash
    shown = runner.invoke(args=["loyalty", "raffles", "show", "cli"])
    assert verify_public(json.loads(shown.output))
    assert "verified" in runner.invoke(args=["loyalty", "raffles", "verify", "cli"]).output
    bad = runner.invoke(args=["loyalty", "raffles", "create", "x", "--title", "t", "--since", "2026-01-01",
                              "--prize-kind", "fixed", "--prize-value", "5"])
    assert bad.exit_code != 0 and "time zone" in bad.output


def test_export_and_erasure_keep_the_draw_verifiable(shop):
    s = shop
    buy(s, "a1", "alice", 10, 1)
    buy(s, "b1", "bob", 10, 2)
    s.loyalty.raffles.create("gdpr", title="GDPR", rule=RULE, winners=2, prize={"kind": "fixed", "value": "5"})
    s.loyalty.raffles.draw("gdpr")
    exported = s.loyalty.consent.export("alice")["raffles"]
    assert exported[0]["raffle"] == "gdpr" and exported[0]["prize_code"]
    s.loyalty.consent.erase("alice")
    assert s.loyalty.raffles.entry_of("gdpr", "alice").prize_code is None
    assert s.loyalty.raffles.verify("gdpr")


@pytest.mark.slow
def test_concurrent_creates_with_one_name_make_one_raffle_and_invalid_input(make_shop):
    s = make_shop(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 8, "max_overflow": 24, "pool_timeout": 120})
    def create():
        s.loyalty.raffles.create("spring", title="Spring", prize={"kind": "points", "value": "10"})

    assert_one_created(s, 6, create)
    with s.app.app_context():
        assert len(s.loyalty.raffles.all()) == 1
