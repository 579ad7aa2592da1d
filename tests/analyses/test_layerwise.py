"""Tests of stabaudit.analyses.layerwise: ECLipsE-Fast and ECLipsE certificates."""

from __future__ import annotations

import itertools
import math

import numpy as np

from stabaudit.analyses.certify import ChainLMI, certified_sqrt, verify
from stabaudit.analyses.layerwise import eclipse, eclipse_fast
from stabaudit.analyses.sdp import pow2_scaled


def _weights(seed: int, widths: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, a)) / math.sqrt(a) for a, b in itertools.pairwise(widths)]


def _bound(lmi: ChainLMI, which: str) -> float:
    scaled, exponent = pow2_scaled(lmi)
    factor = 2.0**exponent
    cert = eclipse_fast(scaled) if which == "fast" else eclipse(scaled, budget_s=5.0)
    assert cert is not None
    for inflate in (1.0, 1.0 + 1e-6, 1.0 + 1e-4):
        rho, ts = cert.rho * inflate, [t * inflate for t in cert.ts]
        if verify(scaled, rho, ts) is not None:
            return certified_sqrt(rho) * factor
    raise AssertionError("no verified certificate")


def test_scalar_chain_is_exact() -> None:
    # 1-wide ReLU chain: S_k = 1 / a_k and the recursion gives exactly |prod w_k| (the true constant)
    ws = [np.array([[w]]) for w in (2.0, -0.5, 3.0, 1.5)]
    lmi = ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),) * 3)
    exact = 2.0 * 0.5 * 3.0 * 1.5
    for which in ("fast", "eclipse"):
        b = _bound(lmi, which)
        assert exact <= b <= exact * (1 + 1e-6)


def test_bounds_are_below_the_product_and_ordered() -> None:
    for seed in range(3):
        ws = _weights(seed, (8, 20, 20, 20, 20, 3))
        lmi = ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),) * 4)
        product = float(np.prod([np.linalg.norm(w, 2) for w in ws]))
        fast, slow = _bound(lmi, "fast"), _bound(lmi, "eclipse")
        assert slow <= fast * (1 + 1e-4) and fast <= product * (1 + 1e-9)


def _forward(ws: list[np.ndarray], bs: list[np.ndarray], act: str, x: np.ndarray) -> np.ndarray:
    for w, b in zip(ws[:-1], bs[:-1], strict=True):
        h = x @ w.T + b
        x = np.where(h > 0, h, 0.1 * h) if act == "leaky" else np.tanh(h)
    return np.asarray(x @ ws[-1].T + bs[-1])


def test_difference_quotients_for_leaky_relu_and_tanh() -> None:
    rng = np.random.default_rng(5)
    for act, slope in (("leaky", (0.1, 1.0)), ("tanh", (0.0, 1.0))):
        ws = _weights(9, (4, 12, 12, 3))
        bs = [np.asarray(rng.standard_normal(w.shape[0])) for w in ws]
        lmi = ChainLMI(weights=tuple(ws), slopes=(slope,) * 2)
        bounds = [_bound(lmi, "fast"), _bound(lmi, "eclipse")]
        x = rng.standard_normal((5000, 4)) * 2
        y = x + rng.standard_normal((5000, 4)) * 1e-4
        q = np.linalg.norm(_forward(ws, bs, act, x) - _forward(ws, bs, act, y), axis=1) / np.linalg.norm(x - y, axis=1)
        for b in bounds:
            assert q.max() <= b


def test_weight_errors_are_accounted_for() -> None:
    ws = _weights(2, (5, 10, 2))
    exact = ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),))
    scaled, _ = pow2_scaled(exact)
    cert = eclipse_fast(scaled)
    assert cert is not None
    rho, ts = cert.rho * (1 + 1e-6), [t * (1 + 1e-6) for t in cert.ts]
    assert verify(scaled, rho, ts) is not None
    tiny = ChainLMI(weights=scaled.weights, slopes=scaled.slopes, errors=tuple(np.abs(w) * 2.0**-52 for w in scaled.weights))
    assert verify(tiny, rho, ts) is not None  # rounding-size uncertainty fits in the inflation
    big = ChainLMI(weights=scaled.weights, slopes=scaled.slopes, errors=tuple(np.abs(w) * 1e-2 for w in scaled.weights))
    assert verify(big, rho, ts) is None
