"""flask_loyalty.contrib.celery against the real Redis broker on this machine."""

from __future__ import annotations

import socket
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest

celery = pytest.importorskip("celery")
from celery.contrib.testing.worker import start_worker  # noqa: E402

from flask_loyalty.contrib.celery import beat_schedule, register_tasks  # noqa: E402
from flask_loyalty.services import outbox  # noqa: E402

REDIS = "redis://127.0.0.1:6379/13"
T0 = datetime(2027, 3, 15, 12, 0, tzinfo=timezone.utc)


def redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]


def test_dispatch_and_plan_as_celery_tasks(make_shop):
    sent = []
    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False, LOYALTY_MAIL_TRANSPORT=sent.append)
    queue = f"loyalty-test-{uuid.uuid4().hex[:8]}"
    app = celery.Celery("shop", broker=REDIS, backend=REDIS)
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)
    prefix = f"shop_{uuid.uuid4().hex[:6]}"
    tasks = register_tasks(app, shop.app, prefix=prefix)
    with shop.app.app_context():
        shop.loyalty.upsert_customer("c1", email="c1@example.com", birthday=date(1990, 3, 15))
        shop.loyalty.consent.grant("c1", "email_marketing", source="test")
    with start_worker(app, pool="solo", perform_ping_check=False, queues=[queue], loglevel="WARNING"):
        assert tasks["plan"].delay(now=T0.isoformat()).get(timeout=30) == 1
        report = tasks["dispatch"].delay(now=T0.isoformat()).get(timeout=30)
        assert report["sent"] == 1 and report["failed"] == 0
        assert tasks["dispatch"].delay(now=(T0 + timedelta(minutes=1)).isoformat()).get(timeout=30)["claimed"] == 0
    assert [m["X-Loyalty-Kind"] for m in sent] == ["birthday"]
    with shop.app.app_context():
        assert [(m.kind, m.status) for m in shop.loyalty.messages.for_customer("c1")] == [("birthday", "sent")]
    assert outbox.KINDS["birthday"].marketing


def test_beat_schedule():
    schedule = beat_schedule(dispatch_every=30, plan_every=600, prefix="shop")
    assert schedule["shop.dispatch"]["task"] == "shop.dispatch"
    assert schedule["shop.dispatch"]["schedule"] == timedelta(seconds=30)
    assert schedule["shop.plan"]["schedule"] == timedelta(seconds=600)
    with pytest.raises(ValueError):
        beat_schedule(dispatch_every=0)
