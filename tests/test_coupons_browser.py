"""The wallet and the printable coupon cards in headless Chromium, at phone and desktop widths.

Screenshots go to docs/_static/wallet-*.png and coupon-cards-*.png (and a print
preview of the A4 sheet, coupon-cards-print.png) for the documentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from conftest import NEEDS_CHROMIUM, live_server, screenshot_dir

STATIC = screenshot_dir()  # docs/_static with LOYALTY_SCREENSHOTS=1
PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 900}
MM = 96 / 25.4   # CSS pixels per millimetre

pytestmark = NEEDS_CHROMIUM


@pytest.fixture
def db_url(tmp_path: Any) -> str:
    """Runs once, on a SQLite file (the pages are the same on PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'shop.db'}"


@pytest.fixture
def served(make_shop: Any) -> Iterator[tuple[Any, str, str]]:
    shop = make_shop(LOYALTY_SHOP_NAME="Green Leaf Tea", LOYALTY_TIMEZONE="Europe/Madrid")
    with shop.app.app_context():
        L = shop.loyalty  # noqa: N806
        L.upsert_customer("ana", name="Ana", locale="en")
        L.record_purchase("o1", "ana", "86.40")
        L.coupons.create(kind="percent", value="15", customer_ref="ana", expires_at=date(2030, 3, 31),
                         min_order_total="30")
        L.coupons.create(kind="fixed", value="10", customer_ref="ana", expires_at=date(2030, 6, 30))
        L.coupons.create(kind="free_shipping", customer_ref="ana", first_order_only=False)
        L.coupons.create(kind="gift", gift_name="Tea sampler", customer_ref="ana", expires_at=date(2030, 12, 24))
        path = L.links.wallet("ana").replace("http://shop.test", "")
    with live_server(shop.app) as base:
        yield shop, base, path


def open_page(browser: Any, viewport: dict[str, int], url: str) -> Any:
    mobile = viewport["width"] < 600
    context = browser.new_context(viewport=viewport, device_scale_factor=1, is_mobile=mobile, has_touch=mobile,
                                  locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(15000)
    response = page.goto(url)
    assert response.status == 200
    return page


def no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"))


@pytest.mark.parametrize("name,viewport", [("phone", PHONE), ("desktop", DESKTOP)])
def test_wallet_page(served: Any, browser: Any, name: str, viewport: dict[str, int]) -> None:
    _shop, base, path = served
    page = open_page(browser, viewport, base + path)
    assert page.locator("h1").inner_text() == "Your wallet"
    values = page.locator(".wallet-value").all_inner_texts()
    assert "15% off" in values and "€10.00 off" in values and "Free shipping" in values
    assert "Free gift: Tea sampler" in values
    assert page.get_by_text("Valid until 31 March 2030").count() == 1 or \
        page.get_by_text("Valid until March 31, 2030").count() == 1
    link = page.get_by_role("link", name="Print my coupons")
    box = link.bounding_box()
    assert box is not None and box["height"] >= 44
    assert no_horizontal_scroll(page)
    page.screenshot(path=str(STATIC / f"wallet-{name}.png"), full_page=True)
    link.click()
    page.wait_for_load_state()
    assert page.url.endswith("/print")
    page.context.close()


@pytest.mark.parametrize("name,viewport", [("phone", PHONE), ("desktop", DESKTOP)])
def test_coupon_cards_page(served: Any, browser: Any, name: str, viewport: dict[str, int]) -> None:
    _shop, base, path = served
    page = open_page(browser, viewport, base + path + "/print")
    cards = page.locator(".coupon-card")
    assert cards.count() == 5          # our four and the shop's welcome coupon from the first order
    assert page.locator(".coupon-sheet").count() == 2
    assert page.locator(".coupon-card svg.coupon-qr").count() == 5
    assert page.locator(".coupon-shop").first.inner_text().lower() == "green leaf tea"
    assert no_horizontal_scroll(page)
    first, second = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    if name == "phone":
        assert second["y"] > first["y"]                 # one card per row
    else:
        assert abs(second["y"] - first["y"]) < 1          # two cards side by side
    qr = page.locator(".coupon-qr").first.bounding_box()
    assert qr["width"] >= 80 and abs(qr["width"] - qr["height"]) < 2
    page.screenshot(path=str(STATIC / f"coupon-cards-{name}.png"), full_page=True)
    page.context.close()


def test_coupon_cards_print_layout(served: Any, browser: Any) -> None:
    """Printed: A4 sheets, each four A6 cards of 105 x 148.5 mm in a 2 x 2 grid, nothing else."""
    _shop, base, path = served
    page = open_page(browser, {"width": 794, "height": 1123}, base + path + "/print")
    page.emulate_media(media="print")
    assert page.locator(".print-intro").is_hidden() and page.locator(".loyalty-header").is_hidden()
    sheet = page.locator(".coupon-sheet").first
    box = sheet.bounding_box()
    assert abs(box["width"] - 210 * MM) < 2 and abs(box["height"] - 297 * MM) < 2
    boxes = [sheet.locator(".coupon-card").nth(i).bounding_box() for i in range(4)]
    for box in boxes:
        assert abs(box["width"] - 105 * MM) < 2 and abs(box["height"] - 148.5 * MM) < 2
    xs, ys = sorted({round(b["x"]) for b in boxes}), sorted({round(b["y"]) for b in boxes})
    assert len(xs) == 2 and len(ys) == 2
    assert abs((xs[1] - xs[0]) - 105 * MM) < 2 and abs((ys[1] - ys[0]) - 148.5 * MM) < 2
    page.screenshot(path=str(STATIC / "coupon-cards-print.png"), full_page=True)
    pdf = page.pdf(format="A4", print_background=True, prefer_css_page_size=True)
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") + \
        pdf.count(b"/Type/Page") >= 1
    page.context.close()
