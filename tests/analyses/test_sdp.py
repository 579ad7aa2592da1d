"""Tests of stabaudit.analyses.sdp (LipSDP-Neuron by a structured barrier method) and of its
a posteriori verification (stabaudit.analyses.certify)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from stabaudit.analyses import feedforward, sdp
from stabaudit.analyses.certify import ChainLMI, certified_sqrt, verify
from stabaudit.analyses.layerwise import eclipse, eclipse_fast
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def _net(seed: int, widths: tuple[int, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((b, a)) / math.sqrt(a) for a, b in itertools.pairwise(widths)]
    bs = [rng.standard_normal(b) * 0.5 for b in widths[1:]]
    return ws, bs


def _solve(lmi: ChainLMI, budget: float = 10.0) -> tuple[float, list[np.ndarray], float]:
    """LipSDP from ECLipsE-Fast on the power-of-two scaled chain; (rho, T) of the scaled chain."""
    scaled, exponent = sdp.pow2_scaled(lmi)
    factor = 2.0**exponent
    start = eclipse_fast(scaled)
    assert start is not None
    rho, ts, steps = sdp.lipsdp(scaled, start.rho, list(start.ts), budget_s=budget)
    assert steps > 0
    return rho, ts, factor


def _exact_one_hidden_2d(w0: np.ndarray, b0: np.ndarray, w1: np.ndarray) -> float:
    """max over the activation regions of x -> W1 relu(W0 x + b0), x in R^2, of ||W1 D W0||_2.

    The regions of a line arrangement: every bounded region has a vertex, and around a vertex the
    regions are the angular sectors between the lines through it; the unbounded regions are the
    sectors between consecutive line directions far away. One point strictly inside each.
    """
    n = w0.shape[0]
    points = []
    dirs = []
    for i in range(n):
        d = np.array([-w0[i, 1], w0[i, 0]])
        a = math.atan2(d[1], d[0])
        dirs += [a % (2 * math.pi), (a + math.pi) % (2 * math.pi)]
    dirs.sort()
    far = 1e6
    for a, b in zip(dirs, dirs[1:] + [dirs[0] + 2 * math.pi], strict=True):
        m = (a + b) / 2
        points.append(far * np.array([math.cos(m), math.sin(m)]))
    for i, j in itertools.combinations(range(n), 2):
        try:
            v = np.linalg.solve(w0[[i, j]], -b0[[i, j]])
        except np.linalg.LinAlgError:
            continue
        through = [k for k in range(n) if abs(w0[k] @ v + b0[k]) < 1e-9]
        angles = []
        for k in through:
            a = math.atan2(w0[k, 0], -w0[k, 1])
            angles += [a % (2 * math.pi), (a + math.pi) % (2 * math.pi)]
        angles.sort()
        for a, b in zip(angles, angles[1:] + [angles[0] + 2 * math.pi], strict=True):
            m = (a + b) / 2
            points.append(v + 1e-7 * np.array([math.cos(m), math.sin(m)]))
    best = 0.0
    for p in points:
        d = (w0 @ p + b0 > 0).astype(float)
        best = max(best, float(np.linalg.norm(w1 @ (d[:, None] * w0), 2)))
    return best


def test_lipsdp_between_exact_constant_and_product() -> None:
    for seed in range(3):
        ws, bs = _net(seed, (2, 12, 3))
        lmi = ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),))
        rho, ts, factor = _solve(lmi)
        scaled, _ = sdp.pow2_scaled(lmi)
        assert verify(scaled, rho, ts) is not None
        bound = certified_sqrt(rho) * factor
        exact = _exact_one_hidden_2d(ws[0], bs[0], ws[1])
        product = float(np.linalg.norm(ws[0], 2) * np.linalg.norm(ws[1], 2))
        # a dense grid of Jacobian norms: a lower reference that the enumeration must dominate
        g = np.linspace(-6, 6, 241)
        xx = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        pats = (xx @ ws[0].T + bs[0] > 0).astype(float)
        grid = max(np.linalg.norm(ws[1] @ (p[:, None] * ws[0]), 2) for p in np.unique(pats, axis=0))
        assert grid <= exact * (1 + 1e-12)
        assert exact <= bound <= product * (1 + 1e-9)
        # the SDP is no worse than the layer-wise certificates it started from
        fast = eclipse_fast(scaled)
        assert fast is not None and bound <= certified_sqrt(fast.rho) * factor * (1 + 1e-9)


def test_difference_quotients_never_exceed_the_bound() -> None:
    ws, bs = _net(7, (5, 16, 16, 16, 4))
    lmi = ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),) * 3)
    rho, ts, factor = _solve(lmi)
    bound = certified_sqrt(rho) * factor
    product = float(np.prod([np.linalg.norm(w, 2) for w in ws]))
    assert bound < product

    def f(x: np.ndarray) -> np.ndarray:
        for w, b in zip(ws[:-1], bs[:-1], strict=True):
            x = np.maximum(x @ w.T + b, 0.0)
        return np.asarray(x @ ws[-1].T + bs[-1])

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 5)) * 3
    # pairs, and an ascent on the quotient from the best pairs (a strong sampled lower bound)
    y = x + rng.standard_normal((4000, 5)) * 1e-3
    q = np.linalg.norm(f(x) - f(y), axis=1) / np.linalg.norm(x - y, axis=1)
    assert q.max() <= bound


def test_verification_rejects_perturbed_certificates() -> None:
    # 1-D: P = [[rho, -t], [-t, 2t - 1]] >= 0 iff rho (2t - 1) >= t^2: optimum rho = 1 at t = 1
    lmi = ChainLMI(weights=(np.array([[1.0]]), np.array([[1.0]])), slopes=((0.0, 1.0),))
    assert verify(lmi, 1.0, [np.array([1.0])]) is None  # singular: no margin for rounding
    assert verify(lmi, 1.0 - 1e-6, [np.array([1.0])]) is None
    assert verify(lmi, 1.0 + 1e-6, [np.array([1.0])]) is not None
    assert verify(lmi, 2.0, [np.array([-1.0])]) is None  # a negative multiplier is not a certificate
    assert verify(lmi, math.nan, [np.array([1.0])]) is None
    # a real certificate, then a deliberately perturbed multiplier
    ws, _ = _net(3, (6, 10, 10, 3))
    lmi = ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),) * 2)
    rho, ts, _ = _solve(lmi)
    scaled, _ = sdp.pow2_scaled(lmi)
    assert verify(scaled, rho, ts) is not None
    bad = [t.copy() for t in ts]
    bad[1][0] *= 1e-3
    assert verify(scaled, rho, bad) is None
    assert verify(scaled, rho * 0.9, ts) is None
    # weight uncertainty enters the check: a large enough error bound must reject it
    uncertain = ChainLMI(weights=scaled.weights, slopes=scaled.slopes, errors=(None, None, np.full_like(scaled.weights[2], 0.5)))
    assert verify(uncertain, rho, ts) is None


def _two_relu_graph(ws: list[np.ndarray]) -> Graph:
    """x -> fc0 -> relu -> fc1 -> relu -> fc2, the weights ``ws``."""
    nodes = [
        Node(name="fc0", op=O.Linear(weight=ws[0]), inputs=("x",), output="a0"),
        Node(name="r0", op=O.Relu(), inputs=("a0",), output="h0"),
        Node(name="fc1", op=O.Linear(weight=ws[1]), inputs=("h0",), output="a1"),
        Node(name="r1", op=O.Relu(), inputs=("a1",), output="h1"),
        Node(name="fc2", op=O.Linear(weight=ws[2]), inputs=("h1",), output="y"),
    ]
    shape = (1, int(ws[0].shape[1]))
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=("y",), nodes=tuple(nodes)).validate())


def test_failed_verification_yields_no_certified_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    ws, _ = _net(4, (3, 8, 8, 2))
    g = _two_relu_graph(ws)
    good = feedforward.global_bounds(g, methods=("sdp",), budget_s=5.0)
    assert good[0].certified and good[0].upper is not None

    real = sdp.lipsdp

    def perturbed(*args: object, **kwargs: object) -> tuple[float, list[np.ndarray], int]:
        rho, ts, steps = real(*args, **kwargs)  # type: ignore[arg-type]
        ts = [t.copy() for t in ts]
        ts[0][:] = 0.0  # a deliberately broken multiplier: the LMI cannot hold
        return rho, ts, steps

    monkeypatch.setattr(sdp, "lipsdp", perturbed)
    bad = feedforward.global_bounds(g, methods=("sdp",), budget_s=5.0)
    assert bad[0].upper is None and not bad[0].certified
    assert any("verification failed" in n for n in bad[0].notes)


def test_pow2_scaling_is_exact() -> None:
    ws, _ = _net(5, (4, 7, 3))
    lmi = ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),))
    scaled, exponent = sdp.pow2_scaled(lmi)
    assert isinstance(exponent, int)
    assert all(e is None for e in scaled.errors)  # no entry rounded: the errors stay unset
    for w, s in zip(ws, scaled.weights, strict=True):
        ratio = w / s
        assert np.all(ratio == ratio.flat[0]) and math.log2(ratio.flat[0]) == int(math.log2(ratio.flat[0]))
        assert 0.7 <= np.linalg.norm(s, 2) <= 1.42
    assert sum(round(math.log2(float((w / s).flat[0]))) for w, s in zip(ws, scaled.weights, strict=True)) == exponent


def test_eclipse_sdp_ordering_and_determinism() -> None:
    ws, _ = _net(11, (6, 12, 12, 12, 2))
    lmi = ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),) * 3)
    scaled, _ = sdp.pow2_scaled(lmi)
    fast = eclipse_fast(scaled)
    slow = eclipse(scaled, budget_s=5.0)
    assert fast is not None and slow is not None
    a = _solve(lmi)
    b = _solve(lmi)
    assert a[0] == b[0]  # converged to its gap target: the same iterates, the same result
    assert a[0] <= slow.rho * (1 + 1e-9)


@pytest.mark.external
def test_acasxu_and_mnist(external_dir: Path) -> None:
    from stabaudit.analyses.composition import compose, rule_bounds
    from stabaudit.ir.passes import fold_affine
    from stabaudit.loaders import load_model

    acas = external_dir / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
    mnist = external_dir / "mnistfc" / "mnist-net_256x2.onnx"
    if not acas.is_file() or not mnist.is_file():
        pytest.skip("ACAS Xu / MNIST networks absent")
    g = fold_affine(load_model(acas).graph)
    res = feedforward.global_bounds(g, methods=("sdp",), budget_s=20.0)
    assert res[0].certified and res[0].upper is not None
    assert 1556.0 <= res[0].upper <= 1.0e5
    g = fold_affine(load_model(mnist).graph)
    ob = rule_bounds(g)
    product = compose(g, ob).upper.value
    res = feedforward.global_bounds(g, op_bounds=ob, methods=("eclipse-fast",), budget_s=10.0)
    assert res[0].certified and res[0].upper is not None and res[0].upper < product


def test_single_blas_thread_limits_and_serialises_concurrent_users():
    import threading
    import time

    from threadpoolctl import threadpool_info

    from stabaudit.analyses.sdp import single_blas_thread

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    before = blas_threads()
    events: list[str] = []

    def user(name: str) -> None:
        with single_blas_thread():
            events.append(f"{name} in {sorted(blas_threads())}")
            time.sleep(0.05)
            with single_blas_thread():  # nested in one thread: no deadlock
                pass
            events.append(f"{name} out")

    threads = [threading.Thread(target=user, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # each one ran alone, with one BLAS thread
    assert sorted(events) == ["a in [1]", "a out", "b in [1]", "b out"]
    assert events[1].endswith("out") and events[3].endswith("out")
    assert blas_threads() == before


def test_a_solver_whose_one_step_exceeds_twice_its_budget_is_not_run() -> None:
    # hidden widths 200: dim(P) 416, one Newton step planned at 4e-4 + (416^3 + 401^3) / 8e9 =
    # 17.5 ms; a budget of 5 ms leaves LipSDP-Neuron 3.75 ms (ECLipsE a quarter): neither steps
    from stabaudit.analyses import plan
    from stabaudit.analyses.sdp import lmi_size

    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((200, 16)) / 4, rng.standard_normal((200, 200)) / 14, rng.standard_normal((3, 200)) / 14]
    g = _two_relu_graph(ws)
    assert plan.newton_step_s(416, 400) > 2 * 0.005
    small = feedforward.global_bounds(g, methods=("eclipse", "lipsdp-neuron"), budget_s=0.005)
    by = {r.method: r for r in small}
    assert any("not run: one Newton step of its LMI (dim 416)" in n for n in by["lipsdp-neuron"].notes)
    assert any("closed-form multiplier" in n for n in by["eclipse"].notes)
    # the start is reported, certified: ECLipsE's (here the closed form's) value
    assert by["lipsdp-neuron"].certified and by["lipsdp-neuron"].upper == by["eclipse"].upper
    large = feedforward.global_bounds(g, methods=("eclipse", "lipsdp-neuron"), budget_s=2.0)
    lip = {r.method: r for r in large}["lipsdp-neuron"]
    assert any("Newton steps" in n for n in lip.notes) and lip.upper is not None
    assert lip.upper <= by["lipsdp-neuron"].upper * (1 + 1e-12)
    assert lmi_size(feedforward.explain_chain(g).lmi()) == 416  # type: ignore[union-attr]


def test_the_ledger_is_charged_for_the_newton_steps_taken() -> None:
    """A solve that converges before its plan runs out is charged for its steps, not for the plan:
    the report's planned work then matches the time the global methods take."""
    from stabaudit.analyses import plan

    ws, _ = _net(0, (2, 12, 3))
    scaled, _ = sdp.pow2_scaled(ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),)))
    start = eclipse_fast(scaled)
    assert start is not None
    pr = sdp.chain_problem(scaled)
    t = np.concatenate(list(start.ts))
    budget = 10.0
    allowed = sdp.planned_newton_steps(pr.size, t.size, budget)
    with plan.ledger() as spent:
        _, _, steps = sdp.lipsdp(scaled, start.rho, list(start.ts), budget_s=budget)
    assert 0 < steps < allowed  # converged early
    assert spent[0] == pytest.approx(steps * plan.newton_step_s(pr.size, t.size), rel=1e-12)
    assert spent[0] < budget / 10


def test_a_short_plan_still_follows_the_central_path() -> None:
    """With under a third of the steps a full solve takes, LipSDP-Neuron is within 10% of the
    converged value: each tau gets a few centring steps, not up to 60 (which left a short plan
    above its own start)."""
    from stabaudit.analyses import plan

    ws, _ = _net(4, (6, 30, 30, 30, 30, 3))
    scaled, _ = sdp.pow2_scaled(ChainLMI(weights=tuple(ws), slopes=((0.0, 1.0),) * 4))
    start = eclipse_fast(scaled)
    assert start is not None
    pr = sdp.chain_problem(scaled)
    step = plan.newton_step_s(pr.size, sum(t.size for t in start.ts))
    full, _, taken = sdp.lipsdp(scaled, start.rho, list(start.ts), budget_s=10.0)
    assert taken > 90
    short, _, steps = sdp.lipsdp(scaled, start.rho, list(start.ts), budget_s=30 * step * 1.0001)
    assert steps == 30
    assert full <= short <= 1.1 * full < start.rho
