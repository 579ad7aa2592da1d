"""Tests of the certified spectral machinery: dense SVD margins, circulant Gram/Cholesky conv bounds, power iteration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.bounds.gram import LEVEL_RTOL, gram_cholesky_max_norm, gram_max_norm
from stabaudit.bounds.numerics import (
    _circulant_group_norm,
    _geometry,
    _periods,
    conv_norm_certified,
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


def norm2_gram(mat: np.ndarray) -> float:
    """||mat||_2 from the Gram matrix of the smaller side (faster than a full SVD; ~1e-13 accurate)."""
    gram = mat.T @ mat if mat.shape[0] >= mat.shape[1] else mat @ mat.T
    return float(np.sqrt(np.linalg.eigvalsh(gram)[-1]))


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
    # the circulant or skew-circulant embedding, forced: measured upper / explicit norm on these 8
    # shapes: 1.060, 1.052 (skew), 1.105 (skew on one group), 1.093, 1.000, 1.025, 1.000, 1.253
    # (skew; the 3-D 3x4x4 input is mostly border: at such sizes neither circular operator is
    # tight for zero padding; see the next tests)
    cert = conv_norm_certified(w, strides, pads, dilations, groups, spatial, dense_budget=0.0)
    assert cert.method in ("circulant-cholesky", "skew-circulant-cholesky")
    assert exact <= cert.upper <= 1.3 * exact
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
    # one Cholesky certificate at (1 + LEVEL_RTOL) x the estimated lambda_max: ||A|| within half that
    assert ref <= up <= ref * (1 + LEVEL_RTOL)


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
    a = conv_power(*args, seed=4, iterations=3).estimate
    b = conv_power(*args, seed=4, iterations=3).estimate
    c = conv_power(*args, seed=5, iterations=3).estimate
    assert a == b and a != c


def test_conv_bound_on_a_trained_size_layer_is_fast_and_sound() -> None:
    # 16 -> 16 channels at 16x16 (a CIFAR-sized layer): the circulant bound and power iteration
    # agree to a few percent (the circulant boundary effect shrinks as the input grows)
    w = np.random.default_rng(6).standard_normal((16, 16, 3, 3)) / 12
    args = (w, (1, 1), (1, 1, 1, 1), (1, 1), 1, (16, 16))
    cert = conv_norm_certified(*args, dense_budget=0.0)
    low = conv_power(*args, seed=0, iterations=100).lower
    assert cert.method in ("circulant-cholesky", "skew-circulant-cholesky")
    assert low <= cert.upper <= 1.05 * low
    assert conv_norm_certified(*args).method in ("circulant-cholesky", "skew-circulant-cholesky")  # 4096^2 entries: not dense
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
    assert cert.method == "circulant-cholesky"
    low = conv_power(*args, seed=0, iterations=30).lower
    assert low <= cert.upper <= 1.05 * low
    fallback = conv_norm_certified(*args, budget=1.0)
    assert fallback.method in ("unfolded-coverage", "tap-sum") and fallback.notes
    assert fallback.upper >= cert.upper * (1 - 1e-4)
    _ = torch  # torch is a test dependency of this module (explicit matrices)


# ---- Gram iteration and the Cholesky certificate ---------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 5, 7), (5, 9, 3), (3, 1, 6), (4, 6, 1), (3, 40, 40), (2, 64, 130)])
def test_gram_certificates_bracket_the_svd(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    blocks = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    blocks[0] *= 0.0  # an exactly zero block among them
    blocks[-1] = np.outer(rng.standard_normal(shape[1]), rng.standard_normal(shape[2]))  # rank one
    ref = max(float(np.linalg.svd(b, compute_uv=False)[0]) for b in blocks)
    gram = gram_max_norm(torch.from_numpy(blocks), rtol=1e-6)
    chol, fallback = gram_cholesky_max_norm(torch.from_numpy(blocks))
    assert fallback == 0
    for res in (gram, chol):
        assert ref <= res.upper <= ref * (1 + 1e-4)
        assert abs(res.estimate - ref) <= 1e-2 * ref
        # the singular vectors of the worst block: ||A v|| ~ ||A|| and u ~ A v / ||A v||
        a = blocks[res.worst]
        top = float(np.linalg.svd(a, compute_uv=False)[0])
        assert np.linalg.norm(a @ res.right) >= 0.99 * top
        assert abs(np.vdot(res.left, a @ res.right)) >= 0.99 * top


@pytest.mark.parametrize("misled", [False, True])
def test_estimates_of_the_largest_frequencies_only_leave_the_bound_unchanged(misled: bool) -> None:
    # estimate_top with a gauge estimates only the matrices of the largest gauges; the others are
    # certified at the level those set, and a frequency above it (a misleading gauge: the peak is
    # among the unestimated ones) fails its factorization and is estimated then: the same maximum
    from stabaudit.bounds.gram import certify_hermitian_max, estimate_count, estimate_top

    rng = np.random.default_rng(11)
    f, p = 200, 12
    a = rng.standard_normal((f, p, p)) + 1j * rng.standard_normal((f, p, p))
    a[37] *= 3.0  # the peak
    h = torch.from_numpy(a @ np.conj(np.transpose(a, (0, 2, 1))))
    exact = np.linalg.eigvalsh(h.numpy())[:, -1]
    gauge = np.linalg.norm(a.reshape(f, -1), axis=1) ** 2
    if misled:
        gauge[37] = 0.0
    lam, _ = estimate_top(h, gauge=gauge)
    assert np.count_nonzero(lam) == estimate_count(f) < f
    assert (lam[37] > 0) is not misled
    cert = certify_hermitian_max(h.clone(), np.full(f, 1e-12), np.zeros(f, dtype=np.int64), estimate=(lam, _))
    assert cert.pending.size == 0 and cert.worst == 37
    assert exact.max() <= cert.bound <= exact.max() * (1 + 2 * LEVEL_RTOL)


def test_gram_iteration_is_a_bound_at_every_step() -> None:
    # stopped after one or two steps, the Frobenius bound is loose but still certified
    rng = np.random.default_rng(4)
    blocks = rng.standard_normal((5, 30, 30)) + 1j * rng.standard_normal((5, 30, 30))
    ref = max(float(np.linalg.svd(b, compute_uv=False)[0]) for b in blocks)
    bounds = [gram_max_norm(torch.from_numpy(blocks), max_steps=k, rtol=0.0).upper for k in (1, 2, 3, 6)]
    assert all(ref <= b for b in bounds)
    assert bounds == sorted(bounds, reverse=True) and bounds[-1] <= ref * 1.01


@pytest.mark.parametrize("case", CONV_CASES)
def test_circulant_certificates_match_the_eigensolver(case, monkeypatch) -> None:
    # Gram iteration and the Cholesky certificate bound the same circular operator as the
    # (slower) per-frequency Hermitian eigensolver: all three agree to 1e-4 (the skew-circulant
    # grid is turned off: it bounds another operator, see the next test)
    import stabaudit.bounds.numerics as numerics

    monkeypatch.setattr(numerics, "SKEW_MAX_GRID", 0)
    shape, strides, pads, dilations, groups, spatial = case
    w = np.random.default_rng(2).standard_normal(shape)
    g = _geometry(w, strides, pads, dilations, groups, spatial)
    eigh = max(_circulant_group_norm(g, j, _periods(g)) for j in range(groups))
    for certificate, method in (("cholesky", "circulant-cholesky"), ("gram", "circulant-gram")):
        cert = conv_norm_certified(w, strides, pads, dilations, groups, spatial, dense_budget=0.0, certificate=certificate)
        assert cert.method == method
        assert abs(cert.upper - eigh) <= 1e-4 * eigh


# The circular operator of period N >= n + k - 1 contains the zero-padded one; its norm exceeds the
# zero-padded norm by O((k / n)^2) (both are within that of the symbol's supremum), so the
# non-dense path is tight once the input is large against the kernel: measured upper / exact
# 1.0036, 1.0074, 1.0005, 1.0002, 1.0002, 1.0000 on these shapes (1.08 at 6x6, see above).
TIGHT_CASES = [
    ((3, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (24, 24)),
    ((3, 2, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (24, 24)),  # stride 2
    ((4, 3, 3), (1,), (1, 1), (1,), 1, (64,)),
    ((4, 3, 5), (2,), (2, 2), (1,), 1, (96,)),  # stride 2, kernel 5
    ((4, 2, 3), (1,), (0, 0), (1,), 2, (64,)),  # groups, no padding
    ((6, 4, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, (6, 6)),  # 1x1 stride 2: exact at any size
]


@pytest.mark.parametrize("case", TIGHT_CASES)
def test_non_dense_path_is_within_one_percent_of_the_exact_norm(case) -> None:
    shape, strides, pads, dilations, groups, spatial = case
    w = np.random.default_rng(1).standard_normal(shape)
    exact = norm2_gram(explicit_conv_matrix(w, strides, pads, dilations, groups, spatial))
    cert = conv_norm_certified(w, strides, pads, dilations, groups, spatial, dense_budget=0.0)
    assert cert.method in ("circulant-cholesky", "skew-circulant-cholesky")
    assert exact <= cert.upper <= 1.01 * exact
    # the warm start (top singular vector of the worst frequency block) makes 8 power steps enough
    assert cert.start_in is not None and cert.start_in.shape == (shape[1] * groups, *spatial)
    warm = conv_power(w, strides, pads, dilations, groups, spatial, iterations=8, start=cert.start_in)
    assert 0.97 * exact <= warm.lower <= exact


@pytest.mark.parametrize(("spatial", "dense_budget"), [((6, 6), 1e10), ((20, 20), 0.0)])  # dense, then circulant
def test_huge_weights_are_rescaled_not_overflowed(spatial: tuple[int, int], dense_budget: float) -> None:
    w = np.random.default_rng(9).standard_normal((3, 2, 3, 3))
    args = ((1, 1), (1, 1, 1, 1), (1, 1), 1, spatial)
    unit = conv_norm_certified(w, *args, dense_budget=dense_budget)
    for scale in (1e30, 1e-30, 1e-300, 1e300):
        big = conv_norm_certified(w * scale, *args, dense_budget=dense_budget)
        assert big.method == unit.method and math.isfinite(big.upper)
        # equal up to the single-precision eigenvalue estimate that sets the certified level
        assert abs(big.upper / scale - unit.upper) <= 1e-6 * unit.upper
        if big.lower is not None:
            assert big.lower <= big.upper
    # 2**100 is a power of two: the rescaling is exact, and so is the scaled bound
    assert conv_norm_certified(w * 2.0**100, *args, dense_budget=dense_budget).upper == unit.upper * 2.0**100
    # beyond float64: an honest inf with a note, never a wrong finite number
    over = conv_norm_certified(w / np.abs(w).max() * 1.7e308, *args, dense_budget=dense_budget)  # norm > 1.8e308
    assert over.upper == math.inf and any("overflows" in note for note in over.notes)
    assert over.lower is None or over.lower <= over.upper


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dense_budget", [1e10, 0.0])
def test_non_finite_weights_give_inf_on_every_path(bad: float, dense_budget: float) -> None:
    w = np.random.default_rng(3).standard_normal((4, 2, 3, 3))
    w[1, 0, 2, 1] = bad
    cert = conv_norm_certified(w, (2, 1), (1, 1, 1, 1), (1, 1), 1, (9, 9), dense_budget=dense_budget)
    assert cert.upper == math.inf and cert.lower is None and cert.method == "non-finite-weights"
    power = conv_power(w, (2, 1), (1, 1, 1, 1), (1, 1), 1, (9, 9), iterations=3)
    assert power.lower == 0.0


# ---- the direct Gram path: threads and the second forming pass ------------------------------------
@pytest.mark.parametrize(
    ("shape", "strides", "groups", "spatial"),
    [((24, 24, 3, 3), (1, 1), 1, (9, 9)), ((20, 6, 3, 3), (2, 2), 1, (10, 10)), ((12, 3, 3, 3), (1, 1), 4, (7, 7))],
)
def test_direct_gram_bound_does_not_depend_on_threads_or_holding(monkeypatch, shape, strides, groups, spatial) -> None:
    # the certified level is one per group, taken over every chunk of frequencies, so the bound
    # is bit for bit the same on one thread or two, and when each chunk is formed twice
    import stabaudit.bounds.numerics as numerics

    w = np.random.default_rng(sum(shape)).standard_normal(shape)
    args = (w, strides, (1, 1, 1, 1), (1, 1), groups, spatial)
    monkeypatch.setenv("STABAUDIT_THREADS", "2")
    two = conv_norm_certified(*args, dense_budget=0.0)
    monkeypatch.setenv("STABAUDIT_THREADS", "1")
    one = conv_norm_certified(*args, dense_budget=0.0)
    monkeypatch.setattr(numerics, "_HOLD_ENTRIES", 0)
    again = conv_norm_certified(*args, dense_budget=0.0)
    assert two.method == one.method == again.method and two.method in ("circulant-cholesky", "skew-circulant-cholesky")
    assert two.upper == one.upper == again.upper
    # and it is a tight bound of the zero-padded operator's circular embedding
    exact = norm2(explicit_conv_matrix(w, strides, (1, 1, 1, 1), (1, 1), groups, spatial))
    assert exact <= two.upper <= exact * 1.25


# ---- the skew-circulant embedding ------------------------------------------------------------------
def explicit_skew_matrix(weight, strides, pads, dilations, spatial_periods, twist=None):
    """The dense matrix of the skew-circulant conv of period N per axis (x[j + N] = -x[j]; only on
    the axes where ``twist`` is 1, circular on the others): inputs on the whole period, outputs at
    t < N / s; built entry by entry (one group, small shapes)."""
    w = np.asarray(weight, dtype=np.float64)
    m, c = w.shape[:2]
    kernel = w.shape[2:]
    d = len(strides)
    outs = [n // s for n, s in zip(spatial_periods, strides, strict=True)]
    twist = (1,) * d if twist is None else twist
    mat = np.zeros((m, *outs, c, *spatial_periods))
    for t in np.ndindex(*outs):
        for k in np.ndindex(*kernel):
            j = [strides[a] * t[a] + dilations[a] * k[a] - pads[a] for a in range(d)]
            sign = (-1.0) ** sum(twist[a] * int(np.floor_divide(j[a], spatial_periods[a])) for a in range(d))
            pos = tuple(int(np.mod(j[a], spatial_periods[a])) for a in range(d))
            mat[(slice(None), *t, slice(None), *pos)] += sign * w[(slice(None), slice(None), *k)]
    return mat.reshape(m * int(np.prod(outs)), c * int(np.prod(spatial_periods)))


@pytest.mark.parametrize(("strides", "spatial"), [((1, 1), (4, 4)), ((1, 1), (5, 7)), ((2, 2), (6, 6))])
def test_skew_circulant_bound_is_its_operator_norm_and_tight_for_a_smooth_kernel(strides, spatial, monkeypatch) -> None:
    # channel mixing times a [1 2 1] blur: the symbol peaks at omega = 0, which the circulant grid
    # holds and the skew-circulant grid (omega = (2 pi f + pi) / M) misses; the zero-padded
    # operator lies in both embeddings, and with stride 1 the skew one is exact (a symmetric
    # tridiagonal Toeplitz factor per axis: the sine transform diagonalizes both)
    import stabaudit.bounds.numerics as numerics

    mix = np.random.default_rng(11).standard_normal((6, 5)) / 3
    blur = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16
    w = mix[:, :, None, None] * blur
    pads = (1, 1, 1, 1)
    exact = norm2(explicit_conv_matrix(w, strides, pads, (1, 1), 1, spatial))
    cert = conv_norm_certified(w, strides, pads, (1, 1), 1, spatial, dense_budget=0.0)
    assert cert.method == "skew-circulant-cholesky"
    g = _geometry(w, strides, pads, (1, 1), 1, spatial)
    skew = norm2(explicit_skew_matrix(w, strides, pads, (1, 1), _periods(g)))
    assert exact <= cert.upper
    assert skew <= cert.upper <= skew * (1 + LEVEL_RTOL)
    if strides == (1, 1):
        assert cert.upper <= exact * (1 + LEVEL_RTOL)
    monkeypatch.setattr(numerics, "SKEW_MAX_GRID", 0)  # the circulant grid alone: the peak, caught
    circ = conv_norm_certified(w, strides, pads, (1, 1), 1, spatial, dense_budget=0.0)
    assert circ.method == "circulant-cholesky" and circ.upper > 1.05 * cert.upper
    # the warm start read off the skew grid still leads the power iteration to the top
    low = conv_power(w, strides, pads, (1, 1), 1, spatial, iterations=8, start=cert.start_in).lower
    assert 0.97 * exact <= low <= exact


def test_skew_along_one_axis_for_a_kernel_smooth_along_it_and_high_pass_across() -> None:
    # [1 2 1] down the rows (peak at omega = 0: the skew grid misses it), [1 -2 1] along the
    # columns (peak at omega = pi, which only the skew grid holds when M is odd): skew on axis 0 alone
    mix = np.random.default_rng(12).standard_normal((5, 4)) / 3
    w = mix[:, :, None, None] * np.outer([1.0, 2.0, 1.0], [1.0, -2.0, 1.0])[None, None] / 16
    pads, spatial = (1, 1, 1, 1), (4, 4)
    cert = conv_norm_certified(w, (1, 1), pads, (1, 1), 1, spatial, dense_budget=0.0)
    assert cert.method == "skew-circulant-cholesky" and cert.notes == ("skew-circulant along spatial axes [0] only",)
    g = _geometry(w, (1, 1), pads, (1, 1), 1, spatial)
    mixed = norm2(explicit_skew_matrix(w, (1, 1), pads, (1, 1), _periods(g), twist=(1, 0)))
    both = norm2(explicit_skew_matrix(w, (1, 1), pads, (1, 1), _periods(g), twist=(1, 1)))
    exact = norm2(explicit_conv_matrix(w, (1, 1), pads, (1, 1), 1, spatial))
    assert exact <= mixed <= cert.upper <= mixed * (1 + LEVEL_RTOL)
    assert mixed < 0.95 * both  # skew on both axes would catch neither peak: worse


@pytest.mark.parametrize("shape", [(520, 1300), (1100, 1100), (1500, 600)])
def test_large_dense_matrices_are_certified_without_an_svd(shape: tuple[int, int]) -> None:
    """Above DENSE_SVD_MAX_SIDE: the Gram-Cholesky certificate encloses the exact norm, within
    LEVEL_RTOL above it; the lower end at its approximate singular vector within 1e-2 below it."""
    from stabaudit.bounds.numerics import DENSE_SVD_MAX_SIDE

    assert min(shape) > DENSE_SVD_MAX_SIDE
    rng = np.random.default_rng(11)
    w = rng.standard_normal(shape) * 0.05
    w[:, :3] *= 4.0  # a few dominant directions
    exact = float(np.linalg.norm(w, 2))
    upper, lower = spectral_norm_dense(w)
    assert lower is not None
    assert lower <= exact <= upper
    assert upper <= exact * (1 + 1e-4) and lower >= exact * (1 - 1e-2)
    # a rank-one matrix: both ends meet its norm
    u, v = rng.standard_normal(shape[0]), rng.standard_normal(shape[1])
    r1 = np.outer(u, v)
    up1, lo1 = spectral_norm_dense(r1)
    norm1 = float(np.linalg.norm(u) * np.linalg.norm(v))
    assert lo1 is not None and lo1 <= norm1 <= up1 and up1 <= norm1 * (1 + 1e-4) and lo1 >= norm1 * (1 - 1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_lower_gram_is_the_gram_matrix_exactly_hermitian(dtype: type) -> None:
    """The Gram matrix from its lower block triangle (large sides): every entry one inner product
    of two rows, as in the full product (within its rounding bound), the blocks above the diagonal
    blocks the mirrors of those below, bit for bit; a side that four panels do not divide evenly."""
    from stabaudit.bounds.gram import lower_gram

    rng = np.random.default_rng(5)
    y = rng.standard_normal((2, 1030, 300)).astype(dtype)
    if dtype == np.complex128:
        y = y + 1j * rng.standard_normal(y.shape)
    h = lower_gram(torch.from_numpy(y)).numpy()
    full = y @ np.conj(np.swapaxes(y, 1, 2))
    mag = np.abs(y) @ np.abs(np.swapaxes(y, 1, 2))
    assert np.all(np.abs(h - full) <= 4 * 302 * 2.0**-53 * mag)
    cuts = [round(1030 * k / 4) for k in range(5)]
    for i in range(1, 4):
        below = h[:, cuts[i]:cuts[i + 1], :cuts[i]]
        assert np.array_equal(h[:, :cuts[i], cuts[i]:cuts[i + 1]], np.conj(np.swapaxes(below, 1, 2)))


@pytest.mark.parametrize(("shape", "stride", "length"), [((40, 1, 96), 24, 1200), ((50, 2, 120), 20, 1000)])
def test_strided_long_kernels_form_their_many_small_blocks_together(monkeypatch, shape, stride, length) -> None:
    """A strided 1-D conv with a long kernel (an STFT front end: hundreds of one-entry or few-entry
    frequency blocks) forms its products and phase sums in batches: the same certified bound as
    the block-by-block path to the last bits of its rounding, above the exact norm of the
    zero-padded operator and within its circulant embedding's slack."""
    import stabaudit.bounds.numerics as numerics

    w = np.random.default_rng(shape[0]).standard_normal(shape)
    args = (w, (stride,), (0, 0), (1,), 1, (length,))
    batched = conv_norm_certified(*args, dense_budget=0.0)
    monkeypatch.setattr(numerics, "_MANY_BLOCKS", 1 << 40)
    one_by_one = conv_norm_certified(*args, dense_budget=0.0)
    assert batched.method == one_by_one.method and "circulant" in batched.method
    assert abs(batched.upper - one_by_one.upper) <= 1e-12 * one_by_one.upper
    exact = norm2(explicit_conv_matrix(w, (stride,), (0, 0), (1,), 1, (length,)))
    assert exact <= batched.upper <= exact * 1.25
