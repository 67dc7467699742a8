"""Rewards on shopper pages and in mails: the wallet section, redeeming there, the four mail kinds."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

UTC = timezone.utc


@pytest.fixture
def rshop(make_shop):
    s = make_shop(LOYALTY_TIERS=[{"name": "Silver", "min_spend": "100", "discount_percent": "5",
                                  "points_multiplier": "1.5"},
                                 {"name": "Gold", "min_spend": "500", "discount_percent": "10"}],
                  LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT="outbox",
                  LOYALTY_MAX_MARKETING_PER_WEEK=10, LOYALTY_POINTS_EXPIRE_DAYS=365)
    with s.app.app_context():
        yield s


def sent(s, ref, kind, now):
    s.loyalty.dispatch(now=now)
    return [m for m in s.loyalty.messages.for_customer(ref) if m.kind == kind and m.status == "sent"]


def test_wallet_shows_points_tier_referral_and_redeems(rshop):
    s = rshop
    s.loyalty.record_purchase("o1", "c1", 250)
    url = s.loyalty.links.wallet("c1")
    path = url.removeprefix("http://shop.test")
    page = s.client.get(path).get_data(as_text=True)
    assert "Turn points into a coupon" in page and "Silver" in page and "Next level: Gold" in page
    assert "5% off every order" in page and "1.5 times the points on every order" in page
    code = s.loyalty.referrals.code_for("c1")
    assert f"/loyalty/r/{code}" in page
    assert 'value="200"' in page and 'value="300"' not in page   # 250 points: 1 or 2 coupons
    response = s.client.post(path + "/points", data={"points": "200"})
    assert response.status_code == 303 and response.headers["Location"].endswith("?redeemed=1")
    assert s.loyalty.points.balance("c1") == 50
    page = s.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Done: your new coupon" in page and "10.00" in page
    assert "You need 50 more points" in page
    # a second try with too many points explains itself
    response = s.client.post(path + "/points", data={"points": "100"})
    assert response.headers["Location"].endswith("?redeem_error=1")
    assert s.client.post(path + "/points", data={"points": "150"}).status_code == 400
    assert s.client.post(path + "/points", data={"points": "x"}).status_code == 400
    assert s.client.post("/loyalty/wallet/forged/points", data={"points": "100"}).status_code == 404


def test_points_form_refuses_non_ascii_digits_and_huge_numbers(rshop):
    s = rshop
    s.loyalty.record_purchase("o1", "c1", 250)
    path = s.loyalty.links.wallet("c1").removeprefix("http://shop.test")
    for raw in ("²", "١٠٠", "9" * 5000, "9" * 11, "-100", "1e3", ""):
        response = s.client.post(path + "/points", data={"points": raw})
        assert response.status_code == 400, (raw[:5], response.status_code)
        assert "Something is not right" in response.get_data(as_text=True)
    assert s.loyalty.points.balance("c1") == 250
    assert [e for e in s.loyalty.points.history("c1") if e.reason == "redeem"] == []


def test_wallet_in_spanish(rshop):
    s = rshop
    s.loyalty.upsert_customer("c1", locale="es")
    s.loyalty.record_purchase("o1", "c1", 120)
    page = s.client.get(s.loyalty.links.wallet("c1").removeprefix("http://shop.test")).get_data(as_text=True)
    assert "Invita a tus amigos" in page and "Convierte tus puntos en un cupón" in page


def test_rewards_mails_render(rshop):
    s = rshop
    s.loyalty.upsert_customer("adv", email="adv@example.com", locale="ro")
    s.loyalty.consent.grant("adv", "email_marketing", source="test")
    s.loyalty.upsert_customer("fr", email="fr@example.com", name="Bea")
    s.loyalty.consent.grant("fr", "email_marketing", source="test")
    now = datetime.now(UTC)
    s.loyalty.record_purchase("a1", "adv", 150, placed_at=now)
    code = s.loyalty.referrals.code_for("adv")
    s.loyalty.record_purchase("f1", "fr", 40, placed_at=now, referral_code=code)
    later = now + timedelta(hours=1)
    tier_mail = sent(s, "adv", "tier_changed", later)[0]
    assert tier_mail.subject == "Felicitări: acum sunteți Silver"
    assert "5% reducere la fiecare comandă" in tier_mail.body_text
    friend_mail = sent(s, "fr", "referral_reward", later)[0]
    assert friend_mail.subject == "Welcome! A present for your next order" and "Hello Bea," in friend_mail.body_text
    friend_code = s.loyalty.referrals.of_order("f1").friend_coupon
    assert friend_code in friend_mail.body_text and friend_code in friend_mail.body_html
    # points_expiring, then the campaign
    s.loyalty.points.expire(now=now + timedelta(days=355))
    warn = sent(s, "adv", "points_expiring", now + timedelta(days=355, hours=1))[0]
    assert re.search(r"150 de puncte", warn.subject)
    s.loyalty.campaigns.create("autumn", customer_refs=["fr"], offer={"kind": "percent", "value": "20"},
                               starts_at=now + timedelta(days=356), ends_at=now + timedelta(days=365),
                               holdout_share=0, subject="Autumn: 20% off", headline="Leaves are falling")
    s.loyalty.campaigns.launch("autumn", now=now + timedelta(days=356))
    camp = sent(s, "fr", "campaign", now + timedelta(days=356, hours=1))[0]
    assert camp.subject == "Autumn: 20% off" and "Leaves are falling" in camp.body_html
    assert "20% off your next order" in camp.body_text
    # the advocate's reward mail after the refund window
    s.loyalty.referrals.process(now=now + timedelta(days=31))
    adv_mail = sent(s, "adv", "referral_reward", now + timedelta(days=31, hours=1))[0]
    assert adv_mail.subject == "Vă mulțumim că ne-ați recomandat"
