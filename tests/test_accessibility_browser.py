"""Every shopper page audited by axe-core in headless Chromium, in each shipped language.

axe-core (Deque's rules engine, the reference implementation of the WCAG
checks browsers' own audit tools run) is injected into the page by the test
only; the pages themselves load no third-party script.  Each page is opened
at phone width (the shoppers' usual screen) in English, Spanish, Romanian and
Russian, and must show no violation of WCAG 2.1 A/AA or of axe's best
practices: labels, colour contrast, landmarks, headings, language of the page,
names of links and buttons, ARIA use.  A failure lists each rule, its impact,
the offending elements and axe's help link.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import NEEDS_CHROMIUM, live_server, phone_tab

pytestmark = NEEDS_CHROMIUM
axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright")

LOCALES = ("en", "es", "ro", "ru")
#: The rule sets checked: WCAG 2.0 and 2.1, levels A and AA, and axe's best practices.
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@pytest.fixture
def db_url(tmp_path: Any) -> str:
    """The pages are the same on both databases: SQLite only."""
    return f"sqlite:///{tmp_path / 'shop.db'}"


@dataclass
class Served:
    shop: Any
    base: str

    def path(self, url: str) -> str:
        """A link the library made for ``http://shop.test``, on the live server."""
        return self.base + url.replace("http://shop.test", "")


@pytest.fixture
def served(make_shop: Any) -> Iterator[Served]:
    shop = make_shop()
    with live_server(shop.app) as base:
        yield Served(shop, base)


@pytest.fixture(params=LOCALES)
def locale(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def phone(browser: Any, locale: str) -> Iterator[Any]:
    """A phone whose browser asks for ``locale`` (pages without a known customer follow it)."""
    with phone_tab(browser, locale) as tab:
        yield tab


def _report(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        targets = ", ".join(" ".join(node["target"]) for node in v["nodes"][:5])
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} - {targets} - {v['helpUrl']}")
    return "\n".join(lines)


def _audit(page: Any, where: str) -> list[str]:
    """axe's violations on the page as it is now, one readable line each (empty: none)."""
    results = axe_sync.Axe().run(page, options={"runOnly": {"type": "tag", "values": TAGS},
                                                "resultTypes": ["violations"]})
    violations = results.response["violations"]
    return [f"{where}: {line}" for line in _report(violations).splitlines()]


def _customer(served: Served, locale: str) -> dict[str, str]:
    """A customer in ``locale`` with an order, marketing consent, a pending double opt-in; their links."""
    loyalty = served.shop.loyalty
    ref = f"shopper-{locale}"
    with served.shop.app.app_context():
        loyalty.upsert_customer(ref, email=f"{ref}@example.com", name="Ana Pop", locale=locale)
        loyalty.consent.grant(ref, "email_marketing", source="signup", double_opt_in=False)
        loyalty.consent.grant(ref, "surveys", source="signup", double_opt_in=True)
        loyalty.record_purchase(f"{ref}-o1", ref, "42.50", email=f"{ref}@example.com",
                          items=[{"sku": "TEA-1", "name": "Green tea", "quantity": 2, "unit_price": "21.25"}])
        confirm = next(m.payload["confirm_url"] for m in loyalty.messages.for_customer(ref)
                       if m.payload and "confirm_url" in m.payload)
        return {"survey": loyalty.links.survey(f"{ref}-o1"), "preferences": loyalty.links.preferences(ref),
                "unsubscribe": loyalty.links.unsubscribe(ref), "wallet": loyalty.links.wallet(ref), "confirm": confirm}


def test_shopper_pages_pass_axe(served: Served, phone: Any, locale: str) -> None:
    links = _customer(served, locale)
    problems: list[str] = []

    def visit(name: str, url: str) -> None:
        response = phone.goto(url)
        assert response is not None and response.status < 500, (name, response and response.status)
        assert phone.evaluate("document.documentElement.lang").startswith(locale), name
        problems.extend(_audit(phone, name))

    visit("survey form", served.path(links["survey"]))
    phone.locator("form button[type=submit]").first.click()           # nothing answered: the errors
    phone.wait_for_load_state()
    problems.extend(_audit(phone, "survey form with errors"))
    visit("preference center", served.path(links["preferences"]))
    visit("erasure confirmation", served.path(links["preferences"]).split("?")[0] + "/erase")
    served.shop.app.config["LOYALTY_OPT_IN_CONFIRM_BUTTON"] = True     # the page with the button, then its result
    visit("double opt-in confirmation", served.path(links["confirm"]))
    phone.locator("form button[type=submit]").first.click()
    phone.wait_for_load_state()
    problems.extend(_audit(phone, "double opt-in confirmed"))
    visit("wallet", served.path(links["wallet"]))
    visit("printable coupon cards", served.path(links["wallet"]).split("?")[0] + "/print")
    visit("unsubscribe", served.path(links["unsubscribe"]))
    phone.locator("form button[type=submit]").first.click()           # one click: withdrawn
    phone.wait_for_load_state()
    problems.extend(_audit(phone, "unsubscribed"))
    visit("expired link", served.base + "/loyalty/survey/not-a-valid-token")
    assert not problems, "\n" + "\n".join(problems)


def test_the_audit_finds_violations(browser: Any) -> None:
    """The harness itself: a page with an unlabelled field and low contrast fails the audit."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_content('<html lang="en"><body><main><h1>Form</h1><input type="text">'
                         '<p style="color:#bbb;background:#fff">faint</p></main></body></html>')
        found = "\n".join(_audit(page, "broken"))
    finally:
        context.close()
    assert "label" in found and "color-contrast" in found, found


@pytest.fixture
def dashboard(make_shop: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    from test_admin_browser import seed

    shop = make_shop(LOYALTY_SHOP_NAME="Green Leaf Tea", LOYALTY_ADMIN_IDENTITY=lambda: "owner@greenleaf.test")
    shop.loyalty.admin_guard(lambda: True)
    with shop.app.app_context():
        info = seed(shop)
        from flask_loyalty.services.dashboard import available_charts
        info["charts"] = available_charts()
    with live_server(shop.app) as base:
        yield f"{base}/loyalty/admin", info


def test_dashboard_pages_pass_axe(dashboard: tuple[str, dict[str, Any]], browser: Any, locale: str) -> None:
    """The shop owner's pages at tablet width, in the language the owner's browser asks for."""
    base, info = dashboard
    context = browser.new_context(viewport={"width": 820, "height": 1180}, device_scale_factor=1, locale=locale)
    page = context.new_page()
    page.set_default_timeout(20000)
    paths = ["/?days=365", "/charts", "/customers", "/customers/cust-001", "/audit", "/outbox",
             f"/outbox/{info['message_id']}", "/coupons", "/gift-cards", "/surveys", "/consent?ref=cust-004",
             "/consent/cust-004/erase"] + [f"/charts/{name}" for name in info["charts"]]
    problems: list[str] = []
    try:
        for path in paths:
            response = page.goto(base + path)
            assert response is not None and response.status == 200, (path, response and response.status)
            assert page.evaluate("document.documentElement.lang").startswith(locale), path
            problems.extend(_audit(page, path))
    finally:
        context.close()
    assert not problems, "\n" + "\n".join(problems)
