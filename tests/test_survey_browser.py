"""The survey page in headless Chromium at phone width, filled with the keyboard only (issue 5).

Screenshots go to docs/_static/survey-*.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import NEEDS_CHROMIUM, live_server, phone_tab, screenshot_dir

STATIC = screenshot_dir()  # docs/_static with LOYALTY_SCREENSHOTS=1

pytestmark = NEEDS_CHROMIUM


@pytest.fixture
def db_url(tmp_path: Any) -> str:
    """The browser test runs once, on a SQLite file (the pages are the same on PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'shop.db'}"


@pytest.fixture
def served(make_shop: Any) -> Iterator[tuple[Any, str]]:
    shop = make_shop()
    with live_server(shop.app) as base:
        yield shop, base


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with phone_tab(browser) as tab:
        yield tab


def _survey_path(shop: Any, order_ref: str) -> str:
    with shop.app.app_context():
        return shop.loyalty.links.survey(order_ref).replace("http://shop.test", "")


def _focused(page: Any) -> dict[str, str]:
    return page.evaluate("() => { const e = document.activeElement;"
                         " return {tag: e.tagName, id: e.id, name: e.name || '', value: e.value || ''}; }")


def _press(page: Any, key: str, times: int = 1) -> None:
    for _ in range(times):
        page.keyboard.press(key)


def test_keyboard_only_at_phone_width(served: tuple[Any, str], page: Any) -> None:
    shop, base = served
    with shop.app.app_context():
        shop.loyalty.upsert_customer("c1", name="Ana")
        shop.loyalty.record_purchase("o1", "c1", "20.00", email="ana@example.com")
        shop.loyalty.record_purchase("o2", "c1", "15.00")
    STATIC.mkdir(parents=True, exist_ok=True)
    page.goto(base + _survey_path(shop, "o1"))
    assert page.title().endswith("Our shop")

    # phone layout: nothing wider than the screen, every choice a large tap target
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    sizes = page.evaluate("Array.from(document.querySelectorAll('.loyalty-choice, button'))"
                          ".map(e => [e.getBoundingClientRect().width, e.getBoundingClientRect().height])")
    assert sizes and all(w >= 44 and h >= 44 for w, h in sizes), sizes
    page.screenshot(path=str(STATIC / "survey-form.png"), full_page=True)

    # keyboard only: skip link, then each radio group in turn
    _press(page, "Tab")
    assert _focused(page)["tag"] == "A"                       # "Skip to content"
    _press(page, "Tab")
    assert _focused(page)["name"] == "source"
    _press(page, "ArrowDown", 2)                               # search_engine -> social_network -> friend_family
    _press(page, "Tab")
    assert _focused(page)["name"] == "experience"
    _press(page, "ArrowRight", 3)                              # 1 -> 4
    _press(page, "Tab")
    assert _focused(page)["name"] == "ease"
    _press(page, "ArrowRight", 4)                              # 1 -> 5
    _press(page, "Tab")
    assert _focused(page)["name"] == "recommend"               # leave the required question unanswered
    _press(page, "Tab")
    assert _focused(page)["id"] == "f-comment"
    page.keyboard.type("Arrived quickly, well packed.")
    _press(page, "Tab")
    assert _focused(page)["tag"] == "BUTTON"
    _press(page, "Enter")
    page.wait_for_selector("#survey-errors")

    # the error summary takes focus; the answers are kept
    assert _focused(page)["id"] == "survey-errors"
    assert page.is_checked("#f-source-2") and page.is_checked("#f-experience-3") and page.is_checked("#f-ease-4")
    assert page.input_value("#f-comment") == "Arrived quickly, well packed."
    assert "Please answer this question." in page.inner_text("#e-recommend")
    page.screenshot(path=str(STATIC / "survey-errors.png"), full_page=True)

    # follow the summary's link to the question, answer it, send
    _press(page, "Tab")
    assert _focused(page)["tag"] == "A"
    _press(page, "Enter")
    assert _focused(page)["id"] == "f-recommend-0"
    _press(page, "ArrowRight", 9)
    assert page.is_checked("#f-recommend-9")
    _press(page, "Tab")
    assert _focused(page)["id"] == "f-comment"
    _press(page, "Tab")
    _press(page, "Enter")
    page.wait_for_selector("#thanks-title")
    assert page.inner_text("#thanks-title") == "Thank you!"
    assert page.get_attribute(".loyalty-survey-promoter a", "href").startswith("http://shop.test/loyalty/wallet/")
    page.screenshot(path=str(STATIC / "survey-thanks.png"), full_page=True)

    with shop.app.app_context():
        stored = shop.loyalty.surveys.response("o1")
        assert stored.completed and stored.channel == "page"
        assert stored.values == {"source": "friend_family", "experience": 4, "ease": 5, "recommend": 9,
                                 "comment": "Arrived quickly, well packed."}

    # the mail's one-click link: answer recorded at once, the rest of the form pre-filled
    page.goto(base + _survey_path(shop, "o2") + "?recommend=3")
    assert page.is_checked("#f-recommend-3")
    assert "we saved your answer" in page.inner_text("[role=status]")
    page.screenshot(path=str(STATIC / "survey-one-click.png"), full_page=True)
    with shop.app.app_context():
        assert shop.loyalty.surveys.response("o2").values == {"recommend": 3}
