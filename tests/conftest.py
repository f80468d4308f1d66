"""Shared test helpers. The one tolerance of the chain of trust: float32 core vs float64 reference."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

RTOL, ATOL = 1e-4, 1e-5


def assert_close(actual, expected, rtol=RTOL, atol=ATOL, what=""):
    """np.testing.assert_allclose that also prints the max error and where it is."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    if actual.size == 0:
        return
    err = np.abs(actual - expected)
    bad = ~(err <= atol + rtol * np.abs(expected))
    # NaN must match NaN exactly (and inf must match inf)
    both_nan = np.isnan(actual) & np.isnan(expected)
    same_inf = np.isinf(actual) & (actual == expected)
    bad &= ~(both_nan | same_inf)
    if bad.any():
        score = np.where(bad, np.nan_to_num(err, nan=np.inf), -1.0)  # a NaN on one side only is the worst error
        idx = np.unravel_index(np.argmax(score), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ; max error {score[idx]:.3g} "
            f"at {tuple(int(i) for i in idx)}: got {actual[idx]!r}, expected {expected[idx]!r}"
        )


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
