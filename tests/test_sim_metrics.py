"""Wilson intervals against published / independently computed values."""

from __future__ import annotations

import pytest

from vlatrim.sim.metrics import wilson_interval


@pytest.mark.parametrize(
    "k,n,low,high",
    [
        # Reference values (Newcombe 1998, Table I, method 3: 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605;
        # 0/20 -> 0-0.1611; 1/29 -> 0.0061-0.1718).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_table(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_matches_scipy_and_edges():
    from scipy import stats
    for k, n in [(8, 10), (50, 100), (10, 10), (0, 1), (19, 20)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
