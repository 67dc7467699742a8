"""Optional Celery integration: ``dispatch`` and ``plan`` as tasks, with a beat schedule.

Install with ``pip install flask-loyalty[celery]``.  Usage::

    from celery import Celery
    from flask_loyalty.contrib.celery import beat_schedule, register_tasks

    celery = Celery("shop", broker="redis://127.0.0.1:6379/0")
    tasks = register_tasks(celery, flask_app)       # {"dispatch": Task, "plan": Task}
    celery.conf.beat_schedule = beat_schedule(dispatch_every=60, plan_every=3600)

Run ``celery -A shop.celery worker`` (any number of workers, on any number of
machines: the outbox's leases make every message go out once) and
``celery -A shop.celery beat`` (exactly one).  Each task runs inside the
Flask app's context and returns the :class:`DispatchReport` as a dict (or the
number of messages ``plan`` scheduled).  Several Flask apps in one worker
register their tasks under different ``prefix`` values.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from flask import Flask

from ..clock import ensure_aware
from ..services.dispatch import dispatch
from ..services.plan import run_plan
from ..state import get_state

DEFAULT_PREFIX = "flask_loyalty"


def _now(value: str | None) -> datetime | None:
    if value is None:
        return None
    return ensure_aware(datetime.fromisoformat(value.replace("Z", "+00:00")), field="now")


def register_tasks(celery: Any, app: Flask, *, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """Register ``<prefix>.dispatch`` and ``<prefix>.plan`` on a Celery app for ``app``.

    ``dispatch(limit=None, now=None)`` sends what is due (``now``: ISO 8601
    with a time zone, for simulations) and returns the report as a dict;
    ``plan(now=None)`` schedules the time-based steps and returns their count.
    """

    def run_dispatch(limit: int | None = None, now: str | None = None) -> dict[str, Any]:
        with app.app_context():
            state = get_state(app)
            try:
                return asdict(dispatch(state, limit=limit, now=_now(now)))
            finally:
                state.session.remove()

    def run_plan_task(now: str | None = None) -> int:
        with app.app_context():
            state = get_state(app)
            try:
                return run_plan(state, now=_now(now))
            finally:
                state.session.remove()

    run_dispatch.__doc__ = "Send the loyalty messages that are due (flask_loyalty dispatch)."
    run_plan_task.__doc__ = "Schedule the time-based steps of the loyalty plan (flask_loyalty plan)."
    return {
        "dispatch": celery.task(name=f"{prefix}.dispatch", ignore_result=False)(run_dispatch),
        "plan": celery.task(name=f"{prefix}.plan", ignore_result=False)(run_plan_task),
    }


def beat_schedule(*, dispatch_every: float = 60.0, plan_every: float = 3600.0,
                  prefix: str = DEFAULT_PREFIX) -> dict[str, dict[str, Any]]:
    """A ``beat_schedule`` running dispatch every ``dispatch_every`` s and plan every ``plan_every`` s.

    Each dispatch run expires after its interval (a late one is dropped, the
    next one picks the messages up), so a stopped worker does not pile runs up.
    """
    if dispatch_every <= 0 or plan_every <= 0:
        raise ValueError("beat intervals must be positive")
    return {
        f"{prefix}.dispatch": {"task": f"{prefix}.dispatch", "schedule": timedelta(seconds=dispatch_every),
                               "options": {"expires": dispatch_every}},
        f"{prefix}.plan": {"task": f"{prefix}.plan", "schedule": timedelta(seconds=plan_every),
                           "options": {"expires": plan_every}},
    }
