"""Means and 95% confidence intervals for the summary (no scipy at run time).

- Continuous metrics: mean +- t(0.975, n-1) * s / sqrt(n), Student's t
  interval with the sample standard deviation s (none for n = 1), clipped
  to the values the metric can take (an AUC of probabilities: [0, 1]).
- Hit-or-miss metrics (pointing, increase): the Wilson score interval of
  the proportion, which stays inside [0, 1] and is sensible for small n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 0.975 quantile


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 400):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile, by bisection on the CDF (p in (0.5, 1))."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2.0


def mean_ci(values: Sequence[float]) -> tuple[float | None, list[float] | None]:
    """(mean, [low, high]) with Student's t interval; (None, None) for no values."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return mean, [mean - half, mean + half]


def wilson(hits: int, n: int) -> list[float] | None:
    """The Wilson score interval (95%) of a proportion hits / n."""
    if n == 0:
        return None
    p, z2 = hits / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def summarise(values: Sequence[float], hit: float | None = None,
              bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """{"mean", "ci95", "n"} of one metric over maps; `hit` is the value of a
    hit for hit-or-miss metrics (1 or 100), whose interval is Wilson's; a t
    interval is clipped to the metric's `bounds` when it has some."""
    if hit is None:
        mean, ci = mean_ci(values)
        if ci is not None and bounds is not None:
            ci = [max(bounds[0], ci[0]), min(bounds[1], ci[1])]
    else:
        hits = sum(v >= hit for v in values)
        mean = hit * hits / len(values) if values else None
        interval = wilson(hits, len(values))
        ci = None if interval is None else [hit * interval[0], hit * interval[1]]
    return {"mean": mean, "ci95": ci, "n": len(values)}
