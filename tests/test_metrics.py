"""The Wilson interval beside every small-sample accuracy."""
from __future__ import annotations

import pytest

from groupmood.metrics import wilson_interval


def test_wilson_interval_known_values():
    # textbook values: 0 of 10 and 5 of 10 at 95%
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_narrows_with_more_photos():
    lo35, hi35 = wilson_interval(24, 35)
    lo350, hi350 = wilson_interval(240, 350)
    assert lo35 < lo350 < 24 / 35 < hi350 < hi35


@pytest.mark.parametrize(("correct", "n"), [(-1, 5), (6, 5), (1, -1)])
def test_wilson_interval_rejects_impossible_counts(correct, n):
    with pytest.raises(ValueError):
        wilson_interval(correct, n)
