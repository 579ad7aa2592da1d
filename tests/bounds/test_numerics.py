"""Tests of the certified spectral machinery: dense SVD margins, circulant conv bound, power iteration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.bounds.numerics import (
    conv_norm_certified,
    conv_norm_power,
    conv_norm_upper,
    conv_output_size,
    conv_power,
    coverage_1d,
    spectral_norm_dense,
    sqrt_int_bounds,
)


def explicit_conv_matrix(weight, strides, pads, dilations, groups, spatial):
    """The dense matrix of the zero-padded conv (torch, float64) by applying it to basis vectors."""
    import torch.nn.functional as F

    d = len(strides)
    w = torch.from_numpy(np.asarray(weight, dtype=np.float64))
    cin = w.shape[1] * groups
    n = cin * int(np.prod(spatial))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, cin, *spatial)
    tp: list[int] = []
    for axis in reversed(range(d)):
        tp += [pads[axis], pads[axis + d]]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    y = conv(F.pad(basis, tp), w, None, tuple(strides), 0, tuple(dilations), groups)
    return y.reshape(n, -1).numpy().T


def norm2(mat: np.ndarray) -> float:
    return float(np.linalg.svd(mat, compute_uv=False)[0]) if mat.size else 0.0


# ---- dense ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "scale"),
    [((7, 5), 1.0), ((1, 40), 1.0), ((40, 1), 3.0), ((64, 64), 1e-3), ((33, 120), 1e150), ((12, 9), 1e-150)],
)
def test_dense_norm_brackets_numpy_within_1e6(shape: tuple[int, int], scale: float) -> None:
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape) * scale
    ref = float(np.linalg.svd(w, compute_uv=False)[0])
    upper, lower = spectral_norm_dense(w)
    assert lower is not None
    assert lower <= ref <= upper
    assert (upper - ref) / ref < 1e-6 and (ref - lower) / ref < 1e-6


def test_dense_norm_float32_storage_and_rank_one() -> None:
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(30), rng.standard_normal(20)
    w = np.outer(u, v).astype(np.float32)
    ref = float(np.linalg.svd(w.astype(np.float64), compute_uv=False)[0])
    upper, lower = spectral_norm_dense(w)
    assert lower is not None and lower <= ref <= upper <= ref * (1 + 1e-6)


def test_dense_norm_degenerate_inputs_never_crash() -> None:
    assert spectral_norm_dense(np.zeros((4, 3))) == (0.0, 0.0)
    assert spectral_norm_dense(np.zeros((0, 3))) == (0.0, 0.0)
    w = np.ones((3, 3))
    w[1, 2] = np.nan
    assert spectral_norm_dense(w) == (math.inf, None)
    w[1, 2] = np.inf
    assert spectral_norm_dense(w) == (math.inf, None)


def test_sqrt_int_bounds() -> None:
    assert sqrt_int_bounds(9) == (3.0, 3.0)
    up, low = sqrt_int_bounds(2)
    assert low < math.sqrt(2) < up and up - low < 1e-15


def test_coverage_matches_brute_force() -> None:
    for n, k, s, pb, pe, d in [(10, 3, 1, 1, 1, 1), (11, 3, 2, 0, 1, 1), (9, 2, 2, 0, 0, 1), (12, 3, 1, 2, 2, 2), (7, 5, 3, 2, 2, 1)]:
        out = conv_output_size(n, k, s, pb, pe, d)
        counts = [sum(1 for t in range(out) for kk in range(k) if s * t + d * kk - pb == j) for j in range(n)]
        assert coverage_1d(n, out, k, s, pb, d) == max(counts)


# ---- convolutions ---------------------------------------------------------------------------------
CONV_CASES = [
    # weight shape, strides, pads (begin..., end...), dilations, groups, input spatial
    ((4, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (6, 6)),
    ((4, 3, 3, 3), (2, 2), (1, 0, 0, 1), (1, 1), 1, (7, 6)),  # stride 2, asymmetric pads
    ((6, 2, 3, 3), (1, 2), (2, 1, 0, 2), (2, 1), 3, (7, 8)),  # dilation, groups, mixed strides
    ((5, 3, 4), (3,), (2, 1), (2,), 1, (11,)),  # 1-D, stride 3, dilation 2
    ((4, 2, 2), (2,), (0, 0), (1,), 2, (9,)),  # 1-D, non-overlapping windows, groups
    ((8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8, (6, 6)),  # depthwise
    ((3, 2, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, (5, 5)),  # 1x1, stride 2
    ((2, 2, 2, 3, 2), (1, 2, 1), (1, 0, 1, 0, 1, 0), (1, 1, 2), 1, (3, 4, 4)),  # 3-D
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_upper_and_power_lower_bracket_the_explicit_norm(case) -> None:
    shape, strides, pads, dilations, groups, spatial = case
    rng = np.random.default_rng(len(shape) * 7 + shape[0])
    w = rng.standard_normal(shape)
    exact = norm2(explicit_conv_matrix(w, strides, pads, dilations, groups, spatial))
    # small layers: the exact explicit matrix, certified both ways
    dense = conv_norm_certified(w, strides, pads, dilations, groups, spatial)
    assert dense.method == "dense-svd" and dense.lower is not None
    assert dense.lower <= exact <= dense.upper
    assert dense.upper - dense.lower <= 1e-9 * exact
    # the circulant embedding, forced: measured upper / explicit norm on these 8 shapes:
    # 1.060, 1.061, 1.114, 1.093, 1.000, 1.025, 1.000, 1.300 (the 3-D 3x4x4 input is mostly border)
    cert = conv_norm_certified(w, strides, pads, dilations, groups, spatial, dense_budget=0.0)
    assert cert.method == "circulant-embedding"
    assert exact <= cert.upper <= 1.35 * exact
    power = conv_power(w, strides, pads, dilations, groups, spatial, seed=0, iterations=100)
    assert power.lower <= exact * (1 + 1e-12)
    assert power.lower <= power.estimate
    assert power.estimate >= 0.99 * exact
    fallback = conv_norm_certified(w, strides, pads, dilations, groups, spatial, budget=0.0, dense_budget=0.0)
    assert fallback.method in ("unfolded-coverage", "tap-sum")
    assert exact <= fallback.upper


def test_conv_upper_is_exact_for_1x1_stride_1() -> None:
    # a 1x1 conv is I (x) W: its norm is ||W||, and the circulant bound must find it (margin only)
    w = np.random.default_rng(3).standard_normal((5, 4, 1, 1))
    ref = norm2(w[:, :, 0, 0])
    up = conv_norm_certified(w, (1, 1), (0, 0, 0, 0), (1, 1), 1, (4, 4), dense_budget=0.0).upper
    assert ref <= up <= ref * (1 + 1e-9)


def test_conv_degenerate_weights() -> None:
    w = np.zeros((2, 2, 3, 3))
    assert conv_norm_upper(w, (1, 1), (1, 1, 1, 1), (1, 1), 1, (5, 5)) == 0.0
    w[0, 0, 1, 1] = np.nan
    cert = conv_norm_certified(w, (1, 1), (1, 1, 1, 1), (1, 1), 1, (5, 5))
    assert cert.upper == math.inf and cert.method == "non-finite-weights"
    # kernel larger than the padded input: no output at all
    assert conv_norm_upper(np.ones((1, 1, 5)), (1,), (0, 0), (1,), 1, (3,)) == 0.0


def test_power_iteration_is_deterministic_and_seeded() -> None:
    w = np.random.default_rng(5).standard_normal((3, 2, 3, 3))
    args = (w, (1, 1), (1, 1, 1, 1), (1, 1), 1, (5, 5))
    a = conv_norm_power(*args, seed=4, iterations=3)
    b = conv_norm_power(*args, seed=4, iterations=3)
    c = conv_norm_power(*args, seed=5, iterations=3)
    assert a == b and a != c


def test_conv_bound_on_a_trained_size_layer_is_fast_and_sound() -> None:
    # 16 -> 16 channels at 16x16 (a CIFAR-sized layer): the circulant bound and power iteration
    # agree to a few percent (the circulant boundary effect shrinks as the input grows)
    w = np.random.default_rng(6).standard_normal((16, 16, 3, 3)) / 12
    args = (w, (1, 1), (1, 1, 1, 1), (1, 1), 1, (16, 16))
    cert = conv_norm_certified(*args, dense_budget=0.0)
    low = conv_power(*args, seed=0, iterations=100).lower
    assert cert.method == "circulant-embedding"
    assert low <= cert.upper <= 1.05 * low
    assert conv_norm_certified(*args).method == "circulant-embedding"  # 4096^2 entries: not dense
    small = (w, (1, 1), (1, 1, 1, 1), (1, 1), 1, (8, 8))
    dense = conv_norm_certified(*small)  # 1024 x 1024: within the dense budget
    assert dense.method == "dense-svd" and dense.lower is not None
    circ = conv_norm_certified(*small, dense_budget=0.0).upper
    assert dense.lower <= dense.upper <= circ


def test_conv_keep_outputs_is_a_projection() -> None:
    # keeping the first outputs per axis can only lower the norm, and dense-svd computes it exactly
    w = np.random.default_rng(7).standard_normal((3, 2, 3, 3))
    full = explicit_conv_matrix(w, (2, 2), (1, 1, 1, 1), (1, 1), 1, (7, 7))  # 3 x 4 x 4 outputs
    keep = full.reshape(3, 4, 4, -1)[:, :3, :2].reshape(3 * 6, -1)
    cert = conv_norm_certified(w, (2, 2), (1, 1, 1, 1), (1, 1), 1, (7, 7), keep_outputs=(3, 2))
    assert cert.lower is not None and cert.lower <= norm2(keep) <= cert.upper <= norm2(keep) * (1 + 1e-9)
    circ = conv_norm_certified(w, (2, 2), (1, 1, 1, 1), (1, 1), 1, (7, 7), keep_outputs=(3, 2), dense_budget=0.0)
    assert circ.upper >= norm2(full) >= norm2(keep)


def test_big_layers_use_the_circulant_or_a_fallback() -> None:
    # 3 x 3 conv, 8 -> 8 channels on 64 x 64: too big for the dense matrix (32768^2 entries)
    w = np.random.default_rng(8).standard_normal((8, 8, 3, 3))
    args = (w, (1, 1), (1, 1, 1, 1), (1, 1), 1, (64, 64))
    cert = conv_norm_certified(*args)
    assert cert.method == "circulant-embedding"
    low = conv_power(*args, seed=0, iterations=30).lower
    assert low <= cert.upper <= 1.05 * low
    fallback = conv_norm_certified(*args, budget=1.0)
    assert fallback.method in ("unfolded-coverage", "tap-sum") and fallback.notes
    assert fallback.upper >= cert.upper * (1 - 1e-9)
    _ = torch  # torch is a test dependency of this module (explicit matrices)
