"""``python -m example_shop``: create the database, seed it on first start, serve on 127.0.0.1."""

from __future__ import annotations

import os

from . import create_app
from .seed import STAFF_EMAIL, is_seeded, seed


def main() -> None:
    app = create_app()
    with app.app_context():
        if not is_seeded():
            print("First start: seeding a year of demo history ...")
            print(seed())
    port = int(os.environ.get("PORT", "5000"))
    prefix = app.config["LOYALTY_URL_PREFIX"].rstrip("/")
    print(f"\nLeaf & Bean runs on http://127.0.0.1:{port}/\n"
          f"  staff login: {STAFF_EMAIL} (then the dashboard at {prefix}/admin/)\n"
          f"  database: {app.config['SQLALCHEMY_DATABASE_URI']}\n"
          f"  fast-forward the plan: flask --app example_shop loyalty plan --now 2030-01-01T09:00:00Z\n")
    app.run(host="127.0.0.1", port=port, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
