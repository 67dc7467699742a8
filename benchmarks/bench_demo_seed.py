"""The demo shop's first start: seeding a year of history, next to bare record_purchase calls.

    python benchmarks/bench_demo_seed.py [--customers 2000 --orders 8000]

Both run on fresh SQLite files in the same process, one after the other:

- baseline: 2,000 ``loyalty.record_purchase`` calls (three items each) on a
  bare app with flask_loyalty and no shop, one commit per 500 orders;
- the seed: ``example_shop.seed.seed()`` exactly as ``python -m example_shop``
  runs it on its first start.

Prints wall and CPU time of each, the per-order cost and the goal (< 60 s).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def baseline(path: str, count: int = 2000) -> tuple[float, float]:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_loyalty import Loyalty

    db = SQLAlchemy()
    app = Flask("baseline")
    app.config.update(SECRET_KEY="bench", SQLALCHEMY_DATABASE_URI=f"sqlite:///{path}", LOYALTY_BASE_URL="http://x")
    db.init_app(app)
    loyalty = Loyalty(app, db)
    start = datetime(2025, 11, 1, tzinfo=timezone.utc)
    with app.app_context():
        db.create_all()
        loyalty.create_all()
        wall, used = time.perf_counter(), cpu()
        for i in range(count):
            loyalty.record_purchase(
                f"o{i}", f"c{i % 500}", Decimal("30.00"), email=f"c{i % 500}@example.com",
                placed_at=start + timedelta(hours=i), commit=False,
                items=[{"sku": "A", "name": "a", "quantity": 1, "unit_price": "10.00"},
                       {"sku": "B", "name": "b", "quantity": 1, "unit_price": "10.00"},
                       {"sku": "C", "name": "c", "quantity": 1, "unit_price": "10.00"}])
            if i % 500 == 499:
                db.session.commit()
        db.session.commit()
        result = time.perf_counter() - wall, cpu() - used
        db.session.remove()
        db.engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=8000)
    options = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        base_wall, base_cpu = baseline(os.path.join(tmp, "baseline.db"))
        print(f"baseline: 2000 record_purchase    {base_wall:7.1f} s wall {base_cpu:7.1f} s CPU  "
              f"({base_wall / 2000 * 1000:.1f} ms per order)")

        from example_shop import create_app
        from example_shop.seed import seed

        app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{os.path.join(tmp, 'demo.db')}"})
        with app.app_context():
            wall, used = time.perf_counter(), cpu()
            report = seed(customers=options.customers, orders=options.orders, echo=lambda _line: None)
            wall, used = time.perf_counter() - wall, cpu() - used
        print(f"demo seed: {report}")
        print(f"demo seed                         {wall:7.1f} s wall {used:7.1f} s CPU  "
              f"({wall / report.orders * 1000:.1f} ms per order, all included)")
        print(f"ratio per order seed/baseline: {(wall / report.orders) / (base_wall / 2000):.1f}   "
              f"goal: seed < 60 s: {'met' if wall < 60 else 'not met'}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
