"""Predicted lifetime value: BG/NBD + Gamma-Gamma recover known parameters from data simulated from the models."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest

from flask_loyalty.models import Customer, Purchase
from flask_loyalty.models.base import table_of
from flask_loyalty.services import clv

TRUE_BG = clv.BGNBDParams(r=0.6, alpha=40.0, a=0.7, b=2.8)
TRUE_GG = clv.GammaGammaParams(p=6.0, q=4.0, gamma=15.0)


def rel(got: float, want: float) -> float:
    return abs(got - want) / want


def test_bgnbd_recovers_simulated_parameters():
    rng = np.random.default_rng(7)
    big_t = np.floor(rng.uniform(150, 700, 8000))
    x, t_x, _ = clv.simulate_bgnbd(TRUE_BG, big_t, rng)
    fit = clv.fit_bgnbd(x, t_x, big_t)
    assert rel(fit.r, TRUE_BG.r) < 0.10
    assert rel(fit.alpha, TRUE_BG.alpha) < 0.10
    assert rel(fit.a, TRUE_BG.a) < 0.20
    assert rel(fit.b, TRUE_BG.b) < 0.20
    # the fitted model predicts the population's repeat purchases well
    assert rel(float(clv.expected_purchases(fit, 365, np.zeros(1), np.zeros(1), np.zeros(1))[0]),
               float(clv.expected_purchases(TRUE_BG, 365, np.zeros(1), np.zeros(1), np.zeros(1))[0])) < 0.05
    # and finds the optimum: the true parameters never have a higher likelihood
    true_ll = float(np.mean(clv.bgnbd_log_likelihood((0.6, 40.0, 0.7, 2.8), x, t_x, big_t)))
    assert fit.log_likelihood >= true_ll - 1e-9


def test_gamma_gamma_recovers_simulated_parameters():
    rng = np.random.default_rng(11)
    counts = rng.integers(1, 8, 6000).astype(float)
    values = clv.simulate_spend(TRUE_GG, counts, rng)
    means = np.array([v.mean() for v in values])
    fit = clv.fit_gamma_gamma(counts, means)
    assert rel(fit.p, TRUE_GG.p) < 0.20
    assert rel(fit.q, TRUE_GG.q) < 0.20
    assert rel(fit.gamma, TRUE_GG.gamma) < 0.25
    # the implied mean spend p * gamma / (q - 1) = 30 is recovered closely
    assert rel(fit.p * fit.gamma / (fit.q - 1), 30.0) < 0.05


@pytest.mark.parametrize("unit", [1.0, 100.0, 100_000.0, 0.001])
def test_gamma_gamma_fits_the_same_whatever_the_currency_unit(unit):
    """Amounts in roubles, yen or dong are the same spend: p and q stay, gamma scales with the unit.

    gamma is in money units (the mean spend is p * gamma / (q - 1)): its fit must not depend on
    how large the unit is.
    """
    rng = np.random.default_rng(11)
    counts = rng.integers(1, 8, 6000).astype(float)
    means = np.array([v.mean() for v in clv.simulate_spend(TRUE_GG, counts, rng)])
    base = clv.fit_gamma_gamma(counts, means)
    fit = clv.fit_gamma_gamma(counts, means * unit)
    assert rel(fit.p, base.p) < 1e-3 and rel(fit.q, base.q) < 1e-3
    assert rel(fit.gamma, base.gamma * unit) < 1e-3
    assert fit.log_likelihood == pytest.approx(base.log_likelihood - np.log(unit), abs=1e-4)


def test_gamma_gamma_without_differences_between_customers_predicts_the_mean_spend():
    """Every customer spends alike (q and gamma go to infinity): each prediction is the population mean."""
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 8, 6000).astype(float)
    means = np.array([rng.gamma(6.0, 3000.0 / 6.0, size=int(c)).mean() for c in counts])   # 3,000 roubles
    fit = clv.fit_gamma_gamma(counts, means)        # raised "ran to the edge" before
    # a finite sample shows some spread: q ends between about 340 and the bound (seeds 0-39), never small
    assert fit.q > 200
    population = fit.p * fit.gamma / (fit.q - 1)
    assert rel(population, 3000.0) < 0.02
    # each customer's own mean hardly counts: twice or a third of the mean still predicts about the mean
    spend = clv.expected_spend(fit, np.array([0.0, 1.0, 7.0]), np.array([0.0, 6000.0, 1000.0]))
    assert np.allclose(spend, population, rtol=0.1)


def test_model_formulas_behave():
    params = TRUE_BG
    x = np.array([0.0, 3.0, 3.0])
    t_x = np.array([0.0, 100.0, 300.0])
    big_t = np.array([300.0, 300.0, 300.0])
    alive = clv.probability_alive(params, x, t_x, big_t)
    assert alive[0] == 1.0                       # no repeat purchase: the model cannot see a dropout
    assert alive[1] < alive[2] <= 1.0            # bought recently -> more likely alive
    expected = clv.expected_purchases(params, 365, x, t_x, big_t)
    assert expected[1] < expected[2]
    total, discounted = clv.discounted_purchases(params, 365, 0.10, x, t_x, big_t)
    assert np.allclose(total, expected)
    assert np.all(discounted < total) and np.all(discounted > total / 1.1 - 1e-9)
    spend = clv.expected_spend(TRUE_GG, np.array([0.0, 5.0]), np.array([0.0, 100.0]))
    assert spend[0] == pytest.approx(30.0)       # population mean for one-time buyers
    assert 30.0 < spend[1] < 100.0               # shrunk towards the population mean


def test_predictions_for_many_customers_match_one_at_a_time():
    # many customers share (x, T): the hypergeometric term is evaluated once per distinct pair
    rng = np.random.default_rng(5)
    big_t = np.floor(rng.uniform(0, 400, 3000))
    x = np.floor(rng.uniform(0, 6, 3000))
    t_x = np.where(x > 0, np.floor(big_t * rng.random(3000)), 0.0)
    together = clv.expected_purchases(TRUE_BG, 365, x, t_x, big_t)
    alone = np.array([clv.expected_purchases(TRUE_BG, 365, x[i:i + 1], t_x[i:i + 1], big_t[i:i + 1])[0]
                      for i in range(3000)])
    assert np.array_equal(together, alone)
    total, _ = clv.discounted_purchases(TRUE_BG, 365, 0.10, x, t_x, big_t)
    assert np.array_equal(total, together)
    # fractional days are evaluated row by row, with the same result
    half = big_t[:200] + 0.5
    assert np.array_equal(clv.expected_purchases(TRUE_BG, 365, x[:200], t_x[:200], half),
                          [clv.expected_purchases(TRUE_BG, 365, x[i:i + 1], t_x[i:i + 1], half[i:i + 1])[0]
                           for i in range(200)])


def test_fit_refuses_degenerate_data():
    with pytest.raises(clv.FitError):
        clv.fit_gamma_gamma(np.zeros(10), np.zeros(10))
    with pytest.raises(clv.FitError, match="edge"):     # one repeat order each, all of the same amount:
        clv.fit_gamma_gamma(np.ones(100), np.full(100, 25.0))   # no spread at all, p runs to its edge


def _simulate_into_db(shop, n: int, seed: int, now: datetime) -> None:
    """Customers and purchases drawn from BG/NBD + Gamma-Gamma, bulk inserted (one purchase per day at most)."""
    rng = np.random.default_rng(seed)
    first_days = np.floor(rng.uniform(150, 700, n))
    x, _t_x, times = clv.simulate_bgnbd(TRUE_BG, first_days, rng)
    values = clv.simulate_spend(TRUE_GG, x + 1, rng)
    created = datetime(2024, 1, 1, tzinfo=timezone.utc)
    customers = [{"id": i + 1, "ref": f"sim{i}", "created_at": created, "orders_count": 0,
                  "total_spent": Decimal(0), "points_balance": 0} for i in range(n)]
    purchases = []
    for i in range(n):
        start = now - timedelta(days=float(first_days[i])) + timedelta(hours=1)
        seen_days = set()
        for k, offset in enumerate([0.0, *times[i].tolist()]):
            placed = start + timedelta(days=offset)
            if placed.date() in seen_days:
                continue
            seen_days.add(placed.date())
            purchases.append({"order_ref": f"s{i}-{k}", "customer_id": i + 1,
                              "total": Decimal(str(round(float(values[i][k]), 2))), "refunded_total": Decimal(0),
                              "currency": "EUR", "placed_at": placed, "channel": "online", "points_earned": 0,
                              "points_reversed": 0, "created_at": created})
    session = shop.db.session
    session.execute(table_of(Customer).insert(), customers)
    session.execute(table_of(Purchase).insert(), purchases)
    session.commit()


@pytest.mark.slow
def test_recompute_recovers_parameters_end_to_end(shop):
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    _simulate_into_db(shop, 4000, seed=3, now=now)
    assert shop.loyalty.analytics.recompute(now=now) == 4000
    params = shop.loyalty.analytics.model_params()
    assert params is not None and set(params) == {"r", "alpha", "a", "b", "p", "q", "gamma"}
    # 4,000 customers: r and alpha are well identified; a and b less so individually (seeds 3-5 give
    # b from 2.5 to 4.3) but their mean dropout a / (a + b) is
    assert rel(params["r"], TRUE_BG.r) < 0.15
    assert rel(params["alpha"], TRUE_BG.alpha) < 0.15
    assert rel(params["a"] / (params["a"] + params["b"]), 0.2) < 0.15
    assert rel(params["a"], TRUE_BG.a) < 0.35 and rel(params["b"], TRUE_BG.b) < 0.35
    assert rel(params["p"] * params["gamma"] / (params["q"] - 1), 30.0) < 0.1
    p = shop.loyalty.analytics.profile("sim0")
    assert p.clv_method == "bgnbd" and 0.0 < p.p_alive <= 1.0
    assert p.expected_purchases > 0 and p.predicted_clv >= 0 and isinstance(p.predicted_clv, Decimal)
    assert shop.loyalty.analytics.model().method == "bgnbd_gamma_gamma"
    # every buyer with a repeat purchase gets a model prediction; the top 30% segment is 30% of buyers
    assert len(shop.loyalty.segments.members("top_30_clv")) == 1200


def test_model_path_scores_equal_rank_definitions(shop):
    """With the model, R/F/M scores and the value rank come from numpy: they must equal the SQL RANK() rules."""
    from bisect import bisect_left, bisect_right

    from flask_loyalty.models import CustomerProfile
    from flask_loyalty.services.analytics import rfm_segment

    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    _simulate_into_db(shop, 1500, seed=5, now=now)
    shop.loyalty.analytics.recompute(now=now)
    assert shop.loyalty.analytics.model_params() is not None
    rows = shop.db.session.query(CustomerProfile).filter(CustomerProfile.frequency > 0).all()
    n = len(rows)
    keys = {"r": [-p.recency_days for p in rows], "f": [p.frequency for p in rows],
            "m": [p.monetary for p in rows], "v": [p.total_clv for p in rows]}
    ordered = {k: sorted(v) for k, v in keys.items()}
    assert len(set(keys["f"])) < n and len(set(keys["r"])) < n   # ties are exercised
    for i, p in enumerate(rows):
        assert p.r_score == 1 + 5 * bisect_left(ordered["r"], keys["r"][i]) // n
        assert p.f_score == 1 + 5 * bisect_left(ordered["f"], keys["f"][i]) // n
        assert p.m_score == 1 + 5 * bisect_left(ordered["m"], keys["m"][i]) // n
        assert p.clv_top_share == pytest.approx((n - bisect_right(ordered["v"], keys["v"][i])) / n, abs=1e-12)
        assert p.rfm == f"{p.r_score}{p.f_score}{p.m_score}"
        assert p.segment == rfm_segment(p.r_score, p.f_score, p.m_score)


def test_a_first_run_over_several_connections_equals_one_in_the_run(make_shop, monkeypatch):
    """PostgreSQL shares a first run's aggregation and profile inserts between connections: the same profiles."""
    from sqlalchemy import delete, select

    from flask_loyalty.models import CustomerProfile, ModelFit
    from flask_loyalty.services import analytics, outbox, tracking

    shop = make_shop(LOYALTY_DOUBLE_OPT_IN=False)
    with shop.app.app_context():
        now = datetime(2026, 6, 1, tzinfo=timezone.utc)
        _simulate_into_db(shop, 1500, seed=5, now=now)
        lo, state, session = shop.loyalty, shop.loyalty.state, shop.db.session
        for i in range(6):          # consent, survey answers and mail engagement of both remainders
            lo.consent.grant(f"sim{i}", "email_marketing", source="checkout", double_opt_in=False,
                             now=now - timedelta(days=200 + i))
        lo.surveys.answer("s1-0", {"recommend": 3, "experience": 2}, now=now - timedelta(days=1))
        lo.surveys.answer("s2-0", {"recommend": 10}, now=now - timedelta(days=1))
        for i in (3, 4):
            message = outbox.enqueue(state, "thank_you", lo.customer(f"sim{i}"), dedupe_key=f"t{i}")
            session.commit()
            assert tracking.record_open(state, message.id, now=now - timedelta(days=2, hours=i))
        shared: list[int] = []
        real = analytics._insert_in_parts

        def spy(*args, **kwargs):
            shared.append(args[1].connections)
            return real(*args, **kwargs)

        monkeypatch.setattr(analytics, "_insert_in_parts", spy)

        def first_run(connections: int) -> dict[str, dict]:
            session.execute(delete(CustomerProfile))
            session.execute(delete(ModelFit))
            session.commit()
            shop.app.config["LOYALTY_RECOMPUTE_CONNECTIONS"] = connections
            assert lo.analytics.recompute(now=now) == 1500
            assert lo.analytics.model().method == "bgnbd_gamma_gamma"
            session.expire_all()
            out = {}
            for row in session.execute(select(CustomerProfile)).unique().scalars():
                data = row.as_dict()
                data.pop("computed_at")
                out[data["customer_ref"]] = {k: round(v, 9) if isinstance(v, float) else v for k, v in data.items()}
            return out

        expected = first_run(1)
        assert shared == []
        assert expected["sim0"]["consent"] is True and expected["sim6"]["consent"] is False
        assert (expected["sim1"]["survey_recommend"], expected["sim2"]["survey_recommend"]) == (3, 10)
        assert expected["sim3"]["opens"] == 1 and expected["sim4"]["opens"] == 1
        for connections in (2, 3):
            assert first_run(connections) == expected
        assert shared == ([2, 3] if shop.dialect == "postgresql" else [])


def test_the_model_is_imported_on_a_thread_of_its_own_while_the_database_works(shop, monkeypatch):
    """A process that has not imported the model yet starts importing it when a recompute begins."""
    import types

    import flask_loyalty.services
    from flask_loyalty.services import analytics

    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    _simulate_into_db(shop, 600, seed=7, now=now)
    shop.loyalty.analytics.recompute(now=now)
    expected = shop.loyalty.analytics.model_params()
    assert expected is not None
    # as in a new process: the module is neither loaded nor an attribute of its package
    monkeypatch.delitem(sys.modules, "flask_loyalty.services.clv")
    monkeypatch.delattr(flask_loyalty.services, "clv")
    started: list[str] = []
    imported: list[object] = []

    class InlineThread:
        """Runs the thread's work when it is started, so the test sees what that work imported."""

        def __init__(self, *, target, name, daemon):
            assert daemon      # a process may end while it imports
            self.target = target
            started.append(name)

        def start(self):
            self.target()
            imported.append(sys.modules.get("flask_loyalty.services.clv"))

    monkeypatch.setattr(analytics, "threading", types.SimpleNamespace(Thread=InlineThread))
    shop.loyalty.analytics.recompute(now=now, rebuild=True)
    assert started == ["loyalty-import-model"]
    assert imported[0] is not None and imported[0] is not clv         # the thread's work imported it again
    assert sys.modules["flask_loyalty.services.clv"] is imported[0]   # and the fit used that module
    assert shop.loyalty.analytics.model_params() == expected
    shop.loyalty.analytics.recompute(now=now)                          # imported now: no thread
    assert started == ["loyalty-import-model"]


def test_without_numpy_the_heuristic_is_used(shop, monkeypatch):
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    shop.loyalty.record_purchase("o1", "x", "10", placed_at=now - timedelta(days=10))
    monkeypatch.setitem(sys.modules, "numpy", None)   # "import numpy" now fails as if not installed
    shop.app.config["LOYALTY_CLV_MIN_CUSTOMERS"] = 1
    shop.app.config["LOYALTY_CLV_MIN_REPEAT_CUSTOMERS"] = 1
    assert shop.loyalty.analytics.recompute(now=now) == 1
    assert shop.loyalty.analytics.model_params() is None
    assert "numpy/scipy" in shop.loyalty.analytics.model().reason
    assert shop.loyalty.analytics.profile("x").clv_method == "heuristic"


@pytest.mark.parametrize("key,value", [
    ("LOYALTY_DEFAULT_MARGIN", "1.5"), ("LOYALTY_DEFAULT_MARGIN", "abc"), ("LOYALTY_CLV_HORIZON_DAYS", 0),
    ("LOYALTY_CLV_DISCOUNT_RATE", "-0.1"), ("LOYALTY_RECOMPUTE_WORK_MEM", "1'; DROP TABLE x; --"),
    ("LOYALTY_RECOMPUTE_CONNECTIONS", 0), ("LOYALTY_RECOMPUTE_CONNECTIONS", "2"),
])
def test_bad_settings_are_refused(shop, key, value):
    from flask_loyalty import InvalidInput

    shop.app.config[key] = value
    with pytest.raises(InvalidInput):
        shop.loyalty.analytics.recompute()
