"""stabaudit.rounding: the scale exponents of chain certificates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabaudit import rounding


@pytest.mark.parametrize("shape", [(40, 30), (700, 600), (1024, 520)])
@pytest.mark.parametrize("scale", [1e-30, 0.03, 1e20])
def test_norm_exponent_is_near_the_spectral_norm_at_any_scale(shape: tuple[int, int], scale: float) -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal(shape) * scale
    w[:, 0] *= 3.0  # a dominant direction, so the exponent is away from a rounding tie
    e = rounding.norm_exponent(w)
    assert abs(e - math.log2(np.linalg.norm(w, 2))) <= 0.5 + 1e-3
    assert rounding.norm_exponent(w) == e  # deterministic (the power iteration's start is fixed)


def test_norm_exponent_of_degenerate_matrices() -> None:
    assert rounding.norm_exponent(np.zeros((600, 600))) == 0
    assert rounding.norm_exponent(np.full((3, 3), np.inf)) == 0
    assert rounding.norm_exponent(np.empty((0, 4))) == 0
    rank_one = np.outer(np.arange(1.0, 701.0), np.ones(600))  # ||W|| = ||u|| ||v||
    assert rounding.norm_exponent(rank_one) == round(math.log2(np.linalg.norm(rank_one, 2)))
