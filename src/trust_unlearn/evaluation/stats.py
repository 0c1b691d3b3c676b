"""95 % intervals: of a mean over training seeds (Student's t: a handful of seeds), and of a rate over
attack target prompts (Wilson score: a binomial share of 16 prompts)."""
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


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> dict | None:
    """{"rate", "low", "high", "n"}: the Wilson score interval of a binomial rate (sound at 0 / n and n / n,
    where the normal approximation collapses to a point)."""
    if n <= 0:
        return None
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"rate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": n}
