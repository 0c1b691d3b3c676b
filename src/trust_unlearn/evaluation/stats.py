"""Means with 95 % confidence intervals over training seeds (Student's t: a handful of seeds)."""
from __future__ import annotations

import math

from scipy import stats


def mean_ci(values: list[float | None], confidence: float = 0.95) -> dict | None:
    """{"mean", "low", "high", "n"}: the t-interval of the mean (None values are skipped; low = high = mean
    for a single value, which has no interval)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}
