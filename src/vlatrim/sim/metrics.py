"""Success-rate statistics for closed-loop evaluation."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% standard-normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is informative at 0/n and n/n, which
    is where small evaluation runs often land.

    Args:
        successes: number of successful episodes.
        n: number of episodes (> 0).

    Returns:
        (low, high).
    """
    if n <= 0:
        raise ValueError(f"need at least one episode, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # 0/n and n/n give exactly 0 and 1 analytically; pin them instead of keeping rounding noise.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high
