"""Screenshots of the demo shop's dashboard with a seeded year of history -> docs/_static/demo-*.png.

Usage::

    python scripts/demo_screenshots.py [--database sqlite:////tmp/demo.db]

The database is seeded first when it is empty (as ``python -m example_shop``
does on its first start); the shop is served on 127.0.0.1 in a thread and a
headless Chromium (Debian's ``/usr/bin/chromium``) signs in as the demo staff
user and photographs the dashboard pages.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = [
    ("overview", "/loyalty/admin/"),
    ("chart-cohorts", "/loyalty/admin/charts/cohorts"),
    ("chart-pareto", "/loyalty/admin/charts/pareto"),
    ("chart-rfm", "/loyalty/admin/charts/rfm"),
    ("chart-clv", "/loyalty/admin/charts/clv"),
    ("chart-stages", "/loyalty/admin/charts/stages"),
    ("chart-nps", "/loyalty/admin/charts/nps"),
    ("customers", "/loyalty/admin/customers"),
    ("outbox", "/loyalty/admin/outbox"),
    ("surveys", "/loyalty/admin/surveys"),
    ("coupons", "/loyalty/admin/coupons"),
    ("consent", "/loyalty/admin/consent"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def main() -> None:
    """Seed if needed, serve, sign in as staff and save one screenshot per dashboard page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="sqlite:////tmp/leaf-and-bean-demo.db")
    parser.add_argument("--out", default=str(ROOT / "docs" / "_static"))
    options = parser.parse_args()

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from example_shop import create_app
    from example_shop.seed import is_seeded, seed

    app = create_app({"SQLALCHEMY_DATABASE_URI": options.database})
    with app.app_context():
        if not is_seeded():
            print(seed())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    app.config["LOYALTY_BASE_URL"] = base
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = Path(options.out)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(base + "/login")
            page.get_by_role("button", name="Sign in as demo staff (staff@leafandbean.test)").click()
            for name, path in PAGES:
                response = page.goto(base + path)
                assert response is not None and response.ok, (path, response and response.status)
                page.screenshot(path=str(out / f"demo-{name}.png"), full_page=True)
                print("saved", out / f"demo-{name}.png")
            browser.close()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
