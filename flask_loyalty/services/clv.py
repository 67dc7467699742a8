"""The purchase and spend models behind predicted lifetime value (needs numpy and scipy).

* **BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy
  way"): while alive, a customer buys at a Poisson rate ``lambda`` drawn from
  Gamma(``r``, ``alpha``); after every repeat purchase the customer drops out
  with probability ``p`` drawn from Beta(``a``, ``b``).  Per customer the
  inputs are ``x`` (repeat purchases, counted per distinct day), ``t_x``
  (day of the last purchase, counted from the first) and ``T`` (days from the
  first purchase to "now").  ``alpha`` is therefore in days.
* **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value
  curves"): the value of each repeat transaction is Gamma(``p``, ``nu``) with
  ``nu`` drawn from Gamma(``q``, ``gamma``); fitted on the mean repeat
  transaction value of the customers with at least one repeat purchase.

Both are fitted by maximum likelihood (L-BFGS-B on the log-parameters, with
identical customers grouped and weighted).  The module also simulates data
from the models, which the tests use to check that known parameters are
recovered.

This module imports numpy and scipy: they are the ``value`` extra
(``pip install flask-loyalty[value]``).  :mod:`flask_loyalty.services.analytics`
falls back to its documented heuristic when they are missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import digamma, gammaln, hyp2f1

FloatArray = NDArray[np.float64]


class FitError(ValueError):
    """The optimiser did not converge to finite, usable parameters."""


@dataclass(frozen=True)
class BGNBDParams:
    """Fitted BG/NBD parameters (``alpha`` in days) and the log-likelihood per customer."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")


@dataclass(frozen=True)
class GammaGammaParams:
    """Fitted Gamma-Gamma parameters and the log-likelihood per customer."""

    p: float
    q: float
    gamma: float
    log_likelihood: float = float("nan")


def _weighted_sum(weights: FloatArray, values: FloatArray) -> float:
    """``sum(weights * values)`` without BLAS.

    ``np.dot`` hands long vectors to a multi-threaded BLAS whose threads
    spin and wait on a busy machine; summing the product in numpy is as
    fast single-threaded and does not depend on the load.
    """
    return float(np.sum(weights * values))


def _weighted_sums(weights: FloatArray, *values: FloatArray) -> FloatArray:
    """``[sum(weights * v) for v in values]`` as an array, without BLAS (see :func:`_weighted_sum`)."""
    return np.array([_weighted_sum(weights, v) for v in values])


def _group(*columns: FloatArray) -> tuple[list[FloatArray], FloatArray]:
    """Identical rows once, with how many times each occurs (weights)."""
    stacked = np.column_stack(columns)
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return [unique[:, i] for i in range(unique.shape[1])], counts.astype(np.float64)


def bgnbd_log_likelihood(params: tuple[float, float, float, float], x: FloatArray, t_x: FloatArray,
                         T: FloatArray) -> FloatArray:  # noqa: N803 - the papers' notation
    """Per-customer log-likelihood of the BG/NBD model (FHL 2005, eq. 6)."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
                      -np.inf)
    result: FloatArray = a1 + a2 + np.logaddexp(a3, a4)
    return result


_BOUND = 12.0


def _minimize(fun: Any, start: FloatArray, *, free_edges: tuple[int, ...] = ()) -> FloatArray:
    """Minimise ``fun`` (value and gradient) over log-parameters bounded to +-12.

    Retries from other starting points only when the first run does not converge.

    A parameter ending on the bound means the data cannot identify it; that
    is an error except for the indices in ``free_edges`` (BG/NBD ``a``/``b``:
    an unbounded ``b`` is the legitimate "hardly anyone drops out" limit).
    """
    best: Any = None
    for guess in (start, start + 0.7, start - 0.7):
        res = minimize(fun, guess, jac=True, method="L-BFGS-B", bounds=[(-_BOUND, _BOUND)] * len(start),
                       options={"maxiter": 500})
        if np.all(np.isfinite(res.x)) and np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
        if best is not None and best.success:
            break
    if best is None:
        raise FitError("the optimiser found no finite optimum")
    solution: FloatArray = np.asarray(best.x, dtype=np.float64)
    at_edge = [i for i, v in enumerate(solution) if abs(v) >= _BOUND - 0.01 and i not in free_edges]
    if at_edge:
        raise FitError("a parameter ran to the edge of its range (the data cannot identify it)")
    return solution


def fit_bgnbd(x: FloatArray, t_x: FloatArray, T: FloatArray) -> BGNBDParams:  # noqa: N803
    """Maximum-likelihood BG/NBD fit over customers' ``(x, t_x, T)`` (days).

    Identical customers are grouped (weights) and the gamma-function terms,
    which depend on ``x`` only, are evaluated once per distinct ``x``.
    """
    (gx, gt, g_big_t), weights = _group(np.asarray(x, np.float64), np.asarray(t_x, np.float64),
                                        np.asarray(T, np.float64))
    total = weights.sum()
    if total == 0:
        raise FitError("no customers")
    ux, index = np.unique(gx, return_inverse=True)
    repeat = gx > 0
    x_minus_1 = np.where(repeat, gx - 1, 0.0)

    def negative(log_params: FloatArray) -> tuple[float, FloatArray]:
        r, alpha, a, b = (float(v) for v in np.exp(log_params))
        per_x = (gammaln(r + ux) - gammaln(r) + r * np.log(alpha)
                 + gammaln(a + b) + gammaln(b + ux) - gammaln(b) - gammaln(a + b + ux))
        log_at, log_atx = np.log(alpha + g_big_t), np.log(alpha + gt)
        a3 = -(r + gx) * log_at
        with np.errstate(divide="ignore"):
            a4 = np.where(repeat, np.log(a) - np.log(b + x_minus_1) - (r + gx) * log_atx, -np.inf)
        lse = np.logaddexp(a3, a4)
        ll = per_x[index] + lse
        value = -_weighted_sum(weights, ll) / total
        if not np.isfinite(value):
            return 1e300, np.zeros(4)
        w3, w4 = np.exp(a3 - lse), np.exp(a4 - lse)
        d_r = (digamma(r + ux) - digamma(r))[index] + np.log(alpha) - w3 * log_at - w4 * log_atx
        d_alpha = r / alpha - w3 * (r + gx) / (alpha + g_big_t) - w4 * (r + gx) / (alpha + gt)
        d_a = (digamma(a + b) - digamma(a + b + ux))[index] + w4 / a
        d_b = ((digamma(a + b) + digamma(b + ux) - digamma(b) - digamma(a + b + ux))[index]
               - w4 / (b + x_minus_1))
        grad = _weighted_sums(weights, d_r, d_alpha, d_a, d_b) * np.array([r, alpha, a, b])
        return value, -grad / total

    mean_rate = max(float(np.mean(x)) / max(float(np.mean(T)), 1.0), 1e-4)
    start = np.log(np.array([1.0, 1.0 / mean_rate, 1.0, 1.0]))
    solution = _minimize(negative, start, free_edges=(2, 3))
    r, alpha, a, b = (float(v) for v in np.exp(solution))
    return BGNBDParams(r, alpha, a, b, float(-negative(solution)[0]))


def gamma_gamma_log_likelihood(params: tuple[float, float, float], x: FloatArray, m: FloatArray) -> FloatArray:
    """Per-customer log-likelihood of the mean transaction value ``m`` over ``x`` transactions."""
    p, q, g = params
    px = p * x
    result: FloatArray = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(g)
                          + (px - 1) * np.log(m) + px * np.log(x) - (px + q) * np.log(x * m + g))
    return result


def fit_gamma_gamma(x: FloatArray, m: FloatArray) -> GammaGammaParams:
    """Maximum-likelihood Gamma-Gamma fit over repeat customers (``x > 0``, ``m > 0``).

    ``gamma`` is in money units (the mean spend is ``p * gamma / (q - 1)``),
    so the spends are fitted in units of their mean and ``gamma`` scaled back:
    the same purchases in roubles or in dong give the same ``p`` and ``q``,
    and ``gamma`` never meets the bound of the search because the currency
    unit is small.  When customers do not differ in what they spend beyond
    chance, ``q`` and ``gamma`` grow together without limit; the search
    stops where one of them meets its upper bound, where every prediction
    is the population's mean spend (the model's own limit), instead of
    failing.
    """
    x = np.asarray(x, np.float64)
    m = np.asarray(m, np.float64)
    keep = (x > 0) & (m > 0)
    (gx, gm), weights = _group(x[keep], m[keep])
    total = weights.sum()
    if total == 0:
        raise FitError("no repeat customers with a positive spend")
    unit = _weighted_sum(weights * gx, gm) / float((weights * gx).sum())   # the mean spend per transaction
    gm = gm / unit
    ux, index = np.unique(gx, return_inverse=True)
    log_m, log_x = np.log(gm), np.log(gx)

    def negative(log_params: FloatArray) -> tuple[float, FloatArray]:
        p, q, g = (float(v) for v in np.exp(log_params))
        per_x = gammaln(p * ux + q) - gammaln(p * ux) - gammaln(q) + q * np.log(g)
        log_xmg = np.log(gx * gm + g)
        ll = per_x[index] + (p * gx - 1) * log_m + p * gx * log_x - (p * gx + q) * log_xmg
        value = -_weighted_sum(weights, ll) / total
        if not np.isfinite(value):
            return 1e300, np.zeros(3)
        psi_pxq, psi_px = digamma(p * ux + q)[index], digamma(p * ux)[index]
        d_p = gx * (psi_pxq - psi_px + log_m + log_x - log_xmg)
        d_q = psi_pxq - digamma(q) + np.log(g) - log_xmg
        d_g = q / g - (p * gx + q) / (gx * gm + g)
        grad = _weighted_sums(weights, d_p, d_q, d_g) * np.array([p, q, g])
        return value, -grad / total

    start = np.log(np.array([2.0, 3.0, 1.0]))     # mean spend p * gamma / (q - 1) = 1 unit
    solution = _minimize(negative, start, free_edges=(1, 2))
    if min(solution[1], solution[2]) <= -_BOUND + 0.01:
        # only their upper edge is a limit of the model (spends alike); q or gamma near 0 is not
        raise FitError("a parameter ran to the edge of its range (the data cannot identify it)")
    p, q, g = (float(v) for v in np.exp(solution))
    if q <= 1:
        raise FitError("Gamma-Gamma q <= 1: the expected spend is not finite")
    # the likelihood of the spends in their own unit: each density is divided by the unit
    return GammaGammaParams(p, q, g * unit, float(-negative(solution)[0]) - float(np.log(unit)))


def probability_alive(params: BGNBDParams, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:  # noqa: N803
    """P(alive | x, t_x, T) (FHL 2005, eq. 11)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_ratio = (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        term = np.where(x > 0, np.exp(np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) + log_ratio), 0.0)
    result: FloatArray = 1.0 / (1.0 + term)
    return result


_PAIRS_BITMAP = 1 << 24


def _distinct_pairs(x: FloatArray, T: FloatArray) -> tuple[FloatArray, FloatArray, Any] | None:  # noqa: N803
    """The distinct ``(x, T)`` pairs and, per customer, the index of its pair.

    Only for whole, non-negative numbers (repeat purchases and days, as the
    recompute has them); ``None`` otherwise, and the caller evaluates every
    row.  With a million customers there are only a few thousand pairs.
    """
    if x.ndim != 1 or x.shape != T.shape or len(x) < 2:
        return None
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(T)) and np.all(x >= 0) and np.all(T >= 0)
            and np.all(np.floor(x) == x) and np.all(np.floor(T) == T)):
        return None
    width = int(T.max()) + 1
    span = (int(x.max()) + 1) * width
    if span >= 1 << 62:
        return None
    key = x.astype(np.int64) * width + T.astype(np.int64)
    if span <= _PAIRS_BITMAP:
        seen = np.zeros(span, dtype=bool)
        seen[key] = True
        keys = np.flatnonzero(seen)
        position = np.cumsum(seen) - 1
        inverse = position[key]
    else:
        keys, inverse = np.unique(key, return_inverse=True)
    return (keys // width).astype(np.float64), (keys % width).astype(np.float64), inverse


@dataclass(frozen=True)
class _History:
    """The parts of eq. 10 that do not depend on the horizon ``t`` (computed once per prediction)."""

    x: FloatArray
    log_alpha_t: FloatArray
    first: FloatArray
    one_plus_odds: FloatArray
    pairs: tuple[FloatArray, FloatArray, Any] | None
    big_t: FloatArray


def _history(params: BGNBDParams, x: FloatArray, t_x: FloatArray, T: FloatArray) -> _History:  # noqa: N803
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_alpha_t = np.log(alpha + T)
        first = (a + b + x - 1) / (a - 1)
        log_ratio = (r + x) * (log_alpha_t - np.log(alpha + t_x))
        odds = np.where(x > 0, np.exp(np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) + log_ratio), 0.0)
    return _History(x, log_alpha_t, first, 1 + odds, _distinct_pairs(x, T), T)


def _expected(params: BGNBDParams, t: float, h: _History) -> FloatArray:
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, big_t = h.x, h.big_t
    if t <= 0:
        return np.zeros_like(x, dtype=np.float64)
    # the Gauss hypergeometric term depends on (x, T) only: evaluated once per distinct pair
    if h.pairs is None:
        hyp = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + big_t + t))
    else:
        px, p_big_t, inverse = h.pairs
        hyp = hyp2f1(r + px, b + px, a + b + px - 1, t / (alpha + p_big_t + t))[inverse]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        second = 1 - np.exp((r + x) * (h.log_alpha_t - np.log(alpha + big_t + t))) * hyp
        result: FloatArray = h.first * second / h.one_plus_odds
    return np.nan_to_num(np.maximum(result, 0.0), nan=0.0, posinf=0.0)


def expected_purchases(params: BGNBDParams, t: float, x: FloatArray, t_x: FloatArray,
                       T: FloatArray) -> FloatArray:  # noqa: N803
    """Expected purchases in the next ``t`` days given the history (FHL 2005, eq. 10)."""
    x, t_x, T = (np.asarray(v, np.float64) for v in (x, t_x, T))  # noqa: N806
    return _expected(params, t, _history(params, x, t_x, T))


def expected_spend(params: GammaGammaParams, x: FloatArray, m: FloatArray) -> FloatArray:
    """E[transaction value | x, mean m] (FHL 2005b, eq. 5); the population mean when ``x == 0``."""
    p, q, g = params.p, params.q, params.gamma
    population = p * g / (q - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = (p * (g + x * m)) / (p * x + q - 1)
    result: FloatArray = np.where(x > 0, conditional, population)
    return result


def discounted_purchases(params: BGNBDParams, horizon_days: float, annual_rate: float, x: FloatArray,
                         t_x: FloatArray, T: FloatArray, steps: int = 4) -> tuple[FloatArray, FloatArray]:  # noqa: N803
    """Expected purchases over the horizon, undiscounted and discounted.

    The horizon is cut into ``steps`` equal periods; the purchases expected in
    period ``k`` are discounted by ``(1 + annual_rate) ** (k * length / 365)``
    (end-of-period convention; quarters by default).
    """
    x, t_x, T = (np.asarray(v, np.float64) for v in (x, t_x, T))  # noqa: N806
    history = _history(params, x, t_x, T)
    length = horizon_days / steps
    previous = np.zeros_like(x)
    discounted = np.zeros_like(previous)
    for k in range(1, steps + 1):
        cumulative = _expected(params, k * length, history)
        discounted += (cumulative - previous) / (1.0 + annual_rate) ** (k * length / 365.0)
        previous = cumulative
    return previous, discounted


def simulate_bgnbd(params: BGNBDParams, T: FloatArray, rng: np.random.Generator  # noqa: N803
                   ) -> tuple[FloatArray, FloatArray, list[FloatArray]]:
    """Draw customers from the BG/NBD model: returns ``x``, ``t_x`` and each one's repeat times."""
    n = len(T)
    lam = rng.gamma(params.r, 1.0 / params.alpha, size=n)
    drop = rng.beta(params.a, params.b, size=n)
    xs = np.zeros(n)
    txs = np.zeros(n)
    times: list[FloatArray] = []
    for i in range(n):
        now = 0.0
        mine: list[float] = []
        while True:
            now += rng.exponential(1.0 / lam[i])
            if now > T[i]:
                break
            mine.append(now)
            if rng.random() < drop[i]:
                break
        xs[i] = len(mine)
        txs[i] = mine[-1] if mine else 0.0
        times.append(np.asarray(mine))
    return xs, txs, times


def simulate_spend(params: GammaGammaParams, counts: FloatArray, rng: np.random.Generator) -> list[FloatArray]:
    """Draw transaction values from the Gamma-Gamma model, ``counts[i]`` of them for customer ``i``."""
    nu = rng.gamma(params.q, 1.0 / params.gamma, size=len(counts))
    return [rng.gamma(params.p, 1.0 / nu[i], size=int(c)) for i, c in enumerate(counts)]


def beta_mean_dropout(params: BGNBDParams) -> float:
    """Mean dropout probability after a purchase, ``a / (a + b)`` (for reports)."""
    return float(np.exp(np.log(params.a) - np.log(params.a + params.b)))


__all__ = [
    "BGNBDParams",
    "FitError",
    "GammaGammaParams",
    "beta_mean_dropout",
    "bgnbd_log_likelihood",
    "discounted_purchases",
    "expected_purchases",
    "expected_spend",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "gamma_gamma_log_likelihood",
    "probability_alive",
    "simulate_bgnbd",
    "simulate_spend",
]
