"""The one numpy softmax (groupmood.mathops): float64, stable for large logits, along any axis."""
from __future__ import annotations

import numpy as np

from groupmood.mathops import softmax


def test_softmax_matches_the_definition_along_any_axis() -> None:
    z = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    for axis in (0, 1, -1):
        want = np.exp(z.astype(np.float64)) / np.exp(z.astype(np.float64)).sum(axis=axis, keepdims=True)
        got = softmax(z, axis=axis)
        assert got.dtype == np.float64 and got.shape == z.shape
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_softmax_is_stable_and_takes_lists_and_empty_rows() -> None:
    np.testing.assert_allclose(softmax([1000.0, 1000.0, -1000.0]), [0.5, 0.5, 0.0], atol=1e-300)
    assert np.array_equal(softmax([[1e308, 0.0]]), [[1.0, 0.0]])
    assert softmax(np.zeros((0, 3))).shape == (0, 3)
